//! The control plane's agent endpoints this agent may dial, and which one it dials next.
//!
//! Replicas of the control plane serve the same desired state (each reads it from the shared
//! database), so an agent may reach any of them. It starts at a random one of its list — ten
//! thousand agents given the same list spread over the replicas instead of all dialling the
//! first — and moves to the next after every failed dial and every ended stream, so a replica that
//! goes away costs one backoff pause (full jitter, `keyward_common::backoff`). A DNS name with
//! several addresses is tried address by address at each dial, in the resolver's order.

/// A non-empty ring of `https://` gRPC URLs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoints {
    urls: Vec<String>,
    current: usize,
}

impl Endpoints {
    /// `configured` when it names any, else `enrolled` (the URL the control plane gave at
    /// enrollment); the first dial goes to entry `start` modulo the list's length.
    pub fn new(configured: &[String], enrolled: &str, start: usize) -> Self {
        let urls = if configured.is_empty() {
            vec![enrolled.to_owned()]
        } else {
            configured.to_vec()
        };
        let current = start % urls.len();
        Self { urls, current }
    }

    /// The endpoint to dial now.
    pub fn current(&self) -> &str {
        &self.urls[self.current]
    }

    /// The current endpoint failed or its stream ended: the next dial goes to the next one.
    pub fn advance(&mut self) {
        self.current = (self.current + 1) % self.urls.len();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn urls(n: usize) -> Vec<String> {
        (0..n)
            .map(|i| format!("https://cp-{i}.example:8444"))
            .collect()
    }

    #[test]
    fn the_enrolled_url_serves_when_none_is_configured() {
        let mut e = Endpoints::new(&[], "https://enrolled.example:8444", 7);
        assert_eq!(e.current(), "https://enrolled.example:8444");
        e.advance();
        assert_eq!(e.current(), "https://enrolled.example:8444");
    }

    #[test]
    fn dials_start_anywhere_and_go_round_the_list() {
        let list = urls(3);
        let mut e = Endpoints::new(&list, "https://enrolled.example:8444", 4);
        let seen: Vec<String> = (0..6)
            .map(|_| {
                let url = e.current().to_owned();
                e.advance();
                url
            })
            .collect();
        assert_eq!(seen[..3], [&list[1], &list[2], &list[0]].map(String::clone));
        assert_eq!(seen[3..], seen[..3]);
    }

    #[test]
    fn random_starts_spread_agents_over_the_list() {
        let list = urls(3);
        let mut per_endpoint = [0usize; 3];
        for _ in 0..3_000 {
            let e = Endpoints::new(&list, "unused", rand::random());
            let i = list.iter().position(|u| u == e.current()).unwrap();
            per_endpoint[i] += 1;
        }
        // Uniform: each gets about a thousand; far from all on one.
        assert!(per_endpoint.iter().all(|&n| n > 800), "{per_endpoint:?}");
    }
}
