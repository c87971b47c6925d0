//! The `duplex` binary as a user runs it: `duplex serve` in one process, `duplex echo` in
//! another, signals for shutdown.

mod common;

use std::io::{BufRead as _, BufReader, Write as _};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{ChildGuard, STEP, duplex, spawn_duplex_serve};

/// Runs `duplex echo` with `input` on stdin; returns (exit ok, stdout, stderr).
fn run_echo(args: &[&str], input: &str) -> (bool, String, String) {
    let mut command = duplex();
    command.arg("echo").args(args);
    let (code, out, err) = common::run_with_input(command, input);
    (code == Some(0), out, err)
}

/// A `duplex echo` whose stdin stays open, driven line by line.
struct EchoSession {
    child: ChildGuard,
    replies: BufReader<std::process::ChildStdout>,
}

impl EchoSession {
    fn start(addr: &str) -> Self {
        let mut child = duplex()
            .args(["echo", "--addr", addr])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let replies = BufReader::new(child.stdout.take().unwrap());
        Self {
            child: ChildGuard(child),
            replies,
        }
    }

    fn say(&mut self, line: &str) -> String {
        let stdin = self.child.0.stdin.as_mut().unwrap();
        writeln!(stdin, "{line}").unwrap();
        stdin.flush().unwrap();
        let mut reply = String::new();
        self.replies.read_line(&mut reply).unwrap();
        reply
    }

    fn close_stdin(&mut self) {
        drop(self.child.0.stdin.take());
    }
}

#[test]
fn echo_prints_each_reply_and_exits_zero_at_eof() {
    let (_server, addr) = spawn_duplex_serve(&[]);
    let input = "hello\n\nhé ✓ 你好\nwindows line\r\nlast line without newline";
    let (ok, out, err) = run_echo(&["--addr", &addr.to_string()], input);
    assert!(ok, "stderr: {err}");
    assert_eq!(
        out,
        "server: <<hello>>\nserver: <<>>\nserver: <<hé ✓ 你好>>\nserver: <<windows line>>\nserver: <<last line without newline>>\n"
    );
}

#[test]
fn echo_with_empty_stdin_half_closes_and_exits_zero() {
    let (_server, addr) = spawn_duplex_serve(&[]);
    let (ok, out, err) = run_echo(&["--addr", &format!("http://{addr}")], "");
    assert!(ok, "stderr: {err}");
    assert_eq!(out, "");
}

#[test]
fn echo_keeps_order_for_many_lines() {
    let (_server, addr) = spawn_duplex_serve(&[]);
    let input: String = (0..5000).map(|i| format!("line {i}\n")).collect();
    let (ok, out, err) = run_echo(&["--addr", &addr.to_string()], &input);
    assert!(ok, "stderr: {err}");
    let expected: String = (0..5000)
        .map(|i| format!("server: <<line {i}>>\n"))
        .collect();
    assert_eq!(out, expected);
}

#[test]
fn echo_to_unreachable_server_fails_with_a_clear_message() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let (ok, out, err) = run_echo(&["--addr", &format!("127.0.0.1:{port}")], "hi\n");
    assert!(!ok);
    assert_eq!(out, "");
    assert!(err.contains("cannot connect to"), "stderr: {err}");
    assert!(err.contains("refused"), "stderr: {err}");
}

#[test]
fn echo_reports_a_failed_call_and_exits_nonzero() {
    let (_server, addr) = spawn_duplex_serve(&["--max-message-size", "1KiB"]);
    let input = format!("small\n{}\n", "z".repeat(2048));
    let (ok, out, err) = run_echo(&["--addr", &addr.to_string()], &input);
    assert!(!ok);
    assert_eq!(out, "server: <<small>>\n");
    assert!(err.contains("ResourceExhausted"), "stderr: {err}");
}

