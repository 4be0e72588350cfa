//! What `GET .../ssh-credentials` answers with: a tenant, one of its key sets and the host keys
//! of its current host, read in one query ([`Store::tenant_credentials`]); and the same read
//! joined to the caller's token check, so that a request makes one SQL round trip in all
//! ([`Store::credentials_by_token`]).

use keyward_common::{KeyKind, TenantId};
use sqlx::any::AnyRow;

use super::key_sets::key_set_from_row;
use super::tenants::tenant_from_columns;
use super::tokens::role_from_row;
use super::{KeySetRecord, Role, Store, StoreError, TenantRecord, get, query_error};

/// A tenant, one of its key sets and its current host keys: [`Store::tenant_credentials`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TenantCredentials {
    pub tenant: TenantRecord,
    pub key_set: Option<KeySetRecord>,
    pub host_keys: Vec<String>,
}

/// An active token's id and role, and, when it is a tenant's token, what that tenant's
/// credentials are: [`Store::credentials_by_token`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenCredentials {
    pub token_id: String,
    pub role: Role,
    /// `None` for an admin token, or a tenant token whose tenant no longer exists.
    pub credentials: Option<TenantCredentials>,
}

/// The columns [`credentials_from_row`] reads, from `tenants t` left-joined to `key_sets k`: the
/// key set's own columns, the tenant's prefixed `t_`, and the chosen host's keys.
macro_rules! credentials_columns {
    () => {
        "k.*, t.tenant_id AS t_tenant_id, t.vps_ip AS t_vps_ip, \
         t.ssh_port AS t_ssh_port, t.tenant_user AS t_tenant_user, \
         t.admin_user AS t_admin_user, t.created_at AS t_created_at, \
         (SELECT h.host_keys FROM hosts h WHERE h.tenant_id = t.tenant_id \
          AND h.role = 'vps' AND h.revoked_at IS NULL AND h.host_keys <> '[]' \
          ORDER BY h.last_seen IS NULL, h.last_seen DESC, h.host_id DESC LIMIT 1) \
         AS t_host_keys"
    };
}

impl Store {
    /// What `GET .../ssh-credentials` shows, in one query: the tenant, its key set of `kind`
    /// (`None` when it has none), and the host keys of its live host that reported some most
    /// recently (the same choice as `api::hosts::tenant_host_keys`: the latest `last_seen`, hosts
    /// never seen last, ties to the highest host id). `None` when the tenant does not exist.
    pub async fn tenant_credentials(
        &self,
        tenant: &TenantId,
        kind: KeyKind,
    ) -> Result<Option<TenantCredentials>, StoreError> {
        let row = sqlx::query(concat!(
            "SELECT ",
            credentials_columns!(),
            " FROM tenants t LEFT JOIN key_sets k ON k.tenant_id = t.tenant_id AND k.kind = $2 \
             WHERE t.tenant_id = $1"
        ))
        .bind(tenant.as_str())
        .bind(kind.as_str())
        .fetch_optional(&self.pool)
        .await
        .map_err(query_error("reading a tenant's credentials"))?;
        match row {
            Some(row) => credentials_from_row(&row),
            None => Ok(None),
        }
    }

    /// The active (not revoked) token whose hash is `token_hash`, with the credentials
    /// [`Store::tenant_credentials`] reads for its tenant, in one statement: the token check of
    /// every request (`api::auth`) and the read of `GET .../ssh-credentials` in one round trip.
    /// Nothing is cached: a token revoked on any replica is refused by the next statement.
    /// `None`: no active token has this hash.
    pub async fn credentials_by_token(
        &self,
        token_hash: &str,
        kind: KeyKind,
    ) -> Result<Option<TokenCredentials>, StoreError> {
        let row = sqlx::query(concat!(
            "SELECT tok.token_id AS tok_token_id, tok.role AS tok_role, \
             tok.tenant_id AS tok_tenant_id, ",
            credentials_columns!(),
            " FROM api_tokens tok \
             LEFT JOIN tenants t ON t.tenant_id = tok.tenant_id \
             LEFT JOIN key_sets k ON k.tenant_id = t.tenant_id AND k.kind = $2 \
             WHERE tok.token_hash = $1 AND tok.revoked_at IS NULL"
        ))
        .bind(token_hash)
        .bind(kind.as_str())
        .fetch_optional(&self.pool)
        .await
        .map_err(query_error(
            "looking up a token and its tenant's credentials",
        ))?;
        let Some(row) = row else {
            return Ok(None);
        };
        Ok(Some(TokenCredentials {
            token_id: get(&row, "tok_token_id")?,
            role: role_from_row(&row, "tok_role", "tok_tenant_id")?,
            credentials: credentials_from_row(&row)?,
        }))
    }
}

