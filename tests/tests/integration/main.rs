//! keyward's integration tests, one binary: real OpenBao, real PostgreSQL, real OpenSSH tools.
//! `make test` installs what they need; a missing part fails the test with the install hint.

#![allow(clippy::unwrap_used, clippy::print_stdout)]

mod access_grants;
mod agent_bounds;
mod agent_e2e;
mod agent_mtls;
mod api_surface;
mod audit_export;
mod audit_signing;
mod authorized_keys_logins;
mod backends;
mod bad_input;
mod bastion_e2e;
mod certificates_e2e;
mod consistency;
mod data_export;
mod hostile_load;
mod krl;
mod leak_checks;
mod live_streams;
mod login_ingest;
mod mfa_totp;
mod offboarding;
mod openapi_fuzz;
mod passphrase_download;
mod recordings_api;
mod replicas;
mod restore_drill;
mod revocation_attacks;
mod rotate_all;
mod rotation;
mod session_recording;
mod sshd_certificates;
mod sshd_harness;
mod tenant_api;
mod vault_backups;
mod vault_failures;
mod vault_ha;
mod vault_policies;
mod vault_ssh_ca;
mod vault_store;
mod vault_tls;
mod web_ui;
mod web_ui_fleet;
mod web_ui_recordings;
