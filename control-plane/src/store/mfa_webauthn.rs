//! WebAuthn second factors (`mfa_webauthn_credentials`) and the ceremonies under way
//! (`mfa_webauthn_ceremonies`): registrations and step-up challenges, shared by the replicas
//! through SQL, each taken once (a conditional `UPDATE` whose row count says whether this request
//! was the one that took it) and only before it expires.

use chrono::{DateTime, Utc};

use super::times::{optional_time, text, time};
use super::{Store, StoreError, WriteTx, get, query_error};

/// A security key or passkey, as stored (all of it public).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WebauthnCredentialRecord {
    pub factor_id: String,
    pub owner: String,
    /// What its owner called it.
    pub name: String,
    /// base64url, unique across owners.
    pub credential_id: String,
    /// webauthn-rs's `Passkey`, JSON.
    pub passkey: String,
    pub sign_count: i64,
    pub created_at: DateTime<Utc>,
    pub last_used_at: Option<DateTime<Utc>>,
}

/// What a ceremony is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CeremonyKind {
    Registration,
    Authentication,
}

impl CeremonyKind {
    fn as_str(self) -> &'static str {
        match self {
            Self::Registration => "registration",
            Self::Authentication => "authentication",
        }
    }
}

/// A ceremony started.
#[derive(Debug, Clone)]
pub struct CeremonyRecord {
    /// A registration's factor id, or an authentication's challenge (base64url).
    pub ceremony_id: String,
    pub owner: String,
    pub kind: CeremonyKind,
    /// webauthn-rs's ceremony state, JSON.
    pub state: String,
    pub created_at: DateTime<Utc>,
    pub expires_at: DateTime<Utc>,
}

/// What taking a ceremony found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TakenCeremony {
    /// Taken now: its state.
    Taken(String),
    /// This owner's, taken before (and not expired yet): a replay.
    Used,
    /// None of this owner's of this kind that is still open.
    Missing,
}

fn credential_from_row(row: &sqlx::any::AnyRow) -> Result<WebauthnCredentialRecord, StoreError> {
    Ok(WebauthnCredentialRecord {
        factor_id: get(row, "factor_id")?,
        owner: get(row, "owner")?,
        name: get(row, "name")?,
        credential_id: get(row, "credential_id")?,
        passkey: get(row, "passkey")?,
        sign_count: get(row, "sign_count")?,
        created_at: time(row, "created_at")?,
        last_used_at: optional_time(row, "last_used_at")?,
    })
}

impl Store {
    /// The owner's security keys, oldest first.
    pub async fn webauthn_credentials(
        &self,
        owner: &str,
    ) -> Result<Vec<WebauthnCredentialRecord>, StoreError> {
        sqlx::query(
            "SELECT factor_id, owner, name, credential_id, passkey, sign_count, created_at, \
             last_used_at FROM mfa_webauthn_credentials WHERE owner = $1 \
             ORDER BY created_at, factor_id",
        )
        .bind(owner)
        .fetch_all(&self.pool)
        .await
        .map_err(query_error("reading security keys"))?
        .iter()
        .map(credential_from_row)
        .collect()
    }
}

impl WriteTx {
    /// Starts a ceremony; ceremonies expired before `now` (anyone's) are deleted.
    pub async fn insert_webauthn_ceremony(
        &mut self,
        c: &CeremonyRecord,
        now: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        sqlx::query("DELETE FROM mfa_webauthn_ceremonies WHERE expires_at <= $1")
            .bind(text(now))
            .execute(&mut *self.tx)
            .await
            .map_err(query_error("deleting expired WebAuthn ceremonies"))?;
        sqlx::query(
            "INSERT INTO mfa_webauthn_ceremonies \
             (ceremony_id, owner, kind, state, created_at, expires_at) \
             VALUES ($1, $2, $3, $4, $5, $6)",
        )
        .bind(&c.ceremony_id)
        .bind(&c.owner)
        .bind(c.kind.as_str())
        .bind(&c.state)
        .bind(text(c.created_at))
        .bind(text(c.expires_at))
        .execute(&mut *self.tx)
        .await
        .map_err(query_error("writing a WebAuthn ceremony"))?;
        Ok(())
    }

