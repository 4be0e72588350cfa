//! The quickstart's deployment (`make quickstart`, the `keyward-demo` binary), built from the
//! same harness as the end-to-end tests ([`crate::Deployment`]) instead of a copy of it in shell.
//!
//! What differs from a test is what a person trying keyward needs: the README's ports when they
//! are free (OpenBao 8200, else 18200; the API 8080, the agents 8444, sshd 2222, else free ones),
//! a random OpenBao root token instead of the tests' fixed one, fixed demo users that stay until
//! `make clean-demo`, and every file in `.run/` where the printed commands and
//! `scripts/quickstart-stop` find it. Files with a secret are created 0600; the caller's umask
//! (077, `scripts/quickstart`) keeps the others private too.
//!
//! Not as root, only the control plane part runs: the agent writes other users' files.

use std::fmt::Write as _;
use std::fs;
use std::io::Write as _;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, bail};
use keyward_common::UnixUser;
use keyward_test_support::{SshdOptions, port_is_free, preferred_or_free, useradd};
use reqwest::Method;

use crate::agent::AgentFiles;
use crate::control_plane::Options;
use crate::openbao::{AUDIT_HEAD_KEY, DevSettings};
use crate::{Agent, ControlPlane, OpenBao, Sshd, eventually};

/// The demo tenant.
pub const TENANT: &str = "demo";
/// Its user on the VPS (this machine), and the platform's admin user there.
pub const TENANT_USER: &str = "kwdemo";
pub const ADMIN_USER: &str = "kwdemoadmin";

/// Ports the README promises, each used while free.
const BAO_PORTS: [u16; 2] = [8200, 18200];
const API_PORT: u16 = 8080;
const AGENT_API_PORT: u16 = 8444;
const SSH_PORT: u16 = 2222;
/// The SSH port the tenant is created with when no sshd runs (not root).
const DEFAULT_SSH_PORT: u16 = 22;

/// One progress line of the quickstart (the script shows them while it waits).
pub fn say(line: &str) {
    println!("[quickstart] {line}");
}

/// What runs: OpenBao, the control plane (in this process) and, as root, the demo VPS.
#[derive(Debug)]
pub struct Demo {
    bao: OpenBao,
    cp: ControlPlane,
    vps: Option<Vps>,
}

/// This machine as the tenant's VPS: sshd on loopback and the enrolled agent.
#[derive(Debug)]
struct Vps {
    sshd: Sshd,
    agent: Agent,
}

impl Demo {
    /// Starts everything with its files in `run` (`.run/`, made by the caller), then writes
    /// `run/quickstart.env`, the values the script prints, last: its presence means ready.
    pub async fn start(run: &Path) -> anyhow::Result<Self> {
        let as_root = nix::unistd::geteuid().is_root();
        if !as_root {
            say(&format!(
                "not root: running the control plane only. The agent part of the demo (sshd on \
                 loopback, the users {TENANT_USER} and {ADMIN_USER}, keyward-agent writing their \
                 authorized_keys) needs root: the agent writes other users' files. Run 'make \
                 quickstart' as root for the whole demo."
            ));
        }
        let bao = start_openbao(run).await?;
        let cp = start_control_plane(run, &bao).await?;
        write_secret(&run.join("admin-token"), &cp.admin_token)?;

        let sshd = if as_root {
            for user in [ADMIN_USER, TENANT_USER] {
                demo_user(run, user)?;
            }
            Some(start_sshd(run).await?)
        } else {
            None
        };
        let ssh_port = sshd.as_ref().map_or(DEFAULT_SSH_PORT, |sshd| sshd.port);
        cp.onboard_tenant(TENANT, ssh_port, TENANT_USER, ADMIN_USER)
            .await;
        say(&format!(
            "created tenant {TENANT} (users {TENANT_USER} and {ADMIN_USER}; an admin and a tenant \
             RSA-4096 key pair in Vault at vps/{TENANT}/...)"
        ));
        let tenant_token = cp.labelled_tenant_token(TENANT, "quickstart").await;
        write_secret(&run.join("tenant-token"), &tenant_token)?;
        say(&format!(
            "issued a tenant token for {TENANT} (.run/tenant-token)"
        ));

        let vps = match sshd {
            Some(sshd) => {
                let agent = start_agent(run, &cp, &sshd, &tenant_token).await?;
                Some(Vps { sshd, agent })
            }
            None => None,
        };
        let demo = Self { bao, cp, vps };
        demo.write_ready(run)?;
        Ok(demo)
    }

