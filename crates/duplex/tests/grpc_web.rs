//! gRPC-Web on the web listener, spoken by hand over HTTP/1.1 as a browser's fetch would:
//! the 5-byte framed request body built here, the response's data frames and its trailer
//! frame (flag 0x80) parsed here — not tonic's client layer, whose decoder drops trailers
//! that share a chunk with data. Also CORS: off by default, on for `--cors-origin`.

mod common;

use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use common::spawn_duplex_serve_web;
use duplex_proto::hub::server_frame::Frame;
use duplex_proto::hub::{PublishAck, PublishRequest, ServerFrame, SubscribeRequest};
use prost::Message as _;

/// One gRPC-Web response, decoded: status line, headers, messages, trailers.
#[derive(Debug, Default)]
struct WebResponse {
    status: u16,
    headers: Vec<(String, String)>,
    messages: Vec<Vec<u8>>,
    trailers: Vec<(String, String)>,
}

impl WebResponse {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    fn trailer(&self, name: &str) -> Option<&str> {
        self.trailers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// grpc-status from the trailer frame, or from the headers (a trailers-only answer).
    fn grpc_status(&self) -> Option<&str> {
        self.trailer("grpc-status").or(self.header("grpc-status"))
    }
}

/// The gRPC length-prefixed framing: flag byte, 4-byte big-endian length, message.
fn framed(message: &[u8]) -> Vec<u8> {
    let mut body = vec![0u8];
    body.extend_from_slice(&(message.len() as u32).to_be_bytes());
    body.extend_from_slice(message);
    body
}

/// Decodes a chunked HTTP/1.1 body.
fn dechunk(mut body: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let line_end = body
            .windows(2)
            .position(|w| w == b"\r\n")
            .expect("a chunk size line");
        let size_text = std::str::from_utf8(&body[..line_end]).unwrap();
        let size = usize::from_str_radix(size_text.split(';').next().unwrap().trim(), 16)
            .expect("a hex chunk size");
        body = &body[line_end + 2..];
        if size == 0 {
            return out;
        }
        out.extend_from_slice(&body[..size]);
        body = &body[size + 2..];
    }
}

