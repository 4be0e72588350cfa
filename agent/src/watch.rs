//! Notices outside changes to managed users' `~/.ssh/authorized_keys`.
//!
//! For each target (a user and their home) the watcher holds two inotify watches through
//! `notify`: the home directory, non-recursively (for `.ssh` being created, deleted, renamed,
//! replaced or re-moded, and the home itself changing), and `.ssh` when it exists (for
//! `authorized_keys` being written, deleted, renamed, replaced or re-moded, and `.ssh` itself
//! going away). When `.ssh` changes as a whole, both watches of the target are rebuilt, so a
//! recreated `.ssh` is watched again.
//!
//! The watcher only reports: it sends one [`Changed`] per target on a tokio channel at most every
//! [`DEBOUNCE`] (trailing edge: 50 ms after the first change of a burst, so the event describes
//! the state after the burst), and the caller re-applies the desired state, which also produces
//! the drift report. The writer's own temp files are ignored; its rename does produce one
//! event, whose re-apply finds nothing to change. Reads (sshd checking a login) are ignored too,
//! so an idle host wakes for nothing.
//!
//! [`watch_users`] (and [`watch_homes`], for homes that are not the users' own) sets up one
//! watcher per configured user for the runtime, which only needs to know whose file changed.

use std::path::{Path, PathBuf};
use std::sync::mpsc as std_mpsc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use keyward_common::UnixUser;
use notify::{Event, EventKind, RecommendedWatcher, RecursiveMode, Watcher as _};
use tokio::sync::mpsc;

use crate::config::AgentConfig;
use crate::writer::{self, AUTHORIZED_KEYS, TEMP_PREFIX};

/// A burst of changes within this window becomes one event.
pub const DEBOUNCE: Duration = Duration::from_millis(50);

/// A user whose file is watched.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WatchTarget {
    pub user: UnixUser,
    /// Absolute path of the user's home directory.
    pub home: PathBuf,
}

/// Something changed in a target's `.ssh`: re-apply its desired state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Changed {
    pub user: UnixUser,
    pub home: PathBuf,
}

#[derive(Debug, thiserror::Error)]
pub enum WatchError {
    #[error("watching {}: {error}", path.display())]
    Notify { path: PathBuf, error: notify::Error },
    #[error("starting the watcher thread: {0}")]
    Thread(std::io::Error),
}

/// The running watcher. Dropping it stops it.
#[derive(Debug)]
pub struct Watcher {
    control: std_mpsc::Sender<Msg>,
    thread: Option<JoinHandle<()>>,
}

/// What the notify callbacks and [`Watcher`] tell the watcher thread.
#[derive(Debug)]
enum Msg {
    /// A relevant change for target `target`; `whole_dir`: `.ssh` (or the home) itself changed,
    /// so the target's watches must be rebuilt.
    Change {
        target: usize,
        whole_dir: bool,
    },
    /// The kernel queue overflowed: anything may have changed.
    Rescan,
    Stop,
}

impl Watcher {
    /// Starts watching `targets`; events go to `events` until it is closed or the watcher is
    /// dropped. Fails if a home cannot be watched (for example, it does not exist).
    pub fn start(
        targets: Vec<WatchTarget>,
        events: mpsc::Sender<Changed>,
    ) -> Result<Self, WatchError> {
        let (control, inbox) = std_mpsc::channel();
        let mut arms = Vec::with_capacity(targets.len());
        for (index, target) in targets.iter().enumerate() {
            arms.push(Arm::new(index, &target.home, &control)?);
        }
        let thread = std::thread::Builder::new()
            .name("keyward-watch".into())
            .spawn({
                let control = control.clone();
                move || run(targets, arms, inbox, control, events)
            })
            .map_err(WatchError::Thread)?;
        Ok(Self {
            control,
            thread: Some(thread),
        })
    }

