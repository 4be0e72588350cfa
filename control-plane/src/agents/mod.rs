//! The control plane's side of the agents: their certificate authority, the signed desired
//! states, the hub that wakes connected streams, and the mTLS gRPC server.

pub mod ca;
pub mod ca_trust;
pub mod grpc;
pub mod hub;
pub mod limits;
pub mod logins;
pub mod presence;
pub mod recordings;
pub mod signer;
pub mod sshd_files;
pub mod state;

#[cfg(test)]
mod bastion_tests;

use std::sync::Arc;

use crate::vault::{SecretStore, VaultError};

/// What the agent side needs at start: the CA and the state signing key, both from Vault.
#[derive(Debug, Clone)]
pub struct AgentTrust {
    pub ca: Arc<ca::AgentCa>,
    pub signer: Arc<signer::StateSigner>,
}

impl AgentTrust {
    /// Loads the CA and the signing key from Vault, creating them on the first start.
    pub async fn load_or_create(vault: &dyn SecretStore) -> Result<Self, AgentTrustError> {
        Ok(Self {
            ca: Arc::new(ca::AgentCa::load_or_create(vault).await?),
            signer: Arc::new(signer::StateSigner::load_or_create(vault).await?),
        })
    }
}

/// Why the agents' trust material could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum AgentTrustError {
    #[error(transparent)]
    Vault(#[from] VaultError),
    #[error("the stored {what} is unusable: {detail}")]
    Corrupt { what: &'static str, detail: String },
    #[error("certificate authority: {0}")]
    Ca(#[from] rcgen::Error),
}
