//! The audit log: append-only and hash-chained.
//!
//! Each event's `hash` is SHA-256 over a canonical JSON array of its fields and the previous
//! event's hash, so editing, inserting or deleting any event breaks every later link. (Cutting
//! events off the end leaves no trace in the chain itself: ship the latest hash elsewhere to
//! detect that.)

use chrono::{DateTime, Utc};
use serde::Serialize;
use sha2::{Digest, Sha256};
use sqlx::Row;
use sqlx::any::AnyRow;

use super::times::text;
use super::{Store, StoreError, WriteTx, get, query_error};
use keyward_common::TenantId;

/// The hash that the first event links to.
pub const GENESIS_HASH: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// An event to append.
#[derive(Debug, Clone)]
pub struct NewAuditEvent {
    pub at: String,
    pub actor_token_id: Option<String>,
    /// `admin`, `tenant` or `system`.
    pub actor_role: String,
    pub action: &'static str,
    pub tenant_id: Option<TenantId>,
    /// `success`, `refused` or `failure`.
    pub outcome: &'static str,
    pub source_addr: Option<String>,
    pub detail: serde_json::Value,
}

/// An event as stored.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct AuditRecord {
    pub seq: i64,
    /// Text, as stored, unlike every other record's times: the hash chain covers this text, so
    /// verifying the chain must hash the bytes the row holds, not a time parsed and re-formatted.
    pub at: String,
    pub actor_token_id: Option<String>,
    pub actor_role: String,
    pub action: String,
    pub tenant_id: Option<String>,
    pub outcome: String,
    pub source_addr: Option<String>,
    pub detail: serde_json::Value,
    pub prev_hash: String,
    pub hash: String,
}

/// Which events to list, newest first.
#[derive(Debug, Clone, Default)]
pub struct AuditFilter {
    pub tenant_id: Option<TenantId>,
    pub action: Option<String>,
    /// Inclusive lower bound.
    pub since: Option<DateTime<Utc>>,
    /// Exclusive upper bound.
    pub until: Option<DateTime<Utc>>,
    /// Only events with a smaller `seq` (the cursor of the previous page).
    pub before_seq: Option<i64>,
    pub limit: i64,
}

#[derive(Debug, Clone)]
pub struct AuditPage {
    pub events: Vec<AuditRecord>,
    /// Pass as `before_seq` to read the next page; `None` on the last page.
    pub next_cursor: Option<i64>,
}

/// The result of walking the whole chain.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ChainVerdict {
    pub ok: bool,
    pub checked: i64,
    /// The first event whose stored hash or link does not match.
    pub first_broken_seq: Option<i64>,
    pub reason: Option<String>,
}

#[allow(clippy::too_many_arguments)]
fn chain_hash(
    seq: i64,
    at: &str,
    actor_token_id: Option<&str>,
    actor_role: &str,
    action: &str,
    tenant_id: Option<&str>,
    outcome: &str,
    source_addr: Option<&str>,
    detail: &str,
    prev_hash: &str,
) -> String {
    let canonical = serde_json::json!([
        seq,
        at,
        actor_token_id,
        actor_role,
        action,
        tenant_id,
        outcome,
        source_addr,
        detail,
        prev_hash
    ]);
    hex::encode(Sha256::digest(canonical.to_string().as_bytes()))
}

/// The hash `event` must have, its detail being `detail_text` (the exact stored text the chain
/// covers): what verifying a chain, here or in an exported bundle, recomputes.
pub fn expected_hash(event: &AuditRecord, detail_text: &str) -> String {
    chain_hash(
        event.seq,
        &event.at,
        event.actor_token_id.as_deref(),
        &event.actor_role,
        &event.action,
        event.tenant_id.as_deref(),
        &event.outcome,
        event.source_addr.as_deref(),
        detail_text,
        &event.prev_hash,
    )
}

