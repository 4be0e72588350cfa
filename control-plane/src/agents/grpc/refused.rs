//! Why the agents' endpoint refuses a stream or ends it, and the one mapping of those reasons,
//! the domain's failures among them, to the gRPC status the agent receives.
//!
//! The agent logs the code and message and redials with backoff, and the integration tests
//! assert codes (`RESOURCE_EXHAUSTED` for an oversized message, `INVALID_ARGUMENT` for a batch
//! over its bound, `PERMISSION_DENIED` with "current certificate" for a superseded
//! certificate): each reason keeps the code and text it had when the statuses were built where
//! they arose.

use tonic::{Code, Status};

use crate::agents::limits::{MAX_CSR_BYTES, MAX_LOGIN_EVENTS, MAX_MESSAGE_BYTES};
use crate::lifecycle::DomainError;

/// A reason to refuse an agent's stream, or to end it.
#[derive(Debug, thiserror::Error)]
pub(super) enum Refused {
    #[error("a client certificate is required")]
    NoCertificate,
    #[error("unreadable client certificate")]
    UnreadableCertificate,
    #[error("the certificate names no host")]
    NoHostNamed,
    #[error("the certificate names an invalid host")]
    InvalidHostNamed,
    #[error("the host is revoked")]
    HostRevoked,
    #[error("the certificate is not the host's current certificate")]
    NotCurrentCertificate,
    /// The hub cut the stream: the host was revoked, or it connected again elsewhere.
    #[error("the host was revoked or reconnected")]
    Cut,
    #[error("an agent message is at most {MAX_MESSAGE_BYTES} bytes")]
    MessageTooLarge,
    #[error("csr_pem is over {MAX_CSR_BYTES} bytes")]
    CsrTooLarge,
    #[error("a login batch holds at most {MAX_LOGIN_EVENTS} events, not {0}")]
    TooManyLoginEvents(usize),
    /// A session recording's chunk is invalid, out of order or over a bound.
    #[error(transparent)]
    Recording(#[from] crate::agents::recordings::ChunkRefused),
    /// A domain operation failed: the host is unknown, or the database could not say.
    #[error(transparent)]
    Domain(#[from] DomainError),
}

impl From<Refused> for Status {
    fn from(refused: Refused) -> Self {
        use Refused::*;
        let code = match &refused {
            NoCertificate | UnreadableCertificate => Code::Unauthenticated,
            NoHostNamed | InvalidHostNamed | HostRevoked | NotCurrentCertificate | Cut => {
                Code::PermissionDenied
            }
            MessageTooLarge => Code::ResourceExhausted,
            CsrTooLarge | TooManyLoginEvents(_) => Code::InvalidArgument,
            Recording(crate::agents::recordings::ChunkRefused::TooManyOpen { .. }) => {
                Code::ResourceExhausted
            }
            Recording(_) => Code::InvalidArgument,
            Domain(failure) => {
                // Never the cause's own text: it can name the database's address.
                let (code, message) = match failure {
                    DomainError::HostNotFound(_) => (Code::PermissionDenied, "unknown host"),
                    DomainError::Store(_) => (Code::Unavailable, "database unavailable"),
                    DomainError::Vault(_) => (Code::Unavailable, "Vault unavailable"),
                    other => (Code::Internal, other.code()),
                };
                return Status::new(code, message);
            }
        };
        Status::new(code, refused.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::StoreError;

    fn status(refused: Refused) -> (Code, String) {
        let status = Status::from(refused);
        (status.code(), status.message().to_owned())
    }

    #[test]
    fn agents_get_the_codes_and_messages_they_always_got() {
        let denied = |m: &str| (Code::PermissionDenied, m.to_owned());
        assert_eq!(
            status(Refused::NoCertificate),
            (
                Code::Unauthenticated,
                "a client certificate is required".into()
            )
        );
        assert_eq!(
            status(Refused::NotCurrentCertificate),
            denied("the certificate is not the host's current certificate")
        );
        assert_eq!(
            status(Refused::Cut),
            denied("the host was revoked or reconnected")
        );
        assert_eq!(
            status(DomainError::HostNotFound("h1".parse().expect("host id")).into()),
            denied("unknown host")
        );
        let store = StoreError::Corrupt {
            what: "host",
            detail: "postgres://db.internal".into(),
        };
        assert_eq!(
            status(DomainError::Store(store).into()),
            (Code::Unavailable, "database unavailable".into())
        );
        assert_eq!(
            status(Refused::MessageTooLarge),
            (
                Code::ResourceExhausted,
                format!("an agent message is at most {MAX_MESSAGE_BYTES} bytes")
            )
        );
        assert_eq!(
            status(Refused::TooManyLoginEvents(1001)),
            (
                Code::InvalidArgument,
                format!("a login batch holds at most {MAX_LOGIN_EVENTS} events, not 1001")
            )
        );
    }
}
