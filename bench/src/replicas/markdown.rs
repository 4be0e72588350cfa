//! The `replicas` section of `BENCHMARKS.md`: the method, the propagation across replicas and
//! the reconnection storm, from a [`Report`].

use std::path::Path;

use super::storm::Storm;
use super::{Options, Report, Setup};
use crate::stats::Summary;

fn ms(x: f64) -> String {
    format!("{x:.2}")
}

fn secs(x: Option<f64>) -> String {
    x.map_or_else(|| "–".into(), |x| format!("{x:.2}"))
}

/// The `BENCHMARKS.md` section id.
pub fn section_id(report: &Report) -> String {
    format!(
        "replicas-{}-agents-storm-{}",
        report.options.agents, report.options.storm_agents
    )
}

/// The command line that reproduces a run.
pub fn command_line(options: &Options, smoke: bool, write: Option<&Path>) -> String {
    use std::fmt::Write as _;
    let mut command = if smoke {
        "cargo run --release -p keyward-bench -- replicas --smoke".to_owned()
    } else {
        format!(
            "cargo run --release -p keyward-bench -- replicas --agents {} --rotations {} --storm-agents {}",
            options.agents, options.rotations, options.storm_agents
        )
    };
    if let Some(dir) = &options.dir {
        let _ = write!(command, " --dir {}", dir.display());
    }
    if let Some(path) = write {
        let _ = write!(command, " --write {}", path.display());
    }
    command
}

/// The section: method, machine, results.
pub fn markdown(report: &Report, command: &str) -> String {
    use std::fmt::Write as _;
    let r = report;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "## Replicas: {} control-plane replicas on one PostgreSQL, propagation across them and a reconnection storm\n",
        r.options.replicas
    );
    let _ = writeln!(out, "Command: `{command}`\n");
    let _ = writeln!(
        out,
        "Machine: {}. Build: {}. PostgreSQL {}, {}. Hosts' files on {}. Started {} (load average {} before, {} after; other engineers' work shares the machine, see the load).\n",
        r.machine.describe(),
        r.build,
        r.postgres_version,
        r.bao_version,
        r.hosts_filesystem,
        r.started_at,
        r.load_before,
        r.load_after
    );
    out.push_str(
        "Method: each replica is a process of its own (`keyward-bench control-plane-child`, the \
         same `server::start` as `keyward-server`), all on one PostgreSQL schema of the local \
         server and one OpenBao dev server; the agents run in the benchmark's process (the \
         agent's own runtime, writing into temporary directories). Ed25519 keys.\n\n",
    );
    if let (Some(setup), Some(a)) = (&r.across_setup, &r.across) {
        let _ = writeln!(
            out,
            "### Propagation across replicas: {} agents, {} rotations each way\n",
            r.options.agents, r.options.rotations
        );
        out.push_str(
            "Host i is enrolled through replica i mod 3 and its agent dials only that one. \
             Rotations are sequential, alternately through a replica the tenant's agent is *not* \
             connected to (the change reaches it through PostgreSQL `NOTIFY`) and through its \
             own; each of a random connected tenant, timed from the rotate call's answer read to \
             the tenant's `authorized_keys` with the new key renamed into place on the host; the \
             host's acknowledgement is awaited, untimed, before the next.\n\n",
        );
        out.push_str(
            "| rotation made through | timed | lost | min ms | **p50 ms** | **p99 ms** | max ms | rotate call p50 / p99 ms |\n\
             |---|---|---|---|---|---|---|---|\n",
        );
        for (what, path) in [
            ("another replica than the agent's", &a.other),
            ("the agent's own replica", &a.own),
        ] {
            let call = Summary::of(&path.call_ms)
                .map_or_else(|| "–".into(), |s| format!("{} / {}", ms(s.p50), ms(s.p99)));
            let _ = writeln!(
                out,
                "| {what} | {} | {} | {} | {call} |",
                path.propagation_ms.len(),
                path.lost,
                summary_row(&path.propagation_ms),
            );
        }
        let _ = writeln!(
            out,
            "\nSetup: {} of {} agents connected, streams per replica {:?}; provisioning {:.1} s, connecting {:.1} s.{}\n",
            setup.connected,
            r.options.agents,
            setup.placement,
            setup.provision_s,
            setup.connect_s,
            stopped(setup)
        );
    }
    if let (Some(setup), Some(s)) = (&r.storm_setup, &r.storm) {
        storm_markdown(&mut out, r, setup, s);
    }
    out
}

fn summary_row(samples: &[f64]) -> String {
    Summary::of(samples).map_or_else(
        || "– | **–** | **–** | –".into(),
        |s| {
            format!(
                "{} | **{}** | **{}** | {}",
                ms(s.min),
                ms(s.p50),
                ms(s.p99),
                ms(s.max)
            )
        },
    )
}

fn stopped(setup: &Setup) -> String {
    setup
        .stopped_by
        .as_ref()
        .map(|reason| format!(" **Stopped by:** {reason}."))
        .unwrap_or_default()
}

