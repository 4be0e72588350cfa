//! The in-process agents' warnings and errors, counted by message: how many dials failed
//! ("cannot reach the control plane"), how many streams ended ("the stream failed"), and so on.
//!
//! The agents report a failed dial only in their log, so the benchmarks that count failures
//! (`replicas`' reconnection storm) read it there: [`Counter`] is a `tracing` layer installed
//! beside the log's own, and [`snapshot`] the counts so far. The log shows the same events; the
//! counter only adds them up.

use std::collections::BTreeMap;
use std::sync::Mutex;

use tracing::field::{Field, Visit};
use tracing_subscriber::layer::Context;

/// Counts per message, of every agent warning and error since the process started.
static COUNTS: Mutex<BTreeMap<String, u64>> = Mutex::new(BTreeMap::new());

/// The layer: counts `WARN` and `ERROR` events whose target is the agent's crate.
#[derive(Debug, Clone, Copy, Default)]
pub struct Counter;

/// The event's message. An event may also have a field of its own named `message` (the
/// agent's "the stream failed" carries the gRPC status's): the event's text is the one
/// recorded as formatting arguments, a plain string only stands in when there is none.
#[derive(Default)]
struct Message {
    text: Option<String>,
    field: Option<String>,
}

impl Visit for Message {
    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            self.field = Some(value.to_owned());
        }
    }

    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        if field.name() == "message" {
            self.text = Some(format!("{value:?}"));
        }
    }
}

impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for Counter {
    fn on_event(&self, event: &tracing::Event<'_>, _: Context<'_, S>) {
        let meta = event.metadata();
        if *meta.level() > tracing::Level::WARN || !meta.target().starts_with("keyward_agent") {
            return;
        }
        let mut message = Message::default();
        event.record(&mut message);
        let message = message.text.or(message.field).unwrap_or_default();
        if let Ok(mut counts) = COUNTS.lock() {
            *counts.entry(message).or_default() += 1;
        }
    }
}

/// The counts so far, by message.
pub fn snapshot() -> BTreeMap<String, u64> {
    COUNTS.lock().map(|c| c.clone()).unwrap_or_default()
}

/// What happened between two snapshots: the counts that grew, by how much.
pub fn since(before: &BTreeMap<String, u64>) -> BTreeMap<String, u64> {
    snapshot()
        .into_iter()
        .filter_map(|(message, n)| {
            let grew = n.saturating_sub(before.get(&message).copied().unwrap_or(0));
            (grew > 0).then_some((message, grew))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use tracing_subscriber::layer::SubscriberExt as _;

    use super::*;

    #[test]
    fn counts_the_agents_warnings_by_message_and_nothing_else() {
        let before = snapshot();
        let subscriber = tracing_subscriber::registry().with(Counter);
        tracing::subscriber::with_default(subscriber, || {
            for _ in 0..3 {
                tracing::warn!(target: "keyward_agent::runtime", url = "x", "cannot reach the control plane");
            }
            tracing::warn!(target: "keyward_agent::runtime", code = 2, message = "h2 protocol error", "the stream failed");
            tracing::error!(target: "keyward_agent::runtime", "the apply task failed");
            tracing::info!(target: "keyward_agent::runtime", "connected to the control plane");
            tracing::warn!(target: "keyward_server::hub", "not an agent");
        });
        let grew = since(&before);
        assert_eq!(grew.get("cannot reach the control plane"), Some(&3));
        assert_eq!(grew.get("the stream failed"), Some(&1));
        assert_eq!(grew.get("the apply task failed"), Some(&1));
        assert_eq!(grew.len(), 3, "{grew:?}");
    }
}
