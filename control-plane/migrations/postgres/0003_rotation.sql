-- Rotation automation: per-tenant rotation policies, the tenants' SMTP and DKIM secrets, and
-- bulk rotation jobs. Keep in step with ../sqlite/0003_rotation.sql.

-- A tenant's own rotation policy. A tenant without a row follows the configured default ([keys]).
CREATE TABLE rotation_policies (
    tenant_id     TEXT PRIMARY KEY REFERENCES tenants (tenant_id),
    interval_secs BIGINT NOT NULL CHECK (interval_secs >= 3600),
    grace_secs    BIGINT NOT NULL CHECK (grace_secs >= 0 AND grace_secs < interval_secs),
    algorithm     TEXT NOT NULL CHECK (algorithm IN ('rsa-4096', 'ed25519')),
    updated_at    TEXT NOT NULL
);

-- Metadata of a tenant's other secrets, kept in Vault at {mount}/{tenant_id}/{name}.
-- Never the secret itself.
CREATE TABLE tenant_secrets (
    tenant_id     TEXT NOT NULL REFERENCES tenants (tenant_id),
    name          TEXT NOT NULL CHECK (name IN ('smtp', 'dkim')),
    generation    BIGINT NOT NULL CHECK (generation >= 1),
    vault_version BIGINT NOT NULL,
    created_at    TEXT NOT NULL,
    last_rotated  TEXT NOT NULL,
    -- JSON: the public part (smtp: the user name; dkim: selector, DNS record, previous selector).
    public_info   TEXT NOT NULL,
    PRIMARY KEY (tenant_id, name)
);

-- Bulk rotations (POST /api/v1/admin/secrets/rotate-all) and their outcome.
CREATE TABLE rotation_jobs (
    job_id       TEXT PRIMARY KEY,
    secret_type  TEXT NOT NULL CHECK (secret_type IN ('ssh', 'smtp', 'dkim')),
    status       TEXT NOT NULL CHECK (status IN ('running', 'completed', 'interrupted')),
    started_by   TEXT,
    started_at   TEXT NOT NULL,
    -- Raised while the job runs: a running job whose heartbeat stopped was lost with its process.
    heartbeat_at TEXT NOT NULL,
    finished_at  TEXT,
    total        BIGINT NOT NULL,
    rotated      BIGINT NOT NULL DEFAULT 0,
    failed       BIGINT NOT NULL DEFAULT 0,
    skipped      BIGINT NOT NULL DEFAULT 0,
    -- JSON array of {"tenantId", "code", "reason"}.
    failures     TEXT NOT NULL DEFAULT '[]'
);
-- At most one running job per deployment, whichever replica started it.
CREATE UNIQUE INDEX rotation_jobs_one_running ON rotation_jobs (status) WHERE status = 'running';
CREATE INDEX rotation_jobs_started ON rotation_jobs (started_at);

-- The scheduler's question: which active key set falls due next.
CREATE INDEX key_sets_next_rotation ON key_sets (next_rotation) WHERE state = 'active';
