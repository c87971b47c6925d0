//! The Chat service end to end: our tonic client against a real server on a loopback port.

mod common;

use std::time::Duration;

use common::{InProcessServer, STEP};
use duplex_proto::chat::chat_client::ChatClient;
use duplex_proto::chat::{Echo, Msg};
use futures::StreamExt as _;
use tokio::sync::mpsc;
use tokio::time::timeout;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Code;

fn msg(text: impl Into<String>) -> Msg {
    Msg { text: text.into() }
}

/// Sends every text, half-closes, and collects the replies until the call ends.
async fn echo_all(
    client: &mut ChatClient<tonic::transport::Channel>,
    texts: Vec<String>,
) -> Result<Vec<String>, tonic::Status> {
    let outbound = tokio_stream::iter(texts.into_iter().map(msg));
    let mut replies = client.chat(outbound).await?.into_inner();
    let mut texts = Vec::new();
    while let Some(reply) = replies.message().await? {
        texts.push(reply.text);
    }
    Ok(texts)
}

#[tokio::test]
async fn ten_thousand_messages_come_back_in_order() {
    let server = InProcessServer::start().await;
    let mut client = server.chat_client().await;
    let texts: Vec<String> = (0..10_000).map(|i| format!("message {i}")).collect();
    let replies = timeout(STEP, echo_all(&mut client, texts.clone()))
        .await
        .expect("in time")
        .expect("call ends OK");
    let expected: Vec<String> = texts.iter().map(|t| format!("<<{t}>>")).collect();
    assert_eq!(replies.len(), 10_000);
    assert_eq!(replies, expected);
}

#[tokio::test]
async fn empty_unicode_and_one_mebibyte_texts_round_trip() {
    let server = InProcessServer::start().await;
    let mut client = server
        .chat_client()
        .await
        .max_decoding_message_size(2 << 20);
    let big = "x".repeat(1 << 20);
    let texts = vec![
        String::new(),
        "héllo wörld ✓ 你好 🚀".to_owned(),
        big.clone(),
        "\u{0}nul and\ttab".to_owned(),
    ];
    let replies = timeout(STEP, echo_all(&mut client, texts))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(replies[0], "<<>>");
    assert_eq!(replies[1], "<<héllo wörld ✓ 你好 🚀>>");
    assert_eq!(replies[2].len(), (1 << 20) + 4);
    assert_eq!(replies[2], format!("<<{big}>>"));
    assert_eq!(replies[3], "<<\u{0}nul and\ttab>>");
}

#[tokio::test]
async fn replies_flow_before_half_close_and_call_ends_ok_after_it() {
    let server = InProcessServer::start().await;
    let mut client = server.chat_client().await;
    let (tx, rx) = mpsc::channel(4);
    let mut replies = client
        .chat(ReceiverStream::new(rx))
        .await
        .unwrap()
        .into_inner();
    // Interleaved: each reply arrives while our side of the stream is still open.
    for i in 0..5 {
        tx.send(msg(format!("turn {i}"))).await.unwrap();
        let reply = timeout(STEP, replies.message()).await.unwrap().unwrap();
        assert_eq!(
            reply,
            Some(Echo {
                text: format!("<<turn {i}>>")
            })
        );
    }
    drop(tx); // half-close: END_STREAM from the client
    let end = timeout(STEP, replies.message()).await.unwrap();
    assert_eq!(end.expect("status OK"), None);
    let trailers = replies.trailers().await.unwrap();
    assert!(
        trailers.is_some(),
        "the server sent trailers with grpc-status 0"
    );
}

#[tokio::test]
async fn cancelling_mid_stream_leaves_the_server_serving() {
    let server = InProcessServer::start().await;
    let mut client = server.chat_client().await;
    for round in 0..20 {
        let (tx, rx) = mpsc::channel(16);
        let mut replies = client
            .chat(ReceiverStream::new(rx))
            .await
            .unwrap()
            .into_inner();
        tx.send(msg("first")).await.unwrap();
        let first = timeout(STEP, replies.message()).await.unwrap().unwrap();
        assert_eq!(first.unwrap().text, "<<first>>", "round {round}");
        for i in 0..10 {
            // The call may already be gone; only the server's health matters here.
            let _ = tx.send(msg(format!("unread {i}"))).await;
        }
        drop(replies); // RST_STREAM(CANCEL) with messages still in flight
        drop(tx);
    }
    let replies = timeout(STEP, echo_all(&mut client, vec!["after".into()]))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(replies, vec!["<<after>>"]);
}

