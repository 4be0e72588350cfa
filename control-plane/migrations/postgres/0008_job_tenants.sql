-- The tenants of a bulk rotation job: its work queue, shared by every replica. Keep in step with
-- ../sqlite/0008_job_tenants.sql.
--
-- A replica claims a few pending tenants for a lease (on PostgreSQL with FOR UPDATE SKIP LOCKED,
-- so replicas never wait for each other's claims) and raises the lease while it works. A claim
-- whose lease ran out (its replica died) is claimed again by another. Each secret of a tenant
-- that a job rotated is added to `done` in the same transaction as the rotation itself, and only
-- while the claim is still the rotating replica's: a tenant taken over is never rotated twice.
CREATE TABLE rotation_job_tenants (
    job_id      TEXT NOT NULL,
    tenant_id   TEXT NOT NULL,
    state       TEXT NOT NULL DEFAULT 'pending'
                CHECK (state IN ('pending', 'claimed', 'rotated', 'skipped', 'failed')),
    -- The claiming replica's worker id, and until when its claim holds (ISO 8601, UTC).
    claimed_by  TEXT,
    lease_until TEXT,
    -- Space-separated secret names rotated so far: admin_ssh, tenant_ssh, smtp, dkim.
    done        TEXT NOT NULL DEFAULT '',
    -- A failed tenant's problem code and reason.
    code        TEXT,
    reason      TEXT,
    PRIMARY KEY (job_id, tenant_id)
);
-- What is left to claim of a job.
CREATE INDEX rotation_job_tenants_open ON rotation_job_tenants (job_id, state)
    WHERE state IN ('pending', 'claimed');
