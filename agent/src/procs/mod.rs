//! One read of `/proc`: every process (pid, parent, real uid, executable, title) and, for the
//! processes that are really sshd, their sockets; plus the kernel's TCP tables.
//!
//! Everything that asks "which process is sshd, and which connection does it hold" decides from
//! one [`ProcSnapshot`]: the login audit when it corroborates a batch of accepted logins read
//! from a file ([`crate::logins::audit`]), and a revocation when it decides which sessions end
//! ([`crate::sessions::revoke`]). Before, each login record re-read the TCP tables and every fd
//! of every process whose argv0 said `sshd`: a tenant's own `sshd` with a thousand sockets and a
//! forged line per socket stalled a revocation for a minute. The TCP tables are parsed in
//! [`tcp_table`].
//!
//! **sshd is its executable.** A process counts as sshd only when `/proc/PID/exe` is one of the
//! configured executables ([`SshdTrust`]); its name, argv and title are the tenant's to choose.
//! A root process (which no tenant can fake) also counts when that executable was replaced since
//! it started (an upgrade: `PATH (deleted)`). Sockets are read only of such processes running as
//! one of the uids the caller names (root, and the user whose sessions are decided): the cost of
//! a snapshot is one `readdir` of `/proc`, three small reads per process, and the fds of the
//! real sshd processes, whatever the tenant runs.
//!
//! **Why not the `procfs` crate.** Measured with procfs 0.18 (`default-features = false`) doing
//! what it can here: `Process::new_with_root` + `status()` for the parent and real uid, `exe()`,
//! `fd()` for the socket links, `TcpNetEntries` for the TCP tables (argv0 stays our own read).
//! It would follow no more links than this code (it opens `/proc/PID` with `O_PATH`, reads `exe`
//! with `readlinkat`, opens each fd entry `O_NOFOLLOW`), and the kernel escapes newlines in a
//! process's name in `status`, so a hostile name breaks neither. It does not fit anyway:
//!
//! - A `status` without any one of the 20 fields its parser requires (`ShdPnd`, `CapInh`, ...)
//!   is an error; an unreadable process is skipped here (it may have exited mid-scan), so on a
//!   `/proc` that leaves one out a session monitor would go unseen and its session stay open.
//!   Here only `PPid:` and `Uid:` are needed. (Our fake `/proc` trees, which write `Name`,
//!   `PPid` and `Uid` only, failed 10 unit tests with it.)
//! - One TCP row it cannot parse (a state value it does not know, from a newer kernel) fails the
//!   whole table and with it the revocation; here such a row is skipped.
//! - It reads `cmdline` whole into UTF-8 `String`s (an error for a non-UTF-8 argv), while a
//!   tenant's argv can be megabytes: here argv0 is cut at [`TITLE_MAX`] bytes, so that read stays
//!   ours regardless.
//! - Cost: per process one more `open` (the `O_PATH` directory) and a map of every `status`
//!   field as owned strings; per fd of a real sshd three system calls instead of one
//!   `readlink`. The stripped `release-agent` binary grew from 5,799,208 to 5,876,880 bytes
//!   (+77,672, +1.3 %: procfs, procfs-core and the rustix code they call), to replace parsers of
//!   a few dozen lines that are tested against fake `/proc` trees here.

pub mod tcp_table;

use std::collections::{BTreeSet, HashMap};
use std::fs;
use std::io::{self, Read};
use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};

use self::tcp_table::{TCP_LISTEN, TcpSocket};
use crate::config::SshdTrust;

/// The bytes of `/proc/PID/cmdline` read: sshd's titles are short; a tenant's argv may not be.
pub const TITLE_MAX: u64 = 4096;

/// Snapshots taken by this process (for tests: a revocation takes exactly one).
static TAKEN: AtomicU64 = AtomicU64::new(0);

/// How many snapshots this process has taken.
pub fn snapshots_taken() -> u64 {
    TAKEN.load(Ordering::Relaxed)
}

/// One process as read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProcEntry {
    pub pid: i32,
    pub ppid: i32,
    /// Real uid.
    pub uid: u32,
    /// Argv0 as set by `setproctitle` (`sshd: bob [priv]`), at most [`TITLE_MAX`] bytes.
    pub title: Vec<u8>,
    /// `/proc/PID/exe` is one of the sshd executables.
    pub sshd: bool,
    /// The socket inodes it holds; read only for sshd processes of the uids asked for.
    pub sockets: BTreeSet<u64>,
}

