//! Waiting for a rotated key to arrive on a simulated host: the first rename of the tenant
//! user's `authorized_keys` holding a given fingerprint, from the fleet's stream of renames
//! ([`crate::fleet::TimingApplier`]). Renames of other hosts and keys seen while waiting are
//! kept for the waits that follow.

use std::collections::HashMap;
use std::time::Instant;

use tokio::sync::mpsc;

use crate::fleet::{FileRenamed, TENANT_USER};

/// The fleet's renames, indexed as they come.
#[derive(Debug)]
pub struct Renames {
    rx: mpsc::UnboundedReceiver<FileRenamed>,
    /// First rename seen per (host index, fingerprint in the tenant user's file): when the
    /// writer was called and when it returned.
    seen: HashMap<(usize, String), (Instant, Instant)>,
}

impl Renames {
    pub fn new(rx: mpsc::UnboundedReceiver<FileRenamed>) -> Self {
        Self {
            rx,
            seen: HashMap::new(),
        }
    }

    /// Forgets every rename so far (the states applied at connection are not rotations).
    pub fn clear(&mut self) {
        while self.rx.try_recv().is_ok() {}
        self.seen.clear();
    }

    /// The first rename on host `host` (its fleet index) of a tenant file holding
    /// `fingerprint`, waiting until `deadline`: `(writer called, writer returned)`, or `None`
    /// when it did not come in time.
    pub async fn wait(
        &mut self,
        host: usize,
        fingerprint: &str,
        deadline: tokio::time::Instant,
    ) -> anyhow::Result<Option<(Instant, Instant)>> {
        let key = (host, fingerprint.to_owned());
        loop {
            if let Some(at) = self.seen.get(&key) {
                return Ok(Some(*at));
            }
            match tokio::time::timeout_at(deadline, self.rx.recv()).await {
                Ok(Some(event)) => self.record(event),
                Ok(None) => anyhow::bail!("every agent stopped"),
                Err(_) => return Ok(None),
            }
        }
    }

    fn record(&mut self, event: FileRenamed) {
        if event.user != TENANT_USER {
            return;
        }
        for fingerprint in event.fingerprints {
            self.seen
                .entry((event.host, fingerprint))
                .or_insert((event.started, event.at));
        }
    }
}
