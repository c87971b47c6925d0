//! The article's `Chat` service: every inbound `Msg` becomes one `Echo` with text `<<text>>`.
//!
//! Written by hand around [`EchoCodec`] rather than generated, so a message's text is never
//! copied into a `String` and out again: the decoder hands on the `text` field as a slice of
//! the bytes it arrived in (checked to be UTF-8, as prost checks), and the encoder writes the
//! `Echo` straight from that slice. No allocation per message. A message of any other shape
//! than the one field every client sends goes through prost, so what is accepted, and the
//! error for what is not, is exactly what the generated code gives.
//!
//! The reply stream is a plain transform of the request stream (`Streaming::map`): no task
//! and no channel per call or per message. tonic's encoder polls the map, the map polls the
//! decoder, so a reply is produced only when HTTP/2 flow control lets the server send it,
//! and the next request message is read only then. Backpressure is end to end for free.

use std::convert::Infallible;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::{Buf as _, BufMut as _, Bytes};
use futures::StreamExt as _;
use futures::future::{BoxFuture, Ready, ready};
use futures::stream::Map;
use prost::Message as _;
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::server::{Grpc, NamedService, StreamingService};
use tonic::{Request, Response, Status, Streaming};

use duplex_proto::chat::Msg;

use crate::metrics::{ServerCounters, Service};
use crate::status::{inbound_error, undecodable};

const METHOD: &str = "/chat.Chat/Chat";

/// The echo service. Cheap to clone; one value serves every connection.
#[derive(Debug, Clone)]
pub struct ChatService {
    max_message_size: usize,
    /// Where messages in and out are counted (`/metrics`), when served by a `Server`.
    counters: Option<Arc<ServerCounters>>,
}

impl ChatService {
    /// Refuses inbound messages over `max_message_size` bytes with RESOURCE_EXHAUSTED.
    pub fn new(max_message_size: usize) -> Self {
        Self {
            max_message_size,
            counters: None,
        }
    }

    /// Counts every message in and out in `counters`.
    pub(crate) fn with_counters(mut self, counters: Arc<ServerCounters>) -> Self {
        self.counters = Some(counters);
        self
    }
}

impl NamedService for ChatService {
    const NAME: &'static str = "chat.Chat";
}

impl<B> tower::Service<http::Request<B>> for ChatService
where
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>> + Send + 'static,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = Infallible;
    type Future = BoxFuture<'static, Result<Self::Response, Infallible>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        if request.uri().path() != METHOD {
            let refused = Status::unimplemented("no such method in chat.Chat").into_http();
            return Box::pin(ready(Ok(refused)));
        }
        let limit = self.max_message_size;
        let codec = EchoCodec {
            counters: self.counters.clone(),
        };
        Box::pin(async move {
            let mut grpc = Grpc::new(codec).max_decoding_message_size(limit);
            Ok(grpc.streaming(ChatMethod, request).await)
        })
    }
}

/// `Chat.Chat`: the replies are the requests, mapped.
struct ChatMethod;

/// The reply stream: the request stream with decoder errors mapped.
pub type EchoStream =
    Map<Streaming<MsgText>, fn(Result<MsgText, Status>) -> Result<MsgText, Status>>;

impl StreamingService<MsgText> for ChatMethod {
    type Response = MsgText;
    type ResponseStream = EchoStream;
    type Future = Ready<Result<Response<EchoStream>, Status>>;

    fn call(&mut self, request: Request<Streaming<MsgText>>) -> Self::Future {
        let transform: fn(Result<MsgText, Status>) -> Result<MsgText, Status> =
            |inbound| inbound.map_err(inbound_error);
        ready(Ok(Response::new(request.into_inner().map(transform))))
    }
}

/// The `text` of one `Msg`: valid UTF-8, still in the buffer it arrived in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MsgText(Bytes);

