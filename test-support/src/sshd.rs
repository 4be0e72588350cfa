//! Debian's sshd on a free loopback port, writing a file log (`-E`), and `ssh` clients for it:
//! one-shot logins and sessions that stay open, both as blocking calls (the agent's tests) and
//! as async ones (the integration tests, whose control plane runs on the same runtime).

use std::fs;
use std::io::{BufRead, BufReader};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::poll::wait_for;
use crate::port::{free_port, preferred_or_free};
use crate::proc::Proc;
use crate::require::require;

pub const SSHD: &str = "/usr/sbin/sshd";
pub const SSH: &str = "/usr/bin/ssh";
const SSH_KEYGEN: &str = "/usr/bin/ssh-keygen";

/// How [`Sshd::start_with`] runs sshd. The default is the tests': LogLevel VERBOSE (what the
/// login audit reads), any free port, the log in sshd's directory, nothing more in its config.
#[derive(Debug, Clone)]
pub struct SshdOptions {
    pub log_level: String,
    /// Listen here while it is free (else on a free port); any free port when `None`.
    pub preferred_port: Option<u16>,
    /// The log (`-E`); `sshd.log` in sshd's directory when `None`.
    pub log: Option<PathBuf>,
    /// More `sshd_config` lines (the quickstart's `AllowUsers`, `PermitRootLogin no`).
    pub extra_config: Vec<String>,
    /// Where sshd reads its certificate trust and revocation files, as the package's drop-in
    /// names them (`TrustedUserCAKeys`, `AuthorizedPrincipalsFile`, `RevokedKeys`) and the agent
    /// writes them; a directory of its own under [`SECURE_BASE`] when `None`.
    pub files_dir: Option<PathBuf>,
}

/// Where each sshd's certificate files go by default: a path whose every directory is root's
/// and not writable by others, as `StrictModes` wants for an `AuthorizedPrincipalsFile` (one
/// under `/tmp` is refused).
pub const SECURE_BASE: &str = "/run/keyward-tests";

impl Default for SshdOptions {
    fn default() -> Self {
        Self {
            log_level: "VERBOSE".to_owned(),
            preferred_port: None,
            log: None,
            extra_config: Vec::new(),
            files_dir: None,
        }
    }
}

/// A private sshd on 127.0.0.1: public keys only, no PAM, `StrictModes yes`, its log in
/// [`Sshd::log`] (LogLevel VERBOSE unless started with another). Killed on drop.
#[derive(Debug)]
pub struct Sshd {
    pub port: u16,
    pub log: PathBuf,
    /// Holds `ssh_host_ed25519_key` and `.pub`, the host key sshd offers.
    pub host_key_dir: PathBuf,
    /// sshd's certificate trust and revocation files (an agent's `sshd_dir`): made with an
    /// empty revocation list (sshd refuses every key while it is missing) and no trusted CA.
    pub files_dir: PathBuf,
    proc: Proc,
    _dir: Option<tempfile::TempDir>,
    _files: Option<tempfile::TempDir>,
}

impl Sshd {
    /// sshd with its config, host key and log (`sshd.log`) in `dir`, LogLevel VERBOSE (what
    /// the login audit reads).
    pub fn start(dir: &Path) -> Sshd {
        Self::start_with_log_level(dir, "VERBOSE")
    }

    /// sshd with its files in a temporary directory of its own.
    pub fn start_temp() -> Sshd {
        let dir = tempfile::tempdir().unwrap();
        let mut sshd = Self::start(dir.path());
        sshd._dir = Some(dir);
        sshd
    }

    /// [`Sshd::start_temp`] for async tests, off the runtime's threads.
    pub async fn start_async() -> Sshd {
        tokio::task::spawn_blocking(Self::start_temp).await.unwrap()
    }

    /// [`Sshd::start_with`] in a temporary directory of its own, off the runtime's threads.
    pub async fn start_async_with(options: SshdOptions) -> Sshd {
        tokio::task::spawn_blocking(move || {
            let dir = tempfile::tempdir().unwrap();
            let mut sshd = Self::start_with(dir.path(), &options);
            sshd._dir = Some(dir);
            sshd
        })
        .await
        .unwrap()
    }

    /// sshd with `LogLevel level` (e.g. `DEBUG1`, which says why a key was refused).
    pub fn start_with_log_level(dir: &Path, level: &str) -> Sshd {
        Self::start_with(
            dir,
            &SshdOptions {
                log_level: level.to_owned(),
                ..SshdOptions::default()
            },
        )
    }

