//! keyward's integration tests, one binary: real OpenBao, real PostgreSQL, real OpenSSH tools.
//! `make test` installs what they need; a missing part fails the test with the install hint.

#![allow(clippy::unwrap_used, clippy::print_stdout)]

mod vault_policies;