    /// `run/quickstart.env`: the addresses and ids the printed commands use, as shell variables.
    fn write_ready(&self, run: &Path) -> anyhow::Result<()> {
        let server = self.cp.server();
        let mut env = String::new();
        writeln!(env, "API={}", self.cp.url)?;
        writeln!(env, "AGENT_API_PORT={}", server.agent_addr.port())?;
        writeln!(env, "VAULT_URL={}", self.bao.addr)?;
        match &self.vps {
            Some(vps) => {
                writeln!(env, "AGENT_DEMO=1")?;
                writeln!(env, "SSH_PORT={}", vps.sshd.port)?;
                writeln!(env, "HOST_ID={}", vps.agent.host_id)?;
            }
            None => writeln!(env, "AGENT_DEMO=0\nSSH_PORT={DEFAULT_SSH_PORT}\nHOST_ID=")?,
        }
        // Written whole under another name, then renamed: the script never reads half of it.
        let partial = run.join("quickstart.env.partial");
        fs::write(&partial, env).context("writing .run/quickstart.env")?;
        fs::rename(&partial, run.join("quickstart.env")).context("writing .run/quickstart.env")
    }

    /// Stops the agent, sshd, the control plane and OpenBao, in that order. The demo users stay.
    pub async fn stop(mut self) {
        if let Some(mut vps) = self.vps.take() {
            vps.agent.kill().await;
            drop(vps.sshd);
        }
        self.cp.stop().await;
        self.bao.stop().await;
    }
}

/// The OpenBao dev server on 8200 (18200 when that is taken) with a fresh random root token in
/// `run/bao-root-token`, its `HOME` in `run/bao-home` and its log in `run/bao.log`.
async fn start_openbao(run: &Path) -> anyhow::Result<OpenBao> {
    let Some(port) = BAO_PORTS.into_iter().find(|port| port_is_free(*port)) else {
        bail!(
            "127.0.0.1:8200 and 127.0.0.1:18200 are both in use; stop what listens there (ss -ltnp)"
        );
    };
    let random: String = rand::random::<[u8; 32]>()
        .iter()
        .map(|byte| format!("{byte:02x}"))
        .collect();
    let root_token = format!("kwqs-{random}");
    write_secret(&run.join("bao-root-token"), &root_token)?;
    let home = private_dir(&run.join("bao-home"))?;
    let bao = OpenBao::start_dev(DevSettings {
        port,
        root_token: &root_token,
        home: &home,
        log: &run.join("bao.log"),
    })
    .await;
    write_pid(run, "bao", bao.pid())?;
    bao.enable_audit_head_key().await;
    say(&format!(
        "OpenBao dev server on {} (pid {}, log .run/bao.log), KV v2 at vps/, the audit head's \
         key at transit/keys/{AUDIT_HEAD_KEY}",
        bao.addr,
        bao.pid().unwrap_or_default()
    ));
    Ok(bao)
}

/// keyward-server in this process (its log is this process's standard error, `.run/server.log`),
/// its state in a fresh `run/state`: the dev Vault starts empty, so the state that pointed at the
/// previous one goes. `run/server.toml` records the configuration for the offline tools
/// (`keyward-server --config .run/server.toml audit verify`).
async fn start_control_plane(run: &Path, bao: &OpenBao) -> anyhow::Result<ControlPlane> {
    let state_dir = run.join("state");
    if state_dir.exists() {
        fs::remove_dir_all(&state_dir).context("removing the previous .run/state")?;
    }
    let listen = loopback(port_for(API_PORT, "the API"));
    let agent_listen = loopback(port_for(AGENT_API_PORT, "the agent API"));
    fs::write(
        run.join("server.toml"),
        format!(
            "# Written by keyward-demo (make quickstart): the demo's configuration on loopback.\n\
             [server]\nlisten = \"{listen}\"\nstate_dir = \"{}\"\n\n\
             [vault]\naddress = \"{}\"\nmount = \"vps\"\ntoken_file = \"{}\"\n\n\
             [agent_api]\nlisten = \"{agent_listen}\"\n\n\
             [audit_signing]\nkey = \"{AUDIT_HEAD_KEY}\"\n",
            state_dir.display(),
            bao.addr,
            run.join("bao-root-token").display()
        ),
    )
    .context("writing .run/server.toml")?;
    let cp = ControlPlane::start_with(
        bao,
        Options {
            listen,
            agent_listen,
            state_dir: Some(state_dir),
            configure: Some(|config| {
                config.audit_signing.key = Some(AUDIT_HEAD_KEY.into());
            }),
            ..Options::default()
        },
    )
    .await;
    say(&format!(
        "keyward-server ready on {}, agents on https://{} (pid {}, log .run/server.log)",
        cp.url,
        cp.server().agent_addr,
        std::process::id()
    ));
    Ok(cp)
}