    /// sshd as `options` say, its config and host key in `dir` (a host key already there is
    /// kept: the quickstart's, across runs). Returns once its log says it listens (bounded),
    /// trying another free port if one was taken in between. It is not probed with a
    /// connection: that would be a login event (closed before authentication) in the log under
    /// test.
    pub fn start_with(dir: &Path, options: &SshdOptions) -> Sshd {
        require(SSHD, "openssh-server");
        require(SSH, "openssh-client");
        require(SSH_KEYGEN, "openssh-client");
        // sshd insists on its privilege separation directory (the package makes it at boot).
        fs::create_dir_all("/run/sshd").unwrap();
        let host_key = dir.join("ssh_host_ed25519_key");
        if !host_key.is_file() {
            let out = Command::new(SSH_KEYGEN)
                .args(["-q", "-t", "ed25519", "-N", "", "-f"])
                .arg(&host_key)
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "ssh-keygen failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        let (files_dir, files_temp) = match &options.files_dir {
            Some(path) => (path.clone(), None),
            None => {
                fs::create_dir_all(SECURE_BASE).unwrap();
                let temp = tempfile::Builder::new()
                    .prefix("sshd-files-")
                    .tempdir_in(SECURE_BASE)
                    .unwrap();
                (temp.path().to_path_buf(), Some(temp))
            }
        };
        make_files_dir(&files_dir);
        let config = dir.join("sshd_config");
        fs::write(
            &config,
            format!(
                "ListenAddress 127.0.0.1\nHostKey {}\nPidFile none\nUsePAM no\nStrictModes yes\n\
                 PubkeyAuthentication yes\nPasswordAuthentication no\n\
                 KbdInteractiveAuthentication no\nAuthorizedKeysFile .ssh/authorized_keys\n\
                 LogLevel {}\nMaxStartups 100\n\
                 TrustedUserCAKeys {files}/trusted_user_ca_keys\n\
                 AuthorizedPrincipalsFile {files}/principals/%u\n\
                 RevokedKeys {files}/revoked_keys\n{}",
                host_key.display(),
                options.log_level,
                options
                    .extra_config
                    .iter()
                    .map(|line| format!("{line}\n"))
                    .collect::<String>(),
                files = files_dir.display(),
            ),
        )
        .unwrap();
        let log = options.log.clone().unwrap_or_else(|| dir.join("sshd.log"));
        for attempt in 0..5 {
            let port = match options.preferred_port {
                Some(preferred) if attempt == 0 => preferred_or_free(preferred),
                _ => free_port(),
            };
            let _ = fs::remove_file(&log);
            let child = Command::new(SSHD)
                .args(["-D", "-f"])
                .arg(&config)
                .args(["-p", &port.to_string(), "-E"])
                .arg(&log)
                .stdin(Stdio::null())
                .spawn()
                .unwrap_or_else(|e| panic!("cannot start {SSHD}: {e}"));
            let mut sshd = Sshd {
                port,
                log: log.clone(),
                host_key_dir: dir.to_path_buf(),
                files_dir: files_dir.clone(),
                proc: Proc(child),
                _dir: None,
                _files: None,
            };
            let listening = wait_for(Duration::from_secs(10), "sshd to listen", || {
                if !sshd.running() {
                    return Some(false);
                }
                sshd.log_text()
                    .contains("Server listening on ")
                    .then_some(true)
            });
            if listening {
                sshd._files = files_temp;
                return sshd;
            }
        }
        panic!(
            "sshd did not start; its last log:\n{}",
            fs::read_to_string(&log).unwrap_or_default()
        );
    }

    /// The listening sshd's process id.
    pub fn pid(&self) -> u32 {
        self.proc.0.id()
    }

    /// Whether the listening sshd still runs.
    pub fn running(&mut self) -> bool {
        self.proc.running()
    }

