# keyward-tenant: a tenant reads its own tenant SSH key set, and nothing else.
#
# Who gets it: every tenant's Vault entity (or an identity group of tenant entities). The entity
# must carry the metadata `tenant_id=<tenant id>`; the path below is filled in from it when a
# token is used, so one policy serves every tenant and each tenant reaches only its own key.
# An entity without `tenant_id` (and a token with no entity at all) gets nothing from this policy:
# Vault drops a path whose template cannot be filled in.
#
# This is the product document's "Tenant read-only access to own SSH keys"
# (`vps/{{identity.entity.metadata.tenant_id}}/tenant_ssh/*`) written for a KV v2 mount, whose
# contents are under `vps/data/`. No access at all to `admin_ssh` (keyward's own key to the
# tenant's VPS), to other tenants, to listing, or to writing, deleting or destroying versions.
# Written for the KV v2 mount `vps`; replace `vps/` if keyward runs with another mount.
#
# Note: this read bypasses the control plane's one-time-download rule and its audit trail; Vault's
# own audit device records it.

# The key set's contents: the current version, or an earlier one with `?version=N`.
path "vps/data/{{identity.entity.metadata.tenant_id}}/tenant_ssh" {
  capabilities = ["read"]
}

# The key set's metadata: version numbers and created/deleted times, which are the key's rotation
# history, and no key material. Granted so that a tenant can see when its key was rotated and which
# version is current (`bao kv metadata get`), as the keyward API also shows it. Read only: writing
# metadata could prune the history (`max_versions`) or delete the secret.
path "vps/metadata/{{identity.entity.metadata.tenant_id}}/tenant_ssh" {
  capabilities = ["read"]
}
