//! Loopback ports: one the kernel picks, or a preferred one while it is free. The tests take any
//! port; the quickstart (`keyward-demo`) prefers the fixed ones the README names (8080, 2222...).

use std::net::TcpListener;

/// A port on 127.0.0.1 that is free now (it can be taken before it is bound again).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Whether 127.0.0.1:`port` can be bound now. The std listener sets SO_REUSEADDR, as the servers
/// do: connections in TIME_WAIT from a run just stopped do not make the port busy.
pub fn port_is_free(port: u16) -> bool {
    TcpListener::bind(("127.0.0.1", port)).is_ok()
}

/// `preferred` while it is free, else a free port.
pub fn preferred_or_free(preferred: u16) -> u16 {
    if port_is_free(preferred) {
        preferred
    } else {
        free_port()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_busy_preferred_port_gives_another() {
        let busy = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = busy.local_addr().unwrap().port();
        assert!(!port_is_free(port));
        assert_ne!(preferred_or_free(port), port);
        drop(busy);
        assert_eq!(preferred_or_free(port), port);
    }
}
