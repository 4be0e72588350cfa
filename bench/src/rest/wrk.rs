//! `wrk`, the load generator of the real runs: a separate process (C, epoll), so it does not
//! compete with the control plane for this process's runtime. Runs it and reads its summary.

use std::collections::BTreeMap;

use anyhow::Context;

use super::load::Request;
use super::{Measurement, Options};

/// Why a run asked for wrk cannot have it.
pub(super) const MISSING: &str = "wrk is not installed: run `scripts/install-bench-deps` (apt-get \
     install wrk), or pass --generator builtin";

/// `wrk --version`, or `None` when wrk is not installed.
pub fn wrk_version() -> Option<String> {
    let out = std::process::Command::new("wrk")
        .arg("--version")
        .output()
        .ok()?;
    // wrk prints its version and usage, and exits 1.
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    text.lines()
        .next()
        .map(|l| l.split(" Copyright").next().unwrap_or(l).trim().to_owned())
}

/// One load of `seconds` on `request`.
pub(super) async fn run(
    options: &Options,
    request: &Request,
    seconds: u64,
) -> anyhow::Result<Measurement> {
    let mut command = tokio::process::Command::new("wrk");
    command.args([
        format!("-t{}", options.threads),
        format!("-c{}", options.connections),
        format!("-d{seconds}s"),
        "--latency".to_owned(),
        "--timeout".to_owned(),
        "10s".to_owned(),
    ]);
    for (name, value) in &request.headers {
        command.arg("-H").arg(format!("{name}: {value}"));
    }
    command.arg(&request.url);
    let out = command.output().await.map_err(|e| {
        if e.kind() == std::io::ErrorKind::NotFound {
            anyhow::anyhow!(MISSING)
        } else {
            anyhow::Error::from(e).context("running wrk")
        }
    })?;
    let text = String::from_utf8_lossy(&out.stdout);
    anyhow::ensure!(
        out.status.success(),
        "wrk failed ({}): {text}{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    parse_wrk(&text).with_context(|| format!("reading wrk's output:\n{text}"))
}

/// `3.29ms` → 3.29; `850.00us` → 0.85; `1.20s` → 1200.
fn wrk_ms(value: &str) -> Option<f64> {
    let split = value.find(|c: char| c.is_ascii_alphabetic())?;
    let (n, unit) = value.split_at(split);
    let n: f64 = n.parse().ok()?;
    Some(match unit {
        "us" => n / 1000.0,
        "ms" => n,
        "s" => n * 1000.0,
        "m" => n * 60_000.0,
        "h" => n * 3_600_000.0,
        _ => return None,
    })
}

/// `45.12MB` → bytes.
fn wrk_bytes(value: &str) -> Option<f64> {
    let split = value.find(|c: char| c.is_ascii_alphabetic())?;
    let (n, unit) = value.split_at(split);
    let n: f64 = n.parse().ok()?;
    let k = 1024.0;
    Some(match unit {
        "B" => n,
        "KB" => n * k,
        "MB" => n * k * k,
        "GB" => n * k * k * k,
        "TB" => n * k * k * k * k,
        _ => return None,
    })
}

/// Reads the summary `wrk --latency` prints.
fn parse_wrk(text: &str) -> anyhow::Result<Measurement> {
    let mut percentiles = BTreeMap::new();
    let (mut requests, mut seconds, mut read, mut errors) = (None, None, None, 0u64);
    let mut in_distribution = false;
    for line in text.lines() {
        let t = line.trim();
        if t.starts_with("Latency Distribution") {
            in_distribution = true;
            continue;
        }
        let fields: Vec<&str> = t.split_whitespace().collect();
        if in_distribution {
            if let [p, v] = fields.as_slice()
                && let Some(p) = p.strip_suffix('%')
            {
                percentiles.insert(p.to_owned(), wrk_ms(v).context("a latency")?);
                continue;
            }
            in_distribution = false;
        }
        // "99934 requests in 10.00s, 45.12MB read"
        if let [n, "requests", "in", s, b, "read"] = fields.as_slice() {
            requests = Some(n.parse::<u64>()?);
            seconds = Some(wrk_ms(s.trim_end_matches(',')).context("a duration")? / 1000.0);
            read = Some(wrk_bytes(b).context("a size")?);
        }
        if let Some(n) = t.strip_prefix("Non-2xx or 3xx responses:") {
            errors += n.trim().parse::<u64>()?;
        }
        // "Socket errors: connect 0, read 0, write 0, timeout 0"
        if let Some(rest) = t.strip_prefix("Socket errors:") {
            for part in rest.split(',') {
                if let Some(n) = part.split_whitespace().nth(1) {
                    errors += n.parse::<u64>()?;
                }
            }
        }
    }
    let (requests, seconds) = (
        requests.context("no request count")?,
        seconds.context("no duration")?,
    );
    Ok(Measurement {
        requests,
        seconds,
        per_second: requests as f64 / seconds,
        p50_ms: *percentiles.get("50").context("no p50")?,
        p99_ms: *percentiles.get("99").context("no p99")?,
        errors,
        bytes_per_answer: read.unwrap_or(0.0) / requests.max(1) as f64,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wrk_output_is_read() {
        let text = "Running 10s test @ http://127.0.0.1:8200/v1/vps/data/x\n  2 threads and 32 connections\n  Thread Stats   Avg      Stdev     Max   +/- Stdev\n    Latency     3.29ms    2.20ms  45.67ms   84.03%\n    Req/Sec     5.01k   519.70     6.01k    71.00%\n  Latency Distribution\n     50%  850.00us\n     75%    3.95ms\n     90%    5.43ms\n     99%    1.15s\n  99934 requests in 10.00s, 45.12MB read\n  Socket errors: connect 0, read 2, write 0, timeout 1\n  Non-2xx or 3xx responses: 12\nRequests/sec:   9993.40\nTransfer/sec:      4.51MB\n";
        let m = parse_wrk(text).unwrap();
        assert_eq!(m.requests, 99_934);
        assert!((m.seconds - 10.0).abs() < 1e-9);
        assert!((m.p50_ms - 0.85).abs() < 1e-9);
        assert!((m.p99_ms - 1150.0).abs() < 1e-6);
        assert_eq!(m.errors, 15);
        assert!(m.bytes_per_answer > 470.0 && m.bytes_per_answer < 480.0);
    }
}
