//! The page on the web listener, served from the binary and driven in a real browser: each
//! browser test starts real `duplex serve` processes, runs
//! `web/tests/browser.mjs` (Node, playwright-core and Debian's Chromium, headless) against
//! the web listener, and plays the rest of the scenario — a `duplex chat` terminal, a server
//! restart, a gRPC publisher — when the script says it is time (`STEP …` lines on its
//! stdout, `go` on its stdin). Screenshots land in `target/browser-screenshots/`.
//!
//! Needs `web/node_modules` (`npm ci` in `web/`) and `/usr/bin/chromium`; `scripts/test`
//! installs both. A missing one fails the test with what to install.

mod common;

use std::io::{BufRead as _, BufReader, Read as _, Write as _};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{ChildStdin, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::{
    ChatTerminal, ChildGuard, STEP, free_port, repo_root, spawn_duplex_serve_web, spawn_listening,
};
use duplex_proto::hub::PublishRequest;

/// How long a browser step may take: Chromium on a loaded 2-core machine is slow to start.
const BROWSER_STEP: Duration = Duration::from_secs(90);

/// A running `web/tests/browser.mjs SCENARIO`.
struct BrowserScript {
    child: ChildGuard,
    stdin: ChildStdin,
    steps: mpsc::Receiver<String>,
    stderr: mpsc::Receiver<String>,
    scenario: &'static str,
}

impl BrowserScript {
    /// Starts `scenario` against the web listener at `web`, with extra environment.
    fn start(scenario: &'static str, web: SocketAddr, env: &[(&str, &str)]) -> Self {
        let root = repo_root();
        assert!(
            root.join("web/node_modules/playwright-core").is_dir(),
            "web/node_modules is missing: run scripts/test (it runs `npm ci` in web/)"
        );
        assert!(
            std::path::Path::new("/usr/bin/chromium").exists(),
            "no /usr/bin/chromium: apt-get install chromium (scripts/test does it as root)"
        );
        let node =
            std::env::var_os("DUPLEX_NODE").map_or_else(|| PathBuf::from("node"), PathBuf::from);
        let mut command = Command::new(node);
        command
            .arg(root.join("web/tests/browser.mjs"))
            .arg(scenario)
            .env("DUPLEX_WEB_URL", format!("http://{web}/"))
            .env(
                "DUPLEX_SCREENSHOTS",
                root.join("target/browser-screenshots"),
            )
            .envs(env.iter().copied())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = command.spawn().expect("run node (install Node.js >= 18)");
        let stdin = child.stdin.take().unwrap();
        let stdout = BufReader::new(child.stdout.take().unwrap());
        let mut stderr_pipe = child.stderr.take().unwrap();
        let (step_tx, steps) = mpsc::channel();
        std::thread::spawn(move || {
            for line in stdout.lines() {
                let Ok(line) = line else { return };
                if step_tx.send(line).is_err() {
                    return;
                }
            }
        });
        let (stderr_tx, stderr) = mpsc::channel();
        std::thread::spawn(move || {
            let mut text = String::new();
            let _ = stderr_pipe.read_to_string(&mut text);
            let _ = stderr_tx.send(text);
        });
        Self {
            child: ChildGuard(child),
            stdin,
            steps,
            stderr,
            scenario,
        }
    }

    /// Waits for `STEP name …` and returns the words after the name.
    fn expect_step(&mut self, name: &str) -> Vec<String> {
        let deadline = Instant::now() + BROWSER_STEP;
        while Instant::now() < deadline {
            match self.steps.recv_timeout(Duration::from_millis(100)) {
                Ok(line) => {
                    let mut words = line.split_whitespace().map(str::to_owned);
                    if words.next().as_deref() == Some("STEP")
                        && words.next().as_deref() == Some(name)
                    {
                        return words.collect();
                    }
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {}
                Err(mpsc::RecvTimeoutError::Disconnected) => break,
            }
        }
        let stderr = self.failure_output();
        panic!(
            "browser.mjs {} never reached step {name}:\n{stderr}",
            self.scenario
        );
    }

    /// Tells the script our part is done.
    fn go(&mut self) {
        writeln!(self.stdin, "go").expect("the browser script is waiting");
        self.stdin.flush().unwrap();
    }

    /// Waits for the script to end and asserts it passed.
    fn finish(mut self) {
        self.expect_step("done");
        let status = self
            .child
            .wait_for_exit(BROWSER_STEP)
            .unwrap_or_else(|| panic!("browser.mjs {} did not exit", self.scenario));
        if !status.success() {
            let output = self.failure_output();
            panic!("browser.mjs {} failed: {output}", self.scenario);
        }
    }

    /// The script's stderr after it ends (it is killed if it has not).
    fn failure_output(&mut self) -> String {
        if self.child.wait_for_exit(Duration::from_secs(5)).is_none() {
            let _ = self.child.0.kill();
        }
        self.stderr
            .recv_timeout(Duration::from_secs(5))
            .unwrap_or_default()
    }
}

/// Waits until `terminal` has shown a line containing each of `needles`, in any order.
fn expect_all(terminal: &ChatTerminal, needles: &[&str]) {
    let mut missing: Vec<&str> = needles.to_vec();
    while let Some(first) = missing.first().copied() {
        let seen = terminal.expect(first);
        missing.retain(|needle| !seen.iter().any(|line| line.contains(needle)));
    }
}

/// Publishes `texts` to `room` over gRPC (unary `Hub.Publish`), each acked before the next.
fn publish_over_grpc(
    addr: SocketAddr,
    room: &str,
    sender: &str,
    token: Option<&str>,
    texts: &[&str],
) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let mut hub = common::hub_client(addr, 4 << 20).await;
        for text in texts {
            let request = PublishRequest {
                room: room.into(),
                payload: Bytes::from(text.to_string()),
                content_type: "text/plain".into(),
                sender: sender.into(),
                ..Default::default()
            };
            let request = match token {
                Some(token) => common::with_bearer(request, token),
                None => tonic::Request::new(request),
            };
            tokio::time::timeout(STEP, hub.publish(request))
                .await
                .expect("publish in time")
                .expect("publish acked");
        }
    });
}

