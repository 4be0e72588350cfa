//! Markdown: the tables printed on stdout, and the sections of `BENCHMARKS.md`.
//!
//! `BENCHMARKS.md` is made of generated sections between `<!-- keyward-bench: begin ID -->` and
//! `<!-- keyward-bench: end ID -->` markers. Writing replaces a section in place, or appends it
//! when it is new; everything outside the markers (notes written by hand) is kept.

use std::fmt::Write as _;
use std::path::Path;

use anyhow::Context;

use crate::propagation::{Options, Report};

/// `1.5 GiB`, `23.4 MiB`, `512 KiB`.
pub fn bytes(n: u64) -> String {
    #[allow(clippy::cast_precision_loss)]
    let f = n as f64;
    if n >= 1 << 30 {
        format!("{:.1} GiB", f / f64::from(1u32 << 30))
    } else if n >= 1 << 20 {
        format!("{:.1} MiB", f / f64::from(1u32 << 20))
    } else {
        format!("{:.0} KiB", f / 1024.0)
    }
}

fn ms(x: f64) -> String {
    format!("{x:.2}")
}

fn or_dash(value: Option<String>) -> String {
    value.unwrap_or_else(|| "–".into())
}

/// The command line that reproduces a propagation run.
pub fn propagation_command(options: &Options, runs: usize, write: Option<&Path>) -> String {
    let mut command = format!(
        "cargo run --release -p keyward-bench -- propagation --agents {} --rotations {}",
        options.agents, options.rotations
    );
    if !options.settle {
        command.push_str(" --back-to-back");
    }
    if let Some(dir) = &options.dir {
        let _ = write!(command, " --dir {}", dir.display());
    }
    if runs != 1 {
        let _ = write!(command, " --runs {runs}");
    }
    if let Some(path) = write {
        let _ = write!(command, " --write {}", path.display());
    }
    command
}

/// The results of one or more runs of the same scenario, as two Markdown tables.
pub fn propagation_tables(reports: &[Report]) -> String {
    let mut out = String::new();
    out.push_str(
        "| run | agents connected | rotations timed | lost | min ms | **p50 ms** | **p99 ms** | max ms | mean ms | of which writing p50 / p99 ms | rotate call p50 / p99 ms |\n\
         |---|---|---|---|---|---|---|---|---|---|---|\n",
    );
    for (i, r) in reports.iter().enumerate() {
        let p = r.propagation();
        let pair = |s: Option<crate::stats::Summary>| {
            or_dash(s.map(|s| format!("{} / {}", ms(s.p50), ms(s.p99))))
        };
        let cell = |f: fn(&crate::stats::Summary) -> f64| or_dash(p.as_ref().map(|s| ms(f(s))));
        let _ = writeln!(
            out,
            "| {} | {} of {} | {} | {} | {} | **{}** | **{}** | {} | {} | {} | {} |",
            i + 1,
            r.agents_connected,
            r.options.agents,
            r.propagation_ms.len(),
            r.lost,
            cell(|s| s.min),
            cell(|s| s.p50),
            cell(|s| s.p99),
            cell(|s| s.max),
            cell(|s| s.mean),
            pair(r.write()),
            pair(r.rotate_call()),
        );
    }
    out.push('\n');
    out.push_str(
        "| run | setup s (services / provisioning / connecting) | RSS before agents | RSS with agents | RSS per agent | RSS after rotations | open fds / limit | threads | load avg before → after |\n\
         |---|---|---|---|---|---|---|---|---|\n",
    );
    for (i, r) in reports.iter().enumerate() {
        let _ = writeln!(
            out,
            "| {} | {:.1} ({:.1} / {:.1} / {:.1}) | {} | {} | {} | {} | {} / {} | {} | {} → {} |",
            i + 1,
            r.setup.total,
            r.setup.services,
            r.setup.provision,
            r.setup.connect,
            bytes(r.rss_before_agents),
            bytes(r.rss_after_agents),
            or_dash(r.rss_per_agent().map(bytes)),
            bytes(r.rss_after_rotations),
            r.open_fds_with_agents,
            r.fd_limit.soft,
            r.threads_with_agents,
            r.load_before,
            r.load_after,
        );
    }
    for (i, r) in reports.iter().enumerate() {
        let limit = r.fd_limit.describe();
        let stop = match &r.stopped_by {
            Some(reason) => format!("**stopped by:** {reason}"),
            None => "no limit stopped the run".into(),
        };
        let _ = writeln!(out, "\nRun {}: {limit}; {stop}.", i + 1);
    }
    out
}