/// `/proc` at one moment.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ProcSnapshot {
    /// By pid.
    pub processes: Vec<ProcEntry>,
    pub tcp: Vec<TcpSocket>,
    /// Indexes built once: the connections (not listening) by unmapped remote endpoint, with
    /// their local port and inode; socket inode to the sshd processes holding it; the ports an
    /// sshd process listens on.
    by_remote: HashMap<SocketAddr, Vec<(u16, u64)>>,
    held: HashMap<u64, Vec<i32>>,
    sshd_ports: BTreeSet<u16>,
}

impl ProcSnapshot {
    /// Reads `proc_root` (`/proc`; a parameter for tests): every process, the sockets of the sshd
    /// processes running as one of `socket_uids`, and the TCP tables.
    pub fn take(
        proc_root: &Path,
        trust: &SshdTrust,
        socket_uids: &[u32],
    ) -> io::Result<ProcSnapshot> {
        TAKEN.fetch_add(1, Ordering::Relaxed);
        let mut processes = Vec::new();
        for entry in fs::read_dir(proc_root)?.flatten() {
            let Some(pid) = entry
                .file_name()
                .to_str()
                .and_then(|s| s.parse::<i32>().ok())
            else {
                continue;
            };
            // A process may exit mid-scan: whatever cannot be read is skipped.
            if let Some(found) = read_process(proc_root, pid, trust, socket_uids) {
                processes.push(found);
            }
        }
        let tcp = tcp_table::read_tcp_sockets(proc_root)?;
        Ok(Self::of(processes, tcp))
    }

    /// A snapshot of what was read (indexes built).
    pub fn of(mut processes: Vec<ProcEntry>, tcp: Vec<TcpSocket>) -> ProcSnapshot {
        processes.sort_by_key(|p| p.pid);
        let mut held: HashMap<u64, Vec<i32>> = HashMap::new();
        for p in processes.iter().filter(|p| p.sshd) {
            for inode in &p.sockets {
                held.entry(*inode).or_default().push(p.pid);
            }
        }
        let sshd_ports = tcp
            .iter()
            .filter(|s| s.state == TCP_LISTEN && held.contains_key(&s.inode))
            .map(|s| s.local.port())
            .collect();
        let mut by_remote: HashMap<SocketAddr, Vec<(u16, u64)>> = HashMap::new();
        for s in tcp.iter().filter(|s| s.state != TCP_LISTEN) {
            by_remote
                .entry(tcp_table::unmapped(s.remote))
                .or_default()
                .push((s.local.port(), s.inode));
        }
        ProcSnapshot {
            processes,
            tcp,
            by_remote,
            held,
            sshd_ports,
        }
    }

    /// The process `pid`, if it was there.
    pub fn process(&self, pid: i32) -> Option<&ProcEntry> {
        self.processes
            .binary_search_by_key(&pid, |p| p.pid)
            .ok()
            .map(|i| &self.processes[i])
    }

    /// Whether a connection from `remote` (listening sockets aside) was open.
    pub fn is_live(&self, remote: SocketAddr) -> bool {
        self.by_remote.contains_key(&tcp_table::unmapped(remote))
    }

    /// The sshd processes holding the connection from `remote` to a port an sshd process
    /// listens on, by pid.
    pub fn holders(&self, remote: SocketAddr) -> Vec<i32> {
        let Some(connections) = self.by_remote.get(&tcp_table::unmapped(remote)) else {
            return Vec::new();
        };
        let mut pids: Vec<i32> = connections
            .iter()
            .filter(|(port, inode)| *inode != 0 && self.sshd_ports.contains(port))
            .filter_map(|(_, inode)| self.held.get(inode))
            .flatten()
            .copied()
            .collect();
        pids.sort_unstable();
        pids.dedup();
        pids
    }
}

fn read_process(
    proc_root: &Path,
    pid: i32,
    trust: &SshdTrust,
    socket_uids: &[u32],
) -> Option<ProcEntry> {
    let dir = proc_root.join(pid.to_string());
    let status = fs::read_to_string(dir.join("status")).ok()?;
    let (ppid, uid) = parse_status(&status)?;
    let title = read_title(&dir.join("cmdline"));
    // Kernel threads and processes of other namespaces' exited binaries have no link.
    let sshd = fs::read_link(dir.join("exe"))
        .is_ok_and(|exe| trust.is_executable(exe.as_os_str().as_encoded_bytes(), uid == 0));
    let sockets = if sshd && socket_uids.contains(&uid) {
        socket_inodes(&dir)
    } else {
        BTreeSet::new()
    };
    Some(ProcEntry {
        pid,
        ppid,
        uid,
        title,
        sshd,
        sockets,
    })
}

