//! What a new user meets in the first hour, driven as they would: `duplex chat` against
//! servers that refuse it for good (ends with why) or for now (backs off, growing), the
//! README's auth section with `duplex token`, the TLS quick start with `duplex cert`,
//! addresses and limits that are wrong, `duplex tap --json | jq`, `duplex bench` against
//! a rate-limited server, and what the server says at start.

mod common;

use std::io::{BufRead as _, BufReader};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::{
    ChatTerminal, ChildGuard, STEP, duplex, python, repo_root, run_with_input, spawn_duplex_serve,
    spawn_listening,
};
use duplex_client::{Client, ClientError, ClientOptions};

/// Runs a `duplex` command to its end with empty stdin; returns (exit code, stdout, stderr).
fn run(args: &[&str]) -> (Option<i32>, String, String) {
    let mut command = duplex();
    command.args(args);
    run_with_input(command, "")
}

/// Writes a 44-byte HS256 secret into `dir` and returns its path.
fn secret_file(dir: &Path) -> String {
    let path = dir.join("jwt.secret");
    std::fs::write(&path, "c2VjcmV0LXNlY3JldC1zZWNyZXQtc2VjcmV0LXNlY3JldAo=\n").unwrap();
    path.to_str().unwrap().to_owned()
}

/// `duplex token …` → the token it printed.
fn mint(args: &[&str]) -> String {
    let (code, out, err) = run(&[&["token"], args].concat());
    assert_eq!(code, Some(0), "duplex token failed: {err}");
    out.trim().to_owned()
}

fn chat(addr: SocketAddr, extra: &[&str]) -> Command {
    chat_in("lobby", addr, extra)
}

/// `duplex chat --room ROOM --name newcomer --addr ADDR` plus `extra`.
fn chat_in(room: &str, addr: SocketAddr, extra: &[&str]) -> Command {
    let mut command = duplex();
    command
        .args(["chat", "--room", room, "--name", "newcomer", "--addr"])
        .arg(addr.to_string())
        .args(extra);
    command
}

/// `duplex bench fanout --addr ADDR --quiet` plus `extra`.
fn bench_fanout(addr: SocketAddr, extra: &[&str]) -> Command {
    let mut command = duplex();
    command
        .args(["bench", "fanout", "--quiet", "--addr"])
        .arg(addr.to_string())
        .args(extra);
    command
}

#[test]
fn chat_against_a_server_without_rooms_says_why_and_exits_nonzero() {
    // The article's kind of server: grpcio serving only Chat.
    let mut server = python();
    server
        .arg(repo_root().join("interop/python/chat_server.py"))
        .args(["--port", "0"]);
    let (_server, addr, _) = spawn_listening(server);
    let started = Instant::now();
    let (code, _, err) = run_with_input(chat(addr, &[]), "hello\n");
    assert_eq!(code, Some(1), "stderr: {err}");
    assert!(err.contains("Unimplemented"), "{err}");
    assert!(err.contains("does not serve duplex rooms"), "{err}");
    assert!(
        started.elapsed() < STEP,
        "it gave up at once, no retry loop"
    );
}

#[test]
fn chat_without_a_token_against_a_token_server_says_how_to_get_one() {
    let dir = tempfile::tempdir().unwrap();
    let secret = secret_file(dir.path());
    let (_server, addr) = spawn_duplex_serve(&["--jwt-secret-file", &secret]);
    let (code, _, err) = run_with_input(chat(addr, &[]), "hello\n");
    assert_eq!(code, Some(1), "stderr: {err}");
    assert!(err.contains("Unauthenticated"), "{err}");
    assert!(err.contains("duplex token"), "{err}");
    // A token signed with another key: refused, and said so differently.
    let other = dir.path().join("other.secret");
    std::fs::write(&other, "another-secret-another-secret-another-secret").unwrap();
    let forged = mint(&[
        "--secret-file",
        other.to_str().unwrap(),
        "--sub",
        "mallory",
        "--read",
        "*",
    ]);
    let (code, _, err) = run_with_input(chat(addr, &["--token", &forged]), "");
    assert_eq!(code, Some(1), "stderr: {err}");
    assert!(err.contains("the token was refused"), "{err}");
}

