//! The `rest` report as a `BENCHMARKS.md` section: method, the summary per target (medians over
//! the rounds, and keyward's rate as a ratio to OpenBao's), every measurement, the Vault calls.

use std::fmt::Write as _;

use super::{BAO_SECRET, Generator, RestReport, Target};
use crate::stats::median;

/// The `BENCHMARKS.md` section id.
pub const SECTION: &str = "rest-ssh-credentials";

fn spread(values: &[f64], digits: usize) -> String {
    if values.is_empty() {
        return "–".into();
    }
    let min = values.iter().copied().fold(f64::INFINITY, f64::min);
    let max = values.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    format!("{min:.digits$} – {max:.digits$}")
}

/// The report as a `BENCHMARKS.md` section (also what is printed).
pub fn markdown(report: &RestReport, command: &str) -> String {
    let o = &report.options;
    let mut out = String::from("## REST: `GET /api/v1/tenant/infrastructure/ssh-credentials`\n\n");
    let _ = writeln!(out, "Command: `{command}`\n");
    let generator = match o.generator {
        Generator::Wrk => format!(
            "`wrk -t{} -c{} -d{}s --latency` ({}), a separate process",
            o.threads,
            o.connections,
            o.seconds,
            report.wrk_version.as_deref().unwrap_or("wrk")
        ),
        Generator::Builtin => format!(
            "the built-in closed-loop client (reqwest, {} connections, in the benchmark's own \
             process and runtime, so it competes with the control plane for the CPUs), {} s",
            o.connections, o.seconds
        ),
    };
    let _ = writeln!(
        out,
        "Machine: {}. Build: {}. {}. Started {}; load average {} before, {} after.\n",
        report.machine.describe(),
        report.build,
        report.bao_version,
        report.started_at,
        report.load_before,
        report.load_after
    );
    let _ = writeln!(
        out,
        "Method: load generator {generator}, {} s of unmeasured warm-up before each \
         measurement; {} interleaved round(s) of: OpenBao (dev server, in-memory storage, root \
         token) reading the KV v2 secret `vps/{BAO_SECRET}`, then keyward's endpoint on each \
         backend with a tenant token (the control plane in the benchmark's process, {} tenants \
         each with a registered host and a token). OpenBao's secret holds the same JSON document \
         keyward answers with ({} bytes of body from keyward, {} from OpenBao, which wraps it in \
         its KV v2 envelope). Rate is answers per second over the measured window; latency \
         percentiles are the load generator's ({}). Ratio is keyward's rate over OpenBao's in \
         the same round.\n",
        o.warmup_seconds,
        o.rounds,
        o.tenants,
        report
            .body_bytes
            .iter()
            .find(|(t, _)| matches!(t, Target::Keyward(_)))
            .map_or(0, |(_, b)| *b),
        report
            .body_bytes
            .get(&Target::OpenBao)
            .copied()
            .unwrap_or(0),
        match o.generator {
            Generator::Wrk => "wrk's histogram, no coordinated-omission correction",
            Generator::Builtin => "nearest rank over every answer",
        },
    );
    out.push_str(
        "| target | rounds | **req/s median** | req/s spread | p50 ms median | **p99 ms median** | p99 ms spread | errors | **ratio to OpenBao (median, spread)** |\n\
         |---|---|---|---|---|---|---|---|---|\n",
    );
    for target in report.targets() {
        let ms = report.of(target);
        let rps: Vec<f64> = ms.iter().map(|m| m.per_second).collect();
        let p50: Vec<f64> = ms.iter().map(|m| m.p50_ms).collect();
        let p99: Vec<f64> = ms.iter().map(|m| m.p99_ms).collect();
        let errors: u64 = ms.iter().map(|m| m.errors).sum();
        let ratio = match target {
            Target::OpenBao => "1 (reference)".to_owned(),
            Target::Keyward(b) => {
                let r = report.ratios(b);
                format!("**{:.2}x** ({})", median(&r), spread(&r, 2))
            }
        };
        let _ = writeln!(
            out,
            "| {} | {} | **{:.0}** | {} | {:.2} | **{:.2}** | {} | {} | {} |",
            target.name(),
            ms.len(),
            median(&rps),
            spread(&rps, 0),
            median(&p50),
            median(&p99),
            spread(&p99, 2),
            errors,
            ratio
        );
    }
    out.push_str("\nEvery measurement, in the order taken:\n\n");
    out.push_str("| round | target | requests | seconds | req/s | p50 ms | p99 ms | errors |\n|---|---|---|---|---|---|---|---|\n");
    for (i, round) in report.rounds.iter().enumerate() {
        for (target, m) in round {
            let _ = writeln!(
                out,
                "| {} | {} | {} | {:.2} | {:.0} | {:.2} | {:.2} | {} |",
                i + 1,
                target.name(),
                m.requests,
                m.seconds,
                m.per_second,
                m.p50_ms,
                m.p99_ms,
                m.errors
            );
        }
    }
    out.push_str("\nVault calls on the path: ");
    let mut parts = Vec::new();
    for (backend, (n, lines)) in &report.vault_calls_under_load {
        let name = Target::Keyward(*backend).name();
        if *n == 0 {
            parts.push(format!(
                "{name}: none (0 HTTP requests from the control plane reached OpenBao while it was under load)"
            ));
        } else {
            parts.push(format!(
                "{name}: **{n} HTTP requests reached OpenBao while under load** ({})",
                lines.join("; ")
            ));
        }
    }
    out.push_str(&parts.join("; "));
    out.push_str(
        ". The control planes reach OpenBao only through a proxy in the benchmark that records \
         every request line.\n",
    );
    out
}
