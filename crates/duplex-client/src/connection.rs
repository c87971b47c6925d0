//! The task that owns a client's connection: sends commands, reads frames, and on any
//! break reconnects with backoff, re-joins each room after the last offset delivered, and
//! re-sends unacked publishes under their original client message ids.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use duplex_proto::hub::client_frame::Command;
use duplex_proto::hub::hub_client::HubClient;
use duplex_proto::hub::server_frame::Frame;
use duplex_proto::hub::{ClientFrame, Join, Leave, Publish, ServerFrame};
use tokio::sync::{mpsc, oneshot};
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::{Channel, Endpoint};
use tracing::debug;

use crate::{ClientError, ClientOptions, Event, Joined, is_permanent};

/// A session that served this long before breaking counts as having worked: the backoff
/// starts again from `initial_backoff`.
const STABLE_SESSION: std::time::Duration = std::time::Duration::from_secs(10);

/// An open `Hub.Connect` call: frames to the server, and the server's frames.
struct Session {
    frames: mpsc::Sender<ClientFrame>,
    stream: tonic::Streaming<ServerFrame>,
}

/// A call from a [`crate::Client`] to the connection task.
pub(crate) enum Request {
    Join {
        room: String,
        after: Option<u64>,
        recent: u32,
        reply: oneshot::Sender<Result<Joined, ClientError>>,
    },
    Leave {
        room: String,
        reply: oneshot::Sender<Result<(), ClientError>>,
    },
    Publish {
        room: String,
        payload: Bytes,
        content_type: String,
        key: String,
        reply: oneshot::Sender<Result<u64, ClientError>>,
    },
}

/// A command sent and not yet answered, kept to answer it or send it again.
enum Pending {
    Join {
        room: String,
        after: Option<u64>,
        recent: u32,
        reply: oneshot::Sender<Result<Joined, ClientError>>,
    },
    /// A re-join after a reconnect; nobody waits for it.
    Rejoin { room: String },
    Leave {
        room: String,
        reply: oneshot::Sender<Result<(), ClientError>>,
    },
    Publish {
        publish: Publish,
        reply: oneshot::Sender<Result<u64, ClientError>>,
    },
}

impl Pending {
    fn command(&self) -> Option<Command> {
        match self {
            Pending::Join {
                room,
                after,
                recent,
                ..
            } => Some(Command::Join(Join {
                room: room.clone(),
                after_offset: *after,
                hidden: false,
                replay_last: *recent,
            })),
            Pending::Leave { room, .. } => Some(Command::Leave(Leave { room: room.clone() })),
            Pending::Publish { publish, .. } => Some(Command::Publish(publish.clone())),
            // Re-joins are re-created from the room table on each connection.
            Pending::Rejoin { .. } => None,
        }
    }
}

/// Why one session stream ended.
enum SessionEnd {
    /// Every `Client` was dropped.
    ClientClosed,
    /// The stream broke; reconnect.
    Broken(String),
    /// The server ended the session with a status retrying cannot change (e.g. the token
    /// expired: UNAUTHENTICATED).
    Failed(tonic::Status),
}

/// A wait drawn from the upper half of `step`, so clients that lost the same server do not
/// all come back at the same instant.
fn jitter(step: std::time::Duration) -> std::time::Duration {
    use std::hash::BuildHasher as _;
    // A randomly keyed hasher is randomness enough for spreading reconnects.
    let random = std::collections::hash_map::RandomState::new().hash_one(std::time::Instant::now());
    let half = step / 2;
    let nanos = u64::try_from(half.as_nanos()).unwrap_or(u64::MAX);
    half + std::time::Duration::from_nanos(if nanos == 0 { 0 } else { random % (nanos + 1) })
}

struct Connection {
    options: ClientOptions,
    endpoint: Endpoint,
    /// Joined rooms → last offset delivered to the caller.
    rooms: HashMap<String, u64>,
    /// Unanswered commands by command id (ordered, so they are re-sent in order).
    pending: BTreeMap<u64, Pending>,
    next_command: u64,
    /// Prefix of this client's message ids, unique per client.
    id_prefix: String,
    next_message: u64,
    /// `authorization` metadata from `options.token`, checked once.
    authorization: Option<tonic::metadata::MetadataValue<tonic::metadata::Ascii>>,
    /// The wait a `shutdown` frame asked for before reconnecting.
    retry_after: Option<std::time::Duration>,
    /// Attempts to restore the session since it last worked; sets the backoff.
    failed_attempts: u32,
    events: mpsc::Sender<Event>,
}

