//! `duplex tap` between real peers: `duplex serve` upstream, `duplex echo` or a raw h2
//! client downstream, the tap's trace read from its stdout (mostly `--json`, one object a
//! line) and checked for what a user would look for.

mod common;

use std::io::{BufRead as _, BufReader, Write as _};
use std::net::SocketAddr;
use std::process::{ChildStdout, Stdio};
use std::sync::mpsc;
use std::time::Instant;

use bytes::{BufMut as _, Bytes, BytesMut};
use common::{ChildGuard, STEP, duplex, spawn_duplex_serve, spawn_listening};
use duplex_proto::chat::Msg;
use prost::Message as _;
use serde_json::Value;
use tokio::net::TcpStream;
use tokio::time::timeout;

/// A running tap and the lines it printed after `listening on`.
struct Tap {
    child: ChildGuard,
    addr: SocketAddr,
    lines: mpsc::Receiver<String>,
    seen: Vec<String>,
}

impl Tap {
    fn start(upstream: SocketAddr, args: &[&str]) -> Self {
        let mut command = duplex();
        command
            .args(["tap", "--listen", "127.0.0.1:0", "--upstream"])
            .arg(upstream.to_string())
            .args(args);
        let (child, addr, stdout) = spawn_listening(command);
        Self {
            child,
            addr,
            lines: read_lines(stdout),
            seen: Vec::new(),
        }
    }

    /// Waits for a JSON line matching `found`, keeping every line read.
    fn wait_for(&mut self, what: &str, found: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + STEP;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let line = self.lines.recv_timeout(left).unwrap_or_else(|_| {
                panic!(
                    "the tap never showed {what}; it showed:\n{}",
                    self.seen.join("\n")
                )
            });
            self.seen.push(line.clone());
            if let Ok(value) = serde_json::from_str::<Value>(&line)
                && found(&value)
            {
                return value;
            }
        }
    }

    /// Stops the tap with SIGINT and returns everything it printed.
    fn finish(mut self) -> Vec<String> {
        self.child.signal("INT");
        let deadline = Instant::now() + STEP;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => self.seen.push(line),
                Err(mpsc::RecvTimeoutError::Disconnected) => break,
                Err(mpsc::RecvTimeoutError::Timeout) => panic!("the tap did not exit on SIGINT"),
            }
        }
        let status = self.child.wait_for_exit(STEP).expect("the tap exits");
        assert!(status.success(), "the tap exited with {status}");
        self.seen
    }
}

/// Reads lines on a thread so a quiet tap cannot hang the test.
fn read_lines(stdout: BufReader<ChildStdout>) -> mpsc::Receiver<String> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in stdout.lines() {
            let Ok(line) = line else { return };
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    rx
}

fn json_lines(lines: &[String]) -> Vec<Value> {
    lines
        .iter()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect()
}

fn frames<'a>(trace: &'a [Value], dir: &'a str, kind: &'a str) -> impl Iterator<Item = &'a Value> {
    trace
        .iter()
        .filter(move |v| v["dir"] == dir && v["type"] == kind)
}

fn has_flag(frame: &Value, flag: &str) -> bool {
    frame["flags"].as_array().unwrap().iter().any(|f| f == flag)
}

fn header<'a>(frame: &'a Value, name: &str) -> Option<&'a str> {
    frame["headers"]["fields"]
        .as_array()?
        .iter()
        .find(|f| f[0] == name)
        .and_then(|f| f[1].as_str())
}

/// The decoded texts of the gRPC messages one side sent, in trace order.
fn message_texts(trace: &[Value], dir: &str) -> Vec<String> {
    frames(trace, dir, "DATA")
        .flat_map(|f| f["messages"].as_array().cloned().unwrap_or_default())
        .map(|m| {
            m["json"]["text"]
                .as_str()
                .unwrap_or_else(|| panic!("message not decoded: {m}"))
                .to_owned()
        })
        .collect()
}

/// Runs `duplex echo --addr ADDR` with `input`; returns its stdout once it exits 0.
fn run_echo(addr: SocketAddr, input: &str) -> String {
    let mut child = duplex()
        .args(["echo", "--addr", &addr.to_string()])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.as_bytes())
        .unwrap();
    let mut child = ChildGuard(child);
    let status = child.wait_for_exit(STEP).expect("duplex echo exits");
    let mut out = String::new();
    std::io::Read::read_to_string(child.0.stdout.as_mut().unwrap(), &mut out).unwrap();
    assert!(status.success(), "duplex echo failed: {out}");
    out
}

