//! The built-in load generator: a closed-loop client (reqwest) on this process's runtime. It
//! shares the CPUs and the runtime with the control plane, so it understates keyward; it is for
//! the smoke mode and for where `wrk` is missing.

use std::time::{Duration, Instant};

use super::Measurement;
use super::load::Request;
use crate::stats::Summary;

/// `connections` tasks, each sending the next request as soon as the previous answer is read.
pub(super) async fn run(
    connections: usize,
    request: &Request,
    seconds: u64,
) -> anyhow::Result<Measurement> {
    let mut headers = reqwest::header::HeaderMap::new();
    for (name, value) in &request.headers {
        headers.insert(
            reqwest::header::HeaderName::from_bytes(name.as_bytes())?,
            reqwest::header::HeaderValue::from_str(value)?,
        );
    }
    let http = reqwest::Client::builder()
        .default_headers(headers)
        .pool_max_idle_per_host(connections)
        .timeout(Duration::from_secs(10))
        .build()?;
    let started = Instant::now();
    let deadline = started + Duration::from_secs(seconds);
    let mut tasks = Vec::with_capacity(connections);
    for _ in 0..connections.max(1) {
        let (http, url) = (http.clone(), request.url.clone());
        tasks.push(tokio::spawn(async move {
            let (mut latencies, mut errors, mut bytes) = (Vec::new(), 0u64, 0u64);
            while Instant::now() < deadline {
                let sent = Instant::now();
                match http.get(&url).send().await {
                    Ok(answer) => {
                        let ok = answer.status() == 200;
                        match answer.bytes().await {
                            Ok(body) if ok => {
                                bytes += body.len() as u64;
                                latencies.push(sent.elapsed());
                            }
                            _ => errors += 1,
                        }
                    }
                    Err(_) => errors += 1,
                }
            }
            (latencies, errors, bytes)
        }));
    }
    let (mut latencies, mut errors, mut bytes) = (Vec::new(), 0u64, 0u64);
    for task in tasks {
        let (l, e, b) = task.await?;
        latencies.extend(l);
        errors += e;
        bytes += b;
    }
    let seconds = started.elapsed().as_secs_f64();
    let ms: Vec<f64> = latencies.iter().map(|l| l.as_secs_f64() * 1000.0).collect();
    let summary = Summary::of(&ms);
    let requests = latencies.len() as u64;
    Ok(Measurement {
        requests,
        seconds,
        per_second: requests as f64 / seconds,
        p50_ms: summary.map_or(f64::NAN, |s| s.p50),
        p99_ms: summary.map_or(f64::NAN, |s| s.p99),
        errors,
        bytes_per_answer: bytes as f64 / requests.max(1) as f64,
    })
}