fn storm_markdown(out: &mut String, r: &Report, setup: &Setup, s: &Storm) {
    use std::fmt::Write as _;
    let _ = writeln!(
        out,
        "### Reconnection storm: {} agents, replica {} killed\n",
        r.options.storm_agents, s.victim
    );
    let _ = writeln!(
        out,
        "Every agent has every replica's endpoint (`grpc_urls`) and goes round them in a random order of its own (`agent/src/endpoints.rs`). Once \
         all are in sync, a REST probe reads credentials (`GET \
         /api/v1/tenant/infrastructure/ssh-credentials`, tenant tokens, {} requests/s sent at a \
         fixed rate whatever the answers do, from a thread and runtime apart from the agents') \
         from the two surviving replicas in turn for {:.0} s; \
         then replica {} is killed (`SIGKILL`). At once, {} tenants whose agents were on it are \
         rotated through the survivors. \"Back\" is an agent's status saying connected again \
         (its stream open on a survivor); \"all in sync\" the first SQL poll (every 100 ms) \
         showing every agent's stream on a survivor (`host_streams`) and its current desired \
         state acknowledged (applied generation); the probe's \"during\" window runs from the \
         kill to that moment. Failed dials and ended streams are the agents' own warnings, \
         counted.\n",
        r.options.storm.probe_rate,
        r.options.storm.baseline.as_secs_f64(),
        s.victim,
        s.changes,
    );
    let back = Summary::of(&s.back_s.iter().map(|x| x * 1000.0).collect::<Vec<_>>());
    let last_back = back.map(|b| b.max / 1000.0);
    let _ = writeln!(
        out,
        "| agents in sync before | streams per replica before → after | on the killed replica | back | back p50 / p99 s | **last back s** | **all in sync s** | survivors' agents that lost their stream |\n\
         |---|---|---|---|---|---|---|---|\n\
         | {} | {:?} → {:?} | {} | {} | {} | **{}** | **{}** | {} |\n",
        s.agents,
        s.placement_before,
        s.placement_after,
        s.victims,
        s.back_s.len(),
        back.map_or_else(
            || "–".into(),
            |b| format!("{:.2} / {:.2}", b.p50 / 1000.0, b.p99 / 1000.0)
        ),
        secs(last_back),
        secs(s.all_in_sync_s),
        s.survivors_dropped,
    );
    let reached = s
        .change_reached_s
        .iter()
        .copied()
        .fold(None, |m: Option<f64>, x| Some(m.map_or(x, |m| m.max(x))));
    let _ = writeln!(
        out,
        "Rotations through the survivors right after the kill: {} made, {} calls failed, {} keys in their files, the last {} s after the kill.\n",
        s.changes,
        s.change_call_errors,
        s.change_reached_s.len(),
        secs(reached)
    );
    let warnings = if s.agent_warnings.is_empty() {
        "none".to_owned()
    } else {
        s.agent_warnings
            .iter()
            .map(|(message, n)| format!("\"{message}\" × {n}"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let _ = writeln!(
        out,
        "The agents' warnings and errors after the kill: {warnings}.\n"
    );
    out.push_str(
        "| REST probe on the survivors | requests answered 200 | errors | min ms | **p50 ms** | **p99 ms** | max ms |\n\
         |---|---|---|---|---|---|---|\n",
    );
    let mut rows = vec![
        ("before the kill, both".to_owned(), &s.rest_before),
        ("kill → all in sync, both".to_owned(), &s.rest_during),
    ];
    for (replica, before, during) in &s.rest_by_replica {
        rows.push((format!("before the kill, replica {replica}"), before));
        rows.push((format!("kill → all in sync, replica {replica}"), during));
    }
    for (what, w) in rows {
        let _ = writeln!(
            out,
            "| {what} ({:.1} s) | {} | {} | {} |",
            w.seconds,
            w.ms.len(),
            w.errors,
            summary_row(&w.ms)
        );
    }
    let cpu = s
        .replica_cpu_s
        .iter()
        .enumerate()
        .map(|(i, c)| match c {
            Some(c) => format!("replica {i} {c:.1} s"),
            None => format!("replica {i} –"),
        })
        .collect::<Vec<_>>()
        .join(", ");
    let _ = writeln!(
        out,
        "\nCPU from the kill to the end: {cpu}; the benchmark's process (agents, probe) {}; \
         PostgreSQL's processes at least {}. \
         Setup: {} of {} agents connected, provisioning {:.1} s, connecting {:.1} s. \
         RLIMIT_NOFILE: {}.{}",
        s.agents_cpu_s
            .map_or_else(|| "–".into(), |c| format!("{c:.1} s")),
        s.postgres_cpu_s
            .map_or_else(|| "–".into(), |c| format!("{c:.1} s")),
        setup.connected,
        r.options.storm_agents,
        setup.provision_s,
        setup.connect_s,
        r.fd_limit.describe(),
        stopped(setup)
    );
}
