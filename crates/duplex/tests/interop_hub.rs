//! The rooms API (`duplex.v1.Hub`) from a foreign stack: a Python grpcio client whose
//! stubs are generated at runtime from `proto/duplex/v1/hub.proto` joins, publishes,
//! re-publishes a client id, resumes in a new session, hits a per-command error and reads
//! history — against `duplex serve` with the in-memory store and with redb on disk.
//! The client is `interop/python/hub_client.py`; `scripts/test` makes its `.venv`.

mod common;

use std::net::SocketAddr;
use std::process::{Command, Stdio};

use common::{STEP, repo_root, spawn_duplex_serve, spawn_duplex_serve_durable};

/// Messages published by the client; it resumes from the middle.
const COUNT: usize = 200;

/// The grpcio Hub client script.
fn python() -> Command {
    let mut command = common::python();
    command.arg(repo_root().join("interop/python/hub_client.py"));
    command
}

/// Runs the publish-resume scenario against `addr`; returns (exit code, stdout, stderr).
fn run_publish_resume(addr: SocketAddr, room: &str) -> (Option<i32>, String, String) {
    let mut command = python();
    command
        .args(["--scenario", "publish-resume", "--addr"])
        .arg(addr.to_string())
        .args(["--room", room, "--count", &COUNT.to_string()])
        .args(["--name", "py-hub", "--step-timeout"])
        .arg(STEP.as_secs().to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    // Every wait inside the client is bounded by STEP (--step-timeout), so a stuck step ends
    // it well before this; the bound catches a client stuck anywhere else.
    common::run_with_input_within(command, "", STEP * 6)
}

/// The client's report when every check passed. A fresh room numbers its messages from 1
/// without gaps today, so the offsets are known: the last of 200 is 200 and the resume
/// point (the offset of py-99) is 100. The client itself checks offsets only against its
/// acks, so it would still pass if numbering changed; this test would then need new values.
fn expected_report() -> String {
    let half = COUNT / 2;
    format!(
        "published {COUNT} last={COUNT}\nduplicate ok\nresumed {} from={half}\nerrors ok\n\
         history ok\n",
        COUNT - half
    )
}

fn check(store: &str, addr: SocketAddr) {
    let (code, out, err) = run_publish_resume(addr, "interop.py-hub");
    assert_eq!(
        (code, out.as_str()),
        (Some(0), expected_report().as_str()),
        "{store} store: stderr {err}"
    );
}

#[test]
fn python_grpcio_hub_client_joins_publishes_and_resumes() {
    let (_server, addr) = spawn_duplex_serve(&[]);
    check("memory", addr);

    let data = tempfile::tempdir().unwrap();
    let (_server, addr) = spawn_duplex_serve_durable(data.path(), &[]);
    check("redb", addr);
}
