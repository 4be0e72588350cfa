-- Keys people bring (issue #17): a key set whose public key a tenant (or an admin, for the admin
-- user) registered instead of receiving a generated private key. Keep in step with
-- ../postgres/0019_registered_keys.sql.
--
-- origin: 'generated' (keyward made the key; Vault holds its private half) or 'registered'
-- (Vault holds the public key and metadata only). A registered key set is never rotated by
-- keyward: when it is due, the scheduler records a reminder, once per generation
-- (reminded_generation), and the API shows it overdue.
-- verify_required: the line of a FIDO2 key carries sshd's verify-required (0 or 1).
ALTER TABLE key_sets ADD COLUMN origin TEXT NOT NULL DEFAULT 'generated'
    CHECK (origin IN ('generated', 'registered'));
ALTER TABLE key_sets ADD COLUMN verify_required INTEGER NOT NULL DEFAULT 0
    CHECK (verify_required IN (0, 1));
ALTER TABLE key_sets ADD COLUMN reminded_generation INTEGER NOT NULL DEFAULT 0;

-- A tenant's own policy for registered keys. A tenant without a row takes any accepted type and
-- does not require user verification. Both flags are 0 or 1 (the queries use no booleans).
CREATE TABLE key_registration_policies (
    tenant_id       TEXT PRIMARY KEY REFERENCES tenants (tenant_id),
    require_fido2   INTEGER NOT NULL CHECK (require_fido2 IN (0, 1)),
    verify_required INTEGER NOT NULL CHECK (verify_required IN (0, 1)),
    updated_at      TEXT NOT NULL
);
