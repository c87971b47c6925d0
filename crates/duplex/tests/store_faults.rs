//! The embedded store under faults, against real `duplex serve` processes (issue 10, items
//! 8 and 9): a full disk, and a database file that is empty or damaged when the server
//! starts.
//!
//! The disk-full case needs a small filesystem of its own, which it mounts (a tmpfs), so it
//! needs root. CI runs the suite as root; run elsewhere, it fails saying so rather than
//! passing without having run.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::{STEP, spawn_duplex_serve_durable};
use duplex_proto::hub::hub_client::HubClient;
use duplex_proto::hub::{HistoryRequest, PublishRequest};
use tonic::transport::Channel;

async fn hub_client(addr: std::net::SocketAddr) -> HubClient<Channel> {
    common::hub_client(addr, 64 << 20).await
}

/// A tmpfs of a given size mounted on a fresh directory; unmounted on drop.
struct SmallFilesystem {
    mount_point: PathBuf,
    _parent: tempfile::TempDir,
}

impl SmallFilesystem {
    fn mount(size: &str) -> Self {
        use std::os::unix::fs::MetadataExt as _;
        let uid = std::fs::metadata("/proc/self")
            .map(|m| m.uid())
            .unwrap_or(u32::MAX);
        assert_eq!(
            uid, 0,
            "this test mounts a small tmpfs to fill it, which needs root: run it as root \
             (CI does), e.g. `sudo -E cargo nextest run --test store_faults`"
        );
        let parent = tempfile::tempdir().unwrap();
        let mount_point = parent.path().join("small");
        std::fs::create_dir(&mount_point).unwrap();
        let status = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(&mount_point)
            .status()
            .expect("run mount");
        assert!(status.success(), "mount -t tmpfs failed: {status}");
        Self {
            mount_point,
            _parent: parent,
        }
    }

    fn path(&self) -> &Path {
        &self.mount_point
    }
}

impl Drop for SmallFilesystem {
    fn drop(&mut self) {
        let _ = Command::new("umount")
            .arg("-l")
            .arg(&self.mount_point)
            .status();
    }
}

/// Fills the filesystem holding `dir` with a file, up to what the filesystem refuses, then
/// gives back `headroom` bytes.
fn fill(dir: &Path, headroom: u64) -> PathBuf {
    use std::io::Write as _;
    let path = dir.join("filler");
    let mut file = std::fs::File::create(&path).unwrap();
    let chunk = vec![0u8; 64 * 1024];
    for _ in 0..100_000 {
        if file.write_all(&chunk).is_err() {
            break;
        }
    }
    let full = file.metadata().unwrap().len();
    file.set_len(full.saturating_sub(headroom)).unwrap();
    file.sync_all().unwrap();
    path
}

fn publish_request(i: usize, size: usize) -> PublishRequest {
    let mut payload = format!("m{i}:").into_bytes();
    payload.resize(size, b'.');
    PublishRequest {
        room: "full".into(),
        payload: Bytes::from(payload),
        client_message_id: format!("c{i}"),
        ..Default::default()
    }
}

/// Every message of `room` as (offset, payload), in order.
async fn everything(client: &mut HubClient<Channel>, room: &str) -> Vec<(u64, Bytes)> {
    let mut out = Vec::new();
    let mut after = 0;
    loop {
        let page = client
            .history(HistoryRequest {
                room: room.into(),
                after_offset: after,
                limit: 100,
            })
            .await
            .expect("history")
            .into_inner();
        let Some(last) = page.messages.last() else {
            return out;
        };
        after = last.offset;
        out.extend(page.messages.into_iter().map(|m| (m.offset, m.payload)));
    }
}

/// Asserts the store holds exactly what was acked, in order (offsets shown, not payloads).
fn assert_same(stored: &[(u64, Bytes)], acked: &[(u64, Bytes)], when: &str) {
    let offsets = |messages: &[(u64, Bytes)]| messages.iter().map(|m| m.0).collect::<Vec<_>>();
    assert_eq!(
        offsets(stored),
        offsets(acked),
        "{when}: the stored offsets are the acked ones"
    );
    for (stored, acked) in stored.iter().zip(acked) {
        assert!(
            stored.1 == acked.1,
            "{when}: offset {} holds another payload",
            stored.0
        );
    }
}

