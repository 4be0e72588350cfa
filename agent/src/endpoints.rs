//! The control plane's agent endpoints this agent may dial, and which one it dials next.
//!
//! Replicas of the control plane serve the same desired state (each reads it from the shared
//! database), so an agent may reach any of them. Each agent goes round its list in an order of
//! its own, drawn at start: ten thousand agents given the same list spread over the replicas
//! instead of all dialling the first, and when a replica goes away its agents spread over the
//! others instead of all moving to the one after it in the list (measured by `keyward-bench
//! replicas`: with the list's own order, killing one of three replicas sent all its 3,389 agents
//! to the same survivor). An agent moves to the next of its order after every failed dial and
//! every ended stream, so a replica that goes away costs one backoff pause (full jitter,
//! `keyward_common::backoff`). A DNS name with several addresses is tried address by address at
//! each dial, in the resolver's order.

use rand::Rng;
use rand::seq::SliceRandom as _;

/// A non-empty ring of `https://` gRPC URLs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoints {
    urls: Vec<String>,
    current: usize,
}

impl Endpoints {
    /// `configured` when it names any, else `enrolled` (the URL the control plane gave at
    /// enrollment), in a random order: the first dial goes to the first of it.
    pub fn new(configured: &[String], enrolled: &str, rng: &mut impl Rng) -> Self {
        let mut urls = if configured.is_empty() {
            vec![enrolled.to_owned()]
        } else {
            configured.to_vec()
        };
        urls.shuffle(rng);
        Self { urls, current: 0 }
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
        let mut e = Endpoints::new(
            &[],
            "https://enrolled.example:8444",
            &mut rand::thread_rng(),
        );
        assert_eq!(e.current(), "https://enrolled.example:8444");
        e.advance();
        assert_eq!(e.current(), "https://enrolled.example:8444");
    }

    #[test]
    fn dials_go_round_the_whole_list() {
        let list = urls(3);
        let mut e = Endpoints::new(&list, "unused", &mut rand::thread_rng());
        let seen: Vec<String> = (0..6)
            .map(|_| {
                let url = e.current().to_owned();
                e.advance();
                url
            })
            .collect();
        let mut round: Vec<String> = seen[..3].to_vec();
        round.sort();
        assert_eq!(round, list, "each endpoint once a round");
        assert_eq!(seen[3..], seen[..3]);
    }

    #[test]
    fn random_starts_spread_agents_over_the_list() {
        let list = urls(3);
        let mut per_endpoint = [0usize; 3];
        for _ in 0..3_000 {
            let e = Endpoints::new(&list, "unused", &mut rand::thread_rng());
            let i = list.iter().position(|u| u == e.current()).unwrap();
            per_endpoint[i] += 1;
        }
        // Uniform: each gets about a thousand; far from all on one.
        assert!(per_endpoint.iter().all(|&n| n > 800), "{per_endpoint:?}");
    }

    #[test]
    fn the_agents_of_an_endpoint_that_goes_away_spread_over_the_others() {
        let list = urls(3);
        let mut next = [0usize; 3];
        let mut on_first = 0;
        for _ in 0..6_000 {
            let mut e = Endpoints::new(&list, "unused", &mut rand::thread_rng());
            if e.current() != list[0] {
                continue;
            }
            on_first += 1;
            e.advance();
            next[list.iter().position(|u| u == e.current()).unwrap()] += 1;
        }
        // About half each on the two others, not all on the one after it in the list.
        assert_eq!(next[0], 0);
        assert!(
            next[1] > on_first / 3 && next[2] > on_first / 3,
            "{next:?} of {on_first}"
        );
    }
}
