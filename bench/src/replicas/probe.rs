//! REST latency at a fixed rate while something else happens: `GET
//! /api/v1/tenant/infrastructure/ssh-credentials` with a tenant's token, to the given replicas in
//! turn, one request sent every `1 / rate` seconds whatever the previous ones are doing (each in
//! a task of its own, so a slow answer does not delay the next request and hide itself).

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// One request: when it was sent, how long its answer took, whether it was a 200.
#[derive(Debug, Clone, Copy)]
pub struct Sample {
    pub sent: Instant,
    pub ms: f64,
    pub ok: bool,
}

/// The probe, running until [`Probe::stop`].
#[derive(Debug)]
pub struct Probe {
    samples: Arc<Mutex<Vec<Sample>>>,
    stop: oneshot::Sender<()>,
    task: JoinHandle<()>,
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
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(30))
            .build()?;
        let samples = Arc::new(Mutex::new(Vec::new()));
        let (stop, mut stopped) = oneshot::channel::<()>();
        let sink = Arc::clone(&samples);
        let task = tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(1) / rate);
            let mut inflight = tokio::task::JoinSet::new();
            for n in 0usize.. {
                tokio::select! {
                    _ = &mut stopped => break,
                    _ = tick.tick() => {}
                }
                let request = http
                    .get(format!(
                        "{}/api/v1/tenant/infrastructure/ssh-credentials",
                        urls[n % urls.len()]
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
                        samples.push(Sample { sent, ms, ok });
                    }
                });
                // Finished requests leave the set as they go.
                while inflight.try_join_next().is_some() {}
            }
            // The requests still in flight finish (bounded by the client's timeout).
            while inflight.join_next().await.is_some() {}
        });
        Ok(Self {
            samples,
            stop,
            task,
        })
    }

    /// Stops sending, waits for the requests in flight, and returns every sample.
    pub async fn stop(self) -> Vec<Sample> {
        let _ = self.stop.send(());
        let _ = self.task.await;
        self.samples
            .lock()
            .map(|mut s| std::mem::take(&mut *s))
            .unwrap_or_default()
    }
}

/// The samples sent in `[from, to)`.
pub fn window(samples: &[Sample], from: Instant, to: Instant) -> Window {
    let inside = samples.iter().filter(|s| s.sent >= from && s.sent < to);
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
        let w = window(
            &samples,
            t0 + Duration::from_millis(10),
            t0 + Duration::from_millis(30),
        );
        assert_eq!((w.ms, w.errors), (vec![3.0], 1));
        assert!((w.seconds - 0.02).abs() < 1e-9);
    }
}