/// The process `pid` now, without its sockets (a process re-checked right before it is
/// signalled: its pid may have been reused since the snapshot).
pub fn read_one(proc_root: &Path, trust: &SshdTrust, pid: i32) -> Option<ProcEntry> {
    read_process(proc_root, pid, trust, &[])
}

/// Argv0 (up to the first NUL), from at most [`TITLE_MAX`] bytes of `cmdline`; empty when
/// unreadable (kernel threads, a process that exited).
fn read_title(path: &Path) -> Vec<u8> {
    let mut bytes = Vec::new();
    if let Ok(file) = fs::File::open(path) {
        let _ = file.take(TITLE_MAX).read_to_end(&mut bytes);
    }
    if let Some(end) = bytes.iter().position(|&b| b == 0) {
        bytes.truncate(end);
    }
    bytes
}

fn socket_inodes(dir: &Path) -> BTreeSet<u64> {
    let Ok(fds) = fs::read_dir(dir.join("fd")) else {
        return BTreeSet::new();
    };
    fds.flatten()
        .filter_map(|fd| fs::read_link(fd.path()).ok())
        .filter_map(|link| socket_inode(&link))
        .collect()
}

/// `socket:[12345]` → 12345.
fn socket_inode(link: &Path) -> Option<u64> {
    link.to_str()?
        .strip_prefix("socket:[")?
        .strip_suffix(']')?
        .parse()
        .ok()
}

