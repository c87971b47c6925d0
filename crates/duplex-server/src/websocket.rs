//! `/ws` on the web listener: a `Hub.Connect` session over a WebSocket, for browsers (which
//! cannot stream both ways over gRPC-Web). One binary WebSocket message carries one protobuf
//! `duplex.v1.ClientFrame` in, or one `duplex.v1.ServerFrame` out; the session behind it is
//! the one `Hub.Connect` opens (`Hub::open_session_from`): the same queue and its budgets,
//! lag policy, idle timeout, per-room rights and `shutdown` frame before the connection's
//! maximum age.
//!
//! The convention, as a client sees it:
//!
//! - **Auth** rides in `Sec-WebSocket-Protocol`, never in the URL (URLs end up in logs):
//!   offer `duplex.v1` and, with a token, `duplex.bearer.<JWT>` (a JWT is base64url and dots,
//!   all legal in a subprotocol name); an anonymous client may offer `duplex.name.<name>`
//!   for its presence name. The server echoes back only `duplex.v1`. An `authorization:
//!   Bearer` header (non-browser clients) works as well; the subprotocol wins.
//! - **End of session**: what gRPC sends as grpc-status and grpc-message travels in a last
//!   `ServerFrame` `session_end` (a close frame's reason holds 123 bytes at most), then the
//!   server closes: 1001 when the server goes away (connection age, shutdown: the hub's
//!   `shutdown` frame comes first), 1003 for a text message, 1007 for a binary message that
//!   is not a `ClientFrame`, 1009 for a message over `--max-message-size`, 1008 for any
//!   other failure (bad token, lagged, idle), 1011 for an internal error. The close reason
//!   is the code's name. A token the server refuses gets `session_end`
//!   UNAUTHENTICATED and 1008. A client that closes first gets its close answered at once
//!   (RFC 6455: nothing may follow it), so no `session_end`; its publishes already acked
//!   are stored, the others may or may not be.
//!
//! Bounds: a message and a frame at most `--max-message-size` either way; tungstenite's read
//! buffer starts at [`READ_BUFFER_BYTES`] (it grows with a message) so an idle socket stays
//! small; its write buffer holds at most [`WRITE_BUFFER_BYTES`] plus one message (see
//! [`max_write_buffer`]). Frames are fed to the socket as long as the session's queue has
//! them ready (at most [`FEED_BATCH`]), then flushed once; a flush that makes no progress for
//! `--send-stall-timeout` drops the connection, so a client that never reads holds a queue,
//! one write buffer and its socket buffers, no more.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade, close_code};
use axum::extract::{Extension, State};
use axum::response::Response;
use bytes::Bytes;
use duplex_hub::{Code, Frame, Hub, HubError, Identity, Outbound, QueueBudgets, SessionOrigin};
use duplex_proto::hub::{ClientFrame, ServerFrame, SessionEnd, server_frame};
use futures::stream::{SplitSink, SplitStream};
use futures::{FutureExt as _, SinkExt as _, Stream, StreamExt as _};
use http::{HeaderMap, HeaderValue};
use prost::Message as _;
use tokio::sync::oneshot;
use tracing::debug;

use crate::app::App;
use crate::auth::{AuthError, Authenticator, NAME_HEADER};
use crate::config::ServeConfig;
use crate::guard::ConnectionInfo;
use crate::hub_service::rotation_instant;
use crate::web::ConnectionHold;

/// The subprotocol a client offers and the server echoes back.
pub(crate) const SUBPROTOCOL: &str = "duplex.v1";

/// A subprotocol offered with this prefix carries the client's bearer token (a JWT).
pub(crate) const BEARER_PREFIX: &str = "duplex.bearer.";

/// A subprotocol offered with this prefix names an anonymous client in presence.
pub(crate) const NAME_PREFIX: &str = "duplex.name.";

/// Initial size of a socket's read buffer. tungstenite allocates 128 KiB by default per
/// socket up front; a message larger than this grows the buffer as it arrives, so starting
/// small costs a busy socket a few reallocations and spares every idle one 124 KiB.
const READ_BUFFER_BYTES: usize = 4 * 1024;

/// Bytes the writer gathers before it writes to the socket unasked (a flush writes them
/// anyway). A batch of small frames then costs one write, not one per frame.
const WRITE_BUFFER_BYTES: usize = 64 * 1024;