/// The demo user `name` with its home in `run/homes`: made when missing (and recorded in
/// `run/created-users`, which `make clean-demo` reads), reused when an earlier quickstart made
/// it. A user of that name that the quickstart did not make is never touched.
fn demo_user(run: &Path, name: &str) -> anyhow::Result<()> {
    let homes = run.join("homes");
    fs::create_dir_all(&homes)?;
    // sshd reads authorized_keys as the user, who must pass through to their home.
    fs::set_permissions(&homes, fs::Permissions::from_mode(0o755))?;
    let home = homes.join(name);
    let created_users = run.join("created-users");
    let recorded = fs::read_to_string(&created_users).unwrap_or_default();
    let record = || -> anyhow::Result<()> {
        if !recorded.lines().any(|line| line == name) {
            let mut file = fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&created_users)?;
            writeln!(file, "{name}")?;
        }
        Ok(())
    };
    match nix::unistd::User::from_name(name).context("reading the user database")? {
        Some(user) if user.dir != home => bail!(
            "a user {name} exists that the quickstart did not create (home {}); the demo will \
             not touch it: remove it or run the demo elsewhere",
            user.dir.display()
        ),
        Some(user) => {
            record()?;
            if home.is_dir() {
                say(&format!(
                    "user {name}: exists (made by an earlier quickstart)"
                ));
            } else {
                fs::DirBuilder::new().mode(0o700).create(&home)?;
                nix::unistd::chown(&home, Some(user.uid), Some(user.gid))?;
                say(&format!("user {name}: home {} made again", home.display()));
            }
        }
        None => {
            useradd(name, &home);
            record()?;
            say(&format!(
                "user {name}: created, home {} (recorded in .run/created-users)",
                home.display()
            ));
        }
    }
    Ok(())
}

/// Debian's sshd on 2222 (or a free port) with its files in `run/sshd` (the host key is kept
/// across runs), its log in `run/sshd.log`, the two demo users only and no root login.
async fn start_sshd(run: &Path) -> anyhow::Result<Sshd> {
    let dir = private_dir(&run.join("sshd"))?;
    let options = SshdOptions {
        preferred_port: Some(SSH_PORT),
        log: Some(run.join("sshd.log")),
        extra_config: vec![
            "PermitRootLogin no".to_owned(),
            format!("AllowUsers {TENANT_USER} {ADMIN_USER}"),
        ],
        ..SshdOptions::default()
    };
    let sshd = tokio::task::spawn_blocking(move || Sshd::start_with(&dir, &options)).await?;
    if sshd.port != SSH_PORT {
        say(&format!(
            "127.0.0.1:{SSH_PORT} is in use; sshd listens on 127.0.0.1:{} instead",
            sshd.port
        ));
    }
    write_pid(run, "sshd", Some(sshd.pid()))?;
    say(&format!(
        "sshd listening on 127.0.0.1:{} (pid {}, log .run/sshd.log)",
        sshd.port,
        sshd.pid()
    ));
    Ok(sshd)
}

/// Whether this machine records sessions as keyward-agent's package sets it up: tlog's recorder
/// set-user-ID to its own user, and utmp (tlog records terminals only with it).
fn recorder_ready() -> bool {
    use std::os::unix::fs::MetadataExt;
    fs::metadata("/usr/bin/tlog-rec-session").is_ok_and(|m| m.mode() & 0o4000 != 0 && m.uid() != 0)
        && Path::new("/run/utmp").exists()
}

