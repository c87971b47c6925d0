//! `HubError`: why a hub command failed, and its [`Code`].
//!
//! The hub knows nothing of gRPC. [`HubError::code`] names the kind of failure with
//! `duplex.v1.Code` (the enum `CommandError.code` carries on the wire); a transport maps
//! that to its own vocabulary once (the gRPC server: `duplex-server`'s `status.rs`).

use duplex_proto::hub::Code;
use duplex_store::{Offset, StoreError};

/// Why a command failed. Messages are meant for the user who sent the command.
#[derive(Debug, Clone, thiserror::Error)]
pub enum HubError {
    /// The command is malformed (bad room name, empty payload, …).
    #[error("{0}")]
    InvalidArgument(String),
    /// Resume asked for messages that retention already removed.
    #[error(
        "room {room}: offset {after} is older than retention keeps; the earliest available offset is {earliest}"
    )]
    ResumeTooOld {
        /// The room asked for.
        room: String,
        /// The offset the resume asked to continue after.
        after: Offset,
        /// The earliest offset the room still retains.
        earliest: Offset,
    },
    /// The command needs a state the session is not in (publish before join, …).
    #[error("{0}")]
    FailedPrecondition(String),
    /// The room was already joined by this session.
    #[error("room {0} is already joined by this session")]
    AlreadyJoined(String),
    /// The room is not joined by this session.
    #[error("room {0} is not joined by this session")]
    NotJoined(String),
    /// A payload or count is over a configured limit.
    #[error("{0}")]
    ResourceExhausted(String),
    /// The subscriber fell behind by more than its queue bound (policy `disconnect`).
    #[error(
        "subscriber fell behind by more than its queue bound; resume from the offsets in the lagged frames"
    )]
    Lagged,
    /// The client read nothing while frames waited for the send-stall timeout.
    #[error(
        "the client read nothing for {0:?} while frames waited to be sent; resume from the offsets in the lagged frames"
    )]
    SendStalled(std::time::Duration),
    /// The store failed; the command may be retried.
    #[error("store unavailable: {0}")]
    Store(String),
    /// The client's inbound stream failed (undecodable frame, oversized message, reset),
    /// as the transport classified it.
    #[error("{1}")]
    Inbound(Code, String),
    /// The session's rights do not cover the room.
    #[error("{0}")]
    PermissionDenied(String),
    /// The session's credentials expired.
    #[error("{0}")]
    Unauthenticated(String),
    /// The client sent nothing for the idle timeout.
    #[error("no frame from the client for {0:?}: send pings to keep an idle session open")]
    IdleTimeout(std::time::Duration),
    /// The hub is shutting down.
    #[error("server is shutting down")]
    ShuttingDown,
}

impl HubError {
    /// What kind of failure this is (its values are the gRPC status codes).
    pub fn code(&self) -> Code {
        match self {
            HubError::InvalidArgument(_) => Code::InvalidArgument,
            HubError::ResumeTooOld { .. } | HubError::FailedPrecondition(_) => {
                Code::FailedPrecondition
            }
            HubError::AlreadyJoined(_) => Code::AlreadyExists,
            HubError::NotJoined(_) => Code::NotFound,
            HubError::ResourceExhausted(_) | HubError::Lagged | HubError::SendStalled(_) => {
                Code::ResourceExhausted
            }
            HubError::Store(_) | HubError::ShuttingDown => Code::Unavailable,
            HubError::Inbound(code, _) => *code,
            HubError::PermissionDenied(_) => Code::PermissionDenied,
            HubError::Unauthenticated(_) => Code::Unauthenticated,
            HubError::IdleTimeout(_) => Code::DeadlineExceeded,
        }
    }

    /// For [`HubError::ResumeTooOld`], the earliest offset still available.
    pub fn earliest_offset(&self) -> Option<Offset> {
        match self {
            HubError::ResumeTooOld { earliest, .. } => Some(*earliest),
            _ => None,
        }
    }
}

impl From<StoreError> for HubError {
    fn from(error: StoreError) -> Self {
        match error {
            StoreError::Full { .. } => HubError::ResourceExhausted(error.to_string()),
            error => HubError::Store(error.to_string()),
        }
    }
}
