//! OpenSSH's log messages about logins, as typed events.
//!
//! One line of sshd's log, in any of the three shapes it reaches us in, becomes a [`LogLine`]:
//!
//! - `sshd -E FILE` (and `-e`): the bare message, no time, no pid;
//! - rsyslog's files (`/var/log/auth.log`): `2026-11-28T10:00:00.123456+00:00 host sshd[1234]: MSG`
//!   (Debian 12's RFC 3339 default) or the classic `Nov 28 10:00:00 host sshd[1234]: MSG`, whose
//!   time has no year and no zone (read in the caller's zone, in the year that puts it closest
//!   before "now");
//! - journald: the `MESSAGE` field, with the pid and time from the record's own fields
//!   ([`parse_message`]).
//!
//! The messages understood, as OpenSSH 9.x writes them (`U` user, `IP` an IPv4 or IPv6 address,
//! `P` a port):
//!
//! | message | event |
//! |---|---|
//! | `Accepted M for U from IP port P ssh2[: KEY]` | [`SshdEvent::Accepted`] |
//! | `Failed M for [invalid user ]U from IP port P ssh2[: KEY]` | [`SshdEvent::Failed`] |
//! | `Invalid user U from IP port P` | [`SshdEvent::InvalidUser`] |
//! | `User child is on pid N` | [`SshdEvent::UserChild`] |
//! | `Disconnected from user U IP port P`, `Connection closed/reset by user U IP port P` | [`SshdEvent::Disconnected`] |
//! | `Connection closed/reset by [authenticating user U \| invalid user U ]IP port P [preauth]`, `Disconnected from [authenticating user U \| invalid user U ]IP port P [preauth]`, `Timeout before authentication for IP port P` | [`SshdEvent::ClosedPreauth`] |
//!
//! `M` is `publickey`, `password`, `keyboard-interactive/pam` (or `keyboard-interactive`) or
//! anything else sshd names ([`AuthMethod::Other`]). Program names `sshd`, `sshd-session`
//! (OpenSSH ≥ 9.8) and `sshd-auth` (OpenSSH ≥ 10) are sshd's; a syslog line of any other program
//! is not an sshd line. Every other message (`Connection from`, `Postponed`, `Received
//! disconnect`, debug output) is not an event.
//!
//! `KEY` is `TYPE SHA256:…` for a plain key, and for a certificate (OpenSSH's `format_key`)
//! `TYPE-CERT SHA256:… ID KEYID (serial N) CA CATYPE SHA256:…`: the certified key, then the
//! certificate's key id, serial and CA key ([`Certificate`]).
//!
//! Two parts of a line are chosen by others than sshd, and the address sits between them:
//!
//! - the user name after `Invalid user` and `Failed … for invalid user` is whatever the client
//!   sent (sshd escapes control characters but keeps spaces), so there the address is taken from
//!   the *right*: a user called `x from 10.0.0.1 port 22` does not move the source address;
//! - a certificate's key id is whatever its CA put there (any client's self-made certificate in
//!   a `Failed` line), printed raw with spaces. A user sshd found valid (no `invalid user`) is a
//!   real account, whose name has no spaces, so for those lines the address is taken from the
//!   *left*: a key id containing ` from 10.0.0.1 port 22 ssh2: ED25519 SHA256:…` moves neither
//!   the address nor the key. Within the key, the key id is everything between ` ID ` and the
//!   *last* ` (serial N) CA `, which sshd writes after it.
//!
//! Only a `Failed … for invalid user` line with a certificate has both; it cannot be read
//! unambiguously, and it is kept right-anchored (nothing but the audit record depends on it).
//!
//! Garbage and partial lines give `None`, never a panic (a property test feeds arbitrary and
//! mutated lines; cargo-fuzz would need a nightly toolchain).

use std::net::{IpAddr, SocketAddr};

use chrono::{DateTime, Datelike, FixedOffset, Local, NaiveDate, NaiveDateTime, TimeZone};

/// Program names whose syslog lines are sshd's.
pub const SSHD_PROGRAMS: [&str; 3] = ["sshd", "sshd-session", "sshd-auth"];

/// One parsed line: the event, and what the line's prefix said about it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogLine {
    /// The log's own time; `None` for `sshd -E` lines.
    pub at: Option<DateTime<FixedOffset>>,
    /// The sshd process that logged it; `None` when the line does not say.
    pub pid: Option<u32>,
    pub event: SshdEvent,
}

/// What sshd reported.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SshdEvent {
    /// A login succeeded.
    Accepted(Auth),
    /// One authentication attempt failed (a client may try several in one connection).
    Failed(Auth),
    /// A connection asked for a user that does not exist.
    InvalidUser { user: String, source: SocketAddr },
    /// The session's process running as the user (logged by the connection's monitor).
    UserChild { pid: u32 },
    /// An authenticated session ended.
    Disconnected { user: String, source: SocketAddr },
    /// The connection closed before authentication completed.
    ClosedPreauth {
        /// The user being authenticated, when sshd knew it.
        user: Option<String>,
        /// The user does not exist.
        invalid_user: bool,
        source: SocketAddr,
    },
}

/// An authentication result.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Auth {
    pub method: AuthMethod,
    pub user: String,
    /// `Failed … for invalid user U`: the user does not exist.
    pub invalid_user: bool,
    pub source: SocketAddr,
    /// The key, for public-key (and host-based) attempts.
    pub key: Option<KeyId>,
}

/// A key as sshd logs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyId {
    /// `ED25519`, `RSA`, `ECDSA`, `ED25519-CERT`, …
    pub key_type: String,
    /// `SHA256:` and the unpadded base64 digest, as `ssh-keygen -l` prints it. For a certificate,
    /// the certified key's.
    pub fingerprint: String,
    /// For a certificate (a `…-CERT` type), what sshd logged of it; `None` for a plain key, and
    /// for a certificate part that is missing, malformed or has a key id longer than
    /// [`MAX_CERTIFICATE_KEY_ID`]. The login is still the login then, by the certified key.
    pub certificate: Option<Certificate>,
}

