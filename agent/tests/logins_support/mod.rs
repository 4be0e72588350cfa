//! Debian's sshd on a loopback port writing its log to a file (`-E`, LogLevel VERBOSE, as the
//! login audit reads it), ssh clients for one-shot logins and for sessions that stay open, and a
//! login audit over the log. Needs `mod support;` beside it (users, keys, waits).

#![allow(dead_code, clippy::unwrap_used)] // each test file uses a different subset

use std::fs;
use std::io::{BufRead, BufReader};
use std::net::TcpListener;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use keyward_agent::config::LoginsConfig;
use keyward_agent::logins::LoginAudit;
use keyward_agent::state_dir::StateDir;
use keyward_common::keys::{GeneratedKey, KeyAlgorithm};
use keyward_common::proto::LoginEvent;

use crate::support::{TestUser, require, wait_for};

pub const SSHD: &str = "/usr/sbin/sshd";
pub const SSH: &str = "/usr/bin/ssh";

/// A child process killed on drop.
pub struct Proc(pub Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Proc {
    pub fn running(&mut self) -> bool {
        self.0.try_wait().unwrap().is_none()
    }
}

/// A private sshd on 127.0.0.1: public keys only, no PAM, `StrictModes yes`, VERBOSE log to
/// `dir/sshd.log`.
pub struct Sshd {
    proc: Proc,
    pub port: u16,
    pub log: PathBuf,
}

impl Sshd {
    pub fn start(dir: &Path) -> Sshd {
        require(SSHD, "openssh-server");
        require(SSH, "openssh-client");
        // sshd insists on its privilege separation directory (the package makes it at boot).
        fs::create_dir_all("/run/sshd").unwrap();
        let host_key = GeneratedKey::generate(KeyAlgorithm::Ed25519, "host").unwrap();
        let host_key_path = write_private_key(dir, "host_key", &host_key);
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let config = dir.join("sshd_config");
        fs::write(
            &config,
            format!(
                "ListenAddress 127.0.0.1\nHostKey {}\nPidFile none\nUsePAM no\nStrictModes yes\n\
                 PubkeyAuthentication yes\nPasswordAuthentication no\n\
                 KbdInteractiveAuthentication no\nAuthorizedKeysFile .ssh/authorized_keys\n\
                 LogLevel VERBOSE\nMaxStartups 100\n",
                host_key_path.display()
            ),
        )
        .unwrap();
        let log = dir.join("sshd.log");
        let child = Command::new(SSHD)
            .args(["-D", "-f"])
            .arg(&config)
            .args(["-p", &port.to_string(), "-E"])
            .arg(&log)
            .stdin(Stdio::null())
            .spawn()
            .unwrap();
        let mut sshd = Sshd {
            proc: Proc(child),
            port,
            log,
        };
        // Not probed with a connection: that would be a login event (closed before
        // authentication) in the log under test.
        wait_for(Duration::from_secs(10), "sshd to listen", || {
            assert!(sshd.proc.running(), "sshd exited: {}", sshd.log_text());
            sshd.log_text()
                .contains("Server listening on ")
                .then_some(())
        });
        sshd
    }

    pub fn log_text(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// `ssh -i key user@127.0.0.1 command...`, no interaction, no known_hosts.
    pub fn ssh(&self, key: &Path, user: &str, command: &[&str]) -> Command {
        let mut cmd = Command::new(SSH);
        cmd.args(["-F", "/dev/null", "-i"])
            .arg(key)
            .args(["-p", &self.port.to_string()])
            .args(["-o", "BatchMode=yes", "-o", "IdentitiesOnly=yes"])
            .args([
                "-o",
                "StrictHostKeyChecking=no",
                "-o",
                "UserKnownHostsFile=/dev/null",
            ])
            .args(["-o", "LogLevel=ERROR", "-o", "ConnectTimeout=10"])
            .arg(format!("{user}@127.0.0.1"))
            .args(command)
            .stdin(Stdio::null());
        cmd
    }

    /// A login that runs `true`; whether it worked. Returns once sshd logged the session's end
    /// (or, for a refused login, the connection's close), so the log is complete.
    pub fn login(&self, key: &Path, user: &str) -> bool {
        let before = self.log_text().lines().count();
        let out = self.ssh(key, user, &["true"]).output().unwrap();
        wait_for(
            Duration::from_secs(10),
            "sshd to log the connection's end",
            || {
                let text = self.log_text();
                let new: Vec<&str> = text.lines().skip(before).collect();
                new.iter()
                    .any(|l| {
                        l.starts_with("Disconnected from user ")
                            || l.starts_with("Connection closed by ")
                            || l.starts_with("Disconnected from ")
                    })
                    .then_some(())
            },
        );
        out.status.success()
    }

    /// A session that stays open (`sleep 600`) until ended from outside; returns once the
    /// remote command runs.
    pub fn open_session(&self, key: &Path, user: &str) -> Proc {
        let mut child = self
            .ssh(key, user, &["echo ready; exec sleep 600"])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut line = String::new();
            let _ = BufReader::new(stdout).read_line(&mut line);
            let _ = tx.send(line);
        });
        let first = rx.recv_timeout(Duration::from_secs(15));
        assert_eq!(
            first.as_deref().map(str::trim),
            Ok("ready"),
            "the session did not open; sshd log:\n{}",
            self.log_text()
        );
        Proc(child)
    }
}

