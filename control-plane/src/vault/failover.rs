//! Following a Vault/OpenBao HA cluster through leader changes.
//!
//! With several node addresses keyward keeps talking to the node that works (the active one).
//! When an operation that is safe to repeat fails in a way another node may not — the node is
//! unreachable, sealed, or a standby that has lost its leader — it looks at every node, moves to
//! the active one and repeats the operation; while no node is active (an election) it waits with
//! full-jitter backoff. All of it within `vault.failover_timeout`. Every node sealed ends it at
//! once: waiting would not help.
//!
//! Only reads, check-and-set writes and SSH certificate signing go through here (a check-and-set
//! write cannot be applied twice, see [`super::lost_write`] for one whose answer was lost; a
//! repeated signature yields a second certificate that reached nobody, see [`super::ssh_ca`]).
//! With one address nothing is retried: an operation fails as it always did and its caller
//! decides.

use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use keyward_common::backoff::Backoff;

use super::VaultError;

/// What a look at every node found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Found {
    /// This node (an index into the addresses) is active.
    Active(usize),
    /// Every node answered, and every one is sealed or not initialised.
    AllSealed,
    /// No node is active yet: an election, nodes restarting, nodes unreachable.
    NoActive,
}

/// Whether another node, or the same one a little later, may succeed where this failed.
pub fn worth_another_node(error: &VaultError) -> bool {
    match error {
        VaultError::Unreachable { .. } | VaultError::Sealed => true,
        // A standby without a leader ("local node not active but active cluster node not
        // found"), a proxy in front of a node that went away, a node shedding load.
        VaultError::Failed { status, .. } => matches!(status, 307 | 429 | 500 | 502 | 503 | 504),
        _ => false,
    }
}

/// Which node keyward talks to, and how long it keeps looking for another.
#[derive(Debug)]
pub struct Failover {
    nodes: usize,
    current: AtomicUsize,
    budget: Duration,
    backoff: Backoff,
}

impl Failover {
    /// `nodes` addresses; an operation gives up looking for a working node after `budget`.
    pub fn new(nodes: usize, budget: Duration) -> Self {
        Self::with_backoff(
            nodes,
            budget,
            Backoff::new(Duration::from_millis(100), Duration::from_secs(2)),
        )
    }

    pub fn with_backoff(nodes: usize, budget: Duration, backoff: Backoff) -> Self {
        Self {
            nodes,
            current: AtomicUsize::new(0),
            budget,
            backoff,
        }
    }

    /// The node operations go to now.
    pub fn current(&self) -> usize {
        self.current.load(Ordering::Relaxed)
    }

    /// Operations go to `node` from now on (a look found it active).
    pub fn settle_on(&self, node: usize) {
        if node < self.nodes {
            self.current.store(node, Ordering::Relaxed);
        }
    }