    pub fn log_text(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// `ssh -i key user@127.0.0.1 command...`, no interaction, no known_hosts.
    pub fn ssh(&self, key: &Path, user: &(impl AsRef<str> + ?Sized), command: &[&str]) -> Command {
        let mut cmd = Command::new(SSH);
        cmd.args(self.ssh_args(key, user.as_ref()))
            .args(command)
            .stdin(Stdio::null());
        cmd
    }

    /// `ssh -tt -i key user@127.0.0.1`: an interactive session on a terminal, even with stdin a
    /// pipe (what it types).
    pub fn ssh_terminal(&self, key: &Path, user: &(impl AsRef<str> + ?Sized)) -> Command {
        let mut cmd = Command::new(SSH);
        cmd.arg("-tt").args(self.ssh_args(key, user.as_ref()));
        cmd
    }

    /// Logs in on a terminal as a person does: waits for the shell's prompt (`$ `), types `line`
    /// and Enter, waits until `expect` shows, then types `exit`; returns all the terminal showed.
    /// (What is typed before the session set its terminal up can be discarded, as on any
    /// terminal that changes mode: so it waits for the prompt.)
    pub fn type_at_prompt(
        &self,
        key: &Path,
        user: &(impl AsRef<str> + ?Sized),
        line: &str,
        expect: &str,
    ) -> String {
        self.type_at_prompt_holding(key, user, line, expect, || {})
    }

    /// [`Self::type_at_prompt`], with `before_exit` run while the session is still open, once
    /// `expect` is shown (e.g. to wait until the login is seen while its connection is live).
    pub fn type_at_prompt_holding(
        &self,
        key: &Path,
        user: &(impl AsRef<str> + ?Sized),
        line: &str,
        expect: &str,
        before_exit: impl FnOnce(),
    ) -> String {
        use std::io::{Read, Write};
        use std::sync::{Arc, Mutex};
        let mut ssh = self
            .ssh_terminal(key, user)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let shown = Arc::new(Mutex::new(Vec::<u8>::new()));
        let mut stdout = ssh.stdout.take().unwrap();
        let reader = {
            let shown = Arc::clone(&shown);
            std::thread::spawn(move || {
                let mut buf = [0u8; 4096];
                while let Ok(n) = stdout.read(&mut buf) {
                    if n == 0 {
                        break;
                    }
                    shown.lock().unwrap().extend_from_slice(&buf[..n]);
                }
            })
        };
        let text = || String::from_utf8_lossy(&shown.lock().unwrap()).into_owned();
        let mut stdin = ssh.stdin.take().unwrap();
        let wait = |what: &str| {
            wait_for(
                Duration::from_secs(15),
                &format!("{what:?} on the terminal"),
                || text().contains(what).then_some(()),
            )
        };
        wait("$ ");
        stdin.write_all(format!("{line}\n").as_bytes()).unwrap();
        wait(expect);
        before_exit();
        stdin.write_all(b"exit\n").unwrap();
        drop(stdin);
        let status = ssh.wait().unwrap();
        reader.join().unwrap();
        assert!(status.success(), "the session failed: {}", text());
        text()
    }

    /// `scp -i key from user@127.0.0.1:to` (OpenSSH's scp speaks sftp: the server needs a
    /// `Subsystem sftp` line), no interaction, no known_hosts.
    pub fn scp(
        &self,
        key: &Path,
        user: &(impl AsRef<str> + ?Sized),
        from: &Path,
        to: &str,
    ) -> Command {
        let mut args = self.ssh_args(key, user.as_ref());
        let at = args.len() - 1;
        let destination = format!("{}:{to}", args.remove(at));
        // ssh's -p is scp's -P.
        for arg in &mut args {
            if arg == "-p" {
                *arg = "-P".to_owned();
            }
        }
        let mut cmd = Command::new("/usr/bin/scp");
        cmd.args(args)
            .arg(from)
            .arg(destination)
            .stdin(Stdio::null());
        cmd
    }

    fn ssh_args(&self, key: &Path, user: &str) -> Vec<String> {
        self.ssh_args_in(key, user, "BatchMode=yes")
    }

    /// `batch`: `BatchMode=yes` (ssh asks nothing) or `BatchMode=no` (it may ask for a key's
    /// passphrase).
    fn ssh_args_in(&self, key: &Path, user: &str, batch: &str) -> Vec<String> {
        [
            "-F",
            "/dev/null",
            "-i",
            key.to_str().expect("a utf-8 key path"),
            "-p",
            &self.port.to_string(),
            "-o",
            batch,
            "-o",
            "PasswordAuthentication=no",
            "-o",
            "KbdInteractiveAuthentication=no",
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
        ]
        .map(str::to_owned)
        .to_vec()
    }

    /// A login that runs `true`; whether it worked. Returns once sshd logged the session's end
    /// (or, for a refused login, the connection's close), so the log is complete.
    pub fn login(&self, key: &Path, user: &(impl AsRef<str> + ?Sized)) -> bool {
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
    pub fn open_session(&self, key: &Path, user: &(impl AsRef<str> + ?Sized)) -> Proc {
        let child = self
            .ssh(key, user, &["echo ready; exec sleep 600"])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        once_ready(child, || format!("sshd log:\n{}", self.log_text()))
    }

    /// Runs `command` over ssh as `user` (async); whether the login worked and the command's
    /// output.
    pub async fn login_async(
        &self,
        key: &Path,
        user: &(impl AsRef<str> + ?Sized),
        command: &str,
    ) -> (bool, String) {
        let mut ssh = tokio::process::Command::new(SSH);
        ssh.args(self.ssh_args(key, user.as_ref())).arg(command);
        login_output(ssh).await
    }

    /// [`Sshd::login_async`] with a passphrase-protected key, as a desktop user logs in: ssh
    /// (not in batch mode) asks `askpass` for the key's passphrase, with no terminal
    /// (`SSH_ASKPASS_REQUIRE=force`, `DISPLAY` set). Only the key's passphrase can be asked:
    /// password and keyboard-interactive authentication are off.
    pub async fn login_with_askpass_async(
        &self,
        key: &Path,
        user: &(impl AsRef<str> + ?Sized),
        command: &str,
        askpass: &Path,
    ) -> (bool, String) {
        let mut ssh = tokio::process::Command::new(SSH);
        ssh.args(self.ssh_args_in(key, user.as_ref(), "BatchMode=no"))
            .arg(command)
            .env("SSH_ASKPASS", askpass)
            .env("SSH_ASKPASS_REQUIRE", "force")
            .env("DISPLAY", ":0");
        login_output(ssh).await
    }

    /// [`Sshd::open_session`] for async tests: the ssh client (killed on drop) once the remote
    /// command runs.
    pub async fn open_session_async(
        &self,
        key: &Path,
        user: &(impl AsRef<str> + ?Sized),
    ) -> tokio::process::Child {
        let mut child = tokio::process::Command::new(SSH)
            .args(self.ssh_args(key, user.as_ref()))
            .arg("echo ready; exec sleep 600")
            .stdin(Stdio::null())
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
        assert_eq!(
            first.as_deref(),
            Some("ready"),
            "the session did not open; sshd log:\n{}",
            self.log_text()
        );
        child
    }

    /// Waits until an async ssh client exits (its session was ended), at most `within`.
    pub async fn wait_session_end(session: &mut tokio::process::Child, within: Duration) {
        let ended = tokio::time::timeout(within, session.wait()).await;
        assert!(
            ended.is_ok(),
            "the SSH session did not end within {within:?}"
        );
    }

    /// Forges `line` into this sshd's log ([`crate::kex::inject_kex_line`]).
    pub fn inject_kex_line(&self, line: &str) {
        crate::kex::inject_kex_line(self.port, line);
    }

    /// [`Sshd::inject_kex_line`] for async tests, off the runtime's threads.
    pub async fn inject_kex_line_async(&self, line: &str) {
        let (port, line) = (self.port, line.to_owned());
        tokio::task::spawn_blocking(move || crate::kex::inject_kex_line(port, &line))
            .await
            .unwrap();
    }
}

/// `child`, an ssh client with its stdout piped whose remote command prints `ready` first, once
/// it has (at most 15 s; else the test fails with what `context` says).
pub fn once_ready(mut child: Child, context: impl FnOnce() -> String) -> Proc {
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
        "the session did not open; {}",
        context()
    );
    Proc(child)
}

/// Makes `dir` (0755) with `principals/`, and an empty `revoked_keys` and `trusted_user_ca_keys`
/// unless they exist: what the agent's package makes before its sshd drop-in is installed.
fn make_files_dir(dir: &Path) {
    fs::create_dir_all(dir.join("principals")).unwrap();
    for d in [dir.to_path_buf(), dir.join("principals")] {
        fs::set_permissions(&d, fs::Permissions::from_mode(0o755)).unwrap();
    }
    for name in ["revoked_keys", "trusted_user_ca_keys"] {
        let file = dir.join(name);
        if !file.exists() {
            fs::write(&file, b"").unwrap();
            fs::set_permissions(&file, fs::Permissions::from_mode(0o644)).unwrap();
        }
    }
}

/// A private key on disk, 0600, for `ssh -i`, in a temporary directory of its own.
#[derive(Debug)]
pub struct KeyFile {
    pub path: PathBuf,
    _dir: tempfile::TempDir,
}

impl KeyFile {
    pub fn write(private_key: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let path = write_private_key(dir.path(), "id", private_key);
        Self { path, _dir: dir }
    }
}

/// Runs an ssh login with no input: whether it worked and its (trimmed) output.
async fn login_output(mut ssh: tokio::process::Command) -> (bool, String) {
    let out = ssh.stdin(Stdio::null()).output().await.unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).trim().to_owned(),
    )
}

/// Writes a private key (OpenSSH format) 0600 as `dir/name`, for `ssh -i`.
pub fn write_private_key(dir: &Path, name: &str, private_key: &str) -> PathBuf {
    let path = dir.join(name);
    fs::write(&path, private_key).unwrap();
    fs::set_permissions(&path, fs::Permissions::from_mode(0o600)).unwrap();
    path
}
