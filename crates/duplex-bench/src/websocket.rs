//! WebSocket subscribers for `fanout --transport ws`: one WebSocket per session to `/ws` on
//! the server's web listener, one binary message per `ClientFrame` out and per
//! `ServerFrame` in (the server's protocol, `duplex-server/src/websocket.rs`). A session
//! here looks to the scenario like a gRPC one: its frames arrive as [`Event`]s (one whole
//! message per `Event::Data`), and what it sends goes through [`WsSender`].

use bytes::Bytes;
use futures::stream::LocalBoxStream;
use futures::{SinkExt as _, StreamExt as _};
use prost::Message as _;
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest as _;

use crate::grpc::{Event, MessageSplitter, code_name};

/// Messages a session may have waiting for its socket: the bench sends a join and a close.
const OUTBOX: usize = 16;

/// The first byte of an encoded `ServerFrame` whose oneof is `session_end` (field 10,
/// length-delimited), the only frame the bench decodes here.
const SESSION_END_TAG: u8 = (10 << 3) | 2;

/// The sending side of one WebSocket session; a task writes what it is given.
#[derive(Debug)]
pub(crate) struct WsSender {
    outbox: mpsc::Sender<Message>,
}

impl WsSender {
    /// Sends every gRPC-framed message in `framed` as one binary WebSocket message each,
    /// then a close if `end`. Errors with the key the report counts.
    pub(crate) fn send(&mut self, framed: Bytes, end: bool) -> Result<(), String> {
        let mut messages = Vec::new();
        MessageSplitter::default().push(&framed, |message| {
            messages.push(Message::Binary(Bytes::copy_from_slice(message)));
        })?;
        if end {
            messages.push(Message::Close(None));
        }
        for message in messages {
            self.outbox
                .try_send(message)
                .map_err(|_| "WS_SEND".to_owned())?;
        }
        Ok(())
    }
}

/// Opens `/ws` on `target` (HOST:PORT) as `name`, offering `token` if any, within
/// `timeout`; returns the sender and the session's events.
pub(crate) async fn open(
    target: &str,
    token: Option<&str>,
    name: &str,
    timeout: std::time::Duration,
) -> Result<(WsSender, LocalBoxStream<'static, Event>), String> {
    let mut request = format!("ws://{target}/ws")
        .into_client_request()
        .map_err(|error| format!("bad --web-target `{target}`: {error}"))?;
    let mut protocols = vec!["duplex.v1".to_owned(), format!("duplex.name.{name}")];
    if let Some(token) = token {
        protocols.push(format!("duplex.bearer.{token}"));
    }
    let protocols = protocols
        .join(", ")
        .parse()
        .map_err(|_| "a token or name that cannot be a subprotocol".to_owned())?;
    request
        .headers_mut()
        .insert(http::header::SEC_WEBSOCKET_PROTOCOL, protocols);
    let (socket, _) = tokio::time::timeout(timeout, tokio_tungstenite::connect_async(request))
        .await
        .map_err(|_| format!("no WebSocket within {timeout:?}"))?
        .map_err(|error| format!("WebSocket to {target}: {error}"))?;
    let (mut sink, stream) = socket.split();
    let (outbox, mut queued) = mpsc::channel(OUTBOX);
    tokio::spawn(async move {
        while let Some(message) = queued.recv().await {
            if sink.send(message).await.is_err() {
                break;
            }
        }
    });
    let events = futures::stream::unfold(Some(stream), |stream| async move {
        let mut stream = stream?;
        loop {
            let event = match stream.next().await {
                Some(Ok(Message::Binary(bytes))) if bytes.first() == Some(&SESSION_END_TAG) => {
                    let code =
                        duplex_proto::hub::ServerFrame::decode(bytes)
                            .ok()
                            .and_then(|frame| match frame.frame {
                                Some(duplex_proto::hub::server_frame::Frame::SessionEnd(end)) => {
                                    Some(end.code)
                                }
                                _ => None,
                            });
                    match code {
                        Some(0) => Event::End(Ok(())),
                        Some(code) => Event::End(Err(code_name(code).to_owned())),
                        None => Event::End(Err("WS_UNDECODABLE".to_owned())),
                    }
                }
                Some(Ok(Message::Binary(bytes))) => {
                    return Some((Event::Data(bytes), Some(stream)));
                }
                Some(Ok(Message::Close(_))) | None => Event::End(Ok(())),
                Some(Ok(_)) => continue,
                Some(Err(_)) => Event::End(Err("WS".to_owned())),
            };
            return Some((event, None));
        }
    });
    Ok((WsSender { outbox }, events.boxed_local()))
}
