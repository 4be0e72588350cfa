//! A bastion end to end: OpenBao's SSH engine as the CA, the control plane, two sshd instances on
//! loopback (tenant A's VPS with its agent, and the platform's bastion with an agent in the
//! `bastion` role), real `ssh` through `ProxyJump`. A's certificate jumps to A's VPS and nowhere
//! else, opens no shell on the bastion, and once revoked is refused at the bastion too, its open
//! forwarding ended there.

use std::io::{ErrorKind, Write as _};
use std::net::TcpListener;
use std::os::unix::fs::PermissionsExt as _;
use std::path::Path;
use std::process::Stdio;
use std::sync::OnceLock;
use std::time::Duration;

use keyward_common::KeyAlgorithm;
use keyward_tests::{
    Agent, Deployment, OwnKey, Sshd, SshdOptions, TestUser, eventually, free_port, unique_tenant,
    workspace_root,
};
use reqwest::Method;
use serde_json::json;
use tokio::io::AsyncBufReadExt as _;

/// How long a change may take to reach a host, at most (it takes milliseconds).
const WITHIN: Duration = Duration::from_secs(20);

/// The jump user's name, for the control plane's configuration (a `fn`, which captures nothing).
static JUMP_USER: OnceLock<String> = OnceLock::new();

fn with_bastion(c: &mut keyward_server::config::Config) {
    Deployment::ssh_ca_settings(c);
    c.bastion.jump_user = JUMP_USER.get().unwrap().parse().unwrap();
    c.bastion.address = Some("127.0.0.1:2022".into());
}

/// An ssh client configuration: `bastion` (the jump user on the bastion's sshd) and `vps`
/// (the tenant user on its VPS, through `bastion`), both with `key` and its certificate.
fn ssh_config(
    dir: &Path,
    key: &Path,
    bastion: (&str, u16),
    vps: (&str, u16),
) -> std::path::PathBuf {
    let path = dir.join("ssh_config");
    let mut file = std::fs::File::create(&path).unwrap();
    write!(
        file,
        "Host bastion\n  HostName 127.0.0.1\n  Port {}\n  User {}\n\
         Host vps\n  HostName 127.0.0.1\n  Port {}\n  User {}\n  ProxyJump bastion\n\
         Host *\n  IdentityFile {}\n  IdentitiesOnly yes\n  BatchMode yes\n\
         \x20 StrictHostKeyChecking no\n  UserKnownHostsFile /dev/null\n  LogLevel ERROR\n\
         \x20 ConnectTimeout 10\n",
        bastion.1,
        bastion.0,
        vps.1,
        vps.0,
        key.display()
    )
    .unwrap();
    path
}

/// `ssh -F config`, to be given its arguments.
fn ssh_command(config: &Path) -> tokio::process::Command {
    let mut command = tokio::process::Command::new("ssh");
    command.arg("-F").arg(config);
    command
}

/// `ssh -F config args...`: whether it worked and what it printed.
async fn ssh(config: &Path, args: &[&str]) -> (bool, String) {
    let out = ssh_command(config)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .await
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).trim().to_owned(),
    )
}

/// The `Match User kwjump` block that ends the package's sshd drop-in, for `jump`.
fn jump_user_block(jump: &TestUser) -> Vec<String> {
    let drop_in = workspace_root().join("packaging/keyward-agent.sshd.conf");
    let text = std::fs::read_to_string(drop_in).unwrap();
    let block = &text[text
        .find("Match User kwjump")
        .expect("the drop-in's jump user block")..];
    block
        .replace("kwjump", jump.name.as_str())
        .lines()
        .map(str::to_owned)
        .collect()
}

/// Has keyward certify `holder`'s key for the tenant user (the tenant's own REST call) and puts
/// the certificate beside the key; the answer.
async fn certify(d: &Deployment, holder: &OwnKey) -> serde_json::Value {
    let issued =
        d.cp.request(
            Method::POST,
            "/api/v1/tenant/infrastructure/ssh-certificates",
            Some(&d.tenant_token),
            Some(json!({ "publicKey": holder.public, "validitySeconds": 600 })),
        )
        .await;
    assert_eq!(issued.status, 201, "{}", issued.text());
    let issued = issued.json();
    holder.hold_certificate(issued["certificate"].as_str().unwrap());
    issued
}

/// The principals file the bastion's agent wrote for the jump user.
fn jump_principals(bastion: &Sshd, jump: &TestUser) -> String {
    std::fs::read_to_string(
        bastion
            .files_dir
            .join("principals")
            .join(jump.name.as_str()),
    )
    .unwrap_or_default()
}

