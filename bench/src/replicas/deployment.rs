//! A deployment of several control-plane replicas as an operator runs one: each replica a
//! process of its own ([`Cluster::spawn_replica`]: this binary's `control-plane-child`), all on
//! one PostgreSQL schema (a fresh `kwtest_*` schema of the local `test` database, dropped at the
//! end) and one OpenBao dev server (a child of this process).

use std::path::Path;

use anyhow::Context;
use keyward_tests::{OpenBao, PgSchema};

use crate::cluster::{ChildArgs, Cluster};

/// The running deployment.
#[derive(Debug)]
pub struct Deployment {
    /// The replicas, in start order; the first bootstrapped the admin token, which every
    /// replica's `admin_token` holds.
    pub replicas: Vec<Cluster>,
    /// `bao version`.
    pub bao_version: String,
    /// Direct SQL on the deployment's schema (where the agents' streams are: `host_streams`).
    pub sql: sqlx::PgPool,
    bao: OpenBao,
    schema: PgSchema,
    _state_dirs: Vec<tempfile::TempDir>,
}

impl Deployment {
    /// Starts OpenBao, makes the schema, and starts `count` replicas one after another (the first
    /// runs the migrations and bootstraps the admin token). `exe`: the `keyward-bench` binary
    /// (this process's own when `None`).
    pub async fn start(count: usize, exe: Option<&Path>) -> anyhow::Result<Self> {
        let bao = OpenBao::start().await;
        let schema = PgSchema::create().await;
        let sql = sqlx::postgres::PgPoolOptions::new()
            .max_connections(2)
            .connect(&schema.url())
            .await
            .context("connecting to the deployment's schema")?;
        let mut deployment = Self {
            replicas: Vec::with_capacity(count),
            bao_version: crate::machine::bao_version().await,
            sql,
            bao,
            schema,
            _state_dirs: Vec::with_capacity(count),
        };
        for i in 0..count {
            let state_dir = tempfile::Builder::new()
                .prefix("keyward-bench-replica-")
                .tempdir()
                .context("creating a replica's state directory")?;
            let args = ChildArgs {
                database_url: Some(deployment.schema.url()),
                vault: Some(deployment.bao.addr.clone()),
                state_dir: Some(state_dir.path().to_path_buf()),
            };
            let mut replica = Cluster::spawn_replica(exe, &args)
                .await
                .with_context(|| format!("starting replica {i}"))?;
            if let Some(first) = deployment.replicas.first() {
                replica.admin_token.clone_from(&first.admin_token);
            }
            anyhow::ensure!(
                !replica.admin_token.is_empty(),
                "the first replica bootstrapped no admin token (the schema was not empty?)"
            );
            deployment.replicas.push(replica);
            deployment._state_dirs.push(state_dir);
        }
        Ok(deployment)
    }

    /// How many of `hosts` have their stream on each replica, in the replicas' order, as the
    /// deployment's `host_streams` says.
    pub async fn streams_per_replica(&self, hosts: &[String]) -> anyhow::Result<Vec<usize>> {
        let rows: Vec<(String, i64)> = sqlx::query_as(
            "SELECT replica_id, count(*) FROM host_streams WHERE host_id = ANY($1) GROUP BY replica_id",
        )
        .bind(hosts)
        .fetch_all(&self.sql)
        .await
        .context("reading host_streams")?;
        Ok(self
            .replicas
            .iter()
            .map(|r| {
                rows.iter()
                    .find(|(id, _)| *id == r.replica_id)
                    .map_or(0, |(_, n)| usize::try_from(*n).unwrap_or(0))
            })
            .collect())
    }

    /// The hosts among `hosts` whose stream the replica `replica` holds.
    pub async fn hosts_on(&self, replica: usize, hosts: &[String]) -> anyhow::Result<Vec<String>> {
        sqlx::query_scalar(
            "SELECT host_id FROM host_streams WHERE replica_id = $1 AND host_id = ANY($2)",
        )
        .bind(&self.replicas[replica].replica_id)
        .bind(hosts)
        .fetch_all(&self.sql)
        .await
        .context("reading host_streams")
    }

    /// Of `hosts`: how many have a stream on one of the replicas `live`, and how many of those
    /// have acknowledged their current desired state (applied generation at the desired one).
    pub async fn synced_on(&self, live: &[usize], hosts: &[String]) -> anyhow::Result<Synced> {
        let ids: Vec<String> = live
            .iter()
            .map(|&i| self.replicas[i].replica_id.clone())
            .collect();
        let (streaming, in_sync): (i64, i64) = sqlx::query_as(
            "SELECT count(s.host_id), \
                    count(s.host_id) FILTER (WHERE h.applied_generation >= h.desired_generation) \
             FROM hosts h JOIN host_streams s ON s.host_id = h.host_id \
             WHERE h.host_id = ANY($2) AND s.replica_id = ANY($1)",
        )
        .bind(&ids)
        .bind(hosts)
        .fetch_one(&self.sql)
        .await
        .context("reading the hosts' sync state")?;
        Ok(Synced {
            streaming: usize::try_from(streaming).unwrap_or(0),
            in_sync: usize::try_from(in_sync).unwrap_or(0),
        })
    }

    /// Stops the replicas still running (a killed one is gone already), then OpenBao; the
    /// schema is dropped with everything in it.
    pub async fn shutdown(mut self) -> anyhow::Result<()> {
        let mut first_error = None;
        for replica in self.replicas.drain(..) {
            if let Err(e) = replica.shutdown().await {
                first_error.get_or_insert(e);
            }
        }
        self.sql.close().await;
        self.bao.stop().await;
        // Dropping the schema ends its sessions first (PgSchema's Drop).
        drop(self.schema);
        first_error.map_or(Ok(()), Err)
    }
}

/// Hosts streaming to a live replica, and those of them in sync.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Synced {
    pub streaming: usize,
    pub in_sync: usize,
}
