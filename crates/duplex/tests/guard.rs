//! Connection admission below HTTP/2, against a real server process: per-IP and total
//! connection limits, the preface timeout (slowloris), and the PING policy (GOAWAY
//! ENHANCE_YOUR_CALM "too_many_pings").

mod common;

use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use common::spawn_duplex_serve;

const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// How a connection ended, as the client saw it.
#[derive(Debug, PartialEq)]
enum Ending {
    /// Still open when the reading stopped.
    Open,
    /// The server's FIN, after everything it sent.
    Fin,
    /// A read error (ECONNRESET: the server closed with our input unread).
    Error(std::io::ErrorKind),
}

/// Reads until the server closes the connection or `limit` passes; returns the bytes and
/// how the connection ended.
fn read_until_ended(tcp: &mut TcpStream, limit: Duration) -> (Vec<u8>, Ending) {
    tcp.set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    let start = Instant::now();
    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    while start.elapsed() < limit {
        match tcp.read(&mut buf) {
            Ok(0) => return (seen, Ending::Fin),
            Ok(n) => seen.extend_from_slice(&buf[..n]),
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(e) => return (seen, Ending::Error(e.kind())),
        }
    }
    (seen, Ending::Open)
}

/// Reads until the server closes the connection or `limit` passes; returns the bytes and
/// whether it closed.
fn read_until_closed(tcp: &mut TcpStream, limit: Duration) -> (Vec<u8>, bool) {
    let (seen, ending) = read_until_ended(tcp, limit);
    (seen, ending != Ending::Open)
}

/// A PING frame (not an ACK) with `byte` as all 8 bytes of its payload.
fn ping(byte: u8) -> [u8; 17] {
    let mut frame = [byte; 17];
    frame[..9].copy_from_slice(&[0, 0, 8, 0x6, 0, 0, 0, 0, 0]);
    frame
}

/// Whether the server's `bytes` hold a GOAWAY(ENHANCE_YOUR_CALM, "too_many_pings"): walks
/// its frames from the start.
fn has_calm_down_goaway(bytes: &[u8]) -> bool {
    let mut rest = bytes;
    let mut calmed = false;
    while rest.len() >= 9 {
        let length = usize::from(rest[0]) << 16 | usize::from(rest[1]) << 8 | usize::from(rest[2]);
        let kind = rest[3];
        let Some(payload) = rest.get(9..9 + length) else {
            break;
        };
        if kind == 0x7 && payload.len() >= 8 && payload[4..8] == [0, 0, 0, 0xb] {
            assert_eq!(&payload[8..], b"too_many_pings");
            calmed = true;
        }
        rest = &rest[9 + length..];
    }
    calmed
}

/// A Chat call over a fresh connection works.
fn healthy(addr: SocketAddr) -> bool {
    let mut echo = common::duplex()
        .args([
            "echo",
            "--addr",
            &addr.to_string(),
            "--connect-timeout",
            "3s",
        ])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    echo.stdin.take().unwrap().write_all(b"ok\n").unwrap();
    let output = echo.wait_with_output().unwrap();
    output.status.success() && output.stdout == b"server: <<ok>>\n"
}

/// A connection that has spoken HTTP/2 (preface + SETTINGS) and is held open.
fn h2_connection(addr: SocketAddr) -> TcpStream {
    let mut tcp = TcpStream::connect(addr).unwrap();
    tcp.write_all(PREFACE).unwrap();
    tcp.write_all(&[0, 0, 0, 0x4, 0, 0, 0, 0, 0]).unwrap(); // empty SETTINGS
    tcp
}

#[test]
fn connections_beyond_the_per_ip_limit_are_closed_at_once() {
    let (_server, addr) = spawn_duplex_serve(&["--max-connections-per-ip", "3"]);
    let held: Vec<TcpStream> = (0..3).map(|_| h2_connection(addr)).collect();
    std::thread::sleep(Duration::from_millis(200));
    let mut fourth = TcpStream::connect(addr).unwrap();
    let (_, closed) = read_until_closed(&mut fourth, Duration::from_secs(5));
    assert!(closed, "the 4th connection from one IP is closed");
    drop(held);
    std::thread::sleep(Duration::from_millis(300));
    assert!(
        healthy(addr),
        "once they are gone, new connections are served"
    );
}

#[test]
fn connections_beyond_the_total_limit_are_closed_at_once() {
    let (_server, addr) = spawn_duplex_serve(&["--max-connections", "2"]);
    let held: Vec<TcpStream> = (0..2).map(|_| h2_connection(addr)).collect();
    std::thread::sleep(Duration::from_millis(200));
    assert!(!healthy(addr), "a third connection is refused");
    drop(held);
    std::thread::sleep(Duration::from_millis(300));
    assert!(healthy(addr));
}

#[test]
fn silent_and_half_preface_connections_are_closed_after_the_preface_timeout() {
    let (_server, addr) = spawn_duplex_serve(&["--preface-timeout", "500ms"]);
    let started = Instant::now();
    let mut silent: Vec<TcpStream> = (0..20).map(|_| TcpStream::connect(addr).unwrap()).collect();
    let mut half = TcpStream::connect(addr).unwrap();
    half.write_all(&PREFACE[..10]).unwrap();
    silent.push(half);
    // Meanwhile others are served.
    assert!(healthy(addr));
    for tcp in &mut silent {
        let (_, closed) = read_until_closed(tcp, Duration::from_secs(10));
        assert!(closed, "a connection without a preface is closed");
    }
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(450),
        "not before the timeout: {took:?}"
    );
    assert!(healthy(addr));
}

