-- SSH logins reported by agents, and the key history that attributes them.
-- Keep in step with ../postgres/0004_logins.sql.

-- Every key keyward issued, by generation: a login's fingerprint maps to (kind, generation).
CREATE TABLE key_history (
    tenant_id   TEXT NOT NULL REFERENCES tenants (tenant_id),
    kind        TEXT NOT NULL CHECK (kind IN ('admin', 'tenant')),
    generation  INTEGER NOT NULL,
    fingerprint TEXT NOT NULL,
    created_at  TEXT NOT NULL,
    PRIMARY KEY (tenant_id, kind, generation)
);
CREATE INDEX key_history_fingerprint ON key_history (tenant_id, fingerprint);
INSERT INTO key_history (tenant_id, kind, generation, fingerprint, created_at)
    SELECT tenant_id, kind, generation, fingerprint, last_rotated FROM key_sets;
INSERT INTO key_history (tenant_id, kind, generation, fingerprint, created_at)
    SELECT tenant_id, kind, generation - 1, previous_fingerprint, last_rotated FROM key_sets
    WHERE previous_fingerprint IS NOT NULL AND generation > 1;

CREATE TABLE login_events (
    id             INTEGER PRIMARY KEY,
    host_id        TEXT NOT NULL REFERENCES hosts (host_id),
    tenant_id      TEXT NOT NULL,
    cursor         INTEGER NOT NULL,
    at             TEXT NOT NULL,
    received_at    TEXT NOT NULL,
    outcome        TEXT NOT NULL,
    method         TEXT NOT NULL,
    unix_user      TEXT NOT NULL,
    source_ip      TEXT NOT NULL,
    source_port    INTEGER NOT NULL,
    key_type       TEXT,
    fingerprint    TEXT,
    -- admin, tenant, unmanaged (a key keyward did not issue), or NULL for non-key methods.
    key_kind       TEXT,
    key_generation INTEGER,
    sshd_pid       INTEGER,
    UNIQUE (host_id, cursor)
);
CREATE INDEX login_events_tenant ON login_events (tenant_id, id);
CREATE INDEX login_events_at ON login_events (at);
CREATE INDEX login_events_fingerprint ON login_events (fingerprint, at);

-- Login events an agent had to drop from its full spool.
ALTER TABLE hosts ADD COLUMN logins_dropped INTEGER NOT NULL DEFAULT 0;