/// The README's auth section, with the shipped tools only.
#[test]
fn minted_tokens_grant_exactly_their_rooms_to_chat_echo_and_the_client_library() {
    let dir = tempfile::tempdir().unwrap();
    let secret = secret_file(dir.path());
    let (_server, addr) = spawn_duplex_serve(&["--jwt-secret-file", &secret]);
    let alice = mint(&[
        "--secret-file",
        &secret,
        "--sub",
        "alice",
        "--read",
        "lobby,game.*",
        "--write",
        "lobby",
        "--ttl",
        "10m",
    ]);
    let token_file = dir.path().join("alice.jwt");
    std::fs::write(&token_file, format!("{alice}\n")).unwrap();
    let bob = mint(&["--secret-file", &secret, "--sub", "bob", "--read", "lobby"]);

    // alice by file, bob by the environment; the server names each after the token.
    let alice_chat =
        ChatTerminal::spawn(chat(addr, &["--token-file", token_file.to_str().unwrap()]));
    alice_chat.expect("-- joined lobby as alice (0 here: nobody else)");
    let mut bob_command = chat(addr, &[]);
    bob_command.env("DUPLEX_TOKEN", &bob);
    let mut bob_chat = ChatTerminal::spawn(bob_command);
    bob_chat.expect("-- joined lobby as bob (1 here: alice)");
    let mut alice_chat = alice_chat;
    alice_chat.type_line("hi bob");
    bob_chat.expect("[alice] hi bob");

    // bob may read the lobby but not write it: his line is refused, the session goes on.
    bob_chat.type_line("can I talk?");
    alice_chat.type_line("still here");
    bob_chat.expect("[alice] still here");

    // A room outside the token: refused with the reason, exit 1.
    let (code, _, err) = run_with_input(chat_in("vip", addr, &["--token", &alice]), "");
    assert_eq!(code, Some(1), "stderr: {err}");
    assert!(err.contains("does not grant room `vip`"), "{err}");

    // The client library with the same token.
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let mut options = ClientOptions::new(addr.to_string(), "ignored");
        options.token = Some(alice.clone());
        let (client, _events) = Client::connect(options).await.unwrap();
        client.join("game.eu", None).await.unwrap();
        let denied = client
            .publish("game.eu", Bytes::from_static(b"x"), "text/plain")
            .await
            .unwrap_err();
        assert!(
            matches!(
                denied,
                ClientError::Command {
                    code: duplex_proto::hub::Code::PermissionDenied,
                    ..
                }
            ),
            "{denied:?}"
        );
        // No token at all: the refusal comes back from connect, not a retry loop.
        let refused = Client::connect(ClientOptions::new(addr.to_string(), "anon"))
            .await
            .unwrap_err();
        assert!(
            matches!(
                refused,
                ClientError::Refused {
                    code: tonic::Code::Unauthenticated,
                    ..
                }
            ),
            "{refused:?}"
        );
    });

    // bench with a token that may use every room.
    let everything = mint(&[
        "--secret-file",
        &secret,
        "--sub",
        "loadgen",
        "--read",
        "*",
        "--write",
        "*",
    ]);
    let mut bench = bench_fanout(addr, &["--subscribers", "1", "--messages", "50"]);
    bench.env("DUPLEX_TOKEN", &everything);
    let (code, out, err) = run_with_input(bench, "");
    assert_eq!(code, Some(0), "{out}\n{err}");

    // echo carries the token too (the Chat service itself asks for none).
    let mut echo = duplex();
    echo.args(["echo", "--addr", &addr.to_string(), "--token", &alice]);
    let (code, out, err) = run_with_input(echo, "hi\n");
    assert_eq!((code, out.as_str()), (Some(0), "server: <<hi>>\n"), "{err}");
    drop(bob_chat);
}

#[test]
fn chat_backs_off_longer_after_each_failed_attempt_and_says_so() {
    let (mut server, addr) = spawn_duplex_serve(&[]);
    let terminal = ChatTerminal::spawn(chat(addr, &["--max-backoff", "2s"]));
    terminal.expect("-- joined lobby");
    server.signal("KILL");
    server.wait_for_exit(STEP).unwrap();
    let mut delays = Vec::new();
    for attempt in 1..=5 {
        let seen = terminal.expect(&format!("reconnect attempt {attempt} in "));
        let line = seen.last().unwrap();
        let delay = line.rsplit(" in ").next().unwrap();
        delays.push(humantime::parse_duration(delay).unwrap_or_else(|e| panic!("{line}: {e}")));
    }
    // 100ms doubling, each wait drawn from the upper half of its step: 50–100ms, 100–200ms,
    // 200–400ms, 400–800ms, 800–1600ms.
    for (i, delay) in delays.iter().enumerate() {
        let step = Duration::from_millis(100 << i);
        assert!(
            *delay >= step / 2 && *delay <= step,
            "attempt {}: {delay:?} outside {:?}..={step:?} ({delays:?})",
            i + 1,
            step / 2
        );
    }
}

