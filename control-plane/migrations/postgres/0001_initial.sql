-- keyward schema, PostgreSQL. Times are ISO 8601 UTC text ("2026-01-02T03:04:05Z"), which sorts
-- lexically in time order. Keep in step with ../sqlite/0001_initial.sql.

CREATE TABLE tenants (
    tenant_id   TEXT PRIMARY KEY,
    vps_ip      TEXT NOT NULL,
    ssh_port    BIGINT NOT NULL CHECK (ssh_port BETWEEN 1 AND 65535),
    tenant_user TEXT NOT NULL,
    admin_user  TEXT NOT NULL,
    created_at  TEXT NOT NULL
);

-- One row per (tenant, kind): the current key and, during a rotation's grace period, the previous.
-- Public halves only: private keys live in Vault.
CREATE TABLE key_sets (
    tenant_id            TEXT NOT NULL REFERENCES tenants (tenant_id),
    kind                 TEXT NOT NULL CHECK (kind IN ('admin', 'tenant')),
    algorithm            TEXT NOT NULL,
    generation           BIGINT NOT NULL CHECK (generation >= 1),
    state                TEXT NOT NULL CHECK (state IN ('active', 'revoked')),
    public_key           TEXT NOT NULL,
    fingerprint          TEXT NOT NULL,
    vault_version        BIGINT NOT NULL,
    rotation_policy      TEXT NOT NULL,
    created_at           TEXT NOT NULL,
    last_rotated         TEXT NOT NULL,
    next_rotation        TEXT NOT NULL,
    downloaded_at        TEXT,
    previous_public_key  TEXT,
    previous_fingerprint TEXT,
    grace_until          TEXT,
    PRIMARY KEY (tenant_id, kind)
);

CREATE TABLE api_tokens (
    token_id   TEXT PRIMARY KEY,
    token_hash TEXT NOT NULL UNIQUE,
    role       TEXT NOT NULL CHECK (role IN ('admin', 'tenant')),
    tenant_id  TEXT REFERENCES tenants (tenant_id),
    label      TEXT NOT NULL,
    created_at TEXT NOT NULL,
    revoked_at TEXT,
    CHECK ((role = 'admin' AND tenant_id IS NULL) OR (role = 'tenant' AND tenant_id IS NOT NULL))
);
CREATE INDEX api_tokens_tenant ON api_tokens (tenant_id);

-- Append-only, hash-chained: hash = SHA-256 over the row's fields and prev_hash.
CREATE TABLE audit_events (
    seq            BIGINT PRIMARY KEY,
    at             TEXT NOT NULL,
    actor_token_id TEXT,
    actor_role     TEXT NOT NULL,
    action         TEXT NOT NULL,
    tenant_id      TEXT,
    outcome        TEXT NOT NULL,
    source_addr    TEXT,
    detail         TEXT NOT NULL,
    prev_hash      TEXT NOT NULL,
    hash           TEXT NOT NULL
);
CREATE INDEX audit_events_tenant ON audit_events (tenant_id, seq);
CREATE INDEX audit_events_at ON audit_events (at);
CREATE INDEX audit_events_action ON audit_events (action, seq);
