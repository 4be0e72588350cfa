//! Certificates in the agent's tests: a user CA made by ssh-keygen, and an in-process agent with
//! the real writer and session killer that reads sshd's log, on a stream to a test hub that
//! answers its login batches. For test files that use `runtime_support` too.

// Test code: a failed unwrap is a failed test; not every test file uses every helper.
#![allow(dead_code, clippy::unwrap_used)]

use std::sync::Arc;

use keyward_agent::apply::SystemApplier;
use keyward_agent::config::LoginsConfig;
use keyward_agent::{AgentConfig, RuntimeDeps, UserConfig, UserMode};
use keyward_common::keys::GeneratedKey;
use keyward_common::proto::agent_message::Msg;
use keyward_common::proto::{
    Applied, ControlMessage, DesiredState, LoginAck, LoginEvent, LoginOutcome, UserResult,
    control_message,
};
use keyward_test_support::{Sshd, TestUser};

use crate::runtime_support::{Enrolled, Lifetime, Pki, Session, TestHub, WAIT, within};

/// Answers every login batch and keeps its events; returns the next other message.
pub async fn next(s: &mut Session, logins: &mut Vec<LoginEvent>) -> Msg {
    loop {
        match s.recv().await {
            Msg::Logins(batch) => {
                let cursor = batch.events.last().unwrap().cursor;
                logins.extend(batch.events);
                s.to_agent
                    .send(Ok(ControlMessage {
                        msg: Some(control_message::Msg::LoginAck(LoginAck { cursor })),
                    }))
                    .unwrap();
            }
            other => return other,
        }
    }
}

const SSH_KEYGEN: &str = "/usr/bin/ssh-keygen";

pub fn keygen(args: &[&str]) {
    let out = std::process::Command::new(SSH_KEYGEN)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{SSH_KEYGEN}: {e} (apt-get install openssh-client)"));
    assert!(
        out.status.success(),
        "ssh-keygen {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A user CA made by ssh-keygen (the Vault-backed CA is tested in the integration tests).
pub struct UserCa {
    dir: tempfile::TempDir,
}

impl UserCa {
    pub fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let key = dir.path().join("ca");
        keygen(&["-q", "-t", "ed25519", "-N", "", "-f", key.to_str().unwrap()]);
        Self { dir }
    }

    /// The CA's public key, `type base64`.
    pub fn public(&self) -> String {
        let text = std::fs::read_to_string(self.dir.path().join("ca.pub")).unwrap();
        keyward_common::keys::canonical_public_key(&text).unwrap()
    }

    pub fn fingerprint(&self) -> String {
        keyward_common::keys::public_key_fingerprint(&self.public())
            .unwrap()
            .to_string()
    }

    /// Signs `key` (whose private half is at `path`) for `principal` as `{path}-cert.pub`, which
    /// ssh offers along with `-i path`.
    pub fn sign(
        &self,
        key: &GeneratedKey,
        path: &std::path::Path,
        key_id: &str,
        principal: &str,
        serial: u64,
    ) {
        let public = format!("{}.pub", path.display());
        std::fs::write(&public, key.public_openssh()).unwrap();
        keygen(&[
            "-q",
            "-s",
            self.dir.path().join("ca").to_str().unwrap(),
            "-I",
            key_id,
            "-n",
            principal,
            "-z",
            &serial.to_string(),
            "-V",
            "-5m:+1h",
            &public,
        ]);
    }
}

/// An in-process agent with the real writer and session killer, managing one user and reading
/// sshd's log, on a stream to a test hub that answers its login batches.
pub struct RunningAgent {
    pub enrolled: Enrolled,
    pub stream: Session,
    /// Every login event the agent sent so far.
    pub logins: Vec<LoginEvent>,
    stop: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<()>,
    _hub: TestHub,
    _pki: Pki,
}

impl RunningAgent {
    /// The agent managing `user` in preserve mode.
    pub async fn start(user: &TestUser, sshd: &Sshd) -> Self {
        Self::start_with(sshd, |config| {
            config.users = vec![UserConfig {
                name: user.name.clone(),
                mode: UserMode::Preserve,
            }];
        })
        .await
    }

    /// The agent writing `sshd`'s files and reading its log, its configuration (users, role)
    /// made by `configure`.
    pub async fn start_with(sshd: &Sshd, configure: impl FnOnce(&mut AgentConfig)) -> Self {
        let pki = Pki::new();
        let mut hub = TestHub::start(&pki).await;
        let enrolled = Enrolled::new(&pki, &hub.url, Lifetime::Fresh);
        let mut config = enrolled.config();
        configure(&mut config);
        config.logins = LoginsConfig::file(&sshd.log);
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let deps = RuntimeDeps {
            applier: Arc::new(SystemApplier {
                sshd_dir: sshd.files_dir.clone(),
                ..SystemApplier::default()
            }),
            watch_events: None,
            notifier: None,
            status: None,
        };
        let task = tokio::spawn(async move {
            keyward_agent::run_with(config, deps, async move {
                let _ = stopped.await;
            })
            .await
            .unwrap();
        });
        let mut stream = hub.session().await;
        let mut logins = Vec::new();
        assert!(matches!(
            next(&mut stream, &mut logins).await,
            Msg::Hello(_)
        ));
        Self {
            enrolled,
            stream,
            logins,
            stop,
            task,
            _hub: hub,
            _pki: pki,
        }
    }

    /// Sends `state`, signed; returns what applying it did to the (one) user.
    pub async fn apply(&mut self, state: &DesiredState) -> UserResult {
        self.applied(state).await.users.into_iter().next().unwrap()
    }

    /// Sends `state`, signed; returns the agent's whole answer.
    pub async fn applied(&mut self, state: &DesiredState) -> Applied {
        self.stream.send_state(self.enrolled.sign(state));
        let Msg::Applied(applied) = next(&mut self.stream, &mut self.logins).await else {
            panic!("expected Applied")
        };
        applied
    }

    /// The accepted login whose event `matches`, waiting for the agent to send it (bounded).
    pub async fn accepted(&mut self, matches: impl Fn(&LoginEvent) -> bool) -> LoginEvent {
        self.accepted_n(1, matches).await.swap_remove(0)
    }

    /// The first `n` accepted logins whose events `matches`, waiting for the agent to send them
    /// (bounded).
    pub async fn accepted_n(
        &mut self,
        n: usize,
        matches: impl Fn(&LoginEvent) -> bool,
    ) -> Vec<LoginEvent> {
        loop {
            let found: Vec<LoginEvent> = self
                .logins
                .iter()
                .filter(|e| e.outcome == LoginOutcome::Accepted as i32 && matches(e))
                .take(n)
                .cloned()
                .collect();
            if found.len() == n {
                return found;
            }
            let Msg::Logins(batch) = tokio::time::timeout(WAIT, self.stream.recv())
                .await
                .unwrap()
            else {
                panic!("expected login batches")
            };
            let cursor = batch.events.last().unwrap().cursor;
            self.logins.extend(batch.events);
            self.stream
                .to_agent
                .send(Ok(ControlMessage {
                    msg: Some(control_message::Msg::LoginAck(LoginAck { cursor })),
                }))
                .unwrap();
        }
    }

    pub async fn stop(self) {
        let _ = self.stop.send(());
        within("the agent to stop", self.task).await.unwrap();
    }
}
