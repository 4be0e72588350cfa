-- Tenant offboarding (DELETE /api/v1/admin/tenants/{tenant_id}, #18). Keep in step with
-- ../postgres/0017_offboarding.sql.
--
-- A tenant's state: a row here means the tenant is being offboarded ('removing_keys': its
-- agents are removing the managed keys; 'destroying_secrets': its hosts are revoked, its Vault
-- secrets are being destroyed) or was ('completed'). Such a tenant gets no new key, token or host.
-- The worker of every replica resumes from these rows.
CREATE TABLE tenant_offboardings (
    tenant_id          TEXT PRIMARY KEY REFERENCES tenants (tenant_id),
    status             TEXT NOT NULL
        CHECK (status IN ('removing_keys', 'destroying_secrets', 'completed')),
    requested_at       TEXT NOT NULL,
    -- The admin token that asked.
    requested_by       TEXT,
    -- Hosts whose agents have not acknowledged the removal by then are revoked anyway.
    agent_wait_until   TEXT NOT NULL,
    tokens_revoked     INTEGER NOT NULL,
    -- JSON array: the secret names (under the tenant's Vault path) destroyed, all versions and
    -- metadata.
    vault_destroyed    TEXT NOT NULL DEFAULT '[]',
    vault_destroyed_at TEXT,
    -- Why the last attempt at the current step failed (a summary: no address, no path).
    last_error         TEXT,
    completed_at       TEXT
);
CREATE INDEX tenant_offboardings_open ON tenant_offboardings (status);

-- Each host of the tenant when its offboarding started, and the generation its agent must
-- acknowledge (the one that removes the managed keys and ends the sessions).
CREATE TABLE tenant_offboarding_hosts (
    tenant_id         TEXT NOT NULL REFERENCES tenant_offboardings (tenant_id),
    host_id           TEXT NOT NULL REFERENCES hosts (host_id),
    target_generation INTEGER NOT NULL,
    -- NULL while waiting; then how the host was let go.
    outcome           TEXT
        CHECK (outcome IN ('acknowledged', 'timed_out', 'never_enrolled', 'already_revoked')),
    revoked_at        TEXT,
    PRIMARY KEY (tenant_id, host_id)
);
