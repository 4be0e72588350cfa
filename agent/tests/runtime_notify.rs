//! The sd_notify sender against real datagram sockets, by path and abstract name.

// Test code: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used)]

use std::os::unix::net::UnixDatagram;
use std::time::Duration;

use keyward_agent::sd_notify::Notifier;

fn receive(sock: &UnixDatagram) -> String {
    sock.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut buf = [0u8; 256];
    let n = sock.recv(&mut buf).unwrap();
    String::from_utf8_lossy(&buf[..n]).into_owned()
}

#[test]
fn notifications_reach_a_socket_path() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("notify");
    let sock = UnixDatagram::bind(&path).unwrap();
    let n = Notifier::from_vars(
        Some(path),
        Some("30000000"),
        Some(&std::process::id().to_string()),
        std::process::id(),
    )
    .unwrap();
    assert_eq!(n.watchdog_interval(), Some(Duration::from_secs(15)));
    n.ready();
    assert_eq!(receive(&sock), "READY=1");
    n.watchdog();
    assert_eq!(receive(&sock), "WATCHDOG=1");
    n.notify("STATUS=enforcing generation 4").unwrap();
    assert_eq!(receive(&sock), "STATUS=enforcing generation 4");
}

#[cfg(target_os = "linux")]
#[test]
fn notifications_reach_an_abstract_socket() {
    use std::os::linux::net::SocketAddrExt;
    let name = format!(
        "keyward-test-{}-{}",
        std::process::id(),
        rand::random::<u32>()
    );
    let addr = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
    let sock = UnixDatagram::bind_addr(&addr).unwrap();
    let n = Notifier::from_vars(Some(format!("@{name}").into()), None, None, 1).unwrap();
    n.ready();
    assert_eq!(receive(&sock), "READY=1");
}

#[test]
fn a_missing_socket_is_an_error_not_a_panic() {
    let n = Notifier::from_vars(Some("/nonexistent/notify".into()), None, None, 1).unwrap();
    assert!(n.notify("READY=1").is_err());
    n.ready(); // logged only
}