    /// Runs `op` on the current node; when it fails in a way worth another node, `look`s for the
    /// active node and runs it there, until it succeeds, fails otherwise, or the budget is over
    /// (then the last failure is returned).
    pub async fn run<T, Op, OpFut, Look, LookFut>(
        &self,
        mut op: Op,
        mut look: Look,
    ) -> Result<T, VaultError>
    where
        Op: FnMut(usize) -> OpFut,
        OpFut: Future<Output = Result<T, VaultError>>,
        Look: FnMut() -> LookFut,
        LookFut: Future<Output = Found>,
    {
        let deadline = Instant::now() + self.budget;
        let mut backoff = self.backoff.clone();
        backoff.reset();
        let mut node = self.current();
        loop {
            let error = match op(node).await {
                Ok(value) => return Ok(value),
                Err(error) => error,
            };
            if self.nodes < 2 || !worth_another_node(&error) {
                return Err(error);
            }
            tracing::warn!(node, error = %error, "Vault node failed; looking for the active node");
            node = loop {
                if Instant::now() >= deadline {
                    return Err(error);
                }
                let found = look().await;
                match found {
                    Found::AllSealed => return Err(VaultError::Sealed),
                    Found::Active(other) if other != node => break other,
                    // No node active yet, or the one that failed still says it is: wait.
                    Found::Active(_) | Found::NoActive => {
                        let left = deadline.saturating_duration_since(Instant::now());
                        let wait = backoff.next_delay(&mut rand::thread_rng()).min(left);
                        tokio::time::sleep(wait).await;
                        if let Found::Active(same) = found {
                            break same;
                        }
                    }
                }
            };
            self.settle_on(node);
            tracing::info!(node, "Vault operations go to this node now");
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use super::*;

    fn unreachable() -> VaultError {
        VaultError::Unreachable {
            address: "http://127.0.0.1:1".into(),
            reason: "connection refused".into(),
        }
    }

    fn quick(nodes: usize, budget_ms: u64) -> Failover {
        Failover::with_backoff(
            nodes,
            Duration::from_millis(budget_ms),
            Backoff::new(Duration::from_millis(1), Duration::from_millis(5)),
        )
    }

    #[test]
    fn only_failures_another_node_may_not_have_are_worth_a_retry() {
        let failed = |status| VaultError::Failed {
            operation: "write vps/t/admin_ssh".into(),
            status,
            message: String::new(),
        };
        assert!(worth_another_node(&unreachable()));
        assert!(worth_another_node(&VaultError::Sealed));
        assert!(worth_another_node(&failed(500)));
        assert!(worth_another_node(&failed(503)));
        assert!(!worth_another_node(&failed(400)));
        assert!(!worth_another_node(&failed(404)));
        assert!(!worth_another_node(&VaultError::Denied {
            operation: "read".into()
        }));
        assert!(!worth_another_node(&VaultError::CasMismatch {
            path: "vps/t/admin_ssh".into(),
            cas: 3
        }));
    }

    #[tokio::test]
    async fn a_dead_node_is_left_for_the_active_one_and_stays_left() {
        let failover = quick(3, 5_000);
        let tried = Mutex::new(Vec::new());
        let got = failover
            .run(
                |node| {
                    tried.lock().unwrap().push(node);
                    async move {
                        if node == 0 {
                            Err(unreachable())
                        } else {
                            Ok(node)
                        }
                    }
                },
                || async { Found::Active(2) },
            )
            .await
            .unwrap();
        assert_eq!(got, 2);
        assert_eq!(*tried.lock().unwrap(), [0, 2]);
        assert_eq!(failover.current(), 2);
        // The next operation starts on the node that worked.
        let next = failover
            .run(|node| async move { Ok(node) }, || async { Found::NoActive })
            .await
            .unwrap();
        assert_eq!(next, 2);
    }

    #[tokio::test]
    async fn it_waits_through_an_election() {
        let failover = quick(3, 5_000);
        let looks = Mutex::new(0);
        let got = failover
            .run(
                |node| async move {
                    if node == 1 {
                        Ok("done")
                    } else {
                        Err(VaultError::Sealed)
                    }
                },
                || {
                    let mut n = looks.lock().unwrap();
                    *n += 1;
                    let found = if *n < 4 {
                        Found::NoActive
                    } else {
                        Found::Active(1)
                    };
                    async move { found }
                },
            )
            .await
            .unwrap();
        assert_eq!(got, "done");
        assert_eq!(*looks.lock().unwrap(), 4);
    }

    #[tokio::test]
    async fn the_retries_are_bounded_and_return_the_last_failure() {
        let failover = quick(3, 150);
        let started = Instant::now();
        let err = failover
            .run(
                |_| async { Err::<(), _>(unreachable()) },
                || async { Found::NoActive },
            )
            .await
            .unwrap_err();
        assert!(matches!(err, VaultError::Unreachable { .. }), "{err}");
        let took = started.elapsed();
        assert!(took >= Duration::from_millis(150), "{took:?}");
        assert!(took < Duration::from_secs(3), "{took:?}");
    }

    #[tokio::test]
    async fn every_node_sealed_ends_it_at_once() {
        let failover = quick(3, 60_000);
        let started = Instant::now();
        let err = failover
            .run(
                |_| async { Err::<(), _>(VaultError::Sealed) },
                || async { Found::AllSealed },
            )
            .await
            .unwrap_err();
        assert!(matches!(err, VaultError::Sealed));
        assert!(started.elapsed() < Duration::from_secs(5));
    }

    #[tokio::test]
    async fn other_failures_and_single_nodes_are_not_retried() {
        let calls = Mutex::new(0);
        let op = |_| {
            *calls.lock().unwrap() += 1;
            async {
                Err::<(), _>(VaultError::CasMismatch {
                    path: "vps/t/admin_ssh".into(),
                    cas: 1,
                })
            }
        };
        let err = quick(3, 60_000)
            .run(op, || async { Found::Active(1) })
            .await
            .unwrap_err();
        assert!(matches!(err, VaultError::CasMismatch { .. }));
        assert_eq!(*calls.lock().unwrap(), 1);

        let looks = Mutex::new(0);
        let err = quick(1, 60_000)
            .run(
                |_| async { Err::<(), _>(unreachable()) },
                || {
                    *looks.lock().unwrap() += 1;
                    async { Found::Active(0) }
                },
            )
            .await
            .unwrap_err();
        assert!(matches!(err, VaultError::Unreachable { .. }));
        assert_eq!(*looks.lock().unwrap(), 0);
    }
}
