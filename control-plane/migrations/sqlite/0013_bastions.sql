-- Bastions (jump hosts). Keep in step with ../postgres/0013_bastions.sql.
--   hosts.role: 'vps' (a tenant's server) or 'bastion' (a jump host of the platform, registered
--   under the tenant that runs it; its jump user's principals let each tenant's certificates
--   forward to that tenant's VPS only).
ALTER TABLE hosts ADD COLUMN role TEXT NOT NULL DEFAULT 'vps' CHECK (role IN ('vps', 'bastion'));
-- A bastion's state lists every tenant's revoked certificates: the partial index
-- ssh_certificates_revoked (0010) holds just those.