    /// Takes `owner`'s open ceremony `ceremony_id` of `kind`, once across replicas.
    pub async fn take_webauthn_ceremony(
        &mut self,
        owner: &str,
        kind: CeremonyKind,
        ceremony_id: &str,
        now: DateTime<Utc>,
    ) -> Result<TakenCeremony, StoreError> {
        let taken = sqlx::query(
            "UPDATE mfa_webauthn_ceremonies SET used_at = $1 \
             WHERE ceremony_id = $2 AND owner = $3 AND kind = $4 \
             AND used_at IS NULL AND expires_at > $1",
        )
        .bind(text(now))
        .bind(ceremony_id)
        .bind(owner)
        .bind(kind.as_str())
        .execute(&mut *self.tx)
        .await
        .map_err(query_error("taking a WebAuthn ceremony"))?
        .rows_affected()
            == 1;
        let row = sqlx::query(
            "SELECT state FROM mfa_webauthn_ceremonies \
             WHERE ceremony_id = $1 AND owner = $2 AND kind = $3 AND expires_at > $4",
        )
        .bind(ceremony_id)
        .bind(owner)
        .bind(kind.as_str())
        .bind(text(now))
        .fetch_optional(&mut *self.tx)
        .await
        .map_err(query_error("reading a WebAuthn ceremony"))?;
        Ok(match (taken, row) {
            (true, Some(row)) => TakenCeremony::Taken(get(&row, "state")?),
            (false, Some(_)) => TakenCeremony::Used,
            (_, None) => TakenCeremony::Missing,
        })
    }

    /// `owner`'s ceremonies open at `now` (not taken, not expired).
    pub async fn open_webauthn_ceremonies(
        &mut self,
        owner: &str,
        now: DateTime<Utc>,
    ) -> Result<i64, StoreError> {
        let row = sqlx::query(
            "SELECT COUNT(*) AS open FROM mfa_webauthn_ceremonies \
             WHERE owner = $1 AND used_at IS NULL AND expires_at > $2",
        )
        .bind(owner)
        .bind(text(now))
        .fetch_one(&mut *self.tx)
        .await
        .map_err(query_error("counting WebAuthn ceremonies"))?;
        get(&row, "open")
    }

    /// `owner`'s security key of this credential id (base64url).
    pub async fn webauthn_credential(
        &mut self,
        owner: &str,
        credential_id: &str,
    ) -> Result<Option<WebauthnCredentialRecord>, StoreError> {
        sqlx::query(
            "SELECT factor_id, owner, name, credential_id, passkey, sign_count, created_at, \
             last_used_at FROM mfa_webauthn_credentials WHERE owner = $1 AND credential_id = $2",
        )
        .bind(owner)
        .bind(credential_id)
        .fetch_optional(&mut *self.tx)
        .await
        .map_err(query_error("reading a security key"))?
        .as_ref()
        .map(credential_from_row)
        .transpose()
    }

    /// Whether a credential id is any owner's already.
    pub async fn webauthn_credential_exists(
        &mut self,
        credential_id: &str,
    ) -> Result<bool, StoreError> {
        Ok(
            sqlx::query("SELECT factor_id FROM mfa_webauthn_credentials WHERE credential_id = $1")
                .bind(credential_id)
                .fetch_optional(&mut *self.tx)
                .await
                .map_err(query_error("reading a security key"))?
                .is_some(),
        )
    }

