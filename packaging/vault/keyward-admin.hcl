# keyward-admin: full access to every tenant's SSH key sets, for human operators.
#
# Who gets it: keyward operators (break-glass, audits, recovery), attached to their Vault entity or
# to an identity group of operators. Not the control plane (see keyward-control-plane.hcl) and not
# tenants (see keyward-tenant.hcl).
#
# This is the product document's "Admin full access to all SSH keys" (`vps/*/admin_ssh/*`,
# `vps/*/tenant_ssh/*` with create, read, update, delete, list) written for a KV v2 mount, where
# one secret is reached through several API paths:
#   vps/data/...      the versions' contents      (read, write, soft-delete the latest version)
#   vps/metadata/...  the version history         (read, configure, delete every version for good)
#   vps/delete/...    soft-delete given versions
#   vps/undelete/...  restore soft-deleted versions
#   vps/destroy/...   destroy given versions for good
# The seed's `*` was a tenant id: it is `+` here, which matches exactly one path segment, so these
# paths reach exactly the two SSH key sets of each tenant and no other secret under `vps/`.
# Written for the KV v2 mount `vps`; replace `vps/` if keyward runs with another mount.

path "vps/data/+/admin_ssh" {
  capabilities = ["create", "read", "update", "delete", "list"]
}

path "vps/data/+/tenant_ssh" {
  capabilities = ["create", "read", "update", "delete", "list"]
}

path "vps/metadata/+/admin_ssh" {
  capabilities = ["create", "read", "update", "delete", "list"]
}

path "vps/metadata/+/tenant_ssh" {
  capabilities = ["create", "read", "update", "delete", "list"]
}

path "vps/delete/+/admin_ssh" {
  capabilities = ["create", "read", "update", "delete", "list"]
}

path "vps/delete/+/tenant_ssh" {
  capabilities = ["create", "read", "update", "delete", "list"]
}

path "vps/undelete/+/admin_ssh" {
  capabilities = ["create", "read", "update", "delete", "list"]
}

path "vps/undelete/+/tenant_ssh" {
  capabilities = ["create", "read", "update", "delete", "list"]
}

path "vps/destroy/+/admin_ssh" {
  capabilities = ["create", "read", "update", "delete", "list"]
}

path "vps/destroy/+/tenant_ssh" {
  capabilities = ["create", "read", "update", "delete", "list"]
}

# Listing: the tenants (`vps/metadata/`) and one tenant's secrets (`vps/metadata/{tenant_id}/`).
path "vps/metadata/" {
  capabilities = ["list"]
}

path "vps/metadata/+" {
  capabilities = ["list"]
}
