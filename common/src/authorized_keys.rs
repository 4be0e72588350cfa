//! The content of `~/.ssh/authorized_keys`: rendering managed lines and merging them into a
//! user's file.
//!
//! Which key a user's line holds is decided exactly as sshd decides it: see [`parse_line`] and
//! the rules in [`line`], proven against OpenSSH by
//! `common/tests/authorized_keys_vs_openssh.rs` (every generated line against `ssh-keygen -l`) and
//! the `authorized_keys_logins` integration test (real logins through Debian's sshd).
//!
//! This module is pure (no I/O): the agent's writer reads the current file, calls [`merge`] and
//! writes the result. Everything keyward puts into the file is *rendered* from a parsed
//! [`ssh_key::PublicKey`], never copied from the text it was given, so a key string from the
//! control plane cannot smuggle options (`command="..."`, `from=`), extra lines or NUL bytes into
//! a file that sshd trusts. Each managed line carries the marker comment
//! `keyward-managed:{kind}:{generation}`, which is how a later [`merge`] recognises (and replaces)
//! it.

use std::fmt;
use std::str::FromStr;

use chrono::{DateTime, Datelike, Utc};
use serde::{Deserialize, Serialize};
use ssh_key::{Algorithm, PublicKey};

use crate::keys::{Fingerprint, KeyKind};

pub mod line;
pub use line::{KeyLine, b64_pton, parse_line};

/// Every line keyward writes carries a comment starting with this.
pub const MARKER_PREFIX: &str = "keyward-managed:";

/// How a managed user's file treats lines keyward did not write.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    /// Only managed keys remain (the admin user's default).
    Exclusive,
    /// The user's own lines are kept; managed keys are appended (the tenant user's default).
    Preserve,
}

impl Mode {
    /// The default mode for the user that holds keys of `kind`.
    pub fn default_for(kind: KeyKind) -> Mode {
        match kind {
            KeyKind::Admin => Mode::Exclusive,
            KeyKind::Tenant => Mode::Preserve,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Exclusive => "exclusive",
            Mode::Preserve => "preserve",
        }
    }
}

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Mode {
    type Err = AuthorizedKeysError;
    fn from_str(s: &str) -> Result<Self, AuthorizedKeysError> {
        match s {
            "exclusive" => Ok(Mode::Exclusive),
            "preserve" => Ok(Mode::Preserve),
            other => Err(AuthorizedKeysError::UnknownMode(
                other.chars().take(40).collect(),
            )),
        }
    }
}

/// One key the control plane wants in a user's file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ManagedKey {
    pub kind: KeyKind,
    pub generation: i64,
    /// OpenSSH public key: `type base64 [comment]`, no options, one line.
    pub public_key: String,
    /// Set while the key is in its grace period; sshd refuses it after this time.
    pub expires_at: Option<DateTime<Utc>>,
    /// The options the agent itself adds to the line (never taken from the key text).
    #[serde(default)]
    pub options: LineOptions,
}

/// The `authorized_keys` options a managed line may carry besides `expiry-time`, each decided by
/// the agent from the signed state and its own configuration.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LineOptions {
    /// `command="..."`: what sshd runs for every session the key opens (shell, command or
    /// subsystem; the client's request is in `SSH_ORIGINAL_COMMAND`). The agent's session
    /// recorder. Only `[A-Za-z0-9/._ -]` is written, so it cannot close the quotes.
    pub command: Option<String>,
    /// `verify-required`: a FIDO2 key must prove user verification (PIN or biometric) as well as
    /// presence.
    pub verify_required: bool,
}

