//! The host's SSH host public keys, reported in `Hello` so that a tenant's first connection can be
//! checked against a `known_hosts` line instead of trusted on first use.

use std::path::Path;

use keyward_common::keys::public_key_fingerprint;

/// Reads `dir/ssh_host_*_key.pub` and returns each key as `type base64` (the comment, usually
/// `root@hostname`, is dropped), sorted. Files that are not a valid public key are skipped with a
/// warning: one odd file must not hide the others.
pub fn read_host_keys(dir: &Path) -> Vec<String> {
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) => {
            tracing::warn!(dir = %dir.display(), error = %e, "cannot list the SSH host keys");
            return Vec::new();
        }
    };
    let mut keys = Vec::new();
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        if !(name.starts_with("ssh_host_") && name.ends_with("_key.pub")) {
            continue;
        }
        let path = entry.path();
        match std::fs::read_to_string(&path) {
            Ok(text) => match host_key_line(&text) {
                Some(line) => keys.push(line),
                None => {
                    tracing::warn!(path = %path.display(), "not an SSH public key; not reported");
                }
            },
            Err(e) => tracing::warn!(path = %path.display(), error = %e, "cannot read"),
        }
    }
    keys.sort();
    keys.dedup();
    keys
}

/// `type base64` of a `.pub` file's first line, when it parses as a public key.
fn host_key_line(text: &str) -> Option<String> {
    let mut fields = text.lines().next()?.split_whitespace();
    let line = format!("{} {}", fields.next()?, fields.next()?);
    public_key_fingerprint(&line).ok().map(|_| line)
}

#[cfg(test)]
mod tests {
    use super::*;

    const ED: &str =
        "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl";

    #[test]
    fn host_keys_are_read_without_comments() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("ssh_host_ed25519_key.pub"),
            format!("{ED} root@vps\n"),
        )
        .unwrap();
        std::fs::write(dir.path().join("ssh_host_rsa_key.pub"), "garbage\n").unwrap();
        std::fs::write(dir.path().join("ssh_host_ed25519_key"), "PRIVATE").unwrap();
        std::fs::write(dir.path().join("other.pub"), format!("{ED}\n")).unwrap();
        assert_eq!(read_host_keys(dir.path()), vec![ED.to_owned()]);
        assert!(read_host_keys(&dir.path().join("missing")).is_empty());
    }
}
