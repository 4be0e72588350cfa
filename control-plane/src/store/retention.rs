//! Deleting what agents reported, and records of certificates and access grants that ended, once
//! older than the retention (see `crate::retention`).
//! Never the audit log: its rows are hash-chained and are kept whole.

use super::{Store, StoreError, get, query_error};

/// What the retention sweep deletes, by the control plane's time of receipt (`received_at`):
/// the agent's own times (`at`, `detected_at`) are whatever a rooted host says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expiring {
    DriftEvents,
    LoginEvents,
    /// By the end of their validity (the certificate's own, as Vault signed it).
    Certificates,
    /// Ended requests and grants, by the time of the request (pending and active ones stay).
    AccessGrants,
}

impl Expiring {
    pub fn as_str(self) -> &'static str {
        match self {
            Expiring::DriftEvents => "drift_events",
            Expiring::LoginEvents => "login_events",
            Expiring::Certificates => "ssh_certificates",
            Expiring::AccessGrants => "access_grants",
        }
    }

    fn delete_sql(self) -> &'static str {
        match self {
            Expiring::DriftEvents => {
                "DELETE FROM drift_events WHERE id IN (SELECT id FROM drift_events \
                 WHERE received_at < $1 ORDER BY received_at, id LIMIT $2)"
            }
            Expiring::LoginEvents => {
                "DELETE FROM login_events WHERE id IN (SELECT id FROM login_events \
                 WHERE received_at < $1 ORDER BY received_at, id LIMIT $2)"
            }
            Expiring::Certificates => {
                "DELETE FROM ssh_certificates WHERE (tenant_id, kind, number) IN \
                 (SELECT tenant_id, kind, number FROM ssh_certificates \
                 WHERE valid_before < $1 ORDER BY valid_before LIMIT $2)"
            }
            Expiring::AccessGrants => {
                "DELETE FROM access_grants WHERE grant_id IN (SELECT grant_id FROM access_grants \
                 WHERE status NOT IN ('pending', 'active') AND requested_at < $1 \
                 ORDER BY requested_at LIMIT $2)"
            }
        }
    }
}

impl Store {
    /// Deletes at most `limit` rows of `what` received before `before` (ISO 8601), oldest
    /// first, in one short transaction of its own; returns how many.
    pub async fn delete_expired(
        &self,
        what: Expiring,
        before: &str,
        limit: i64,
    ) -> Result<u64, StoreError> {
        let done = sqlx::query(what.delete_sql())
            .bind(before)
            .bind(limit)
            .execute(&self.pool)
            .await
            .map_err(query_error("deleting expired rows"))?;
        Ok(done.rows_affected())
    }

    /// Replaces the source address and user name of at most `limit` login events received
    /// before `before` (ISO 8601) that still hold them by `pseudonym(what, value)` (`what`: `ip`
    /// or `user`), oldest first, in one transaction; returns how many. Idempotent: a row is
    /// marked, and the pseudonymiser leaves a pseudonym as it is.
    pub async fn pseudonymise_logins(
        &self,
        before: &str,
        limit: i64,
        pseudonym: impl Fn(&str, &str) -> String,
    ) -> Result<u64, StoreError> {
        let mut tx = self
            .pool
            .begin()
            .await
            .map_err(query_error("pseudonymising login events"))?;
        let rows = sqlx::query(
            "SELECT id, source_ip, unix_user FROM login_events \
             WHERE pseudonymised = 0 AND received_at < $1 ORDER BY received_at, id LIMIT $2",
        )
        .bind(before)
        .bind(limit)
        .fetch_all(&mut *tx)
        .await
        .map_err(query_error("pseudonymising login events"))?;
        for row in &rows {
            let id: i64 = get(row, "id")?;
            let ip: String = get(row, "source_ip")?;
            let user: String = get(row, "unix_user")?;
            sqlx::query(
                "UPDATE login_events SET source_ip = $1, unix_user = $2, pseudonymised = 1 \
                 WHERE id = $3",
            )
            .bind(pseudonym("ip", &ip))
            .bind(pseudonym("user", &user))
            .bind(id)
            .execute(&mut *tx)
            .await
            .map_err(query_error("pseudonymising login events"))?;
        }
        tx.commit()
            .await
            .map_err(query_error("pseudonymising login events"))?;
        Ok(rows.len() as u64)
    }
}