#[test]
fn echo_through_the_tap_shows_headers_messages_end_stream_and_window_updates() {
    let (_server, server) = spawn_duplex_serve(&[]);
    let tap = Tap::start(server, &["--json", "--summary"]);
    let out = run_echo(tap.addr, "hello\nhéllo ✓\n");
    assert_eq!(out, "server: <<hello>>\nserver: <<héllo ✓>>\n");
    let trace = json_lines(&tap.finish());

    assert!(trace.iter().any(|v| v["event"] == "connected"));
    assert!(
        trace
            .iter()
            .any(|v| v["type"] == "PREFACE" && v["dir"] == "client")
    );
    let request = frames(&trace, "client", "HEADERS")
        .next()
        .expect("request headers");
    assert_eq!(request["headers"]["role"], "request");
    assert_eq!(header(request, ":path"), Some("/chat.Chat/Chat"));
    assert_eq!(header(request, "content-type"), Some("application/grpc"));

    assert_eq!(message_texts(&trace, "client"), ["hello", "héllo ✓"]);
    assert_eq!(
        message_texts(&trace, "server"),
        ["<<hello>>", "<<héllo ✓>>"]
    );
    let first = frames(&trace, "client", "DATA")
        .find(|f| f["messages"].is_array())
        .unwrap();
    assert_eq!(first["messages"][0]["type"], "chat.Msg");
    assert_eq!(first["messages"][0]["compressed"], false);
    assert_eq!(first["messages"][0]["len"], 7);

    // END_STREAM from each side: the client's half-close, the server's trailers.
    assert!(frames(&trace, "client", "DATA").any(|f| has_flag(f, "END_STREAM")));
    let trailers = frames(&trace, "server", "HEADERS")
        .find(|f| has_flag(f, "END_STREAM"))
        .expect("trailers");
    assert_eq!(trailers["headers"]["role"], "trailers");
    assert_eq!(header(trailers, "grpc-status"), Some("0"));

    // Window updates, with the window they moved.
    let update = trace
        .iter()
        .find(|v| v["type"] == "WINDOW_UPDATE")
        .expect("a WINDOW_UPDATE");
    assert!(update["increment"].as_u64().unwrap() > 0);
    assert!(update["flow"][0]["window"].as_i64().unwrap() > 0);

    let summary = trace
        .iter()
        .find(|v| v["summary"] == "stream")
        .expect("a stream summary");
    assert_eq!(summary["path"], "/chat.Chat/Chat");
    assert_eq!(summary["client_messages"], 2);
    assert_eq!(summary["server_messages"], 2);
    assert_eq!(summary["grpc_status"], "0");
}

