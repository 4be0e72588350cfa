//! systemd's notification protocol (`sd_notify`), without libsystemd.
//!
//! Under `Type=notify` systemd passes a datagram socket in `NOTIFY_SOCKET` and waits for
//! `READY=1`; with `WatchdogSec=` it also sets `WATCHDOG_USEC` and restarts the service when no
//! `WATCHDOG=1` arrives in time. Both messages are single datagrams, so this is a few lines of
//! `UnixDatagram` rather than a C dependency.

use std::os::unix::net::{SocketAddr, UnixDatagram};
use std::path::PathBuf;
use std::time::Duration;

/// A path or abstract (`@name`) socket address.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Address {
    Path(PathBuf),
    Abstract(Vec<u8>),
}

/// Sends notifications to systemd.
#[derive(Debug, Clone)]
pub struct Notifier {
    address: Address,
    watchdog: Option<Duration>,
}

impl Notifier {
    /// The notifier described by this process's environment, or `None` when not run by systemd
    /// with `Type=notify`.
    pub fn from_env() -> Option<Self> {
        Self::from_vars(
            std::env::var_os("NOTIFY_SOCKET").map(PathBuf::from),
            std::env::var("WATCHDOG_USEC").ok().as_deref(),
            std::env::var("WATCHDOG_PID").ok().as_deref(),
            std::process::id(),
        )
    }

    /// The notifier for explicit values of `NOTIFY_SOCKET`, `WATCHDOG_USEC` and `WATCHDOG_PID`.
    /// The watchdog is ignored when `WATCHDOG_PID` names another process (a child would
    /// otherwise keep a hung parent alive).
    pub fn from_vars(
        socket: Option<PathBuf>,
        watchdog_usec: Option<&str>,
        watchdog_pid: Option<&str>,
        my_pid: u32,
    ) -> Option<Self> {
        let socket = socket?;
        let text = socket.to_str().unwrap_or_default();
        let address = match text.strip_prefix('@') {
            Some(name) => Address::Abstract(name.as_bytes().to_vec()),
            None if socket.as_os_str().is_empty() => return None,
            None => Address::Path(socket),
        };
        let for_me = watchdog_pid.is_none_or(|p| p.trim().parse::<u32>() == Ok(my_pid));
        let watchdog = watchdog_usec
            .and_then(|u| u.trim().parse::<u64>().ok())
            .filter(|&u| u > 0 && for_me)
            .map(Duration::from_micros);
        Some(Self { address, watchdog })
    }

    /// How often to send `WATCHDOG=1`: half the watchdog timeout, as systemd recommends.
    pub fn watchdog_interval(&self) -> Option<Duration> {
        self.watchdog.map(|w| w / 2)
    }

    /// Sends one notification (`READY=1`, `WATCHDOG=1`, `STATUS=...`).
    pub fn notify(&self, message: &str) -> std::io::Result<()> {
        let socket = UnixDatagram::unbound()?;
        // A full receive queue must not stall the agent's event loop.
        socket.set_nonblocking(true)?;
        let address = match &self.address {
            Address::Path(p) => SocketAddr::from_pathname(p)?,
            Address::Abstract(name) => abstract_address(name)?,
        };
        socket.send_to_addr(message.as_bytes(), &address).map(drop)
    }

    /// `READY=1`.
    pub fn ready(&self) {
        self.send_logged("READY=1");
    }

    /// `WATCHDOG=1`.
    pub fn watchdog(&self) {
        self.send_logged("WATCHDOG=1");
    }

    fn send_logged(&self, message: &str) {
        if let Err(e) = self.notify(message) {
            tracing::warn!(error = %e, message, "cannot notify systemd");
        }
    }
}

#[cfg(target_os = "linux")]
fn abstract_address(name: &[u8]) -> std::io::Result<SocketAddr> {
    use std::os::linux::net::SocketAddrExt;
    SocketAddr::from_abstract_name(name)
}

#[cfg(not(target_os = "linux"))]
fn abstract_address(_: &[u8]) -> std::io::Result<SocketAddr> {
    Err(std::io::Error::new(
        std::io::ErrorKind::Unsupported,
        "abstract sockets exist only on Linux",
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn variables_are_read_like_systemd_writes_them() {
        assert!(Notifier::from_vars(None, Some("1000000"), None, 1).is_none());
        assert!(Notifier::from_vars(Some("".into()), None, None, 1).is_none());
        let n = Notifier::from_vars(Some("/run/x".into()), Some("1000000"), None, 1).unwrap();
        assert_eq!(n.watchdog_interval(), Some(Duration::from_millis(500)));
        let n = Notifier::from_vars(Some("/run/x".into()), Some("1000000"), Some("2"), 1).unwrap();
        assert_eq!(n.watchdog_interval(), None);
        let n = Notifier::from_vars(Some("@sock".into()), Some("junk"), Some("1"), 1).unwrap();
        assert_eq!(n.address, Address::Abstract(b"sock".to_vec()));
        assert_eq!(n.watchdog_interval(), None);
    }
}
