//! Limits a production server needs, against real servers: publish rate per identity, idle
//! sessions, header list size.

mod common;

use common::session::SessionSteps as _;

use std::time::{Duration, Instant};

use bytes::Bytes;
use common::session::Session;
use common::{InProcessServer, STEP};
use duplex_proto::hub::server_frame::Frame;
use duplex_proto::hub::{Ping, client_frame::Command};
use tokio::time::timeout;

#[tokio::test]
async fn publish_rate_is_limited_and_the_session_goes_on() {
    let server = InProcessServer::start_with(|config| {
        config.publish_rate = 20;
        config.publish_burst = 20;
    })
    .await;
    let mut session = Session::open(&server.channel().await, "chatty").await;
    session.join("room", None).await;
    for i in 0..60 {
        session.publish("room", format!("m{i}")).await;
    }
    let (mut acked, mut limited) = (0, 0);
    while acked + limited < 60 {
        match session.next().await {
            Frame::PublishAck(_) => acked += 1,
            Frame::Error(error) => {
                assert_eq!(error.code, tonic::Code::ResourceExhausted as i32);
                assert!(error.message.contains("publish rate"), "{}", error.message);
                limited += 1;
            }
            _ => {}
        }
    }
    assert!(
        (20..40).contains(&acked),
        "the burst passes, then about the rate: {acked}"
    );
    assert!(limited > 20, "{limited}");
    // A second later the budget is back.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    session.publish("room", "later").await;
    loop {
        match session.next().await {
            Frame::PublishAck(_) => break,
            Frame::Error(error) => panic!("still limited: {error:?}"),
            _ => {}
        }
    }
}

#[tokio::test]
async fn silent_sessions_end_and_pinging_ones_stay() {
    let server =
        InProcessServer::start_with(|config| config.idle_timeout = Duration::from_millis(400))
            .await;
    let channel = server.channel().await;
    let mut silent = Session::open(&channel, "silent").await;
    silent.join("room", None).await;
    let mut chatty = Session::open(&channel, "chatty").await;
    chatty.join("room", None).await;

    let started = Instant::now();
    let status = timeout(STEP, async {
        loop {
            chatty
                .send(Command::Ping(Ping {
                    client_time_unix_micros: 1,
                }))
                .await;
            match timeout(Duration::from_millis(100), silent.frames.message()).await {
                Ok(Ok(Some(_))) | Err(_) => continue,
                Ok(Ok(None)) => panic!("ended OK"),
                Ok(Err(status)) => return status,
            }
        }
    })
    .await
    .expect("the silent session is ended");
    assert_eq!(status.code(), tonic::Code::DeadlineExceeded);
    assert!(
        status.message().contains("no frame from the client"),
        "{}",
        status.message()
    );
    assert!(started.elapsed() >= Duration::from_millis(350));
    // The one that pinged is still there.
    chatty
        .publish("room", Bytes::from_static(b"still here"))
        .await;
    loop {
        if let Frame::PublishAck(_) = chatty.next().await {
            break;
        }
    }
}

#[tokio::test]
async fn oversized_header_lists_are_refused() {
    use duplex_proto::chat::Msg;
    use duplex_proto::chat::chat_client::ChatClient;

    let server = InProcessServer::start_with(|config| config.max_header_list_size = 4096).await;
    let mut client = ChatClient::new(server.channel().await);
    let call = |padding: usize, text: &str| {
        let mut request = tonic::Request::new(tokio_stream::iter(vec![Msg { text: text.into() }]));
        request
            .metadata_mut()
            .insert("x-padding", "p".repeat(padding).parse().unwrap());
        request
    };
    // HTTP/2 settings apply once acknowledged: one call first, so the limit is in force.
    let mut replies = client.chat(call(1, "warm-up")).await.unwrap().into_inner();
    while replies.message().await.unwrap().is_some() {}

    // h2 answers 431 (REQUEST_HEADER_FIELDS_TOO_LARGE): tonic reports it at the call or
    // at the first read.
    let refused = match client.chat(call(8192, "x")).await {
        Err(status) => status,
        Ok(response) => response
            .into_inner()
            .message()
            .await
            .expect_err("not served"),
    };
    assert_ne!(refused.code(), tonic::Code::Ok);
    let mut replies = client
        .chat(call(1024, "ok"))
        .await
        .expect("a modest header list is fine")
        .into_inner();
    assert_eq!(replies.message().await.unwrap().unwrap().text, "<<ok>>");
}

/// Issue 10 item 10. Before the fix, an oversized request got RESOURCE_EXHAUSTED on
/// `Connect` and Chat but OUT_OF_RANGE (tonic's code) on the Hub's unary calls and on
/// `Subscribe`. Every Hub call now answers as the gRPC spec says, over the wire from a
/// real server process.
#[tokio::test]
async fn oversized_requests_get_resource_exhausted_on_every_hub_call() {
    use duplex_proto::hub::hub_client::HubClient;
    use duplex_proto::hub::{
        ClientFrame, HistoryRequest, PresenceRequest, Publish, PublishRequest, SubscribeRequest,
    };

    let (_server, addr) = common::spawn_duplex_serve(&["--max-message-size", "1KiB"]);
    let channel = tonic::transport::Channel::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut client = HubClient::new(channel);
    let big = "r".repeat(2048);
    let mut seen = Vec::new();
    let publish = client
        .publish(PublishRequest {
            room: "room".into(),
            payload: Bytes::from(vec![b'x'; 2048]),
            ..Default::default()
        })
        .await
        .unwrap_err();
    seen.push(("Publish", publish));
    let history = client
        .history(HistoryRequest {
            room: big.clone(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    seen.push(("History", history));
    let presence = client
        .presence(PresenceRequest { room: big.clone() })
        .await
        .unwrap_err();
    seen.push(("Presence", presence));
    let subscribe = match client
        .subscribe(SubscribeRequest {
            room: big.clone(),
            ..Default::default()
        })
        .await
    {
        Err(status) => status,
        Ok(response) => response
            .into_inner()
            .message()
            .await
            .expect_err("an oversized Subscribe fails"),
    };
    seen.push(("Subscribe", subscribe));
    let frame = ClientFrame {
        command_id: 1,
        command: Some(Command::Publish(Publish {
            room: "room".into(),
            payload: Bytes::from(vec![b'x'; 2048]),
            ..Default::default()
        })),
    };
    let connect = match client.connect(tokio_stream::iter(vec![frame])).await {
        Err(status) => status,
        Ok(response) => {
            let mut frames = response.into_inner();
            loop {
                match timeout(STEP, frames.message()).await.expect("an answer") {
                    Err(status) => break status,
                    Ok(Some(_)) => continue,
                    Ok(None) => panic!("Connect ended OK after an oversized frame"),
                }
            }
        }
    };
    seen.push(("Connect", connect));
    for (call, status) in &seen {
        println!(
            "| oversized {call} request | RESOURCE_EXHAUSTED | {:?} |",
            status.code()
        );
    }
    for (call, status) in seen {
        assert_eq!(
            status.code(),
            tonic::Code::ResourceExhausted,
            "{call}: {status:?}"
        );
        assert!(status.message().contains("too large"), "{call}: {status:?}");
    }
}