#[test]
fn the_page_and_its_assets_are_served_from_the_binary_with_a_strict_content_policy() {
    let (_server, _grpc, web) = spawn_duplex_serve_web(&[]);
    let page = common::http_get(web, "/");
    assert!(page.starts_with("HTTP/1.1 200"), "{page}");
    assert!(
        page.contains("content-type: text/html; charset=utf-8"),
        "{page}"
    );
    assert!(
        page.contains("content-security-policy: default-src 'none'; script-src 'self'"),
        "{page}"
    );
    assert!(
        page.contains(r#"<script type="module" src="/assets/app.js">"#),
        "{page}"
    );
    let committed =
        std::fs::read_to_string(repo_root().join("crates/duplex-server/web/app.js")).unwrap();
    let script = common::http_get(web, "/assets/app.js");
    assert!(
        script.contains("content-type: text/javascript; charset=utf-8"),
        "{}",
        &script[..300.min(script.len())]
    );
    assert!(
        script.ends_with(&committed),
        "the served bundle is the committed one"
    );
    let style = common::http_get(web, "/assets/style.css");
    assert!(
        style.contains("content-type: text/css; charset=utf-8"),
        "{style}"
    );
    assert!(common::http_get(web, "/assets/nothing.js").starts_with("HTTP/1.1 404"));
}

#[test]
fn two_pages_and_a_terminal_chat_exchange_messages_all_three_ways() {
    let (_server, grpc, web) = spawn_duplex_serve_web(&[]);
    let mut carol = ChatTerminal::open(grpc, "carol", &[]);
    carol.expect("-- joined lobby");
    let mut script = BrowserScript::start("three-way", web, &[]);
    script.expect_step("pages-said-hello");
    expect_all(
        &carol,
        &["[alice] hello from alice", "[bob] hello from bob"],
    );
    carol.type_line("hello from carol");
    script.go();
    script.finish();
}

#[test]
fn a_page_resumes_after_a_server_restart_with_no_gap_or_duplicate() {
    let data = tempfile::tempdir().unwrap();
    let web_listen = format!("127.0.0.1:{}", free_port());
    let start = |web_listen: &str| {
        let command = common::durable_serve_command(data.path(), &["--web-listen", web_listen]);
        let (server, grpc, stdout) = spawn_listening(command);
        (server, grpc, stdout)
    };
    let stop = |mut server: ChildGuard| {
        server.signal("TERM");
        let status = server
            .wait_for_exit(STEP)
            .expect("the server stops on SIGTERM");
        assert!(status.success(), "graceful stop exits 0: {status:?}");
    };
    let (server, _grpc, mut stdout) = start(&web_listen);
    let web = common::read_web_addr(&mut stdout);
    assert_eq!(web.to_string(), web_listen);
    let mut script = BrowserScript::start("resume", web, &[]);
    script.expect_step("published");
    stop(server);
    script.expect_step("saw-disconnect");
    // Others publish while the page cannot connect (the web listener is off), so the page
    // must find these in the room's history when it resumes.
    let (server, grpc, _stdout) = start("off");
    publish_over_grpc(
        grpc,
        "resume",
        "writer",
        None,
        &["during 1", "during 2", "during 3"],
    );
    stop(server);
    let (_server, _grpc, mut stdout) = start(&web_listen);
    let web = common::read_web_addr(&mut stdout);
    assert_eq!(
        web.to_string(),
        web_listen,
        "the web port stays the same across the restart"
    );
    script.go();
    script.finish();
}

#[test]
fn a_read_only_token_sees_a_visible_error_on_publish_and_a_refused_one_is_not_retried() {
    let dir = tempfile::tempdir().unwrap();
    let secret = b"a-browser-test-secret-of-at-least-32-bytes";
    let secret_file = dir.path().join("secret");
    std::fs::write(&secret_file, secret).unwrap();
    let (_server, grpc, web) =
        spawn_duplex_serve_web(&["--jwt-secret-file", secret_file.to_str().unwrap()]);
    let token = |sub: &str, write: &[&str]| {
        let claims = serde_json::json!({
            "sub": sub,
            "exp": duplex_server::auth::unix_now() + 3600,
            "rooms": { "read": ["*"], "write": write },
        });
        jsonwebtoken::encode(
            &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
            &claims,
            &jsonwebtoken::EncodingKey::from_secret(secret),
        )
        .unwrap()
    };
    let reader = token("reader", &[]);
    let writer = token("writer", &["*"]);
    let mut script = BrowserScript::start("read-only", web, &[("DUPLEX_TOKEN", &reader)]);
    script.expect_step("refused");
    publish_over_grpc(grpc, "lobby", "", Some(&writer), &["still listening"]);
    script.go();
    script.finish();
}
#[test]
fn the_dashboard_shows_live_rates_while_a_fanout_benchmark_runs() {
    let (_server, grpc, web) = spawn_duplex_serve_web(&[]);
    let mut script = BrowserScript::start("dashboard", web, &[]);
    script.expect_step("watching");
    // Open-loop and long enough for many ticks; killed (on drop) once the page has seen it.
    let _bench = ChildGuard(
        common::duplex()
            .args(["bench", "fanout", "--quiet", "--addr", &grpc.to_string()])
            .args(["--publishers", "2", "--subscribers", "6", "--rooms", "2"])
            .args(["--rate", "200", "--duration", "120s"])
            .stdout(Stdio::null())
            .spawn()
            .expect("run duplex bench"),
    );
    script.finish();
}