/// Frames fed to the socket at most before one flush, so a steady queue still reaches the
/// client in bounded batches.
const FEED_BATCH: usize = 256;

/// How long the server waits for a closing client: for the session to hand back the socket's
/// read half, to write `session_end` and the close, and for the client's close in reply.
const CLOSE_LINGER: Duration = Duration::from_secs(2);

/// The write buffer's hard bound: the batch size plus one whole message and its frame
/// header (14 bytes at most). tungstenite (like axum) leaves it unlimited by default, but
/// the buffer only exceeds [`WRITE_BUFFER_BYTES`] by the message being fed, since a full
/// buffer makes the next feed wait for the socket; the bound makes sure of it, so what a
/// non-reading client pins here is one buffer, and the rest waits in the session's queue,
/// where the lag policy applies.
fn max_write_buffer(max_message_size: usize) -> usize {
    WRITE_BUFFER_BYTES
        .saturating_add(max_message_size)
        .saturating_add(14)
}

/// What `/ws` needs to open sessions: cheap to clone, one per router.
#[derive(Clone, Debug)]
pub(crate) struct WebSocketSessions {
    /// The engine the sessions run in.
    hub: Hub,
    /// The token check the gRPC port applies.
    auth: Arc<Authenticator>,
    /// `--max-message-size`: the largest message and frame either way.
    max_message_size: usize,
    /// `--max-connection-age` (none when 0): sessions get `shutdown` just before it.
    max_connection_age: Option<Duration>,
    /// Age + `--max-connection-age-grace` (none without an age): then the socket is closed
    /// (1001), as the guard cuts a gRPC connection.
    hard_close_after: Option<Duration>,
    /// `--send-stall-timeout` (none when 0): a write that makes no progress this long drops
    /// the connection.
    send_stall_timeout: Option<Duration>,
    /// The server's drain signal, and the count of open sockets it waits for.
    drain: SocketDrain,
    /// Auth failures are counted here as on the gRPC port.
    counters: Arc<crate::metrics::ServerCounters>,
    /// `--cors-origin`: pages from these origins may open sessions, besides pages the web
    /// listener serves itself.
    allowed_origins: Arc<[String]>,
}

/// How WebSockets take part in a graceful shutdown: each watches `graceful` and, once it
/// turns true, sends what its session has queued (the hub's `shutdown` frame among it),
/// then `session_end` UNAVAILABLE and close 1001; the web listener waits for `open` to
/// reach zero (within the grace period) before the server exits.
#[derive(Clone, Debug)]
pub(crate) struct SocketDrain {
    /// Turns true when the server starts draining.
    pub(crate) graceful: tokio::sync::watch::Receiver<bool>,
    /// The sockets still open.
    pub(crate) open: Arc<OpenSockets>,
}

/// A count of open WebSockets that can be waited on to reach zero.
#[derive(Debug, Default)]
pub(crate) struct OpenSockets {
    /// Sockets open now.
    count: std::sync::atomic::AtomicUsize,
    /// Woken when the count reaches zero.
    none_open: tokio::sync::Notify,
}

impl OpenSockets {
    /// Counts one more open socket until the guard is dropped.
    fn hold(self: &Arc<Self>) -> OpenSocket {
        self.count.fetch_add(1, std::sync::atomic::Ordering::AcqRel);
        OpenSocket(self.clone())
    }

    /// Returns once no socket is open.
    pub(crate) async fn all_closed(&self) {
        loop {
            let notified = self.none_open.notified();
            let mut notified = std::pin::pin!(notified);
            notified.as_mut().enable();
            if self.count.load(std::sync::atomic::Ordering::Acquire) == 0 {
                return;
            }
            notified.await;
        }
    }
}

/// One open socket's place in [`OpenSockets`].
#[derive(Debug)]
struct OpenSocket(Arc<OpenSockets>);

impl Drop for OpenSocket {
    fn drop(&mut self) {
        if self
            .0
            .count
            .fetch_sub(1, std::sync::atomic::Ordering::AcqRel)
            == 1
        {
            self.0.none_open.notify_waiters();
        }
    }
}

