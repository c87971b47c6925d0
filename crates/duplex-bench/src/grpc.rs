//! The client's wire: raw HTTP/2 with the `h2` crate, gRPC length-prefixed messages split
//! without decoding, a minimal protobuf field walker for the hub frames the bench reads,
//! and messages encoded once.

use std::time::Duration;

use bytes::{BufMut as _, Bytes, BytesMut};
use futures::stream::{self, LocalBoxStream, StreamExt as _};
use h2::client::{ResponseFuture, SendRequest};
use h2::{RecvStream, SendStream};
use prost::Message as _;
use std::sync::Arc;

use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::rustls::pki_types::pem::PemObject as _;
use tokio_rustls::rustls::pki_types::{CertificateDer, ServerName};
use tokio_rustls::rustls::{self, RootCertStore};

/// Client HTTP/2 window per stream: large, so flow control never paces the bench client.
const STREAM_WINDOW: u32 = 1 << 20;
/// Client HTTP/2 window per connection.
const CONNECTION_WINDOW: u32 = 16 << 20;
/// gRPC message header: compressed flag and a 4-byte big-endian length.
pub(crate) const HEADER: usize = 5;

/// How to reach the server: the connect timeout and, for a TLS server, the connector and
/// the name its certificate must carry. Built once from the arguments; cheap to clone.
#[derive(Clone)]
pub(crate) struct Dialer {
    timeout: Duration,
    tls: Option<(TlsConnector, ServerName<'static>)>,
    /// `authorization: Bearer …` for every call, from [`crate::BenchArgs::token`].
    authorization: Option<String>,
}

impl Dialer {
    pub(crate) fn new(args: &crate::BenchArgs) -> Result<Self, crate::BenchError> {
        let tls = match &args.ca {
            None => None,
            Some(ca) => {
                let invalid = |what: String| crate::BenchError::Arguments(what);
                let mut roots = RootCertStore::empty();
                let certs = CertificateDer::pem_file_iter(ca)
                    .map_err(|e| invalid(format!("cannot read {}: {e}", ca.display())))?;
                for cert in certs {
                    let cert = cert.map_err(|e| {
                        invalid(format!("bad certificate in {}: {e}", ca.display()))
                    })?;
                    roots.add(cert).map_err(|e| {
                        invalid(format!("unusable CA certificate in {}: {e}", ca.display()))
                    })?;
                }
                let provider = Arc::new(rustls::crypto::ring::default_provider());
                let mut config = rustls::ClientConfig::builder_with_provider(provider)
                    .with_safe_default_protocol_versions()
                    .map_err(|e| invalid(e.to_string()))?
                    .with_root_certificates(roots)
                    .with_no_client_auth();
                config.alpn_protocols = vec![b"h2".to_vec()];
                // Several servers: the first one's host (--tls-domain names another).
                let first = args.addr.split(',').next().unwrap_or_default().trim();
                let host = first.rsplit_once(':').map_or(first, |(host, _)| host);
                let name = args
                    .tls_domain
                    .clone()
                    .unwrap_or_else(|| host.trim_matches(['[', ']']).to_owned());
                let name = ServerName::try_from(name.clone())
                    .map_err(|_| invalid(format!("`{name}` is not a valid TLS server name")))?;
                Some((TlsConnector::from(Arc::new(config)), name))
            }
        };
        Ok(Self {
            timeout: args.connect_timeout,
            tls,
            authorization: args.token.as_ref().map(|token| format!("Bearer {token}")),
        })
    }
}

/// One HTTP/2 connection to the server.
pub(crate) struct Connection {
    send: SendRequest<Bytes>,
    authority: String,
    scheme: &'static str,
    authorization: Option<String>,
}

/// How a stream ended: OK, or the key it is counted under in the report's errors.
pub(crate) type Outcome = Result<(), String>;

/// What arrives on one stream.
pub(crate) enum Event {
    Data(Bytes),
    End(Outcome),
}

impl Connection {
    /// Connects over TCP (no delay), TLS if the dialer says so, and does the HTTP/2
    /// handshake; the connection is driven by a task on the current runtime.
    pub(crate) async fn open(addr: &str, dialer: &Dialer) -> Result<Self, String> {
        let timeout = dialer.timeout;
        let tcp = tokio::time::timeout(timeout, TcpStream::connect(addr))
            .await
            .map_err(|_| format!("no connection within {timeout:?}"))?
            .map_err(|e| e.to_string())?;
        tcp.set_nodelay(true).map_err(|e| e.to_string())?;
        let (send, scheme) = match &dialer.tls {
            None => (handshake(tcp).await?, "http"),
            Some((connector, name)) => {
                let tls = tokio::time::timeout(timeout, connector.connect(name.clone(), tcp))
                    .await
                    .map_err(|_| format!("no TLS handshake within {timeout:?}"))?
                    .map_err(|e| format!("TLS handshake failed: {e}"))?;
                (handshake(tls).await?, "https")
            }
        };
        Ok(Self {
            send,
            authority: addr.to_owned(),
            scheme,
            authorization: dialer.authorization.clone(),
        })
    }

