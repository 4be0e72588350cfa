//! The kernel's TCP tables, `/proc/net/tcp` and `/proc/net/tcp6`.
//!
//! sshd's log names a session by its client's address and port (an `sshd -E` file has no pid).
//! The kernel lists every TCP socket here with its local and remote endpoint and its inode; a
//! process's open sockets are `socket:[INODE]` links in `/proc/PID/fd`. So the session of client
//! `(ip, port)` is the socket whose remote endpoint is that and whose local port is one sshd
//! listens on, and the sshd processes holding it: [`crate::procs::ProcSnapshot::holders`], from
//! one read of `/proc`.
//!
//! Addresses are printed in hex in the kernel's memory order (for IPv4 the 32-bit word as the
//! machine reads it, for IPv6 four such words); ports in hex, host order. An IPv4 client of an
//! sshd listening on `::` shows up in `tcp6` as `::ffff:a.b.c.d`, which sshd logs as `a.b.c.d`:
//! both sides are compared with mapped addresses unwrapped.

use std::collections::BTreeSet;
use std::fs;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::Path;

/// `TCP_LISTEN` in the `st` column.
pub const TCP_LISTEN: u8 = 0x0A;

/// One row of `/proc/net/tcp` or `/proc/net/tcp6`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TcpSocket {
    pub local: SocketAddr,
    pub remote: SocketAddr,
    pub state: u8,
    pub inode: u64,
}

/// Parses the text of `/proc/net/tcp` (`v6`: `/proc/net/tcp6`). Rows that do not parse (the
/// header) are skipped.
pub fn parse_tcp_table(text: &str, v6: bool) -> Vec<TcpSocket> {
    text.lines()
        .filter_map(|line| {
            let mut fields = line.split_whitespace();
            let _slot = fields.next()?;
            let local = parse_endpoint(fields.next()?, v6)?;
            let remote = parse_endpoint(fields.next()?, v6)?;
            let state = u8::from_str_radix(fields.next()?, 16).ok()?;
            // tx_queue:rx_queue, tr:tm->when, retrnsmt, uid, timeout, then the inode.
            let inode = fields.nth(5)?.parse().ok()?;
            Some(TcpSocket {
                local,
                remote,
                state,
                inode,
            })
        })
        .collect()
}

/// `0100007F:08FB` (IPv4) or 32 hex digits and a port (IPv6).
fn parse_endpoint(text: &str, v6: bool) -> Option<SocketAddr> {
    let (addr, port) = text.split_once(':')?;
    let port = u16::from_str_radix(port, 16).ok()?;
    let word = |i: usize| -> Option<[u8; 4]> {
        let hex = addr.get(i * 8..i * 8 + 8)?;
        Some(u32::from_str_radix(hex, 16).ok()?.to_ne_bytes())
    };
    let ip = if v6 {
        if addr.len() != 32 {
            return None;
        }
        let mut bytes = [0u8; 16];
        for i in 0..4 {
            bytes[i * 4..i * 4 + 4].copy_from_slice(&word(i)?);
        }
        IpAddr::V6(Ipv6Addr::from(bytes))
    } else {
        if addr.len() != 8 {
            return None;
        }
        IpAddr::V4(Ipv4Addr::from(word(0)?))
    };
    Some(SocketAddr::new(ip, port))
}

/// `::ffff:a.b.c.d` as `a.b.c.d`.
pub fn unmapped(addr: SocketAddr) -> SocketAddr {
    match addr.ip() {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => SocketAddr::new(IpAddr::V4(v4), addr.port()),
            None => addr,
        },
        IpAddr::V4(_) => addr,
    }
}