    pub async fn insert_webauthn_credential(
        &mut self,
        c: &WebauthnCredentialRecord,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO mfa_webauthn_credentials \
             (factor_id, owner, name, credential_id, passkey, sign_count, created_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7)",
        )
        .bind(&c.factor_id)
        .bind(&c.owner)
        .bind(&c.name)
        .bind(&c.credential_id)
        .bind(&c.passkey)
        .bind(c.sign_count)
        .bind(text(c.created_at))
        .execute(&mut *self.tx)
        .await
        .map_err(query_error("writing a security key"))?;
        Ok(())
    }

    /// Records a step-up with `owner`'s key `factor_id` whose authenticator counted `sign_count`:
    /// false when the stored counter is not below it (a cloned authenticator, or a race lost to
    /// another replica). A counter that stays 0 is an authenticator that keeps none.
    pub async fn use_webauthn_credential(
        &mut self,
        owner: &str,
        factor_id: &str,
        passkey: &str,
        sign_count: i64,
        at: DateTime<Utc>,
    ) -> Result<bool, StoreError> {
        Ok(sqlx::query(
            "UPDATE mfa_webauthn_credentials SET passkey = $1, sign_count = $2, last_used_at = $3 \
             WHERE factor_id = $4 AND owner = $5 \
             AND (sign_count < $2 OR (sign_count = 0 AND $2 = 0))",
        )
        .bind(passkey)
        .bind(sign_count)
        .bind(text(at))
        .bind(factor_id)
        .bind(owner)
        .execute(&mut *self.tx)
        .await
        .map_err(query_error("recording a security key's use"))?
        .rows_affected()
            == 1)
    }
}

#[cfg(test)]
mod tests {
    use chrono::TimeZone;

    use super::*;

