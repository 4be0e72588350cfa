//! The process and the machine's limits: the file-descriptor limit (raised to the hard limit),
//! resident memory, open descriptors and threads, read from `/proc/self`; and naming the limit an
//! error came from.

use std::io::ErrorKind;

use nix::sys::resource::{RLIM_INFINITY, Resource, getrlimit, setrlimit};
use serde::{Deserialize, Serialize};

/// `RLIMIT_NOFILE` before and after [`raise_fd_limit`].
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FdLimit {
    /// The soft limit the process started with.
    pub soft_before: u64,
    /// The hard limit the process started with (raised too when the process may: root).
    #[serde(default)]
    pub hard_before: u64,
    /// The soft limit in force now.
    pub soft: u64,
    pub hard: u64,
    /// Why it could not be raised, if it could not.
    pub error: Option<String>,
}

/// Raises the soft `RLIMIT_NOFILE` to the hard limit, and first the hard limit itself to
/// `fs.nr_open` when the process may (root, `CAP_SYS_RESOURCE`); when it may not, the soft limit
/// ends at the hard one. Each in-process agent costs two descriptors (its end and the control
/// plane's end of the TLS connection), plus the host's files while they are written: 10,000
/// agents need more than the usual hard limit of 20,000 or fewer.
pub fn raise_fd_limit() -> FdLimit {
    let (soft, hard) = match getrlimit(Resource::RLIMIT_NOFILE) {
        Ok(limits) => limits,
        Err(e) => {
            return FdLimit {
                error: Some(format!("getrlimit(RLIMIT_NOFILE): {e}")),
                ..FdLimit::default()
            };
        }
    };
    let nr_open = read_u64("/proc/sys/fs/nr_open").unwrap_or(1 << 20);
    let mut limit = FdLimit {
        soft_before: soft,
        hard_before: hard,
        soft,
        hard,
        error: None,
    };
    if hard != RLIM_INFINITY && hard < nr_open {
        // Raising the hard limit needs privilege; without it the hard limit stays.
        if setrlimit(Resource::RLIMIT_NOFILE, nr_open, nr_open).is_ok() {
            limit.soft = nr_open;
            limit.hard = nr_open;
            return limit;
        }
    }
    let target = if hard == RLIM_INFINITY { nr_open } else { hard };
    if soft < target {
        match setrlimit(Resource::RLIMIT_NOFILE, target, hard) {
            Ok(()) => limit.soft = target,
            Err(e) => limit.error = Some(format!("setrlimit(RLIMIT_NOFILE, {target}): {e}")),
        }
    }
    limit
}

impl FdLimit {
    /// One sentence for a report: what the limit was and what it became.
    pub fn describe(&self) -> String {
        let mut out = if self.hard != self.hard_before && self.hard_before != 0 {
            format!(
                "RLIMIT_NOFILE raised from {} (hard {}) to {} (hard {}, fs.nr_open)",
                self.soft_before, self.hard_before, self.soft, self.hard
            )
        } else if self.soft != self.soft_before {
            format!(
                "RLIMIT_NOFILE raised from {} to {} (hard {})",
                self.soft_before, self.soft, self.hard
            )
        } else {
            format!(
                "RLIMIT_NOFILE {} (already the hard limit {})",
                self.soft, self.hard
            )
        };
        if let Some(e) = &self.error {
            out.push_str("; ");
            out.push_str(e);
        }
        out
    }
}

/// The soft `RLIMIT_NOFILE` in force.
pub fn fd_soft_limit() -> u64 {
    getrlimit(Resource::RLIMIT_NOFILE).map_or(0, |(soft, _)| soft)
}

fn read_u64(path: &str) -> Option<u64> {
    std::fs::read_to_string(path).ok()?.trim().parse().ok()
}

/// A `Name:   value kB` line of `/proc/self/status`.
fn status_field(name: &str) -> Option<u64> {
    status_field_of("self", name)
}

/// A `Name:   value kB` line of `/proc/{pid}/status` (`pid` may be `self`).
fn status_field_of(pid: &str, name: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|line| line.strip_prefix(name)?.strip_prefix(':'))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
}

/// This process's resident memory (`VmRSS`), in bytes.
pub fn rss_bytes() -> u64 {
    status_field("VmRSS").unwrap_or(0) * 1024
}

/// Another process's resident memory (`VmRSS`), in bytes; 0 when it cannot be read.
pub fn rss_bytes_of(pid: u32) -> u64 {
    status_field_of(&pid.to_string(), "VmRSS").unwrap_or(0) * 1024
}

/// Another process's peak resident memory (`VmHWM`), in bytes.
pub fn peak_rss_bytes_of(pid: u32) -> u64 {
    status_field_of(&pid.to_string(), "VmHWM").unwrap_or(0) * 1024
}