/// A certificate as sshd logs it after the certified key: `ID KEYID (serial N) CA TYPE FP`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Certificate {
    /// The key id as sshd printed it: raw, spaces kept; control characters, bytes outside ASCII
    /// and backslashes escaped by sshd's log (`\ooo`, `\\`), so a key id with a backslash is not
    /// the certificate's own bytes. keyward's are `keyward:{tenant}:{kind}:{n}`.
    pub key_id: String,
    pub serial: u64,
    /// The CA key's type (`ED25519`, `RSA`, …).
    pub ca_key_type: String,
    /// The CA key's fingerprint (`SHA256:…`).
    pub ca_fingerprint: String,
}

/// The longest certificate key id read from a line (bytes, as logged). Longer, the line carries
/// no [`Certificate`]. The bound is what makes the last ` (serial N) CA ` sshd's own: sshd
/// formats a message into 1024 bytes and cuts the rest, so a key id long enough to push sshd's
/// ` (serial N) CA …` off the end could end in a forged one. Everything else in such a line
/// takes under 170 bytes (user ≥ 1, address ≥ 3, key type and fingerprint ≥ 6 and 3, the forged
/// tail at most [`MAX_CA_KEY_TYPE`] + [`MAX_CA_FINGERPRINT`] + 35), so a cut line's key id is
/// over 800 bytes: one of at most 256 is complete, and its serial and CA are sshd's.
pub const MAX_CERTIFICATE_KEY_ID: usize = 256;
/// The longest CA key type read (`ECDSA-SK` is 8).
pub const MAX_CA_KEY_TYPE: usize = 32;
/// The longest CA key fingerprint read (`SHA256:` and 43 characters is 50; MD5 is 51).
pub const MAX_CA_FINGERPRINT: usize = 64;

/// How a user authenticated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuthMethod {
    Publickey,
    Password,
    /// `keyboard-interactive`, with or without a `/pam` (or other) device.
    KeyboardInteractive,
    /// Anything else sshd names (`hostbased`, `gssapi-with-mic`, `none`).
    Other(String),
}

impl AuthMethod {
    fn parse(name: &str) -> AuthMethod {
        match name {
            "publickey" => AuthMethod::Publickey,
            "password" => AuthMethod::Password,
            n if n == "keyboard-interactive" || n.starts_with("keyboard-interactive/") => {
                AuthMethod::KeyboardInteractive
            }
            other => AuthMethod::Other(other.to_owned()),
        }
    }
}

impl SshdEvent {
    /// The remote end of the connection, for every event that names one.
    pub fn source(&self) -> Option<SocketAddr> {
        match self {
            SshdEvent::Accepted(a) | SshdEvent::Failed(a) => Some(a.source),
            SshdEvent::InvalidUser { source, .. }
            | SshdEvent::Disconnected { source, .. }
            | SshdEvent::ClosedPreauth { source, .. } => Some(*source),
            SshdEvent::UserChild { .. } => None,
        }
    }
}

/// Parses one line of a log file (`sshd -E` or syslog); classic syslog times are read in the
/// local time zone.
pub fn parse_line(line: &str) -> Option<LogLine> {
    parse_line_at(line, &Local::now())
}

/// [`parse_line`] with "now" given: a classic syslog time (no year, no zone) is read in `now`'s
/// zone, in the year that puts it at most a day after `now`.
pub fn parse_line_at<Tz: TimeZone>(line: &str, now: &DateTime<Tz>) -> Option<LogLine> {
    let line = line.trim_end_matches(['\n', '\r']);
    match syslog_prefix(line, now) {
        Some(prefix) => {
            if !SSHD_PROGRAMS.contains(&prefix.program) {
                return None;
            }
            Some(LogLine {
                at: prefix.at,
                pid: prefix.pid,
                event: parse_message(prefix.message)?,
            })
        }
        None => Some(LogLine {
            at: None,
            pid: None,
            event: parse_message(line)?,
        }),
    }
}

/// What a syslog prefix says.
struct Prefix<'a> {
    at: Option<DateTime<FixedOffset>>,
    program: &'a str,
    pid: Option<u32>,
    message: &'a str,
}

/// `TIME HOST PROGRAM[PID]: MESSAGE`, TIME RFC 3339 or classic; `None` when the line does not
/// start like that (an `sshd -E` line).
fn syslog_prefix<'a, Tz: TimeZone>(line: &'a str, now: &DateTime<Tz>) -> Option<Prefix<'a>> {
    let (at, rest) = rfc3339_time(line).or_else(|| classic_time(line, now))?;
    let rest = rest.strip_prefix(' ')?;
    let (_host, rest) = rest.split_once(' ')?;
    let (tag, message) = rest.split_once(':')?;
    let message = message.strip_prefix(' ').unwrap_or(message);
    let (program, pid) = match tag.split_once('[') {
        Some((program, pid)) => (program, Some(pid.strip_suffix(']')?.parse().ok()?)),
        None => (tag, None),
    };
    if program.is_empty() || program.contains(' ') {
        return None;
    }
    Some(Prefix {
        at,
        program,
        pid,
        message,
    })
}

fn rfc3339_time(line: &str) -> Option<(Option<DateTime<FixedOffset>>, &str)> {
    let end = line.find(' ')?;
    let token = line.get(..end)?;
    // Cheap shape check first: most lines are not RFC 3339 at all.
    if token.len() < 20 || token.as_bytes().get(4) != Some(&b'-') {
        return None;
    }
    let at = DateTime::parse_from_rfc3339(token).ok()?;
    Some((Some(at), &line[end..]))
}

const MONTHS: [&str; 12] = [
    "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
];

/// `Nov 28 10:00:00` or `Nov  8 10:00:00`.
fn classic_time<'a, Tz: TimeZone>(
    line: &'a str,
    now: &DateTime<Tz>,
) -> Option<(Option<DateTime<FixedOffset>>, &'a str)> {
    let month = line.get(..3)?;
    let month = MONTHS.iter().position(|m| *m == month)? as u32 + 1;
    let rest = line.get(3..)?.strip_prefix(' ')?;
    let rest = rest.strip_prefix(' ').unwrap_or(rest);
    let (day, rest) = rest.split_once(' ')?;
    if day.is_empty() || day.len() > 2 || !day.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let day: u32 = day.parse().ok()?;
    let clock = rest.get(..8)?;
    let rest = rest.get(8..)?;
    let b = clock.as_bytes();
    if b[2] != b':' || b[5] != b':' {
        return None;
    }
    let field = |r: std::ops::Range<usize>| -> Option<u32> {
        let s = clock.get(r)?;
        s.bytes()
            .all(|c| c.is_ascii_digit())
            .then(|| s.parse().ok())?
    };
    let (h, m, s) = (field(0..2)?, field(3..5)?, field(6..8)?);
    let tz = now.timezone();
    let local = |year: i32| -> Option<DateTime<FixedOffset>> {
        let naive: NaiveDateTime =
            NaiveDate::from_ymd_opt(year, month, day)?.and_hms_opt(h, m, s)?;
        tz.from_local_datetime(&naive)
            .earliest()
            .map(|t| t.fixed_offset())
    };
    // The year: this one, unless that is more than a day ahead (a December line read in January).
    let this_year = now.year();
    let at = match local(this_year) {
        Some(t) if t <= now.fixed_offset() + chrono::Duration::days(1) => Some(t),
        _ => local(this_year - 1),
    };
    // A valid-looking prefix with an impossible date (Feb 30) still is a prefix: no time then.
    Some((at, rest))
}

