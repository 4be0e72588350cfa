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
    /// The soft limit in force now.
    pub soft: u64,
    pub hard: u64,
    /// Why it could not be raised, if it could not.
    pub error: Option<String>,
}

/// Raises the soft `RLIMIT_NOFILE` to the hard limit (to `fs.nr_open` when the hard limit is
/// unlimited). Each connected agent costs two descriptors in this process (its end and the
/// control plane's end of the TLS connection), plus the host's files while they are written.
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
    let target = if hard == RLIM_INFINITY {
        read_u64("/proc/sys/fs/nr_open").unwrap_or(1 << 20)
    } else {
        hard
    };
    let mut limit = FdLimit {
        soft_before: soft,
        soft,
        hard,
        error: None,
    };
    if soft < target {
        match setrlimit(Resource::RLIMIT_NOFILE, target, hard) {
            Ok(()) => limit.soft = target,
            Err(e) => limit.error = Some(format!("setrlimit(RLIMIT_NOFILE, {target}): {e}")),
        }
    }
    limit
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
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
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