impl MsgText {
    /// The text's bytes (UTF-8).
    pub fn text(&self) -> &[u8] {
        &self.0
    }
}

/// Key of `string text = 1` (field 1, length-delimited) in its one-byte form.
const TEXT_KEY: u8 = 0x0a;

/// Decodes a `Msg` to its text; the same result as `Msg::decode`, error included.
pub fn decode_msg(message: Bytes) -> Result<MsgText, prost::DecodeError> {
    match text_field(&message) {
        Some(range) => Ok(MsgText(message.slice(range))),
        None => Msg::decode(message).map(|msg| MsgText(Bytes::from(msg.text))),
    }
}

/// Where the text is when the message is only `text` fields (the last one counts, as in
/// protobuf), each with a one-byte key, a length that fits and UTF-8 inside. `None` for
/// anything else, which prost then decodes or refuses.
fn text_field(message: &[u8]) -> Option<std::ops::Range<usize>> {
    let mut text = 0..0;
    let mut at = 0;
    while at < message.len() {
        if message[at] != TEXT_KEY {
            return None;
        }
        let (len, len_bytes) = short_varint(&message[at + 1..])?;
        let start = at + 1 + len_bytes;
        let end = start.checked_add(len).filter(|&end| end <= message.len())?;
        std::str::from_utf8(&message[start..end]).ok()?;
        text = start..end;
        at = end;
    }
    Some(text)
}

/// A varint of at most four bytes (values below 2^28, more than any message we accept) and
/// how many bytes it took.
fn short_varint(bytes: &[u8]) -> Option<(usize, usize)> {
    let mut value = 0usize;
    for (i, &byte) in bytes.iter().take(4).enumerate() {
        value |= usize::from(byte & 0x7f) << (7 * i);
        if byte & 0x80 == 0 {
            return Some((value, i + 1));
        }
    }
    None
}

/// Writes the `Echo` for `text`: `<<text>>` in field 1.
fn encode_echo(text: &MsgText, buf: &mut impl bytes::BufMut) {
    buf.put_u8(TEXT_KEY);
    prost::encoding::encode_varint(text.0.len() as u64 + 4, buf);
    buf.put_slice(b"<<");
    buf.put_slice(&text.0);
    buf.put_slice(b">>");
}

/// Decodes `Msg` to [`MsgText`] and encodes [`MsgText`] as its `Echo`.
#[derive(Debug, Clone, Default)]
pub struct EchoCodec {
    /// Where each message in and out is counted, if anywhere.
    counters: Option<Arc<ServerCounters>>,
}

impl Codec for EchoCodec {
    type Encode = MsgText;
    type Decode = MsgText;
    type Encoder = EchoCodec;
    type Decoder = EchoCodec;

    fn encoder(&mut self) -> EchoCodec {
        self.clone()
    }

    fn decoder(&mut self) -> EchoCodec {
        self.clone()
    }
}

impl Encoder for EchoCodec {
    type Item = MsgText;
    type Error = Status;

    fn encode(&mut self, text: MsgText, buf: &mut EncodeBuf<'_>) -> Result<(), Status> {
        let room_before = buf.remaining_mut();
        encode_echo(&text, buf);
        if let Some(counters) = &self.counters {
            counters.chat_sent(room_before - buf.remaining_mut());
        }
        Ok(())
    }
}

impl Decoder for EchoCodec {
    type Item = MsgText;
    type Error = Status;

    fn decode(&mut self, buf: &mut DecodeBuf<'_>) -> Result<Option<MsgText>, Status> {
        if let Some(counters) = &self.counters {
            counters.received(Service::Chat, buf.remaining());
        }
        let message = buf.copy_to_bytes(buf.remaining());
        decode_msg(message).map(Some).map_err(undecodable)
    }
}

#[cfg(test)]
mod tests {
    use duplex_proto::chat::Echo;

    use super::*;

    fn msg(text: &str) -> Bytes {
        Msg { text: text.into() }.encode_to_vec().into()
    }

