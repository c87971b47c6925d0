//! Bad input on the wire: raw HTTP/2 requests with broken gRPC framing, garbage bytes and
//! HTTP/1.1 on the port. Each gets a clear status or a clean close, and the server keeps
//! serving afterwards.

mod common;

use std::time::Duration;

use bytes::{BufMut as _, Bytes, BytesMut};
use common::{InProcessServer, STEP};
use duplex_proto::chat::Msg;
use http::{HeaderMap, Request};
use prost::Message as _;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;
use tokio::time::timeout;

/// What a raw call saw: the HTTP status, the DATA it got, and the trailers.
struct RawReply {
    http_status: http::StatusCode,
    data: Vec<u8>,
    trailers: Option<HeaderMap>,
}

impl RawReply {
    fn grpc_status(&self) -> Option<i32> {
        let value = self.trailers.as_ref()?.get("grpc-status")?;
        value.to_str().ok()?.parse().ok()
    }

    /// `grpc-message`, percent-decoded as the gRPC spec encodes it.
    fn grpc_message(&self) -> String {
        let raw = self
            .trailers
            .as_ref()
            .and_then(|t| t.get("grpc-message"))
            .map(|v| v.as_bytes().to_vec())
            .unwrap_or_default();
        let mut decoded = Vec::with_capacity(raw.len());
        let mut i = 0;
        while i < raw.len() {
            let hex = raw
                .get(i + 1..i + 3)
                .and_then(|h| std::str::from_utf8(h).ok());
            match (raw[i], hex.and_then(|h| u8::from_str_radix(h, 16).ok())) {
                (b'%', Some(byte)) => {
                    decoded.push(byte);
                    i += 3;
                }
                (byte, _) => {
                    decoded.push(byte);
                    i += 1;
                }
            }
        }
        String::from_utf8_lossy(&decoded).into_owned()
    }
}

/// Sends one request with the given headers and body over a fresh h2 connection.
async fn raw_call(
    server: &InProcessServer,
    path: &str,
    headers: &[(&str, &str)],
    body: Bytes,
) -> RawReply {
    let tcp = TcpStream::connect(server.addr).await.unwrap();
    let (mut client, connection) = h2::client::handshake(tcp).await.unwrap();
    tokio::spawn(connection);
    let mut request = Request::post(format!("http://{}{path}", server.addr));
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let (response, mut send) = client
        .send_request(request.body(()).unwrap(), false)
        .unwrap();
    send.send_data(body, true).unwrap();
    let response = timeout(STEP, response).await.unwrap().unwrap();
    let http_status = response.status();
    // A trailers-only reply carries grpc-status in the headers.
    let header_status = response.headers().clone();
    let mut body = response.into_body();
    let mut data = Vec::new();
    while let Some(chunk) = timeout(STEP, body.data()).await.unwrap() {
        let chunk = chunk.unwrap();
        body.flow_control().release_capacity(chunk.len()).unwrap();
        data.extend_from_slice(&chunk);
    }
    let trailers = timeout(STEP, body.trailers()).await.unwrap().unwrap();
    let trailers = trailers.or_else(|| {
        header_status
            .contains_key("grpc-status")
            .then_some(header_status)
    });
    RawReply {
        http_status,
        data,
        trailers,
    }
}

const GRPC: &[(&str, &str)] = &[("content-type", "application/grpc"), ("te", "trailers")];

/// One length-prefixed message: flag, declared length, then `payload` as given.
fn frame(compressed: u8, declared_len: u32, payload: &[u8]) -> Bytes {
    let mut buf = BytesMut::new();
    buf.put_u8(compressed);
    buf.put_u32(declared_len);
    buf.put_slice(payload);
    buf.freeze()
}

async fn assert_still_serving(server: &InProcessServer) {
    let mut client = server.chat_client().await;
    let outbound = tokio_stream::iter(vec![Msg {
        text: "alive".into(),
    }]);
    let mut replies = timeout(STEP, client.chat(outbound))
        .await
        .unwrap()
        .unwrap()
        .into_inner();
    let reply = timeout(STEP, replies.message())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(reply.text, "<<alive>>");
}