#[tokio::test]
async fn a_tenants_certificate_jumps_only_to_its_own_vps_and_once_revoked_not_even_to_the_bastion()
{
    let jump = TestUser::create("j");
    JUMP_USER.set(jump.name.to_string()).unwrap();
    let d = Deployment::start_with_ssh_ca_config(KeyAlgorithm::Ed25519, with_bastion).await;

    // Tenant B: a VPS at another port of 127.0.0.1 (a listener of the test's), registered.
    let b_vps = TcpListener::bind("127.0.0.1:0").unwrap();
    b_vps.set_nonblocking(true).unwrap();
    let b_port = b_vps.local_addr().unwrap().port();
    let tenant_b = unique_tenant("b");
    d.cp.onboard_tenant(&tenant_b, b_port, "bob", "bobadmin")
        .await;
    let registered =
        d.cp.admin_post("/api/v1/admin/hosts", json!({ "tenantId": tenant_b }))
            .await;
    assert_eq!(registered.status, 201, "{}", registered.text());

    // The platform's bastion: a tenant of its own, a second sshd with the package's drop-in
    // block for the jump user, an agent in the bastion role.
    let bastion = Sshd::start_async_with(SshdOptions {
        extra_config: jump_user_block(&jump),
        ..SshdOptions::default()
    })
    .await;
    let (ops_admin, ops_user) = (TestUser::create("pa"), TestUser::create("pt"));
    let platform = unique_tenant("platform");
    d.cp.onboard_tenant(
        &platform,
        bastion.port,
        ops_user.name.as_str(),
        ops_admin.name.as_str(),
    )
    .await;
    let mut bastion_agent = Agent::enroll_bastion(
        &d.cp,
        &platform,
        [&ops_admin.name, &ops_user.name],
        &jump.name,
        &bastion,
    )
    .await;
    assert_eq!(bastion_agent.view(&d.cp).await["role"], "bastion");
    bastion_agent.start();

    // The jump user's principals: each tenant's, confined to its own VPS.
    let a_line = format!(
        "restrict,port-forwarding,command=\"/usr/sbin/nologin\",permitopen=\"127.0.0.1:{}\" keyward:{}:tenant",
        d.sshd.port, d.tenant
    );
    let b_line = format!(
        "restrict,port-forwarding,command=\"/usr/sbin/nologin\",permitopen=\"127.0.0.1:{b_port}\" keyward:{tenant_b}:tenant"
    );
    eventually("the bastion's jump principals", WITHIN, || async {
        let text = jump_principals(&bastion, &jump);
        (text.lines().any(|l| l == a_line) && text.lines().any(|l| l == b_line)).then_some(())
    })
    .await;

    // The tenant's connection instructions name the bastion.
    let credentials =
        d.cp.request(
            Method::GET,
            "/api/v1/tenant/infrastructure/ssh-credentials",
            Some(&d.tenant_token),
            None,
        )
        .await;
    assert_eq!(
        credentials.json()["proxyJump"],
        format!("{}@127.0.0.1:2022", jump.name)
    );

    // A certificate for A's tenant user, over REST, for a key of A's own.
    let holder = OwnKey::new();
    let issued = certify(&d, &holder).await;
    let dir = tempfile::tempdir().unwrap();
    let config = ssh_config(
        dir.path(),
        &holder.key,
        (jump.name.as_str(), bastion.port),
        (d.user.name.as_str(), d.sshd.port),
    );

    // Through the bastion to A's own VPS.
    let (ok, who) = ssh(&config, &["vps", "id -un"]).await;
    assert!(
        ok,
        "the jump failed; bastion log:\n{}\nVPS log:\n{}",
        bastion.log_text(),
        d.sshd.log_text()
    );
    assert_eq!(who, d.user.name.as_str());

    // The bastion's logins (every tenant's jumps) are admins' to see, not its tenant's.
    let bastion_id = bastion_agent.host_id.clone();
    eventually("the jump in the bastion's login audit", WITHIN, || async {
        let reply =
            d.cp.request(
                Method::GET,
                &format!("/api/v1/admin/audit/logins?hostId={bastion_id}&outcome=accepted"),
                Some(&d.cp.admin_token),
                None,
            )
            .await;
        let events = reply.json()["events"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        events
            .iter()
            .any(|e| e["user"] == jump.name.as_str() && e["tenantId"] == platform.as_str())
            .then_some(())
    })
    .await;
    let platform_token = d.cp.tenant_token(&platform).await;
    let own =
        d.cp.request(
            Method::GET,
            "/api/v1/tenant/infrastructure/ssh-logins",
            Some(&platform_token),
            None,
        )
        .await;
    assert_eq!(own.status, 200, "{}", own.text());
    assert!(
        own.json()["events"]
            .as_array()
            .unwrap()
            .iter()
            .all(|e| e["hostId"] != bastion_id.as_str()),
        "the bastion's tenant lists its jumps: {}",
        own.text()
    );

    // To B's VPS: refused by the bastion; B's port never sees a connection.
    let to_b = format!("127.0.0.1:{b_port}");
    let (ok, _) = ssh(&config, &["-W", &to_b, "bastion"]).await;
    assert!(!ok, "A's certificate was forwarded to B's VPS");
    assert_eq!(
        b_vps.accept().map(|_| ()).unwrap_err().kind(),
        ErrorKind::WouldBlock,
        "B's VPS got a connection through the bastion"
    );

    // No listening port on the bastion (the drop-in's block): refused before any command runs.
    let listen = ssh_command(&config)
        .args([
            "-o",
            "ExitOnForwardFailure=yes",
            "-R",
            "0:127.0.0.1:9",
            "bastion",
            "true",
        ])
        .stdin(Stdio::null())
        .output()
        .await
        .unwrap();
    let said = String::from_utf8_lossy(&listen.stderr);
    assert_eq!(listen.status.code(), Some(255), "{said}");
    assert!(said.contains("remote port forwarding failed"), "{said}");
    // Nor a Unix socket, listened on (-R) or reached (-L) on the bastion, in a directory where
    // anyone may make one.
    let sockets = tempfile::tempdir().unwrap();
    std::fs::set_permissions(sockets.path(), std::fs::Permissions::from_mode(0o1777)).unwrap();
    let socket = sockets.path().join("jump.sock");
    let socket = socket.to_str().unwrap();
    let listen = ssh_command(&config)
        .args(["-o", "ExitOnForwardFailure=yes", "-R"])
        .arg(format!("{socket}:127.0.0.1:9"))
        .args(["bastion", "true"])
        .stdin(Stdio::null())
        .output()
        .await
        .unwrap();
    let said = String::from_utf8_lossy(&listen.stderr);
    assert_eq!(listen.status.code(), Some(255), "{said}");
    assert!(!std::path::Path::new(socket).exists());
    // A socket on the bastion anyone may connect to: not through the jump user.
    let target = sockets.path().join("service.sock");
    let service = tokio::net::UnixListener::bind(&target).unwrap();
    std::fs::set_permissions(&target, std::fs::Permissions::from_mode(0o777)).unwrap();
    let local = free_port();
    let mut reach = ssh_command(&config)
        .args(["-N", "-L"])
        .arg(format!("127.0.0.1:{local}:{}", target.display()))
        .arg("bastion")
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    eventually("the -L listener", WITHIN, || async {
        tokio::net::TcpStream::connect(("127.0.0.1", local))
            .await
            .ok()
    })
    .await;
    assert!(
        tokio::time::timeout(Duration::from_secs(3), service.accept())
            .await
            .is_err(),
        "a socket on the bastion was reached through the jump user"
    );
    let _ = reach.kill().await;

    // No shell on the bastion.
    let (_, said) = ssh(&config, &["bastion", "id -u"]).await;
    assert!(
        !said.chars().next().is_some_and(|c| c.is_ascii_digit()),
        "the jump user ran a command on the bastion: {said:?}"
    );

    // A forwarding held open through the bastion (what ProxyJump runs): it reaches A's sshd.
    let to_a = format!("127.0.0.1:{}", d.sshd.port);
    let mut forwarding = ssh_command(&config)
        .args(["-W", &to_a, "bastion"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let stdout = forwarding.stdout.take().unwrap();
    let banner = tokio::time::timeout(
        WITHIN,
        tokio::io::BufReader::new(stdout).lines().next_line(),
    )
    .await
    .expect("A's sshd to answer through the bastion")
    .unwrap()
    .unwrap_or_default();
    assert!(banner.starts_with("SSH-2.0-"), "{banner:?}");

    // Revoked: the bastion ends the forwarding and refuses the certificate; so does the VPS.
    let id = issued["certificateId"].as_str().unwrap();
    let revoked =
        d.cp.request(
            Method::POST,
            &format!("/api/v1/tenant/infrastructure/ssh-certificates/{id}/revoke"),
            Some(&d.tenant_token),
            None,
        )
        .await;
    assert_eq!(revoked.status, 200, "{}", revoked.text());
    Sshd::wait_session_end(&mut forwarding, WITHIN).await;
    eventually(
        "the bastion to refuse the revoked certificate",
        WITHIN,
        || async {
            let (ok, _) = ssh(&config, &["-W", &to_a, "bastion"]).await;
            (!ok).then_some(())
        },
    )
    .await;
    assert!(!ssh(&config, &["vps", "true"]).await.0);
    // The route itself stays: another certificate of A's still jumps.
    let other = OwnKey::new();
    certify(&d, &other).await;
    let config = ssh_config(
        dir.path(),
        &other.key,
        (jump.name.as_str(), bastion.port),
        (d.user.name.as_str(), d.sshd.port),
    );
    assert_eq!(
        ssh(&config, &["vps", "id -un"]).await,
        (true, d.user.name.to_string())
    );
}