/// Writes a private key 0600 for `ssh -i`.
pub fn write_private_key(dir: &Path, name: &str, key: &GeneratedKey) -> PathBuf {
    let path = dir.join(name);
    fs::write(&path, key.private_openssh().as_bytes()).unwrap();
    fs::set_permissions(&path, fs::Permissions::from_mode(0o600)).unwrap();
    path
}

/// An Ed25519 key written for `ssh -i`.
pub fn client_key(dir: &Path, name: &str) -> (GeneratedKey, PathBuf) {
    let key = GeneratedKey::generate(KeyAlgorithm::Ed25519, name).unwrap();
    let path = write_private_key(dir, name, &key);
    (key, path)
}

/// Makes `keys` the user's authorized keys (as the agent's writer does).
pub fn authorize(user: &TestUser, keys: &[&GeneratedKey]) {
    use keyward_common::authorized_keys::{ManagedKey, Mode};
    let managed: Vec<ManagedKey> = keys
        .iter()
        .map(|k| ManagedKey {
            kind: keyward_common::KeyKind::Tenant,
            generation: 1,
            public_key: k.public_openssh().to_owned(),
            expires_at: None,
        })
        .collect();
    keyward_agent::writer::apply(&user.name, Mode::Exclusive, &managed, &[]).unwrap();
}

/// A login audit over `log` with its state in `state`, as the agent runs it.
pub fn audit(log: &Path, state: &Path, spool_max_events: usize) -> LoginAudit {
    let config = LoginsConfig {
        spool_max_events,
        ..LoginsConfig::file(log)
    };
    let dir = StateDir::new(state);
    dir.create().unwrap();
    let (wake, _) = tokio::sync::mpsc::channel(1);
    LoginAudit::open(&config, dir, &wake).unwrap()
}

/// Reads everything new; returns the spool.
pub fn read_all(audit: &mut LoginAudit) -> Vec<LoginEvent> {
    while audit.read_available(1000).unwrap().more {}
    audit.spooled().to_vec()
}

/// The events as `(outcome, user, fingerprint)`, compact for assertions.
pub fn summary(events: &[LoginEvent]) -> Vec<(String, String, String)> {
    events
        .iter()
        .map(|e| {
            let outcome = keyward_common::proto::LoginOutcome::try_from(e.outcome)
                .map(|o| o.as_str_name().to_owned())
                .unwrap_or_default();
            (outcome, e.user.clone(), e.fingerprint.clone())
        })
        .collect()
}

/// Sends sshd on 127.0.0.1:`port` what an unauthenticated client may send: an SSH banner and a
/// KEXINIT whose key-exchange name-list is `x`, newline, `line`, newline, `y`. sshd finds no
/// common method and logs "Unable to negotiate … Their offer: " with the list as it came; into an
/// `-E` file the newlines go unescaped, so `line` becomes a line of the log of its own.
pub fn kex_inject(port: u16, line: &str) {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    stream.write_all(b"SSH-2.0-kwforge\r\n").unwrap();
    // The server's banner.
    let mut byte = [0u8; 1];
    loop {
        stream.read_exact(&mut byte).unwrap();
        if byte[0] == b'\n' {
            break;
        }
    }
    let name_list = |text: &[u8]| {
        let mut out = u32::try_from(text.len()).unwrap().to_be_bytes().to_vec();
        out.extend_from_slice(text);
        out
    };
    let mut payload = vec![20u8]; // SSH_MSG_KEXINIT
    payload.extend_from_slice(&[7u8; 16]); // cookie
    payload.extend(name_list(format!("x\n{line}\ny").as_bytes()));
    for list in [
        &b"ssh-ed25519"[..],
        b"aes128-ctr",
        b"aes128-ctr",
        b"hmac-sha2-256",
        b"hmac-sha2-256",
        b"none",
        b"none",
        b"",
        b"",
    ] {
        payload.extend(name_list(list));
    }
    payload.push(0); // first_kex_packet_follows
    payload.extend_from_slice(&[0u8; 4]); // reserved
    let mut padding = 8 - (payload.len() + 5) % 8;
    if padding < 4 {
        padding += 8;
    }
    let mut packet = u32::try_from(payload.len() + padding + 1)
        .unwrap()
        .to_be_bytes()
        .to_vec();
    packet.push(u8::try_from(padding).unwrap());
    packet.extend(payload);
    packet.extend(std::iter::repeat_n(0u8, padding));
    stream.write_all(&packet).unwrap();
    // sshd answers with its own KEXINIT and hangs up.
    let mut sink = Vec::new();
    let _ = stream.read_to_end(&mut sink);
}