/// Sends one POST of `body` to `path` with `extra` headers on a fresh connection, reads
/// the whole answer (the server ends it, or 20 s pass) and decodes it.
fn post(web: SocketAddr, path: &str, extra: &[(&str, &str)], body: &[u8]) -> WebResponse {
    let mut tcp = TcpStream::connect(web).expect("connect");
    tcp.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let mut request = format!(
        "POST {path} HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/grpc-web+proto\r\n\
         X-Grpc-Web: 1\r\nAccept: application/grpc-web+proto\r\nContent-Length: {}\r\n\
         Connection: close\r\n",
        body.len()
    );
    for (name, value) in extra {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    request.push_str("\r\n");
    tcp.write_all(request.as_bytes()).unwrap();
    tcp.write_all(body).unwrap();
    let mut raw = Vec::new();
    tcp.read_to_end(&mut raw)
        .expect("the server ends the answer in time");
    parse(&raw)
}

/// An HTTP/1.1 answer carrying a gRPC-Web body.
fn parse(raw: &[u8]) -> WebResponse {
    let head_end = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or_else(|| panic!("no header end in {:?}", String::from_utf8_lossy(raw)));
    let head = String::from_utf8_lossy(&raw[..head_end]).into_owned();
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .unwrap()
        .split(' ')
        .nth(1)
        .unwrap()
        .parse()
        .unwrap();
    let headers: Vec<(String, String)> = lines
        .filter_map(|line| line.split_once(':'))
        .map(|(n, v)| (n.trim().to_lowercase(), v.trim().to_owned()))
        .collect();
    let mut response = WebResponse {
        status,
        headers,
        ..Default::default()
    };
    let body = &raw[head_end + 4..];
    let body = if response.header("transfer-encoding") == Some("chunked") {
        dechunk(body)
    } else {
        body.to_vec()
    };
    let mut rest = &body[..];
    while rest.len() >= 5 {
        let flag = rest[0];
        let length = u32::from_be_bytes(rest[1..5].try_into().unwrap()) as usize;
        let payload = &rest[5..5 + length];
        if flag & 0x80 != 0 {
            response.trailers = String::from_utf8_lossy(payload)
                .split("\r\n")
                .filter_map(|line| line.split_once(':'))
                .map(|(n, v)| (n.trim().to_lowercase(), v.trim().to_owned()))
                .collect();
        } else {
            response.messages.push(payload.to_vec());
        }
        rest = &rest[5 + length..];
    }
    assert!(rest.is_empty(), "a partial frame is left: {rest:?}");
    response
}

fn publish(web: SocketAddr, room: &str, text: &str, extra: &[(&str, &str)]) -> WebResponse {
    let request = PublishRequest {
        room: room.into(),
        payload: text.as_bytes().to_vec().into(),
        ..Default::default()
    };
    post(
        web,
        "/duplex.v1.Hub/Publish",
        extra,
        &framed(&request.encode_to_vec()),
    )
}

#[test]
fn publish_over_grpc_web_is_acked_with_the_status_in_a_trailer_frame() {
    let (_server, _grpc, web) = spawn_duplex_serve_web(&[]);
    let first = publish(web, "web.room", "one", &[]);
    assert_eq!(first.status, 200, "{first:?}");
    assert!(
        first
            .header("content-type")
            .is_some_and(|t| t.starts_with("application/grpc-web")),
        "{first:?}"
    );
    assert_eq!(first.messages.len(), 1, "{first:?}");
    assert_eq!(first.grpc_status(), Some("0"), "{first:?}");
    let ack = PublishAck::decode(&first.messages[0][..]).unwrap();
    assert_eq!(ack.room, "web.room");
    let second = PublishAck::decode(&publish(web, "web.room", "two", &[]).messages[0][..]).unwrap();
    assert!(second.offset > ack.offset);

    // A refused call: the status arrives (trailers-only answers carry it in the headers).
    let refused = publish(web, "no spaces allowed", "x", &[]);
    assert_eq!(refused.status, 200, "{refused:?}");
    assert_eq!(
        refused.grpc_status(),
        Some("3"),
        "INVALID_ARGUMENT: {refused:?}"
    );
    assert!(refused.messages.is_empty());
}

#[test]
fn subscribe_over_grpc_web_streams_history_then_ends_with_a_trailer_frame() {
    let (_server, _grpc, web) = spawn_duplex_serve_web(&[]);
    for n in 0..3 {
        assert_eq!(
            publish(web, "web.feed", &format!("m{n}"), &[]).grpc_status(),
            Some("0")
        );
    }
    let request = SubscribeRequest {
        room: "web.feed".into(),
        after_offset: Some(0),
        name: String::new(),
    };
    // Subscribe never ends by itself: the call's deadline ends it, with its trailers.
    let response = post(
        web,
        "/duplex.v1.Hub/Subscribe",
        &[("grpc-timeout", "2S")],
        &framed(&request.encode_to_vec()),
    );
    assert_eq!(response.status, 200, "{response:?}");
    let payloads: Vec<String> = response
        .messages
        .iter()
        .filter_map(
            |bytes| match ServerFrame::decode(&bytes[..]).unwrap().frame {
                Some(Frame::Message(message)) => {
                    Some(String::from_utf8(message.payload.to_vec()).unwrap())
                }
                _ => None,
            },
        )
        .collect();
    assert_eq!(payloads, ["m0", "m1", "m2"], "{response:?}");
    assert_eq!(
        response.trailer("grpc-status"),
        Some("4"),
        "DEADLINE_EXCEEDED in the trailer frame: {response:?}"
    );
}

/// Reads a streamed gRPC-Web answer as it arrives: chunked HTTP/1.1 in, complete gRPC-Web
/// frames out (flag, payload), each as soon as its bytes are there.
struct StreamedAnswer {
    tcp: TcpStream,
    /// Raw bytes not yet decoded (head, then chunk framing).
    raw: Vec<u8>,
    /// Body bytes not yet split into gRPC-Web frames.
    body: Vec<u8>,
    head_done: bool,
}

impl StreamedAnswer {
    fn read_more(&mut self) {
        let mut buffer = [0u8; 16 * 1024];
        let read = self
            .tcp
            .read(&mut buffer)
            .expect("the answer goes on in time");
        assert!(read > 0, "the server ended the answer early");
        self.raw.extend_from_slice(&buffer[..read]);
    }

    /// Moves complete chunks from `raw` to `body`.
    fn dechunk_available(&mut self) {
        if !self.head_done {
            let Some(end) = self.raw.windows(4).position(|w| w == b"\r\n\r\n") else {
                return;
            };
            let head = String::from_utf8_lossy(&self.raw[..end]).to_lowercase();
            assert!(head.starts_with("http/1.1 200"), "{head}");
            assert!(head.contains("transfer-encoding: chunked"), "{head}");
            self.raw.drain(..end + 4);
            self.head_done = true;
        }
        while let Some(line_end) = self.raw.windows(2).position(|w| w == b"\r\n") {
            let size = usize::from_str_radix(
                std::str::from_utf8(&self.raw[..line_end]).unwrap().trim(),
                16,
            )
            .expect("a hex chunk size");
            if self.raw.len() < line_end + 2 + size + 2 {
                return;
            }
            let start = line_end + 2;
            self.body.extend_from_slice(&self.raw[start..start + size]);
            self.raw.drain(..start + size + 2);
        }
    }

    /// The next gRPC-Web frame: (flag, payload).
    fn next_frame(&mut self) -> (u8, Vec<u8>) {
        loop {
            self.dechunk_available();
            if self.body.len() >= 5 {
                let length = u32::from_be_bytes(self.body[1..5].try_into().unwrap()) as usize;
                if self.body.len() >= 5 + length {
                    let flag = self.body[0];
                    let payload = self.body[5..5 + length].to_vec();
                    self.body.drain(..5 + length);
                    return (flag, payload);
                }
            }
            self.read_more();
        }
    }
}

#[test]
fn live_messages_reach_a_grpc_web_subscriber_while_its_answer_streams() {
    let (_server, _grpc, web) = spawn_duplex_serve_web(&[]);
    let request = SubscribeRequest {
        room: "web.live".into(),
        after_offset: None,
        name: String::new(),
    };
    let body = framed(&request.encode_to_vec());
    let mut tcp = TcpStream::connect(web).expect("connect");
    tcp.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let head = format!(
        "POST /duplex.v1.Hub/Subscribe HTTP/1.1\r\nHost: localhost\r\n\
         Content-Type: application/grpc-web+proto\r\nX-Grpc-Web: 1\r\n\
         Content-Length: {}\r\n\r\n",
        body.len()
    );
    tcp.write_all(head.as_bytes()).unwrap();
    tcp.write_all(&body).unwrap();
    let mut answer = StreamedAnswer {
        tcp,
        raw: Vec::new(),
        body: Vec::new(),
        head_done: false,
    };
    // The join's answer arrives first, before anything is published.
    let (flag, joined) = answer.next_frame();
    assert_eq!(flag, 0);
    assert!(
        matches!(
            ServerFrame::decode(&joined[..]).unwrap().frame,
            Some(Frame::Joined(_))
        ),
        "joined first"
    );
    // Each publish reaches the open answer as it happens.
    for n in 0..3 {
        let text = format!("live-{n}");
        assert_eq!(
            publish(web, "web.live", &text, &[]).grpc_status(),
            Some("0")
        );
        let (flag, frame) = answer.next_frame();
        assert_eq!(flag, 0, "a message, not the trailer");
        match ServerFrame::decode(&frame[..]).unwrap().frame {
            Some(Frame::Message(message)) => assert_eq!(&message.payload[..], text.as_bytes()),
            other => panic!("expected {text}, got {other:?}"),
        }
    }
}

/// Sends a CORS preflight for Publish from `origin` and returns the answer's head.
fn preflight(web: SocketAddr, origin: &str) -> String {
    let mut tcp = TcpStream::connect(web).expect("connect");
    tcp.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let request = format!(
        "OPTIONS /duplex.v1.Hub/Publish HTTP/1.1\r\nHost: localhost\r\nOrigin: {origin}\r\n\
         Access-Control-Request-Method: POST\r\n\
         Access-Control-Request-Headers: content-type,x-grpc-web,x-user-agent,authorization\r\n\
         Connection: close\r\n\r\n"
    );
    tcp.write_all(request.as_bytes()).unwrap();
    let mut raw = Vec::new();
    let _ = tcp.read_to_end(&mut raw);
    String::from_utf8_lossy(&raw).to_lowercase()
}

#[test]
fn cors_is_off_by_default_and_on_for_the_listed_origins() {
    let (_server, _grpc, web) = spawn_duplex_serve_web(&[]);
    let answer = preflight(web, "https://app.example.com");
    assert!(!answer.contains("access-control-allow-origin"), "{answer}");
    let call = publish(
        web,
        "cors.room",
        "x",
        &[("Origin", "https://app.example.com")],
    );
    assert!(
        call.header("access-control-allow-origin").is_none(),
        "{call:?}"
    );

    let (_server, _grpc, web) =
        spawn_duplex_serve_web(&["--cors-origin", "https://app.example.com"]);
    let answer = preflight(web, "https://app.example.com");
    assert!(answer.starts_with("http/1.1 200"), "{answer}");
    assert!(
        answer.contains("access-control-allow-origin: https://app.example.com"),
        "{answer}"
    );
    for header in [
        "x-grpc-web",
        "content-type",
        "x-user-agent",
        "authorization",
        "grpc-timeout",
    ] {
        assert!(answer.contains(header), "{header} allowed: {answer}");
    }
    let call = publish(
        web,
        "cors.room",
        "x",
        &[("Origin", "https://app.example.com")],
    );
    assert_eq!(call.grpc_status(), Some("0"), "{call:?}");
    assert_eq!(
        call.header("access-control-allow-origin"),
        Some("https://app.example.com")
    );
    let exposed = call
        .header("access-control-expose-headers")
        .unwrap_or_default();
    for header in ["grpc-status", "grpc-message", "grpc-status-details-bin"] {
        assert!(exposed.contains(header), "{header} exposed: {call:?}");
    }
    // Another origin is not allowed.
    let answer = preflight(web, "https://evil.example.com");
    assert!(!answer.contains("access-control-allow-origin"), "{answer}");
}

#[test]
fn cors_origins_also_come_from_the_environment_comma_separated() {
    let mut command = common::duplex();
    command
        .args(["serve", "--listen", "127.0.0.1:0", "--store", "memory"])
        .env(
            "DUPLEX_CORS_ORIGIN",
            "https://one.example.com,https://two.example.com",
        );
    let (_server, _grpc, mut stdout) = common::spawn_listening(command);
    let web = common::read_web_addr(&mut stdout);
    for origin in ["https://one.example.com", "https://two.example.com"] {
        let answer = preflight(web, origin);
        assert!(
            answer.contains(&format!("access-control-allow-origin: {origin}")),
            "{answer}"
        );
    }
    let answer = preflight(web, "https://three.example.com");
    assert!(!answer.contains("access-control-allow-origin"), "{answer}");
}

#[tokio::test]
async fn native_grpc_on_the_web_listener_is_refused_and_served_on_the_grpc_port() {
    let (_server, grpc, web) = spawn_duplex_serve_web(&[]);
    let request = || PublishRequest {
        room: "native".into(),
        payload: b"hi".to_vec().into(),
        ..Default::default()
    };
    // HTTP/2 with prior knowledge, as any gRPC client speaks it: the web listener takes
    // the connection (it serves h2c for the page) but not the call.
    let mut on_web = common::hub_client(web, 1 << 20).await;
    let refused = on_web
        .publish(request())
        .await
        .expect_err("native gRPC on the web listener is refused");
    assert_ne!(refused.code(), tonic::Code::Ok);
    assert!(
        refused.message().contains("415") || refused.message().contains("gRPC port"),
        "{refused:?}"
    );
    let mut on_grpc = common::hub_client(grpc, 1 << 20).await;
    let ack = on_grpc
        .publish(request())
        .await
        .expect("served on the gRPC port");
    assert_eq!(ack.into_inner().offset, 1);
}