    /// Opens a gRPC call on `path` (headers only; the body follows on the [`SendStream`]).
    pub(crate) async fn call(
        &self,
        path: &str,
        metadata: &[(&str, String)],
    ) -> Result<(SendStream<Bytes>, ResponseFuture), String> {
        let mut builder = http::Request::builder()
            .method("POST")
            .uri(format!("{}://{}{}", self.scheme, self.authority, path))
            .header("content-type", "application/grpc")
            .header("te", "trailers");
        for (key, value) in metadata {
            builder = builder.header(*key, value);
        }
        if let Some(authorization) = &self.authorization {
            builder = builder.header("authorization", authorization);
        }
        let request = builder.body(()).map_err(|e| e.to_string())?;
        let mut send = self.send.clone().ready().await.map_err(|e| error_key(&e))?;
        let (response, stream) = send
            .send_request(request, false)
            .map_err(|e| error_key(&e))?;
        Ok((stream, response))
    }
}

/// The HTTP/2 handshake with the bench's windows, its connection driven by a task.
async fn handshake<T>(io: T) -> Result<SendRequest<Bytes>, String>
where
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (send, connection) = h2::client::Builder::new()
        .initial_window_size(STREAM_WINDOW)
        .initial_connection_window_size(CONNECTION_WINDOW)
        .handshake::<_, Bytes>(io)
        .await
        .map_err(|e| format!("HTTP/2 handshake failed: {e}"))?;
    tokio::spawn(async move {
        let _ = connection.await;
    });
    Ok(send)
}

/// The report key of an HTTP/2-level failure.
pub(crate) fn error_key(error: &h2::Error) -> String {
    match error.reason() {
        Some(reason) if error.is_go_away() => format!("GOAWAY_{reason:?}"),
        Some(reason) => format!("RST_{reason:?}"),
        None if error.is_io() => "IO".to_owned(),
        None => "HTTP2".to_owned(),
    }
}

/// The gRPC status code name for `code` (`INVALID_ARGUMENT`, …), from `duplex.v1.Code`,
/// whose values are the gRPC numbers.
pub(crate) fn code_name(code: i32) -> &'static str {
    duplex_proto::hub::Code::try_from(code).map_or("UNKNOWN_CODE", |code| code.as_str_name())
}

fn grpc_outcome(headers: &http::HeaderMap) -> Option<Outcome> {
    let code: i32 = headers.get("grpc-status")?.to_str().ok()?.parse().ok()?;
    Some(if code == 0 {
        Ok(())
    } else {
        Err(code_name(code).to_owned())
    })
}

enum Phase {
    Headers(ResponseFuture),
    Body(RecvStream),
    Done,
}

/// The events of one call: each DATA chunk (its flow-control capacity released at once),
/// then how the call ended (from the trailers, a trailers-only response, or a reset).
pub(crate) fn events(response: ResponseFuture) -> LocalBoxStream<'static, Event> {
    stream::unfold(Phase::Headers(response), |phase| async move {
        match phase {
            Phase::Done => None,
            Phase::Headers(response) => match response.await {
                Err(error) => Some((Event::End(Err(error_key(&error))), Phase::Done)),
                Ok(response) => {
                    let (parts, body) = response.into_parts();
                    if parts.status != http::StatusCode::OK {
                        let key = format!("HTTP_{}", parts.status.as_u16());
                        return Some((Event::End(Err(key)), Phase::Done));
                    }
                    if body.is_end_stream() {
                        let outcome =
                            grpc_outcome(&parts.headers).unwrap_or_else(|| Err("NO_STATUS".into()));
                        return Some((Event::End(outcome), Phase::Done));
                    }
                    next_body_event(body).await
                }
            },
            Phase::Body(body) => next_body_event(body).await,
        }
    })
    .boxed_local()
}

/// The events of many calls, each tagged with the caller's index for it.
pub(crate) type TaggedEvents = futures::stream::SelectAll<LocalBoxStream<'static, (usize, Event)>>;

