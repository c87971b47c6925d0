//! Interop with real foreign gRPC stacks, both directions, both method paths:
//! Python `grpcio` and Node `@grpc/grpc-js` clients against `duplex serve`, and
//! `duplex echo` against their servers. The peers live in `interop/`; `scripts/test`
//! installs them (a venv and node_modules). Missing peers fail the test with what to run.

mod common;

use std::io::Write as _;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::{
    ChildGuard, STEP, duplex, python, repo_root, run_with_input, spawn_duplex_serve,
    spawn_listening,
};

#[derive(Debug, Clone, Copy)]
enum Peer {
    Python,
    Node,
}

/// The two ways the service is named: `/chat.Chat/Chat` and the article's `/Chat/Chat`.
const FORMS: [(&str, &str); 2] = [("package", "/chat.Chat/Chat"), ("bare", "/Chat/Chat")];

impl Peer {
    fn command(self, script: &str) -> Command {
        let root = repo_root();
        match self {
            Peer::Python => {
                let mut command = python();
                command.arg(root.join(format!("interop/python/{script}.py")));
                command
            }
            Peer::Node => {
                assert!(
                    root.join("interop/node/node_modules/@grpc/grpc-js")
                        .exists(),
                    "no @grpc/grpc-js in interop/node/node_modules: run scripts/test \
                     (npm ci in interop/node)"
                );
                let node = std::env::var_os("DUPLEX_NODE").unwrap_or_else(|| "node".into());
                let mut command = Command::new(node);
                command.arg(root.join(format!("interop/node/{script}.js")));
                command
            }
        }
    }

    /// Runs the peer's client with `input` on stdin; returns (exit code, stdout, stderr).
    fn run_client(self, args: &[&str], input: &str) -> (Option<i32>, String, String) {
        let mut command = self.command("chat_client");
        command.args(args);
        run_with_input(command, input)
    }

    fn spawn_server(self, form: &str) -> (ChildGuard, std::net::SocketAddr) {
        let mut command = self.command("chat_server");
        command.args(["--port", "0", "--form", form]);
        let (child, addr, _stdout) = spawn_listening(command);
        (child, addr)
    }
}

const LINES: &str = "hello\n\nhé ✓ 你好 🚀\nthe end\n";
const REPLIES: &str =
    "server: <<hello>>\nserver: <<>>\nserver: <<hé ✓ 你好 🚀>>\nserver: <<the end>>\n";