#[test]
fn text_trace_is_plain_when_piped_and_shows_each_frame_on_a_line() {
    let (_server, server) = spawn_duplex_serve(&[]);
    let tap = Tap::start(server, &["--summary"]);
    run_echo(tap.addr, "hello\n");
    let trace = tap.finish();
    let text = trace.join("\n");
    assert!(
        !text.contains('\x1b'),
        "no color codes into a pipe:\n{text}"
    );
    let line = |needle: &str| {
        trace
            .iter()
            .find(|l| l.contains(needle))
            .unwrap_or_else(|| panic!("no line with {needle:?} in:\n{text}"))
    };
    assert!(line("→ s1   HEADERS").contains("[END_HEADERS]"));
    line(":path: /chat.Chat/Chat");
    line(r#"message #1 len=7 chat.Msg {text:"hello"}"#);
    line(r#"message #1 len=11 chat.Echo {text:"<<hello>>"}"#);
    assert!(line("→ s1   DATA").contains("client window s1="));
    line("[END_STREAM END_HEADERS]");
    line("grpc-status: 0");
    line("WINDOW_UPDATE");
    assert!(line("[ACK] len=0  applies").contains("INITIAL_WINDOW_SIZE="));
    line("summary");
    assert!(line("/chat.Chat/Chat  ").contains("grpc-status 0"));
}

#[test]
fn a_tiny_stream_window_shows_the_client_blocked_until_window_update() {
    let (_server, server) = spawn_duplex_serve(&["--initial-stream-window", "1024"]);
    let mut tap = Tap::start(server, &["--json", "--summary"]);
    let mut echo = ChildGuard(
        duplex()
            .args(["echo", "--addr", &tap.addr.to_string()])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap(),
    );
    // The client applies the server's SETTINGS (the 1 KiB window) as it acknowledges
    // them, not when later frames such as the response headers arrive: under load it has
    // sent its DATA on the old window with the response headers already in.
    tap.wait_for("the client's SETTINGS ACK", |v| {
        v["dir"] == "client"
            && v["type"] == "SETTINGS"
            && v["flags"]
                .as_array()
                .is_some_and(|flags| flags.iter().any(|f| f == "ACK"))
    });
    let long = "w".repeat(3000);
    let mut stdin = echo.0.stdin.take().unwrap();
    writeln!(stdin, "{long}").unwrap();
    drop(stdin);
    let blocked = tap.wait_for("the client blocked", |v| {
        v["dir"] == "client"
            && v["type"] == "DATA"
            && v["flow"].as_array().is_some_and(|f| {
                f.iter()
                    .any(|n| n["state"] == "blocked" && n["scope"] == "s1")
            })
    });
    assert_eq!(blocked["len"], 1024);
    assert_eq!(blocked["partial"]["len"], 3003);
    let unblocked = tap.wait_for("the client unblocked", |v| {
        v["dir"] == "server" && v["type"] == "WINDOW_UPDATE" && v["flow"][0]["state"] == "unblocked"
    });
    assert_eq!(unblocked["flow"][0]["side"], "client");
    assert!(unblocked["flow"][0]["blocked_ms"].as_f64().unwrap() >= 0.0);
    assert!(echo.wait_for_exit(STEP).expect("echo exits").success());

    let trace = json_lines(&tap.finish());
    assert_eq!(message_texts(&trace, "client"), [long.as_str()]);
    assert_eq!(message_texts(&trace, "server"), [format!("<<{long}>>")]);
    let summary = trace.iter().find(|v| v["summary"] == "stream").unwrap();
    assert!(
        summary["client_blocked_ms"].as_f64().unwrap() > 0.0,
        "{summary}"
    );
}

fn grpc_frame(text: &str) -> Bytes {
    let payload = Msg { text: text.into() }.encode_to_vec();
    let mut buf = BytesMut::new();
    buf.put_u8(0);
    buf.put_u32(payload.len() as u32);
    buf.put_slice(&payload);
    buf.freeze()
}

#[tokio::test]
async fn messages_split_across_frames_and_several_in_one_frame_are_decoded() {
    let (_server, server) = spawn_duplex_serve(&[]);
    let tap = Tap::start(server, &["--json"]);

    let tcp = TcpStream::connect(tap.addr).await.unwrap();
    let (mut client, connection) = h2::client::handshake(tcp).await.unwrap();
    tokio::spawn(connection);
    let request = http::Request::post(format!("http://{}/chat.Chat/Chat", tap.addr))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(())
        .unwrap();
    let (response, mut send) = client.send_request(request, false).unwrap();

    // Two messages in one DATA frame.
    let mut two = BytesMut::new();
    two.extend_from_slice(&grpc_frame("first"));
    two.extend_from_slice(&grpc_frame("second"));
    send.send_data(two.freeze(), false).unwrap();
    // One message cut in three frames: inside the prefix, then inside the body.
    let third = grpc_frame("third, in pieces");
    send.send_data(third.slice(..3), false).unwrap();
    send.send_data(third.slice(3..9), false).unwrap();
    send.send_data(third.slice(9..), false).unwrap();
    // One message larger than a frame (16 KiB): h2 cuts it.
    let big = "b".repeat(40_000);
    send.reserve_capacity(40_010);
    send.send_data(grpc_frame(&big), true).unwrap();

    let response = timeout(STEP, response).await.unwrap().unwrap();
    let mut body = response.into_body();
    let mut replies = 0;
    while let Some(chunk) = timeout(STEP, body.data()).await.unwrap() {
        let chunk = chunk.unwrap();
        body.flow_control().release_capacity(chunk.len()).unwrap();
        replies += chunk.len();
    }
    assert!(replies > 40_000);
    drop(client);

    let trace = json_lines(&tap.finish());
    assert_eq!(
        message_texts(&trace, "client"),
        ["first", "second", "third, in pieces", big.as_str()]
    );
    let client_data: Vec<&Value> = frames(&trace, "client", "DATA").collect();
    assert!(
        client_data
            .iter()
            .any(|f| f["messages"].as_array().is_some_and(|m| m.len() == 2)),
        "two messages in one frame"
    );
    // The pieces: frames that complete nothing but leave a message in progress.
    let in_progress: Vec<&&Value> = client_data
        .iter()
        .filter(|f| f["messages"].is_null() && f["len"].as_u64().unwrap() > 0)
        .collect();
    assert!(
        in_progress.len() >= 3,
        "split message frames: {in_progress:?}"
    );
    assert!(in_progress.iter().any(|f| f["partial"]["len"] == 18));
    let big_len = grpc_frame(&big).len() - 5;
    assert!(in_progress.iter().any(|f| f["partial"]["len"] == big_len));
    assert_eq!(
        message_texts(&trace, "server"),
        [
            "<<first>>".to_owned(),
            "<<second>>".to_owned(),
            "<<third, in pieces>>".to_owned(),
            format!("<<{big}>>")
        ]
    );
}

#[test]
fn http1_instead_of_http2_is_reported_and_still_forwarded() {
    let (_server, server) = spawn_duplex_serve(&[]);
    let tap = Tap::start(server, &["--json"]);
    let mut tcp = std::net::TcpStream::connect(tap.addr).unwrap();
    tcp.set_read_timeout(Some(STEP)).unwrap();
    tcp.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    // The server closes a non-HTTP/2 connection; the tap passes the close on.
    let mut rest = Vec::new();
    let _ = std::io::Read::read_to_end(&mut tcp, &mut rest);
    let trace = json_lines(&tap.finish());
    let error = trace
        .iter()
        .find(|v| v["error"].is_string())
        .expect("an error line");
    assert_eq!(error["dir"], "client");
    assert!(
        error["error"].as_str().unwrap().contains("not HTTP/2"),
        "{error}"
    );
    assert!(
        error["error"].as_str().unwrap().contains("GET / HTTP/1.1"),
        "{error}"
    );
    let closed = trace.iter().find(|v| v["event"] == "closed").unwrap();
    assert_eq!(closed["client_bytes"], 27);
}

#[tokio::test]
async fn proto_flag_decodes_methods_of_other_services() {
    let dir = std::env::temp_dir().join(format!("duplex-tap-proto-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let proto = dir.join("greet.proto");
    std::fs::write(
        &proto,
        "syntax = \"proto3\";\npackage demo;\nmessage HelloRequest { string name = 1; int32 times = 2; }\n\
         message HelloReply { string message = 1; }\n\
         service Greeter { rpc SayHello(HelloRequest) returns (HelloReply); }\n",
    )
    .unwrap();
    let (_server, server) = spawn_duplex_serve(&[]);
    let tap = Tap::start(server, &["--json", "--proto", proto.to_str().unwrap()]);

    let tcp = TcpStream::connect(tap.addr).await.unwrap();
    let (mut client, connection) = h2::client::handshake(tcp).await.unwrap();
    tokio::spawn(connection);
    let request = http::Request::post(format!("http://{}/demo.Greeter/SayHello", tap.addr))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(())
        .unwrap();
    let (response, mut send) = client.send_request(request, false).unwrap();
    // HelloRequest { name: "Ada", times: 3 }, encoded by hand.
    send.send_data(Bytes::from_static(b"\0\0\0\0\x07\x0a\x03Ada\x10\x03"), true)
        .unwrap();
    let response = timeout(STEP, response).await.unwrap().unwrap();
    assert_eq!(
        response.headers()["grpc-status"],
        "12",
        "duplex serves no Greeter"
    );
    drop(client);

    let trace = json_lines(&tap.finish());
    let _ = std::fs::remove_dir_all(&dir);
    let message = frames(&trace, "client", "DATA")
        .find_map(|f| f["messages"].get(0).cloned())
        .expect("the request message");
    assert_eq!(message["type"], "demo.HelloRequest");
    assert_eq!(message["text"], r#"name:"Ada",times:3"#);
    let reply = frames(&trace, "server", "HEADERS").next().unwrap();
    assert_eq!(reply["headers"]["role"], "trailers-only");
    assert_eq!(header(reply, "grpc-status"), Some("12"));
}

#[test]
fn tls_is_terminated_and_originated_and_the_plaintext_is_decoded() {
    let dir = std::env::temp_dir().join(format!("duplex-tap-tls-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let certified = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
    let cert = dir.join("cert.pem");
    let key = dir.join("key.pem");
    std::fs::write(&cert, certified.cert.pem()).unwrap();
    std::fs::write(&key, certified.signing_key.serialize_pem()).unwrap();
    let (cert, key) = (cert.to_str().unwrap(), key.to_str().unwrap());

    // echo ──h2c──▶ outer tap ──TLS──▶ inner tap ──h2c──▶ duplex serve
    let (_server, server) = spawn_duplex_serve(&[]);
    let inner = Tap::start(server, &["--json", "--tls-cert", cert, "--tls-key", key]);
    let outer = Tap::start(
        inner.addr,
        &[
            "--json",
            "--upstream-tls",
            "--upstream-ca",
            cert,
            "--upstream-server-name",
            "localhost",
        ],
    );
    let out = run_echo(outer.addr, "secret hello\n");
    assert_eq!(out, "server: <<secret hello>>\n");
    let outer_trace = json_lines(&outer.finish());
    let inner_trace = json_lines(&inner.finish());
    let _ = std::fs::remove_dir_all(&dir);

    for (trace, tls) in [
        (&outer_trace, "TLS to the upstream"),
        (&inner_trace, "TLS from the client"),
    ] {
        let connected = trace.iter().find(|v| v["event"] == "connected").unwrap();
        assert_eq!(connected["tls"], tls);
        assert_eq!(message_texts(trace, "client"), ["secret hello"]);
        assert_eq!(message_texts(trace, "server"), ["<<secret hello>>"]);
    }
}

#[test]
fn an_upstream_certificate_the_tap_does_not_trust_is_reported() {
    let dir = std::env::temp_dir().join(format!("duplex-tap-badtls-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let served = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
    let other = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
    for (name, pem) in [
        ("cert.pem", served.cert.pem()),
        ("key.pem", served.signing_key.serialize_pem()),
        ("other.pem", other.cert.pem()),
    ] {
        std::fs::write(dir.join(name), pem).unwrap();
    }
    let path = |name: &str| dir.join(name).to_str().unwrap().to_owned();
    let (_server, server) = spawn_duplex_serve(&[]);
    let inner = Tap::start(
        server,
        &[
            "--json",
            "--tls-cert",
            &path("cert.pem"),
            "--tls-key",
            &path("key.pem"),
        ],
    );
    let outer = Tap::start(
        inner.addr,
        &[
            "--json",
            "--upstream-tls",
            "--upstream-ca",
            &path("other.pem"),
        ],
    );
    let mut tcp = std::net::TcpStream::connect(outer.addr).unwrap();
    tcp.set_read_timeout(Some(STEP)).unwrap();
    // The outer tap gives up on the upstream and closes the client.
    let mut rest = Vec::new();
    let _ = std::io::Read::read_to_end(&mut tcp, &mut rest);
    let trace = json_lines(&outer.finish());
    inner.finish();
    let _ = std::fs::remove_dir_all(&dir);
    let error = trace
        .iter()
        .find(|v| v["event"] == "error")
        .expect("an error line");
    let text = error["error"].as_str().unwrap();
    assert!(text.contains("TLS handshake failed"), "{text}");
    assert!(text.contains("upstream"), "{text}");
}

#[test]
fn color_always_colors_even_into_a_pipe() {
    let (_server, server) = spawn_duplex_serve(&[]);
    let tap = Tap::start(server, &["--color", "always"]);
    run_echo(tap.addr, "hi\n");
    let trace = tap.finish().join("\n");
    // Cyan for the client's arrow, magenta for the server's.
    assert!(trace.contains("\x1b[36m→\x1b[0m"), "{trace}");
    assert!(trace.contains("\x1b[35m←\x1b[0m"), "{trace}");
}

#[test]
fn an_unreachable_upstream_is_reported_and_the_client_closed() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let tap = Tap::start(SocketAddr::from(([127, 0, 0, 1], port)), &["--json"]);
    let mut tcp = std::net::TcpStream::connect(tap.addr).unwrap();
    tcp.set_read_timeout(Some(STEP)).unwrap();
    let mut rest = Vec::new();
    let _ = std::io::Read::read_to_end(&mut tcp, &mut rest);
    let trace = json_lines(&tap.finish());
    let error = trace
        .iter()
        .find(|v| v["event"] == "error")
        .expect("an error line");
    assert!(
        error["error"]
            .as_str()
            .unwrap()
            .contains("cannot connect to"),
        "{error}"
    );
}