#[tokio::test]
async fn deadline_fires_mid_stream_with_deadline_exceeded() {
    let server = InProcessServer::start().await;
    let mut client = server.chat_client().await;
    let (tx, rx) = mpsc::channel(4);
    let mut request = tonic::Request::new(ReceiverStream::new(rx));
    request.set_timeout(Duration::from_millis(700));
    let started = tokio::time::Instant::now();
    let mut replies = client.chat(request).await.unwrap().into_inner();

    // Well inside the deadline the call works: headers are long gone, the body streams.
    tx.send(msg("early")).await.unwrap();
    let early = timeout(STEP, replies.message()).await.unwrap().unwrap();
    assert_eq!(early.unwrap().text, "<<early>>");

    // Keep our side open and idle; the server must end the call itself.
    let ended = timeout(STEP, replies.message())
        .await
        .expect("the server ends the call");
    let status = ended.expect_err("the call fails");
    assert_eq!(status.code(), Code::DeadlineExceeded, "{status:?}");
    assert!(
        started.elapsed() >= Duration::from_millis(650),
        "not before the deadline"
    );
    drop(tx);

    // A call without a deadline on the same connection is unaffected.
    let replies = timeout(STEP, echo_all(&mut client, vec!["still here".into()]))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(replies, vec!["<<still here>>"]);
}

#[tokio::test]
async fn deadline_longer_than_the_call_changes_nothing() {
    let server = InProcessServer::start().await;
    let mut client = server.chat_client().await;
    let mut request = tonic::Request::new(tokio_stream::iter(vec![msg("a"), msg("b")]));
    request.set_timeout(Duration::from_secs(30));
    let replies: Vec<_> = client
        .chat(request)
        .await
        .unwrap()
        .into_inner()
        .collect()
        .await;
    let texts: Vec<String> = replies.into_iter().map(|r| r.unwrap().text).collect();
    assert_eq!(texts, vec!["<<a>>", "<<b>>"]);
}

#[tokio::test]
async fn message_over_the_limit_gets_resource_exhausted_and_others_keep_going() {
    let server = InProcessServer::start_with(|config| config.max_message_size = 64 * 1024).await;
    let mut client = server.chat_client().await;

    // A second call stays open across the failure of the first.
    let (tx, rx) = mpsc::channel(4);
    let mut survivor = client
        .chat(ReceiverStream::new(rx))
        .await
        .unwrap()
        .into_inner();
    tx.send(msg("before")).await.unwrap();
    assert_eq!(
        survivor.message().await.unwrap().unwrap().text,
        "<<before>>"
    );

    let status = timeout(
        STEP,
        echo_all(
            &mut client.clone(),
            vec!["ok".into(), "y".repeat(64 * 1024 + 1)],
        ),
    )
    .await
    .unwrap()
    .expect_err("an oversize message fails the call");
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");

    tx.send(msg("after")).await.unwrap();
    assert_eq!(survivor.message().await.unwrap().unwrap().text, "<<after>>");
    let fresh = echo_all(&mut client, vec!["y".repeat(64 * 1024 - 16)])
        .await
        .unwrap();
    assert_eq!(fresh[0].len(), 64 * 1024 - 12);
}

#[tokio::test]
async fn package_less_path_serves_the_same_service() {
    let server = InProcessServer::start().await;
    let mut grpc = tonic::client::Grpc::new(server.channel().await);
    grpc.ready().await.unwrap();
    let outbound = tokio_stream::iter(vec![msg("bare"), msg("path")]);
    let mut replies = grpc
        .streaming::<_, Msg, Echo, _>(
            tonic::Request::new(outbound),
            http::uri::PathAndQuery::from_static("/Chat/Chat"),
            tonic_prost::ProstCodec::default(),
        )
        .await
        .unwrap()
        .into_inner();
    assert_eq!(replies.message().await.unwrap().unwrap().text, "<<bare>>");
    assert_eq!(replies.message().await.unwrap().unwrap().text, "<<path>>");
    assert_eq!(replies.message().await.unwrap(), None);
}

#[tokio::test]
async fn unknown_method_is_unimplemented() {
    let server = InProcessServer::start().await;
    let mut grpc = tonic::client::Grpc::new(server.channel().await);
    grpc.ready().await.unwrap();
    let status = grpc
        .streaming::<_, Msg, Echo, _>(
            tonic::Request::new(tokio_stream::iter(vec![msg("x")])),
            http::uri::PathAndQuery::from_static("/chat.Chat/Shout"),
            tonic_prost::ProstCodec::default(),
        )
        .await
        .expect_err("no such method");
    assert_eq!(status.code(), Code::Unimplemented);
}

#[tokio::test]
async fn unreachable_server_fails_to_connect() {
    // Bind then drop a listener: nothing listens on that port afterwards.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let result = timeout(
        STEP,
        tonic::transport::Channel::from_shared(format!("http://127.0.0.1:{port}"))
            .unwrap()
            .connect(),
    )
    .await
    .expect("fails fast, does not hang");
    assert!(result.is_err());
}
