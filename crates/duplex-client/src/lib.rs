//! The duplex client library: what `duplex chat` and `duplex bench` use.
//!
//! [`Client::connect`] opens one `Hub.Connect` session stream and hands back a [`Client`]
//! (cheap to clone; join, leave, publish) and an [`Events`] stream (messages, presence,
//! connection changes). One background task owns the connection. When the stream breaks —
//! network, server restart, a `shutdown` frame, or `lagged` under the `disconnect` policy —
//! it reconnects with exponential backoff and:
//!
//! - re-joins every room with `after_offset` = the last offset it delivered to you, so the
//!   server replays exactly what was missed: no gap, no duplicate (and offsets at or below
//!   what was delivered are dropped, should a server ever repeat one);
//! - re-sends every publish that was not acked yet, with the same client message id, so
//!   the server's dedupe makes it land exactly once.
//!
//! So a caller sees one uninterrupted stream per room, and each `publish` resolves once its
//! message is durable, whatever happened to the connection in between.
//!
//! Reconnects wait longer after each failed attempt (doubling from `initial_backoff` to
//! `max_backoff`, with jitter so a restarted server is not hit by every client at once).
//! A refusal that retrying cannot change — UNIMPLEMENTED (not a duplex server),
//! UNAUTHENTICATED, PERMISSION_DENIED, INVALID_ARGUMENT, FAILED_PRECONDITION — is not
//! retried: [`Client::connect`] returns it as [`ClientError::Refused`], or, once connected,
//! the session ends with [`Event::Failed`] and every waiting call gets the error.

mod connection;

use std::time::Duration;

use bytes::Bytes;
use duplex_proto::hub::{Code, CommandError, Member, Message, PresenceEvent};
use tokio::sync::{mpsc, oneshot};

use crate::connection::Request;

/// How to reach the server and how to behave on the way.
#[derive(Debug, Clone)]
pub struct ClientOptions {
    /// `HOST:PORT` or `http://HOST:PORT`.
    pub addr: String,
    /// Session name: the `sender` of what this client publishes, and its presence name.
    pub name: String,
    /// TLS settings (`https`); `None` for plaintext.
    pub tls: Option<tonic::transport::ClientTlsConfig>,
    /// A JWT sent as `authorization: Bearer <token>` on every session, for servers that
    /// require one (`duplex serve --jwt-secret-file`); the server then names the session
    /// after the token's `sub`, not `name`.
    pub token: Option<String>,
    /// Give up one connection attempt after this long.
    pub connect_timeout: Duration,
    /// First reconnect delay; doubles per failed attempt up to `max_backoff`. Each wait is
    /// drawn from the upper half of its step (jitter).
    pub initial_backoff: Duration,
    /// Longest wait between two reconnect attempts.
    pub max_backoff: Duration,
    /// Requests (join, publish, …) queued for the connection task.
    pub request_queue: usize,
    /// Send a ping this often, so the server's idle timeout never ends a quiet session.
    pub ping_interval: Duration,
    /// Events buffered for the caller; when full, the connection task stops reading the
    /// server, so HTTP/2 flow control pushes back (and the server's lag policy decides).
    pub event_queue: usize,
}

impl ClientOptions {
    /// Options for a client of the server at `addr` (`host:port` or a URL) that presents
    /// itself as `name`, with the defaults for everything else.
    pub fn new(addr: impl Into<String>, name: impl Into<String>) -> Self {
        Self {
            addr: addr.into(),
            name: name.into(),
            tls: None,
            token: None,
            connect_timeout: Duration::from_secs(5),
            initial_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(5),
            request_queue: 1024,
            ping_interval: Duration::from_secs(30),
            event_queue: 4096,
        }
    }
}

/// What the caller sees, in order.
#[derive(Debug, Clone)]
pub enum Event {
    /// A room message, in the room's order, never repeated.
    Message(Message),
    /// Someone joined or left a room this client is in.
    Presence(PresenceEvent),
    /// The connection broke (or an attempt to restore it failed); attempt number `attempt`
    /// comes after `delay`.
    Disconnected {
        /// Why the connection broke or the attempt failed.
        reason: String,
        /// The number of the next attempt, from 1.
        attempt: u32,
        /// How long the client waits before it.
        delay: Duration,
    },
    /// Connected again, and `room` re-joined: what follows resumes after `after_offset`
    /// (the last offset delivered). `members` are the others in the room now.
    Resumed {
        /// The room re-joined.
        room: String,
        /// The last offset delivered before the break; messages after it follow.
        after_offset: u64,
        /// The others present in the room now.
        members: Vec<Member>,
    },
    /// The server announced it is going away; the client will reconnect by itself.
    ServerShutdown {
        /// The reason the server gave.
        reason: String,
    },
    /// A command error not tied to a call still waiting (rare: a replay failed).
    Error(CommandError),
    /// The server refused the session for a reason retrying will not change (see
    /// [`ClientError::Refused`]). This is the last event: the client is closed.
    Failed(ClientError),
}

/// The result of a join.
#[derive(Debug, Clone)]
pub struct Joined {
    /// The room joined.
    pub room: String,
    /// The oldest offset the room still retains (0 when it retains none).
    pub earliest_offset: u64,
    /// The room's newest offset when the join was answered.
    pub last_offset: u64,
    /// The others present in the room.
    pub members: Vec<Member>,
}