/// The `/ws` route over `app`'s hub and auth, bounded by `config`.
pub(crate) fn routes(app: &App, config: &ServeConfig, drain: SocketDrain) -> axum::Router {
    let sessions = WebSocketSessions {
        hub: app.hub().clone(),
        auth: app.auth().clone(),
        max_message_size: config.max_message_size,
        max_connection_age: config.max_connection_age(),
        hard_close_after: config.connection_limits().hard_close_after,
        send_stall_timeout: Some(config.send_stall_timeout).filter(|t| !t.is_zero()),
        drain,
        counters: app.metrics().counters().clone(),
        allowed_origins: config.cors_origins.clone().into(),
    };
    axum::Router::new()
        .route("/ws", axum::routing::any(upgrade))
        .with_state(sessions)
}

/// Accepts the WebSocket (the token is checked after the upgrade, so the refusal reaches a
/// browser as a `session_end` it can read, not an HTTP status it cannot) and runs the
/// session on it. A page from another site is refused first (403), see [`origin_allowed`].
async fn upgrade(
    State(sessions): State<WebSocketSessions>,
    upgrade: WebSocketUpgrade,
    info: Option<Extension<ConnectionInfo>>,
    budgets: Option<Extension<QueueBudgets>>,
    hold: Option<Extension<ConnectionHold>>,
    uri: http::Uri,
    headers: HeaderMap,
) -> Response {
    use axum::response::IntoResponse as _;
    let info = info.map(|Extension(info)| info);
    let peer = info.and_then(|info| info.remote);
    if !origin_allowed(&headers, &uri, &sessions.allowed_origins) {
        tracing::warn!(
            peer = peer.map(tracing::field::display),
            origin = ?headers.get(http::header::ORIGIN),
            "websocket refused: a page from another origin"
        );
        return (
            http::StatusCode::FORBIDDEN,
            "a page from this origin may not open sessions here (see --cors-origin)\n",
        )
            .into_response();
    }
    let identity = sessions.identify(&headers, peer);
    let origin = SessionOrigin {
        budgets: budgets.map(|Extension(b)| b).unwrap_or_default(),
        peer,
    };
    let max = sessions.max_message_size;
    let hold = hold.map(|Extension(hold)| hold);
    let open = sessions.drain.open.hold();
    upgrade
        .protocols([SUBPROTOCOL])
        .read_buffer_size(READ_BUFFER_BYTES)
        .write_buffer_size(WRITE_BUFFER_BYTES)
        .max_write_buffer_size(max_write_buffer(max))
        .max_message_size(max)
        .max_frame_size(max)
        .on_upgrade(move |socket| async move {
            let started = std::time::Instant::now();
            let reason = sessions.run(socket, identity, origin, info).await;
            // The web connection's own `closed` line came at the upgrade; this is the end.
            tracing::info!(
                peer = peer.map(tracing::field::display),
                duration_ms = crate::server::millis(started.elapsed()),
                reason,
                "websocket closed"
            );
            // The connection counts against the listener's limits until the socket is gone.
            drop(hold);
            drop(open);
        })
}

/// Whether the page that opens this WebSocket may: browsers send `Origin` and let any page
/// open a WebSocket anywhere, so without this check a site the user visits could use the
/// user's browser (and its network position: a server on localhost with auth off) to read
/// and write rooms. Allowed: no `Origin` (not a browser), the listener's own origin (the
/// page it serves), and each `--cors-origin`.
fn origin_allowed(headers: &HeaderMap, uri: &http::Uri, allowed: &[String]) -> bool {
    let Some(origin) = headers.get(http::header::ORIGIN) else {
        return true;
    };
    let Ok(origin) = origin.to_str() else {
        return false;
    };
    if allowed.iter().any(|allowed| allowed == origin) {
        return true;
    }
    // HTTP/1.1 names the listener in `Host`, HTTP/2's extended CONNECT in `:authority`.
    let host = headers
        .get(http::header::HOST)
        .and_then(|host| host.to_str().ok())
        .or_else(|| uri.authority().map(|authority| authority.as_str()));
    let origin_host = origin
        .strip_prefix("http://")
        .or_else(|| origin.strip_prefix("https://"));
    origin_host.is_some() && origin_host == host
}

/// The subprotocols a client offered, in order.
fn offered_protocols(headers: &HeaderMap) -> impl Iterator<Item = &str> {
    headers
        .get_all(http::header::SEC_WEBSOCKET_PROTOCOL)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .map(str::trim)
}