/// Registers the demo host, enrolls keyward-agent (`run/agent.toml`, a fresh `run/agent-state`:
/// a new dev Vault means a new agent CA), runs it (log `run/agent.log`), waits until it applied
/// the desired state, and writes the host key it reported to `run/known_hosts`.
async fn start_agent(
    run: &Path,
    cp: &ControlPlane,
    sshd: &Sshd,
    tenant_token: &str,
) -> anyhow::Result<Agent> {
    let files = AgentFiles {
        config: run.join("agent.toml"),
        state_dir: run.join("agent-state"),
        log: run.join("agent.log"),
    };
    if files.state_dir.exists() {
        fs::remove_dir_all(&files.state_dir).context("removing the previous .run/agent-state")?;
    }
    // A fresh log: the one of an earlier run belongs to a host that is gone.
    let _ = fs::remove_file(&files.log);
    let admin: UnixUser = ADMIN_USER.parse()?;
    let tenant_user: UnixUser = TENANT_USER.parse()?;
    let (mut agent, _) = Agent::enroll_with(cp, TENANT, &admin, &tenant_user, sshd, files).await;
    fs::write(run.join("host-id"), format!("{}\n", agent.host_id))?;
    say(&format!(
        "registered host {} for tenant {TENANT} and enrolled keyward-agent",
        agent.host_id
    ));
    if recorder_ready() {
        agent.record_sessions();
        say(
            "session recording on: the admin user's sessions run under tlog (as keyward-agent's \
             package sets it up) and reach the tenant's Recordings",
        );
    } else {
        say(
            "session recording off: tlog-rec-session is not set-user-ID to _tlog (make \
             quickstart as root sets it up, as keyward-agent's package does)",
        );
    }
    agent.start();
    write_pid(run, "agent", agent.pid())?;
    say(&format!(
        "keyward-agent running (pid {}, log .run/agent.log, state .run/agent-state)",
        agent.pid().unwrap_or_default()
    ));
    agent.wait_in_sync(cp).await;
    say(&format!(
        "host {}: connected, in_sync: the agent wrote the authorized_keys of {ADMIN_USER} and \
         {TENANT_USER}",
        agent.host_id
    ));
    // The host key the agent reported, as a known_hosts line, so the first ssh login is verified.
    let known_hosts = eventually(
        "the host key the agent reported in ssh-credentials",
        Duration::from_secs(30),
        || async {
            let reply = cp.tenant_call(tenant_token, Method::GET, "").await;
            let lines: Vec<String> = reply.json()["knownHosts"]
                .as_array()?
                .iter()
                .filter_map(|line| line.as_str().map(str::to_owned))
                .collect();
            (!lines.is_empty()).then(|| lines.join("\n") + "\n")
        },
    )
    .await;
    fs::write(run.join("known_hosts"), known_hosts)?;
    say("wrote the knownHosts of ssh-credentials to .run/known_hosts");
    Ok(agent)
}

/// `preferred` while it is free, else a free port, saying so.
fn port_for(preferred: u16, what: &str) -> u16 {
    let port = preferred_or_free(preferred);
    if port != preferred {
        say(&format!(
            "127.0.0.1:{preferred} is in use; {what} listens on 127.0.0.1:{port} instead"
        ));
    }
    port
}

fn loopback(port: u16) -> std::net::SocketAddr {
    (std::net::Ipv4Addr::LOCALHOST, port).into()
}

/// Writes `secret` to `path` with mode 0600, created that way (never wider, even for an instant).
fn write_secret(path: &Path, secret: &str) -> anyhow::Result<()> {
    let _ = fs::remove_file(path);
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("writing {}", path.display()))?;
    writeln!(file, "{secret}")?;
    Ok(())
}

/// A directory only its owner (root) enters, made if missing.
fn private_dir(path: &Path) -> anyhow::Result<PathBuf> {
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(path)
        .with_context(|| format!("making {}", path.display()))?;
    fs::set_permissions(path, fs::Permissions::from_mode(0o700))?;
    Ok(path.to_path_buf())
}

/// `run/{name}.pid`, which `scripts/quickstart-stop` reads.
fn write_pid(run: &Path, name: &str, pid: Option<u32>) -> anyhow::Result<()> {
    let pid = pid.with_context(|| format!("{name} is not running"))?;
    fs::write(run.join(format!("{name}.pid")), format!("{pid}\n"))
        .with_context(|| format!("writing .run/{name}.pid"))
}

/// SIGTERM (`make stop`, `make cluster-stop`) or SIGINT.
pub async fn stop_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let Ok(mut term) = signal(SignalKind::terminate()) else {
        return std::future::pending().await;
    };
    tokio::select! {
        _ = term.recv() => {},
        _ = tokio::signal::ctrl_c() => {},
    }
}
