//! The service's one error type, and the one place that maps every error to a gRPC status.

use safebet_engine::{EngineError, ErrorKind};
use tonic::{Code, Status};

use crate::store::StoreError;

/// Why a call failed. Each variant names a class the caller acts on differently; [`ServiceError::code`] is the
/// only mapping to gRPC codes. A call that fails changed nothing.
#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    /// The request is malformed: a missing field, a NaN, a wrong dimension, a value out of range.
    #[error("{0}")]
    InvalidArgument(String),
    /// The request names an experiment or event that does not exist.
    #[error("{0}")]
    NotFound(String),
    /// The request repeats something already done (an experiment id taken, a reward already applied).
    #[error("{0}")]
    AlreadyExists(String),
    /// The request is well formed but does not fit the experiment (e.g. per-action features sent to a
    /// disjoint-layout experiment).
    #[error("{0}")]
    FailedPrecondition(String),
    /// The request is over a limit: too many actions, too large a batch, too many pending decisions.
    #[error("{0}")]
    ResourceExhausted(String),
    /// The engine refused the call; `context` says which experiment or event it concerned.
    #[error("{context}: {source}")]
    Engine {
        /// The experiment (and event) concerned.
        context: String,
        /// What the engine said.
        source: EngineError,
    },
    /// The embedded store failed; the change was not made and may be retried.
    #[error("storage unavailable: {0}")]
    Store(#[from] StoreError),
    /// The decision log refuses writes (an earlier commit failed); nothing was changed.
    #[error("{0}")]
    Unavailable(String),
    /// The caller's key may not do this.
    #[error("{0}")]
    PermissionDenied(String),
}

impl ServiceError {
    /// Wraps an engine error with the experiment (and event) it concerned.
    pub fn engine(context: impl Into<String>, source: EngineError) -> Self {
        ServiceError::Engine { context: context.into(), source }
    }

    /// The gRPC status code of this error: the only place errors are mapped to codes.
    pub fn code(&self) -> Code {
        match self {
            ServiceError::InvalidArgument(_) => Code::InvalidArgument,
            ServiceError::NotFound(_) => Code::NotFound,
            ServiceError::AlreadyExists(_) => Code::AlreadyExists,
            ServiceError::FailedPrecondition(_) => Code::FailedPrecondition,
            ServiceError::ResourceExhausted(_) => Code::ResourceExhausted,
            ServiceError::Store(_) | ServiceError::Unavailable(_) => Code::Unavailable,
            ServiceError::PermissionDenied(_) => Code::PermissionDenied,
            ServiceError::Engine { source, .. } => match source.kind() {
                ErrorKind::InvalidArgument => Code::InvalidArgument,
                ErrorKind::NotFound => Code::NotFound,
                ErrorKind::AlreadyExists => Code::AlreadyExists,
                ErrorKind::FailedPrecondition => Code::FailedPrecondition,
            },
        }
    }
}

impl From<ServiceError> for Status {
    fn from(error: ServiceError) -> Status {
        Status::new(error.code(), error.to_string())
    }
}

/// The error of one item of a batch, in the wire form.
pub(crate) fn item_error(error: ServiceError) -> safebet_proto::ItemError {
    safebet_proto::ItemError { code: error.code() as i32, message: error.to_string() }
}