/// Parses sshd's message text (the part after a syslog prefix, a journal record's `MESSAGE`, or
/// a whole `sshd -E` line).
pub fn parse_message(message: &str) -> Option<SshdEvent> {
    let message = message.trim_end_matches(['\n', '\r', ' ']);
    if let Some(rest) = message.strip_prefix("Accepted ") {
        return auth(rest).map(SshdEvent::Accepted);
    }
    if let Some(rest) = message.strip_prefix("Failed ") {
        return auth(rest).map(SshdEvent::Failed);
    }
    if let Some(rest) = message.strip_prefix("Invalid user ") {
        let rest = rest.strip_suffix(" [preauth]").unwrap_or(rest);
        let (user, source, tail) = user_from_endpoint(rest)?;
        return tail.is_empty().then(|| SshdEvent::InvalidUser {
            user: user.to_owned(),
            source,
        });
    }
    if let Some(pid) = message.strip_prefix("User child is on pid ") {
        return pid.parse().ok().map(|pid| SshdEvent::UserChild { pid });
    }
    if let Some(rest) = message.strip_prefix("Timeout before authentication for ") {
        let (who, source) = endpoint_at_end(rest)?;
        return who.is_empty().then_some(SshdEvent::ClosedPreauth {
            user: None,
            invalid_user: false,
            source,
        });
    }
    let rest = message
        .strip_prefix("Disconnected from ")
        .or_else(|| message.strip_prefix("Connection closed by "))
        .or_else(|| message.strip_prefix("Connection reset by "))?;
    let (rest, preauth) = match rest.strip_suffix(" [preauth]") {
        Some(r) => (r, true),
        None => (rest, false),
    };
    let (who, source) = endpoint_at_end(rest)?;
    if let Some(user) = who.strip_prefix("user ") {
        // A session that authenticated: its end. sshd never marks those [preauth].
        return (!preauth).then(|| SshdEvent::Disconnected {
            user: user.to_owned(),
            source,
        });
    }
    let (user, invalid_user) = if let Some(user) = who.strip_prefix("authenticating user ") {
        (Some(user), false)
    } else if let Some(user) = who.strip_prefix("invalid user ") {
        (Some(user), true)
    } else if who.is_empty() {
        (None, false)
    } else {
        return None;
    };
    Some(SshdEvent::ClosedPreauth {
        user: user.map(str::to_owned),
        invalid_user,
        source,
    })
}

/// `M for [invalid user ]U from IP port P TAIL`, TAIL ` ssh2` with an optional `: KEY`.
fn auth(rest: &str) -> Option<Auth> {
    let (method, rest) = rest.split_once(' ')?;
    if method.is_empty() {
        return None;
    }
    let rest = rest.strip_prefix("for ")?;
    let (user, source, tail, invalid_user) = match rest.strip_prefix("invalid user ") {
        // The client's name: the address from the right (module docs).
        Some(r) => {
            let (user, source, tail) = user_from_endpoint(r)?;
            (user, source, tail, true)
        }
        // A real account's name: the address from the left, where a key id cannot reach. A
        // name with spaces is no account's (a forged line): read as before, from the right.
        None => {
            let (user, source, tail) =
                valid_user_from_endpoint(rest).or_else(|| user_from_endpoint(rest))?;
            (user, source, tail, false)
        }
    };
    let tail = tail.strip_suffix(" [preauth]").unwrap_or(tail);
    let key = match tail.split_once(": ") {
        Some((proto, key)) if proto.trim().starts_with("ssh") => key_id(key),
        _ => None,
    };
    Some(Auth {
        method: AuthMethod::parse(method),
        user: user.to_owned(),
        invalid_user,
        source,
        key,
    })
}

/// `TYPE SHA256:… [more]`: the key type and fingerprint, when they look like sshd's, and for a
/// `…-CERT` type the certificate that `more` describes.
fn key_id(text: &str) -> Option<KeyId> {
    let (key_type, rest) = text.split_once(' ').unwrap_or((text, ""));
    let (fingerprint, rest) = rest.split_once(' ').unwrap_or((rest, ""));
    if !key_type_ok(key_type) || !fingerprint_ok(fingerprint) {
        return None;
    }
    let certificate = if key_type.ends_with("-CERT") {
        certificate(rest)
    } else {
        None
    };
    Some(KeyId {
        key_type: key_type.to_owned(),
        fingerprint: fingerprint.to_owned(),
        certificate,
    })
}

/// `ID KEYID (serial N) CA TYPE FP` to the end of the line; the key id is everything up to the
/// last ` (serial `, which is sshd's when the key id is at most [`MAX_CERTIFICATE_KEY_ID`]
/// bytes.
fn certificate(text: &str) -> Option<Certificate> {
    let (key_id, after) = text.strip_prefix("ID ")?.rsplit_once(" (serial ")?;
    let (serial, ca) = after.split_once(") CA ")?;
    let (ca_key_type, ca_fingerprint) = ca.split_once(' ')?;
    let serial_ok = !serial.is_empty() && serial.bytes().all(|b| b.is_ascii_digit());
    let ok = key_id.len() <= MAX_CERTIFICATE_KEY_ID
        && serial_ok
        && ca_key_type.len() <= MAX_CA_KEY_TYPE
        && key_type_ok(ca_key_type)
        && ca_fingerprint.len() <= MAX_CA_FINGERPRINT
        && fingerprint_ok(ca_fingerprint);
    if !ok {
        return None;
    }
    Some(Certificate {
        key_id: key_id.to_owned(),
        // More than 20 digits, or past u64: not sshd's `%llu`.
        serial: serial.parse().ok()?,
        ca_key_type: ca_key_type.to_owned(),
        ca_fingerprint: ca_fingerprint.to_owned(),
    })
}

