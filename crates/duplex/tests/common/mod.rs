//! Shared test harness: real servers on loopback ports, the `duplex` binary, and clients.

#![allow(dead_code)] // each test file uses a different part of the harness

pub(crate) mod nats;
pub(crate) mod raw;
pub(crate) mod session;
pub(crate) mod ws;

use std::io::{BufRead as _, BufReader};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, ChildStdout, Command, Stdio};
use std::time::Duration;

use duplex_proto::chat::chat_client::ChatClient;
use duplex_server::{ServeConfig, Server};
use tokio::sync::oneshot;
use tonic::transport::Channel;

/// Every test's patience for one step: long enough for a loaded 2-core CI machine.
pub(crate) const STEP: Duration = Duration::from_secs(20);

/// The repository root (where `proto/` and `interop/` live).
pub(crate) fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .unwrap()
}

/// A server running in this process on 127.0.0.1 with a port it picked; stops on drop.
pub(crate) struct InProcessServer {
    pub addr: SocketAddr,
    /// The engine behind the Hub service, for stats.
    pub hub: duplex_hub::Hub,
    stop: Option<oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<()>,
}

impl InProcessServer {
    pub(crate) async fn start() -> Self {
        Self::start_with(|_| {}).await
    }

    pub(crate) async fn start_with(configure: impl FnOnce(&mut ServeConfig)) -> Self {
        let mut config = ServeConfig {
            listen: "127.0.0.1:0".into(),
            web_listen: "127.0.0.1:0".into(),
            store: duplex_server::StoreKind::Memory,
            ..ServeConfig::default()
        };
        configure(&mut config);
        let server = Server::bind(config).await.expect("bind a loopback port");
        let addr = server.local_addrs()[0];
        let hub = server.hub().clone();
        let (stop, stopped) = oneshot::channel();
        let task = tokio::spawn(async move {
            server
                .run(async {
                    let _ = stopped.await;
                })
                .await
                .expect("server runs");
        });
        Self {
            addr,
            hub,
            stop: Some(stop),
            task,
        }
    }

    pub(crate) fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub(crate) async fn chat_client(&self) -> ChatClient<Channel> {
        ChatClient::new(self.channel().await)
    }

    pub(crate) async fn channel(&self) -> Channel {
        Channel::from_shared(self.url())
            .unwrap()
            .connect()
            .await
            .expect("connect to the test server")
    }
}

impl Drop for InProcessServer {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        self.task.abort();
    }
}

/// The `duplex` binary built by cargo for these tests.
///
/// `DUPLEX_TEST_BIN` runs another build instead (the release binary, to measure an attack
/// the way it is reported).
pub(crate) fn duplex() -> Command {
    let mut command = match std::env::var_os("DUPLEX_TEST_BIN") {
        Some(bin) => Command::new(bin),
        None => Command::new(env!("CARGO_BIN_EXE_duplex")),
    };
    // Tests run side by side: the web listener picks its port too, never the default 8080.
    command.env("DUPLEX_WEB_LISTEN", "127.0.0.1:0");
    command
}

/// A child process killed on drop, so a failing test leaves no server behind.
pub(crate) struct ChildGuard(pub Child);

impl ChildGuard {
    pub(crate) fn pid(&self) -> u32 {
        self.0.id()
    }

    /// Sends a signal by name (`TERM`, `INT`, `KILL`).
    pub(crate) fn signal(&self, name: &str) {
        let status = Command::new("kill")
            .arg(format!("-{name}"))
            .arg(self.pid().to_string())
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -{name} failed");
    }