/// A foreign client against `duplex serve`: lines, 10k in order, a mid-stream deadline,
/// and an oversize message — for both method paths.
fn foreign_client_against_our_server(peer: Peer) {
    let (_server, addr) = spawn_duplex_serve(&["--max-message-size", "1MiB"]);
    let addr = addr.to_string();
    for (form, path) in FORMS {
        let base = ["--addr", addr.as_str(), "--form", form];

        let (code, out, err) = peer.run_client(&base, LINES);
        assert_eq!(code, Some(0), "{peer:?} {path}: stderr {err}");
        assert_eq!(out, REPLIES, "{peer:?} {path}");

        let (code, out, err) = peer.run_client(&[&base[..], &["--count", "10000"]].concat(), "");
        assert_eq!(code, Some(0), "{peer:?} {path} --count: stderr {err}");
        assert_eq!(out.trim(), "ok 10000", "{peer:?} {path}");

        // stdin stays open (the pipe is held), so only the deadline can end the call.
        let mut client = peer.command("chat_client");
        client
            .args(base)
            .args(["--deadline-ms", "600"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut client = ChildGuard(client.spawn().unwrap());
        let status = client
            .wait_for_exit(STEP)
            .expect("the deadline ends the call");
        let mut err = String::new();
        std::io::Read::read_to_string(client.0.stderr.as_mut().unwrap(), &mut err).unwrap();
        assert_eq!(status.code(), Some(2), "{peer:?} {path}: stderr {err}");
        assert!(
            err.contains("DEADLINE_EXCEEDED"),
            "{peer:?} {path}: stderr {err}"
        );

        let oversize = format!("fits\n{}\n", "o".repeat(1 << 21));
        let (code, out, err) = peer.run_client(&base, &oversize);
        assert_eq!(code, Some(2), "{peer:?} {path}: stderr {err}");
        assert!(
            err.contains("RESOURCE_EXHAUSTED"),
            "{peer:?} {path}: stderr {err}"
        );
        assert!(
            out.starts_with("server: <<fits>>\n") || out.is_empty(),
            "{out}"
        );
    }
}

/// `duplex echo` against a foreign server built from each proto form.
fn our_client_against_foreign_server(peer: Peer) {
    for (form, path) in FORMS {
        let (_server, addr) = peer.spawn_server(form);
        let mut echo = duplex();
        echo.args(["echo", "--addr", &addr.to_string(), "--path", path]);
        let (code, out, err) = run_with_input(echo, LINES);
        assert_eq!(code, Some(0), "duplex echo → {peer:?} {path}: stderr {err}");
        assert_eq!(out, REPLIES, "duplex echo → {peer:?} {path}");

        let many: String = (0..2000).map(|i| format!("n{i}\n")).collect();
        let mut echo = duplex();
        echo.args(["echo", "--addr", &addr.to_string(), "--path", path]);
        let (code, out, err) = run_with_input(echo, &many);
        assert_eq!(code, Some(0), "{peer:?} {path}: stderr {err}");
        let expected: String = (0..2000).map(|i| format!("server: <<n{i}>>\n")).collect();
        assert_eq!(out, expected, "{peer:?} {path}: order");

        // The other form's path is not served by this peer: a clear failure, not a hang.
        let other = FORMS.iter().find(|(f, _)| *f != form).unwrap().1;
        let mut echo = duplex();
        echo.args(["echo", "--addr", &addr.to_string(), "--path", other]);
        let (code, _, err) = run_with_input(echo, "x\n");
        assert_eq!(code, Some(1), "{peer:?} {other}: stderr {err}");
        assert!(
            err.contains("Unimplemented"),
            "{peer:?} {other}: stderr {err}"
        );
    }
}

#[test]
fn python_grpcio_client_against_duplex_server() {
    foreign_client_against_our_server(Peer::Python);
}

#[test]
fn node_grpc_js_client_against_duplex_server() {
    foreign_client_against_our_server(Peer::Node);
}

#[test]
fn duplex_echo_against_python_grpcio_server() {
    our_client_against_foreign_server(Peer::Python);
}

#[test]
fn duplex_echo_against_node_grpc_js_server() {
    our_client_against_foreign_server(Peer::Node);
}

#[test]
fn foreign_clients_see_our_server_stop_gracefully() {
    // A grpcio call in progress survives SIGTERM and completes during the grace period.
    let (mut server, addr) = spawn_duplex_serve(&["--shutdown-grace", "20s"]);
    let mut client = Peer::Python.command("chat_client");
    client
        .args(["--addr", &addr.to_string()])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut client = ChildGuard(client.spawn().unwrap());
    let mut stdin = client.0.stdin.take().unwrap();
    let mut replies = std::io::BufReader::new(client.0.stdout.take().unwrap());
    let mut reply = String::new();
    writeln!(stdin, "one").unwrap();
    stdin.flush().unwrap();
    std::io::BufRead::read_line(&mut replies, &mut reply).unwrap();
    assert_eq!(
        reply, "server: <<one>>\n",
        "the call is up before the signal"
    );

    server.signal("TERM");
    std::thread::sleep(Duration::from_millis(200));
    writeln!(stdin, "two").unwrap();
    drop(stdin);
    let status = client.wait_for_exit(STEP).expect("client finishes");
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut replies, &mut rest).unwrap();
    assert!(status.success(), "client status {status:?}");
    assert_eq!(rest, "server: <<two>>\n");
    let status = server
        .wait_for_exit(STEP)
        .expect("server exits after the call");
    assert!(status.success());
}
