//! The one mapping from duplex's errors to `tonic::Status`: engine errors ([`HubError`],
//! whose [`Code`] values are the gRPC numbers), authentication failures ([`AuthError`]),
//! and the corrections tonic's request decoder needs (oversize, undecodable).
//!
//! Services call these and never build a status from an engine error by hand, so a new
//! error kind needs a change here only.

use duplex_hub::{Code, HubError};
use tonic::Status;

use crate::auth::AuthError;

/// The gRPC code for an engine [`Code`]: the same number, by construction of `duplex.v1.Code`.
pub(crate) fn grpc_code(code: Code) -> tonic::Code {
    tonic::Code::from_i32(code as i32)
}

/// The engine [`Code`] for a gRPC code (the same number).
pub(crate) fn hub_code(code: tonic::Code) -> Code {
    Code::try_from(code as i32).unwrap_or(Code::Unknown)
}

/// Maps an engine error to the status the client sees.
pub(crate) fn status(error: HubError) -> Status {
    Status::new(grpc_code(error.code()), error.to_string())
}

/// The engine error for a failed inbound stream (a session's `ClientFrame`s), with the
/// status the gRPC spec asks for (see [`inbound_error`]).
pub(crate) fn inbound_hub_error(status: Status) -> HubError {
    let status = inbound_error(status);
    HubError::Inbound(hub_code(status.code()), status.message().to_owned())
}

/// Maps a failed authentication to UNAUTHENTICATED, with words that never echo the token.
pub(crate) fn auth_status(error: AuthError) -> Status {
    Status::unauthenticated(error.to_string())
}

/// The status for a request message that does not decode: INTERNAL with prost's words, as
/// tonic-prost reports it (and the gRPC status-code guide asks).
pub(crate) fn undecodable(error: prost::DecodeError) -> Status {
    Status::internal(error.to_string())
}

/// Maps an error from tonic's request decoder to the status the gRPC spec asks for.
///
/// tonic reports a message declared over the size limit as OUT_OF_RANGE; the spec, grpc-go
/// and C-core say RESOURCE_EXHAUSTED, which is what clients retry and alert on. The decoder
/// emits OUT_OF_RANGE for nothing else, so the mapping is exact.
pub(crate) fn inbound_error(status: Status) -> Status {
    if status.code() == tonic::Code::OutOfRange {
        Status::resource_exhausted(status.message().to_owned())
    } else {
        status
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn oversize_decode_error_becomes_resource_exhausted() {
        let mapped = inbound_error(Status::out_of_range("decoded message length too large"));
        assert_eq!(mapped.code(), tonic::Code::ResourceExhausted);
        assert_eq!(mapped.message(), "decoded message length too large");
        assert_eq!(
            inbound_error(Status::internal("eof")).code(),
            tonic::Code::Internal
        );
    }

    #[test]
    fn engine_codes_are_the_grpc_numbers() {
        for number in 0..=16 {
            let grpc = tonic::Code::from_i32(number);
            assert_eq!(grpc_code(hub_code(grpc)), grpc);
            let code = Code::try_from(number).expect("every gRPC code has a duplex.v1.Code");
            assert_eq!(code.as_str_name().replace('_', "").to_lowercase(), {
                format!("{grpc:?}").to_lowercase()
            });
        }
        let mapped = status(HubError::PermissionDenied("no".into()));
        assert_eq!(mapped.code(), tonic::Code::PermissionDenied);
    }
}
