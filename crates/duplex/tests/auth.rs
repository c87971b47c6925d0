//! Bearer tokens against a real server: HS256, RS256 and ES256 keys; no token, expired,
//! wrong signature, the wrong algorithm, read-only publishing, the wrong room — each
//! denied — while allowed paths work and a session ends when its token expires.

mod common;

use common::session::SessionSteps as _;

use std::path::Path;
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::session::Session;
use common::{STEP, spawn_duplex_serve, with_bearer};
use duplex_proto::hub::hub_client::HubClient;
use duplex_proto::hub::server_frame::Frame;
use duplex_proto::hub::{
    ClientFrame, HistoryRequest, Join, PresenceRequest, Publish, PublishRequest, SubscribeRequest,
    client_frame::Command,
};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use tokio::sync::mpsc;
use tokio::time::timeout;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Code;
use tonic::transport::Channel;

const SECRET: &[u8] = b"a-test-secret-of-at-least-32-bytes-length";

fn now() -> u64 {
    duplex_server::auth::unix_now()
}

fn claims(sub: &str, exp: u64, read: &[&str], write: &[&str]) -> serde_json::Value {
    serde_json::json!({ "sub": sub, "exp": exp, "rooms": { "read": read, "write": write } })
}

fn hs256(claims: &serde_json::Value, secret: &[u8]) -> String {
    jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        claims,
        &EncodingKey::from_secret(secret),
    )
    .unwrap()
}

fn write_file(dir: &Path, name: &str, contents: &[u8]) -> String {
    let path = dir.join(name);
    std::fs::write(&path, contents).unwrap();
    path.to_str().unwrap().to_owned()
}

/// Opens a session with `token` (if any); returns the session or the status it failed with.
async fn open(
    channel: &Channel,
    token: Option<&str>,
    name: &str,
) -> Result<Session, tonic::Status> {
    let (commands, rx) = mpsc::channel(64);
    let mut request = tonic::Request::new(ReceiverStream::new(rx));
    request
        .metadata_mut()
        .insert("duplex-name", name.parse().unwrap());
    if let Some(token) = token {
        request
            .metadata_mut()
            .insert("authorization", format!("Bearer {token}").parse().unwrap());
    }
    let mut frames = HubClient::new(channel.clone())
        .connect(request)
        .await?
        .into_inner();
    // Auth failures arrive as the call's status; a healthy session answers a ping.
    commands
        .send(ClientFrame {
            command_id: 99,
            command: Some(Command::Ping(Default::default())),
        })
        .await
        .unwrap();
    match timeout(STEP, frames.message()).await.unwrap()? {
        Some(_) => Ok(Session {
            commands,
            frames,
            next_command: 1,
        }),
        None => Err(tonic::Status::internal("ended without a status")),
    }
}

fn join(room: &str) -> Command {
    Command::Join(Join {
        room: room.into(),
        after_offset: None,
        hidden: false,
        replay_last: 0,
    })
}

fn publish(room: &str, text: &str) -> Command {
    Command::Publish(Publish {
        room: room.into(),
        payload: Bytes::from(text.to_owned()),
        ..Default::default()
    })
}

async fn expect_error(session: &mut Session, code: Code) -> String {
    match session.next().await {
        Frame::Error(error) => {
            assert_eq!(error.code, code as i32, "{error:?}");
            error.message
        }
        other => panic!("expected {code:?}, got {other:?}"),
    }
}