    /// Stops the watcher and waits for its thread.
    pub fn stop(mut self) {
        let _ = self.control.send(Msg::Stop);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Drop for Watcher {
    fn drop(&mut self) {
        // Not joined here: the thread may be waiting on a full channel; it exits on its next wake.
        let _ = self.control.send(Msg::Stop);
    }
}

/// Keeps the file watchers running while held.
#[derive(Debug)]
pub struct WatchGuard {
    _watchers: Vec<Watcher>,
}

/// How many change notices may wait for the runtime (one burst per user is coalesced anyway).
const WATCH_QUEUE: usize = 64;

/// Starts watching `targets` (user and home directory); the receiver names the user whose file
/// changed. One watcher per user, so a missing home (a user not created yet) is logged and skipped
/// without leaving the others unwatched.
pub fn watch_homes(targets: Vec<(UnixUser, PathBuf)>) -> (WatchGuard, mpsc::Receiver<UnixUser>) {
    let (changed_tx, mut changed_rx) = mpsc::channel::<Changed>(WATCH_QUEUE);
    let (user_tx, user_rx) = mpsc::channel(WATCH_QUEUE);
    let mut watchers = Vec::new();
    for (user, home) in targets {
        let target = WatchTarget {
            user: user.clone(),
            home: home.clone(),
        };
        match Watcher::start(vec![target], changed_tx.clone()) {
            Ok(w) => watchers.push(w),
            Err(e) => tracing::warn!(user = %user, home = %home.display(), error = %e,
                "outside edits of this user's file will not be noticed"),
        }
    }
    drop(changed_tx);
    // The runtime only needs the user; this ends when every watcher has stopped.
    tokio::spawn(async move {
        while let Some(changed) = changed_rx.recv().await {
            if user_tx.send(changed.user).await.is_err() {
                break;
            }
        }
    });
    (
        WatchGuard {
            _watchers: watchers,
        },
        user_rx,
    )
}

/// [`watch_homes`] for the configured users, with their homes from the user database.
pub fn watch_users(config: &AgentConfig) -> (WatchGuard, mpsc::Receiver<UnixUser>) {
    let targets = config
        .users
        .iter()
        .filter_map(|u| match writer::resolve(&u.name) {
            Ok(account) => Some((u.name.clone(), account.home)),
            Err(e) => {
                tracing::warn!(user = %u.name, error = %e, "not watched");
                None
            }
        })
        .collect();
    watch_homes(targets)
}

/// The inotify watches of one target.
struct Arm {
    _home: RecommendedWatcher,
    _ssh: Option<RecommendedWatcher>,
}

impl Arm {
    fn new(index: usize, home: &Path, control: &std_mpsc::Sender<Msg>) -> Result<Self, WatchError> {
        let ssh = home.join(".ssh");
        let notify_change = {
            let control = control.clone();
            move |whole_dir: bool| {
                let _ = control.send(Msg::Change {
                    target: index,
                    whole_dir,
                });
            }
        };

        let home_watch = {
            let (home_path, ssh_path) = (home.to_path_buf(), ssh.clone());
            let notify_change = notify_change.clone();
            // Only `.ssh` and the home itself; the rest of the home is none of our business.
            let on_change = move |event: &Event| {
                if event
                    .paths
                    .iter()
                    .any(|p| *p == ssh_path || *p == home_path)
                {
                    notify_change(true);
                }
            };
            watch(home, on_change, control)?
        };

        // A `.ssh` that is a symlink is not followed (the writer refuses it anyway; changes to
        // the link itself show up on the home watch).
        let ssh_is_dir = std::fs::symlink_metadata(&ssh).is_ok_and(|m| m.is_dir());
        let ssh_watch = if ssh_is_dir {
            let (ssh_path, file_path) = (ssh.clone(), ssh.join(AUTHORIZED_KEYS));
            let on_change = move |event: &Event| {
                let whole_dir = event.paths.contains(&ssh_path);
                if whole_dir || event.paths.contains(&file_path) {
                    notify_change(whole_dir);
                }
            };
            match watch(&ssh, on_change, control) {
                Ok(watcher) => Some(watcher),
                // Gone between the check and the watch: the home watch reports that.
                Err(error) => {
                    tracing::debug!(%error, "could not watch .ssh");
                    None
                }
            }
        } else {
            None
        };
        Ok(Self {
            _home: home_watch,
            _ssh: ssh_watch,
        })
    }
}

/// A non-recursive watch of `dir` calling `on_change` for every mutating event whose paths are
/// not the writer's temp files.
fn watch(
    dir: &Path,
    on_change: impl Fn(&Event) + Send + 'static,
    control: &std_mpsc::Sender<Msg>,
) -> Result<RecommendedWatcher, WatchError> {
    let control = control.clone();
    let mut watcher = notify::recommended_watcher(move |result: notify::Result<Event>| {
        match result {
            Ok(event) => match event.kind {
                // Reads (sshd at every login) and opens are not changes.
                EventKind::Access(_) => {}
                EventKind::Other if event.need_rescan() => {
                    let _ = control.send(Msg::Rescan);
                }
                _ if event.paths.iter().any(|p| is_temp_file(p)) => {}
                _ => on_change(&event),
            },
            Err(error) => tracing::warn!(%error, "file watcher error"),
        }
    })
    .map_err(|error| WatchError::Notify {
        path: dir.to_path_buf(),
        error,
    })?;
    watcher
        .watch(dir, RecursiveMode::NonRecursive)
        .map_err(|error| WatchError::Notify {
            path: dir.to_path_buf(),
            error,
        })?;
    Ok(watcher)
}

fn is_temp_file(path: &Path) -> bool {
    path.file_name()
        .and_then(|n| n.to_str())
        .is_some_and(|n| n.starts_with(TEMP_PREFIX))
}

/// The watcher thread: debounces per target, rebuilds watches, sends events.
fn run(
    targets: Vec<WatchTarget>,
    mut arms: Vec<Arm>,
    inbox: std_mpsc::Receiver<Msg>,
    control: std_mpsc::Sender<Msg>,
    events: mpsc::Sender<Changed>,
) {
    let mut due: Vec<Option<Instant>> = vec![None; targets.len()];
    let mut rebuild = vec![false; targets.len()];
    loop {
        let next_due = due.iter().flatten().min().copied();
        let msg = match next_due {
            None => inbox
                .recv()
                .map_err(|_| std_mpsc::RecvTimeoutError::Disconnected),
            Some(at) => inbox.recv_timeout(at.saturating_duration_since(Instant::now())),
        };
        let mut mark = |target: usize, whole_dir: bool| {
            if let Some(slot) = due.get_mut(target) {
                slot.get_or_insert_with(|| Instant::now() + DEBOUNCE);
                rebuild[target] |= whole_dir;
            }
        };
        match msg {
            Ok(Msg::Change { target, whole_dir }) => mark(target, whole_dir),
            Ok(Msg::Rescan) => (0..targets.len()).for_each(|t| mark(t, true)),
            Ok(Msg::Stop) | Err(std_mpsc::RecvTimeoutError::Disconnected) => return,
            Err(std_mpsc::RecvTimeoutError::Timeout) => {}
        }
        let now = Instant::now();
        for (index, target) in targets.iter().enumerate() {
            if due[index].is_none_or(|at| at > now) {
                continue;
            }
            due[index] = None;
            if std::mem::take(&mut rebuild[index]) {
                // Rebuilt before the event is sent, so that a change made right after the
                // caller's re-apply is seen by the new watches.
                match Arm::new(index, &target.home, &control) {
                    Ok(arm) => arms[index] = arm,
                    Err(error) => {
                        tracing::warn!(user = %target.user, %error, "cannot re-arm the watch")
                    }
                }
            }
            let changed = Changed {
                user: target.user.clone(),
                home: target.home.clone(),
            };
            if events.blocking_send(changed).is_err() {
                return; // The receiver is gone: nobody to tell.
            }
        }
    }
}