/// `ED25519`, `RSA-CERT`, `ECDSA-SK`: upper case letters, digits, `-` and `_`.
fn key_type_ok(key_type: &str) -> bool {
    !key_type.is_empty()
        && key_type
            .bytes()
            .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
}

/// `ALG:DIGEST`, the digest base64 (SHA256) or hex with colons (MD5).
fn fingerprint_ok(fingerprint: &str) -> bool {
    let Some((alg, digest)) = fingerprint.split_once(':') else {
        return false;
    };
    !alg.is_empty()
        && alg.bytes().all(|b| b.is_ascii_alphanumeric())
        && !digest.is_empty()
        && digest
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"+/=:".contains(&b))
}

/// `U from IP port P[TAIL]` for a user sshd found valid: an account name has no spaces, so the
/// first ` from ` is sshd's and what follows it (a certificate's key id) cannot move the
/// address.
fn valid_user_from_endpoint(text: &str) -> Option<(&str, SocketAddr, &str)> {
    let (user, rest) = text.split_once(" from ")?;
    if user.is_empty() || user.contains(' ') {
        return None;
    }
    let (source, tail) = endpoint_at_start(rest)?;
    Some((user, source, tail))
}

/// `U from IP port P[TAIL]`, the ` from ` found from the right so that a user name containing
/// ` from ` cannot move the address. TAIL is empty or starts with a space.
fn user_from_endpoint(text: &str) -> Option<(&str, SocketAddr, &str)> {
    for (index, _) in text.rmatch_indices(" from ") {
        let candidate = &text[index + " from ".len()..];
        if let Some((source, tail)) = endpoint_at_start(candidate) {
            return Some((&text[..index], source, tail));
        }
    }
    // An empty user name: `from IP port P` right at the start.
    let candidate = text.strip_prefix("from ")?;
    endpoint_at_start(candidate).map(|(source, tail)| ("", source, tail))
}

/// `IP port P` at the start of `text`; returns the address and what follows (empty, or starting
/// with a space).
fn endpoint_at_start(text: &str) -> Option<(SocketAddr, &str)> {
    let (ip, rest) = text.split_once(' ')?;
    let rest = rest.strip_prefix("port ")?;
    let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
    let (port, tail) = rest.split_at(digits);
    if !(tail.is_empty() || tail.starts_with(' ')) {
        return None;
    }
    Some((SocketAddr::new(parse_ip(ip)?, parse_port(port)?), tail))
}

/// `WHO IP port P` with `IP port P` at the very end; returns WHO (empty when absent) and the
/// address.
fn endpoint_at_end(text: &str) -> Option<(&str, SocketAddr)> {
    let (before, port) = text.rsplit_once(" port ")?;
    let port = parse_port(port)?;
    let (who, ip) = match before.rsplit_once(' ') {
        Some((who, ip)) => (who, ip),
        None => ("", before),
    };
    Some((who, SocketAddr::new(parse_ip(ip)?, port)))
}