/// [`events`] of one call, tagged with `index`.
pub(crate) fn tagged_events(
    index: usize,
    response: ResponseFuture,
) -> LocalBoxStream<'static, (usize, Event)> {
    events(response)
        .map(move |event| (index, event))
        .boxed_local()
}

async fn next_body_event(mut body: RecvStream) -> Option<(Event, Phase)> {
    match body.data().await {
        Some(Ok(data)) => {
            let _ = body.flow_control().release_capacity(data.len());
            Some((Event::Data(data), Phase::Body(body)))
        }
        Some(Err(error)) => Some((Event::End(Err(error_key(&error))), Phase::Done)),
        None => {
            let outcome = match body.trailers().await {
                Ok(Some(trailers)) => {
                    grpc_outcome(&trailers).unwrap_or_else(|| Err("NO_STATUS".into()))
                }
                Ok(None) => Err("NO_STATUS".into()),
                Err(error) => Err(error_key(&error)),
            };
            Some((Event::End(outcome), Phase::Done))
        }
    }
}

/// Splits DATA chunks into gRPC messages. Messages inside one chunk are handed out as
/// slices of it (no copy); only a message split across chunks is copied together.
#[derive(Debug, Default)]
pub(crate) struct MessageSplitter {
    partial: BytesMut,
    /// Each chunk is one whole message, unframed (a WebSocket message).
    whole: bool,
}

impl MessageSplitter {
    /// A splitter for a transport whose every chunk is one message (WebSocket).
    pub(crate) fn whole_messages() -> Self {
        Self {
            partial: BytesMut::new(),
            whole: true,
        }
    }

    /// Feeds one chunk; calls `each` with every message it completes. Returns how many, or
    /// an error for a compressed message (the bench never asks for compression).
    pub(crate) fn push(
        &mut self,
        chunk: &[u8],
        mut each: impl FnMut(&[u8]),
    ) -> Result<usize, String> {
        if self.whole {
            each(chunk);
            return Ok(1);
        }
        let mut data = chunk;
        let mut count = 0;
        if !self.partial.is_empty() {
            if self.partial.len() < HEADER {
                let take = (HEADER - self.partial.len()).min(data.len());
                self.partial.extend_from_slice(&data[..take]);
                data = &data[take..];
                if self.partial.len() < HEADER {
                    return Ok(0);
                }
            }
            let total = HEADER + message_len(&self.partial)?;
            let take = (total - self.partial.len()).min(data.len());
            self.partial.extend_from_slice(&data[..take]);
            data = &data[take..];
            if self.partial.len() < total {
                return Ok(0);
            }
            each(&self.partial[HEADER..]);
            count += 1;
            self.partial.clear();
        }
        while data.len() >= HEADER {
            let total = HEADER + message_len(data)?;
            if data.len() < total {
                break;
            }
            each(&data[HEADER..total]);
            count += 1;
            data = &data[total..];
        }
        self.partial.extend_from_slice(data);
        Ok(count)
    }
}

fn message_len(header: &[u8]) -> Result<usize, String> {
    if header[0] != 0 {
        return Err("COMPRESSED".into());
    }
    Ok(u32::from_be_bytes([header[1], header[2], header[3], header[4]]) as usize)
}

/// Prefixes an encoded protobuf message with the gRPC message header.
pub(crate) fn frame(message: &[u8]) -> Bytes {
    let mut out = BytesMut::with_capacity(HEADER + message.len());
    out.put_u8(0);
    out.put_u32(message.len() as u32);
    out.put_slice(message);
    out.freeze()
}

/// A `chat.Msg` with `size` bytes of text, framed, and the `chat.Echo` frame that answers it.
pub(crate) fn chat_pair(size: usize) -> (Bytes, Bytes) {
    let text: String = "x".repeat(size);
    let msg = duplex_proto::chat::Msg { text: text.clone() };
    let echo = duplex_proto::chat::Echo {
        text: format!("<<{text}>>"),
    };
    (frame(&msg.encode_to_vec()), frame(&echo.encode_to_vec()))
}

/// A framed `ClientFrame` joining `room`: live only, or replaying after `after`.
pub(crate) fn join_frame(command_id: u64, room: &str, after: Option<u64>, hidden: bool) -> Bytes {
    use duplex_proto::hub::{ClientFrame, Join, client_frame::Command};
    let join = ClientFrame {
        command_id,
        command: Some(Command::Join(Join {
            room: room.to_owned(),
            after_offset: after,
            hidden,
            replay_last: 0,
        })),
    };
    frame(&join.encode_to_vec())
}