pub(crate) async fn start(
    options: ClientOptions,
    requests: mpsc::Receiver<Request>,
    events: mpsc::Sender<Event>,
) -> Result<(), ClientError> {
    let url = if options.addr.contains("://") {
        options.addr.clone()
    } else if options.tls.is_some() {
        format!("https://{}", options.addr)
    } else {
        format!("http://{}", options.addr)
    };
    let connect_error = |reason: String| ClientError::Connect {
        addr: options.addr.clone(),
        reason,
    };
    let mut endpoint = Endpoint::from_shared(url)
        .map_err(|e| connect_error(e.to_string()))?
        .connect_timeout(options.connect_timeout)
        .tcp_nodelay(true);
    if let Some(tls) = options.tls.clone() {
        endpoint = endpoint
            .tls_config(tls)
            .map_err(|e| connect_error(error_chain(&e)))?;
    }
    let authorization =
        match &options.token {
            Some(token) => Some(format!("Bearer {}", token.trim()).parse().map_err(|_| {
                connect_error("the token has characters a header cannot carry".into())
            })?),
            None => None,
        };
    let channel = endpoint
        .connect()
        .await
        .map_err(|e| connect_error(error_chain(&e)))?;
    let started = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_nanos();
    let mut connection = Connection {
        id_prefix: format!("{}-{:x}-{:x}", options.name, std::process::id(), started),
        options,
        endpoint,
        authorization,
        rooms: HashMap::new(),
        pending: BTreeMap::new(),
        next_command: 1,
        next_message: 0,
        retry_after: None,
        failed_attempts: 0,
        events,
    };
    // The first session is opened here, so a refusal reaches the caller of `connect`.
    let first = match connection.open(channel).await {
        Ok(session) => Ok(session),
        Err(status) if is_permanent(status.code()) => return Err(refusal(&status)),
        Err(status) => Err(describe(&status)),
    };
    tokio::spawn(connection.run(first, requests));
    Ok(())
}

/// A status as a line for the user: its code's name and its message.
fn describe(status: &tonic::Status) -> String {
    format!("{:?}: {}", status.code(), status.message())
}

fn refusal(status: &tonic::Status) -> ClientError {
    ClientError::Refused {
        code: status.code(),
        message: status.message().to_owned(),
    }
}

/// An error and its causes on one line, each said once (transport errors repeat their
/// source's text in their own).
fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}

impl Connection {
    async fn run(mut self, first: Result<Session, String>, mut requests: mpsc::Receiver<Request>) {
        let mut opened = first;
        loop {
            let reason = match opened {
                Ok(session) => {
                    let started = std::time::Instant::now();
                    match self.serve(session, &mut requests).await {
                        SessionEnd::ClientClosed => return,
                        SessionEnd::Failed(status) => return self.fail(&status).await,
                        SessionEnd::Broken(reason) => {
                            if started.elapsed() >= STABLE_SESSION {
                                self.failed_attempts = 0;
                            }
                            reason
                        }
                    }
                }
                Err(reason) => reason,
            };
            opened = match self.reconnect(reason, &mut requests).await {
                Some(session) => Ok(session),
                None => return,
            };
        }
    }

    /// Waits out the backoff (queuing new requests meanwhile) and tries again, until a
    /// session opens (`Some`), the server refuses for good or the client is closed (`None`).
    async fn reconnect(
        &mut self,
        mut reason: String,
        requests: &mut mpsc::Receiver<Request>,
    ) -> Option<Session> {
        loop {
            self.failed_attempts = self.failed_attempts.saturating_add(1);
            let attempt = self.failed_attempts;
            let step = self
                .options
                .initial_backoff
                .saturating_mul(1 << (attempt - 1).min(16))
                .min(self.options.max_backoff);
            let backoff = jitter(step);
            let delay = self
                .retry_after
                .take()
                .map_or(backoff, |asked| asked.max(backoff));
            debug!(%reason, attempt, ?delay, "session broke; reconnecting");
            self.emit(Event::Disconnected {
                reason: reason.clone(),
                attempt,
                delay,
            })
            .await;
            let sleep = tokio::time::sleep(delay);
            tokio::pin!(sleep);
            loop {
                tokio::select! {
                    () = &mut sleep => break,
                    request = requests.recv() => match request {
                        // Queued as pending: sent when the next session starts.
                        Some(request) => {
                            self.accept(request);
                        }
                        None => return None,
                    },
                }
            }
            let channel = match self.endpoint.connect().await {
                Ok(channel) => channel,
                Err(error) => {
                    reason = error_chain(&error);
                    continue;
                }
            };
            match self.open(channel).await {
                Ok(session) => return Some(session),
                Err(status) if is_permanent(status.code()) => {
                    self.fail(&status).await;
                    return None;
                }
                Err(status) => reason = describe(&status),
            }
        }
    }