/// Why a managed key was refused. Nothing is rendered for a refused key, and [`merge`] fails
/// as a whole, so a bad key never produces a half-updated file.
#[derive(Debug, thiserror::Error)]
pub enum AuthorizedKeysError {
    #[error(
        "{kind} key of generation {generation} contains a line break or NUL byte; refused \
         (it could add lines to authorized_keys)"
    )]
    ForbiddenCharacter { kind: KeyKind, generation: i64 },
    #[error(
        "{kind} key of generation {generation} carries authorized_keys options; refused \
         (the options of a managed line are the agent's own)"
    )]
    HasOptions { kind: KeyKind, generation: i64 },
    #[error("{kind} key of generation {generation} is not an OpenSSH public key: {error}")]
    Parse {
        kind: KeyKind,
        generation: i64,
        error: ssh_key::Error,
    },
    #[error(
        "{kind} key of generation {generation} uses algorithm {algorithm:?}, which keyward does not manage"
    )]
    UnsupportedAlgorithm {
        kind: KeyKind,
        generation: i64,
        algorithm: String,
    },
    #[error(
        "{kind} key of generation {generation} expires at {expires_at}, which sshd's \
         expiry-time cannot express (years 1970 to 9999 only)"
    )]
    BadExpiry {
        kind: KeyKind,
        generation: i64,
        expires_at: DateTime<Utc>,
    },
    #[error("unknown authorized_keys mode {0:?}; expected \"exclusive\" or \"preserve\"")]
    UnknownMode(String),
    #[error(
        "{kind} key of generation {generation}: the forced command may hold only letters, digits, \
         '/', '.', '_', '-' and spaces; refused"
    )]
    BadCommand { kind: KeyKind, generation: i64 },
}

/// The marker comment of a managed line.
pub fn marker(kind: KeyKind, generation: i64) -> String {
    format!("{MARKER_PREFIX}{kind}:{generation}")
}

/// Renders one managed key as an `authorized_keys` line (without the trailing newline):
/// `[command="...",][expiry-time="YYYYMMDDHHMMZ",][verify-required ]type base64
/// keyward-managed:{kind}:{generation}` (the options present, comma-separated).
///
/// The algorithm name and base64 blob are re-encoded from the parsed key; the key's own comment
/// is dropped. The expiry is written in UTC with minute precision, **rounded down**: sshd stops
/// accepting the key once that minute has passed, so a grace key dies up to 59 s early and never
/// outlives the grace it was given (failing safe beats a revoked key lingering).
pub fn render_line(key: &ManagedKey) -> Result<String, AuthorizedKeysError> {
    let (kind, generation) = (key.kind, key.generation);
    // Checked before parsing so the reason is exact; the parser would refuse most of these too.
    if key.public_key.contains(['\n', '\r', '\0']) {
        return Err(AuthorizedKeysError::ForbiddenCharacter { kind, generation });
    }
    let parsed = match PublicKey::from_openssh(&key.public_key) {
        Ok(parsed) => parsed,
        Err(error) => {
            // A string that parses once its leading options are skipped is an option injection
            // attempt (or a confused caller): say so rather than "does not parse".
            let has_options =
                parse_line(key.public_key.as_bytes()).is_some_and(|line| line.options.is_some());
            return Err(if has_options {
                AuthorizedKeysError::HasOptions { kind, generation }
            } else {
                AuthorizedKeysError::Parse {
                    kind,
                    generation,
                    error,
                }
            });
        }
    };
    if let Algorithm::Other(name) = parsed.algorithm() {
        // `name@domain` algorithms parse as opaque blobs; sshd would not use them, and we do not
        // want to write bytes we do not understand into a file sshd trusts.
        return Err(AuthorizedKeysError::UnsupportedAlgorithm {
            kind,
            generation,
            algorithm: name.as_str().to_owned(),
        });
    }
    let marked = PublicKey::new(parsed.key_data().clone(), marker(kind, generation));
    let body = marked
        .to_openssh()
        .map_err(|error| AuthorizedKeysError::Parse {
            kind,
            generation,
            error,
        })?;
    let mut options = Vec::new();
    if let Some(command) = &key.options.command {
        let allowed = |c: char| c.is_ascii_alphanumeric() || "/._- ".contains(c);
        if command.is_empty() || !command.chars().all(allowed) {
            return Err(AuthorizedKeysError::BadCommand { kind, generation });
        }
        options.push(format!("command=\"{command}\""));
    }
    if let Some(at) = key.expires_at {
        if !(1970..=9999).contains(&at.year()) {
            return Err(AuthorizedKeysError::BadExpiry {
                kind,
                generation,
                expires_at: at,
            });
        }
        // `%M` without seconds truncates, which is the rounding down documented above.
        options.push(format!("expiry-time=\"{}\"", at.format("%Y%m%d%H%MZ")));
    }
    if key.options.verify_required {
        options.push("verify-required".to_owned());
    }
    if options.is_empty() {
        Ok(body)
    } else {
        Ok(format!("{} {body}", options.join(",")))
    }
}