fn varint_len(mut value: u64) -> usize {
    let mut len = 1;
    while value >= 0x80 {
        value >>= 7;
        len += 1;
    }
    len
}

fn put_varint(out: &mut BytesMut, mut value: u64) {
    while value >= 0x80 {
        out.put_u8((value as u8) | 0x80);
        value >>= 7;
    }
    out.put_u8(value as u8);
}

/// Length of the client message id [`put_publish`] writes: 16 hex digits.
const CLIENT_ID_LEN: usize = 16;

/// Appends a framed `ClientFrame { command_id, publish { room, payload, client_message_id } }`
/// where the payload is `template` with its first 8 bytes replaced by `stamp`
/// (little-endian), and the client message id, when given, is `client_id` in 16 hex digits.
/// Encoded by hand: no intermediate message, no allocation beyond `out`.
pub(crate) fn put_publish(
    out: &mut BytesMut,
    command_id: u64,
    room: &str,
    template: &[u8],
    stamp: u64,
    client_id: Option<u64>,
) {
    let payload_len = template.len();
    let id_len = if client_id.is_some() {
        2 + CLIENT_ID_LEN
    } else {
        0
    };
    let publish_len = 1
        + varint_len(room.len() as u64)
        + room.len()
        + 1
        + varint_len(payload_len as u64)
        + payload_len
        + id_len;
    let frame_len = 1 + varint_len(command_id) + 1 + varint_len(publish_len as u64) + publish_len;
    out.reserve(HEADER + frame_len);
    out.put_u8(0);
    out.put_u32(frame_len as u32);
    out.put_u8(0x08); // command_id = 1, varint
    put_varint(out, command_id);
    out.put_u8(0x22); // publish = 4, length-delimited
    put_varint(out, publish_len as u64);
    out.put_u8(0x0a); // room = 1
    put_varint(out, room.len() as u64);
    out.put_slice(room.as_bytes());
    out.put_u8(0x12); // payload = 2
    put_varint(out, payload_len as u64);
    out.put_slice(&stamp.to_le_bytes());
    out.put_slice(&template[8..]);
    if let Some(id) = client_id {
        out.put_u8(0x22); // client_message_id = 4
        out.put_u8(CLIENT_ID_LEN as u8);
        for shift in (0..CLIENT_ID_LEN).rev() {
            out.put_u8(b"0123456789abcdef"[((id >> (shift * 4)) & 0xf) as usize]);
        }
    }
}

/// One protobuf field: its number and its value (varint or length-delimited bytes; other
/// wire types are skipped).
enum Value<'a> {
    Varint(u64),
    Bytes(&'a [u8]),
    Other,
}

fn read_varint(buf: &mut &[u8]) -> Option<u64> {
    let mut value = 0u64;
    for shift in (0..64).step_by(7) {
        let (&byte, rest) = buf.split_first()?;
        *buf = rest;
        value |= u64::from(byte & 0x7f) << shift;
        if byte < 0x80 {
            return Some(value);
        }
    }
    None
}

/// Walks the fields of one protobuf message; stops at the first malformed one.
fn fields(mut buf: &[u8]) -> impl Iterator<Item = (u64, Value<'_>)> {
    std::iter::from_fn(move || {
        if buf.is_empty() {
            return None;
        }
        let key = read_varint(&mut buf)?;
        let value = match key & 7 {
            0 => Value::Varint(read_varint(&mut buf)?),
            2 => {
                let len = usize::try_from(read_varint(&mut buf)?).ok()?;
                if len > buf.len() {
                    return None;
                }
                let (bytes, rest) = buf.split_at(len);
                buf = rest;
                Value::Bytes(bytes)
            }
            1 => {
                buf = buf.get(8..)?;
                Value::Other
            }
            5 => {
                buf = buf.get(4..)?;
                Value::Other
            }
            _ => return None,
        };
        Some((key >> 3, value))
    })
}

fn varint_field(message: &[u8], number: u64) -> u64 {
    fields(message)
        .find_map(|(n, v)| match v {
            Value::Varint(x) if n == number => Some(x),
            _ => None,
        })
        .unwrap_or(0)
}

/// The hub `ServerFrame`s the bench cares about, read in place.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum ServerFrame<'a> {
    Message { offset: u64, payload: &'a [u8] },
    Joined { command_id: u64, last_offset: u64 },
    PublishAck { command_id: u64, offset: u64 },
    Error { command_id: u64, code: i32 },
    Lagged,
    Shutdown,
    Other,
}