    /// Ends the client for good: every waiting call and the event stream get the refusal.
    async fn fail(&mut self, status: &tonic::Status) {
        debug!(code = ?status.code(), "session refused; not retrying");
        for (_, pending) in std::mem::take(&mut self.pending) {
            match pending {
                Pending::Join { reply, .. } => {
                    let _ = reply.send(Err(refusal(status)));
                }
                Pending::Leave { reply, .. } => {
                    let _ = reply.send(Err(refusal(status)));
                }
                Pending::Publish { reply, .. } => {
                    let _ = reply.send(Err(refusal(status)));
                }
                Pending::Rejoin { .. } => {}
            }
        }
        self.emit(Event::Failed(refusal(status))).await;
    }

    /// Opens a `Hub.Connect` call: `Err` carries the status the server refused it with.
    async fn open(&mut self, channel: Channel) -> Result<Session, tonic::Status> {
        let (frames, frames_rx) = mpsc::channel(self.options.request_queue.max(16));
        let mut request = tonic::Request::new(ReceiverStream::new(frames_rx));
        if let Ok(name) = self.options.name.parse() {
            request.metadata_mut().insert("duplex-name", name);
        }
        if let Some(authorization) = &self.authorization {
            request
                .metadata_mut()
                .insert("authorization", authorization.clone());
        }
        let stream = HubClient::new(channel).connect(request).await?.into_inner();
        Ok(Session { frames, stream })
    }

    /// One session stream: re-join, re-send, then serve requests and frames until it ends.
    async fn serve(
        &mut self,
        session: Session,
        requests: &mut mpsc::Receiver<Request>,
    ) -> SessionEnd {
        let Session {
            frames: frames_tx,
            mut stream,
        } = session;

        // Leaves still unanswered are done: the new session never joined those rooms.
        let leaves: Vec<u64> = self
            .pending
            .iter()
            .filter(|(_, p)| matches!(p, Pending::Leave { .. }))
            .map(|(id, _)| *id)
            .collect();
        for id in leaves {
            if let Some(Pending::Leave { reply, .. }) = self.pending.remove(&id) {
                let _ = reply.send(Ok(()));
            }
        }
        // Resume: every joined room after its last delivered offset, then what was unanswered.
        self.pending
            .retain(|_, pending| !matches!(pending, Pending::Rejoin { .. }));
        let mut resumed: Vec<(String, u64)> =
            self.rooms.iter().map(|(r, o)| (r.clone(), *o)).collect();
        resumed.sort();
        let mut outgoing = VecDeque::new();
        for (room, last) in &resumed {
            let id = self.command_id();
            outgoing.push_back(ClientFrame {
                command_id: id,
                command: Some(Command::Join(Join {
                    room: room.clone(),
                    after_offset: Some(*last),
                    hidden: false,
                    replay_last: 0,
                })),
            });
            self.pending
                .insert(id, Pending::Rejoin { room: room.clone() });
        }
        for (&id, pending) in &self.pending {
            if let Some(command) = pending.command() {
                outgoing.push_back(ClientFrame {
                    command_id: id,
                    command: Some(command),
                });
            }
        }

        // Frames to the server wait in `outgoing`, so the response stream is read even while
        // the request side is blocked by flow control: the server's acks can always land.
        let outgoing_limit = self.options.request_queue.max(16);
        let mut pings = tokio::time::interval(
            self.options
                .ping_interval
                .max(std::time::Duration::from_millis(10)),
        );
        pings.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        pings.tick().await;
        loop {
            tokio::select! {
                _ = pings.tick() => outgoing.push_back(ClientFrame {
                    command_id: 0,
                    command: Some(Command::Ping(Default::default())),
                }),
                permit = frames_tx.reserve(), if !outgoing.is_empty() => match permit {
                    Ok(permit) => permit.send(outgoing.pop_front().expect("not empty")),
                    Err(_) => return SessionEnd::Broken("session closed".into()),
                },
                request = requests.recv(), if outgoing.len() < outgoing_limit => {
                    let Some(request) = request else { return SessionEnd::ClientClosed };
                    outgoing.extend(self.accept(request));
                }
                frame = stream.message() => match frame {
                    Ok(Some(frame)) => {
                        if let Some(end) = self.handle(frame).await {
                            return end;
                        }
                    }
                    Ok(None) => return SessionEnd::Broken("the server ended the session".into()),
                    Err(status) if is_permanent(status.code()) => return SessionEnd::Failed(status),
                    Err(status) => return SessionEnd::Broken(describe(&status)),
                },
            }
        }
    }

