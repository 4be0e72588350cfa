-- A tenant's own policy for downloading its private key (issue #17). Keep in step with
-- ../postgres/0016_download_policies.sql. A tenant without a row follows the deployment's
-- [download] settings. require_passphrase is 0 or 1 (the queries use no booleans).
CREATE TABLE download_policies (
    tenant_id             TEXT PRIMARY KEY REFERENCES tenants (tenant_id),
    require_passphrase    INTEGER NOT NULL CHECK (require_passphrase IN (0, 1)),
    min_passphrase_length INTEGER NOT NULL CHECK (min_passphrase_length BETWEEN 1 AND 1024),
    updated_at            TEXT NOT NULL
);
