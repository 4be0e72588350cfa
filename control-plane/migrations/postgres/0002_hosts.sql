-- Hosts (VPSs running keyward-agent), their enrollment and what they last reported.
-- Keep in step with ../sqlite/0002_hosts.sql.

-- Raised on every regenerate and revoke: agents end the user's sessions when it rises.
ALTER TABLE key_sets ADD COLUMN session_epoch BIGINT NOT NULL DEFAULT 0;
-- JSON array of fingerprints keyward issued for this key set and then replaced or revoked.
ALTER TABLE key_sets ADD COLUMN denied_fingerprints TEXT NOT NULL DEFAULT '[]';

CREATE TABLE hosts (
    host_id            TEXT PRIMARY KEY,
    tenant_id          TEXT NOT NULL REFERENCES tenants (tenant_id),
    created_at         TEXT NOT NULL,
    enroll_token_hash  TEXT UNIQUE,
    enroll_expires_at  TEXT,
    enrolled_at        TEXT,
    cert_serial        TEXT,
    cert_not_after     TEXT,
    revoked_at         TEXT,
    desired_generation BIGINT NOT NULL DEFAULT 1,
    applied_generation BIGINT NOT NULL DEFAULT 0,
    last_seen          TEXT,
    agent_version      TEXT,
    -- JSON: the agent's last per-user results.
    applied_users      TEXT NOT NULL DEFAULT '[]',
    -- JSON array of OpenSSH host public keys.
    host_keys          TEXT NOT NULL DEFAULT '[]',
    last_error         TEXT
);
CREATE INDEX hosts_tenant ON hosts (tenant_id);

CREATE TABLE drift_events (
    id          BIGSERIAL PRIMARY KEY,
    host_id     TEXT NOT NULL REFERENCES hosts (host_id),
    unix_user   TEXT NOT NULL,
    added       TEXT NOT NULL,
    removed     TEXT NOT NULL,
    detected_at TEXT NOT NULL,
    received_at TEXT NOT NULL
);
CREATE INDEX drift_events_host ON drift_events (host_id, id);