#[tokio::test]
async fn hs256_tokens_authenticate_and_room_rights_are_enforced() {
    let dir = tempfile::tempdir().unwrap();
    let secret = write_file(dir.path(), "secret", SECRET);
    let (_server, addr) = spawn_duplex_serve(&["--jwt-secret-file", &secret]);
    let channel = common::connect(addr).await;
    let in_an_hour = now() + 3600;

    // Denied at the door.
    let status = open(&channel, None, "nobody")
        .await
        .err()
        .expect("no token");
    assert_eq!(status.code(), Code::Unauthenticated);
    assert!(
        status.message().contains("missing token"),
        "{}",
        status.message()
    );
    let expired = hs256(&claims("alice", now() - 60, &["*"], &["*"]), SECRET);
    let status = open(&channel, Some(&expired), "alice")
        .await
        .err()
        .expect("expired");
    assert_eq!(status.code(), Code::Unauthenticated);
    assert!(status.message().contains("expired"), "{}", status.message());
    let forged = hs256(
        &claims("alice", in_an_hour, &["*"], &["*"]),
        b"some-other-secret-that-is-32-bytes-long!",
    );
    let status = open(&channel, Some(&forged), "alice")
        .await
        .err()
        .expect("forged");
    assert!(
        status.message().contains("signature"),
        "{}",
        status.message()
    );
    let status = open(&channel, Some("not.a.jwt"), "x")
        .await
        .err()
        .expect("garbage");
    assert!(
        status.message().contains("well-formed"),
        "{}",
        status.message()
    );
    assert!(
        !status.message().contains("not.a.jwt"),
        "tokens are never echoed"
    );
    let unsigned = format!(
        "eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0.{}.",
        base64_url(&serde_json::to_vec(&claims("mallory", in_an_hour, &["*"], &["*"])).unwrap())
    );
    let status = open(&channel, Some(&unsigned), "x")
        .await
        .err()
        .expect("alg none");
    assert_eq!(status.code(), Code::Unauthenticated);

    // A reader of lobby and game.*, writer of game.eu.* only.
    let token = hs256(
        &claims("alice", in_an_hour, &["lobby", "game.*"], &["game.eu.*"]),
        SECRET,
    );
    let mut alice = open(&channel, Some(&token), "ignored-name").await.unwrap();
    alice.send(join("secret-room")).await;
    let message = expect_error(&mut alice, Code::PermissionDenied).await;
    assert!(message.contains("secret-room"), "{message}");
    alice.join("lobby", None).await;
    alice.send(publish("lobby", "read-only here")).await;
    expect_error(&mut alice, Code::PermissionDenied).await;
    alice.join("game.eu.7", None).await;
    let id = alice.send(publish("game.eu.7", "gg")).await;
    let mut acked = false;
    let mut delivered = None;
    while !acked || delivered.is_none() {
        match alice.next().await {
            Frame::PublishAck(ack) => {
                assert_eq!(ack.command_id, id);
                acked = true;
            }
            Frame::Message(message) => delivered = Some(message),
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(
        delivered.unwrap().sender,
        "alice",
        "the token's subject is the sender"
    );

    // The unary calls check the same rights.
    let mut client = HubClient::new(channel.clone());
    let request = with_bearer(
        PublishRequest {
            room: "lobby".into(),
            payload: "x".into(),
            sender: "someone-else".into(),
            ..Default::default()
        },
        &token,
    );
    assert_eq!(
        client.publish(request).await.unwrap_err().code(),
        Code::PermissionDenied
    );
    let request = with_bearer(
        HistoryRequest {
            room: "game.eu.7".into(),
            after_offset: 0,
            limit: 10,
        },
        &token,
    );
    let history = client.history(request).await.unwrap().into_inner();
    assert_eq!(history.messages.len(), 1);
    let request = tonic::Request::new(HistoryRequest {
        room: "game.eu.7".into(),
        after_offset: 0,
        limit: 10,
    });
    assert_eq!(
        client.history(request).await.unwrap_err().code(),
        Code::Unauthenticated
    );
}

#[tokio::test]
async fn a_session_ends_when_its_token_expires() {
    let dir = tempfile::tempdir().unwrap();
    let secret = write_file(dir.path(), "secret", SECRET);
    let (_server, addr) = spawn_duplex_serve(&["--jwt-secret-file", &secret]);
    let channel = common::connect(addr).await;
    // jsonwebtoken allows 5 s of leeway at the door; the session itself ends at `exp`.
    let token = hs256(&claims("brief", now() + 2, &["*"], &["*"]), SECRET);
    let started = Instant::now();
    let mut session = open(&channel, Some(&token), "brief").await.unwrap();
    session.join("lobby", None).await;
    let status = timeout(STEP, async {
        loop {
            match session.frames.message().await {
                Ok(Some(_)) => continue,
                Ok(None) => panic!("ended OK instead of UNAUTHENTICATED"),
                Err(status) => return status,
            }
        }
    })
    .await
    .expect("the session ends by itself");
    assert_eq!(status.code(), Code::Unauthenticated);
    assert!(
        status.message().contains("token expired"),
        "{}",
        status.message()
    );
    assert!(started.elapsed() < Duration::from_secs(10));
}

#[tokio::test]
async fn rs256_and_es256_public_keys_verify_and_pin_the_algorithm() {
    let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
    let rsa_private = std::fs::read(fixtures.join("jwt-rs256-private.pem")).unwrap();
    let rsa_public = fixtures.join("jwt-rs256-public.pem");

    let ec = rcgen::KeyPair::generate().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let ec_public = write_file(dir.path(), "ec.pem", ec.public_key_pem().as_bytes());

    let in_an_hour = now() + 3600;
    let grant = claims("bob", in_an_hour, &["*"], &["*"]);
    let rs_token = jsonwebtoken::encode(
        &Header::new(Algorithm::RS256),
        &grant,
        &EncodingKey::from_rsa_pem(&rsa_private).unwrap(),
    )
    .unwrap();
    let es_token = jsonwebtoken::encode(
        &Header::new(Algorithm::ES256),
        &grant,
        &EncodingKey::from_ec_pem(ec.serialize_pem().as_bytes()).unwrap(),
    )
    .unwrap();

    for (key, good, bad) in [
        (
            rsa_public.to_str().unwrap().to_owned(),
            &rs_token,
            &es_token,
        ),
        (ec_public, &es_token, &rs_token),
    ] {
        let (_server, addr) = spawn_duplex_serve(&["--jwt-public-key-file", &key]);
        let channel = common::connect(addr).await;
        let mut session = open(&channel, Some(good), "bob")
            .await
            .expect("a good token");
        session.join("anywhere", None).await;
        let status = open(&channel, Some(bad), "bob")
            .await
            .err()
            .expect("other key type");
        assert_eq!(status.code(), Code::Unauthenticated);
        // HS256 signed with the public key's bytes: the classic algorithm confusion.
        let confused = hs256(&grant, std::fs::read(&key).unwrap().as_slice());
        let status = open(&channel, Some(&confused), "bob")
            .await
            .err()
            .expect("alg confusion");
        assert!(
            status.message().contains("algorithm"),
            "{}",
            status.message()
        );
    }
}

#[test]
fn bad_key_files_stop_the_server_with_a_reason() {
    let dir = tempfile::tempdir().unwrap();
    let short = write_file(dir.path(), "short", b"too short");
    let output = common::duplex()
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--store",
            "memory",
            "--jwt-secret-file",
            &short,
        ])
        .output()
        .unwrap();
    assert!(!output.status.success());
    let err = String::from_utf8(output.stderr).unwrap();
    assert!(err.contains("at least 32 bytes"), "{err}");
    let not_a_key = write_file(dir.path(), "nokey.pem", b"-----BEGIN NOTHING-----\n");
    let output = common::duplex()
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--store",
            "memory",
            "--jwt-public-key-file",
            &not_a_key,
        ])
        .output()
        .unwrap();
    assert!(!output.status.success());
    assert!(
        String::from_utf8(output.stderr)
            .unwrap()
            .contains("not an RSA or EC")
    );
}