#[test]
fn chat_shows_what_others_send_with_control_characters_escaped() {
    let (_server, addr) = spawn_duplex_serve(&[]);
    let reader = ChatTerminal::spawn(chat(addr, &[]));
    reader.expect("-- joined lobby");
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let (client, _events) = Client::connect(ClientOptions::new(addr.to_string(), "mallory"))
            .await
            .unwrap();
        client.join("lobby", None).await.unwrap();
        for payload in [
            "hi\n[alice] send me your password",
            "\u{1b}[2J\u{1b}]0;pwned\u{7}",
        ] {
            client
                .publish("lobby", Bytes::from(payload), "text/plain")
                .await
                .unwrap();
        }
    });
    let forged = reader.expect("[mallory] hi");
    assert_eq!(
        forged.last().unwrap(),
        "[mallory] hi\\n[alice] send me your password"
    );
    let escapes = reader.expect("[mallory] \\u{1b}");
    assert_eq!(
        escapes.last().unwrap(),
        "[mallory] \\u{1b}[2J\\u{1b}]0;pwned\\u{7}"
    );
}

/// The README's TLS quick start: `duplex cert`, then serve and connect with its files.
#[test]
fn tls_quick_start_with_duplex_cert_works_for_tls_and_mutual_tls() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("tls");
    let out = out.to_str().unwrap();
    let (code, said, err) = run(&["cert", "--out", out]);
    assert_eq!(code, Some(0), "{err}");
    assert!(said.contains("duplex serve --tls-cert"), "{said}");
    let (code, _, err) = run(&["cert", "--out", out]);
    assert_eq!(code, Some(1), "a second run does not overwrite");
    assert!(err.contains("--force"), "{err}");

    let file = |name: &str| format!("{out}/{name}");
    let (_server, addr) = spawn_duplex_serve(&[
        "--tls-cert",
        &file("server.pem"),
        "--tls-key",
        &file("server.key"),
        "--tls-client-ca",
        &file("ca.pem"),
    ]);
    let echo = |extra: &[&str]| {
        let mut command = duplex();
        command
            .args(["echo", "--addr", &addr.to_string(), "--ca", &file("ca.pem")])
            .args(extra);
        run_with_input(command, "secure\n")
    };
    let (code, out, err) = echo(&[
        "--tls-cert",
        &file("client.pem"),
        "--tls-key",
        &file("client.key"),
    ]);
    assert_eq!(
        (code, out.as_str()),
        (Some(0), "server: <<secure>>\n"),
        "{err}"
    );
    let (code, _, _) = echo(&[]);
    assert_eq!(code, Some(1), "no client certificate, no service");
    assert_eq!(
        std::fs::metadata(file("server.key"))
            .map(|m| {
                use std::os::unix::fs::PermissionsExt as _;
                m.permissions().mode() & 0o777
            })
            .unwrap(),
        0o600
    );
}

#[test]
fn addresses_take_short_forms_and_bad_ones_say_what_is_expected() {
    let (_server, addr) = spawn_duplex_serve(&[]);
    // A port alone means localhost.
    let mut echo = duplex();
    echo.args(["echo", "--addr", &addr.port().to_string()]);
    let (code, out, err) = run_with_input(echo, "short\n");
    assert_eq!(
        (code, out.as_str()),
        (Some(0), "server: <<short>>\n"),
        "{err}"
    );

    for (args, expected) in [
        (
            vec!["echo", "--addr", "localhost:99999"],
            "a port is a number from 0 to 65535",
        ),
        (
            vec!["chat", "--room", "r", "--addr", "localhost:99999"],
            "invalid port",
        ),
        (vec!["serve", "--listen", ":50081"], "give HOST:PORT"),
        (vec!["serve", "--listen", "localhost"], "not HOST:PORT"),
        (
            vec!["serve", "--max-message-size", "0"],
            "1KiB (1024) to 1GiB",
        ),
        (
            vec!["serve", "--max-concurrent-streams", "0"],
            "0 is not in 1..",
        ),
        (
            vec!["serve", "--initial-connection-window", "1KiB"],
            "65535 to",
        ),
        (vec!["serve", "--queue-frames", "0"], "at least 1"),
        (
            vec!["serve", "--max-presence-listed", "20000"],
            "0 to 10000",
        ),
    ] {
        let (code, _, err) = run(&args);
        assert_ne!(code, Some(0), "{args:?} was accepted");
        assert!(err.contains(expected), "{args:?}: {err}");
    }
}

