-- Sign-in to the web UI with OpenID Connect (issue #17). Keep in step with
-- ../sqlite/0022_web_sessions.sql.
--
-- A sign-in in progress: what the callback needs to finish it (the nonce the ID token must carry
-- and the PKCE verifier), by the SHA-256 (hex) of its state. Taken once (DELETE ... whose row
-- count says which request took it) by whichever replica the callback reaches; expires after
-- ten minutes.
CREATE TABLE oidc_logins (
    state_hash    TEXT PRIMARY KEY,
    nonce         TEXT NOT NULL,
    pkce_verifier TEXT NOT NULL,
    created_at    TEXT NOT NULL,
    expires_at    TEXT NOT NULL
);
CREATE INDEX oidc_logins_expires ON oidc_logins (expires_at);

-- A signed-in browser: only the SHA-256 (hex) of the session id its cookie holds is stored.
-- principal is 'oidc:{issuer hash}:{sub}'; role 'admin' or 'tenant' (tenant_id set); idp_mfa_at
-- the provider's auth_time when its acr/amr said MFA happened (else NULL). A session ends at
-- last_seen_at + idle timeout or at expires_at (sign-in + absolute timeout), whichever is first;
-- sign-out deletes the row.
CREATE TABLE web_sessions (
    session_hash TEXT PRIMARY KEY,
    principal    TEXT NOT NULL,
    display_name TEXT NOT NULL,
    role         TEXT NOT NULL CHECK (role IN ('admin', 'tenant')),
    tenant_id    TEXT,
    idp_mfa_at   TEXT,
    created_at   TEXT NOT NULL,
    last_seen_at TEXT NOT NULL,
    expires_at   TEXT NOT NULL
);
CREATE INDEX web_sessions_expires ON web_sessions (expires_at);