/// Unpadded base64url, for hand-made tokens.
fn base64_url(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |n, (i, b)| n | (u32::from(*b) << (16 - 8 * i)));
        for i in 0..chunk.len() + 1 {
            out.push(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize] as char);
        }
    }
    out
}

#[tokio::test]
async fn a_configured_audience_and_issuer_must_be_in_the_token() {
    let dir = tempfile::tempdir().unwrap();
    let secret = write_file(dir.path(), "secret", SECRET);
    let (_server, addr) = spawn_duplex_serve(&[
        "--jwt-secret-file",
        &secret,
        "--jwt-audience",
        "duplex",
        "--jwt-issuer",
        "https://issuer.example",
    ]);
    let channel = common::connect(addr).await;
    let exp = now() + 3600;
    let rooms = serde_json::json!({ "read": ["*"], "write": ["*"] });
    let token = |claims: serde_json::Value| hs256(&claims, SECRET);
    let full = token(
        serde_json::json!({"sub":"a","exp":exp,"aud":"duplex","iss":"https://issuer.example","rooms":rooms}),
    );
    assert!(open(&channel, Some(&full), "a").await.is_ok());
    for claims in [
        serde_json::json!({"sub":"a","exp":exp,"iss":"https://issuer.example","rooms":rooms}),
        serde_json::json!({"sub":"a","exp":exp,"aud":"duplex","rooms":rooms}),
        serde_json::json!({"sub":"a","exp":exp,"aud":"other","iss":"https://issuer.example","rooms":rooms}),
    ] {
        let status = open(&channel, Some(&token(claims.clone())), "a")
            .await
            .err()
            .expect("refused");
        assert_eq!(status.code(), Code::Unauthenticated, "{claims}");
    }
}

/// Issue 10 item 12, first half. RFC 7515 §4.1.11: a token whose header lists critical
/// extensions the recipient does not understand must be refused. Before the fix such a
/// token, correctly signed, was accepted.
#[tokio::test]
async fn a_token_with_critical_extensions_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let secret = write_file(dir.path(), "secret", SECRET);
    let (_server, addr) = spawn_duplex_serve(&["--jwt-secret-file", &secret]);
    let channel = common::connect(addr).await;
    let claims = claims("alice", now() + 3600, &["*"], &["*"]);
    let mut header = Header::new(Algorithm::HS256);
    header.crit = Some(vec!["urn:example:must-understand".into()]);
    let critical = jsonwebtoken::encode(
        &header,
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(SECRET),
    )
    .unwrap();
    let status = open(&channel, Some(&critical), "alice")
        .await
        .err()
        .expect("a token with crit is refused");
    assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");
    assert!(status.message().contains("crit"), "{}", status.message());
    // The same claims without `crit` are accepted: the refusal is for the header alone.
    open(&channel, Some(&hs256(&claims, SECRET)), "alice")
        .await
        .expect("the same token without crit");
}