#[test]
fn ping_flood_gets_goaway_enhance_your_calm() {
    let (_server, addr) = spawn_duplex_serve(&["--min-ping-interval", "10s"]);
    let mut tcp = h2_connection(addr);
    // All ten are sent before anything is read: the server decides on the 4th and has the
    // rest unread when it ends the connection.
    for i in 0..10u8 {
        tcp.write_all(&ping(i)).unwrap();
    }
    let (bytes, ending) = read_until_ended(&mut tcp, Duration::from_secs(10));
    assert!(
        has_calm_down_goaway(&bytes),
        "GOAWAY(ENHANCE_YOUR_CALM) among {} bytes, then {ending:?}",
        bytes.len()
    );
    assert_eq!(
        ending,
        Ending::Fin,
        "a clean close: the server drains what it did not read, no RST"
    );
    assert!(healthy(addr), "others are served");
}

#[test]
fn a_ping_flood_cut_mid_frame_still_gets_the_goaway() {
    let (_server, addr) = spawn_duplex_serve(&["--min-ping-interval", "10s"]);
    let mut tcp = h2_connection(addr);
    tcp.set_nodelay(true).unwrap();
    for i in 0..3u8 {
        tcp.write_all(&ping(i)).unwrap();
    }
    // The PING that earns the third strike, its header alone: the server can read no
    // further than the middle of that frame, which is where h2 is when the guard decides.
    tcp.write_all(&ping(3)[..9]).unwrap();
    let (bytes, ending) = read_until_ended(&mut tcp, Duration::from_secs(10));
    assert!(
        has_calm_down_goaway(&bytes),
        "GOAWAY(ENHANCE_YOUR_CALM) among {} bytes, then {ending:?}",
        bytes.len()
    );
    assert_eq!(ending, Ending::Fin, "then a clean close");
    assert!(healthy(addr), "others are served");
}

#[test]
fn a_polite_client_that_pings_now_and_then_is_left_alone() {
    let (_server, addr) = spawn_duplex_serve(&["--min-ping-interval", "200ms"]);
    let mut tcp = h2_connection(addr);
    for i in 0..5u8 {
        tcp.write_all(&ping(i)).unwrap();
        std::thread::sleep(Duration::from_millis(300));
    }
    let (_, closed) = read_until_closed(&mut tcp, Duration::from_millis(500));
    assert!(!closed, "pings spaced past the minimum interval are fine");
}

/// Small messages in a burst, from a client that reads no reply until it has sent them all:
/// its receive window stays at 64 KiB, so the echoes stop there and the requests wait in
/// the server, each in its own small DATA frame as grpc-js sends them. HTTP/2 flow control
/// is what holds such a client back; it is not told to calm down (h2 charges small unread
/// DATA frames against a budget and used to send GOAWAY ENHANCE_YOUR_CALM
/// "too_many_data_frames" here), and once it reads, every echo arrives, in order.
#[tokio::test]
async fn a_burst_of_small_messages_waits_on_flow_control_not_goaway() {
    use common::raw::{self, RawConn};
    // 20k requests of 12–14 bytes: 420 KB, inside the 1 MiB stream window, and about
    // 14k of them still unread when the echoes stop, over three times what h2 allows.
    const MESSAGES: usize = 20_000;
    const PER_WRITE: usize = 200;
    let (_server, addr) = spawn_duplex_serve(&[]);
    let mut conn = RawConn::open(addr, &[]).await;
    let request = raw::hpack::request("/chat.Chat/Chat", raw::hpack::GRPC);
    conn.send(&raw::headers(1, raw::END_HEADERS, &request))
        .await
        .unwrap();
    for batch in (0..MESSAGES).step_by(PER_WRITE) {
        let mut bytes = Vec::new();
        for i in batch..batch + PER_WRITE {
            let text = format!("m{i}");
            let mut msg = vec![0x0a, u8::try_from(text.len()).unwrap()];
            msg.extend_from_slice(text.as_bytes());
            let last = i + 1 == MESSAGES;
            bytes.extend(raw::data(1, &raw::grpc_message(&msg), last));
        }
        conn.send(&bytes).await.unwrap();
    }
    // Now read: open our windows and take every echo. (A GOAWAY for the burst would come
    // before these: the server meets them after all the requests.)
    let wide = (1 << 30) - 1;
    let mut updates = raw::window_update(0, wide);
    updates.extend(raw::window_update(1, wide));
    conn.send(&updates).await.unwrap();
    let finished = conn
        .wait_for(common::STEP, |seen| {
            seen.header(1, "grpc-status").is_some() || seen.goaway.is_some() || seen.closed()
        })
        .await;
    let seen = conn.seen();
    assert!(finished, "the call ends: {}", seen.summary());
    assert!(seen.goaway.is_none(), "{}", seen.summary());
    assert_eq!(
        seen.header(1, "grpc-status").as_deref(),
        Some("0"),
        "{}",
        seen.summary()
    );
    let mut replies = seen.data.get(&1).map(Vec::as_slice).unwrap_or_default();
    let mut count = 0;
    while let Some(prefix) = replies.get(..5) {
        let length = usize::try_from(u32::from_be_bytes(prefix[1..5].try_into().unwrap())).unwrap();
        let message = &replies[5..5 + length];
        let want = format!("<<m{count}>>");
        assert_eq!(&message[2..], want.as_bytes(), "echo {count}");
        count += 1;
        replies = &replies[5 + length..];
    }
    assert_eq!(count, MESSAGES, "every echo, in order");
}