/// Reads one encoded `duplex.v1.ServerFrame`.
pub(crate) fn server_frame(message: &[u8]) -> ServerFrame<'_> {
    let Some((number, Value::Bytes(inner))) = fields(message).next() else {
        return ServerFrame::Other;
    };
    match number {
        1 => {
            let mut offset = 0;
            let mut payload: &[u8] = &[];
            for (n, value) in fields(inner) {
                match (n, value) {
                    (2, Value::Varint(x)) => offset = x,
                    (5, Value::Bytes(bytes)) => payload = bytes,
                    _ => {}
                }
            }
            ServerFrame::Message { offset, payload }
        }
        2 => ServerFrame::Joined {
            command_id: varint_field(inner, 1),
            last_offset: varint_field(inner, 4),
        },
        5 => ServerFrame::PublishAck {
            command_id: varint_field(inner, 1),
            offset: varint_field(inner, 3),
        },
        6 => ServerFrame::Error {
            command_id: varint_field(inner, 1),
            code: varint_field(inner, 2) as i32,
        },
        8 => ServerFrame::Lagged,
        9 => ServerFrame::Shutdown,
        _ => ServerFrame::Other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use duplex_proto::hub::{ClientFrame, Message, PublishAck, ServerFrame as Frame, server_frame};

    #[test]
    fn splitter_handles_messages_across_and_within_chunks() {
        let (msg, _) = chat_pair(10);
        let mut stream = BytesMut::new();
        for _ in 0..3 {
            stream.extend_from_slice(&msg);
        }
        for cut in 0..stream.len() {
            let mut splitter = MessageSplitter::default();
            let mut seen = Vec::new();
            let n = splitter
                .push(&stream[..cut], |m| seen.push(m.to_vec()))
                .unwrap()
                + splitter
                    .push(&stream[cut..], |m| seen.push(m.to_vec()))
                    .unwrap();
            assert_eq!(n, 3, "cut at {cut}");
            assert!(seen.iter().all(|m| m[..] == msg[HEADER..]));
        }
    }

    #[test]
    fn hand_encoded_publish_decodes_with_prost() {
        let mut out = BytesMut::new();
        let template = vec![7u8; 64];
        put_publish(&mut out, 300, "bench.room", &template, 0xdead_beef, None);
        let frame = ClientFrame::decode(&out[HEADER..]).unwrap();
        assert_eq!(out.len() - HEADER, frame.encoded_len());
        assert_eq!(frame.command_id, 300);
        let Some(duplex_proto::hub::client_frame::Command::Publish(publish)) = frame.command else {
            panic!("not a publish");
        };
        assert_eq!(publish.room, "bench.room");
        assert_eq!(publish.payload.len(), 64);
        assert_eq!(publish.payload[..8], 0xdead_beef_u64.to_le_bytes());
        assert_eq!(publish.payload[8..], template[8..]);
        assert!(publish.client_message_id.is_empty());

        let mut out = BytesMut::new();
        put_publish(&mut out, 301, "bench.room", &template, 1, Some(0x1234_abcd));
        let frame = ClientFrame::decode(&out[HEADER..]).unwrap();
        assert_eq!(out.len() - HEADER, frame.encoded_len());
        let Some(duplex_proto::hub::client_frame::Command::Publish(publish)) = frame.command else {
            panic!("not a publish");
        };
        assert_eq!(publish.client_message_id, "000000001234abcd");
        assert_eq!(publish.payload[8..], template[8..]);
    }

    #[test]
    fn server_frames_are_read_in_place() {
        let message = Frame {
            frame: Some(server_frame::Frame::Message(Message {
                room: "r".into(),
                offset: 42,
                sender: "s".into(),
                payload: vec![1, 2, 3].into(),
                ..Default::default()
            })),
        }
        .encode_to_vec();
        assert_eq!(
            server_frame(&message),
            ServerFrame::Message {
                offset: 42,
                payload: &[1, 2, 3]
            }
        );
        let ack = Frame {
            frame: Some(server_frame::Frame::PublishAck(PublishAck {
                command_id: 9,
                room: "r".into(),
                offset: 1,
                duplicate: false,
            })),
        }
        .encode_to_vec();
        assert_eq!(
            server_frame(&ack),
            ServerFrame::PublishAck {
                command_id: 9,
                offset: 1
            }
        );
    }
}
