//! Server-Sent Events read event by event, as a browser's `EventSource` would.

use std::time::{Duration, Instant};

use serde_json::Value;

use crate::ControlPlane;

/// An open Server-Sent Events response, read event by event.
#[derive(Debug)]
pub struct Events {
    response: reqwest::Response,
    buffer: String,
    /// Bytes received, keep-alive comments included.
    pub bytes: usize,
}

/// What the next read found.
#[derive(Debug)]
pub enum Next {
    Event(String, Value),
    Ended,
    TimedOut,
}

impl Events {
    pub async fn open(cp: &ControlPlane, path: &str, token: &str) -> Self {
        let response = reqwest::Client::new()
            .get(format!("{}{path}", cp.url))
            .bearer_auth(token)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
        assert_eq!(
            response.headers()["content-type"].to_str().unwrap(),
            "text/event-stream"
        );
        Self {
            response,
            buffer: String::new(),
            bytes: 0,
        }
    }

    /// The next event before `deadline`.
    pub async fn next_before(&mut self, deadline: Instant) -> Next {
        loop {
            if let Some(end) = self.buffer.find("\n\n") {
                let block: String = self.buffer.drain(..end + 2).collect();
                let mut name = None;
                let mut data = String::new();
                for line in block.lines() {
                    if let Some(value) = line.strip_prefix("event: ") {
                        name = Some(value.to_owned());
                    } else if let Some(value) = line.strip_prefix("data: ") {
                        data.push_str(value);
                    }
                }
                if let Some(name) = name {
                    return Next::Event(name, serde_json::from_str(&data).unwrap());
                }
                continue; // a keep-alive comment
            }
            let left = deadline.saturating_duration_since(Instant::now());
            match tokio::time::timeout(left, self.response.chunk()).await {
                Err(_) => return Next::TimedOut,
                Ok(Ok(Some(chunk))) => {
                    self.bytes += chunk.len();
                    self.buffer.push_str(&String::from_utf8_lossy(&chunk));
                }
                Ok(Ok(None) | Err(_)) => return Next::Ended,
            }
        }
    }

    /// The next event within `within`, which must come.
    pub async fn expect(&mut self, within: Duration) -> (String, Value) {
        match self.next_before(Instant::now() + within).await {
            Next::Event(name, data) => (name, data),
            other => panic!("no event within {within:?}: {other:?}"),
        }
    }

    /// Every event until the stream ends, which must be before `deadline`.
    pub async fn until_end(&mut self, deadline: Instant) -> Vec<(String, Value)> {
        let mut events = Vec::new();
        loop {
            match self.next_before(deadline).await {
                Next::Event(name, data) => events.push((name, data)),
                Next::Ended => return events,
                Next::TimedOut => panic!("the stream was still open at the deadline: {events:?}"),
            }
        }
    }

    /// Every event in the next `window` (the stream must stay open).
    pub async fn during(&mut self, window: Duration) -> Vec<(String, Value)> {
        let deadline = Instant::now() + window;
        let mut events = Vec::new();
        loop {
            match self.next_before(deadline).await {
                Next::Event(name, data) => events.push((name, data)),
                Next::TimedOut => return events,
                Next::Ended => panic!("the stream ended: {events:?}"),
            }
        }
    }
}
