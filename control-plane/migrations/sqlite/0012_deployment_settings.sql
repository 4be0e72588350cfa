-- Values the replicas of a deployment agree on. Keep in step with
-- ../postgres/0012_deployment_settings.sql.
--   ssh_ca_keys: the SSH CA keys hosts trust (a JSON list of public keys), as any replica last
--   read them from Vault; a replica that reads other keys raises every host's generation once,
--   so that a host is in sync only once it applied them, and a replica that starts while Vault
--   is away trusts these.
CREATE TABLE deployment_settings (
    name  TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
