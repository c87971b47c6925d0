//! The web listener (`--web-listen`): HTTP/1.1 beside the gRPC port, with the same
//! admission and a deadline for a request's headers.

mod common;

use std::io::{Read as _, Write as _};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use common::spawn_duplex_serve_web;

#[test]
fn the_web_listener_answers_healthz_over_http1() {
    let (_server, _grpc, web) = spawn_duplex_serve_web(&[]);
    let reply = common::http_exchange(
        web,
        "GET /healthz HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n",
    );
    assert!(reply.starts_with("HTTP/1.1 200"), "{reply}");
    assert!(reply.ends_with("ok\n"), "{reply}");

    let reply = common::http_exchange(
        web,
        "GET /no-such-page HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n",
    );
    assert!(reply.starts_with("HTTP/1.1 404"), "{reply}");
}

#[test]
fn headers_that_never_finish_are_cut_at_the_preface_timeout() {
    let (_server, _grpc, web) = spawn_duplex_serve_web(&["--preface-timeout", "1s"]);
    let mut tcp = TcpStream::connect(web).expect("connect");
    tcp.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let started = Instant::now();
    // A slowloris client: a request line and one header, then nothing.
    tcp.write_all(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n")
        .unwrap();
    let mut reply = Vec::new();
    let read = tcp.read_to_end(&mut reply);
    let waited = started.elapsed();
    assert!(read.is_ok(), "the server closed the connection: {read:?}");
    assert!(
        waited >= Duration::from_millis(900) && waited < Duration::from_secs(8),
        "closed after {waited:?}"
    );
}

#[test]
fn the_per_ip_connection_cap_counts_both_listeners() {
    let (_server, grpc, web) = spawn_duplex_serve_web(&["--max-connections-per-ip", "2"]);
    // Two connections to the web listener that send nothing yet hold the IP's two places.
    let held: Vec<TcpStream> = (0..2).map(|_| TcpStream::connect(web).unwrap()).collect();
    // Let the server admit them before the third arrives.
    std::thread::sleep(Duration::from_millis(300));
    let mut third = TcpStream::connect(grpc).expect("the kernel accepts");
    third
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut byte = [0u8; 1];
    assert_eq!(
        third
            .read(&mut byte)
            .expect("a refused connection is closed"),
        0,
        "the gRPC listener refuses a third connection from the IP"
    );
    drop(held);
    // With them gone the web listener serves again (the places are released on close).
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let reply = common::http_exchange(
            web,
            "GET /healthz HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n",
        );
        if reply.starts_with("HTTP/1.1 200") {
            break;
        }
        assert!(Instant::now() < deadline, "never served again: {reply:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
}
