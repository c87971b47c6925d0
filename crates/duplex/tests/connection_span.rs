//! The connection span, as an operator reads it in the server's log: the lines logged
//! while admitting, guarding and speaking HTTP/2 on a connection name the connection and its
//! peer — the guard's lines, and HTTP/2's lines from the connection's task (the handshake,
//! each new stream).

mod common;

use std::io::{BufReader, Read as _};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::{ChildStdout, Command};

use common::{ChildGuard, STEP, duplex, log_lines_once, run_with_input, spawn_listening};

/// Starts `duplex serve` on a picked loopback port with `RUST_LOG=filter`, its log going to
/// `log`; returns it with its address and its stdout (kept open while the test runs).
fn serve_logging(
    filter: &str,
    log: &Path,
    args: &[&str],
) -> (ChildGuard, SocketAddr, BufReader<ChildStdout>) {
    let mut command = duplex();
    command
        .args(["serve", "--listen", "127.0.0.1:0", "--store", "memory"])
        .args(args)
        .env("RUST_LOG", filter)
        .stderr(std::fs::File::create(log).unwrap());
    spawn_listening(command)
}

#[test]
fn a_guard_log_line_names_the_connection_and_its_peer() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("serve.log");
    let (_server, addr, _stdout) =
        serve_logging("duplex_server=debug", &log, &["--preface-timeout", "300ms"]);
    // A connection that never sends the HTTP/2 preface: the guard closes it and says so.
    let mut silent = TcpStream::connect(addr).unwrap();
    let peer = silent.local_addr().unwrap();
    silent.set_read_timeout(Some(STEP)).unwrap();
    let _ = silent.read(&mut [0u8; 64]);

    let lines = log_lines_once(&log, "sent no preface");
    let line = lines
        .iter()
        .find(|line| line.contains("sent no preface"))
        .unwrap_or_else(|| panic!("no preface-timeout line in the log:\n{}", lines.join("\n")));
    assert!(line.contains("connection{"), "{line}");
    assert!(line.contains(&format!("peer={peer}")), "{line}");
    assert!(line.contains(&format!("local={addr}")), "{line}");
    assert!(line.contains("tls=false"), "{line}");
}

#[test]
fn http2_connection_log_lines_carry_the_connection_span() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("serve.log");
    let (_server, addr, _stdout) = serve_logging("info,h2=trace", &log, &[]);
    let mut echo: Command = duplex();
    echo.args(["echo", "--addr", &addr.to_string()]);
    let (code, out, err) = run_with_input(echo, "hello\n");
    assert_eq!(code, Some(0), "stderr: {err}");
    assert!(out.contains("<<hello>>"), "{out}");

    let lines = log_lines_once(&log, "received incoming");
    let in_span = |line: &str| {
        line.contains("connection{number=1 ")
            && line.contains("peer=127.0.0.1:")
            && line.contains(&format!("local={addr}"))
    };
    // The HTTP/2 handshake, and the call's stream as the connection takes it in.
    for needle in ["server_handshake", "received incoming"] {
        assert!(
            lines
                .iter()
                .any(|line| line.contains(needle) && in_span(line)),
            "no `{needle}` line in the connection span:\n{}",
            lines.join("\n")
        );
    }
}