/// Issue 10 item 8. Before the fix, once one commit failed for lack of space redb refused
/// every later write ("Previous I/O error") until the process restarted, even after space
/// was freed. Now the store reopens the database after a failed commit: publishes fail
/// (UNAVAILABLE) while the disk is full, succeed again once space is freed, and every
/// acked message is there, also after the server is killed and restarted.
#[tokio::test]
async fn a_full_disk_fails_publishes_until_space_is_freed_and_loses_nothing_acked() {
    const SIZE: usize = 32 * 1024;
    let fs = SmallFilesystem::mount("24m");
    let data = fs.path().join("data");
    let (mut server, addr) = spawn_duplex_serve_durable(&data, &[]);
    let mut client = hub_client(addr).await;
    client
        .publish(publish_request(0, SIZE))
        .await
        .expect("a first publish");
    let mut acked = vec![(1u64, publish_request(0, SIZE).payload)];

    let filler = fill(fs.path(), 1 << 20);
    let mut failures = 0;
    let mut failed_id = None;
    let mut i = 1;
    let started = Instant::now();
    while failures < 3 && i < 2000 && started.elapsed() < STEP {
        let request = publish_request(i, SIZE);
        let payload = request.payload.clone();
        match client.publish(request).await {
            Ok(ack) => acked.push((ack.into_inner().offset, payload)),
            Err(status) => {
                assert_eq!(status.code(), tonic::Code::Unavailable, "{status:?}");
                failures += 1;
                failed_id.get_or_insert(i);
            }
        }
        i += 1;
    }
    assert!(failures > 0, "the disk never filled ({i} publishes acked)");
    let acked_while_full = acked.len();

    std::fs::remove_file(&filler).unwrap();
    // Space is back: publishes succeed again, without a restart.
    let freed = Instant::now();
    let recovered = loop {
        let request = publish_request(i, SIZE);
        let payload = request.payload.clone();
        match client.publish(request).await {
            Ok(ack) => {
                acked.push((ack.into_inner().offset, payload));
                i += 1;
                break freed.elapsed();
            }
            Err(status) if freed.elapsed() < STEP => {
                assert_eq!(status.code(), tonic::Code::Unavailable, "{status:?}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(status) => panic!(
                "publishes still fail {:?} after space was freed: {status:?}",
                freed.elapsed()
            ),
        }
        i += 1;
    };
    for _ in 0..5 {
        let request = publish_request(i, SIZE);
        let payload = request.payload.clone();
        let ack = client
            .publish(request)
            .await
            .expect("publish after recovery");
        acked.push((ack.into_inner().offset, payload));
        i += 1;
    }
    // The dedupe index went with the failed commits: a failed publish retried under its
    // id is stored now, and an acked one retried is a duplicate of its offset.
    let failed_id = failed_id.expect("a publish failed");
    let retried = client
        .publish(publish_request(failed_id, SIZE))
        .await
        .expect("retry of a failed publish")
        .into_inner();
    assert!(
        !retried.duplicate,
        "a failed publish was remembered: {retried:?}"
    );
    acked.push((retried.offset, publish_request(failed_id, SIZE).payload));
    let again = client
        .publish(publish_request(0, SIZE))
        .await
        .expect("retry of the first publish")
        .into_inner();
    assert_eq!((again.offset, again.duplicate), (1, true));
    println!(
        "| disk full under publishes, then space freed | publishes fail, then work again; \
         nothing acked lost | {acked_while_full} acked before {failures} failures; working \
         again {recovered:?} after space was freed |"
    );

    let stored = everything(&mut client, "full").await;
    assert_same(&stored, &acked, "while running");
    assert!(
        server.0.try_wait().unwrap().is_none(),
        "the server still runs"
    );

    // Killed, not stopped: what was acked must already be durable.
    server.signal("KILL");
    server
        .wait_for_exit(STEP)
        .expect("the server dies on SIGKILL");
    let (_server, addr) = spawn_duplex_serve_durable(&data, &[]);
    let mut client = hub_client(addr).await;
    let stored = everything(&mut client, "full").await;
    assert_same(&stored, &acked, "after a restart");
}

/// Runs `duplex serve` on `data` expecting it to refuse to start; returns its stderr.
fn refused_start(data: &Path) -> String {
    let command = common::durable_serve_command(data, &[]);
    let (code, stdout, stderr) = common::run_with_input(command, "");
    assert_ne!(code, Some(0), "the server must not start: {stdout}{stderr}");
    assert!(code.is_some(), "the server exits by itself (not killed)");
    assert!(!stdout.contains("listening on"), "{stdout}");
    stderr
}

/// Issue 10 item 9. Before the fix, a database file truncated to 0 bytes started as an
/// empty store: offsets restarted at 1 and resuming clients silently missed messages. Now
/// the server refuses to start on it (and on a file it cannot open), naming the file and
/// `--reset-store`; with that flag it starts over. A fresh data directory still starts
/// without a word.
#[tokio::test]
async fn an_empty_or_damaged_store_file_is_refused_unless_reset() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("fresh");
    {
        let (_server, addr) = spawn_duplex_serve_durable(&data, &[]);
        let mut client = hub_client(addr).await;
        for i in 0..3 {
            client.publish(publish_request(i, 16)).await.unwrap();
        }
    }
    let file = data.join("duplex.redb");
    std::fs::File::create(&file).unwrap(); // truncated to 0 bytes
    let stderr = refused_start(&data);
    assert!(
        stderr.contains("empty") && stderr.contains("--reset-store"),
        "{stderr}"
    );
    assert!(stderr.contains(&file.display().to_string()), "{stderr}");

    std::fs::write(&file, vec![0x5A; 64 * 1024]).unwrap(); // damaged
    let stderr = refused_start(&data);
    assert!(stderr.contains("--reset-store"), "{stderr}");

    let (_server, addr) = spawn_duplex_serve_durable(&data, &["--reset-store"]);
    let mut client = hub_client(addr).await;
    let ack = client.publish(publish_request(0, 16)).await.unwrap();
    assert_eq!(ack.into_inner().offset, 1, "started over");
    let kept = std::fs::read_dir(&data)
        .unwrap()
        .filter(|entry| {
            entry
                .as_ref()
                .unwrap()
                .file_name()
                .to_string_lossy()
                .starts_with("duplex.redb.damaged-")
        })
        .count();
    assert_eq!(kept, 1, "the damaged file is kept aside");
    println!(
        "| database file truncated to 0 bytes / damaged, then `duplex serve` | refused, naming \
         --reset-store; with it, a new store | refused twice; --reset-store started over at \
         offset 1 |"
    );
}

