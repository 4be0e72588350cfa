-- SSH session recordings (issue #19). Keep in step with ../postgres/0020_session_recordings.sql.
--
-- A recording's bytes (tlog's JSON lines, as the agent sent them) are in the object store
-- ([recordings] store), one object per chunk: recordings/{host_id}/{recording_id}/{seq}.jsonl.
-- Its metadata is here. (host_id, recording_id) is the agent's name for it; id is the API's.
-- next_seq is the next chunk taken: a chunk below it is acknowledged again and not stored
-- twice, one above it is refused. size_bytes counts the bytes kept; past [recordings]
-- max_bytes a recording is truncated: later chunks are acknowledged and counted in
-- dropped_bytes, not kept. sha256 (hex) is of the kept bytes, in order, set when it completes.
CREATE TABLE session_recordings (
    id             TEXT PRIMARY KEY,
    host_id        TEXT NOT NULL,
    recording_id   TEXT NOT NULL,
    tenant_id      TEXT NOT NULL,
    unix_user      TEXT NOT NULL,
    user_kind      TEXT NOT NULL CHECK (user_kind IN ('admin', 'tenant')),
    source_ip      TEXT NOT NULL,
    source_port    INTEGER NOT NULL,
    started_at     TEXT NOT NULL,
    ended_at       TEXT,
    received_at    TEXT NOT NULL,
    next_seq       INTEGER NOT NULL DEFAULT 0,
    size_bytes     INTEGER NOT NULL DEFAULT 0,
    dropped_bytes  INTEGER NOT NULL DEFAULT 0,
    input_recorded INTEGER NOT NULL DEFAULT 0,
    truncated      INTEGER NOT NULL DEFAULT 0,
    state          TEXT NOT NULL CHECK (state IN ('open', 'complete')),
    sha256         TEXT,
    login_id       INTEGER,
    fingerprint    TEXT,
    certificate_id TEXT,
    UNIQUE (host_id, recording_id)
);
CREATE INDEX session_recordings_tenant ON session_recordings (tenant_id, started_at);
CREATE INDEX session_recordings_host_state ON session_recordings (host_id, state);
CREATE INDEX session_recordings_received ON session_recordings (received_at);

-- A tenant's recording policy; a tenant without a row has the default (admin user recorded,
-- tenant user not, no keystrokes).
CREATE TABLE recording_policies (
    tenant_id     TEXT PRIMARY KEY REFERENCES tenants (tenant_id),
    record_admin  INTEGER NOT NULL,
    record_tenant INTEGER NOT NULL,
    record_input  INTEGER NOT NULL,
    updated_at    TEXT NOT NULL
);

-- The agent said in its hello that it records sessions (tlog installed and configured).
ALTER TABLE hosts ADD COLUMN agent_records INTEGER NOT NULL DEFAULT 0;