/// Wraps a table for the terminal: a title and the tables.
pub fn propagation_stdout(reports: &[Report]) -> String {
    let Some(first) = reports.first() else {
        return String::new();
    };
    format!(
        "## Propagation: {} agents, {} rotations{} ({} build, hosts' files on {})\n\n{}",
        first.options.agents,
        first.options.rotations,
        if first.options.settle {
            ""
        } else {
            ", back to back"
        },
        first.build,
        first.hosts_filesystem,
        propagation_tables(reports)
    )
}

/// The `BENCHMARKS.md` section id of a scenario.
pub fn propagation_section_id(report: &Report) -> String {
    let mode = if report.options.settle {
        ""
    } else {
        "-back-to-back"
    };
    // Files on tmpfs cost no fsync: a separate scenario, not a replacement of the disk one.
    let fs = if report.hosts_filesystem == "tmpfs" {
        "-tmpfs"
    } else {
        ""
    };
    format!("propagation-{}-agents{mode}{fs}", report.options.agents)
}

fn pacing(options: &Options) -> &'static str {
    if options.settle {
        "each rotation waited until the previous one was acknowledged (the host `in_sync` in the \
         admin view), so every rotation reached an idle host"
    } else {
        "back to back: each rotation started as soon as the previous key's file was renamed, \
         while the agent was still caching that state and acknowledging it"
    }
}

/// A `BENCHMARKS.md` section: what was run, where, when, and the results.
pub fn propagation_section(reports: &[Report], command: &str) -> String {
    let Some(first) = reports.first() else {
        return String::new();
    };
    let agents = first.options.agents;
    let noun = if agents == 1 { "agent" } else { "agents" };
    let mode = if first.options.settle {
        ""
    } else {
        ", back to back"
    };
    let runs: Vec<String> = reports
        .iter()
        .enumerate()
        .map(|(i, r)| {
            format!(
                "run {} started {} (load average {})",
                i + 1,
                r.started_at,
                r.load_before
            )
        })
        .collect();
    let busy = reports
        .iter()
        .any(|r| r.load_before.0 >= 0.5 * (r.machine.nproc as f64));
    let load_note = if busy {
        " Other load was present on the machine (other builds and tests; see the load averages), so \
         the absolute times include waiting for a CPU."
    } else {
        ""
    };
    format!(
        "## Propagation: {agents} connected {noun}{mode}{fs_title}\n\n\
         Command: `{command}`\n\n\
         Machine: {machine}. Build: {build}. {bao}. Hosts' files on {fs}.{separate}\n\n\
         Rotations: {pacing}.\n\n\
         Runs: {runs}.{load_note}\n\n\
         {tables}",
        machine = first.machine.describe(),
        build = first.build,
        bao = if first.bao_version.is_empty() {
            "OpenBao version unknown".to_owned()
        } else {
            first.bao_version.clone()
        },
        fs = first.hosts_filesystem,
        separate = if first.separate_control_plane {
            " The control plane ran in a child process (descriptors: see the method), so the RSS \
             figures are the agents' process alone."
        } else {
            ""
        },
        fs_title = if first.hosts_filesystem == "tmpfs" {
            ", files on tmpfs"
        } else {
            ""
        },
        pacing = pacing(&first.options),
        runs = runs.join("; "),
        tables = propagation_tables(reports),
    )
}

