//! Bastions: a host's role, and the routes a bastion's jump user forwards to (each tenant's
//! principals to that tenant's VPS address only).

use std::fmt;
use std::str::FromStr;

use keyward_common::{HostId, KeyKind, PermitOpen, SshHost, TenantId};

use super::{Store, StoreError, WriteTx, get, parse, query_error};

/// What a host is.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Default,
    serde::Serialize,
    serde::Deserialize,
    utoipa::ToSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum HostRole {
    /// A tenant's server: its managed users are the tenant's admin and tenant users.
    #[default]
    Vps,
    /// A jump host: besides its own tenant's users, the deployment's jump user, whose
    /// certificate logins may only forward to the VPS of the tenant the certificate is for.
    Bastion,
}

impl HostRole {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Vps => "vps",
            Self::Bastion => "bastion",
        }
    }
}

impl fmt::Display for HostRole {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for HostRole {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "vps" => Ok(Self::Vps),
            "bastion" => Ok(Self::Bastion),
            other => Err(format!("unknown host role {other:?}")),
        }
    }
}

/// Where certificates for one tenant's key set may jump: its VPS's SSH address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JumpRoute {
    pub tenant: TenantId,
    pub kind: KeyKind,
    pub to: PermitOpen,
}

impl Store {
    /// The routes of every tenant with a live VPS host, for each key set that is not revoked, in
    /// tenant and kind order; at most `limit`. A tenant address that does not read as a host
    /// (impossible through the API) is left out and logged.
    pub async fn jump_routes(&self, limit: usize) -> Result<Vec<JumpRoute>, StoreError> {
        let rows = sqlx::query(
            "SELECT t.tenant_id, t.vps_ip, t.ssh_port, k.kind FROM tenants t \
             JOIN key_sets k ON k.tenant_id = t.tenant_id AND k.state <> 'revoked' \
             WHERE EXISTS (SELECT 1 FROM hosts h WHERE h.tenant_id = t.tenant_id \
                           AND h.role = 'vps' AND h.revoked_at IS NULL) \
             ORDER BY t.tenant_id, k.kind LIMIT $1",
        )
        .bind(i64::try_from(limit).unwrap_or(i64::MAX))
        .fetch_all(&self.pool)
        .await
        .map_err(query_error("listing jump routes"))?;
        let mut routes = Vec::with_capacity(rows.len());
        for row in &rows {
            let tenant: TenantId = parse(row, "tenant_id")?;
            let address: String = get(row, "vps_ip")?;
            let port: i64 = get(row, "ssh_port")?;
            let (Ok(host), Ok(port)) = (address.parse::<SshHost>(), u16::try_from(port)) else {
                tracing::error!(%tenant, "the tenant's VPS address is not one: no jump route");
                continue;
            };
            routes.push(JumpRoute {
                tenant,
                kind: parse(row, "kind")?,
                to: PermitOpen { host, port },
            });
        }
        Ok(routes)
    }
}

impl WriteTx {
    /// Gives a bastion a new generation (its jump routes or revocations changed).
    pub async fn bump_host(&mut self, host: &HostId) -> Result<(), StoreError> {
        sqlx::query(
            "UPDATE hosts SET desired_generation = desired_generation + 1 \
             WHERE host_id = $1 AND revoked_at IS NULL",
        )
        .bind(host.as_str())
        .execute(&mut *self.tx)
        .await
        .map_err(query_error("raising a host's generation"))?;
        Ok(())
    }
}
