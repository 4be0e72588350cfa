-- WebAuthn security keys and passkeys as second factors (issue #17). Keep in step with
-- ../sqlite/0021_mfa_webauthn.sql.
--
-- A credential belongs to a principal (owner, as in mfa_factors: 'tenant:{tenant_id}' or
-- 'admin:{token_id}') and is listed with its TOTP factors. What is stored is public: the
-- credential id (base64url, unique across owners: one authenticator credential is one
-- principal's), webauthn-rs's Passkey (JSON: the public key, the credential id, the signature
-- counter) and the counter again, which a step-up raises with a conditional UPDATE (a counter
-- that does not grow is a cloned authenticator's, refused).
CREATE TABLE mfa_webauthn_credentials (
    factor_id     TEXT PRIMARY KEY,
    owner         TEXT NOT NULL,
    name          TEXT NOT NULL,
    credential_id TEXT NOT NULL UNIQUE,
    passkey       TEXT NOT NULL,
    sign_count    BIGINT NOT NULL DEFAULT 0,
    created_at    TEXT NOT NULL,
    last_used_at  TEXT
);
CREATE INDEX mfa_webauthn_credentials_owner ON mfa_webauthn_credentials (owner);

-- Ceremonies under way, kept here and not in one replica's memory: a registration (its id is the
-- factor id it will have) or a step-up challenge (its id is the challenge, base64url, which the
-- browser's signed client data names). state is webauthn-rs's ceremony state (JSON). Each is
-- taken once (UPDATE ... WHERE used_at IS NULL AND expires_at > now); a used one is kept until
-- it expires so that a replay is told apart from a forgery.
CREATE TABLE mfa_webauthn_ceremonies (
    ceremony_id TEXT PRIMARY KEY,
    owner       TEXT NOT NULL,
    kind        TEXT NOT NULL CHECK (kind IN ('registration', 'authentication')),
    state       TEXT NOT NULL,
    created_at  TEXT NOT NULL,
    expires_at  TEXT NOT NULL,
    used_at     TEXT
);
CREATE INDEX mfa_webauthn_ceremonies_expiry ON mfa_webauthn_ceremonies (expires_at);
