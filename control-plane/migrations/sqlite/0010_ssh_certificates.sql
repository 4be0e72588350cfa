-- SSH user certificates keyward had the Vault SSH CA sign, and the numbers that name them.
-- Keep in step with ../postgres/0010_ssh_certificates.sql.

-- keyward's own certificate numbers per tenant (the n of key id keyward:{tenant}:{kind}:{n}),
-- allocated before each signing: a number is never given twice, a failed signing leaves a gap.
ALTER TABLE tenants ADD COLUMN certificates_numbered INTEGER NOT NULL DEFAULT 0;

CREATE TABLE ssh_certificates (
    tenant_id       TEXT NOT NULL REFERENCES tenants (tenant_id),
    kind            TEXT NOT NULL CHECK (kind IN ('admin', 'tenant')),
    number          INTEGER NOT NULL,
    -- The CA's serial (a u64, in decimal: it does not fit a signed 64-bit column).
    serial          TEXT NOT NULL,
    issuer_id       TEXT NOT NULL,
    -- The CA key that signed it, OpenSSH form: the revocation list names serials per CA key.
    ca_public_key   TEXT NOT NULL,
    -- The certified key's SHA-256 fingerprint, and the certificate itself (public).
    key_fingerprint TEXT NOT NULL,
    certificate     TEXT NOT NULL,
    -- JSON array of strings.
    principals      TEXT NOT NULL,
    valid_after     TEXT NOT NULL,
    valid_before    TEXT NOT NULL,
    issued_at       TEXT NOT NULL,
    -- The API token that asked for it, and why.
    issued_by       TEXT NOT NULL,
    reason          TEXT NOT NULL,
    revoked_at      TEXT,
    revoked_by      TEXT,
    PRIMARY KEY (tenant_id, kind, number)
);
-- A host's state lists the tenant's revoked certificates still within their validity.
CREATE INDEX ssh_certificates_revoked ON ssh_certificates (tenant_id, valid_before)
    WHERE revoked_at IS NOT NULL;
-- Logins name the certificate by key id; listings go newest first.
CREATE INDEX ssh_certificates_issued ON ssh_certificates (tenant_id, issued_at);

-- A login by certificate: its key id and serial as sshd logged them (NULL for a plain key).
ALTER TABLE login_events ADD COLUMN certificate_id TEXT;
ALTER TABLE login_events ADD COLUMN certificate_serial TEXT;
