//! The id of the request a task answers: the REST pipeline sets it, a problem document names it
//! as its `instance`, and the server log records a failure's cause under it, so an operator finds
//! the cause a client was told about. A module of its own so that the error mapping can read
//! what the transport set without depending on the transport.

use std::future::Future;

tokio::task_local! {
    static REQUEST_ID: String;
}

/// The id of the request this task answers, if any.
pub fn current() -> Option<String> {
    REQUEST_ID.try_with(Clone::clone).ok()
}

/// Runs `work` as the answer to the request `id`.
pub async fn scope<F: Future>(id: String, work: F) -> F::Output {
    REQUEST_ID.scope(id, work).await
}
