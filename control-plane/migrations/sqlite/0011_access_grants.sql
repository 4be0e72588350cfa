-- Just-in-time access: requests for a certificate to enter a tenant's VPS for a while, their
-- approvals, and the certificate each approved one got. Keep in step with
-- ../postgres/0011_access_grants.sql.

-- Whether the platform's admins need the tenant's approval to enter its VPSs ('approval'), or
-- the tenant is only shown that they did ('notify').
ALTER TABLE tenants ADD COLUMN platform_access TEXT NOT NULL DEFAULT 'notify'
    CHECK (platform_access IN ('notify', 'approval'));

CREATE TABLE access_grants (
    grant_id          TEXT PRIMARY KEY,
    tenant_id         TEXT NOT NULL REFERENCES tenants (tenant_id),
    kind              TEXT NOT NULL CHECK (kind IN ('admin', 'tenant')),
    -- The API token that asked, and its role.
    requested_by      TEXT NOT NULL,
    requester_role    TEXT NOT NULL CHECK (requester_role IN ('admin', 'tenant')),
    -- The requester's own public key (OpenSSH form) and its fingerprint.
    public_key        TEXT NOT NULL,
    key_fingerprint   TEXT NOT NULL,
    duration_seconds  INTEGER NOT NULL,
    reason            TEXT NOT NULL,
    -- pending, active, denied, lapsed (not decided in time), revoked, expired.
    status            TEXT NOT NULL,
    needs_tenant      INTEGER NOT NULL,
    needs_admin       INTEGER NOT NULL,
    tenant_approved_by TEXT,
    admin_approved_by TEXT,
    decided_at        TEXT,
    -- Who denied or revoked it.
    ended_by          TEXT,
    requested_at      TEXT NOT NULL,
    decide_by         TEXT NOT NULL,
    -- The certificate issued on approval (its number; the kind is the grant's).
    certificate_number INTEGER,
    ends_at           TEXT
);
CREATE INDEX access_grants_tenant ON access_grants (tenant_id, requested_at);
-- The sweep ends active grants whose window closed and lapses pending ones.
CREATE INDEX access_grants_open ON access_grants (status, ends_at);