/// A process group killed whole on drop (`runuser` forks the command it runs).
pub struct Group(pub Child);

impl Drop for Group {
    fn drop(&mut self) {
        if let Ok(pid) = i32::try_from(self.0.id()) {
            let _ = nix::sys::signal::killpg(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
        let _ = self.0.wait();
    }
}

impl Group {
    pub fn running(&mut self) -> bool {
        self.0.try_wait().unwrap().is_none()
    }
}

/// A process of `user` that looks like sshd by everything a tenant controls: its argv0 is
/// `sshd: USER [priv]`, and it listens on a loopback port and holds `connections` connections
/// to it (python3 run with `runuser`). Returns it (in a process group of its own, killed on
/// drop) and the connections' client ports.
pub fn tenant_sshd(user: &TestUser, connections: usize) -> (Group, Vec<u16>) {
    const PYTHON: &str = "/usr/bin/python3";
    require(PYTHON, "python3");
    require("/usr/sbin/runuser", "util-linux");
    let script = format!(
        "import socket, sys, time\n\
         l = socket.socket(); l.bind(('127.0.0.1', 0)); l.listen(4096)\n\
         clients = [socket.create_connection(l.getsockname()) for _ in range({connections})]\n\
         servers = [l.accept()[0] for _ in clients]\n\
         print(' '.join(str(c.getsockname()[1]) for c in clients), flush=True)\n\
         time.sleep(600)\n"
    );
    let name = user.name.to_string();
    let child = Command::new("/usr/sbin/runuser")
        .args(["-u", &name, "--", "/bin/bash", "-c"])
        .arg(format!(
            "ulimit -n {}; exec -a 'sshd: {name} [priv]' {PYTHON} -c \"$0\"",
            connections * 2 + 64
        ))
        .arg(script)
        .current_dir("/")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .process_group(0)
        .spawn()
        .unwrap();
    let mut proc = Group(child);
    let stdout = proc.0.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut line = String::new();
        let _ = BufReader::new(stdout).read_line(&mut line);
        let _ = tx.send(line);
    });
    let line = rx
        .recv_timeout(Duration::from_secs(30))
        .expect("the tenant's sshd did not report its connections");
    let ports: Vec<u16> = line
        .split_whitespace()
        .map(|p| p.parse().unwrap())
        .collect();
    assert_eq!(ports.len(), connections, "{line}");
    (proc, ports)
}

/// Debian's rsyslogd run on its own: a private socket (not `/dev/log`) that every local user may
/// write to, every message written to `dir/syslog` in the traditional format auth.log has.
pub struct Rsyslog {
    _proc: Proc,
    pub socket: PathBuf,
    pub file: PathBuf,
}

impl Rsyslog {
    pub fn start(dir: &Path) -> Rsyslog {
        require("/usr/sbin/rsyslogd", "rsyslog");
        fs::set_permissions(dir, fs::Permissions::from_mode(0o755)).unwrap();
        let socket = dir.join("log.sock");
        let file = dir.join("syslog");
        let work = dir.join("rsyslog-work");
        fs::create_dir_all(&work).unwrap();
        let config = dir.join("rsyslog.conf");
        fs::write(
            &config,
            format!(
                "global(workDirectory=\"{}\")\n\
                 module(load=\"imuxsock\" SysSock.Use=\"off\")\n\
                 input(type=\"imuxsock\" Socket=\"{}\")\n\
                 *.* action(type=\"omfile\" file=\"{}\" template=\"RSYSLOG_TraditionalFileFormat\")\n",
                work.display(),
                socket.display(),
                file.display()
            ),
        )
        .unwrap();
        let child = Command::new("/usr/sbin/rsyslogd")
            .arg("-n")
            .arg("-f")
            .arg(&config)
            .arg("-i")
            .arg(dir.join("rsyslogd.pid"))
            .stdin(Stdio::null())
            .spawn()
            .unwrap();
        let mut proc = Proc(child);
        wait_for(Duration::from_secs(10), "rsyslogd's socket", || {
            assert!(
                proc.running(),
                "rsyslogd exited; see its config {}",
                config.display()
            );
            socket.exists().then_some(())
        });
        // Any local user may log, as through /dev/log.
        fs::set_permissions(&socket, fs::Permissions::from_mode(0o666)).unwrap();
        Rsyslog {
            _proc: proc,
            socket,
            file,
        }
    }

    /// `logger` run as `user` with tag `tag` (`sshd`, `sshd[1]`), facility auth.
    pub fn logger(&self, user: &TestUser, tag: &str, message: &str) {
        require("/usr/bin/logger", "bsdutils");
        let status = Command::new("/usr/sbin/runuser")
            .args(["-u", user.name.as_str(), "--", "/usr/bin/logger", "-u"])
            .arg(&self.socket)
            .args(["-p", "auth.info", "-t", tag, "--", message])
            .current_dir("/")
            .status()
            .unwrap();
        assert!(status.success(), "logger as {} failed", user.name);
    }
}