/// Why a call failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ClientError {
    /// The server could not be reached (or the first session could not be opened).
    #[error("cannot connect to {addr}: {reason}")]
    Connect {
        /// The address tried.
        addr: String,
        /// Why it failed.
        reason: String,
    },
    /// The server refused the session with a status that retrying will not change:
    /// UNIMPLEMENTED, UNAUTHENTICATED, PERMISSION_DENIED, INVALID_ARGUMENT or
    /// FAILED_PRECONDITION.
    #[error("the server refused the session: {code:?}: {message}")]
    Refused {
        /// The status code of the refusal.
        code: tonic::Code,
        /// The server's message.
        message: String,
    },
    /// The server refused the command, for the reason `code` names.
    #[error("{message} ({})", code.as_str_name())]
    Command {
        /// Why the server refused it.
        code: Code,
        /// The server's message.
        message: String,
        /// For a resume from an offset retention removed: the earliest one still kept.
        earliest_offset: u64,
    },
    /// The client was closed (or failed) before the call was answered.
    #[error("the client was closed")]
    Closed,
}

/// Whether a status ending (or refusing) a session will come back the same on every retry.
pub fn is_permanent(code: tonic::Code) -> bool {
    use tonic::Code;
    matches!(
        code,
        Code::Unimplemented
            | Code::Unauthenticated
            | Code::PermissionDenied
            | Code::InvalidArgument
            | Code::FailedPrecondition
    )
}

impl From<CommandError> for ClientError {
    fn from(error: CommandError) -> Self {
        ClientError::Command {
            code: Code::try_from(error.code).unwrap_or(Code::Unknown),
            message: error.message,
            earliest_offset: error.earliest_offset,
        }
    }
}

/// The command side of a session. Cheap to clone; the connection closes when every clone
/// and the [`Events`] are dropped.
#[derive(Debug, Clone)]
pub struct Client {
    requests: mpsc::Sender<Request>,
}

/// The event side of a session. Read it (or drop it): while its buffer is full the
/// connection task waits, and so do acks and reconnects — that is the backpressure that
/// keeps a slow reader from buffering without bound.
#[derive(Debug)]
pub struct Events {
    events: mpsc::Receiver<Event>,
}

impl Events {
    /// The next event; `None` once the client is closed.
    pub async fn next(&mut self) -> Option<Event> {
        self.events.recv().await
    }
}

impl Client {
    /// Connects and opens the session, then starts the task that keeps it alive. The first
    /// connection must succeed, so a wrong address fails fast, and a permanent refusal is
    /// returned here ([`ClientError::Refused`]); a transient one (UNAVAILABLE,
    /// RESOURCE_EXHAUSTED, …) is retried with backoff, announced as [`Event::Disconnected`].
    pub async fn connect(options: ClientOptions) -> Result<(Client, Events), ClientError> {
        let (requests, requests_rx) = mpsc::channel(options.request_queue.max(1));
        let (events_tx, events) = mpsc::channel(options.event_queue.max(1));
        connection::start(options, requests_rx, events_tx).await?;
        Ok((Client { requests }, Events { events }))
    }

    async fn call<T>(
        &self,
        make: impl FnOnce(oneshot::Sender<Result<T, ClientError>>) -> Request,
    ) -> Result<T, ClientError> {
        let (reply, answer) = oneshot::channel();
        self.requests
            .send(make(reply))
            .await
            .map_err(|_| ClientError::Closed)?;
        answer.await.map_err(|_| ClientError::Closed)?
    }

    /// Joins `room`: live from now, or after `after` (replaying what is retained first).
    /// Stays joined across reconnects.
    pub async fn join(&self, room: &str, after: Option<u64>) -> Result<Joined, ClientError> {
        self.call(|reply| Request::Join {
            room: room.to_owned(),
            after,
            recent: 0,
            reply,
        })
        .await
    }

    /// Joins `room` with its latest `recent` retained messages replayed first (a chat
    /// window's backlog), then live. Stays joined across reconnects.
    pub async fn join_with_recent(&self, room: &str, recent: u32) -> Result<Joined, ClientError> {
        self.call(|reply| Request::Join {
            room: room.to_owned(),
            after: None,
            recent,
            reply,
        })
        .await
    }

    /// Leaves `room`.
    pub async fn leave(&self, room: &str) -> Result<(), ClientError> {
        self.call(|reply| Request::Leave {
            room: room.to_owned(),
            reply,
        })
        .await
    }

    /// Publishes to a joined room; resolves with the offset once the message is durable.
    /// Survives reconnects: the message is re-sent with the same id and lands once.
    pub async fn publish(
        &self,
        room: &str,
        payload: Bytes,
        content_type: &str,
    ) -> Result<u64, ClientError> {
        self.submit(room, payload, content_type, "").await?.await
    }

    /// Queues a publish (in call order: submits from one task keep their order in the room)
    /// and returns its [`Ack`] without waiting for durability, so many can be in flight.
    /// `key` is the coalescing key for `latest-per-key` subscribers (`""` for none).
    pub async fn submit(
        &self,
        room: &str,
        payload: Bytes,
        content_type: &str,
        key: &str,
    ) -> Result<Ack, ClientError> {
        let (reply, answer) = oneshot::channel();
        self.requests
            .send(Request::Publish {
                room: room.to_owned(),
                payload,
                content_type: content_type.to_owned(),
                key: key.to_owned(),
                reply,
            })
            .await
            .map_err(|_| ClientError::Closed)?;
        Ok(Ack { answer })
    }
}

/// A submitted publish: resolves with its offset once the message is durable.
#[derive(Debug)]
pub struct Ack {
    answer: oneshot::Receiver<Result<u64, ClientError>>,
}

impl std::future::Future for Ack {
    type Output = Result<u64, ClientError>;

    fn poll(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Self::Output> {
        std::pin::Pin::new(&mut self.answer)
            .poll(cx)
            .map(|answer| answer.unwrap_or(Err(ClientError::Closed)))
    }
}
