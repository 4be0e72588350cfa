//! A PostgreSQL server of the test's own (Debian's `initdb` and `pg_ctl`, in a temporary
//! directory, on a loopback port), for tests that stop and start the database itself: the shared
//! server at 127.0.0.1:5432 must stay up for every other test.

use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::Command;

use nix::unistd::{User, chown};

const INSTALL_HINT: &str = "Debian's PostgreSQL server binaries are needed under \
     /usr/lib/postgresql/VERSION/bin (`apt-get install postgresql`; `make test-deps` installs it)";

/// A server the test owns: started by [`PgServer::start`], stopped when dropped.
#[derive(Debug)]
pub struct PgServer {
    bin: PathBuf,
    data: PathBuf,
    pub port: u16,
    user: User,
    _dir: tempfile::TempDir,
}

/// The newest installed version's binaries.
fn server_bin() -> PathBuf {
    let versions = std::fs::read_dir("/usr/lib/postgresql")
        .unwrap_or_else(|e| panic!("no /usr/lib/postgresql ({e}): {INSTALL_HINT}"));
    let mut found: Vec<(u32, PathBuf)> = versions
        .filter_map(Result::ok)
        .filter_map(|entry| {
            let version = entry.file_name().to_str()?.parse().ok()?;
            let bin = entry.path().join("bin");
            bin.join("pg_ctl").is_file().then_some((version, bin))
        })
        .collect();
    found.sort();
    found
        .pop()
        .unwrap_or_else(|| panic!("no pg_ctl under /usr/lib/postgresql: {INSTALL_HINT}"))
        .1
}

impl PgServer {
    /// Initialises a cluster (trust authentication, owner `postgres`) and starts it.
    pub async fn start() -> Self {
        let bin = server_bin();
        let user = User::from_name("postgres")
            .unwrap()
            .unwrap_or_else(|| panic!("no postgres user: {INSTALL_HINT}"));
        // The server refuses to run as root: the directory is the postgres user's.
        let dir = tempfile::tempdir().unwrap();
        chown(dir.path(), Some(user.uid), Some(user.gid)).unwrap();
        let data = dir.path().join("data");
        let mut server = Self {
            bin,
            data,
            port: 0,
            user,
            _dir: dir,
        };
        server
            .pg(
                "initdb",
                &["--auth=trust", "--username=postgres", "--no-sync"],
            )
            .await;
        // A port another process takes between the pick and the bind makes the start fail:
        // pick again.
        for attempt in 1..=3 {
            server.port = crate::free_port();
            if server.try_start().await {
                return server;
            }
            assert!(attempt < 3, "{}", server.log());
        }
        unreachable!()
    }

    /// A URL of its `postgres` database.
    pub fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }

    /// Stops it as a crash would (`immediate`: no checkpoint, recovery from the WAL at the next
    /// start), then starts it again on the same port.
    pub async fn crash_and_restart(&self) {
        const RECOVERY: &str = "automatic recovery in progress";
        let recoveries = self.log().matches(RECOVERY).count();
        self.pg("pg_ctl", &["stop", "--mode=immediate", "--wait"])
            .await;
        assert!(self.try_start().await, "{}", self.log());
        assert_eq!(
            self.log().matches(RECOVERY).count(),
            recoveries + 1,
            "the server recovered from its WAL: {}",
            self.log()
        );
    }

    async fn try_start(&self) -> bool {
        let options = format!(
            "-c listen_addresses=127.0.0.1 -c port={} -c unix_socket_directories={}",
            self.port,
            self.data.display()
        );
        let log = self.log_file();
        let (ok, _) = self
            .run(
                "pg_ctl",
                &[
                    "start",
                    "--wait",
                    "--timeout=60",
                    "-o",
                    &options,
                    "-l",
                    &log.to_string_lossy(),
                ],
            )
            .await;
        ok
    }

    fn log_file(&self) -> PathBuf {
        self.data.with_file_name("server.log")
    }

    /// The server's log, for a failure's message.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_file()).unwrap_or_default()
    }

    /// Runs one of the server's programs as the postgres user on the data directory; panics
    /// with its output when it fails.
    async fn pg(&self, program: &str, args: &[&str]) {
        let (ok, output) = self.run(program, args).await;
        assert!(ok, "{program} {args:?} failed: {output}");
    }

    async fn run(&self, program: &str, args: &[&str]) -> (bool, String) {
        let mut command = tokio::process::Command::new(self.bin.join(program));
        command
            .arg("-D")
            .arg(&self.data)
            .args(args)
            .uid(self.user.uid.as_raw())
            .gid(self.user.gid.as_raw())
            .current_dir(data_parent(&self.data))
            .stdin(std::process::Stdio::null());
        let output = command.output().await.unwrap();
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        (output.status.success(), text)
    }
}

fn data_parent(data: &Path) -> &Path {
    data.parent().unwrap_or(data)
}

impl Drop for PgServer {
    fn drop(&mut self) {
        let _ = Command::new(self.bin.join("pg_ctl"))
            .arg("-D")
            .arg(&self.data)
            .args(["stop", "--mode=immediate", "--wait"])
            .uid(self.user.uid.as_raw())
            .gid(self.user.gid.as_raw())
            .current_dir(data_parent(&self.data))
            .output();
    }
}
