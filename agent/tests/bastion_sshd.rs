//! A bastion, with real sshds, real users and real `ssh -J`: two sshds on loopback, the bastion
//! (whose certificate files an in-process agent in the `[bastion]` role writes) and tenant A's
//! VPS. Tenant A's certificate jumps through the bastion's jump user to A's VPS, and nowhere
//! else: not to tenant B's destination (which the jump user forwards to only for B's principal),
//! not into a shell on the bastion. Its open jump ends when the state revokes the certificate's
//! key id and raises the jump user's session epoch; a raised epoch alone leaves it open. A state
//! that gives jump principals to another user is refused whole and the files stay.

// Test code: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used)]

mod cert_support;
mod logins_support;
mod runtime_support;

use std::net::TcpListener;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use cert_support::{RunningAgent, UserCa};
use keyward_agent::config::SshdTrust;
use keyward_agent::sessions;
use keyward_agent::{BastionConfig, UserConfig, UserMode};
use keyward_common::krl::RevocationList;
use keyward_common::proto::{DesiredState, JumpPrincipal, ManagedUser, Mode, SshdFiles};
use keyward_test_support::sshd::once_ready;
use keyward_test_support::{Proc, Sshd, TestUser, homes_dir, wait_for};
use logins_support::{authorize, client_key};

const PRINCIPAL_A: &str = "keyward:ta:tenant";
const KEY_ID_A: &str = "keyward:ta:tenant:1";
const PRINCIPAL_B: &str = "keyward:tb:tenant";
/// The bound on a revoked jump's end.
const ENDS_WITHIN: Duration = Duration::from_secs(5);
/// The bound on one ssh client run.
const SSH_WITHIN: Duration = Duration::from_secs(30);

/// The bastion's state: its jump user may forward to A's VPS for A's principal and to B's
/// destination for B's; `revoked` key ids are listed and in the revocation list.
fn bastion_state(
    generation: u64,
    jump: &TestUser,
    ca: &UserCa,
    vps_a: u16,
    dest_b: u16,
    epoch: u64,
    revoked: &[&str],
) -> DesiredState {
    let mut krl = RevocationList::new(generation, 0, "test").unwrap();
    for id in revoked {
        krl.revoke_key_id(None, id).unwrap();
    }
    DesiredState {
        host_id: runtime_support::HOST_ID.into(),
        generation,
        issued_at: "2026-01-01T00:00:00Z".into(),
        users: vec![ManagedUser {
            user: jump.name.to_string(),
            mode: Mode::Exclusive as i32,
            session_epoch: epoch,
            revoked_certificate_ids: revoked.iter().map(|s| (*s).to_owned()).collect(),
            jump_principals: vec![
                JumpPrincipal {
                    principal: PRINCIPAL_A.into(),
                    permit_open: vec![format!("127.0.0.1:{vps_a}")],
                },
                JumpPrincipal {
                    principal: PRINCIPAL_B.into(),
                    permit_open: vec![format!("127.0.0.1:{dest_b}")],
                },
            ],
            ..ManagedUser::default()
        }],
        sshd: Some(SshdFiles {
            user_ca_keys: vec![ca.public()],
            revoked_keys: krl.encode(),
        }),
    }
}

/// An ssh client configuration: `kw-bastion` is the jump user at the bastion with tenant A's
/// certificate, `kw-vps-a` A's VPS user with its plain key. `ssh -J` hands `-F` on to the jump
/// hop's ssh, so both hops read it.
fn ssh_config(
    dir: &Path,
    bastion: &Sshd,
    jump: &TestUser,
    cert_key: &Path,
    vps: &Sshd,
    vps_user: &TestUser,
    vps_key: &Path,
) -> String {
    let path = dir.join("ssh_config");
    std::fs::write(
        &path,
        format!(
            "Host kw-bastion\n  HostName 127.0.0.1\n  Port {}\n  User {}\n  IdentityFile {}\n\
             Host kw-vps-a\n  HostName 127.0.0.1\n  Port {}\n  User {}\n  IdentityFile {}\n\
             Host *\n  IdentitiesOnly yes\n  BatchMode yes\n  StrictHostKeyChecking no\n  \
             UserKnownHostsFile /dev/null\n  LogLevel ERROR\n  ConnectTimeout 10\n",
            bastion.port,
            jump.name,
            cert_key.display(),
            vps.port,
            vps_user.name,
            vps_key.display(),
        ),
    )
    .unwrap();
    path.to_str().unwrap().to_owned()
}