/// GET `path` on the web listener `web` (HTTP/1.1, one request): (status, body).
fn web_get(web: std::net::SocketAddr, path: &str) -> (u16, String) {
    use std::io::{Read as _, Write as _};
    let mut tcp = std::net::TcpStream::connect(web).expect("connect to the web listener");
    tcp.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(
        tcp,
        "GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut reply = String::new();
    tcp.read_to_string(&mut reply).expect("a reply");
    let (head, body) = reply.split_once("\r\n\r\n").expect("a whole reply");
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|code| code.parse().ok())
        .expect("a status line");
    (status, body.to_owned())
}

/// The health service's status for `service`, as its name (`SERVING`, `NOT_SERVING`).
async fn health_status(channel: &Channel, service: &str) -> String {
    use tonic_health::pb::HealthCheckRequest;
    use tonic_health::pb::health_client::HealthClient;
    let response = HealthClient::new(channel.clone())
        .check(HealthCheckRequest {
            service: service.into(),
        })
        .await
        .expect("health check")
        .into_inner();
    response.status().as_str_name().to_owned()
}

/// Health follows the store: while its commits fail for a full disk, overall and
/// `duplex.v1.Hub` are NOT_SERVING and `/readyz` answers 503 saying why (`chat.Chat`, which
/// needs no store, stays SERVING); after a commit succeeds again they are back.
#[tokio::test]
async fn health_and_readyz_report_the_store_unavailable_while_the_disk_is_full() {
    const SIZE: usize = 32 * 1024;
    let fs = SmallFilesystem::mount("24m");
    let data = fs.path().join("data");
    let (_server, addr, mut stdout) =
        common::spawn_listening(common::durable_serve_command(&data, &[]));
    let web = common::read_web_addr(&mut stdout);
    let mut client = hub_client(addr).await;
    let channel = Channel::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    client.publish(publish_request(0, SIZE)).await.unwrap();
    assert_eq!(health_status(&channel, "duplex.v1.Hub").await, "SERVING");
    assert_eq!(web_get(web, "/readyz"), (200, "ready\n".to_owned()));

    let filler = fill(fs.path(), 1 << 20);
    let started = Instant::now();
    let mut i = 1;
    loop {
        match client.publish(publish_request(i, SIZE)).await {
            Ok(_) => i += 1,
            Err(status) => {
                assert_eq!(status.code(), tonic::Code::Unavailable, "{status:?}");
                break;
            }
        }
        assert!(
            started.elapsed() < STEP && i < 2000,
            "the disk never filled"
        );
    }
    // The health task looks at the store four times a second.
    let deadline = Instant::now() + STEP;
    while health_status(&channel, "").await != "NOT_SERVING" {
        assert!(Instant::now() < deadline, "health never left SERVING");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        health_status(&channel, "duplex.v1.Hub").await,
        "NOT_SERVING"
    );
    assert_eq!(health_status(&channel, "chat.Chat").await, "SERVING");
    let (status, body) = web_get(web, "/readyz");
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("store unavailable"), "{body}");
    let (_, metrics) = web_get(web, "/metrics");
    assert!(
        metrics
            .lines()
            .any(|line| line == "duplex_store_available 0"),
        "the gauge says so too"
    );

    std::fs::remove_file(&filler).unwrap();
    let freed = Instant::now();
    while client.publish(publish_request(i, SIZE)).await.is_err() {
        assert!(freed.elapsed() < STEP, "publishes never recovered");
        tokio::time::sleep(Duration::from_millis(100)).await;
        i += 1;
    }
    let deadline = Instant::now() + STEP;
    while health_status(&channel, "").await != "SERVING" {
        assert!(Instant::now() < deadline, "health never came back");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(health_status(&channel, "duplex.v1.Hub").await, "SERVING");
    assert_eq!(web_get(web, "/readyz"), (200, "ready\n".to_owned()));
}