#[test]
fn echo_deadline_ends_a_long_call() {
    let (_server, addr) = spawn_duplex_serve(&[]);
    let mut child = ChildGuard(
        duplex()
            .args(["echo", "--addr", &addr.to_string(), "--deadline", "500ms"])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    // stdin stays open: only the deadline can end this call.
    let status = child
        .wait_for_exit(STEP)
        .expect("the deadline ends the call");
    assert!(!status.success());
    let mut err = String::new();
    std::io::Read::read_to_string(child.0.stderr.as_mut().unwrap(), &mut err).unwrap();
    assert!(err.contains("DeadlineExceeded"), "stderr: {err}");
}

/// `--workers 1` on a current-thread runtime: the acceptor and the one connection worker
/// share the server's only thread (the other tests run the default, a worker per core).
const ONE_WORKER: &[&str] = &["--workers", "1", "--runtime", "current-thread"];

#[test]
fn sigterm_drains_open_calls_then_exits_zero() {
    sigterm_drains_open_calls_then_exits_zero_with(&[]);
}

#[test]
fn sigterm_drains_open_calls_then_exits_zero_on_one_worker() {
    sigterm_drains_open_calls_then_exits_zero_with(ONE_WORKER);
}

fn sigterm_drains_open_calls_then_exits_zero_with(args: &[&str]) {
    let (mut server, addr) = spawn_duplex_serve(&[&["--shutdown-grace", "30s"], args].concat());
    let mut session = EchoSession::start(&addr.to_string());
    assert_eq!(session.say("before"), "server: <<before>>\n");

    server.signal("TERM");
    // The open call keeps working during the grace period…
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(session.say("during"), "server: <<during>>\n");
    // …while new connections are refused.
    let (ok, _, err) = run_echo(
        &["--addr", &addr.to_string(), "--connect-timeout", "2s"],
        "x\n",
    );
    assert!(
        !ok,
        "a new client must not get in after SIGTERM; stderr: {err}"
    );

    // The client finishes on its own; the server exits as soon as its last call is done.
    session.close_stdin();
    let client_status = session.child.wait_for_exit(STEP).unwrap();
    assert!(client_status.success());
    let started = Instant::now();
    let status = server
        .wait_for_exit(STEP)
        .expect("server exits after draining");
    assert!(status.success(), "exit status {status:?}");
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "did not wait out the 30s grace"
    );
}

#[test]
fn sigint_with_a_stuck_call_exits_zero_after_the_grace_period() {
    sigint_with_a_stuck_call_exits_zero_after_the_grace_period_with(&[]);
}

#[test]
fn sigint_with_a_stuck_call_exits_zero_after_the_grace_period_on_one_worker() {
    sigint_with_a_stuck_call_exits_zero_after_the_grace_period_with(ONE_WORKER);
}

fn sigint_with_a_stuck_call_exits_zero_after_the_grace_period_with(args: &[&str]) {
    let (mut server, addr) = spawn_duplex_serve(&[&["--shutdown-grace", "1s"], args].concat());
    let mut session = EchoSession::start(&addr.to_string());
    assert_eq!(session.say("ping"), "server: <<ping>>\n");
    let signalled = Instant::now();
    server.signal("INT");
    let status = server
        .wait_for_exit(STEP)
        .expect("server exits after the grace period");
    assert!(status.success(), "exit status {status:?}");
    assert!(
        signalled.elapsed() >= Duration::from_millis(900),
        "waited for the grace period"
    );
    // The client whose call was cut off says so and fails.
    let client_status = session.child.wait_for_exit(STEP).expect("client notices");
    assert!(!client_status.success());
}

#[test]
fn serve_help_explains_the_knobs() {
    let output = Command::new(env!("CARGO_BIN_EXE_duplex"))
        .args(["serve", "--help"])
        .output()
        .unwrap();
    let help = String::from_utf8(output.stdout).unwrap();
    for flag in [
        "--listen",
        "--initial-stream-window",
        "--initial-connection-window",
        "--adaptive-window",
        "--max-frame-size",
        "--max-concurrent-streams",
        "--keepalive-interval",
        "--keepalive-timeout",
        "--max-message-size",
        "--tcp-nodelay",
        "--shutdown-grace",
    ] {
        assert!(help.contains(flag), "{flag} missing from --help:\n{help}");
    }
    assert!(
        help.contains("WINDOW_UPDATE"),
        "the help explains what a window is"
    );
}

#[test]
fn serve_refuses_a_bad_flag_value_with_a_reason() {
    let output = Command::new(env!("CARGO_BIN_EXE_duplex"))
        .args(["serve", "--initial-stream-window", "0"])
        .output()
        .unwrap();
    assert!(!output.status.success());
    let err = String::from_utf8(output.stderr).unwrap();
    assert!(err.contains("out of range"), "{err}");
}
