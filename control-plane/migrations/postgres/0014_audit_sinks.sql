-- Audit export: one row per configured sink (audit_export.sinks), created when a replica first
-- runs it. Keep in step with ../sqlite/0014_audit_sinks.sql.
--   delivered_seq: the last audit event the sink confirmed (0: none); the next batch starts after.
--   holder, lease_until: the replica that delivers to the sink now, and until when (text time);
--   another replica takes the sink over once the lease has run out. A replica moves the cursor
--   only while it holds the lease, so two replicas never deliver the same batch twice over.
--   failures, last_error, last_attempt_at, last_success_at: what the status shows.
CREATE TABLE audit_sinks (
    name            TEXT PRIMARY KEY,
    delivered_seq   BIGINT NOT NULL DEFAULT 0,
    holder          TEXT,
    lease_until     TEXT,
    failures        BIGINT NOT NULL DEFAULT 0,
    last_error      TEXT,
    last_attempt_at TEXT,
    last_success_at TEXT
);