    /// Waits up to `limit` for the process to exit and returns its status.
    pub(crate) fn wait_for_exit(&mut self, limit: Duration) -> Option<std::process::ExitStatus> {
        let start = std::time::Instant::now();
        while start.elapsed() < limit {
            if let Some(status) = self.0.try_wait().unwrap() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts a server process (`duplex serve` or a foreign peer) that prints
/// `listening on ADDR` (or, `duplex tap --json`, `{"event":"listening","address":ADDR}`),
/// and returns it with the first address it printed. Its stderr goes where `command` says
/// (the test's own, unless redirected).
pub(crate) fn spawn_listening(
    mut command: Command,
) -> (ChildGuard, SocketAddr, BufReader<ChildStdout>) {
    command.stdout(Stdio::piped());
    let mut child = ChildGuard(
        command
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {command:?}: {e}")),
    );
    let mut stdout = BufReader::new(child.0.stdout.take().unwrap());
    let (found_tx, found_rx) = std::sync::mpsc::channel();
    // Read the first line on a thread so a peer that never prints cannot hang the test.
    let reader = std::thread::spawn(move || {
        let mut line = String::new();
        let read = stdout.read_line(&mut line);
        let _ = found_tx.send(read.map(|_| line));
        stdout
    });
    let line = found_rx
        .recv_timeout(STEP)
        .unwrap_or_else(|_| panic!("{command:?} printed no `listening on` line within {STEP:?}"));
    let line = line.expect("read the server's stdout");
    // `duplex tap --json` says it as JSON: {"event":"listening","address":ADDR}.
    let json_address = serde_json::from_str::<serde_json::Value>(&line)
        .ok()
        .filter(|value| value["event"] == "listening")
        .and_then(|value| value["address"].as_str().map(str::to_owned));
    let addr = json_address
        .as_deref()
        .or_else(|| line.trim().strip_prefix("listening on "))
        .unwrap_or_else(|| panic!("expected `listening on ADDR`, got {line:?}"))
        .parse()
        .expect("a socket address");
    (child, addr, reader.join().unwrap())
}

/// Starts `duplex serve` on 127.0.0.1 with a picked port, the in-memory store, and extra
/// arguments.
pub(crate) fn spawn_duplex_serve(args: &[&str]) -> (ChildGuard, SocketAddr) {
    let mut command = duplex();
    command
        .args(["serve", "--listen", "127.0.0.1:0", "--store", "memory"])
        .args(args);
    let (child, addr, _stdout) = spawn_listening(command);
    (child, addr)
}

/// Starts `duplex serve` like [`spawn_duplex_serve`] and returns its web listener's
/// address too (read from its `web on URL` line).
pub(crate) fn spawn_duplex_serve_web(args: &[&str]) -> (ChildGuard, SocketAddr, SocketAddr) {
    let mut command = duplex();
    command
        .args(["serve", "--listen", "127.0.0.1:0", "--store", "memory"])
        .args(args);
    let (child, addr, mut stdout) = spawn_listening(command);
    let web = read_web_addr(&mut stdout);
    (child, addr, web)
}

/// Reads `duplex serve`'s stdout, past its `listening on` lines, up to its first
/// `web on http://ADDR/` line, and returns ADDR.
pub(crate) fn read_web_addr(stdout: &mut BufReader<ChildStdout>) -> SocketAddr {
    for _ in 0..16 {
        let mut line = String::new();
        if stdout
            .read_line(&mut line)
            .expect("read the server's stdout")
            == 0
        {
            break;
        }
        if let Some(url) = line.trim().strip_prefix("web on ") {
            let address = url
                .trim_start_matches("http://")
                .trim_start_matches("https://")
                .trim_end_matches('/');
            return address.parse().expect("a socket address in the web URL");
        }
    }
    panic!("duplex serve printed no `web on URL` line");
}

/// Starts `duplex serve` with the embedded redb store in `data_dir`.
pub(crate) fn spawn_duplex_serve_durable(
    data_dir: &std::path::Path,
    args: &[&str],
) -> (ChildGuard, SocketAddr) {
    let (child, addr, _stdout) = spawn_listening(durable_serve_command(data_dir, args));
    (child, addr)
}

/// `duplex serve` on 127.0.0.1 with a picked port and the redb store in `data_dir`, plus
/// extra arguments, not yet started.
pub(crate) fn durable_serve_command(data_dir: &std::path::Path, args: &[&str]) -> Command {
    let mut command = duplex();
    command
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--store",
            "redb",
            "--data-dir",
        ])
        .arg(data_dir)
        .args(args);
    command
}

/// A loopback port nobody listens on now: for a server that must come back on the same
/// port after a restart, or a route a peer needs before it starts.
///
/// Picked at random below the kernel's ephemeral range (32768 and up on Linux), so no
/// server or client of a concurrent test that binds port 0 can be given it between this
/// check and its use; a collision needs another caller of this to draw the same port.
pub(crate) fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static DRAWS: AtomicU64 = AtomicU64::new(0);
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64
        ^ (u64::from(std::process::id()) << 32)
        ^ DRAWS
            .fetch_add(1, Ordering::Relaxed)
            .wrapping_mul(0x9E37_79B9_7F4A_7C15);
    let mut state = seed | 1;
    for _ in 0..1000 {
        // xorshift64
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        let port = 20_000 + (state % 12_000) as u16;
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free loopback port in 20000..32000");
}

/// The venv Python with grpcio that `scripts/test` makes (or `DUPLEX_PYTHON`). A missing one
/// fails the test with what to run: interop tests never skip.
pub(crate) fn python() -> Command {
    let python = std::env::var_os("DUPLEX_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo_root().join(".venv/bin/python"));
    assert!(
        python.exists(),
        "no Python with grpcio at {}: run scripts/test, which creates .venv from \
         interop/python/requirements.txt (or set DUPLEX_PYTHON)",
        python.display()
    );
    Command::new(python)
}

/// Runs `command` with `input` on stdin, written and read concurrently as a pipe would be;
/// returns (exit code, stdout, stderr). Kills it if it runs past `2 × STEP`.
pub(crate) fn run_with_input(command: Command, input: &str) -> (Option<i32>, String, String) {
    run_with_input_within(command, input, STEP * 2)
}

/// [`run_with_input`], killing the program if it runs past `limit`.
pub(crate) fn run_with_input_within(
    mut command: Command,
    input: &str,
    limit: Duration,
) -> (Option<i32>, String, String) {
    use std::io::Write as _;

    let mut child = command
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("spawn {command:?}: {e}"));
    let mut stdin = child.stdin.take().unwrap();
    let input = input.to_owned();
    std::thread::spawn(move || {
        // The program may stop reading early; judging that is the test's job.
        let _ = stdin.write_all(input.as_bytes());
    });
    let pid = child.id();
    let (done_tx, done_rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = done_tx.send(child.wait_with_output());
    });
    let Ok(output) = done_rx.recv_timeout(limit) else {
        let _ = Command::new("kill")
            .arg("-KILL")
            .arg(pid.to_string())
            .status();
        panic!("{command:?} did not exit in time");
    };
    let output = output.unwrap();
    (
        output.status.code(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

/// A `duplex chat` process with its stdin and a line reader on its stdout.
pub(crate) struct ChatTerminal {
    pub child: ChildGuard,
    screen: std::sync::mpsc::Receiver<String>,
}

impl ChatTerminal {
    /// `duplex chat --room lobby --name NAME --addr ADDR --max-backoff 300ms` plus `extra`.
    pub(crate) fn open(addr: SocketAddr, name: &str, extra: &[&str]) -> Self {
        let mut command = duplex();
        command
            .args(["chat", "--room", "lobby", "--name", name, "--addr"])
            .arg(addr.to_string())
            .args(["--max-backoff", "300ms"])
            .args(extra);
        Self::spawn(command)
    }

    /// Runs `command` (a `duplex chat …`) with piped stdin and stdout.
    pub(crate) fn spawn(mut command: Command) -> Self {
        let mut child = command
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let stdout = BufReader::new(child.stdout.take().unwrap());
        let (lines, screen) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in stdout.lines() {
                let Ok(line) = line else { return };
                if lines.send(line).is_err() {
                    return;
                }
            }
        });
        Self {
            child: ChildGuard(child),
            screen,
        }
    }

    pub(crate) fn type_line(&mut self, text: &str) {
        use std::io::Write as _;
        let stdin = self.child.0.stdin.as_mut().unwrap();
        writeln!(stdin, "{text}").unwrap();
        stdin.flush().unwrap();
    }

    /// Waits for a screen line containing `needle`; returns the lines seen up to it.
    pub(crate) fn expect(&self, needle: &str) -> Vec<String> {
        let mut seen = Vec::new();
        let deadline = std::time::Instant::now() + STEP;
        while std::time::Instant::now() < deadline {
            if let Ok(line) = self.screen.recv_timeout(Duration::from_millis(100)) {
                let found = line.contains(needle);
                seen.push(line);
                if found {
                    return seen;
                }
            }
        }
        panic!("no line with {needle:?} on screen; saw {seen:#?}");
    }
}

/// `message` as a request carrying `token` as its bearer token.
pub(crate) fn with_bearer<T>(message: T, token: &str) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request
        .metadata_mut()
        .insert("authorization", format!("Bearer {token}").parse().unwrap());
    request
}