/// Computes the new content of a user's `authorized_keys`.
///
/// - [`Mode::Exclusive`]: only the managed lines.
/// - [`Mode::Preserve`]: the user's own lines, in order and byte for byte (comments, blank
///   lines, `'\r'`, invalid UTF-8 and NUL bytes too), followed by the managed lines in one block.
///   Every existing line carrying [`MARKER_PREFIX`] is dropped (it is re-rendered from `managed`,
///   or gone if its key is), and so is every user line in which sshd would find a key in
///   `denied` ([`parse_line`]): keys keyward issued and then replaced or revoked, which a user
///   could otherwise keep alive by copying them as "their own" line.
///
/// Lines are split at `'\n'` as sshd's `getline` does. Managed lines are sorted by kind,
/// generation and text, and duplicates removed, so the output does not depend on the order the
/// control plane lists keys in and an unchanged state never rewrites the file. Every line ends
/// with `'\n'` (an empty result is empty). If any managed key is refused, the whole merge fails.
pub fn merge(
    existing: &[u8],
    managed: &[ManagedKey],
    mode: Mode,
    denied: &[Fingerprint],
) -> Result<Vec<u8>, AuthorizedKeysError> {
    let mut rendered = managed
        .iter()
        .map(|key| Ok(((key.kind, key.generation), render_line(key)?)))
        .collect::<Result<Vec<_>, AuthorizedKeysError>>()?;
    rendered.sort();
    rendered.dedup();

    let mut out = Vec::with_capacity(existing.len() + rendered.len() * 128);
    if mode == Mode::Preserve {
        for line in lines(existing) {
            if is_managed_line(line) {
                continue;
            }
            if parse_line(line).is_some_and(|key| denied.contains(&key.fingerprint)) {
                continue;
            }
            out.extend_from_slice(line);
            out.push(b'\n');
        }
    }
    for (_, line) in rendered {
        out.extend_from_slice(line.as_bytes());
        out.push(b'\n');
    }
    Ok(out)
}

/// The lines of `content` as sshd's `getline` splits them, without their `'\n'`; a final
/// `'\n'` does not start another line.
fn lines(content: &[u8]) -> impl Iterator<Item = &[u8]> {
    let empty = content.is_empty();
    let content = content.strip_suffix(b"\n").unwrap_or(content);
    content.split(|&b| b == b'\n').filter(move |_| !empty)
}

/// The fingerprint of every line in `content` that sshd reads as a key ([`parse_line`]), in
/// order, and whether the line is managed (carries [`MARKER_PREFIX`]). Used for drift reports.
pub fn fingerprints(content: impl AsRef<[u8]>) -> Vec<(Fingerprint, bool)> {
    lines(content.as_ref())
        .filter_map(|line| parse_line(line).map(|key| (key.fingerprint, is_managed_line(line))))
        .collect()
}

/// Whether a line was written by keyward. Deliberately broad (anywhere in the line, even after a
/// NUL): a user line that merely mentions the marker is dropped too, which can only remove
/// access, never add it.
pub fn is_managed_line(line: impl AsRef<[u8]>) -> bool {
    line.as_ref()
        .windows(MARKER_PREFIX.len())
        .any(|w| w == MARKER_PREFIX.as_bytes())
}

#[cfg(test)]
mod tests;
