//! `end_sessions` and the writer against a real sshd on a loopback port, with real users: the
//! victim's open session ends within a second, a bystander's session and the listening sshd are
//! untouched; and sshd honours the `expiry-time` the writer renders.

// `allow-unwrap-in-tests` covers #[test] fns only, not the helpers beside them.
#![allow(clippy::unwrap_used)]

mod support;

use std::fs;
use std::net::{TcpListener, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use chrono::Utc;
use keyward_agent::config::SshdTrust;
use keyward_agent::sessions::{self, Role};
use keyward_agent::writer;
use keyward_common::authorized_keys::Mode;
use keyward_common::keys::{GeneratedKey, KeyAlgorithm, KeyKind};
use support::{TestUser, homes_dir, managed_key, require, wait_for};

const SSHD: &str = "/usr/sbin/sshd";
const SSH: &str = "/usr/bin/ssh";

/// A child process killed on drop.
struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Proc {
    fn running(&mut self) -> bool {
        self.0.try_wait().unwrap().is_none()
    }
}

/// A private sshd on 127.0.0.1 with `StrictModes yes` and no PAM.
struct Sshd {
    proc: Proc,
    port: u16,
    log: PathBuf,
}

impl Sshd {
    fn start(dir: &Path) -> Sshd {
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
                "ListenAddress 127.0.0.1\n\
                 HostKey {}\n\
                 PidFile none\n\
                 UsePAM no\n\
                 StrictModes yes\n\
                 PubkeyAuthentication yes\n\
                 PasswordAuthentication no\n\
                 KbdInteractiveAuthentication no\n\
                 AuthorizedKeysFile .ssh/authorized_keys\n\
                 LogLevel DEBUG1\n",
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
        wait_for(Duration::from_secs(10), "sshd to listen", || {
            assert!(sshd.proc.running(), "sshd exited: {}", sshd.log_text());
            TcpStream::connect(("127.0.0.1", port)).ok()
        });
        sshd
    }

    fn log_text(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// `ssh -i key user@127.0.0.1 command...` with no interaction and no known_hosts.
    fn ssh(&self, key: &Path, user: &TestUser, command: &[&str]) -> Command {
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
            .arg(format!("{}@127.0.0.1", user.name))
            .args(command)
            .stdin(Stdio::null());
        cmd
    }
}

fn write_private_key(dir: &Path, name: &str, key: &GeneratedKey) -> PathBuf {
    let path = dir.join(name);
    fs::write(&path, key.private_openssh().as_bytes()).unwrap();
    fs::set_permissions(&path, fs::Permissions::from_mode(0o600)).unwrap();
    path
}

#[test]
fn end_sessions_ends_the_users_session_within_a_second_and_nothing_else() {
    let homes = homes_dir();
    let work = tempfile::tempdir().unwrap();
    let victim = TestUser::create("sv", homes.path());
    let bystander = TestUser::create("sb", homes.path());
    let sshd = Sshd::start(work.path());

    let mut clients = Vec::new();
    for user in [&victim, &bystander] {
        let (key, managed) = managed_key(KeyKind::Tenant, 1);
        writer::apply(&user.name, Mode::Exclusive, &[managed], &[]).unwrap();
        let key_path = write_private_key(work.path(), user.name.as_str(), &key);
        let client = sshd
            .ssh(&key_path, user, &["sleep", "600"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        clients.push(Proc(client));
    }
    for (user, client) in [&victim, &bystander].into_iter().zip(&mut clients) {
        wait_for(Duration::from_secs(15), "the ssh session to be up", || {
            assert!(
                client.running(),
                "ssh exited; sshd log:\n{}",
                sshd.log_text()
            );
            let found = sessions::find_sessions(&user.name, &SshdTrust::default()).unwrap();
            let connected = found.iter().any(|p| p.role == Some(Role::Connection));
            let command = found.iter().any(|p| p.role.is_none());
            (connected && command).then_some(())
        });
    }
    let victim_found = sessions::find_sessions(&victim.name, &SshdTrust::default()).unwrap();
    let monitor = victim_found
        .iter()
        .find(|p| p.role == Some(Role::Monitor))
        .expect("a [priv] monitor process");
    assert_eq!(monitor.uid, 0);

    let signalled = sessions::end_sessions(&victim.name, &SshdTrust::default()).unwrap();
    assert!(signalled.contains(&monitor.pid), "{signalled:?}");
    let bystander_pids: Vec<i32> = sessions::find_sessions(&bystander.name, &SshdTrust::default())
        .unwrap()
        .iter()
        .map(|p| p.pid)
        .collect();
    assert!(
        signalled.iter().all(|pid| !bystander_pids.contains(pid)),
        "signalled the bystander: {signalled:?} vs {bystander_pids:?}"
    );

    let (victim_client, bystander_client) = clients.split_at_mut(1);
    wait_for(Duration::from_secs(1), "the victim's ssh to end", || {
        (!victim_client[0].running()).then_some(())
    });
    wait_for(
        Duration::from_secs(1),
        "the victim's session processes to end",
        || {
            sessions::find_sessions(&victim.name, &SshdTrust::default())
                .unwrap()
                .is_empty()
                .then_some(())
        },
    );
    assert!(
        bystander_client[0].running(),
        "the bystander's session ended too"
    );
    assert!(
        !sessions::find_sessions(&bystander.name, &SshdTrust::default())
            .unwrap()
            .is_empty()
    );
    let mut sshd = sshd;
    assert!(sshd.proc.running(), "the listening sshd was killed");
    assert!(TcpStream::connect(("127.0.0.1", sshd.port)).is_ok());

    // Leave nothing of the bystander running before userdel.
    sessions::end_sessions(&bystander.name, &SshdTrust::default()).unwrap();
    wait_for(Duration::from_secs(1), "the bystander's ssh to end", || {
        (!bystander_client[0].running()).then_some(())
    });
}

#[test]
fn sshd_accepts_a_grace_key_and_refuses_an_expired_one() {
    let homes = homes_dir();
    let work = tempfile::tempdir().unwrap();
    let user = TestUser::create("se", homes.path());
    let sshd = Sshd::start(work.path());

    let (grace, mut grace_managed) = managed_key(KeyKind::Tenant, 2);
    grace_managed.expires_at = Some(Utc::now() + chrono::Duration::hours(1));
    let (expired, mut expired_managed) = managed_key(KeyKind::Tenant, 1);
    expired_managed.expires_at = Some(Utc::now() - chrono::Duration::minutes(2));
    writer::apply(
        &user.name,
        Mode::Exclusive,
        &[grace_managed, expired_managed],
        &[],
    )
    .unwrap();
    let written = fs::read_to_string(user.authorized_keys()).unwrap();
    assert_eq!(written.matches("expiry-time=\"").count(), 2, "{written}");

    let grace_path = write_private_key(work.path(), "grace", &grace);
    let expired_path = write_private_key(work.path(), "expired", &expired);
    let out = sshd
        .ssh(&grace_path, &user, &["echo", "in"])
        .output()
        .unwrap();
    assert!(
        out.status.success() && out.stdout == b"in\n",
        "the grace key was refused: {}\nsshd log:\n{}",
        String::from_utf8_lossy(&out.stderr),
        sshd.log_text()
    );
    let out = sshd
        .ssh(&expired_path, &user, &["echo", "in"])
        .output()
        .unwrap();
    assert!(!out.status.success(), "the expired key was accepted");
    assert!(
        sshd.log_text().contains("entry expired at"),
        "sshd did not say why: {}",
        sshd.log_text()
    );
}
