//! Exponential backoff with full jitter: each wait is uniform in `[0, ceiling]`, where the
//! ceiling doubles from a base up to a cap. A thousand agents cut off by one control plane
//! restart, or replicas that lost their database together, do not all come back in the same
//! instant (the "full jitter" of AWS's "Exponential Backoff and Jitter").

use std::time::Duration;

use rand::Rng;

#[derive(Debug, Clone)]
pub struct Backoff {
    base: Duration,
    cap: Duration,
    attempt: u32,
}

impl Backoff {
    /// Retries wait up to `base` first, doubling up to `cap`.
    pub const fn new(base: Duration, cap: Duration) -> Self {
        Self {
            base,
            cap,
            attempt: 0,
        }
    }

    /// The upper bound of the wait before retry number `attempt` (0-based).
    pub fn ceiling(&self, attempt: u32) -> Duration {
        let factor = 1u32.checked_shl(attempt.min(16)).unwrap_or(u32::MAX);
        self.base.saturating_mul(factor).min(self.cap)
    }

    /// The wait before the next attempt.
    pub fn next_delay(&mut self, rng: &mut impl Rng) -> Duration {
        let ceiling = self.ceiling(self.attempt);
        self.attempt = self.attempt.saturating_add(1);
        let millis = u64::try_from(ceiling.as_millis()).unwrap_or(u64::MAX);
        Duration::from_millis(rng.gen_range(0..=millis))
    }

    /// How many waits since the last reset.
    pub fn attempts(&self) -> u32 {
        self.attempt
    }

    /// After a success: the next failure starts the schedule afresh.
    pub fn reset(&mut self) {
        self.attempt = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_ceiling_doubles_from_the_base_to_the_cap() {
        let b = Backoff::new(Duration::from_millis(200), Duration::from_secs(30));
        let ms = |a| b.ceiling(a).as_millis();
        assert_eq!(
            (0..10).map(ms).collect::<Vec<_>>(),
            [200, 400, 800, 1600, 3200, 6400, 12800, 25600, 30000, 30000]
        );
        assert_eq!(b.ceiling(u32::MAX), Duration::from_secs(30));
    }

    #[test]
    fn delays_are_jittered_below_the_ceiling_until_reset() {
        let mut rng = rand::thread_rng();
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_secs(5));
        let delays: Vec<Duration> = (0..40).map(|_| b.next_delay(&mut rng)).collect();
        for (attempt, d) in delays.iter().enumerate() {
            assert!(*d <= b.ceiling(attempt as u32), "{attempt}: {d:?}");
        }
        // Jittered: forty waits are not all the same.
        assert!(delays.iter().any(|d| *d != delays[0]));
        assert_eq!(b.attempts(), 40);
        b.reset();
        assert_eq!(b.attempts(), 0);
        assert!(b.next_delay(&mut rng) <= Duration::from_millis(100));
    }
}