    fn command_id(&mut self) -> u64 {
        let id = self.next_command;
        self.next_command += 1;
        id
    }

    /// Records a request as pending and returns the frame to send for it.
    fn accept(&mut self, request: Request) -> Option<ClientFrame> {
        let id = self.command_id();
        let pending = match request {
            Request::Join {
                room,
                after,
                recent,
                reply,
            } => Pending::Join {
                room,
                after,
                recent,
                reply,
            },
            Request::Leave { room, reply } => {
                // Forget the room now: no re-join on reconnect, no more of its messages.
                self.rooms.remove(&room);
                Pending::Leave { room, reply }
            }
            Request::Publish {
                room,
                payload,
                content_type,
                key,
                reply,
            } => {
                self.next_message += 1;
                Pending::Publish {
                    publish: Publish {
                        room,
                        payload,
                        content_type,
                        client_message_id: format!("{}-{}", self.id_prefix, self.next_message),
                        key,
                    },
                    reply,
                }
            }
        };
        let command = pending.command();
        self.pending.insert(id, pending);
        command.map(|command| ClientFrame {
            command_id: id,
            command: Some(command),
        })
    }

    async fn emit(&self, event: Event) {
        // A caller that dropped its `Events` still gets its calls answered.
        let _ = self.events.send(event).await;
    }

    /// Handles one server frame; returns how the session ends, if it does.
    async fn handle(&mut self, frame: ServerFrame) -> Option<SessionEnd> {
        match frame.frame? {
            Frame::Message(message) => {
                // Only rooms we are in, and only offsets past what was delivered.
                if let Some(last) = self.rooms.get_mut(&message.room)
                    && message.offset > *last
                {
                    *last = message.offset;
                    self.emit(Event::Message(message)).await;
                }
            }
            Frame::Joined(joined) => match self.pending.remove(&joined.command_id) {
                Some(Pending::Join {
                    room,
                    after,
                    recent,
                    reply,
                }) => {
                    // Where delivery starts: after the resume point, before the replayed
                    // backlog, or at the room's end for a live join.
                    let start = after.unwrap_or(joined.last_offset.saturating_sub(recent.into()));
                    self.rooms.insert(room.clone(), start);
                    let _ = reply.send(Ok(Joined {
                        room,
                        earliest_offset: joined.earliest_offset,
                        last_offset: joined.last_offset,
                        members: joined.members,
                    }));
                }
                Some(Pending::Rejoin { room }) => {
                    let after_offset = self.rooms.get(&room).copied().unwrap_or_default();
                    self.emit(Event::Resumed {
                        room,
                        after_offset,
                        members: joined.members,
                    })
                    .await;
                }
                Some(other) => {
                    self.pending.insert(joined.command_id, other);
                }
                None => {}
            },
            Frame::Left(left) => {
                if let Some(Pending::Leave { reply, .. }) = self.pending.remove(&left.command_id) {
                    let _ = reply.send(Ok(()));
                }
            }
            Frame::PublishAck(ack) => {
                if let Some(Pending::Publish { reply, .. }) = self.pending.remove(&ack.command_id) {
                    let _ = reply.send(Ok(ack.offset));
                }
            }
            Frame::Error(error) => match self.pending.remove(&error.command_id) {
                Some(Pending::Join { reply, .. }) => {
                    let _ = reply.send(Err(error.into()));
                }
                Some(Pending::Leave { reply, .. }) => {
                    let _ = reply.send(Err(error.into()));
                }
                Some(Pending::Publish { reply, .. }) => {
                    let _ = reply.send(Err(error.into()));
                }
                Some(Pending::Rejoin { room }) => {
                    // The room cannot be resumed (e.g. retention removed what we missed).
                    self.rooms.remove(&room);
                    self.emit(Event::Error(error)).await;
                }
                None => self.emit(Event::Error(error)).await,
            },
            Frame::Presence(presence) => self.emit(Event::Presence(presence)).await,
            Frame::Shutdown(shutdown) => {
                self.retry_after = Some(std::time::Duration::from_millis(
                    shutdown.retry_after_ms.into(),
                ));
                self.emit(Event::ServerShutdown {
                    reason: shutdown.reason.clone(),
                })
                .await;
                return Some(SessionEnd::Broken(format!(
                    "server shutting down: {}",
                    shutdown.reason
                )));
            }
            // `lagged` under `disconnect` is followed by the stream's end, and the resume
            // after it starts at our own last offset; under the lossy policies the caller
            // chose to skip.
            Frame::Lagged(_) | Frame::Pong(_) => {}
            // Sent on WebSocket sessions only; over gRPC the status ends the stream.
            Frame::SessionEnd(_) => {}
        }
        None
    }
}