/// The credentials in a row of [`credentials_columns`]; `None` when it names no tenant.
fn credentials_from_row(row: &AnyRow) -> Result<Option<TenantCredentials>, StoreError> {
    if get::<Option<String>>(row, "t_tenant_id")?.is_none() {
        return Ok(None);
    }
    let tenant = tenant_from_columns(
        row,
        [
            "t_tenant_id",
            "t_vps_ip",
            "t_ssh_port",
            "t_tenant_user",
            "t_admin_user",
            "t_created_at",
        ],
    )?;
    let key_set = match get::<Option<String>>(row, "kind")? {
        Some(_) => Some(key_set_from_row(row)?),
        None => None,
    };
    let host_keys = match get::<Option<String>>(row, "t_host_keys")? {
        Some(raw) => serde_json::from_str(&raw).map_err(|e| StoreError::Corrupt {
            what: "host_keys",
            detail: e.to_string(),
        })?,
        None => Vec::new(),
    };
    Ok(Some(TenantCredentials {
        tenant,
        key_set,
        host_keys,
    }))
}

#[cfg(test)]
mod tests {
    use keyward_common::HostId;

    use super::*;
    use crate::store::HostRole;

    /// A store on a fresh SQLite file (kept while the directory lives).
    async fn store() -> (tempfile::TempDir, Store) {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}/k.db?mode=rwc", dir.path().display());
        (dir, Store::connect(&url, None).await.unwrap())
    }

    #[tokio::test]
    async fn credentials_choose_the_host_keys_the_hosts_view_would() {
        let (_dir, store) = store().await;
        let tenant: TenantId = "t1".parse().unwrap();
        assert_eq!(
            store
                .tenant_credentials(&tenant, KeyKind::Tenant)
                .await
                .unwrap(),
            None
        );
        let at = |s: &str| crate::clock::parse_iso8601(s).unwrap();
        let record = TenantRecord {
            tenant_id: tenant.clone(),
            vps_ip: "192.0.2.1".into(),
            ssh_port: 2222,
            tenant_user: "tenant".parse().unwrap(),
            admin_user: "kwadmin".parse().unwrap(),
            created_at: at("2026-01-01T00:00:00Z"),
        };
        let mut tx = store.begin().await.unwrap();
        tx.insert_tenant(&record).await.unwrap();
        // (host, host keys, last seen, revoked)
        let hosts = [
            (
                "h1",
                vec!["ssh-ed25519 A"],
                Some("2026-01-01T00:00:01Z"),
                false,
            ),
            (
                "h2",
                vec!["ssh-ed25519 B"],
                Some("2026-01-01T00:00:02Z"),
                false,
            ),
            (
                "h3",
                vec!["ssh-ed25519 C"],
                Some("2026-01-01T00:00:09Z"),
                true,
            ),
            ("h4", vec![], Some("2026-01-01T00:00:09Z"), false),
            ("h5", vec!["ssh-ed25519 E"], None, false),
        ];
        for (i, (host, _, _, _)) in hosts.iter().enumerate() {
            let id: HostId = host.parse().unwrap();
            tx.insert_host(
                &id,
                &tenant,
                HostRole::Vps,
                at("2026-01-01T00:00:00Z"),
                &format!("hash{i}"),
                at("2026-01-02T00:00:00Z"),
            )
            .await
            .unwrap();
        }
        for (host, _, _, revoked) in &hosts {
            if *revoked {
                tx.revoke_host(&host.parse().unwrap(), at("2026-01-01T00:00:05Z"))
                    .await
                    .unwrap();
            }
        }
        tx.commit().await.unwrap();
        for (host, keys, seen, _) in &hosts {
            let keys: Vec<String> = keys.iter().map(|k| (*k).to_owned()).collect();
            store
                .record_hello(
                    &host.parse().unwrap(),
                    "0.1.0",
                    &keys,
                    at(seen.unwrap_or("2026-01-01T00:00:00Z")),
                )
                .await
                .unwrap();
            if seen.is_none() {
                sqlx::query("UPDATE hosts SET last_seen = NULL WHERE host_id = $1")
                    .bind(*host)
                    .execute(&store.pool)
                    .await
                    .unwrap();
            }
        }
        let got = store
            .tenant_credentials(&tenant, KeyKind::Tenant)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(got.tenant, record);
        assert_eq!(got.key_set, None);
        assert_eq!(got.host_keys, vec!["ssh-ed25519 B".to_owned()]);
        // What `api::hosts::tenant_host_keys` computes from the full host list.
        let expected = store
            .hosts(Some(&tenant))
            .await
            .unwrap()
            .into_iter()
            .filter(|h| h.revoked_at.is_none() && !h.host_keys.is_empty())
            .max_by(|a, b| a.last_seen.cmp(&b.last_seen))
            .map(|h| h.host_keys)
            .unwrap_or_default();
        assert_eq!(got.host_keys, expected);
    }

    #[tokio::test]
    async fn a_token_reads_its_tenants_credentials_in_one_statement_while_it_is_active() {
        let (_dir, store) = store().await;
        let tenant: TenantId = "t1".parse().unwrap();
        let at = crate::clock::parse_iso8601("2026-01-01T00:00:00Z").unwrap();
        let token = |id: &str, role: Role| crate::store::TokenRecord {
            token_id: id.to_owned(),
            role,
            label: String::new(),
            created_at: at,
            revoked_at: None,
        };
        let mut tx = store.begin().await.unwrap();
        tx.insert_tenant(&TenantRecord {
            tenant_id: tenant.clone(),
            vps_ip: "192.0.2.1".into(),
            ssh_port: 22,
            tenant_user: "tenant".parse().unwrap(),
            admin_user: "kwadmin".parse().unwrap(),
            created_at: at,
        })
        .await
        .unwrap();
        tx.insert_token(&token("tok_t", Role::Tenant(tenant.clone())), "hash-t")
            .await
            .unwrap();
        tx.insert_token(&token("tok_a", Role::Admin), "hash-a")
            .await
            .unwrap();
        tx.commit().await.unwrap();

        let got = store
            .credentials_by_token("hash-t", KeyKind::Tenant)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(got.token_id, "tok_t");
        assert_eq!(got.role, Role::Tenant(tenant.clone()));
        assert_eq!(
            got.credentials,
            store
                .tenant_credentials(&tenant, KeyKind::Tenant)
                .await
                .unwrap()
        );
        assert!(got.credentials.is_some());
        let admin = store
            .credentials_by_token("hash-a", KeyKind::Tenant)
            .await
            .unwrap()
            .unwrap();
        assert_eq!((admin.role, admin.credentials), (Role::Admin, None));
        assert_eq!(
            store
                .credentials_by_token("unknown", KeyKind::Tenant)
                .await
                .unwrap(),
            None
        );

        let mut tx = store.begin().await.unwrap();
        assert!(tx.revoke_token("tok_t", at).await.unwrap());
        tx.commit().await.unwrap();
        assert_eq!(
            store
                .credentials_by_token("hash-t", KeyKind::Tenant)
                .await
                .unwrap(),
            None,
            "a revoked token reads nothing"
        );
    }
}