/// The method, shared by every propagation section.
pub fn propagation_method() -> String {
    "## Propagation: method\n\n\
     What is measured: the time from the REST rotate call returning to the rotated key's \
     `authorized_keys` renamed into place on the host.\n\n\
     - One process runs the control plane (`keyward_server::server::start`: REST on \
     127.0.0.1:0, the agents' mTLS gRPC endpoint on 127.0.0.1:0, SQLite in a temporary state \
     directory) and N agents (`keyward_agent::run_with`, the agent's own runtime, TLS 1.3 client \
     certificates, one HTTP/2 stream each, over loopback). OpenBao runs in dev mode as a child \
     process (`keyward_tests::OpenBao`).\n\
     - Keys are Ed25519 (`keys.algorithm = \"ed25519\"`), so that creating 1,000 tenants takes \
     seconds rather than half an hour of RSA-4096 generation. Key generation does not count \
     anyway: it happens before the rotate call answers, and the clock starts when it has \
     answered.\n\
     - N tenants with one host each. Each tenant gets an API token (`POST /api/v1/admin/tokens`, \
     role `tenant`) and a host (`POST /api/v1/admin/hosts`); the host's agent enrolls with the \
     agent's own code (`keyward_agent::enroll::enroll`: own key, CSR, one-time token). Agents \
     connect in waves of 100; a host counts as connected once its stream is up and its first \
     state is applied.\n\
     - Each agent writes through `apply::DirApplier` into its own temporary directory (the real \
     writer: temporary file, fsync, rename, directory fsync; no root, no real users), wrapped in \
     an applier that takes `Instant::now()` right after the write returns and reports the \
     fingerprints now in the file. The agents run without the file watcher (it is not on this \
     path, and 1,000 inotify instances exceed `fs.inotify.max_user_instances`).\n\
     - Rotations are sequential: each picks a random connected tenant and calls `POST \
     /api/v1/tenant/infrastructure/ssh-credentials/rotate` with its token. t0 is taken when the \
     answer (which names the new key's fingerprint) has been read; t1 is the first rename of \
     the tenant user's file on that tenant's host that holds that fingerprint. The sample is \
     t1 − t0: the hub wake, building the host's state from SQL, signing it, the gRPC message, \
     verification on the agent, and the write. The control plane wakes the stream when the \
     transaction commits, just before the HTTP answer is written, so a sample can be negative \
     when the file is renamed before the answer is read.\n\
     - Between rotations (not timed) the benchmark waits until the control plane has recorded \
     the previous one as applied (the host is `in_sync` in `GET /api/v1/admin/hosts/{id}`), so \
     each rotation reaches an idle host. `--back-to-back` skips that wait, so a rotation may reach \
     a host that is still caching and acknowledging the previous state (with 1 agent every \
     rotation goes to the same host).\n\
     - \"Of which writing\" is the part of each sample spent inside the writer for the tenant \
     user's file (from the agent calling it to its return); the rest is the control plane, the \
     stream and the agent's verification.\n\
     - \"Rotate call\" is the REST call itself (key generation, Vault write, SQL commit), from \
     sending the request to reading the answer.\n\
     - Percentiles are nearest-rank over the samples (for 200: p50 is the 100th, p99 the 198th \
     smallest). A rotation not seen on its host within 30 s counts as lost, not as a sample.\n\
     - RSS is `VmRSS` of the whole process, so \"per agent\" is the control plane's and the \
     agent's side of one connection together, read before the agents start and once all are \
     connected. The soft `RLIMIT_NOFILE` is raised to the hard limit first; each agent costs \
     two descriptors (both ends of its connection). With 10,000 agents both ends do not fit the \
     hard limit of 20,000 (raising it needs `CAP_SYS_RESOURCE`, which this machine's root lacks), \
     so the control plane then runs in a child process (`keyward-bench control-plane-child`, \
     same code and configuration, over loopback as before) and RSS is the agents' process only; \
     the `streams` section measures the control plane's memory.\n\
     - Each run is a fresh process with a fresh OpenBao and database (`--runs N` starts the \
     binary N times). Timings are not asserted anywhere; `keyward-bench propagation --smoke` \
     (2 agents, 5 rotations) runs in the test suite only to keep the benchmark working.\n"
        .to_owned()
}