#[tokio::test]
async fn well_formed_raw_call_is_echoed() {
    let server = InProcessServer::start().await;
    let payload = Msg { text: "raw".into() }.encode_to_vec();
    let reply = raw_call(
        &server,
        "/chat.Chat/Chat",
        GRPC,
        frame(0, payload.len() as u32, &payload),
    )
    .await;
    assert_eq!(reply.http_status, 200);
    assert_eq!(reply.grpc_status(), Some(0));
    // One reply message: 5-byte prefix + Echo { text: "<<raw>>" }.
    assert_eq!(&reply.data[..5], &[0, 0, 0, 0, 9]);
    assert_eq!(&reply.data[5..], b"\x0a\x07<<raw>>");
}

#[tokio::test]
async fn length_prefix_longer_than_the_body_is_internal_error() {
    let server = InProcessServer::start().await;
    let reply = raw_call(
        &server,
        "/chat.Chat/Chat",
        GRPC,
        frame(0, 100, b"\x0a\x03abc"),
    )
    .await;
    assert_eq!(reply.grpc_status(), Some(tonic::Code::Internal as i32));
    assert!(
        reply.grpc_message().contains("EOF"),
        "{}",
        reply.grpc_message()
    );
    assert_still_serving(&server).await;
}

#[tokio::test]
async fn length_prefix_over_the_limit_is_resource_exhausted() {
    let server = InProcessServer::start().await;
    let reply = raw_call(
        &server,
        "/chat.Chat/Chat",
        GRPC,
        frame(0, u32::MAX, b"\x0a"),
    )
    .await;
    assert_eq!(
        reply.grpc_status(),
        Some(tonic::Code::ResourceExhausted as i32)
    );
    assert!(
        reply.grpc_message().contains("too large"),
        "{}",
        reply.grpc_message()
    );
    assert_still_serving(&server).await;
}

#[tokio::test]
async fn truncated_prefix_is_internal_error() {
    let server = InProcessServer::start().await;
    let reply = raw_call(
        &server,
        "/chat.Chat/Chat",
        GRPC,
        Bytes::from_static(&[0, 0, 0]),
    )
    .await;
    assert_eq!(reply.grpc_status(), Some(tonic::Code::Internal as i32));
    assert_still_serving(&server).await;
}

#[tokio::test]
async fn compressed_flag_without_grpc_encoding_is_internal_error() {
    let server = InProcessServer::start().await;
    let reply = raw_call(
        &server,
        "/chat.Chat/Chat",
        GRPC,
        frame(1, 5, b"\x0a\x03abc"),
    )
    .await;
    assert_eq!(reply.grpc_status(), Some(tonic::Code::Internal as i32));
    assert!(
        reply.grpc_message().contains("compressed"),
        "{}",
        reply.grpc_message()
    );
    assert_still_serving(&server).await;
}

#[tokio::test]
async fn invalid_protobuf_and_invalid_utf8_are_internal_errors() {
    let server = InProcessServer::start().await;
    // Field 1, length 10, but only 2 bytes follow inside the message.
    let reply = raw_call(&server, "/chat.Chat/Chat", GRPC, frame(0, 4, b"\x0a\x0aab")).await;
    assert_eq!(reply.grpc_status(), Some(tonic::Code::Internal as i32));
    // A string field holding bytes that are not UTF-8.
    let reply = raw_call(
        &server,
        "/chat.Chat/Chat",
        GRPC,
        frame(0, 4, b"\x0a\x02\xff\xfe"),
    )
    .await;
    assert_eq!(reply.grpc_status(), Some(tonic::Code::Internal as i32));
    assert_still_serving(&server).await;
}

