-- Second factors for step-up on sensitive operations (issue #17, TOTP). Keep in step with
-- ../postgres/0018_mfa.sql.
--
-- A factor belongs to a principal (owner): 'tenant:{tenant_id}' (any of the tenant's tokens
-- steps up with it) or 'admin:{token_id}' (the admin token that enrolled it). The TOTP seed is
-- sealed with AES-256-GCM under a key kept in Vault (_keyward/mfa_seal_key), the factor id and
-- owner its associated data: a row copied to another owner does not open. last_step is the
-- last RFC 6238 time step accepted (a code is taken once: UPDATE ... WHERE last_step < step).
CREATE TABLE mfa_factors (
    factor_id    TEXT PRIMARY KEY,
    owner        TEXT NOT NULL,
    kind         TEXT NOT NULL CHECK (kind IN ('totp')),
    -- base64 of nonce (12 bytes) || ciphertext || tag.
    sealed_seed  TEXT NOT NULL,
    last_step    INTEGER NOT NULL DEFAULT 0,
    created_at   TEXT NOT NULL,
    confirmed_at TEXT,
    last_used_at TEXT
);
CREATE INDEX mfa_factors_owner ON mfa_factors (owner);

-- Recovery codes, shown once at confirmation: SHA-256 (hex) of the owner and the code (80
-- random bits). used_at is set once (UPDATE ... WHERE used_at IS NULL).
CREATE TABLE mfa_recovery_codes (
    factor_id TEXT NOT NULL REFERENCES mfa_factors (factor_id) ON DELETE CASCADE,
    owner     TEXT NOT NULL,
    code_hash TEXT NOT NULL,
    used_at   TEXT,
    PRIMARY KEY (owner, code_hash)
);
CREATE INDEX mfa_recovery_codes_factor ON mfa_recovery_codes (factor_id);

-- Failed step-ups per principal in the current window (rate limit and lockout).
CREATE TABLE mfa_failures (
    owner        TEXT PRIMARY KEY,
    window_start TEXT NOT NULL,
    failures     INTEGER NOT NULL
);

-- A tenant's own list of operations that need a fresh second factor (a JSON array of names);
-- a tenant without a row follows the deployment's [mfa] require_for.
CREATE TABLE mfa_policies (
    tenant_id   TEXT PRIMARY KEY REFERENCES tenants (tenant_id),
    require_for TEXT NOT NULL,
    updated_at  TEXT NOT NULL
);