fn parse_port(digits: &str) -> Option<u16> {
    if digits.is_empty() || digits.len() > 5 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// An address as sshd prints it; a link-local IPv6 scope (`fe80::1%eth0`) is dropped.
fn parse_ip(text: &str) -> Option<IpAddr> {
    let text = text.split_once('%').map_or(text, |(ip, _)| ip);
    text.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::Utc;

    const FP: &str = "SHA256:CQckUcS0Dj4bssx6LruYf8RqXCmfpKWq3eceXa5XfxM";

    fn addr(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    fn msg(m: &str) -> SshdEvent {
        parse_message(m).unwrap_or_else(|| panic!("not parsed: {m:?}"))
    }

    fn key(t: &str) -> Option<KeyId> {
        Some(KeyId {
            key_type: t.into(),
            fingerprint: FP.into(),
            certificate: None,
        })
    }

    const CA_FP: &str = "SHA256:0aTnZ2VdQ5m4J1lB3w9oYcFh7QeXr8sKpLu6vN2bDgE";

    /// `Accepted publickey for bob from 2001:db8::7 port 22 ssh2: ED25519-CERT FP ID {key_id}
    /// (serial {serial}) CA ED25519 CA_FP`, as OpenSSH 9.2 logs a certificate login.
    fn cert_line(key_id: &str, serial: &str) -> String {
        format!(
            "Accepted publickey for bob from 2001:db8::7 port 22 ssh2: ED25519-CERT {FP} ID {key_id} (serial {serial}) CA ED25519 {CA_FP}"
        )
    }

    fn accepted_key(m: &str) -> KeyId {
        let SshdEvent::Accepted(a) = msg(m) else {
            panic!("not an accepted login: {m:?}")
        };
        assert_eq!(a.user, "bob", "{m:?}");
        assert_eq!(a.source, addr("[2001:db8::7]:22"), "{m:?}");
        a.key.unwrap_or_else(|| panic!("no key: {m:?}"))
    }

    fn certificate_of(m: &str) -> Option<Certificate> {
        let key = accepted_key(m);
        // The certified key is the login's key whatever the certificate part says.
        assert_eq!(
            (key.key_type.as_str(), key.fingerprint.as_str()),
            ("ED25519-CERT", FP)
        );
        key.certificate
    }

    fn cert(key_id: &str, serial: u64) -> Option<Certificate> {
        Some(Certificate {
            key_id: key_id.into(),
            serial,
            ca_key_type: "ED25519".into(),
            ca_fingerprint: CA_FP.into(),
        })
    }

    #[test]
    fn certificate_logins_name_the_key_id_serial_and_ca() {
        assert_eq!(
            certificate_of(&cert_line("keyward:acme:tenant:3", "12345")),
            cert("keyward:acme:tenant:3", 12345)
        );
        // The same in a syslog line, a failed attempt, and before `[preauth]`.
        let line = parse_line_at(
            &format!(
                "2026-12-06T22:00:00+00:00 vps1 sshd[77]: {}",
                cert_line("keyward:acme:admin:1", "0")
            ),
            &now(),
        )
        .unwrap();
        let SshdEvent::Accepted(a) = line.event else {
            panic!()
        };
        assert_eq!(a.key.unwrap().certificate, cert("keyward:acme:admin:1", 0));
        let SshdEvent::Failed(a) = msg(&format!(
            "Failed publickey for bob from 10.0.0.1 port 5 ssh2: RSA-CERT {FP} ID kw (serial {}) CA RSA {CA_FP} [preauth]",
            u64::MAX
        )) else {
            panic!()
        };
        let c = a.key.unwrap().certificate.unwrap();
        assert_eq!((c.key_id.as_str(), c.serial), ("kw", u64::MAX));
        assert_eq!(c.ca_key_type, "RSA");
        // A plain key has none, even followed by a certificate's words.
        let plain = accepted_key(&format!(
            "Accepted publickey for bob from 2001:db8::7 port 22 ssh2: ED25519 {FP} ID x (serial 1) CA ED25519 {CA_FP}"
        ));
        assert_eq!(plain.certificate, None);
    }

    #[test]
    fn a_key_id_is_everything_up_to_the_last_serial_and_ca() {
        for key_id in [
            "alice smith",
            "",
            "x (serial 1) CA ED25519 SHA256:forged",
            "x (serial 1) CA ED25519 SHA256:forged (serial 2)",
            " ID y",
            "ID (serial",
            "a) CA b",
            r"tab\011and\\backslash",
        ] {
            assert_eq!(
                certificate_of(&cert_line(key_id, "42")),
                cert(key_id, 42),
                "{key_id:?}"
            );
        }
    }

    #[test]
    fn a_key_id_moves_neither_the_address_nor_the_key() {
        // A CA (or a client's self-made certificate in a failed attempt) names the key id.
        for key_id in [
            "x from 10.9.9.9 port 22",
            &format!("x from 10.9.9.9 port 22 ssh2: ED25519 {CA_FP}"),
            &format!("x from 10.9.9.9 port 22 ssh2: ED25519-CERT {CA_FP} ID y"),
            "for eve from 10.9.9.9 port 22 ssh2",
        ] {
            let m = cert_line(key_id, "7");
            let key = accepted_key(&m);
            assert_eq!(key.fingerprint, FP, "{m}");
            assert_eq!(key.certificate, cert(key_id, 7), "{m}");
        }
        let SshdEvent::Failed(a) = msg(&format!(
            "Failed publickey for bob from 192.0.2.1 port 9 ssh2: ED25519-CERT {FP} ID z from 10.9.9.9 port 22 ssh2 (serial 7) CA ED25519 {CA_FP}"
        )) else {
            panic!()
        };
        assert_eq!((a.user.as_str(), a.source), ("bob", addr("192.0.2.1:9")));
    }

    #[test]
    fn a_certificate_part_that_is_not_sshds_is_no_certificate() {
        for (key_id, serial) in [
            // Absurd serials: past u64, signed, hex, empty, with spaces.
            ("k", "18446744073709551616"),
            ("k", "99999999999999999999999999"),
            ("k", "-1"),
            ("k", "0x10"),
            ("k", ""),
            ("k", "1 2"),
            // Longer than the bound.
            (&"k".repeat(MAX_CERTIFICATE_KEY_ID + 1), "1"),
        ] {
            assert_eq!(
                certificate_of(&cert_line(key_id, serial)),
                None,
                "{key_id:?} {serial:?}"
            );
        }
        assert_eq!(
            certificate_of(&cert_line(&"k".repeat(MAX_CERTIFICATE_KEY_ID), "1")),
            cert(&"k".repeat(MAX_CERTIFICATE_KEY_ID), 1)
        );
        let head =
            format!("Accepted publickey for bob from 2001:db8::7 port 22 ssh2: ED25519-CERT {FP}");
        for tail in [
            // No CA part (a line cut short), no serial, no ID, a CA that is no key.
            " ID keyward:acme:tenant:3".to_owned(),
            " ID keyward:acme:tenant:3 (serial 3)".to_owned(),
            " ID keyward:acme:tenant:3 (serial 3) CA".to_owned(),
            " ID keyward:acme:tenant:3 (serial 3) CA ED25519".to_owned(),
            format!(" ID keyward:acme:tenant:3 (serial 3) CA ed25519 {CA_FP}"),
            " ID keyward:acme:tenant:3 (serial 3) CA ED25519 nonsense".to_owned(),
            format!(" ID keyward:acme:tenant:3 (serial 3) CA ED25519 {CA_FP} more"),
            format!(" keyward:acme:tenant:3 (serial 3) CA ED25519 {CA_FP}"),
            format!(" ID k (serial 3) CA ED25519 SHA256:{}", "A".repeat(100)),
            format!(" ID k (serial 3) CA {} {CA_FP}", "E".repeat(40)),
            String::new(),
        ] {
            assert_eq!(certificate_of(&format!("{head}{tail}")), None, "{tail:?}");
        }
    }

    #[test]
    fn a_line_sshd_cut_short_cannot_end_in_a_forged_certificate() {
        // sshd formats into 1024 bytes: a key id that pushes sshd's own "(serial N) CA" past
        // the end can end the line in a forged one. Such a key id is longer than the bound.
        let forged = format!(" (serial 1) CA ED25519 {CA_FP}");
        let head = format!("Accepted publickey for b from ::1 port 1 ssh2: A-CERT {FP} ID ");
        let pad = 1023 - head.len() - forged.len();
        let cut = format!("{head}{}{forged}", "k".repeat(pad));
        assert_eq!(cut.len(), 1023);
        let SshdEvent::Accepted(a) = msg(&cut) else {
            panic!()
        };
        assert_eq!(a.key.unwrap().certificate, None);
        // The shortest possible head (`Failed`, a one-letter user, one-character digest).
        let head = "Failed publickey for b from ::1 port 1 ssh2: A-CERT S:x ID ";
        let forged = format!(
            " (serial {}) CA {} S:{}",
            u64::MAX,
            "E".repeat(MAX_CA_KEY_TYPE),
            "x".repeat(MAX_CA_FINGERPRINT - 2)
        );
        let pad = 1023 - head.len() - forged.len();
        assert!(pad > MAX_CERTIFICATE_KEY_ID, "{pad}");
    }

    #[test]
    fn accepted_publickey() {
        assert_eq!(
            msg(&format!(
                "Accepted publickey for kwfmt from 127.0.0.1 port 49896 ssh2: ED25519 {FP}"
            )),
            SshdEvent::Accepted(Auth {
                method: AuthMethod::Publickey,
                user: "kwfmt".into(),
                invalid_user: false,
                source: addr("127.0.0.1:49896"),
                key: key("ED25519"),
            })
        );
        // A certificate login names the certificate's key, then the CA.
        let SshdEvent::Accepted(a) = msg(&format!(
            "Accepted publickey for bob from 2001:db8::7 port 22 ssh2: ED25519-CERT {FP} ID bob (serial 3) CA ED25519 SHA256:abc"
        )) else {
            panic!()
        };
        assert_eq!(
            a.key,
            Some(KeyId {
                certificate: Some(Certificate {
                    key_id: "bob".into(),
                    serial: 3,
                    ca_key_type: "ED25519".into(),
                    ca_fingerprint: "SHA256:abc".into(),
                }),
                ..key("ED25519-CERT").unwrap()
            })
        );
        assert_eq!(a.source, addr("[2001:db8::7]:22"));
        let SshdEvent::Accepted(a) = msg(&format!(
            "Accepted publickey for bob from ::1 port 5 ssh2: RSA {FP}"
        )) else {
            panic!()
        };
        assert_eq!(a.key, key("RSA"));
        assert_eq!(a.source, addr("[::1]:5"));
    }

    #[test]
    fn failed_publickey_and_passwords() {
        assert_eq!(
            msg(&format!(
                "Failed publickey for kwfmt from 127.0.0.1 port 49902 ssh2: ED25519 {FP}"
            )),
            SshdEvent::Failed(Auth {
                method: AuthMethod::Publickey,
                user: "kwfmt".into(),
                invalid_user: false,
                source: addr("127.0.0.1:49902"),
                key: key("ED25519"),
            })
        );
        assert_eq!(
            msg("Accepted password for alice from 10.0.0.2 port 4242 ssh2"),
            SshdEvent::Accepted(Auth {
                method: AuthMethod::Password,
                user: "alice".into(),
                invalid_user: false,
                source: addr("10.0.0.2:4242"),
                key: None,
            })
        );
        assert_eq!(
            msg("Failed password for invalid user admin from 203.0.113.9 port 50000 ssh2"),
            SshdEvent::Failed(Auth {
                method: AuthMethod::Password,
                user: "admin".into(),
                invalid_user: true,
                source: addr("203.0.113.9:50000"),
                key: None,
            })
        );
        assert_eq!(
            msg("Failed password for root from fe80::1%eth0 port 50000 ssh2"),
            SshdEvent::Failed(Auth {
                method: AuthMethod::Password,
                user: "root".into(),
                invalid_user: false,
                source: addr("[fe80::1]:50000"),
                key: None,
            })
        );
        assert_eq!(
            msg("Failed none for invalid user x from 1.2.3.4 port 5 ssh2"),
            SshdEvent::Failed(Auth {
                method: AuthMethod::Other("none".into()),
                user: "x".into(),
                invalid_user: true,
                source: addr("1.2.3.4:5"),
                key: None,
            })
        );
    }

    #[test]
    fn keyboard_interactive() {
        for m in [
            "Accepted keyboard-interactive/pam for carol from 192.0.2.1 port 1 ssh2",
            "Accepted keyboard-interactive for carol from 192.0.2.1 port 1 ssh2",
        ] {
            let SshdEvent::Accepted(a) = msg(m) else {
                panic!("{m}")
            };
            assert_eq!(a.method, AuthMethod::KeyboardInteractive);
            assert_eq!(a.user, "carol");
        }
        let SshdEvent::Failed(a) =
            msg("Failed keyboard-interactive/pam for invalid user z from 192.0.2.1 port 1 ssh2")
        else {
            panic!()
        };
        assert_eq!(a.method, AuthMethod::KeyboardInteractive);
        assert!(a.invalid_user);
    }

    #[test]
    fn invalid_users_and_hostile_names() {
        assert_eq!(
            msg("Invalid user nouser from 127.0.0.1 port 49916"),
            SshdEvent::InvalidUser {
                user: "nouser".into(),
                source: addr("127.0.0.1:49916"),
            }
        );
        // The client chooses the name: the address is the one sshd appended.
        assert_eq!(
            msg("Invalid user x from 10.9.9.9 port 22 from 127.0.0.1 port 49916"),
            SshdEvent::InvalidUser {
                user: "x from 10.9.9.9 port 22".into(),
                source: addr("127.0.0.1:49916"),
            }
        );
        assert_eq!(
            msg("Invalid user  from 127.0.0.1 port 1"),
            SshdEvent::InvalidUser {
                user: "".into(),
                source: addr("127.0.0.1:1"),
            }
        );
        let SshdEvent::Failed(a) = msg(
            "Failed password for invalid user a from 9.9.9.9 port 1 ssh2: RSA x from 1.1.1.1 port 2 ssh2",
        ) else {
            panic!()
        };
        assert_eq!(a.user, "a from 9.9.9.9 port 1 ssh2: RSA x");
        assert_eq!(a.source, addr("1.1.1.1:2"));
    }

    #[test]
    fn session_start_and_end() {
        assert_eq!(
            msg("User child is on pid 25821"),
            SshdEvent::UserChild { pid: 25821 }
        );
        assert_eq!(
            msg("Disconnected from user kwfmt 127.0.0.1 port 49896"),
            SshdEvent::Disconnected {
                user: "kwfmt".into(),
                source: addr("127.0.0.1:49896"),
            }
        );
        for m in [
            "Connection closed by user kwfmt 2001:db8::1 port 7",
            "Connection reset by user kwfmt 2001:db8::1 port 7",
        ] {
            assert_eq!(
                msg(m),
                SshdEvent::Disconnected {
                    user: "kwfmt".into(),
                    source: addr("[2001:db8::1]:7"),
                },
                "{m}"
            );
        }
    }

    #[test]
    fn closed_before_authentication() {
        let closed = |user: Option<&str>, invalid_user, source: &str| SshdEvent::ClosedPreauth {
            user: user.map(str::to_owned),
            invalid_user,
            source: addr(source),
        };
        for (m, want) in [
            (
                "Connection closed by authenticating user kwfmt 127.0.0.1 port 49902 [preauth]",
                closed(Some("kwfmt"), false, "127.0.0.1:49902"),
            ),
            (
                "Connection closed by invalid user nouser 127.0.0.1 port 49916 [preauth]",
                closed(Some("nouser"), true, "127.0.0.1:49916"),
            ),
            (
                "Connection closed by 127.0.0.1 port 49920 [preauth]",
                closed(None, false, "127.0.0.1:49920"),
            ),
            (
                "Connection reset by 2001:db8::2 port 1022 [preauth]",
                closed(None, false, "[2001:db8::2]:1022"),
            ),
            (
                "Connection reset by authenticating user u 10.0.0.1 port 3 [preauth]",
                closed(Some("u"), false, "10.0.0.1:3"),
            ),
            (
                "Disconnected from authenticating user kwfmt 127.0.0.1 port 49902 [preauth]",
                closed(Some("kwfmt"), false, "127.0.0.1:49902"),
            ),
            (
                "Disconnected from invalid user admin 10.0.0.1 port 3 [preauth]",
                closed(Some("admin"), true, "10.0.0.1:3"),
            ),
            (
                "Disconnected from 10.0.0.1 port 3 [preauth]",
                closed(None, false, "10.0.0.1:3"),
            ),
            (
                "Timeout before authentication for 10.0.0.1 port 3",
                closed(None, false, "10.0.0.1:3"),
            ),
        ] {
            assert_eq!(msg(m), want, "{m}");
        }
    }

    #[test]
    fn other_messages_are_not_events() {
        for m in [
            "Connection from 127.0.0.1 port 49896 on 127.0.0.1 port 2299 rdomain \"\"",
            "Accepted key ED25519 SHA256:CQck found at /home/u/.ssh/authorized_keys:1",
            "Postponed publickey for kwfmt from 127.0.0.1 port 49896 ssh2 [preauth]",
            "Starting session: command for kwfmt from 127.0.0.1 port 49896 id 0",
            "Received disconnect from 127.0.0.1 port 49896:11: disconnected by user",
            "Server listening on 127.0.0.1 port 2299.",
            "Disconnected from user kwfmt 127.0.0.1 port 49896 [preauth]",
            "Accepted publickey for kwfmt from 127.0.0.1 port ssh2",
            "Accepted publickey for kwfmt from 127.0.0.1 port 99999 ssh2",
            "Accepted publickey for kwfmt from nowhere port 1 ssh2",
            "Accepted publickey",
            "Accepted ",
            "User child is on pid x",
            "debug1: Accepted publickey for a from 1.2.3.4 port 5 ssh2",
            "",
        ] {
            assert_eq!(parse_message(m), None, "{m:?}");
        }
    }

    #[test]
    fn a_malformed_key_is_no_key() {
        let SshdEvent::Accepted(a) =
            msg("Accepted publickey for u from 1.2.3.4 port 5 ssh2: ed25519 nonsense")
        else {
            panic!()
        };
        assert_eq!(a.key, None);
    }

    fn now() -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 11, 28, 12, 0, 0).unwrap()
    }

    #[test]
    fn the_three_line_formats() {
        let bare = parse_line_at(
            &format!("Accepted publickey for kwfmt from 127.0.0.1 port 49896 ssh2: ED25519 {FP}\n"),
            &now(),
        )
        .unwrap();
        assert_eq!((bare.at, bare.pid), (None, None));

        let rfc = parse_line_at(
            &format!("2026-11-28T10:00:00.123456+00:00 vps1 sshd[1234]: Accepted publickey for kwfmt from 127.0.0.1 port 49896 ssh2: ED25519 {FP}"),
            &now(),
        )
        .unwrap();
        assert_eq!(rfc.pid, Some(1234));
        assert_eq!(
            rfc.at.unwrap().to_rfc3339(),
            "2026-11-28T10:00:00.123456+00:00"
        );
        assert_eq!(rfc.event, bare.event);

        let classic = parse_line_at(
            &format!("Nov 28 10:00:00 vps1 sshd[1234]: Accepted publickey for kwfmt from 127.0.0.1 port 49896 ssh2: ED25519 {FP}"),
            &now(),
        )
        .unwrap();
        assert_eq!(
            classic.at.unwrap().to_rfc3339(),
            "2026-11-28T10:00:00+00:00"
        );
        assert_eq!(classic.event, bare.event);

        // A single-digit day is padded with a space; a zone other than UTC is the reader's.
        let cet = FixedOffset::east_opt(3600).unwrap();
        let padded = parse_line_at(
            "Nov  8 09:05:01 vps1 sshd-session[77]: User child is on pid 78",
            &now().with_timezone(&cet),
        )
        .unwrap();
        assert_eq!(padded.at.unwrap().to_rfc3339(), "2026-11-08T09:05:01+01:00");
        assert_eq!(padded.pid, Some(77));
        assert_eq!(padded.event, SshdEvent::UserChild { pid: 78 });

        // A December line read in January is last year's.
        let jan = Utc.with_ymd_and_hms(2027, 1, 1, 0, 5, 0).unwrap();
        let dec = parse_line_at("Dec 31 23:59:59 h sshd[1]: User child is on pid 2", &jan).unwrap();
        assert_eq!(dec.at.unwrap().to_rfc3339(), "2026-12-31T23:59:59+00:00");
    }

    #[test]
    fn other_programs_and_other_shapes() {
        for line in [
            "Nov 28 10:00:00 vps1 sudo: pam_unix(sudo:session): session opened for user root",
            "2026-11-28T10:00:00+00:00 vps1 CRON[5]: Accepted publickey for a from 1.2.3.4 port 5 ssh2",
            "Nov 28 10:00:00 vps1 sshd[12x]: User child is on pid 1",
            "2026-11-28T10:00:00+00:00 vps1 sshd[1234]: Server listening on :: port 22.",
            "garbage",
        ] {
            assert_eq!(parse_line_at(line, &now()), None, "{line}");
        }
        // `sshd:` without a pid.
        let no_pid =
            parse_line_at("Nov 28 10:00:00 h sshd: User child is on pid 9", &now()).unwrap();
        assert_eq!(no_pid.pid, None);
        assert_eq!(no_pid.event, SshdEvent::UserChild { pid: 9 });
    }

    mod properties {
        use super::*;
        use proptest::prelude::*;

        /// Real lines, in all three shapes, to mutate.
        const REAL: &[&str] = &[
            "Connection from 127.0.0.1 port 49896 on 127.0.0.1 port 2299 rdomain \"\"",
            "Accepted publickey for kwfmt from 127.0.0.1 port 49896 ssh2: ED25519 SHA256:CQckUcS0Dj4bssx6LruYf8RqXCmfpKWq3eceXa5XfxM",
            "User child is on pid 25821",
            "Disconnected from user kwfmt 127.0.0.1 port 49896",
            "Failed publickey for kwfmt from 127.0.0.1 port 49902 ssh2: ED25519 SHA256:YYEc",
            "Connection closed by authenticating user kwfmt 127.0.0.1 port 49902 [preauth]",
            "Invalid user nouser from 127.0.0.1 port 49916",
            "Connection closed by invalid user nouser 127.0.0.1 port 49916 [preauth]",
            "Failed password for invalid user admin from 2001:db8::1 port 50000 ssh2",
            "Timeout before authentication for 10.0.0.1 port 3",
            "2026-11-28T10:00:00.123456+00:00 vps1 sshd[1234]: Accepted password for a from ::1 port 5 ssh2",
            "Nov  8 10:00:00 vps1 sshd-session[1]: Connection reset by 10.0.0.1 port 3 [preauth]",
        ];

        #[derive(Debug, Clone)]
        enum Mutation {
            Truncate(usize),
            Delete(usize),
            Insert(usize, char),
            Replace(usize, char),
            Duplicate(usize, usize),
        }

        fn mutation() -> impl Strategy<Value = Mutation> {
            prop_oneof![
                any::<usize>().prop_map(Mutation::Truncate),
                any::<usize>().prop_map(Mutation::Delete),
                (any::<usize>(), any::<char>()).prop_map(|(i, c)| Mutation::Insert(i, c)),
                (
                    any::<usize>(),
                    prop::sample::select(&[' ', ':', '[', ']', '%', '0', '\0', 'é'][..])
                )
                    .prop_map(|(i, c)| Mutation::Replace(i, c)),
                (any::<usize>(), any::<usize>()).prop_map(|(a, b)| Mutation::Duplicate(a, b)),
            ]
        }

        fn apply(line: &str, m: &Mutation) -> String {
            let chars: Vec<char> = line.chars().collect();
            let at = |i: usize| {
                if chars.is_empty() {
                    0
                } else {
                    i % (chars.len() + 1)
                }
            };
            let mut out = chars.clone();
            match *m {
                Mutation::Truncate(i) => out.truncate(at(i)),
                Mutation::Delete(i) if !chars.is_empty() => {
                    out.remove(i % chars.len());
                }
                Mutation::Delete(_) => {}
                Mutation::Insert(i, c) => out.insert(at(i), c),
                Mutation::Replace(i, c) if !chars.is_empty() => out[i % chars.len()] = c,
                Mutation::Replace(..) => {}
                Mutation::Duplicate(a, b) => {
                    let (a, b) = (at(a), at(b));
                    let (lo, hi) = (a.min(b), a.max(b));
                    let piece: Vec<char> = chars[lo..hi].to_vec();
                    out.splice(hi..hi, piece);
                }
            }
            out.into_iter().collect()
        }

        proptest! {
            // Bounded so the whole module runs in a few seconds on a shared 2-core machine; a
            // cargo-fuzz target would run longer but needs a nightly toolchain we do not have.
            #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

            #[test]
            fn arbitrary_text_never_panics(line in ".{0,300}") {
                let _ = parse_line_at(&line, &now());
                let _ = parse_message(&line);
            }

            #[test]
            fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..300)) {
                let line = String::from_utf8_lossy(&bytes);
                let _ = parse_line_at(&line, &now());
            }

            #[test]
            fn mutated_real_lines_never_panic(
                line in prop::sample::select(REAL),
                mutations in prop::collection::vec(mutation(), 1..4),
            ) {
                let mut text = line.to_owned();
                for m in &mutations {
                    text = apply(&text, m);
                }
                let _ = parse_line_at(&text, &now());
                let _ = parse_message(&text);
            }

            #[test]
            fn a_syslog_prefix_does_not_change_the_event(
                line in prop::sample::select(&REAL[..10]),
                pid in 1u32..4_000_000,
                host in "[a-z][a-z0-9-]{0,20}",
            ) {
                let bare = parse_line_at(line, &now()).map(|l| l.event);
                let rfc = parse_line_at(
                    &format!("2026-11-28T10:00:00+00:00 {host} sshd[{pid}]: {line}"),
                    &now(),
                );
                prop_assert_eq!(rfc.as_ref().map(|l| l.event.clone()), bare.clone());
                if let Some(l) = rfc {
                    prop_assert_eq!(l.pid, Some(pid));
                }
                let classic = parse_line_at(&format!("Nov 28 10:00:00 {host} sshd[{pid}]: {line}"), &now());
                prop_assert_eq!(classic.map(|l| l.event), bare);
            }

            #[test]
            fn any_key_id_is_read_back_whole(
                key_id in "[ -~]{0,256}",
                serial in any::<u64>(),
                port in 1u16..,
            ) {
                let m = format!(
                    "Accepted publickey for bob from 192.0.2.7 port {port} ssh2: ED25519-CERT {FP} ID {key_id} (serial {serial}) CA ED25519 {CA_FP}"
                );
                let Some(SshdEvent::Accepted(a)) = parse_message(&m) else {
                    return Err(TestCaseError::fail(format!("not parsed: {m:?}")));
                };
                prop_assert_eq!(a.user, "bob");
                prop_assert_eq!(a.source, SocketAddr::new("192.0.2.7".parse().unwrap(), port));
                let key = a.key.unwrap();
                prop_assert_eq!(key.fingerprint, FP);
                prop_assert_eq!(key.certificate, cert(&key_id, serial));
            }

            #[test]
            fn hostile_user_names_never_move_the_address(user in "[ -~]{0,60}", port in 1u16..) {
                let m = format!("Invalid user {user} from 192.0.2.7 port {port}");
                match parse_message(&m) {
                    Some(SshdEvent::InvalidUser { user: got, source }) => {
                        prop_assert_eq!(got, user);
                        prop_assert_eq!(source, SocketAddr::new("192.0.2.7".parse().unwrap(), port));
                    }
                    other => prop_assert!(false, "{:?}", other),
                }
            }
        }
    }
}
