//! Propagation across replicas: agents spread evenly over the replicas, each knowing only its
//! own (host i is enrolled through replica i mod n, and an agent with no `grpc_urls` dials the
//! endpoint it was enrolled with), and sequential rotations of a random connected tenant,
//! alternately through a replica its agent is not connected to ("other": the change travels by
//! PostgreSQL `NOTIFY`) and through its own ("own": the replica's hub wakes the stream
//! directly). Each is timed as `propagation` times it: from the rotate call's answer read to
//! the tenant file holding the new key renamed on the host; then, untimed, the host's
//! acknowledgement is awaited before the next rotation.

use std::time::{Duration, Instant};

use anyhow::Context;
use rand::Rng as _;
use rand::seq::SliceRandom as _;
use serde::{Deserialize, Serialize};

use super::Deployment;
use crate::fleet::Fleet;
use crate::renames::Renames;
use crate::stats::{millis, signed_ms};

/// What the rotations measured, per path.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Path {
    /// Answer read → file renamed, in milliseconds (negative: renamed before the answer).
    pub propagation_ms: Vec<f64>,
    /// The rotate call, sent → answer read, in milliseconds.
    pub call_ms: Vec<f64>,
    /// Rotations whose key did not reach the host in time.
    pub lost: usize,
}

/// Both paths, measured interleaved in the same run.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Across {
    /// Through a replica the agent is not connected to.
    pub other: Path,
    /// Through the agent's own replica.
    pub own: Path,
}

/// `rotations` rotations through another replica and as many through the agent's own,
/// alternating, each of a random connected host of `fleet` (host index i on replica i mod n).
pub async fn rotate(
    deployment: &Deployment,
    fleet: &Fleet,
    renames: &mut Renames,
    rotations: usize,
    timeout: Duration,
    progress: bool,
) -> anyhow::Result<Across> {
    let n = deployment.replicas.len();
    anyhow::ensure!(
        n >= 2,
        "propagation across replicas needs two replicas at least"
    );
    let mut across = Across::default();
    let connected = fleet.connected();
    if connected.is_empty() {
        return Ok(across);
    }
    for round in 0..2 * rotations {
        let own = round % 2 == 1;
        let live = fleet.connected();
        let pick = *live
            .choose(&mut rand::thread_rng())
            .or_else(|| connected.first())
            .context("no connected agent")?;
        let host = &fleet.hosts[pick];
        let home = host.index % n;
        let via = if own {
            home
        } else {
            (home + rand::thread_rng().gen_range(1..n)) % n
        };
        let replica = &deployment.replicas[via];
        let sent = Instant::now();
        let fingerprint = replica
            .rotate_tenant(&host.tenant_token)
            .await
            .with_context(|| format!("rotating {} through replica {via}", host.tenant))?;
        let t0 = Instant::now();
        let arrived = renames
            .wait(
                host.index,
                &fingerprint,
                tokio::time::Instant::now() + timeout,
            )
            .await?;
        let path = if own {
            &mut across.own
        } else {
            &mut across.other
        };
        path.call_ms.push(millis(t0 - sent));
        match arrived {
            Some((_, t1)) => path.propagation_ms.push(signed_ms(t0, t1)),
            None => path.lost += 1,
        }
        // Not timed: the acknowledgement, before the next rotation.
        if !replica.wait_in_sync(&host.host_id, timeout).await? {
            tracing::warn!(host = %host.host_id, "the host did not acknowledge in time");
        }
        if progress && (round + 1) % 100 == 0 {
            eprintln!("  {}/{} rotations", round + 1, 2 * rotations);
        }
    }
    Ok(across)
}
