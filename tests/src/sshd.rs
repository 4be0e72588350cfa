//! Debian's sshd on a loopback port, real Unix users, and real `ssh` logins.

use std::net::TcpListener;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use tokio::process::Child;

const SSHD: &str = "/usr/sbin/sshd";
const INSTALL_HINT: &str =
    "install Debian's openssh-server and openssh-client (`make test-deps` does)";

fn run(program: &str, args: &[&str]) -> Output {
    let out = Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {program}: {e}; {INSTALL_HINT}"));
    assert!(
        out.status.success(),
        "{program} {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// A Unix user made for one test, with its home under a temporary directory; removed on drop.
#[derive(Debug)]
pub struct TestUser {
    pub name: String,
    pub home: PathBuf,
    pub uid: u32,
    _root: tempfile::TempDir,
}

impl TestUser {
    pub fn create(prefix: &str) -> Self {
        let name = format!("{prefix}{:08x}", rand::random::<u32>());
        let root = tempfile::tempdir().unwrap();
        // sshd reads authorized_keys as the user, who must be able to reach its home.
        std::fs::set_permissions(root.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        let home = root.path().join(&name);
        run(
            "useradd",
            &[
                "--create-home",
                "--home-dir",
                home.to_str().unwrap(),
                "--shell",
                "/bin/sh",
                &name,
            ],
        );
        // A locked password ('!') makes sshd refuse even key logins; '*' means "no password".
        run("usermod", &["--password", "*", &name]);
        let uid: u32 = String::from_utf8(run("id", &["-u", &name]).stdout)
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        Self {
            name,
            home,
            uid,
            _root: root,
        }
    }

    pub fn authorized_keys(&self) -> PathBuf {
        self.home.join(".ssh/authorized_keys")
    }
}

impl Drop for TestUser {
    fn drop(&mut self) {
        let _ = Command::new("pkill")
            .args(["-KILL", "-u", &self.name])
            .status();
        let _ = Command::new("userdel")
            .args(["--force", &self.name])
            .status();
    }
}

/// A private key on disk, 0600, for `ssh -i`.
#[derive(Debug)]
pub struct KeyFile {
    pub path: PathBuf,
    _dir: tempfile::TempDir,
}

impl KeyFile {
    pub fn write(private_key: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("id");
        std::fs::write(&path, private_key).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        Self { path, _dir: dir }
    }
}

/// sshd listening on 127.0.0.1 with StrictModes, public keys only, verbose logging.
#[derive(Debug)]
pub struct Sshd {
    pub port: u16,
    pub log: PathBuf,
    pub host_key_dir: PathBuf,
    child: Child,
    _dir: tempfile::TempDir,
}

impl Sshd {
    pub async fn start() -> Self {
        assert!(
            Path::new(SSHD).is_file(),
            "{SSHD} is missing: {INSTALL_HINT}"
        );
        crate::require_program("ssh", INSTALL_HINT);
        std::fs::create_dir_all("/run/sshd").unwrap();
        let dir = tempfile::tempdir().unwrap();
        let host_key = dir.path().join("ssh_host_ed25519_key");
        run(
            "ssh-keygen",
            &[
                "-q",
                "-t",
                "ed25519",
                "-N",
                "",
                "-f",
                host_key.to_str().unwrap(),
            ],
        );
        for _ in 0..5 {
            let port = TcpListener::bind("127.0.0.1:0")
                .unwrap()
                .local_addr()
                .unwrap()
                .port();
            let config = dir.path().join("sshd_config");
            let log = dir.path().join(format!("sshd-{port}.log"));
            std::fs::write(
                &config,
                format!(
                    "ListenAddress 127.0.0.1\nPort {port}\nHostKey {}\nPidFile none\nUsePAM no\n\
                     StrictModes yes\nPubkeyAuthentication yes\nPasswordAuthentication no\n\
                     KbdInteractiveAuthentication no\nAuthorizedKeysFile .ssh/authorized_keys\n\
                     LogLevel VERBOSE\nMaxStartups 100\n",
                    host_key.display()
                ),
            )
            .unwrap();
            let mut child = tokio::process::Command::new(SSHD)
                .args([
                    "-D",
                    "-f",
                    config.to_str().unwrap(),
                    "-E",
                    log.to_str().unwrap(),
                ])
                .stdin(Stdio::null())
                .kill_on_drop(true)
                .spawn()
                .unwrap_or_else(|e| panic!("cannot start sshd: {e}; {INSTALL_HINT}"));
            let listening = async {
                for _ in 0..200 {
                    if let Ok(Some(_)) = child.try_wait() {
                        return false;
                    }
                    if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                        return true;
                    }
                    tokio::time::sleep(Duration::from_millis(25)).await;
                }
                false
            }
            .await;
            if listening {
                return Self {
                    port,
                    log,
                    host_key_dir: dir.path().to_path_buf(),
                    child,
                    _dir: dir,
                };
            }
            let _ = child.kill().await;
        }
        panic!(
            "sshd did not start; see its log under {}",
            dir.path().display()
        );
    }

    fn ssh_command(&self, user: &str, key: &Path) -> tokio::process::Command {
        let mut command = tokio::process::Command::new("ssh");
        command.args([
            "-i",
            key.to_str().unwrap(),
            "-p",
            &self.port.to_string(),
            "-o",
            "BatchMode=yes",
            "-o",
            "IdentitiesOnly=yes",
            "-o",
            "StrictHostKeyChecking=no",
            "-o",
            "UserKnownHostsFile=/dev/null",
            "-o",
            "LogLevel=ERROR",
            "-o",
            "ConnectTimeout=10",
            &format!("{user}@127.0.0.1"),
        ]);
        command.stdin(Stdio::null());
        command
    }

    /// Runs `command` over ssh; returns whether the login worked and the command's output.
    pub async fn login(&self, user: &str, key: &Path, command: &str) -> (bool, String) {
        let out = self
            .ssh_command(user, key)
            .arg(command)
            .output()
            .await
            .unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).trim().to_owned(),
        )
    }

    /// Opens a session that stays until it is ended from outside.
    pub async fn open_session(&self, user: &str, key: &Path) -> Child {
        let mut child = self
            .ssh_command(user, key)
            .arg("echo ready; exec sleep 600")
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let mut lines = tokio::io::AsyncBufReadExt::lines(tokio::io::BufReader::new(stdout));
        let first = tokio::time::timeout(Duration::from_secs(15), lines.next_line())
            .await
            .expect("the session to open")
            .unwrap();
        assert_eq!(first.as_deref(), Some("ready"), "session did not open");
        child
    }

    /// Waits until an ssh client process exits (its session was ended).
    pub async fn wait_session_end(session: &mut Child, within: Duration) {
        let ended = tokio::time::timeout(within, session.wait()).await;
        assert!(
            ended.is_ok(),
            "the SSH session did not end within {within:?}"
        );
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// What any client may do before authenticating: send an SSH banner and a KEXINIT whose
    /// key-exchange name-list is `x`, newline, `line`, newline, `y`. sshd finds no common method
    /// and logs "Unable to negotiate … Their offer: " with the list as it came; into its `-E`
    /// file the newlines go unescaped, so `line` becomes a log line of its own. Returns once
    /// sshd hung up.
    pub async fn inject_kex_line(&self, line: &str) {
        use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt};
        let stream = tokio::net::TcpStream::connect(("127.0.0.1", self.port))
            .await
            .unwrap();
        let mut stream = tokio::io::BufReader::new(stream);
        stream.write_all(b"SSH-2.0-kwforge\r\n").await.unwrap();
        let mut banner = String::new();
        stream.read_line(&mut banner).await.unwrap();
        assert!(banner.starts_with("SSH-2.0-"), "{banner:?}");
        let name_list = |text: &[u8]| {
            let mut out = u32::try_from(text.len()).unwrap().to_be_bytes().to_vec();
            out.extend_from_slice(text);
            out
        };
        let mut payload = vec![20u8]; // SSH_MSG_KEXINIT, then the cookie
        payload.extend_from_slice(&[7u8; 16]);
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
        payload.extend_from_slice(&[0u8; 5]); // first_kex_packet_follows, reserved
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
        stream.write_all(&packet).await.unwrap();
        let mut sink = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut sink)).await;
    }

    pub async fn stop(&mut self) {
        let _ = self.child.kill().await;
    }
}
