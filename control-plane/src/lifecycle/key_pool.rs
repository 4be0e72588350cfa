//! A pool of pre-generated key pairs for the deployment's algorithm, so that an interactive
//! rotate or regenerate does not wait for an RSA-4096 prime search (about half a second, up to a
//! few seconds: BENCHMARKS.md).
//!
//! - Only when generation is expensive: RSA-4096. Ed25519 keys take microseconds; their pool is
//!   always empty and nothing counts as a hit or a miss.
//! - In memory only: the keys are never written anywhere before a key set takes one, and then
//!   only as every key is (Vault). Each key is handed out once ([`KeyPool::take`] moves it out).
//!   A key still in the pool is wiped when dropped ([`UnnamedKey`]'s secret components zeroize
//!   themselves), e.g. when the control plane stops.
//! - Bounded (`rotation.key_pool_size`, 0 turns it off) and refilled in the background, one key
//!   at a time on a blocking thread that takes one of the lifecycle's CPU slots like any other
//!   generation ([`KeyLifecycle::fill_key_pool`]), so that refilling never takes more than one
//!   core from request handling and bulk jobs.
//! - A key set whose policy asks for another algorithm, and every caller while the pool is empty,
//!   generate inline as before.
//!
//! Metrics: `keyward_key_pool_keys` (gauge), `keyward_key_pool_hits_total` and
//! `keyward_key_pool_misses_total` (counters; docs/OPERATIONS.md).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use keyward_common::{KeyAlgorithm, UnnamedKey};
use tokio::sync::Notify;

use super::KeyLifecycle;

/// The pre-generated keys and how many are being made.
#[derive(Debug, Default)]
struct Slots {
    keys: Vec<UnnamedKey>,
    /// Keys being generated for the pool: counted against its capacity, so that two refills
    /// never make more than it holds.
    in_flight: usize,
}

/// A bounded pool of key pairs of one algorithm.
#[derive(Debug)]
pub struct KeyPool {
    algorithm: KeyAlgorithm,
    capacity: usize,
    slots: Mutex<Slots>,
    /// Told when a key was taken (or a refill failed): a refill looks again.
    wanted: Notify,
    /// Keys handed out, and takes that found the pool empty (this pool's share of the metrics).
    hits: AtomicU64,
    misses: AtomicU64,
}

/// Whether making a key of `algorithm` is expensive enough to make it ahead of time.
fn worth_pooling(algorithm: KeyAlgorithm) -> bool {
    match algorithm {
        KeyAlgorithm::Rsa4096 => true,
        KeyAlgorithm::Ed25519 => false,
    }
}

impl KeyPool {
    /// A pool of at most `capacity` keys of `algorithm`; none when the algorithm is cheap.
    pub fn new(algorithm: KeyAlgorithm, capacity: usize) -> Self {
        Self {
            algorithm,
            capacity: if worth_pooling(algorithm) {
                capacity
            } else {
                0
            },
            slots: Mutex::default(),
            wanted: Notify::new(),
            hits: AtomicU64::new(0),
            misses: AtomicU64::new(0),
        }
    }