fn markers(id: &str) -> (String, String) {
    (
        format!("<!-- keyward-bench: begin {id} -->"),
        format!("<!-- keyward-bench: end {id} -->"),
    )
}

const HEADER: &str = "# keyward benchmarks\n\n\
    Generated by `keyward-bench` (`make bench`). The sections between `keyward-bench` markers \
    are rewritten by `--write BENCHMARKS.md`; text outside them is kept.\n";

/// Replaces (or appends) `sections` (`(id, Markdown)`) in `text`.
pub fn replace_sections(text: &str, sections: &[(String, String)]) -> String {
    let mut text = if text.trim().is_empty() {
        HEADER.to_owned()
    } else {
        text.to_owned()
    };
    for (id, body) in sections {
        let (begin, end) = markers(id);
        let block = format!("{begin}\n{}\n{end}", body.trim_end());
        let found = text.find(&begin).and_then(|start| {
            let stop = text[start..].find(&end)? + start + end.len();
            Some((start, stop))
        });
        match found {
            Some((start, stop)) => text.replace_range(start..stop, &block),
            None => {
                let trimmed = text.trim_end().len();
                text.truncate(trimmed);
                text.push_str("\n\n");
                text.push_str(&block);
                text.push('\n');
            }
        }
    }
    text
}

/// What a benchmark run gives: the Markdown it prints on stdout, and the sections of the
/// `--write` file it replaces, `(id, Markdown)`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Publication {
    pub stdout: String,
    pub sections: Vec<(String, String)>,
}

impl Publication {
    /// The usual case: one section, printed as it is recorded.
    pub fn section(id: impl Into<String>, markdown: String) -> Self {
        Self {
            sections: vec![(id.into(), markdown.clone())],
            stdout: markdown,
        }
    }

    /// Prints the Markdown and, with `--write PATH`, records the sections in that file.
    pub fn publish(self, write: Option<&Path>) -> anyhow::Result<()> {
        use std::io::Write as _;
        let mut stdout = std::io::stdout().lock();
        stdout.write_all(self.stdout.as_bytes())?;
        stdout.flush()?;
        if let Some(path) = write
            && !self.sections.is_empty()
        {
            write_sections(path, &self.sections)?;
            eprintln!("wrote {}", path.display());
        }
        Ok(())
    }
}

/// Writes `sections` into the file at `path` (created when missing).
pub fn write_sections(path: &Path, sections: &[(String, String)]) -> anyhow::Result<()> {
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
        Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
    };
    let new = replace_sections(&text, sections);
    std::fs::write(path, new).with_context(|| format!("writing {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sections_are_replaced_in_place_and_notes_kept() {
        let s = |id: &str, body: &str| (id.to_owned(), body.to_owned());
        let first = replace_sections("", &[s("a", "A1"), s("b", "B1")]);
        assert!(first.starts_with("# keyward benchmarks"));
        let noted = format!("{first}\nHand-written note.\n");
        let second = replace_sections(&noted, &[s("a", "A2\n"), s("c", "C1")]);
        assert!(second.contains("A2") && !second.contains("A1"));
        assert!(second.contains("B1") && second.contains("C1"));
        assert!(second.contains("Hand-written note."));
        let (a, b, c) = (
            second.find("A2").unwrap_or_default(),
            second.find("B1").unwrap_or_default(),
            second.find("C1").unwrap_or_default(),
        );
        assert!(a < b && b < c, "{second}");
        assert_eq!(replace_sections(&second, &[s("a", "A2")]), second);
    }

    #[test]
    fn sizes_read_well() {
        assert_eq!(bytes(512 * 1024), "512 KiB");
        assert_eq!(bytes(3 << 20), "3.0 MiB");
        assert_eq!(bytes(3 << 30), "3.0 GiB");
    }
}
