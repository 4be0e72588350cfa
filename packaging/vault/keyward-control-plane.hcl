# keyward-control-plane: the policy of the `keyward-server` control plane.
#
# Who gets it: the control plane's own Vault identity, normally through the AppRole role it logs
# in with (`token_policies=keyward-control-plane`, see README.md). Nobody else.
#
# What the control plane does in Vault, and therefore all this policy allows:
#   * keeps one SSH key pair per (tenant, kind) as a KV v2 secret at
#     `vps/{tenant_id}/admin_ssh` and `vps/{tenant_id}/tenant_ssh`;
#   * writes every new key as a new version with check-and-set (`options.cas`), after reading the
#     secret's metadata to learn the current version;
#   * reads a given version back when a tenant downloads its private key;
#   * keeps each tenant's SMTP credentials and DKIM key at `vps/{tenant_id}/smtp` and
#     `vps/{tenant_id}/dkim`, written the same way (check-and-set), and never read back;
#   * takes snapshots of Vault's integrated (raft) storage for backups, when configured;
#   * has user certificates signed by the SSH secrets engine at `ssh/` with its one role
#     `keyward-user` (the CA key never leaves Vault), and lists the engine's issuers to learn every
#     CA public key hosts must trust (current and next during a CA rotation);
#   * keeps its own token alive (lookup-self, renew-self);
#   * when an admin offboards a tenant (`DELETE /api/v1/admin/tenants/{tenant_id}`, audited), lists
#     that tenant's folder and deletes the metadata of its four secrets, which destroys every
#     version of them (GDPR erasure).
#
# What it deliberately cannot do: delete, undelete or destroy single versions (the KV version
# history is the rotation history and the audit trail relies on it), write metadata (which could
# shrink `max_versions` and so prune the history), delete the metadata of any secret but a
# tenant's four (never keyward's own), patch, list tenants, read the SMTP passwords
# or DKIM private keys it wrote, read or write any other secret name or mount, restore a snapshot,
# create tokens, or manage policies, auth methods, mounts or audit devices. On the SSH engine it
# cannot sign with any other role, issue key pairs (`ssh/issue/`), read or write roles, set or
# delete the CA (`ssh/config/ca`), import, rename, delete or choose the default issuer, or use
# the engine's OTP and key paths: its role alone decides what may be signed.
#
# Written for the KV v2 mount `vps`; if keyward runs with another `vault.mount`, replace `vps/`
# below. `+` matches exactly one path segment: one tenant id (^[a-z0-9][a-z0-9-]{0,62}$).
# Likewise `ssh/` and `keyward-user` are `vault.ssh_mount` and `vault.ssh_user_role`.

# The key sets. `create` writes the first version (cas=0), `update` every later one (cas=N);
# `read` returns the current version or `?version=N`.
path "vps/data/+/admin_ssh" {
  capabilities = ["create", "read", "update"]
}

path "vps/data/+/tenant_ssh" {
  capabilities = ["create", "read", "update"]
}

# The key sets' metadata: the current version to check-and-set against, and the version history
# shown to administrators: `read`, below with offboarding's `delete`.

# The tenants' SMTP credentials and DKIM keys: written as new versions (`create` for the first,
# `update` for the next), never read: the mail servers read them with policies of their own.
path "vps/data/+/smtp" {
  capabilities = ["create", "update"]
}

path "vps/data/+/dkim" {
  capabilities = ["create", "update"]
}

# Their metadata: the current version to check-and-set against: `read`, below with
# offboarding's `delete`.

# Offboarding a tenant: `LIST vps/metadata/{tenant_id}/` finds what Vault holds for it, and
# `DELETE vps/metadata/{tenant_id}/{name}` destroys every version and the history of each of its
# secrets. Only the four names keyward writes: `_keyward/agent_ca` and `_keyward/state_signing`
# stay out of reach, and a secret of another name under a tenant (written by someone else) is left
# for its owner (the offboarding's status then says `vault_denied`).
path "vps/metadata/+/" {
  capabilities = ["list"]
}

path "vps/metadata/+/admin_ssh" {
  capabilities = ["read", "delete"]
}

path "vps/metadata/+/tenant_ssh" {
  capabilities = ["read", "delete"]
}

path "vps/metadata/+/smtp" {
  capabilities = ["read", "delete"]
}

path "vps/metadata/+/dkim" {
  capabilities = ["read", "delete"]
}

# SSH user certificates: `POST ssh/sign/keyward-user` signs the public key it is given, with the
# key id, principals, validity and extensions asked for, within the role's limits (`max_ttl`,
# `allowed_extensions`). `update` on this one role only.
path "ssh/sign/keyward-user" {
  capabilities = ["update"]
}

# The CA public keys: `LIST ssh/issuers` answers every issuer's id, name, public key and whether
# it is the default. No private material is readable through it.
path "ssh/issuers" {
  capabilities = ["list"]
}

# HashiCorp Vault's engine keeps one CA and has no `issuers` paths: its public key is read here
# (public by design; the engine serves it even without a token when the mount exists).
path "ssh/public_key" {
  capabilities = ["read"]
}

# Backups: `GET sys/storage/raft/snapshot` streams a snapshot of integrated storage. `read` only:
# restoring one (`POST` on this path, or `snapshot-force`) is an operator's act, not keyward's.
path "sys/storage/raft/snapshot" {
  capabilities = ["read"]
}

# The control plane's own token: read its TTL and renew it. Vault's `default` policy grants these
# too, but the AppRole role may be created with `token_no_default_policy=true`.
path "auth/token/lookup-self" {
  capabilities = ["read"]
}

path "auth/token/renew-self" {
  capabilities = ["update"]
}

# keyward's own secrets: the agent CA's key and certificate, and the Ed25519 key that signs every
# desired state sent to agents. `_` cannot start a tenant id, so `_keyward` never collides with a
# tenant. The control plane creates each once (check-and-set 0) and reads it at start; it can never
# overwrite or delete them, so a compromised control plane cannot swap the CA or signing key
# that enrolled agents have pinned.
path "vps/data/_keyward/agent_ca" {
  capabilities = ["create", "read"]
}

path "vps/data/_keyward/state_signing" {
  capabilities = ["create", "read"]
}

# The key that turns old login events' source addresses and user names into pseudonyms
# (retention.pseudonymise_logins_after): kept here, never in SQL, so that the database alone
# cannot turn a pseudonym back into an address.
path "vps/data/_keyward/login_pseudonym_key" {
  capabilities = ["create", "read"]
}

# The audit chain's signed head (`[audit_signing]`, off unless a key is configured): an Ed25519
# key of the transit engine signs the head and never leaves Vault; the control plane may only
# sign with it and read its public keys, never export, rotate, configure or delete it. The newest
# signed head is kept here as a checkpoint, moved forward with check-and-set (never deleted): it
# is how a log cut short in SQL is told. With another transit mount or key name, change these.
path "transit/sign/keyward-audit" {
  capabilities = ["update"]
}

path "transit/keys/keyward-audit" {
  capabilities = ["read"]
}

path "vps/data/_keyward/audit_head" {
  capabilities = ["create", "read", "update"]
}

# The key that seals second factors' TOTP seeds in SQL (step-up MFA): kept here, never in SQL,
# so that the database alone yields no seed.
path "vps/data/_keyward/mfa_seal_key" {
  capabilities = ["create", "read"]
}