/// `ssh -F config args...` run to its end, within [`SSH_WITHIN`]: a client the bastion lets
/// through where it must not (a forward that stays open) fails the test instead of hanging it.
fn ssh(config: &str, args: &[&str]) -> Output {
    let mut child = Command::new(keyward_test_support::sshd::SSH)
        .args(["-F", config])
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + SSH_WITHIN;
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            let out = child.wait_with_output().unwrap();
            panic!(
                "ssh {args:?} still ran after {SSH_WITHIN:?}: {}",
                text(&out.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    child.wait_with_output().unwrap()
}

/// `ssh -J kw-bastion kw-vps-a` running `sleep 600` on A's VPS, once it runs.
fn open_jump(config: &str, bastion: &Sshd) -> Proc {
    let child = Command::new(keyward_test_support::sshd::SSH)
        .args(["-F", config, "-J", "kw-bastion", "kw-vps-a"])
        .arg("echo ready; exec sleep 600")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    once_ready(child, || format!("bastion log:\n{}", bastion.log_text()))
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenants_certificate_jumps_only_to_its_own_vps_until_it_is_revoked() {
    let homes = homes_dir();
    let work = tempfile::tempdir().unwrap();
    let jump = TestUser::create_in("bj", homes.path());
    let vps_user = TestUser::create_in("bv", homes.path());
    for dir in ["bastion", "vps"] {
        std::fs::create_dir(work.path().join(dir)).unwrap();
    }
    let bastion = Sshd::start(&work.path().join("bastion"));
    let vps = Sshd::start(&work.path().join("vps"));
    // A's VPS takes its user's plain key; B's destination is a listener of the test's.
    let (vps_key, vps_key_path) = client_key(work.path(), "vps-user-key");
    authorize(&vps_user, &[&vps_key]);
    let dest_b = TcpListener::bind("127.0.0.1:0").unwrap();
    dest_b.set_nonblocking(true).unwrap();
    let dest_b_port = dest_b.local_addr().unwrap().port();
    // Tenant A's certificate, by a CA the state has the bastion trust.
    let ca = UserCa::new();
    let (cert_key, cert_path) = client_key(work.path(), "tenant-a");
    ca.sign(&cert_key, &cert_path, KEY_ID_A, PRINCIPAL_A, 1);
    let config = ssh_config(
        work.path(),
        &bastion,
        &jump,
        &cert_path,
        &vps,
        &vps_user,
        &vps_key_path,
    );

    let mut agent = RunningAgent::start_with(&bastion, |config| {
        config.users = vec![UserConfig {
            name: jump.name.clone(),
            mode: UserMode::Exclusive,
        }];
        config.bastion = Some(BastionConfig {
            jump_user: jump.name.clone(),
        });
    })
    .await;
    let state = |generation, epoch, revoked: &[&str]| {
        bastion_state(
            generation,
            &jump,
            &ca,
            vps.port,
            dest_b_port,
            epoch,
            revoked,
        )
    };
    let applied = agent.applied(&state(1, 0, &[])).await;
    assert_eq!(applied.sshd.as_ref().unwrap().error, "");
    assert_eq!(applied.users[0].error, "");
    let principals = bastion
        .files_dir
        .join("principals")
        .join(jump.name.as_str());
    let written = std::fs::read_to_string(&principals).unwrap();
    assert_eq!(
        written,
        format!(
            "restrict,port-forwarding,command=\"/usr/sbin/nologin\",permitopen=\"127.0.0.1:{}\" \
             {PRINCIPAL_A}\nrestrict,port-forwarding,command=\"/usr/sbin/nologin\",\
             permitopen=\"127.0.0.1:{dest_b_port}\" {PRINCIPAL_B}\n",
            vps.port
        )
    );

    // (a) A's certificate jumps to A's VPS and runs a command there.
    let reached = tokio::task::block_in_place(|| {
        ssh(&config, &["-J", "kw-bastion", "kw-vps-a", "id", "-un"])
    });
    assert!(
        reached.status.success(),
        "the jump to A's VPS failed: {}\nbastion log:\n{}",
        text(&reached.stderr),
        bastion.log_text()
    );
    assert_eq!(text(&reached.stdout).trim(), vps_user.name.as_str());

    // (b) The same certificate asking the bastion for B's destination is refused by the bastion
    // (the client only says the forwarding failed; sshd says why).
    let to_b = tokio::task::block_in_place(|| {
        ssh(
            &config,
            &["-W", &format!("127.0.0.1:{dest_b_port}"), "kw-bastion"],
        )
    });
    assert!(!to_b.status.success());
    assert!(
        text(&to_b.stderr).contains("stdio forwarding failed"),
        "{}",
        text(&to_b.stderr)
    );
    let denied =
        format!("to connect to host 127.0.0.1 port {dest_b_port}, but the request was denied");
    tokio::task::block_in_place(|| {
        wait_for(
            Duration::from_secs(10),
            "the bastion to log the denial",
            || bastion.log_text().contains(&denied).then_some(()),
        );
    });
    assert_eq!(
        dest_b.accept().map(|_| ()).unwrap_err().kind(),
        std::io::ErrorKind::WouldBlock,
        "B's destination got a connection"
    );

    // (c) No shell, no command on the bastion: the forced command says so and nothing else runs.
    let shell = tokio::task::block_in_place(|| ssh(&config, &["kw-bastion", "id"]));
    let out = text(&shell.stdout);
    assert!(!shell.status.success());
    assert!(!out.contains("uid="), "a command ran on the bastion: {out}");
    assert!(
        out.contains("not available"),
        "the login did not reach the forced command: {out} {}",
        text(&shell.stderr)
    );

    // (d) An open jump: the agent saw its login (the fourth of the certificate's on the bastion).
    let mut open = tokio::task::block_in_place(|| open_jump(&config, &bastion));
    let logins = agent
        .accepted_n(4, |e| {
            e.user == jump.name.as_str() && e.certificate_id == KEY_ID_A
        })
        .await;
    assert!(logins[3].verified, "{logins:?}");
    let trees = sessions::find_session_trees(&jump.name, &SshdTrust::default()).unwrap();
    assert_eq!(trees.len(), 1, "{trees:?}");

    // A raised epoch with nothing revoked keeps it: the jump principal is the user's.
    let raised = agent.apply(&state(2, 1, &[])).await;
    assert_eq!((raised.error.as_str(), raised.sessions_ended), ("", 0));
    assert!(open.running(), "the jump ended without a revocation");

    // Revoked: the key id is listed, in the revocation list, and the epoch rises.
    let revoked = agent.apply(&state(3, 2, &[KEY_ID_A])).await;
    assert_eq!((revoked.error.as_str(), revoked.sessions_ended), ("", 1));
    tokio::task::block_in_place(|| {
        wait_for(ENDS_WITHIN, "the revoked certificate's jump to end", || {
            (!open.running()).then_some(())
        });
    });
    assert!(
        sessions::find_session_trees(&jump.name, &SshdTrust::default())
            .unwrap()
            .is_empty()
    );
    // And sshd refuses the certificate from now on.
    let again = tokio::task::block_in_place(|| {
        ssh(&config, &["-J", "kw-bastion", "kw-vps-a", "id", "-un"])
    });
    assert!(!again.status.success());
    assert!(!text(&again.stdout).contains(vps_user.name.as_str()));

    // A state that gives jump principals to another user is refused whole: the files stay.
    let before = std::fs::read(&principals).unwrap();
    let mut bad = state(4, 2, &[]);
    let mut other = bad.users[0].clone();
    other.user = vps_user.name.to_string();
    bad.users.push(other);
    let refused = agent.applied(&bad).await;
    let error = &refused.sshd.as_ref().unwrap().error;
    assert!(error.contains("only the bastion's jump user"), "{error}");
    assert_eq!(std::fs::read(&principals).unwrap(), before);
    assert_eq!(
        std::fs::read(bastion.files_dir.join("revoked_keys")).unwrap(),
        state(3, 2, &[KEY_ID_A]).sshd.unwrap().revoked_keys,
        "the revocation list was replaced by the refused state's"
    );

    agent.stop().await;
}
