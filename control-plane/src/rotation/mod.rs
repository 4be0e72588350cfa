//! Rotation automation on top of the key lifecycle.
//!
//! - [`scheduler`]: rotates key sets when their policy says they are due, one scheduler per
//!   deployment (a PostgreSQL advisory lock among replicas), missed rotations at start.
//! - [`bulk`]: `rotate-all` jobs over every tenant for `ssh`, `smtp` or `dkim`, with progress that
//!   can be read or followed live.
//!
//! Both only call [`crate::lifecycle::KeyLifecycle`]: every rotation they make is the same
//! audited, check-and-set operation as an API call's, with its trigger in the audit event.

pub mod bulk;
pub mod scheduler;

pub use bulk::{BulkRotations, JobSnapshot, SecretType, TenantResult};
pub use scheduler::{DueReport, RotationScheduler, next_wake};

#[cfg(test)]
mod scheduler_tests;