/// Issue 10 item 12, second half. Before the fix `--allow-anonymous` gave a caller without
/// a token every right and any name, so a client holding a limited token gained everything
/// by dropping it and could publish as anyone. Now anonymous callers get the anonymous
/// rights (read-only unless `--anonymous-write`) and a name under `anon:`.
#[tokio::test]
async fn anonymous_callers_get_their_own_rights_and_cannot_take_a_name() {
    let dir = tempfile::tempdir().unwrap();
    let secret = write_file(dir.path(), "secret", SECRET);
    let (_server, addr) = spawn_duplex_serve(&[
        "--jwt-secret-file",
        &secret,
        "--allow-anonymous",
        "--anonymous-write",
        "guest.*",
    ]);
    let channel = common::connect(addr).await;
    let mut client = HubClient::new(channel.clone());

    // Reading works (the default anonymous read is every room); writing only in guest.*.
    let mut anonymous = open(&channel, None, "alice").await.unwrap();
    let joined = anonymous.join("lobby", None).await;
    assert_eq!(joined.room, "lobby");
    anonymous.send(publish("lobby", "as nobody")).await;
    expect_error(&mut anonymous, Code::PermissionDenied).await;
    let status = client
        .publish(PublishRequest {
            room: "lobby".into(),
            payload: Bytes::from_static(b"unary, as nobody"),
            sender: "alice".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");

    // Where it may write, it cannot pass for a token's subject.
    client
        .publish(PublishRequest {
            room: "guest.1".into(),
            payload: Bytes::from_static(b"hello"),
            sender: "alice".into(),
            ..Default::default()
        })
        .await
        .expect("anonymous publish where --anonymous-write allows it");
    let history = client
        .history(HistoryRequest {
            room: "guest.1".into(),
            after_offset: 0,
            limit: 10,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(history.messages.len(), 1);
    assert_eq!(history.messages[0].sender, "anon:alice");
    let presence = client
        .presence(duplex_proto::hub::PresenceRequest {
            room: "lobby".into(),
        })
        .await
        .unwrap()
        .into_inner();
    let names: Vec<&str> = presence.members.iter().map(|m| m.name.as_str()).collect();
    assert_eq!(names, ["anon:alice"]);

    // A token limited to reading the lobby still gets exactly that; dropping it gains
    // nothing beyond the anonymous rights.
    let limited = hs256(&claims("bob", now() + 3600, &["lobby"], &[]), SECRET);
    let mut bob = open(&channel, Some(&limited), "ignored").await.unwrap();
    bob.send(join("guest.1")).await;
    expect_error(&mut bob, Code::PermissionDenied).await;
    println!(
        "| --allow-anonymous, no token | read-only (configurable), name anon:… | lobby read OK, \
         publish PERMISSION_DENIED; guest.* publish as sender {:?} |",
        history.messages[0].sender
    );
}

#[tokio::test]
async fn every_unary_and_subscribe_call_is_denied_outside_the_tokens_rooms() {
    let dir = tempfile::tempdir().unwrap();
    let secret = write_file(dir.path(), "secret", SECRET);
    let (_server, addr) = spawn_duplex_serve(&["--jwt-secret-file", &secret]);
    let mut client = HubClient::new(common::connect(addr).await);
    // Reads the lobby, writes nowhere.
    let token = hs256(&claims("carol", now() + 3600, &["lobby"], &[]), SECRET);

    let publish = PublishRequest {
        room: "lobby".into(),
        payload: Bytes::from_static(b"x"),
        ..Default::default()
    };
    let status = client
        .publish(with_bearer(publish, &token))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied, "Publish: {status:?}");

    let history = HistoryRequest {
        room: "vault".into(),
        after_offset: 0,
        limit: 10,
    };
    let status = client
        .history(with_bearer(history, &token))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied, "History: {status:?}");

    let presence = PresenceRequest {
        room: "vault".into(),
    };
    let status = client
        .presence(with_bearer(presence, &token))
        .await
        .unwrap_err();
    assert_eq!(
        status.code(),
        Code::PermissionDenied,
        "Presence: {status:?}"
    );

    let subscribe = SubscribeRequest {
        room: "vault".into(),
        ..Default::default()
    };
    let status = client
        .subscribe(with_bearer(subscribe, &token))
        .await
        .unwrap_err();
    assert_eq!(
        status.code(),
        Code::PermissionDenied,
        "Subscribe: {status:?}"
    );

    // The room it may read answers each read call.
    let presence = PresenceRequest {
        room: "lobby".into(),
    };
    client
        .presence(with_bearer(presence, &token))
        .await
        .unwrap();
    let history = HistoryRequest {
        room: "lobby".into(),
        after_offset: 0,
        limit: 10,
    };
    client.history(with_bearer(history, &token)).await.unwrap();
}