impl WriteTx {
    /// Appends one event to the chain. Fails (and so fails the whole change) if it cannot.
    pub async fn append_audit(&mut self, event: &NewAuditEvent) -> Result<AuditRecord, StoreError> {
        if self.audited == super::Audited::No {
            // Without the audit lock two writers could both extend the same head.
            return Err(StoreError::Misuse(
                "an audit event in a transaction begun without the audit lock",
            ));
        }
        let last = sqlx::query("SELECT seq, hash FROM audit_events ORDER BY seq DESC LIMIT 1")
            .fetch_optional(&mut *self.tx)
            .await
            .map_err(query_error("reading the audit chain head"))?;
        let (prev_seq, prev_hash) = match last {
            Some(row) => (get::<i64>(&row, "seq")?, get::<String>(&row, "hash")?),
            None => (0, GENESIS_HASH.to_owned()),
        };
        let seq = prev_seq + 1;
        let detail = event.detail.to_string();
        let tenant = event.tenant_id.as_ref().map(|t| t.as_str().to_owned());
        let hash = chain_hash(
            seq,
            &event.at,
            event.actor_token_id.as_deref(),
            &event.actor_role,
            event.action,
            tenant.as_deref(),
            event.outcome,
            event.source_addr.as_deref(),
            &detail,
            &prev_hash,
        );
        sqlx::query(
            "INSERT INTO audit_events (seq, at, actor_token_id, actor_role, action, tenant_id, \
             outcome, source_addr, detail, prev_hash, hash) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)",
        )
        .bind(seq)
        .bind(&event.at)
        .bind(event.actor_token_id.clone())
        .bind(&event.actor_role)
        .bind(event.action)
        .bind(tenant.clone())
        .bind(event.outcome)
        .bind(event.source_addr.clone())
        .bind(&detail)
        .bind(&prev_hash)
        .bind(&hash)
        .execute(&mut *self.tx)
        .await
        .map_err(query_error("appending an audit event"))?;
        metrics::counter!("keyward_audit_events_total", "action" => event.action, "outcome" => event.outcome)
            .increment(1);
        Ok(AuditRecord {
            seq,
            at: event.at.clone(),
            actor_token_id: event.actor_token_id.clone(),
            actor_role: event.actor_role.clone(),
            action: event.action.to_owned(),
            tenant_id: tenant,
            outcome: event.outcome.to_owned(),
            source_addr: event.source_addr.clone(),
            detail: event.detail.clone(),
            prev_hash,
            hash,
        })
    }
}

fn audit_from_row(row: &AnyRow) -> Result<(AuditRecord, String), StoreError> {
    let detail_text: String = get(row, "detail")?;
    let detail = serde_json::from_str(&detail_text)
        .unwrap_or(serde_json::Value::String(detail_text.clone()));
    Ok((
        AuditRecord {
            seq: get(row, "seq")?,
            at: get(row, "at")?,
            actor_token_id: get(row, "actor_token_id")?,
            actor_role: get(row, "actor_role")?,
            action: get(row, "action")?,
            tenant_id: get(row, "tenant_id")?,
            outcome: get(row, "outcome")?,
            source_addr: get(row, "source_addr")?,
            detail,
            prev_hash: get(row, "prev_hash")?,
            hash: get(row, "hash")?,
        },
        detail_text,
    ))
}

impl Store {
    /// One page of events matching `filter`, newest first.
    pub async fn audit_events(&self, filter: &AuditFilter) -> Result<AuditPage, StoreError> {
        let mut sql = String::from("SELECT * FROM audit_events WHERE 1 = 1");
        let mut binds: Vec<String> = Vec::new();
        let mut push = |clause: &str, value: String| {
            binds.push(value);
            sql.push_str(&format!(" AND {clause} ${}", binds.len()));
        };
        if let Some(t) = &filter.tenant_id {
            push("tenant_id =", t.as_str().to_owned());
        }
        if let Some(a) = &filter.action {
            push("action =", a.clone());
        }
        if let Some(s) = filter.since {
            push("at >=", text(s));
        }
        if let Some(u) = filter.until {
            push("at <", text(u));
        }
        let limit = filter.limit.clamp(1, 1000);
        let mut query_text = sql;
        let mut n = binds.len();
        if filter.before_seq.is_some() {
            n += 1;
            query_text.push_str(&format!(" AND seq < ${n}"));
        }
        query_text.push_str(&format!(" ORDER BY seq DESC LIMIT ${}", n + 1));
        let mut query = sqlx::query(&query_text);
        for b in &binds {
            query = query.bind(b.clone());
        }
        if let Some(before) = filter.before_seq {
            query = query.bind(before);
        }
        let rows = query
            .bind(limit)
            .fetch_all(&self.pool)
            .await
            .map_err(query_error("listing audit events"))?;
        let events = rows
            .iter()
            .map(|r| audit_from_row(r).map(|(e, _)| e))
            .collect::<Result<Vec<_>, _>>()?;
        let next_cursor = if events.len() as i64 == limit {
            events.last().map(|e| e.seq)
        } else {
            None
        };
        Ok(AuditPage {
            events,
            next_cursor,
        })
    }