/// `PPid:` and the real uid (first field of `Uid:`) from `/proc/PID/status`.
pub(crate) fn parse_status(status: &str) -> Option<(i32, u32)> {
    let field = |name: &str| {
        status
            .lines()
            .find_map(|line| line.strip_prefix(name))
            .and_then(|rest| rest.split_whitespace().next())
    };
    Some((field("PPid:")?.parse().ok()?, field("Uid:")?.parse().ok()?))
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    /// A fake `/proc/PID`: `status`, `cmdline`, an `exe` link and `fd/N` socket links.
    pub(crate) fn fake(
        root: &Path,
        pid: i32,
        ppid: i32,
        uid: u32,
        exe: &str,
        cmdline: &str,
        sockets: &[u64],
    ) {
        let dir = root.join(pid.to_string());
        fs::create_dir_all(dir.join("fd")).unwrap();
        fs::write(dir.join("cmdline"), format!("{cmdline}\0")).unwrap();
        fs::write(
            dir.join("status"),
            format!("Name:\tx\nPPid:\t{ppid}\nUid:\t{uid}\t{uid}\t{uid}\t{uid}\n"),
        )
        .unwrap();
        symlink(exe, dir.join("exe")).unwrap();
        for (fd, inode) in sockets.iter().enumerate() {
            symlink(
                format!("socket:[{inode}]"),
                dir.join("fd").join(fd.to_string()),
            )
            .unwrap();
        }
    }

    pub(crate) const SSHD: &str = "/usr/sbin/sshd";

    /// `/proc/net/tcp`: sshd on 127.0.0.1:2299 (0x08FB, inode 41001), a session from
    /// 127.0.0.1:49832 (0xC2A8, inode 41100), a fake listener on :8080 (0x1F90, inode 50001) with
    /// a connection from 127.0.0.1:40000 (0x9C40, inode 50100).
    pub(crate) const TCP: &str = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 0100007F:08FB 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 41001 1 0000000000000000 100 0 0 10 0
   1: 0100007F:08FB 0100007F:C2A8 01 00000000:00000000 02:000A7A1B 00000000     0        0 41100 2 0000000000000000 20 4 30 10 -1
   2: 0100007F:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000  1001        0 50001 1 0000000000000000 100 0 0 10 0
   3: 0100007F:1F90 0100007F:9C40 01 00000000:00000000 00:00000000 00000000  1001        0 50100 1 0000000000000000 20 4 30 10 -1
";

    /// A host with sshd, one session of bob (uid 1001) and bob's own `sshd`.
    pub(crate) fn host() -> tempfile::TempDir {
        let root = tempfile::tempdir().unwrap();
        let r = root.path();
        fs::create_dir(r.join("net")).unwrap();
        fs::write(r.join("net/tcp"), TCP).unwrap();
        fs::create_dir(r.join("self")).unwrap(); // not a pid
        fake(r, 1, 0, 0, "/sbin/init", "/sbin/init", &[]);
        fake(
            r,
            100,
            1,
            0,
            SSHD,
            "sshd: /usr/sbin/sshd -D [listener] 0 of 10-100 startups",
            &[41001],
        );
        fake(r, 200, 100, 0, SSHD, "sshd: bob [priv]", &[41100, 41101]);
        fake(r, 201, 200, 1001, SSHD, "sshd: bob@notty", &[41100]);
        fake(r, 202, 201, 1001, "/usr/bin/sleep", "sleep", &[]);
        // bob's fake: a python named like sshd, listening and holding a connection.
        fake(
            r,
            300,
            1,
            1001,
            "/usr/bin/python3.11",
            "sshd: bob [priv]",
            &[50001, 50100],
        );
        root
    }

    #[test]
    fn only_real_sshd_processes_count_and_only_their_sockets_are_read() {
        let root = host();
        let snapshot = ProcSnapshot::take(root.path(), &SshdTrust::default(), &[0, 1001]).unwrap();
        assert_eq!(
            snapshot.processes.iter().map(|p| p.pid).collect::<Vec<_>>(),
            vec![1, 100, 200, 201, 202, 300]
        );
        let p = |pid| snapshot.process(pid).unwrap();
        assert!(p(100).sshd && p(200).sshd && p(201).sshd);
        assert!(!p(1).sshd && !p(202).sshd);
        assert!(!p(300).sshd, "a python titled like sshd is not sshd");
        assert!(p(300).sockets.is_empty(), "its fds are never read");
        assert_eq!(p(200).title, b"sshd: bob [priv]");
        assert_eq!(p(201).uid, 1001);
        assert_eq!(p(201).ppid, 200);
        assert_eq!(
            snapshot.holders("127.0.0.1:49832".parse().unwrap()),
            vec![200, 201]
        );
        assert!(
            snapshot
                .holders("127.0.0.1:40000".parse().unwrap())
                .is_empty(),
            "the fake's connection is nobody's"
        );
        assert!(snapshot.is_live("127.0.0.1:40000".parse().unwrap()));
        assert!(!snapshot.is_live("127.0.0.1:1".parse().unwrap()));
        // Sockets only of the uids asked for.
        let root_only = ProcSnapshot::take(root.path(), &SshdTrust::default(), &[0]).unwrap();
        assert!(root_only.process(201).unwrap().sockets.is_empty());
        assert_eq!(
            root_only.holders("127.0.0.1:49832".parse().unwrap()),
            vec![200]
        );
    }

    #[test]
    fn deleted_executables_count_for_root_only_and_titles_are_cut() {
        let root = tempfile::tempdir().unwrap();
        let r = root.path();
        fake(
            r,
            10,
            1,
            0,
            "/usr/sbin/sshd (deleted)",
            "sshd: bob [priv]",
            &[],
        );
        fake(
            r,
            11,
            1,
            1001,
            "/usr/sbin/sshd (deleted)",
            "sshd: bob@notty",
            &[],
        );
        fake(r, 12, 1, 1001, SSHD, &"x".repeat(10_000), &[]);
        let snapshot = ProcSnapshot::take(r, &SshdTrust::default(), &[0, 1001]).unwrap();
        assert!(snapshot.process(10).unwrap().sshd);
        assert!(!snapshot.process(11).unwrap().sshd);
        assert_eq!(
            snapshot.process(12).unwrap().title.len(),
            TITLE_MAX as usize
        );
        let again = read_one(r, &SshdTrust::default(), 10).unwrap();
        assert_eq!(&again, snapshot.process(10).unwrap());
        fs::remove_dir_all(r.join("11")).unwrap();
        assert_eq!(read_one(r, &SshdTrust::default(), 11), None);
    }

    #[test]
    fn status_fields_and_socket_links() {
        let status =
            "Name:\tsshd\nState:\tS (sleeping)\nPPid:\t812\nUid:\t1001\t0\t0\t0\nGid:\t0\n";
        assert_eq!(parse_status(status), Some((812, 1001)));
        assert_eq!(parse_status("Name:\tx\n"), None);
        assert_eq!(socket_inode(Path::new("socket:[41100]")), Some(41100));
        assert_eq!(socket_inode(Path::new("pipe:[41100]")), None);
        assert_eq!(socket_inode(Path::new("/dev/null")), None);
    }

    #[test]
    fn this_machine_can_be_read() {
        let before = snapshots_taken();
        let snapshot = ProcSnapshot::take(Path::new("/proc"), &SshdTrust::default(), &[0]).unwrap();
        assert!(snapshots_taken() > before);
        assert!(snapshot.process(std::process::id() as i32).is_some());
        assert!(
            snapshot
                .holders("192.0.2.123:1".parse().unwrap())
                .is_empty()
        );
    }
}