/// Another process's threads.
pub fn threads_of(pid: u32) -> u64 {
    status_field_of(&pid.to_string(), "Threads").unwrap_or(0)
}

/// Descriptors another process has open.
pub fn open_fds_of(pid: u32) -> u64 {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|dir| dir.count() as u64)
        .unwrap_or(0)
}

/// Clock ticks per second of `/proc/*/stat` (`USER_HZ`, 100 on every Linux ABI).
pub const CLOCK_TICKS: u64 = 100;

/// CPU time a process (all its threads) has used, user and system, in seconds: fields 14 and
/// 15 (`utime`, `stime`) of `/proc/{pid}/stat` (`pid` may be `self`).
pub fn cpu_seconds_of(pid: &str) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may hold spaces; the fields after it are plain.
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut fields = rest.split_whitespace();
    // `rest` starts with field 3 (state): utime is field 14, the 12th here.
    let utime: u64 = fields.nth(11)?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    #[allow(clippy::cast_precision_loss)]
    Some((utime + stime) as f64 / CLOCK_TICKS as f64)
}

/// This process's threads.
pub fn threads() -> u64 {
    status_field("Threads").unwrap_or(0)
}

/// Descriptors this process has open.
pub fn open_fds() -> u64 {
    std::fs::read_dir("/proc/self/fd")
        .map(|dir| dir.count() as u64)
        .unwrap_or(0)
}

/// The ephemeral port range (`net.ipv4.ip_local_port_range`), as `low-high`.
pub fn port_range() -> String {
    std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .map(|s| s.split_whitespace().collect::<Vec<_>>().join("-"))
        .unwrap_or_else(|_| "?".into())
}

/// Names the machine limit behind an error, when its chain carries one.
pub fn limit_behind(error: &anyhow::Error) -> Option<String> {
    let text = format!("{error:#}");
    let os_code = error.chain().find_map(|cause| {
        cause
            .downcast_ref::<std::io::Error>()
            .and_then(std::io::Error::raw_os_error)
    });
    let io_kind = error.chain().find_map(|cause| {
        cause
            .downcast_ref::<std::io::Error>()
            .map(std::io::Error::kind)
    });
    let has = |code: i32, words: &str| os_code == Some(code) || text.contains(words);
    if has(nix::libc::ENFILE, "Too many open files in system") {
        Some("fs.file-max (descriptors of the whole system)".into())
    } else if has(nix::libc::EMFILE, "Too many open files") {
        Some(format!(
            "RLIMIT_NOFILE (descriptors of this process; soft limit {})",
            fd_soft_limit()
        ))
    } else if has(nix::libc::EADDRNOTAVAIL, "Cannot assign requested address") {
        Some(format!("ephemeral ports ({})", port_range()))
    } else if has(nix::libc::ENOMEM, "Cannot allocate memory")
        || io_kind == Some(ErrorKind::OutOfMemory)
    {
        Some("memory".into())
    } else if has(nix::libc::EAGAIN, "Resource temporarily unavailable") && text.contains("thread")
    {
        Some("threads (RLIMIT_NPROC or kernel.threads-max)".into())
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proc_self_is_read() {
        assert!(rss_bytes() > 0);
        assert!(threads() >= 1);
        assert!(open_fds() >= 3);
    }

    #[test]
    fn cpu_time_is_read() {
        let before = cpu_seconds_of("self").unwrap_or(-1.0);
        assert!(before >= 0.0);
        let mut x = 0u64;
        for i in 0..20_000_000u64 {
            x = x.wrapping_mul(31).wrapping_add(i);
        }
        assert!(x != 1);
        assert!(cpu_seconds_of("self").unwrap_or(-1.0) >= before);
        let pid = std::process::id();
        assert!(rss_bytes_of(pid) > 0 && peak_rss_bytes_of(pid) >= rss_bytes_of(pid) / 2);
        assert!(threads_of(pid) >= 1 && open_fds_of(pid) >= 3);
    }

    #[test]
    fn the_fd_limit_ends_at_the_hard_limit() {
        let limit = raise_fd_limit();
        assert_eq!(limit.error, None);
        assert!(limit.soft >= limit.soft_before);
        assert!(limit.soft <= limit.hard);
    }

    #[test]
    fn limits_are_named() {
        let emfile = anyhow::Error::from(std::io::Error::from_raw_os_error(nix::libc::EMFILE))
            .context("enrolling host 17");
        let named = limit_behind(&emfile).unwrap_or_default();
        assert!(named.starts_with("RLIMIT_NOFILE"), "{named}");
        let ports = anyhow::anyhow!("connect: Cannot assign requested address (os error 99)");
        assert!(limit_behind(&ports).is_some_and(|n| n.starts_with("ephemeral ports")));
        assert_eq!(limit_behind(&anyhow::anyhow!("HTTP 500")), None);
    }
}