    /// Walks the whole chain from the first event and names the first broken link.
    pub async fn verify_audit_chain(&self) -> Result<ChainVerdict, StoreError> {
        self.verify_audit_chain_with(&mut |_, _| {}).await
    }

    /// As [`Store::verify_audit_chain`], showing `visit` each event whose hash and link hold, in
    /// order, with its detail's exact stored text (the signed heads are checked so).
    pub async fn verify_audit_chain_with(
        &self,
        visit: &mut (dyn FnMut(&AuditRecord, &str) + Send),
    ) -> Result<ChainVerdict, StoreError> {
        const BATCH: i64 = 1000;
        let mut prev_hash = GENESIS_HASH.to_owned();
        let mut expected_seq = 1;
        let mut checked = 0;
        loop {
            let rows =
                sqlx::query("SELECT * FROM audit_events WHERE seq >= $1 ORDER BY seq LIMIT $2")
                    .bind(expected_seq)
                    .bind(BATCH)
                    .fetch_all(&self.pool)
                    .await
                    .map_err(query_error("reading the audit chain"))?;
            if rows.is_empty() {
                return Ok(ChainVerdict {
                    ok: true,
                    checked,
                    first_broken_seq: None,
                    reason: None,
                });
            }
            for row in &rows {
                let (e, detail_text) = audit_from_row(row)?;
                let broken = |reason: String| ChainVerdict {
                    ok: false,
                    checked,
                    first_broken_seq: Some(e.seq),
                    reason: Some(reason),
                };
                if e.seq != expected_seq {
                    return Ok(ChainVerdict {
                        first_broken_seq: Some(expected_seq),
                        ..broken(format!("event {expected_seq} is missing"))
                    });
                }
                if e.prev_hash != prev_hash {
                    return Ok(broken("prev_hash does not match the previous event".into()));
                }
                if expected_hash(&e, &detail_text) != e.hash {
                    return Ok(broken("the event's content does not match its hash".into()));
                }
                visit(&e, &detail_text);
                prev_hash = e.hash;
                expected_seq += 1;
                checked += 1;
            }
        }
    }

    /// The first and last sequence numbers of the events stamped in `[since, until)`: an export
    /// takes every event between them, so that it is one unbroken piece of the chain even where
    /// replicas' clocks disagree a little. `None` when no event is in the range.
    pub async fn audit_seq_range(
        &self,
        since: DateTime<Utc>,
        until: DateTime<Utc>,
    ) -> Result<Option<(i64, i64)>, StoreError> {
        let row = sqlx::query(
            "SELECT MIN(seq) AS first, MAX(seq) AS last FROM audit_events WHERE at >= $1 AND at < $2",
        )
        .bind(text(since))
        .bind(text(until))
        .fetch_one(&self.pool)
        .await
        .map_err(query_error("finding an export's events"))?;
        let first: Option<i64> = get(&row, "first")?;
        let last: Option<i64> = get(&row, "last")?;
        Ok(first.zip(last))
    }

    /// Up to `limit` events from `from_seq` to `to_seq` in chain order, each with its detail as
    /// the exact stored text.
    pub async fn audit_events_from(
        &self,
        from_seq: i64,
        to_seq: i64,
        limit: i64,
    ) -> Result<Vec<(AuditRecord, String)>, StoreError> {
        sqlx::query(
            "SELECT * FROM audit_events WHERE seq >= $1 AND seq <= $2 ORDER BY seq LIMIT $3",
        )
        .bind(from_seq)
        .bind(to_seq)
        .bind(limit)
        .fetch_all(&self.pool)
        .await
        .map_err(query_error("reading audit events"))?
        .iter()
        .map(audit_from_row)
        .collect()
    }

    /// The newest event's sequence number and hash (the chain's head).
    pub async fn audit_head(&self) -> Result<Option<(i64, String)>, StoreError> {
        let row = sqlx::query("SELECT seq, hash FROM audit_events ORDER BY seq DESC LIMIT 1")
            .fetch_optional(&self.pool)
            .await
            .map_err(query_error("reading the audit chain's head"))?;
        row.map(|row| Ok((get(&row, "seq")?, get(&row, "hash")?)))
            .transpose()
    }

    /// Number of stored events.
    pub async fn audit_count(&self) -> Result<i64, StoreError> {
        let row = sqlx::query("SELECT COUNT(*) AS n FROM audit_events")
            .fetch_one(&self.pool)
            .await
            .map_err(query_error("counting audit events"))?;
        row.try_get("n")
            .map_err(query_error("counting audit events"))
    }
}
