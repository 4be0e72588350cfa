//! The load generators, and one measured load of one target with either.

use super::{Measurement, Options, builtin, wrk};

/// Which load generator drives the targets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Generator {
    /// `wrk` (a separate process, C, epoll).
    Wrk,
    /// A closed-loop client on this process's runtime (reqwest): shares the CPUs and the runtime
    /// with the control plane, so it understates keyward; for the smoke mode.
    Builtin,
}

impl Generator {
    pub fn name(self) -> &'static str {
        match self {
            Generator::Wrk => "wrk",
            Generator::Builtin => "builtin",
        }
    }
}

/// A GET with its headers.
#[derive(Debug, Clone)]
pub(super) struct Request {
    pub(super) url: String,
    pub(super) headers: Vec<(String, String)>,
}

/// `seconds` of load on `request`; `None` for no seconds (no warm-up).
pub(super) async fn load(
    options: &Options,
    request: &Request,
    seconds: u64,
) -> anyhow::Result<Option<Measurement>> {
    if seconds == 0 {
        return Ok(None);
    }
    match options.generator {
        Generator::Wrk => wrk::run(options, request, seconds).await.map(Some),
        Generator::Builtin => builtin::run(options.connections, request, seconds)
            .await
            .map(Some),
    }
}
