//! The article's `Chat` service: every inbound `Msg` becomes one `Echo` with text `<<text>>`.
//!
//! The reply stream is a plain transform of the request stream (`Streaming::map`): no task
//! and no channel per call or per message. tonic's encoder polls the map, the map polls the
//! decoder, so a reply is produced only when HTTP/2 flow control lets the server send it,
//! and the next request message is read only then. Backpressure is end to end for free.

use futures::StreamExt as _;
use futures::stream::Map;
use tonic::{Code, Request, Response, Status, Streaming};

use duplex_proto::chat::chat_server::{Chat, ChatServer};
use duplex_proto::chat::{Echo, Msg};

/// The stateless echo service. Cheap to clone; one value serves every connection.
#[derive(Debug, Clone, Copy, Default)]
pub struct ChatService;

impl ChatService {
    /// The service wrapped for tonic, refusing inbound messages over `max_message_size`
    /// bytes with RESOURCE_EXHAUSTED.
    pub fn into_server(self, max_message_size: usize) -> ChatServer<Self> {
        ChatServer::new(self).max_decoding_message_size(max_message_size)
    }
}

/// The reply stream: the request stream mapped message by message.
pub type EchoStream = Map<Streaming<Msg>, fn(Result<Msg, Status>) -> Result<Echo, Status>>;

#[tonic::async_trait]
impl Chat for ChatService {
    type ChatStream = EchoStream;

    async fn chat(&self, request: Request<Streaming<Msg>>) -> Result<Response<EchoStream>, Status> {
        let transform: fn(Result<Msg, Status>) -> Result<Echo, Status> =
            |inbound| inbound.map(echo).map_err(inbound_error);
        Ok(Response::new(request.into_inner().map(transform)))
    }
}

/// The reply to one message: its text wrapped as `<<text>>`.
pub fn echo(msg: Msg) -> Echo {
    let mut text = String::with_capacity(msg.text.len() + 4);
    text.push_str("<<");
    text.push_str(&msg.text);
    text.push_str(">>");
    Echo { text }
}

/// Maps an error from tonic's request decoder to the status the gRPC spec asks for.
///
/// tonic reports a message declared over the size limit as OUT_OF_RANGE; the spec, grpc-go
/// and C-core say RESOURCE_EXHAUSTED, which is what clients retry and alert on. The decoder
/// emits OUT_OF_RANGE for nothing else, so the mapping is exact.
pub fn inbound_error(status: Status) -> Status {
    if status.code() == Code::OutOfRange {
        Status::resource_exhausted(status.message().to_owned())
    } else {
        status
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn echo_wraps_text_including_empty_and_unicode() {
        assert_eq!(echo(Msg { text: "hi".into() }).text, "<<hi>>");
        assert_eq!(
            echo(Msg {
                text: String::new()
            })
            .text,
            "<<>>"
        );
        assert_eq!(
            echo(Msg {
                text: "héllo ✓".into()
            })
            .text,
            "<<héllo ✓>>"
        );
    }

    #[test]
    fn oversize_decode_error_becomes_resource_exhausted() {
        let mapped = inbound_error(Status::out_of_range("decoded message length too large"));
        assert_eq!(mapped.code(), Code::ResourceExhausted);
        assert_eq!(mapped.message(), "decoded message length too large");
        assert_eq!(
            inbound_error(Status::internal("eof")).code(),
            Code::Internal
        );
    }
}