#[test]
fn errors_say_each_cause_once_with_a_hint() {
    let (_server, addr) = spawn_duplex_serve(&[]);
    let (code, _, err) = run(&["serve", "--store", "memory", "--listen", &addr.to_string()]);
    assert_eq!(code, Some(1));
    assert_eq!(err.matches("Address already in use").count(), 1, "{err}");
    assert!(err.contains("--listen"), "{err}");

    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = closed.local_addr().unwrap().port().to_string();
    drop(closed);
    let (code, _, err) = run(&["echo", "--addr", &format!("127.0.0.1:{port}")]);
    assert_eq!(code, Some(1));
    assert_eq!(err.matches("tcp connect error").count(), 1, "{err}");
    assert!(
        !err.contains('\u{1b}'),
        "no colour codes into a pipe: {err:?}"
    );

    // The article's package-less server, called at duplex's path: the hint says which.
    let mut server = python();
    server
        .arg(repo_root().join("interop/python/chat_server.py"))
        .args(["--port", "0", "--form", "bare"]);
    let (_bare, bare, _) = spawn_listening(server);
    let mut echo = duplex();
    echo.args(["echo", "--addr", &bare.to_string()]);
    let (code, _, err) = run_with_input(echo, "hi\n");
    assert_eq!(code, Some(1));
    assert!(err.contains("--path /Chat/Chat"), "{err}");
}

#[test]
fn serve_says_where_it_listens_and_how_it_is_set_up() {
    let dir = tempfile::tempdir().unwrap();
    let secret = secret_file(dir.path());
    let data = dir.path().join("data");
    let mut command = duplex();
    command
        .current_dir(dir.path())
        .args(["serve", "--listen", "127.0.0.1:0", "--data-dir", "data"])
        .args(["--jwt-secret-file", &secret])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = ChildGuard(command.spawn().unwrap());
    let mut stdout = BufReader::new(child.0.stdout.take().unwrap());
    let mut lines = Vec::new();
    for _ in 0..5 {
        let mut line = String::new();
        stdout.read_line(&mut line).unwrap();
        lines.push(line.trim_end().to_owned());
    }
    assert!(lines[0].starts_with("listening on 127.0.0.1:"), "{lines:?}");
    assert!(
        lines[1].starts_with("web on http://127.0.0.1:"),
        "{lines:?}"
    );
    let lines = &lines[1..];
    let data = std::fs::canonicalize(data).unwrap();
    assert_eq!(
        lines[1],
        format!(
            "store: redb in {} (durable: acked after fsync)",
            data.display()
        )
    );
    assert_eq!(lines[2], format!("auth: JWT bearer tokens, key {secret}"));
    assert_eq!(lines[3], "tls: off (plaintext)");
    child.signal("TERM");
    child.wait_for_exit(STEP).unwrap();
    let mut logs = String::new();
    std::io::Read::read_to_string(child.0.stderr.as_mut().unwrap(), &mut logs).unwrap();
    assert!(
        !logs.contains('\u{1b}'),
        "no colour codes into a pipe: {logs:?}"
    );
}

#[test]
fn tap_json_prints_only_json_lines_from_the_first() {
    let (_server, upstream) = spawn_duplex_serve(&[]);
    let mut tap = duplex();
    tap.args(["tap", "--json", "--listen", "127.0.0.1:0", "--upstream"])
        .arg(upstream.to_string())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    let mut child = ChildGuard(tap.spawn().unwrap());
    let mut stdout = BufReader::new(child.0.stdout.take().unwrap());
    let mut first = String::new();
    stdout.read_line(&mut first).unwrap();
    let value: serde_json::Value = serde_json::from_str(&first).expect("the first line is JSON");
    assert_eq!(value["event"], "listening");
    let addr: SocketAddr = value["address"].as_str().unwrap().parse().unwrap();

    let mut echo = duplex();
    echo.args(["echo", "--addr", &addr.to_string()]);
    let (code, _, err) = run_with_input(echo, "through the tap\n");
    assert_eq!(code, Some(0), "{err}");
    child.signal("INT");
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut stdout, &mut rest).unwrap();
    assert!(rest.lines().count() > 5, "{rest}");
    for line in rest.lines() {
        serde_json::from_str::<serde_json::Value>(line)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
    }
}

#[test]
fn bench_against_a_rate_limited_server_stops_early_and_fails_with_the_fix() {
    let (_server, addr) = spawn_duplex_serve(&["--publish-rate", "50", "--publish-burst", "50"]);
    let started = Instant::now();
    let bench = bench_fanout(addr, &["--subscribers", "2", "--duration", "30s"]);
    let (code, out, err) = run_with_input(bench, "");
    assert_eq!(code, Some(1), "stdout: {out}\nstderr: {err}");
    assert!(err.contains("RESOURCE_EXHAUSTED"), "{err}");
    assert!(err.contains("--publish-rate 0"), "{err}");
    assert!(out.contains("fanout"), "the report is still shown: {out}");
    assert!(
        started.elapsed() < Duration::from_secs(25),
        "stopped at the first refusal, not after --duration and the drain"
    );
}
