//! REST latency at a fixed rate while something else happens: `GET
//! /api/v1/tenant/infrastructure/ssh-credentials` with a tenant's token, to the given replicas in
//! turn, one request sent every `1 / rate` seconds whatever the previous ones are doing (each in
//! a task of its own, so a slow answer does not delay the next request and hide itself).
//!
//! The probe runs on a thread and a runtime of its own: the benchmark's runtime also runs
//! thousands of agents, and a reconnecting fleet's TLS handshakes would otherwise sit in the
//! probe's way and be counted as the replicas' latency.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use tokio::sync::oneshot;

/// One request: where it went (the index in the probe's URLs), when it was sent, how long its
/// answer took, whether it was a 200.
#[derive(Debug, Clone, Copy)]
pub struct Sample {
    pub target: usize,
    pub sent: Instant,
    pub ms: f64,
    pub ok: bool,
}

/// The probe, running until [`Probe::stop`].
#[derive(Debug)]
pub struct Probe {
    samples: Arc<Mutex<Vec<Sample>>>,
    stop: oneshot::Sender<()>,
    thread: std::thread::JoinHandle<()>,
}

/// Requests of a window: latency of the 200 answers, and the others counted.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Window {
    pub ms: Vec<f64>,
    /// Requests that failed or answered another status.
    pub errors: usize,
    pub seconds: f64,
}

impl Probe {
    /// Starts sending: `rate` requests a second, round robin over `urls` (REST base URLs), each
    /// with the next of `tokens` (tenant tokens).
    pub fn start(urls: Vec<String>, tokens: Vec<String>, rate: u32) -> anyhow::Result<Self> {
        anyhow::ensure!(
            !urls.is_empty() && !tokens.is_empty() && rate > 0,
            "the probe needs a URL, a token and a rate"
        );
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(30))
            .build()?;
        let samples = Arc::new(Mutex::new(Vec::new()));
        let (stop, stopped) = oneshot::channel::<()>();
        let sink = Arc::clone(&samples);
        let thread = std::thread::Builder::new()
            .name("rest-probe".into())
            .spawn(move || runtime.block_on(send(http, urls, tokens, rate, sink, stopped)))?;
        Ok(Self {
            samples,
            stop,
            thread,
        })
    }

    /// Stops sending, waits for the requests in flight, and returns every sample.
    pub async fn stop(self) -> Vec<Sample> {
        let _ = self.stop.send(());
        let thread = self.thread;
        let _ = tokio::task::spawn_blocking(move || thread.join()).await;
        self.samples
            .lock()
            .map(|mut s| std::mem::take(&mut *s))
            .unwrap_or_default()
    }
}

/// The probe's loop, on its own runtime.
async fn send(
    http: reqwest::Client,
    urls: Vec<String>,
    tokens: Vec<String>,
    rate: u32,
    sink: Arc<Mutex<Vec<Sample>>>,
    mut stopped: oneshot::Receiver<()>,
) {
    let mut tick = tokio::time::interval(Duration::from_secs(1) / rate);
    let mut inflight = tokio::task::JoinSet::new();
    for n in 0usize.. {
        tokio::select! {
            _ = &mut stopped => break,
            _ = tick.tick() => {}
        }
        let target = n % urls.len();
        let request = http
            .get(format!(
                "{}/api/v1/tenant/infrastructure/ssh-credentials",
                urls[target]
            ))
            .bearer_auth(&tokens[n % tokens.len()]);
        let sink = Arc::clone(&sink);
        inflight.spawn(async move {
            let sent = Instant::now();
            let ok = match request.send().await {
                Ok(response) => {
                    let ok = response.status().as_u16() == 200;
                    ok && response.bytes().await.is_ok()
                }
                Err(_) => false,
            };
            let ms = sent.elapsed().as_secs_f64() * 1000.0;
            if let Ok(mut samples) = sink.lock() {
                samples.push(Sample {
                    target,
                    sent,
                    ms,
                    ok,
                });
            }
        });
        // Finished requests leave the set as they go.
        while inflight.try_join_next().is_some() {}
    }
    // The requests still in flight finish (bounded by the client's timeout).
    while inflight.join_next().await.is_some() {}
}

/// The samples sent in `[from, to)` to the target `target` (every target's when `None`).
pub fn window(samples: &[Sample], target: Option<usize>, from: Instant, to: Instant) -> Window {
    let inside = samples
        .iter()
        .filter(|s| s.sent >= from && s.sent < to && target.is_none_or(|t| s.target == t));
    let mut window = Window {
        seconds: to.saturating_duration_since(from).as_secs_f64(),
        ..Window::default()
    };
    for s in inside {
        if s.ok {
            window.ms.push(s.ms);
        } else {
            window.errors += 1;
        }
    }
    window
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_window_keeps_what_was_sent_inside_it_and_counts_failures() {
        let t0 = Instant::now();
        let at = |ms: u64, latency: f64, ok: bool| Sample {
            target: usize::try_from(ms / 10 % 2).unwrap(),
            sent: t0 + Duration::from_millis(ms),
            ms: latency,
            ok,
        };
        let samples = [
            at(0, 1.0, true),
            at(10, 2.0, false),
            at(20, 3.0, true),
            at(30, 4.0, true),
        ];
        let (from, to) = (
            t0 + Duration::from_millis(10),
            t0 + Duration::from_millis(30),
        );
        let w = window(&samples, None, from, to);
        assert_eq!((w.ms, w.errors), (vec![3.0], 1));
        assert!((w.seconds - 0.02).abs() < 1e-9);
        // Sent at 20 ms: target 0; at 10 ms: target 1.
        assert_eq!(window(&samples, Some(0), from, to).ms, [3.0]);
        assert_eq!(window(&samples, Some(1), from, to).errors, 1);
    }
}