    async fn store() -> (Store, tempfile::TempDir) {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}/k.db?mode=rwc", dir.path().display());
        (Store::connect(&url, None).await.unwrap(), dir)
    }

    fn at(secs: i64) -> DateTime<Utc> {
        Utc.timestamp_opt(1_800_000_000 + secs, 0).unwrap()
    }

    fn ceremony(id: &str, owner: &str, kind: CeremonyKind) -> CeremonyRecord {
        CeremonyRecord {
            ceremony_id: id.to_owned(),
            owner: owner.to_owned(),
            kind,
            state: format!("{{\"state\":\"{id}\"}}"),
            created_at: at(0),
            expires_at: at(300),
        }
    }

    fn credential(factor_id: &str, owner: &str, credential_id: &str) -> WebauthnCredentialRecord {
        WebauthnCredentialRecord {
            factor_id: factor_id.to_owned(),
            owner: owner.to_owned(),
            name: "key".to_owned(),
            credential_id: credential_id.to_owned(),
            passkey: "{}".to_owned(),
            sign_count: 0,
            created_at: at(0),
            last_used_at: None,
        }
    }

    #[tokio::test]
    async fn a_ceremony_is_taken_once_by_its_owner_before_it_expires() {
        let (s, _dir) = store().await;
        let mut tx = s.begin().await.unwrap();
        for c in [
            ceremony("c1", "tenant:a", CeremonyKind::Authentication),
            ceremony("c2", "tenant:a", CeremonyKind::Authentication),
            ceremony("r1", "tenant:a", CeremonyKind::Registration),
        ] {
            tx.insert_webauthn_ceremony(&c, at(0)).await.unwrap();
        }
        assert_eq!(
            tx.open_webauthn_ceremonies("tenant:a", at(1))
                .await
                .unwrap(),
            3
        );
        let auth = CeremonyKind::Authentication;
        // Another owner's, or another kind's: none of theirs.
        assert_eq!(
            tx.take_webauthn_ceremony("tenant:b", auth, "c1", at(1))
                .await
                .unwrap(),
            TakenCeremony::Missing
        );
        assert_eq!(
            tx.take_webauthn_ceremony("tenant:a", CeremonyKind::Registration, "c1", at(1))
                .await
                .unwrap(),
            TakenCeremony::Missing
        );
        assert_eq!(
            tx.take_webauthn_ceremony("tenant:a", auth, "c1", at(1))
                .await
                .unwrap(),
            TakenCeremony::Taken("{\"state\":\"c1\"}".to_owned())
        );
        assert_eq!(
            tx.take_webauthn_ceremony("tenant:a", auth, "c1", at(2))
                .await
                .unwrap(),
            TakenCeremony::Used
        );
        assert_eq!(
            tx.open_webauthn_ceremonies("tenant:a", at(2))
                .await
                .unwrap(),
            2
        );
        // Expired: gone for its owner too, and deleted at the next insert.
        assert_eq!(
            tx.take_webauthn_ceremony("tenant:a", auth, "c2", at(300))
                .await
                .unwrap(),
            TakenCeremony::Missing
        );
        tx.insert_webauthn_ceremony(&ceremony("c3", "tenant:b", auth), at(301))
            .await
            .unwrap();
        assert_eq!(
            tx.open_webauthn_ceremonies("tenant:a", at(0))
                .await
                .unwrap(),
            0
        );
        tx.commit().await.unwrap();
    }

    #[tokio::test]
    async fn keys_are_listed_with_factors_and_their_counter_only_grows() {
        let (s, _dir) = store().await;
        let mut tx = s.begin().await.unwrap();
        tx.insert_webauthn_credential(&credential("mfa_1", "tenant:a", "cred-a"))
            .await
            .unwrap();
        assert!(tx.webauthn_credential_exists("cred-a").await.unwrap());
        assert!(!tx.webauthn_credential_exists("cred-b").await.unwrap());
        // Another owner's credential id is not this owner's key.
        assert!(
            tx.webauthn_credential("tenant:b", "cred-a")
                .await
                .unwrap()
                .is_none()
        );
        assert!(
            tx.webauthn_credential("tenant:a", "cred-a")
                .await
                .unwrap()
                .is_some()
        );
        // A counter kept at 0 is an authenticator without one; once it counts, it must grow.
        assert!(
            tx.use_webauthn_credential("tenant:a", "mfa_1", "{}", 0, at(1))
                .await
                .unwrap()
        );
        assert!(
            tx.use_webauthn_credential("tenant:a", "mfa_1", "{}", 5, at(2))
                .await
                .unwrap()
        );
        assert!(
            !tx.use_webauthn_credential("tenant:a", "mfa_1", "{}", 5, at(3))
                .await
                .unwrap()
        );
        assert!(
            !tx.use_webauthn_credential("tenant:a", "mfa_1", "{}", 0, at(3))
                .await
                .unwrap()
        );
        assert!(
            !tx.use_webauthn_credential("tenant:b", "mfa_1", "{}", 9, at(3))
                .await
                .unwrap()
        );
        tx.commit().await.unwrap();

        let listed = s.mfa_factors("tenant:a").await.unwrap();
        assert_eq!(listed.len(), 1);
        assert_eq!(listed[0].kind, "webauthn");
        assert_eq!(listed[0].name.as_deref(), Some("key"));
        assert_eq!(listed[0].last_step, 5);
        assert!(listed[0].confirmed_at.is_some());
        assert_eq!(s.webauthn_credentials("tenant:a").await.unwrap().len(), 1);
        assert!(s.mfa_factors("tenant:b").await.unwrap().is_empty());

        let mut tx = s.begin().await.unwrap();
        assert!(!tx.delete_mfa_factor("tenant:b", "mfa_1").await.unwrap());
        assert!(tx.delete_mfa_factor("tenant:a", "mfa_1").await.unwrap());
        tx.insert_webauthn_credential(&credential("mfa_2", "tenant:a", "cred-c"))
            .await
            .unwrap();
        assert_eq!(tx.delete_owner_mfa("tenant:a").await.unwrap(), 1);
        tx.commit().await.unwrap();
        assert!(s.mfa_factors("tenant:a").await.unwrap().is_empty());
    }
}
