//! Session recording on a real host: Debian's sshd, real users and `ssh` clients, Debian's tlog
//! set-user-ID to `_tlog` (as the package makes it) and the package's wrapper. A state that records
//! a user makes the agent write its key with the recorder as forced command; an interactive
//! session typing commands, a remote command and an `scp` copy all work, each is recorded, and
//! the recordings reach the control plane's side of the stream in whole, checked chunks, numbered
//! without gaps, tied to the connection sshd logged. A chunk left unacknowledged is sent again,
//! byte for byte, by the next agent after a restart; an acknowledged recording leaves the spool.

// Test code: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used)]

mod logins_support;
mod runtime_support;

use std::collections::BTreeMap;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use keyward_agent::config::RecordingConfig;
use keyward_agent::{UserConfig, UserMode};
use keyward_common::keys::GeneratedKey;
use keyward_common::proto::agent_message::Msg;
use keyward_common::proto::{
    ControlMessage, DesiredState, Key, KeyKind, ManagedUser, Mode, RecordingAck, RecordingChunk,
    SessionRecording, control_message,
};
use keyward_test_support::sshd::{SECURE_BASE, SshdOptions};
use keyward_test_support::{Sshd, TestUser, homes_dir, wait_for, workspace_root};
use logins_support::client_key;
use runtime_support::{Enrolled, Lifetime, Pki, Session, TestHub, spawn_system_agent, within};

const TLOG: &str = "/usr/bin/tlog-rec-session";

/// The host must be set up as the package sets it up; say how when it is not.
fn require_recorder() {
    let meta = std::fs::metadata(TLOG).unwrap_or_else(|e| {
        panic!("{TLOG}: {e}: install Debian's tlog (bash scripts/install-test-deps)")
    });
    let tlog = nix::unistd::User::from_name("_tlog").unwrap().unwrap();
    assert!(
        meta.mode() & 0o4000 != 0 && meta.uid() == tlog.uid.as_raw(),
        "{TLOG} must be set-user-ID to _tlog, as keyward-agent's package makes it: \
         bash scripts/install-test-deps"
    );
    assert!(
        Path::new("/run/utmp").exists(),
        "/run/utmp is missing (tlog records terminals only with it): bash scripts/install-test-deps"
    );
}

fn desired(generation: u64, user: &TestUser, key: &GeneratedKey) -> DesiredState {
    DesiredState {
        host_id: runtime_support::HOST_ID.into(),
        generation,
        issued_at: "2026-01-01T00:00:00Z".into(),
        users: vec![ManagedUser {
            user: user.name.to_string(),
            mode: Mode::Exclusive as i32,
            keys: vec![Key {
                kind: KeyKind::Admin as i32,
                generation: 1,
                public_key: key.public_openssh().to_owned(),
                fingerprint: key.fingerprint().to_string(),
                expires_at: String::new(),
                verify_required: false,
            }],
            denied_fingerprints: vec![],
            session_epoch: 0,
            revoked: false,
            principals: vec![],
            revoked_certificate_ids: vec![],
            jump_principals: vec![],
            recording: Some(SessionRecording { input: true }),
        }],
        sshd: None,
    }
}