/// Every TCP socket of `proc_root/net/tcp` and `tcp6` (a missing table, IPv6 disabled, is
/// empty).
pub fn read_tcp_sockets(proc_root: &Path) -> io::Result<Vec<TcpSocket>> {
    let mut all = Vec::new();
    for (name, v6) in [("net/tcp", false), ("net/tcp6", true)] {
        match fs::read_to_string(proc_root.join(name)) {
            Ok(text) => all.extend(parse_tcp_table(&text, v6)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
    }
    Ok(all)
}

/// The remote endpoints of every TCP connection now (listening sockets excluded), unmapped.
pub fn live_remotes(proc_root: &Path) -> io::Result<BTreeSet<SocketAddr>> {
    Ok(read_tcp_sockets(proc_root)?
        .into_iter()
        .filter(|s| s.state != TCP_LISTEN)
        .map(|s| unmapped(s.remote))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A `/proc/net/tcp` as the kernel prints it: sshd listening on 127.0.0.1:2299 (0x08FB) and
    /// 0.0.0.0:22, an established session from 127.0.0.1:49832 (0xC2A8), and a web server.
    const TCP: &str = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 0100007F:08FB 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 41001 1 0000000000000000 100 0 0 10 0
   1: 00000000:0016 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 41002 1 0000000000000000 100 0 0 10 0
   2: 0100007F:08FB 0100007F:C2A8 01 00000000:00000000 02:000A7A1B 00000000     0        0 41100 2 0000000000000000 20 4 30 10 -1
   3: 0100007F:0050 0100007F:C2A9 01 00000000:00000000 00:00000000 00000000    33        0 41200 1 0000000000000000 20 4 30 10 -1
   4: 0100007F:C2A8 0100007F:08FB 01 00000000:00000000 02:000A7A1B 00000000  1000        0 41300 2 0000000000000000 20 4 30 10 -1
";

    /// `/proc/net/tcp6`: sshd on [::]:22, a session from [2001:db8::7]:40000 (0x9C40) and an
    /// IPv4 client 10.0.0.9:50000 (0xC350) through the dual-stack socket.
    const TCP6: &str = "  sl  local_address                         remote_address                        st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 00000000000000000000000000000000:0016 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 42001 1 0000000000000000 100 0 0 10 0
   1: 00000000000000000000000001000000:0016 B80D0120000000000000000007000000:9C40 01 00000000:00000000 02:00000000 00000000     0        0 42100 1 0000000000000000 20 4 30 10 -1
   2: 0000000000000000FFFF00000100007F:0016 0000000000000000FFFF00000900000A:C350 01 00000000:00000000 02:00000000 00000000     0        0 42200 1 0000000000000000 20 4 30 10 -1
";

    #[test]
    fn tcp_tables_parse() {
        let v4 = parse_tcp_table(TCP, false);
        assert_eq!(v4.len(), 5, "the header is skipped");
        assert_eq!(
            v4[0],
            TcpSocket {
                local: "127.0.0.1:2299".parse().unwrap(),
                remote: "0.0.0.0:0".parse().unwrap(),
                state: TCP_LISTEN,
                inode: 41001,
            }
        );
        assert_eq!(v4[2].remote, "127.0.0.1:49832".parse().unwrap());
        assert_eq!(v4[2].state, 1);
        let v6 = parse_tcp_table(TCP6, true);
        assert_eq!(v6.len(), 3);
        assert_eq!(v6[0].local, "[::]:22".parse().unwrap());
        assert_eq!(v6[1].local, "[::1]:22".parse().unwrap());
        assert_eq!(v6[1].remote, "[2001:db8::7]:40000".parse().unwrap());
        assert_eq!(unmapped(v6[2].remote), "10.0.0.9:50000".parse().unwrap());
        assert_eq!(v6[2].inode, 42200);
    }

    #[test]
    fn garbage_rows_are_skipped() {
        for text in [
            "",
            "0: zz:zz 00:00 0A",
            "0: 0100007F:08FB 00000000:0000",
            "0: 0100007F:08FB 00000000:0000 0A 0:0 0:0 0 0 0 notanumber",
            "0: 0100007F0:08FB 00000000:0000 0A 0:0 0:0 0 0 0 1",
            "0: 0100007F:1FFFF 00000000:0000 0A 0:0 0:0 0 0 0 1",
        ] {
            assert!(parse_tcp_table(text, false).is_empty(), "{text}");
        }
        assert!(
            parse_tcp_table(TCP, true).is_empty(),
            "v4 rows are not v6 rows"
        );
    }

    #[test]
    fn this_machine_can_be_read() {
        // Whatever runs here, reading the real tables works and a made-up client is not live.
        assert!(read_tcp_sockets(Path::new("/proc")).is_ok());
        let live = live_remotes(Path::new("/proc")).unwrap();
        assert!(!live.contains(&"192.0.2.123:1".parse().unwrap()));
    }
}
