//! A WebSocket client of `/ws` on the web listener, driven frame by frame: one binary
//! message per `ClientFrame` out, one per `ServerFrame` in (tokio-tungstenite, the stack
//! axum serves with).

use std::net::SocketAddr;

use duplex_proto::hub::server_frame::Frame;
use duplex_proto::hub::{ClientFrame, SessionEnd, client_frame::Command};
use futures::{SinkExt as _, StreamExt as _};
use prost::Message as _;
use tokio::net::TcpStream;
use tokio::time::timeout;
use tokio_tungstenite::tungstenite::client::IntoClientRequest as _;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::{self, Message};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use super::STEP;
use super::session::SessionSteps;

/// The socket type of a test client.
pub(crate) type Socket = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// One `/ws` session driven by the test.
pub(crate) struct WsSession {
    pub socket: Socket,
    /// The subprotocol the server chose (`Sec-WebSocket-Protocol` of its answer).
    pub protocol: Option<String>,
    pub next_command: u64,
}

/// How a session ended: the `session_end` frame (if one came) and the close frame.
#[derive(Debug)]
pub(crate) struct Ended {
    pub end: Option<SessionEnd>,
    pub close: Option<CloseFrame>,
    /// Frames that came before the end, in order.
    pub before: Vec<Frame>,
}

impl WsSession {
    /// Sends any message as is.
    pub(crate) async fn send_raw(&mut self, message: Message) {
        timeout(STEP, self.socket.send(message))
            .await
            .expect("sent in time")
            .expect("the socket takes the message");
    }

    /// Opens `/ws` on `web` offering `protocols` (e.g. `duplex.v1`, `duplex.bearer.TOKEN`).
    pub(crate) async fn open(web: SocketAddr, protocols: &[&str]) -> Self {
        Self::try_open(web, protocols)
            .await
            .unwrap_or_else(|error| panic!("open a WebSocket to {web}: {error}"))
    }

    /// Opens `/ws`, or says why it could not.
    pub(crate) async fn try_open(
        web: SocketAddr,
        protocols: &[&str],
    ) -> Result<Self, tungstenite::Error> {
        Self::try_open_with(web, protocols, &[]).await
    }

    /// Opens `/ws` with extra request headers (`origin`, as a browser sends it).
    pub(crate) async fn try_open_with(
        web: SocketAddr,
        protocols: &[&str],
        headers: &[(&'static str, &str)],
    ) -> Result<Self, tungstenite::Error> {
        let mut request = format!("ws://{web}/ws").into_client_request()?;
        for (name, value) in headers {
            request
                .headers_mut()
                .insert(*name, value.parse().expect("a header value"));
        }
        if !protocols.is_empty() {
            request.headers_mut().insert(
                "sec-websocket-protocol",
                protocols.join(", ").parse().expect("a header value"),
            );
        }
        let (socket, response) = timeout(STEP, tokio_tungstenite::connect_async(request))
            .await
            .map_err(|_| tungstenite::Error::Io(std::io::ErrorKind::TimedOut.into()))??;
        let protocol = response
            .headers()
            .get("sec-websocket-protocol")
            .map(|v| v.to_str().unwrap_or_default().to_owned());
        Ok(Self {
            socket,
            protocol,
            next_command: 1,
        })
    }

    /// Reads until the server closes (within [`STEP`]): the frames before, the
    /// `session_end`, the close frame. Panics if the socket stays open.
    pub(crate) async fn ended(mut self) -> Ended {
        let mut ended = Ended {
            end: None,
            close: None,
            before: Vec::new(),
        };
        loop {
            let message = timeout(STEP, self.socket.next())
                .await
                .expect("the server closes in time");
            match message {
                Some(Ok(Message::Binary(bytes))) => {
                    let frame = duplex_proto::hub::ServerFrame::decode(bytes)
                        .expect("one ServerFrame per message")
                        .frame
                        .expect("frame set");
                    match frame {
                        Frame::SessionEnd(end) => ended.end = Some(end),
                        frame => ended.before.push(frame),
                    }
                }
                Some(Ok(Message::Close(close))) => {
                    ended.close = close;
                    // Let the client finish the closing handshake.
                    let _ = timeout(STEP, self.socket.next()).await;
                    return ended;
                }
                Some(Ok(_)) => {}
                Some(Err(_)) | None => return ended,
            }
        }
    }
}

impl SessionSteps for WsSession {
    /// Sends one command; returns its id.
    async fn send(&mut self, command: Command) -> u64 {
        let command_id = self.next_command;
        self.next_command += 1;
        let frame = ClientFrame {
            command_id,
            command: Some(command),
        };
        self.send_raw(Message::Binary(frame.encode_to_vec().into()))
            .await;
        command_id
    }

    /// The next `ServerFrame` (pings skipped); panics at a close or after [`STEP`].
    async fn next(&mut self) -> Frame {
        loop {
            let message = timeout(STEP, self.socket.next())
                .await
                .expect("a frame in time")
                .expect("the socket open")
                .expect("the socket healthy");
            match message {
                Message::Binary(bytes) => {
                    return duplex_proto::hub::ServerFrame::decode(bytes)
                        .expect("one ServerFrame per message")
                        .frame
                        .expect("frame set");
                }
                Message::Ping(_) | Message::Pong(_) => continue,
                other => panic!("expected a binary frame, got {other:?}"),
            }
        }
    }
}
