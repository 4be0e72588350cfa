//! The login audit's test parts: a login audit over sshd's file log (sshd itself, its ssh
//! clients, users and waits are `keyward-test-support`'s), client keys, a tenant's process that
//! looks like sshd, and Debian's rsyslogd run on its own.

#![allow(dead_code, clippy::unwrap_used)] // each test file uses a different subset

use std::fs;
use std::io::{BufRead, BufReader};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use keyward_agent::config::LoginsConfig;
use keyward_agent::logins::LoginAudit;
use keyward_agent::state_dir::StateDir;
use keyward_common::keys::{GeneratedKey, KeyAlgorithm};
use keyward_common::proto::LoginEvent;

use keyward_test_support::sshd::write_private_key;
use keyward_test_support::{Group, Proc, TestUser, require, wait_for};

/// An Ed25519 key written for `ssh -i`.
pub fn client_key(dir: &Path, name: &str) -> (GeneratedKey, PathBuf) {
    let key = GeneratedKey::generate(KeyAlgorithm::Ed25519, name).unwrap();
    let path = write_private_key(dir, name, key.private_openssh());
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
            options: Default::default(),
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