    fn echoed(text: &str) -> String {
        let mut out = Vec::new();
        encode_echo(&decode_msg(msg(text)).unwrap(), &mut out);
        Echo::decode(&out[..]).unwrap().text
    }

    #[test]
    fn echo_wraps_text_including_empty_and_unicode() {
        assert_eq!(echoed("hi"), "<<hi>>");
        assert_eq!(echoed(""), "<<>>");
        assert_eq!(echoed("héllo ✓"), "<<héllo ✓>>");
        let long = "x".repeat(70_000);
        assert_eq!(echoed(&long), format!("<<{long}>>"));
    }

    /// A small deterministic generator of protobuf-ish bytes: well-formed `Msg`s, repeated
    /// and unknown fields of every wire type, groups, overlong varints, truncations, bad
    /// UTF-8 and plain noise.
    struct Inputs(u64);

    impl Inputs {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }

        fn below(&mut self, n: u64) -> usize {
            (self.next() % n) as usize
        }

        fn varint(&mut self, out: &mut Vec<u8>, value: u64) {
            prost::encoding::encode_varint(value, out);
            if self.below(8) == 0 {
                // The same value, one byte longer than it needs.
                let last = out.len() - 1;
                out[last] |= 0x80;
                out.push(0);
            }
        }

        fn message(&mut self) -> Vec<u8> {
            let mut out = Vec::new();
            for _ in 0..self.below(4) {
                let text: Vec<u8> = match self.below(6) {
                    0 => vec![0xff, b'a'],
                    1 => "é✓".as_bytes().to_vec(),
                    _ => (0..self.below(200))
                        .map(|i| b'a' + (i % 26) as u8)
                        .collect(),
                };
                match self.below(8) {
                    0 => {
                        let field = 2 + self.below(20) as u64;
                        let wire = self.below(6) as u64;
                        self.varint(&mut out, field << 3 | wire);
                        match wire {
                            0 => {
                                let value = self.next();
                                self.varint(&mut out, value);
                            }
                            1 => out.extend_from_slice(&self.next().to_le_bytes()),
                            2 => {
                                self.varint(&mut out, text.len() as u64);
                                out.extend_from_slice(&text);
                            }
                            5 => out.extend_from_slice(&self.next().to_le_bytes()[..4]),
                            _ => {}
                        }
                    }
                    1 => {
                        let key = self.next() & 0xff;
                        self.varint(&mut out, key);
                    }
                    _ => {
                        self.varint(&mut out, 0x0a);
                        self.varint(&mut out, text.len() as u64);
                        out.extend_from_slice(&text);
                    }
                }
            }
            match self.below(10) {
                0 if !out.is_empty() => {
                    let cut = self.below(out.len() as u64);
                    out.truncate(cut);
                }
                1 => out = (0..self.below(32)).map(|_| self.next() as u8).collect(),
                _ => {}
            }
            out
        }
    }

    #[test]
    fn decoding_agrees_with_prost_on_every_input() {
        let mut inputs = Inputs(0x9e37_79b9_7f4a_7c15);
        let mut fast = 0;
        for _ in 0..50_000 {
            let bytes = inputs.message();
            let ours = decode_msg(Bytes::from(bytes.clone()));
            let theirs = Msg::decode(&bytes[..]);
            match (&ours, &theirs) {
                (Ok(ours), Ok(theirs)) => {
                    assert_eq!(ours.text(), theirs.text.as_bytes(), "{bytes:02x?}")
                }
                (Err(ours), Err(theirs)) => assert_eq!(ours.to_string(), theirs.to_string()),
                _ => panic!("{bytes:02x?}: ours {ours:?}, prost {theirs:?}"),
            }
            fast += usize::from(text_field(&bytes).is_some());
        }
        assert!(
            fast > 10_000,
            "the fast path is taken for plain messages ({fast})"
        );
    }
}