/// The package's wrapper, installed as the package installs it: root's, 0755, in a directory
/// no one else may write (under the sshd harness's base, which sshd accepts); and where the
/// spool goes, beside it (the agent makes it). The directory, the wrapper and the spool.
fn install_recording() -> (tempfile::TempDir, PathBuf, PathBuf) {
    std::fs::create_dir_all(SECURE_BASE).unwrap();
    let installed = tempfile::Builder::new()
        .prefix("recording-")
        .tempdir_in(SECURE_BASE)
        .unwrap();
    std::fs::set_permissions(installed.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let wrapper = installed.path().join("record-session");
    std::fs::copy(
        workspace_root().join("packaging/keyward-record-session"),
        &wrapper,
    )
    .unwrap();
    std::fs::set_permissions(&wrapper, std::fs::Permissions::from_mode(0o755)).unwrap();
    let spool = installed.path().join("spool");
    (installed, wrapper, spool)
}

/// The recordings received, by id, acknowledging each chunk unless `hold` says not to.
#[derive(Default)]
struct Received {
    chunks: BTreeMap<String, Vec<RecordingChunk>>,
}

impl Received {
    fn ended(&self) -> usize {
        self.chunks
            .values()
            .filter(|c| c.last().is_some_and(|c| c.last))
            .count()
    }

    fn data(&self, id: &str) -> Vec<u8> {
        self.chunks[id]
            .iter()
            .flat_map(|c| c.data.clone())
            .collect()
    }

    /// The text the recording showed (`out_txt`) and was typed (`in_txt`), in order.
    fn text(&self, id: &str) -> (String, String) {
        let (mut out, mut typed) = (String::new(), String::new());
        for line in String::from_utf8(self.data(id)).unwrap().lines() {
            let message: serde_json::Value = serde_json::from_str(line).unwrap();
            out.push_str(message["out_txt"].as_str().unwrap_or_default());
            typed.push_str(message["in_txt"].as_str().unwrap_or_default());
        }
        (out, typed)
    }
}

fn ack(s: &Session, chunk: &RecordingChunk) {
    s.to_agent
        .send(Ok(ControlMessage {
            msg: Some(control_message::Msg::RecordingAck(RecordingAck {
                recording_id: chunk.recording_id.clone(),
                seq: chunk.seq,
            })),
        }))
        .unwrap();
}

/// Receives until `done` holds, acknowledging every chunk for which `hold` is false.
async fn receive(
    s: &mut Session,
    got: &mut Received,
    hold: impl Fn(&RecordingChunk) -> bool,
    done: impl Fn(&Received) -> bool,
) {
    while !done(got) {
        match s.recv().await {
            Msg::Recording(chunk) => {
                if !hold(&chunk) {
                    ack(s, &chunk);
                }
                let list = got.chunks.entry(chunk.recording_id.clone()).or_default();
                // A chunk sent again replaces nothing: the first copy is kept (the test compares
                // them where it expects one).
                if !list.iter().any(|c| c.seq == chunk.seq) {
                    list.push(chunk);
                }
            }
            Msg::Logins(_) | Msg::Applied(_) | Msg::Hello(_) => {}
            other => panic!("unexpected message {other:?}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_recorded_users_sessions_reach_the_control_plane_whole_in_order_and_once() {
    require_recorder();
    let homes = homes_dir();
    let work = tempfile::tempdir().unwrap();
    let user = TestUser::create_in("rc", homes.path());
    let name = user.name.to_string();
    // Debian's sftp server, as its sshd_config names it: scp speaks sftp.
    let sshd = Sshd::start_with(
        work.path(),
        &SshdOptions {
            extra_config: vec!["Subsystem sftp /usr/lib/openssh/sftp-server".into()],
            ..SshdOptions::default()
        },
    );
    let (key, key_path) = client_key(work.path(), "rec");
    let (_installed, wrapper, spool) = install_recording();

    let pki = Pki::new();
    let mut hub = TestHub::start(&pki).await;
    let enrolled = Enrolled::new(&pki, &hub.url, Lifetime::Fresh);
    let mut config = enrolled.config();
    config.users = vec![UserConfig {
        name: user.name.clone(),
        mode: UserMode::Exclusive,
    }];
    config.recording = Some(RecordingConfig {
        wrapper: wrapper.clone(),
        spool_dir: spool.clone(),
        ..RecordingConfig::default()
    });
    let (stop, task) = spawn_system_agent(config.clone());
    let mut s = hub.session().await;
    let Msg::Hello(hello) = s.recv().await else {
        panic!("expected Hello")
    };
    assert!(hello.recording, "the agent says it cannot record");
    // The spool was made for the recorder alone.
    let meta = std::fs::metadata(&spool).unwrap();
    let tlog = nix::unistd::User::from_name("_tlog").unwrap().unwrap();
    assert_eq!(
        (meta.uid(), meta.mode() & 0o777),
        (tlog.uid.as_raw(), 0o700)
    );

    s.send_state(enrolled.sign(&desired(1, &user, &key)));
    let applied = loop {
        if let Msg::Applied(applied) = s.recv().await {
            break applied;
        }
    };
    assert_eq!(applied.users[0].error, "");
    let written = std::fs::read_to_string(user.authorized_keys()).unwrap();
    let forced = format!(
        "command=\"{} input {}\" ",
        wrapper.display(),
        spool.display()
    );
    assert!(written.starts_with(&forced), "{written}");

    // An interactive session on a terminal, typing at the prompt.
    let shown = tokio::task::block_in_place(|| {
        sshd.type_at_prompt(&key_path, &name, "echo typed-$((6*7))", "typed-42")
    });
    assert!(shown.contains("typed-42"), "{shown}");

    // A remote command, and a copy by scp (sftp, a subsystem, through the forced command).
    let out =
        tokio::task::block_in_place(|| sshd.ssh(&key_path, &name, &["echo via-$((2+3))"]).output())
            .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "via-5\n",
        "{out:?} {}",
        sshd.log_text()
    );
    let payload: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
    let local = work.path().join("payload.bin");
    std::fs::write(&local, &payload).unwrap();
    let out =
        tokio::task::block_in_place(|| sshd.scp(&key_path, &name, &local, "copy.bin").output())
            .unwrap();
    assert!(
        out.status.success(),
        "scp: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(std::fs::read(user.home.join("copy.bin")).unwrap(), payload);

    // Three recordings arrive and end. The remote command's last chunk is held back.
    let mut got = Received::default();
    let is_command = |c: &RecordingChunk| String::from_utf8_lossy(&c.data).contains("via-5");
    let command_ids = std::sync::Mutex::new(Vec::<String>::new());
    let hold = |c: &RecordingChunk| {
        let mut ids = command_ids.lock().unwrap();
        if is_command(c) && !ids.contains(&c.recording_id) {
            ids.push(c.recording_id.clone());
        }
        ids.contains(&c.recording_id)
    };
    within(
        "three ended recordings",
        receive(&mut s, &mut got, hold, |got| got.ended() == 3),
    )
    .await;
    let log = sshd.log_text();
    for (id, chunks) in &got.chunks {
        let seqs: Vec<u64> = chunks.iter().map(|c| c.seq).collect();
        assert_eq!(seqs, (0..chunks.len() as u64).collect::<Vec<_>>(), "{id}");
        assert!(chunks.iter().all(|c| c.user == name));
        assert_eq!(chunks.iter().filter(|c| c.last).count(), 1);
        assert!(!chunks.last().unwrap().ended_at.is_empty());
        // The connection sshd logged the login of.
        let port = chunks[0].source_port;
        assert_eq!(chunks[0].source_ip, "127.0.0.1");
        assert!(
            log.contains(&format!(
                "Accepted publickey for {name} from 127.0.0.1 port {port} "
            )),
            "no login from port {port} in:\n{log}"
        );
        assert!(chunks.iter().all(|c| c.data.len() <= 256 * 1024));
    }
    let interactive = got
        .chunks
        .keys()
        .find(|id| got.text(id).0.contains("typed-42"))
        .expect("the interactive session's recording")
        .clone();
    // Keystrokes on the terminal only: a command's input is data.
    for (id, chunks) in &got.chunks {
        assert_eq!(chunks[0].input, *id == interactive, "{id}");
    }
    let (shown, typed) = got.text(&interactive);
    assert!(
        typed.contains("echo typed-$((6*7))"),
        "keystrokes: {typed:?}"
    );
    let echo = shown.find("typed-42").unwrap();
    assert!(
        shown[..echo].contains("echo typed-$((6*7))"),
        "the typed command shows before its output: {shown:?}"
    );
    let command = command_ids.lock().unwrap()[0].clone();
    assert!(got.text(&command).0.contains("via-5"));

    // The held recording stays in the spool; the others are gone.
    let in_spool = || -> Vec<String> {
        std::fs::read_dir(&spool)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect()
    };
    tokio::task::block_in_place(|| {
        wait_for(
            Duration::from_secs(10),
            "acknowledged recordings to leave the spool",
            || (in_spool().len() == 1).then_some(()),
        )
    });
    assert!(in_spool()[0].starts_with(&command), "{:?}", in_spool());

    // A restart: the next agent sends the held chunks again, byte for byte, and nothing else.
    let held = got.chunks[&command].clone();
    let _ = stop.send(());
    within("the agent to stop", task).await.unwrap().unwrap();
    let (stop, task) = spawn_system_agent(config);
    let mut s = hub.session().await;
    let mut again = Received::default();
    within(
        "the held chunks again",
        receive(&mut s, &mut again, |_| false, |r| r.ended() == 1),
    )
    .await;
    assert_eq!(again.chunks.keys().collect::<Vec<_>>(), vec![&command]);
    let resent = &again.chunks[&command];
    for chunk in resent {
        let first = held.iter().find(|h| h.seq == chunk.seq);
        if let Some(first) = first {
            assert_eq!(first, chunk, "chunk {} changed when sent again", chunk.seq);
        }
    }
    tokio::task::block_in_place(|| {
        wait_for(
            Duration::from_secs(10),
            "the last recording to leave the spool",
            || in_spool().is_empty().then_some(()),
        )
    });
    let _ = stop.send(());
    within("the agent to stop", task).await.unwrap().unwrap();
}

/// Runs the set-user-ID recorder by hand as `user` (`runuser`), as a user may: the spool is named
/// in its own key line. Its file is named as the wrapper names files (with the pid it keeps:
/// `exec`), and no rate limit holds it back. Returns the process and the file's path (its first
/// line of output).
fn record_by_hand(user: &TestUser, spool: &Path, command: &str) -> (std::process::Child, PathBuf) {
    use std::io::BufRead;
    let config = r#"{"writer":"file","file":{"path":"'"$f"'"},"latency":1,"log":{"input":false,"output":true,"window":false},"limit":{"action":"pass"}}"#;
    let script = format!(
        "f={}/$(date +%s%3N)-$$-o-0-unknown.jsonl; echo \"$f\"; \
         TLOG_REC_SESSION_CONF_TEXT='{config}' exec {TLOG} -c '{command}' >/dev/null",
        spool.display()
    );
    let mut child = std::process::Command::new("runuser")
        .args(["-u", user.name.as_str(), "--", "/bin/sh", "-c", &script])
        .current_dir("/")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    (child, PathBuf::from(line.trim()))
}

/// Bytes the spool's files take on disk.
fn spool_allocated(spool: &Path) -> u64 {
    std::fs::read_dir(spool)
        .unwrap()
        .map(|e| e.unwrap().metadata().unwrap().blocks() * 512)
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_recorder_run_by_hand_ships_nothing_of_an_unrecorded_user_and_the_spool_stays_bounded()
{
    require_recorder();
    let _ = tracing_subscriber::fmt()
        .with_env_filter("keyward_agent=debug")
        .with_test_writer()
        .try_init();
    let homes = homes_dir();
    let work = tempfile::tempdir().unwrap();
    let recorded = TestUser::create_in("rr", homes.path());
    let unrecorded = TestUser::create_in("ru", homes.path());
    let (key, _) = client_key(work.path(), "rec");
    let (_installed, wrapper, spool) = install_recording();
    let pki = Pki::new();
    let mut hub = TestHub::start(&pki).await;
    let enrolled = Enrolled::new(&pki, &hub.url, Lifetime::Fresh);
    let mut config = enrolled.config();
    config.users = [&recorded, &unrecorded]
        .iter()
        .map(|u| UserConfig {
            name: u.name.clone(),
            mode: UserMode::Exclusive,
        })
        .collect();
    const SPOOL_MAX: u64 = 1 << 20;
    config.recording = Some(RecordingConfig {
        wrapper,
        spool_dir: spool.clone(),
        spool_max_bytes: SPOOL_MAX,
        ..RecordingConfig::default()
    });
    let (stop, task) = spawn_system_agent(config);
    let mut s = hub.session().await;
    let Msg::Hello(hello) = s.recv().await else {
        panic!("expected Hello")
    };
    assert!(hello.recording, "the agent says it cannot record");
    // The policy records one user and not the other.
    let mut state = desired(1, &recorded, &key);
    let mut not_recorded = state.users[0].clone();
    not_recorded.user = unrecorded.name.to_string();
    not_recorded.recording = None;
    state.users.push(not_recorded);
    s.send_state(enrolled.sign(&state));
    let applied = loop {
        if let Msg::Applied(applied) = s.recv().await {
            break applied;
        }
    };
    assert!(
        applied.users.iter().all(|u| u.error.is_empty()),
        "{applied:?}"
    );

    // The user who is not recorded makes recordings of its own: one still running when the
    // agent finds it, one that has ended. Both are deleted, and nothing of them is shipped.
    let (mut running, running_file) = record_by_hand(&unrecorded, &spool, "echo forged; sleep 8");
    let (mut ended, ended_file) = record_by_hand(&unrecorded, &spool, "echo forged-and-ended");
    assert!(ended.wait().unwrap().success());
    tokio::task::block_in_place(|| {
        wait_for(
            Duration::from_secs(15),
            "the hand-made recordings to be deleted",
            || (!running_file.exists() && !ended_file.exists()).then_some(()),
        )
    });
    // Seen before the agent deleted them: they were the recorder's, in the spool.
    assert!(running_file.starts_with(&spool) && ended_file.starts_with(&spool));

    // The recorded user floods past the spool's bound by hand, without the wrapper's rate limit,
    // while the control plane takes nothing: the spool stays bounded.
    let (mut flood, flood_file) = record_by_hand(
        &recorded,
        &spool,
        "head -c 4000000 /dev/urandom | base64 -w 76",
    );
    // The flood ends before the agent has looked at it once: it is all over the bound.
    assert!(flood.wait().unwrap().success());
    let written = std::fs::metadata(&flood_file).unwrap().len();
    assert!(written > 4 * SPOOL_MAX, "tlog wrote {written} bytes");
    tokio::task::block_in_place(|| {
        wait_for(
            Duration::from_secs(15),
            "the spool to be bounded again",
            // The bound, and the chunks sent and not yet acknowledged (the window).
            || (spool_allocated(&spool) <= 2 * SPOOL_MAX).then_some(()),
        )
    });

    // The control plane takes it now: the recording still arrives, the recorded user's, and
    // what was dropped is said in its chunks, to the byte.
    let mut got = Received::default();
    within(
        "the flood's recording to end",
        receive(&mut s, &mut got, |_| false, |g| g.ended() == 1),
    )
    .await;
    assert_eq!(got.chunks.len(), 1, "only the recorded user's recording");
    let chunks = got.chunks.values().next().unwrap();
    assert!(chunks.iter().all(|c| c.user == recorded.name.as_str()));
    let shipped: u64 = chunks.iter().map(|c| c.data.len() as u64).sum();
    let dropped: u64 = chunks.iter().map(|c| c.dropped_bytes).sum();
    assert!(dropped > 0, "nothing dropped of {written} bytes");
    assert_eq!(
        shipped + dropped,
        written,
        "every byte is shipped or counted"
    );

    let _ = running.wait();
    let _ = stop.send(());
    within("the agent to stop", task).await.unwrap().unwrap();
}
