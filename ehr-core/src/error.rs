//! The record API's error type.

use crate::apply::{KvError, Rejection};
use crate::fhir::{FhirError, ImportError};

/// What a record operation can fail with. Nothing is written when an
/// operation fails.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The resource is not acceptable.
    #[error("{0}")]
    Resource(#[from] FhirError),
    /// The Bundle is not acceptable; names the failing entry.
    #[error("{0}")]
    Import(#[from] ImportError),
    /// The record's rules refuse the write (consent, state).
    #[error("rejected: {0}")]
    Rejected(#[from] Rejection),
    /// No such resource (or it is deleted).
    #[error("{0} not found")]
    NotFound(String),
    /// `create` on storage that already holds a record.
    #[error("the storage already holds a record")]
    Exists,
    /// `open` on storage that holds no record.
    #[error("the storage holds no record")]
    NoRecord,
    /// A search query that cannot be run.
    #[error("invalid query: {0}")]
    Query(String),
    /// An attachment's content does not match its reference's hash or size.
    #[error("attachment {0} does not match its hash or size")]
    AttachmentMismatch(String),
    /// Storage failed (I/O, or a corrupt log).
    #[error("storage: {0}")]
    Storage(String),
    /// Encryption: a missing scope key, a wrong key, a tampered or
    /// misplaced ciphertext.
    #[error("{0}")]
    Sealed(#[from] crate::scope_crypto::SealError),
    /// An invite could not be redeemed (expired, used, cancelled, wrong
    /// secret, nobody answered, ...); nothing was granted.
    #[error("{0}")]
    Invite(#[from] crate::invite::InviteError),
    /// Emergency access by contacts: too few or forged shares, an expired
    /// opening, no setup.
    #[error("{0}")]
    Emergency(#[from] crate::emergency_contacts::EmergencyError),
}

impl From<KvError> for Error {
    fn from(e: KvError) -> Self {
        Error::Storage(e.to_string())
    }
}

impl From<hyperbee_rs::Error> for Error {
    fn from(e: hyperbee_rs::Error) -> Self {
        Error::Storage(e.to_string())
    }
}

impl From<hypercore_rs::Error> for Error {
    fn from(e: hypercore_rs::Error) -> Self {
        Error::Storage(e.to_string())
    }
}

impl Error {
    /// The error as a FHIR OperationOutcome (JSON text). Import errors name
    /// the failing entry in `issue.expression`.
    pub fn to_operation_outcome(&self) -> String {
        if let Error::Import(e) = self {
            return e.to_operation_outcome();
        }
        let code = match self {
            Error::Resource(FhirError::TooLarge { .. }) => "too-costly",
            Error::Resource(FhirError::OtherPatient { .. }) => "forbidden",
            Error::Resource(_) | Error::Query(_) => "invalid",
            Error::Rejected(Rejection::Denied { .. }) => "forbidden",
            Error::Rejected(_) => "business-rule",
            Error::NotFound(_) | Error::NoRecord => "not-found",
            Error::Exists => "duplicate",
            _ => "exception",
        };
        serde_json::json!({
            "resourceType": "OperationOutcome",
            "issue": [{"severity": "error", "code": code, "diagnostics": self.to_string()}],
        })
        .to_string()
    }
}