/// The headers `auth::identify` reads, from the request's own and the offered subprotocols
/// (which win): `authorization: Bearer <token>` and `duplex-name`.
fn auth_metadata(headers: &HeaderMap) -> HeaderMap {
    let mut metadata = HeaderMap::new();
    for name in [http::header::AUTHORIZATION.as_str(), NAME_HEADER] {
        if let Some(value) = headers.get(name) {
            metadata.insert(name, value.clone());
        }
    }
    for offered in offered_protocols(headers) {
        if let Some(token) = offered.strip_prefix(BEARER_PREFIX) {
            // A subprotocol is a header token already, so this cannot fail; if it did, the
            // token stays absent and the check answers as for no token.
            if let Ok(value) = HeaderValue::from_str(&format!("Bearer {token}")) {
                metadata.insert(http::header::AUTHORIZATION, value);
            }
        } else if let Some(name) = offered.strip_prefix(NAME_PREFIX)
            && let Ok(value) = HeaderValue::from_str(name)
        {
            metadata.insert(NAME_HEADER, value);
        }
    }
    metadata
}

impl WebSocketSessions {
    /// The caller's identity, checked and counted as on the gRPC port
    /// ([`identify_caller`](crate::hub_service::identify_caller)).
    fn identify(
        &self,
        headers: &HeaderMap,
        peer: Option<std::net::SocketAddr>,
    ) -> Result<Identity, AuthError> {
        crate::hub_service::identify_caller(
            &self.auth,
            &self.counters,
            &auth_metadata(headers),
            peer,
        )
    }

    /// One WebSocket: the session's commands from the socket, its frames to it, and the
    /// `session_end` and close when it ends. Returns why it ended, for the log: the end
    /// status's name, or `client gone` when nothing more could be written.
    async fn run(
        self,
        socket: WebSocket,
        identity: Result<Identity, AuthError>,
        origin: SessionOrigin,
        info: Option<ConnectionInfo>,
    ) -> &'static str {
        let (mut sink, stream) = socket.split();
        let identity = match identity {
            Ok(identity) => identity,
            Err(error) => {
                let ending = Ending::status(Code::Unauthenticated, error.to_string());
                close(&mut sink, Some(stream), &ending).await;
                return ending.code.as_str_name();
            }
        };
        let (mut session, outbound) = self.hub.open_session_from(identity, origin);
        let rotate_at = rotation_instant(self.max_connection_age, info);
        if let Some(at) = rotate_at {
            session.rotate_at(at);
        }
        // After age + grace the connection goes, as on the gRPC port (GOAWAY, then the cut).
        let cut_at = match (self.hard_close_after, info) {
            (Some(after), Some(info)) => {
                Some(tokio::time::Instant::from_std(info.accepted_at + after))
            }
            _ => None,
        };
        let (handed_back, returned) = oneshot::channel();
        let inbound = ClientFrames {
            socket: Some(stream),
            violation: None,
            hand_back: Some(handed_back),
        };
        // One task reads commands (as for `Hub.Connect`); this one writes.
        tokio::spawn(session.drive(inbound));
        let ending = send_frames(
            &mut sink,
            outbound,
            self.send_stall_timeout,
            cut_at,
            self.drain.graceful.clone(),
        )
        .await;
        let Some(mut ending) = ending else {
            debug!("websocket: the client is gone or stopped reading");
            return "client gone";
        };
        // The session hands back the read half (and what the client did wrong, if it did)
        // as it ends, which it does right after its outbound side.
        let stream = match tokio::time::timeout(CLOSE_LINGER, returned).await {
            Ok(Ok(ReadHalf { stream, violation })) => {
                if let Some(violation) = violation {
                    ending.close_code = violation;
                }
                stream
            }
            _ => None,
        };
        close(&mut sink, stream, &ending).await;
        ending.code.as_str_name()
    }
}

/// How a session ended, as the client is told.
#[derive(Debug)]
struct Ending {
    /// The status `session_end` carries.
    code: Code,
    /// Its words.
    message: String,
    /// The WebSocket close code.
    close_code: u16,
}

impl Ending {
    /// The ending for a status, with the close code it maps to (see the module doc).
    fn status(code: Code, message: String) -> Self {
        let close_code = match code {
            Code::Ok => close_code::NORMAL,
            Code::Unavailable => close_code::AWAY,
            Code::Internal | Code::Unknown | Code::DataLoss => close_code::ERROR,
            _ => close_code::POLICY,
        };
        Self {
            code,
            message,
            close_code,
        }
    }