    /// A pool that holds nothing: every key is generated when it is needed.
    pub fn disabled() -> Self {
        Self::new(KeyAlgorithm::Ed25519, 0)
    }

    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Keys ready now.
    pub fn len(&self) -> usize {
        self.lock().keys.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Keys this pool handed out so far.
    pub fn hits(&self) -> u64 {
        self.hits.load(Ordering::Relaxed)
    }

    /// Keys of its algorithm generated on the path so far because this pool was empty.
    pub fn misses(&self) -> u64 {
        self.misses.load(Ordering::Relaxed)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Slots> {
        // A panic while holding the lock leaves the keys as they were: still usable.
        self.slots
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// A pre-generated key of `algorithm`, moved out of the pool (no one else gets it), or
    /// `None`: the pool is empty, off, or holds another algorithm. A taken key wakes the refill.
    pub fn take(&self, algorithm: KeyAlgorithm) -> Option<UnnamedKey> {
        if self.capacity == 0 || algorithm != self.algorithm {
            return None;
        }
        let (key, left) = {
            let mut slots = self.lock();
            let key = slots.keys.pop();
            (key, slots.keys.len())
        };
        self.wanted.notify_one();
        record_size(left);
        if key.is_some() {
            self.hits.fetch_add(1, Ordering::Relaxed);
            metrics::counter!("keyward_key_pool_hits_total").increment(1);
        } else {
            self.misses.fetch_add(1, Ordering::Relaxed);
            metrics::counter!("keyward_key_pool_misses_total").increment(1);
        }
        key
    }

    /// Reserves room for one more key, if the pool (with the keys being made) is not full.
    fn reserve(&self) -> bool {
        let mut slots = self.lock();
        let room = slots.keys.len() + slots.in_flight < self.capacity;
        if room {
            slots.in_flight += 1;
        }
        room
    }

    /// Fills a reservation with a key, or gives it up (`None`: generation failed).
    fn fill(&self, key: Option<UnnamedKey>) {
        let size = {
            let mut slots = self.lock();
            slots.in_flight = slots.in_flight.saturating_sub(1);
            if let Some(key) = key {
                slots.keys.push(key);
            }
            slots.keys.len()
        };
        record_size(size);
    }
}

fn record_size(size: usize) {
    #[allow(clippy::cast_precision_loss)]
    metrics::gauge!("keyward_key_pool_keys").set(size as f64);
}

/// How long a refill waits after a failed generation before it tries again.
const RETRY_AFTER: Duration = Duration::from_secs(5);

impl KeyLifecycle {
    /// The pool this lifecycle takes new keys from.
    pub fn key_pool(&self) -> &KeyPool {
        &self.pool
    }

    /// Keeps the key pool full, one key at a time, until the task is aborted (the server's
    /// shutdown). Returns at once when the pool is off. A key being made when the task is
    /// aborted is dropped (wiped) when its blocking thread finishes.
    pub async fn fill_key_pool(self: Arc<Self>) {
        let pool = &self.pool;
        if pool.capacity == 0 {
            return;
        }
        let algorithm = pool.algorithm;
        loop {
            if !pool.reserve() {
                pool.wanted.notified().await;
                continue;
            }
            let key = match self.cpu(move || UnnamedKey::generate(algorithm)).await {
                Ok(Ok(key)) => Some(key),
                Ok(Err(e)) => {
                    tracing::error!(error = %e, "could not make a key for the key pool");
                    None
                }
                Err(e) => {
                    tracing::error!(error = %e, "could not make a key for the key pool");
                    None
                }
            };
            let failed = key.is_none();
            pool.fill(key);
            if failed {
                tokio::time::sleep(RETRY_AFTER).await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Ed25519 keys stand in for RSA ones (quick to make); the pool's algorithm is forced.
    fn pool_of(capacity: usize) -> KeyPool {
        KeyPool {
            capacity,
            ..KeyPool::new(KeyAlgorithm::Ed25519, 0)
        }
    }

    fn add(pool: &KeyPool) -> bool {
        if !pool.reserve() {
            return false;
        }
        pool.fill(Some(UnnamedKey::generate(KeyAlgorithm::Ed25519).unwrap()));
        true
    }

    #[test]
    fn the_pool_holds_at_most_its_capacity_counting_keys_being_made() {
        let pool = pool_of(3);
        assert!(add(&pool));
        assert!(add(&pool));
        assert!(pool.reserve(), "a third key may be made");
        assert!(!pool.reserve(), "full: two ready and one being made");
        pool.fill(None);
        assert_eq!(pool.len(), 2, "a failed generation gives its room back");
        assert!(add(&pool));
        assert!(!add(&pool));
        assert_eq!(pool.len(), 3);
    }

    #[test]
    fn each_key_is_handed_out_once() {
        let pool = pool_of(4);
        while add(&pool) {}
        let mut seen = std::collections::HashSet::new();
        while let Some(key) = pool.take(KeyAlgorithm::Ed25519) {
            let key = key.named("c").unwrap();
            assert!(
                seen.insert(key.fingerprint().clone()),
                "a key handed out twice"
            );
        }
        assert_eq!(seen.len(), 4);
        assert!(pool.is_empty());
        assert_eq!((pool.hits(), pool.misses()), (4, 1));
    }

    #[test]
    fn an_empty_off_or_other_algorithm_pool_gives_nothing() {
        let pool = pool_of(2);
        assert!(pool.take(KeyAlgorithm::Ed25519).is_none(), "empty");
        assert!(add(&pool));
        assert!(
            pool.take(KeyAlgorithm::Rsa4096).is_none(),
            "another algorithm"
        );
        assert_eq!(pool.len(), 1);
        assert!(KeyPool::disabled().take(KeyAlgorithm::Ed25519).is_none());
        assert_eq!(KeyPool::disabled().capacity(), 0);
        assert_eq!(
            KeyPool::new(KeyAlgorithm::Ed25519, 16).capacity(),
            0,
            "Ed25519 keys are not pooled"
        );
        assert_eq!(KeyPool::new(KeyAlgorithm::Rsa4096, 16).capacity(), 16);
    }

    /// What the pool holds wipes its secret components when dropped (also when the pool is).
    #[test]
    fn pooled_keys_zeroize_on_drop() {
        fn zeroizes_on_drop<T: zeroize::ZeroizeOnDrop>() {}
        zeroizes_on_drop::<UnnamedKey>();
        // And what a key set gets from it: the private half as a `Zeroizing<String>`.
        zeroizes_on_drop::<zeroize::Zeroizing<String>>();
    }

    #[tokio::test]
    async fn a_rotation_takes_a_pooled_key_and_generates_one_when_the_pool_is_empty() {
        use crate::caller::Caller;
        use crate::lifecycle::Replace;
        use crate::lifecycle::tests::{fixture, new_tenant};
        use keyward_common::KeyKind;

        let mut f = fixture().await;
        f.lifecycle.pool = pool_of(1);
        let caller = Caller::system();
        let tenant = new_tenant().tenant_id;
        // An empty pool: both keys are generated on the path.
        f.lifecycle
            .create_tenant(&caller, new_tenant())
            .await
            .unwrap();
        assert!(add(&f.lifecycle.pool));
        let rotated = f
            .lifecycle
            .replace_key(&caller, &tenant, KeyKind::Tenant, Replace::Rotate)
            .await
            .unwrap();
        assert!(
            f.lifecycle.pool.is_empty(),
            "the rotation took the pooled key"
        );
        assert!(
            rotated
                .public_key
                .ends_with(&format!(" keyward:{tenant}:tenant:2"))
        );
        let regenerated = f
            .lifecycle
            .replace_key(&caller, &tenant, KeyKind::Tenant, Replace::Regenerate)
            .await
            .unwrap();
        assert_eq!(regenerated.generation, 3, "generated on the path");
        assert_ne!(regenerated.fingerprint, rotated.fingerprint);
    }

    #[tokio::test]
    async fn the_refill_fills_the_pool_to_its_capacity_and_no_further() {
        use crate::lifecycle::tests::fixture;

        let mut f = fixture().await;
        f.lifecycle.pool = pool_of(3);
        let lifecycle = Arc::new(f.lifecycle);
        let refill = tokio::spawn(lifecycle.clone().fill_key_pool());
        let pool = lifecycle.key_pool();
        let holds = |n: usize| {
            tokio::time::timeout(Duration::from_secs(30), async move {
                while pool.len() < n {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
            })
        };
        assert!(holds(3).await.is_ok(), "the pool filled");
        assert!(pool.take(KeyAlgorithm::Ed25519).is_some());
        assert!(holds(3).await.is_ok(), "a taken key was replaced");
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(pool.len(), 3);
        assert_eq!(pool.lock().in_flight, 0);
        refill.abort();
    }

    #[test]
    fn a_taken_key_wakes_the_refill() {
        let pool = pool_of(1);
        assert!(add(&pool));
        assert!(pool.take(KeyAlgorithm::Ed25519).is_some());
        // The notification is stored until a refill waits for it.
        let woken = futures::FutureExt::now_or_never(pool.wanted.notified());
        assert!(woken.is_some());
    }
}