async fn send_and_expect_close(server: &InProcessServer, bytes: &[u8]) -> Vec<u8> {
    let mut tcp = TcpStream::connect(server.addr).await.unwrap();
    tcp.write_all(bytes).await.unwrap();
    let mut seen = Vec::new();
    let closed = timeout(Duration::from_secs(10), async {
        let mut buf = [0u8; 4096];
        loop {
            match tcp.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => seen.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await;
    assert!(
        closed.is_ok(),
        "the server must close the connection, not hang"
    );
    seen
}

#[tokio::test]
async fn garbage_bytes_are_closed_cleanly() {
    let server = InProcessServer::start().await;
    let garbage: Vec<u8> = (0..4096u32).map(|i| (i * 7919 % 251) as u8).collect();
    send_and_expect_close(&server, &garbage).await;
    assert_still_serving(&server).await;
}

#[tokio::test]
async fn http1_request_is_closed_cleanly() {
    let server = InProcessServer::start().await;
    let seen = send_and_expect_close(&server, b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n").await;
    assert!(
        !seen.starts_with(b"HTTP/1.1 200"),
        "no HTTP/1 success for a gRPC-only port"
    );
    assert_still_serving(&server).await;
}

/// What a browser's WebSocket opens with: the gRPC port is HTTP/2 from the guard up, so it
/// is refused, never upgraded (HTTP/1.1 is for a listener of its own; see the README's
/// Architecture section).
#[tokio::test]
async fn websocket_upgrade_is_closed_cleanly_not_upgraded() {
    let server = InProcessServer::start().await;
    let upgrade = b"GET /ws HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\n\
        Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
        Sec-WebSocket-Version: 13\r\n\r\n";
    let seen = send_and_expect_close(&server, upgrade).await;
    assert!(
        !seen.starts_with(b"HTTP/1.1 101"),
        "no WebSocket upgrade on the gRPC port"
    );
    assert_still_serving(&server).await;
}

#[tokio::test]
async fn configured_windows_and_stream_limit_reach_the_peer() {
    let server = InProcessServer::start_with(|config| {
        config.initial_stream_window = 1024;
        config.initial_connection_window = 1 << 20;
        config.max_concurrent_streams = 3;
    })
    .await;
    let tcp = TcpStream::connect(server.addr).await.unwrap();
    let (client, connection) = h2::client::handshake(tcp).await.unwrap();
    tokio::spawn(connection);
    let mut client = client.ready().await.unwrap();

    let request = || {
        Request::post(format!("http://{}/chat.Chat/Chat", server.addr))
            .header("content-type", "application/grpc")
            .header("te", "trailers")
            .body(())
            .unwrap()
    };
    // One whole call first, so the server's SETTINGS have surely arrived.
    let (warmup, _) = client.send_request(request(), true).unwrap();
    timeout(STEP, warmup).await.unwrap().unwrap();
    client = client.ready().await.unwrap();

    let (_response, mut send) = client.send_request(request(), false).unwrap();
    // Ask for far more than the window: h2 grants what the server's SETTINGS allow.
    send.reserve_capacity(1 << 20);
    let granted = timeout(STEP, std::future::poll_fn(|cx| send.poll_capacity(cx)))
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(
        granted, 1024,
        "SETTINGS_INITIAL_WINDOW_SIZE from --initial-stream-window"
    );

    // Two more streams fill the limit of 3; a fourth waits for a free slot.
    let mut open = vec![send];
    for _ in 0..2 {
        client = client.ready().await.unwrap();
        let (response, send) = client.send_request(request(), false).unwrap();
        open.push(send);
        drop(response);
    }
    client = client.ready().await.unwrap();
    let (fourth, mut fourth_send) = client.send_request(request(), false).unwrap();
    let mut fourth = Box::pin(fourth);
    assert!(
        timeout(Duration::from_millis(500), &mut fourth)
            .await
            .is_err(),
        "SETTINGS_MAX_CONCURRENT_STREAMS from --max-concurrent-streams holds the 4th stream back"
    );
    open[0].send_data(Bytes::new(), true).unwrap(); // one call ends…
    let response = timeout(STEP, fourth)
        .await
        .expect("…and the 4th proceeds")
        .unwrap();
    assert_eq!(response.status(), 200);
    fourth_send.send_data(Bytes::new(), true).unwrap();
}