    fn from_error(error: &HubError) -> Self {
        Self::status(error.code(), error.to_string())
    }
}

/// Writes the session's frames until its outbound stream ends: feeds every frame ready (at
/// most [`FEED_BATCH`]), then flushes once. Returns how the session ended, or `None` when
/// the socket failed or made no progress for `stall` (nothing more can be written then).
async fn send_frames(
    sink: &mut SplitSink<WebSocket, Message>,
    mut outbound: Outbound,
    stall: Option<Duration>,
    cut_at: Option<tokio::time::Instant>,
    mut graceful: tokio::sync::watch::Receiver<bool>,
) -> Option<Ending> {
    let draining = || {
        Ending::status(
            Code::Unavailable,
            "the server is shutting down: reconnect and resume".to_owned(),
        )
    };
    loop {
        // Draining: one last batch of what is queued now (the hub's `shutdown` frame among
        // it), then the end, so a session whose queue never empties ends too (the
        // `select!` below sees the signal only when the queue is empty).
        let last_batch = *graceful.borrow();
        let first = if last_batch {
            match outbound.next().now_or_never() {
                Some(next) => next,
                None => return Some(draining()),
            }
        } else {
            tokio::select! {
                // Frames first: the hub queues its `shutdown` frame before the drain starts.
                biased;
                next = outbound.next() => next,
                _ = graceful.wait_for(|&draining| draining) => return Some(draining()),
                () = sleep_until(cut_at) => return Some(Ending::status(
                    Code::Unavailable,
                    "the connection reached its maximum age (--max-connection-age): reconnect \
                     and resume"
                        .to_owned(),
                )),
            }
        };
        let mut ended = None;
        let batch = async {
            let mut next = first;
            let mut fed = 0;
            loop {
                match next {
                    Some(Ok(frame)) => {
                        sink.feed(Message::Binary(frame_bytes(frame))).await?;
                        fed += 1;
                    }
                    Some(Err(error)) => {
                        ended = Some(Ending::from_error(&error));
                        break;
                    }
                    None => {
                        ended = Some(Ending::status(Code::Ok, String::new()));
                        break;
                    }
                }
                if fed >= FEED_BATCH {
                    break;
                }
                match outbound.next().now_or_never() {
                    Some(ready) => next = ready,
                    None => break,
                }
            }
            sink.flush().await
        };
        let written = match stall {
            Some(stall) => tokio::time::timeout(stall, batch).await.ok()?,
            None => batch.await,
        };
        if written.is_err() {
            return None;
        }
        if ended.is_some() {
            return ended;
        }
        if last_batch {
            return Some(draining());
        }
    }
}