/// A Hub client on a fresh connection to `addr`, accepting replies up to `max_message` bytes.
pub(crate) async fn hub_client(
    addr: SocketAddr,
    max_message: usize,
) -> duplex_proto::hub::hub_client::HubClient<Channel> {
    let channel = Channel::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .expect("connect to the server");
    duplex_proto::hub::hub_client::HubClient::new(channel).max_decoding_message_size(max_message)
}

/// A channel on a fresh connection to `addr` (plaintext).
pub(crate) async fn connect(addr: SocketAddr) -> Channel {
    Channel::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .expect("connect to the server")
}

/// An HS256 token for `sub` signed with `secret`, with these room rights, valid an hour.
pub(crate) fn hs256_token(secret: &[u8], sub: &str, read: &[&str], write: &[&str]) -> String {
    let claims = serde_json::json!({
        "sub": sub,
        "exp": duplex_server::auth::unix_now() + 3600,
        "rooms": { "read": read, "write": write },
    });
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(secret),
    )
    .unwrap()
}

/// Sends `request` (raw HTTP/1.1, head and body) on a fresh connection to `addr` and
/// returns all the server sends until it closes (waiting at most [`STEP`] for each read).
pub(crate) fn http_exchange(addr: SocketAddr, request: &str) -> String {
    use std::io::{Read as _, Write as _};
    let mut tcp = std::net::TcpStream::connect(addr).expect("connect");
    tcp.set_read_timeout(Some(STEP)).unwrap();
    tcp.write_all(request.as_bytes()).unwrap();
    let mut reply = Vec::new();
    let _ = tcp.read_to_end(&mut reply);
    String::from_utf8_lossy(&reply).into_owned()
}

/// `GET path` on a fresh HTTP/1.1 connection (`Connection: close`): the whole reply.
pub(crate) fn http_get(addr: SocketAddr, path: &str) -> String {
    http_exchange(
        addr,
        &format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"),
    )
}

/// The lines of the log file `log` once one of them contains `needle` (or all of them
/// after [`STEP`]).
pub(crate) fn log_lines_once(log: &std::path::Path, needle: &str) -> Vec<String> {
    let start = std::time::Instant::now();
    loop {
        let text = std::fs::read_to_string(log).unwrap_or_default();
        if text.contains(needle) || start.elapsed() > STEP {
            return text.lines().map(str::to_owned).collect();
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}
