//! Bounded polling: [`wait_for`] for synchronous tests, [`eventually`] for async ones. Both
//! panic with what they waited for once the bound is over.

use std::future::Future;
use std::time::{Duration, Instant};

/// Polls `check` every 10 ms until it returns `Some`, or panics after `timeout` with `what`.
pub fn wait_for<T>(timeout: Duration, what: &str, mut check: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = check() {
            return value;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Polls `check` until it returns `Some`, for at most `timeout` (pausing 10 ms, doubling up to
/// 200 ms); panics with `what` otherwise. The bound holds a check that never answers too (one
/// stuck on a request): it is cut at the deadline.
pub async fn eventually<T, F, Fut>(what: &str, timeout: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    let mut pause = Duration::from_millis(10);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, check()).await {
            Ok(Some(value)) => return value,
            Ok(None) => {}
            Err(_) => {
                panic!(
                    "timed out after {timeout:?} waiting for {what} (the last check was still running)"
                )
            }
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(Duration::from_millis(200));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wait_for_returns_the_first_some() {
        let mut n = 0;
        let got = wait_for(Duration::from_secs(5), "n to reach 3", || {
            n += 1;
            (n == 3).then_some(n)
        });
        assert_eq!(got, 3);
    }

    #[test]
    #[should_panic(expected = "waiting for the impossible")]
    fn wait_for_is_bounded() {
        wait_for(Duration::from_millis(50), "the impossible", || None::<()>);
    }

    #[tokio::test]
    async fn eventually_returns_the_first_some() {
        let mut n = 0;
        let got = eventually("n to reach 3", Duration::from_secs(5), || {
            n += 1;
            let v = n;
            async move { (v == 3).then_some(v) }
        })
        .await;
        assert_eq!(got, 3);
    }

    #[tokio::test]
    #[should_panic(expected = "waiting for the impossible")]
    async fn eventually_is_bounded() {
        eventually("the impossible", Duration::from_millis(50), || async {
            None::<()>
        })
        .await;
    }
}