/// Sleeps until `at`, or forever.
async fn sleep_until(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// A frame as the bytes of a WebSocket message, without copying it.
fn frame_bytes(frame: Frame) -> Bytes {
    Bytes::from_owner(FrameBytes(frame))
}

/// A frame as an owner of bytes.
struct FrameBytes(Frame);

impl AsRef<[u8]> for FrameBytes {
    fn as_ref(&self) -> &[u8] {
        &self.0
    }
}

/// Sends `session_end` and the close, then reads what the client still sends until its own
/// close (or [`CLOSE_LINGER`]), so the socket closes cleanly rather than with a reset.
async fn close(
    sink: &mut SplitSink<WebSocket, Message>,
    stream: Option<SplitStream<WebSocket>>,
    ending: &Ending,
) {
    let end = ServerFrame {
        frame: Some(server_frame::Frame::SessionEnd(SessionEnd {
            code: ending.code as i32,
            message: ending.message.clone(),
        })),
    };
    let close = CloseFrame {
        code: ending.close_code,
        reason: ending.code.as_str_name().into(),
    };
    let sent = tokio::time::timeout(CLOSE_LINGER, async {
        sink.feed(Message::Binary(end.encode_to_vec().into()))
            .await?;
        sink.send(Message::Close(Some(close))).await
    })
    .await;
    if !matches!(sent, Ok(Ok(()))) {
        return;
    }
    if let Some(mut stream) = stream {
        let _ = tokio::time::timeout(CLOSE_LINGER, async {
            while let Some(Ok(message)) = stream.next().await {
                if matches!(message, Message::Close(_)) {
                    break;
                }
            }
        })
        .await;
    }
}

/// The read half, handed back to the writer when the session lets go of it.
struct ReadHalf {
    /// The socket's read half, if the session still had it.
    stream: Option<SplitStream<WebSocket>>,
    /// The close code for what the client did wrong, if that ended the session.
    violation: Option<u16>,
}

/// The session's inbound side: one `ClientFrame` per binary message. A text message, a
/// message that does not decode, or one over the size limit ends it with an error (the
/// session's end status) and records the close code for the writer.
struct ClientFrames {
    /// The socket's read half; `None` once the stream has ended.
    socket: Option<SplitStream<WebSocket>>,
    /// The close code of the client's protocol violation, once there was one.
    violation: Option<u16>,
    /// Where the read half goes when the session drops this stream.
    hand_back: Option<oneshot::Sender<ReadHalf>>,
}

impl ClientFrames {
    /// Ends the stream for a violation: the error the session ends with.
    fn violation(&mut self, close: u16, code: Code, message: String) -> HubError {
        self.violation = Some(close);
        HubError::Inbound(code, message)
    }
}

impl Stream for ClientFrames {
    type Item = Result<ClientFrame, HubError>;

    fn poll_next(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Self::Item>> {
        use std::task::Poll;
        let this = &mut *self;
        if this.violation.is_some() {
            return Poll::Ready(None);
        }
        let Some(socket) = this.socket.as_mut() else {
            return Poll::Ready(None);
        };
        loop {
            let error = match std::task::ready!(socket.poll_next_unpin(cx)) {
                Some(Ok(Message::Binary(bytes))) => match ClientFrame::decode(bytes) {
                    Ok(frame) => return Poll::Ready(Some(Ok(frame))),
                    Err(error) => this.violation(
                        close_code::INVALID,
                        Code::InvalidArgument,
                        format!("a binary message is not a duplex.v1.ClientFrame: {error}"),
                    ),
                },
                Some(Ok(Message::Text(_))) => this.violation(
                    close_code::UNSUPPORTED,
                    Code::InvalidArgument,
                    "text messages are not accepted: send each duplex.v1.ClientFrame as one \
                     binary message"
                        .to_owned(),
                ),
                Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
                // The client closed its side: the session sends what is pending and ends OK.
                Some(Ok(Message::Close(_))) | None => return Poll::Ready(None),
                Some(Err(error)) if too_large(&error) => this.violation(
                    close_code::SIZE,
                    Code::ResourceExhausted,
                    format!("a message is over the server's limit: {error}"),
                ),
                Some(Err(error)) => {
                    HubError::Inbound(Code::Cancelled, format!("the WebSocket failed: {error}"))
                }
            };
            return Poll::Ready(Some(Err(error)));
        }
    }
}

impl Drop for ClientFrames {
    fn drop(&mut self) {
        if let Some(hand_back) = self.hand_back.take() {
            let _ = hand_back.send(ReadHalf {
                stream: self.socket.take(),
                violation: self.violation,
            });
        }
    }
}

/// Whether a read failed because a message or frame is over the size limit.
fn too_large(error: &axum::Error) -> bool {
    use std::error::Error as _;
    let mut source = error.source();
    while let Some(cause) = source {
        if let Some(tungstenite::Error::Capacity(_)) = cause.downcast_ref::<tungstenite::Error>() {
            return true;
        }
        source = cause.source();
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_token_and_name_come_from_the_offered_subprotocols() {
        let mut headers = HeaderMap::new();
        headers.insert(
            http::header::SEC_WEBSOCKET_PROTOCOL,
            HeaderValue::from_static("duplex.v1, duplex.bearer.aaa.bbb.ccc, duplex.name.ann"),
        );
        let metadata = auth_metadata(&headers);
        assert_eq!(metadata["authorization"], "Bearer aaa.bbb.ccc");
        assert_eq!(metadata[NAME_HEADER], "ann");
    }

    #[test]
    fn endings_map_to_close_codes() {
        assert_eq!(
            Ending::status(Code::Ok, String::new()).close_code,
            close_code::NORMAL
        );
        assert_eq!(
            Ending::status(Code::Unauthenticated, String::new()).close_code,
            close_code::POLICY
        );
        assert_eq!(
            Ending::status(Code::Unavailable, String::new()).close_code,
            close_code::AWAY
        );
        assert!(max_write_buffer(4 << 20) > (4 << 20) + WRITE_BUFFER_BYTES);
    }
}
