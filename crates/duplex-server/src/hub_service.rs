//! The `duplex.v1.Hub` gRPC service, written by hand around the engine in `duplex-hub`.
//!
//! Hand-written rather than generated for one reason: frames leave as bytes the hub
//! encoded once per message ([`PreEncodedCodec`]), so fanning a message out to a thousand
//! subscribers copies bytes a thousand times but encodes protobuf once. Requests decode
//! with prost as usual. The engine checks rights and room names itself (its methods take
//! the caller's `Identity`); this service identifies the caller, decodes, and maps every
//! `HubError` to a `Status` through `status.rs`.

use std::convert::Infallible;
use std::marker::PhantomData;
use std::task::{Context, Poll};

use bytes::{Buf as _, BufMut as _, Bytes};
use std::sync::Arc;

use duplex_hub::{
    Frame, Hub, HubError, Identity, Outbound, PublishInput, QueueBudgets, SessionOrigin,
    Subscription,
};
use duplex_proto::hub::{
    ClientFrame, HistoryRequest, HistoryResponse, PresenceRequest, PresenceResponse, PublishAck,
    PublishRequest, Stats, SubscribeRequest, WatchStatsRequest,
};
use futures::future::BoxFuture;
use futures::stream::{Map, StreamExt as _};
use tonic::codec::{BufferSettings, Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::server::{Grpc, NamedService, ServerStreamingService, StreamingService, UnaryService};
use tonic::{Code, Request, Response, Status, Streaming};
use tonic_prost::ProstCodec;

use crate::auth::{AuthError, Authenticator, peer_quota_key};
use crate::guard::ConnectionInfo;
use crate::metrics::{AuthFailure, ServerCounters, Service};
use crate::status::{auth_status, inbound_hub_error, status, undecodable};

/// The Hub service: cheap to clone, one hub behind every connection.
#[derive(Clone, Debug)]
pub(crate) struct HubService {
    hub: Hub,
    auth: Arc<Authenticator>,
    max_message_size: usize,
    max_connection_age: Option<std::time::Duration>,
    /// Where messages received and auth failures are counted (`/metrics`).
    counters: Arc<ServerCounters>,
}

impl HubService {
    /// The service over `hub`, identifying callers with `auth`, refusing inbound messages
    /// over `max_message_size` bytes.
    pub(crate) fn new(
        hub: Hub,
        auth: Arc<Authenticator>,
        max_message_size: usize,
        counters: Arc<ServerCounters>,
    ) -> Self {
        Self {
            hub,
            auth,
            max_message_size,
            max_connection_age: None,
            counters,
        }
    }

    /// Tell sessions to move shortly before their connection reaches `age`.
    pub(crate) fn with_max_connection_age(mut self, age: Option<std::time::Duration>) -> Self {
        self.max_connection_age = age;
        self
    }

    /// When a session on `request`'s connection should be told to reconnect: a little
    /// before the connection's maximum age (a tenth of the age, at most a second).
    fn rotation_time<T>(&self, request: &Request<T>) -> Option<tokio::time::Instant> {
        let info = request.extensions().get::<ConnectionInfo>().copied();
        rotation_instant(self.max_connection_age, info)
    }

    /// The caller's identity ([`identify_caller`]); a refusal is UNAUTHENTICATED.
    fn identify<T>(&self, request: &Request<T>) -> Result<Identity, Status> {
        identify_caller(
            &self.auth,
            &self.counters,
            request.metadata().as_ref(),
            peer(request),
        )
        .map_err(auth_status)
    }
}

impl NamedService for HubService {
    const NAME: &'static str = "duplex.v1.Hub";
}

/// When a session on a connection `info` with maximum `age` should be told to reconnect: a
/// little before the age (a tenth of it, at most a second). `None` without either.
pub(crate) fn rotation_instant(
    age: Option<std::time::Duration>,
    info: Option<ConnectionInfo>,
) -> Option<tokio::time::Instant> {
    let age = age?;
    let info = info?;
    let lead = (age / 10).min(std::time::Duration::from_secs(1));
    Some(tokio::time::Instant::from_std(
        info.accepted_at + age - lead,
    ))
}

/// The client's address: as the connection guard recorded it, else as tonic saw it.
/// The identity of a caller whose credentials are in `headers` (the gRPC metadata, or what
/// a WebSocket's subprotocols carry), a refusal counted by its reason. An anonymous
/// caller's publish rate budget is its peer's address (its /64 for IPv6, which hands a
/// client a whole /64), since it has no verified name: `duplex-name` is whatever the
/// client says.
pub(crate) fn identify_caller(
    auth: &Authenticator,
    counters: &ServerCounters,
    headers: &http::HeaderMap,
    peer: Option<std::net::SocketAddr>,
) -> Result<Identity, AuthError> {
    let mut identity = auth
        .identify(headers)
        .inspect_err(|error| counters.auth_failed(AuthFailure::from(error)))?;
    if !identity.is_verified() {
        identity.quota_key = peer_quota_key(peer);
    }
    Ok(identity)
}

fn peer<T>(request: &Request<T>) -> Option<std::net::SocketAddr> {
    request
        .extensions()
        .get::<ConnectionInfo>()
        .and_then(|info| info.remote)
        .or_else(|| request.remote_addr())
}

/// Where `request`'s session comes from: the byte budgets of its connection and client IP,
/// which its stream's queue charges (none when served without the connection guard), and
/// the peer address its log lines show.
fn session_origin<T>(request: &Request<T>) -> SessionOrigin {
    SessionOrigin {
        budgets: request
            .extensions()
            .get::<QueueBudgets>()
            .cloned()
            .unwrap_or_default(),
        peer: peer(request),
    }
}

/// The outbound stream of a session, as tonic wants it.
type FrameStream = Map<Outbound, fn(Result<Frame, HubError>) -> Result<Frame, Status>>;

fn frame_stream(outbound: Outbound) -> FrameStream {
    let to_status: fn(Result<Frame, HubError>) -> Result<Frame, Status> =
        |item| item.map_err(status);
    outbound.map(to_status)
}

impl<B> tower::Service<http::Request<B>> for HubService
where
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>> + Send + 'static,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = Infallible;
    type Future = BoxFuture<'static, Result<Self::Response, Infallible>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let service = self.clone();
        let limit = self.max_message_size;
        let counters = self.counters.clone();
        match request.uri().path() {
            "/duplex.v1.Hub/Connect" => Box::pin(async move {
                let mut grpc = Grpc::new(PreEncodedCodec::<ClientFrame>::new(counters))
                    .max_decoding_message_size(limit);
                Ok(grpc.streaming(Connect(service), request).await)
            }),
            "/duplex.v1.Hub/Subscribe" => Box::pin(async move {
                let mut grpc = Grpc::new(PreEncodedCodec::<SubscribeRequest>::new(counters))
                    .max_decoding_message_size(limit);
                let response = grpc.server_streaming(Subscribe(service), request).await;
                Ok(oversize_as_resource_exhausted(response))
            }),
            "/duplex.v1.Hub/Publish" => Box::pin(async move {
                let mut grpc = Grpc::new(ProstCodec::default()).max_decoding_message_size(limit);
                let response = grpc
                    .unary(Unary(service, PhantomData::<PublishRequest>), request)
                    .await;
                Ok(oversize_as_resource_exhausted(response))
            }),
            "/duplex.v1.Hub/History" => Box::pin(async move {
                let mut grpc = Grpc::new(ProstCodec::default()).max_decoding_message_size(limit);
                let response = grpc
                    .unary(Unary(service, PhantomData::<HistoryRequest>), request)
                    .await;
                Ok(oversize_as_resource_exhausted(response))
            }),
            "/duplex.v1.Hub/WatchStats" => Box::pin(async move {
                let mut grpc = Grpc::new(ProstCodec::default()).max_decoding_message_size(limit);
                let response = grpc.server_streaming(WatchStats(service), request).await;
                Ok(oversize_as_resource_exhausted(response))
            }),
            "/duplex.v1.Hub/Presence" => Box::pin(async move {
                let mut grpc = Grpc::new(ProstCodec::default()).max_decoding_message_size(limit);
                let response = grpc
                    .unary(Unary(service, PhantomData::<PresenceRequest>), request)
                    .await;
                Ok(oversize_as_resource_exhausted(response))
            }),
            _ => Box::pin(async move {
                Ok(Status::unimplemented("no such method in duplex.v1.Hub").into_http())
            }),
        }
    }
}

/// The status of a unary or server-streaming call whose request message is over the size
/// limit, as the gRPC spec, grpc-go and C-core give it: RESOURCE_EXHAUSTED.
///
/// tonic decodes those requests before our handler runs and answers an oversized one with
/// OUT_OF_RANGE, as a trailers-only response (the status in the headers). No Hub handler
/// answers OUT_OF_RANGE, so a response carrying it is that refusal, and its code is
/// rewritten; the message (found N bytes, the limit is M) stays. `Connect` maps the same
/// error on its inbound stream (see `status::inbound_error`).
fn oversize_as_resource_exhausted(
    mut response: http::Response<tonic::body::Body>,
) -> http::Response<tonic::body::Body> {
    let out_of_range = (Code::OutOfRange as i32).to_string();
    if response
        .headers()
        .get("grpc-status")
        .is_some_and(|code| code.as_bytes() == out_of_range.as_bytes())
    {
        let exhausted = http::HeaderValue::from(Code::ResourceExhausted as i32);
        response.headers_mut().insert("grpc-status", exhausted);
    }
    response
}

struct Connect(HubService);

impl StreamingService<ClientFrame> for Connect {
    type Response = Frame;
    type ResponseStream = FrameStream;
    type Future = BoxFuture<'static, Result<Response<FrameStream>, Status>>;

    fn call(&mut self, request: Request<Streaming<ClientFrame>>) -> Self::Future {
        let hub = self.0.hub.clone();
        let identity = self.0.identify(&request);
        let rotate_at = self.0.rotation_time(&request);
        let origin = session_origin(&request);
        Box::pin(async move {
            let (mut session, outbound) = hub.open_session_from(identity?, origin);
            if let Some(at) = rotate_at {
                session.rotate_at(at);
            }
            let inbound = request
                .into_inner()
                .map(|frame| frame.map_err(inbound_hub_error));
            // One task per session: it reads commands while tonic polls the outbound side.
            tokio::spawn(session.drive(inbound));
            Ok(Response::new(frame_stream(outbound)))
        })
    }
}

struct Subscribe(HubService);

impl ServerStreamingService<SubscribeRequest> for Subscribe {
    type Response = Frame;
    type ResponseStream = FrameStream;
    type Future = BoxFuture<'static, Result<Response<FrameStream>, Status>>;

    fn call(&mut self, request: Request<SubscribeRequest>) -> Self::Future {
        let hub = self.0.hub.clone();
        let identity = self.0.identify(&request);
        let origin = session_origin(&request);
        Box::pin(async move {
            let identity = identity?;
            let subscribe = request.into_inner();
            let subscription = Subscription {
                room: subscribe.room,
                after: subscribe.after_offset,
                name: subscribe.name,
            };
            let outbound = hub
                .subscribe(identity, subscription, origin)
                .await
                .map_err(status)?;
            Ok(Response::new(frame_stream(outbound)))
        })
    }
}

/// `WatchStats`: server-wide figures once a second, for dashboards.
struct WatchStats(HubService);

/// How often `WatchStats` sends a tick.
const STATS_INTERVAL: std::time::Duration = std::time::Duration::from_secs(1);

/// The stream of `Stats` ticks of one `WatchStats` call.
type StatsStream = futures::stream::BoxStream<'static, Result<Stats, Status>>;

impl ServerStreamingService<WatchStatsRequest> for WatchStats {
    type Response = Stats;
    type ResponseStream = StatsStream;
    type Future = BoxFuture<'static, Result<Response<StatsStream>, Status>>;

    /// Any caller the server identifies may watch, with no room rights; with tokens
    /// verified, only a caller with a valid token (not an anonymous one).
    fn call(&mut self, request: Request<WatchStatsRequest>) -> Self::Future {
        let service = self.0.clone();
        let identity = self.0.identify(&request);
        Box::pin(async move {
            let identity = identity?;
            if service.auth.verifies_tokens() && !identity.is_verified() {
                service.counters.auth_failed(AuthFailure::MissingToken);
                return Err(Status::unauthenticated(
                    "WatchStats needs a valid token: send `authorization: Bearer <JWT>`",
                ));
            }
            let mut ticks = tokio::time::interval(STATS_INTERVAL);
            ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let figures = StatsFigures::take(&service);
            let stream = futures::stream::unfold(
                (service, ticks, figures, true),
                |(service, mut ticks, before, first)| async move {
                    ticks.tick().await;
                    let now = StatsFigures::take(&service);
                    let stats = if first {
                        now.stats(&now)
                    } else {
                        now.stats(&before)
                    };
                    Some((Ok(stats), (service, ticks, now, false)))
                },
            );
            Ok(Response::new(Box::pin(stream) as StatsStream))
        })
    }
}

/// The counters one `Stats` tick is computed from.
struct StatsFigures {
    at: std::time::Instant,
    time_unix_micros: u64,
    sessions: u64,
    rooms: u64,
    connections: u64,
    published: u64,
    sent: u64,
    deliveries: u64,
    lagged: u64,
    disconnected: u64,
    publish_ack: duplex_store::HistogramSnapshot,
}

impl StatsFigures {
    fn take(service: &HubService) -> Self {
        let hub = service.hub.counters();
        let stats = service.hub.stats();
        Self {
            at: std::time::Instant::now(),
            time_unix_micros: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |since| since.as_micros() as u64),
            sessions: stats.sessions as u64,
            rooms: stats.rooms as u64,
            connections: service.counters.open_connections(),
            published: hub.published(),
            sent: hub.frames_sent() + service.counters.chat_messages_sent(),
            deliveries: hub.deliveries(),
            lagged: hub.lagged_subscribers(),
            disconnected: hub.disconnected_lagged() + hub.disconnected_stalled(),
            publish_ack: hub.publish_ack_nanos(),
        }
    }

    /// The tick: gauges and totals now, rates and p99 over the interval since `before`
    /// (zero when `before` is `self`, the first tick).
    ///
    /// `publish_ack_p99_seconds` is the upper bound of the histogram bucket holding the
    /// interval's 99th percentile (bounds 50 µs … 10 s, about ×2.5 apart), not an
    /// estimate inside it; one above the last bound reads as that bound.
    fn stats(&self, before: &StatsFigures) -> Stats {
        let seconds = self.at.duration_since(before.at).as_secs_f64();
        let rate = |now: u64, then: u64| {
            if seconds > 0.0 {
                now.saturating_sub(then) as f64 / seconds
            } else {
                0.0
            }
        };
        let acks = self.publish_ack.since(&before.publish_ack);
        let last_bound = acks.bounds.last().copied().unwrap_or(0);
        let p99 = acks
            .quantile_upper_bound(0.99)
            .map_or(0.0, |nanos| nanos.min(last_bound) as f64 * 1e-9);
        Stats {
            time_unix_micros: self.time_unix_micros,
            sessions: self.sessions,
            rooms: self.rooms,
            connections: self.connections,
            messages_in_per_second: rate(self.published, before.published),
            messages_out_per_second: rate(self.sent, before.sent),
            deliveries_per_second: rate(self.deliveries, before.deliveries),
            lagged_subscribers_total: self.lagged,
            disconnected_subscribers_total: self.disconnected,
            publish_ack_p99_seconds: p99,
        }
    }
}

/// The unary methods, one generic wrapper keyed by request type.
struct Unary<T>(HubService, PhantomData<T>);

impl UnaryService<PublishRequest> for Unary<PublishRequest> {
    type Response = PublishAck;
    type Future = BoxFuture<'static, Result<Response<PublishAck>, Status>>;

    fn call(&mut self, request: Request<PublishRequest>) -> Self::Future {
        let hub = self.0.hub.clone();
        let identity = self.0.identify(&request);
        Box::pin(async move {
            let identity = identity?;
            let publish = request.into_inner();
            let room = publish.room.clone();
            // A token's subject is the sender; anonymous callers may name one.
            let outcome = hub
                .publish(
                    &identity,
                    PublishInput {
                        room: publish.room,
                        sender: publish.sender,
                        payload: publish.payload,
                        content_type: publish.content_type,
                        client_id: publish.client_message_id,
                        key: publish.key,
                    },
                )
                .await
                .map_err(status)?;
            Ok(Response::new(PublishAck {
                command_id: 0,
                room,
                offset: outcome.offset,
                duplicate: outcome.duplicate,
            }))
        })
    }
}

impl UnaryService<HistoryRequest> for Unary<HistoryRequest> {
    type Response = HistoryResponse;
    type Future = BoxFuture<'static, Result<Response<HistoryResponse>, Status>>;

    fn call(&mut self, request: Request<HistoryRequest>) -> Self::Future {
        let hub = self.0.hub.clone();
        let identity = self.0.identify(&request);
        Box::pin(async move {
            let identity = identity?;
            let request = request.into_inner();
            let page = hub
                .history(
                    &identity,
                    &request.room,
                    request.after_offset,
                    request.limit as usize,
                )
                .await
                .map_err(status)?;
            Ok(Response::new(HistoryResponse {
                messages: page
                    .messages
                    .iter()
                    .map(duplex_hub::frames::message)
                    .collect(),
                earliest_offset: page.earliest,
                last_offset: page.last,
                next_after_offset: page.next_after,
                more: page.more,
            }))
        })
    }
}

impl UnaryService<PresenceRequest> for Unary<PresenceRequest> {
    type Response = PresenceResponse;
    type Future = BoxFuture<'static, Result<Response<PresenceResponse>, Status>>;

    fn call(&mut self, request: Request<PresenceRequest>) -> Self::Future {
        let hub = self.0.hub.clone();
        let identity = self.0.identify(&request);
        Box::pin(async move {
            let identity = identity?;
            let room = request.into_inner().room;
            let presence = hub.presence(&identity, &room).await.map_err(status)?;
            Ok(Response::new(PresenceResponse {
                members: presence.members,
                unlisted_members: presence.unlisted,
            }))
        })
    }
}

/// Decodes requests with prost; sends responses as bytes already encoded by the hub.
#[derive(Debug)]
pub(crate) struct PreEncodedCodec<D>(Arc<ServerCounters>, PhantomData<D>);

impl<D> PreEncodedCodec<D> {
    /// The codec of one call, counting what it receives in `counters`.
    pub(crate) fn new(counters: Arc<ServerCounters>) -> Self {
        Self(counters, PhantomData)
    }
}

impl<D: prost::Message + Default + Send + 'static> Codec for PreEncodedCodec<D> {
    type Encode = Frame;
    type Decode = D;
    type Encoder = PreEncoded;
    type Decoder = SessionDecoder<D>;

    fn encoder(&mut self) -> PreEncoded {
        PreEncoded
    }

    fn decoder(&mut self) -> SessionDecoder<D> {
        SessionDecoder(self.0.clone(), PhantomData)
    }
}

/// Writes an already-encoded message as is.
#[derive(Debug, Clone, Copy)]
pub(crate) struct PreEncoded;

impl Encoder for PreEncoded {
    type Item = Frame;
    type Error = Status;

    fn encode(&mut self, item: Frame, buf: &mut EncodeBuf<'_>) -> Result<(), Status> {
        // tonic sends its buffer off whole at SESSION_YIELD_BYTES and, while h2 still holds
        // that chunk, starts the next one at SESSION_BUFFER_BYTES and doubles it: a burst
        // (a replay, a busy room) reallocated and copied its bytes 7 times per 32 KiB sent.
        // Once a burst has BURST_BYTES pending, the buffer grows to a whole chunk at once
        // (later calls find the room and reserve nothing). Idle sessions never get there
        // and keep their small buffer.
        let pending = pending_len(buf);
        if pending >= BURST_BYTES {
            buf.reserve((SESSION_YIELD_BYTES + item.len()).saturating_sub(pending));
        }
        buf.put_slice(&item);
        Ok(())
    }

    fn buffer_settings(&self) -> BufferSettings {
        session_buffers()
    }
}

/// Initial size of a session stream's encode and decode buffers. tonic allocates 8 KiB each
/// way when a call starts, which is most of what an idle session costs; both buffers grow on
/// demand when traffic comes (a burst of sends grows to a whole chunk at once, see
/// [`PreEncoded`]), so starting small costs a busy session a few reallocations and saves an
/// idle one about 15 KiB of RSS at 256 bytes, and 0.3-0.4 KiB more at 64 (`duplex bench
/// idle`, 50k sessions: 6071/6200 -> 5788/5758 bytes each): an idle session's buffers
/// keep what its `join` and `joined` frames needed. Not 0: tonic divides by it when it
/// compresses.
const SESSION_BUFFER_BYTES: usize = 64;

/// Encoded replies are sent once this many bytes are ready (tonic's default).
const SESSION_YIELD_BYTES: usize = 32 * 1024;

/// Bytes pending in a session's encode buffer past which it is in a burst (see
/// [`PreEncoded`]'s `encode`).
const BURST_BYTES: usize = 1024;

/// How many bytes `buf` holds. tonic does not say; its `BytesMut` reports its spare room
/// as `isize::MAX - len` (0 here if that ever changes, which only turns the burst growth
/// off).
fn pending_len(buf: &EncodeBuf<'_>) -> usize {
    (isize::MAX as usize).saturating_sub(buf.remaining_mut())
}

fn session_buffers() -> BufferSettings {
    BufferSettings::new(SESSION_BUFFER_BYTES, SESSION_YIELD_BYTES)
}

/// prost decoding with `session_buffers`, from the message as one `Bytes`: prost then
/// steps through a slice rather than tonic's buffer (which keeps its position in a packed
/// word it updates on every byte), and `bytes` fields (payloads) come out as slices of the
/// message, not copies.
#[derive(Debug)]
pub(crate) struct SessionDecoder<D>(Arc<ServerCounters>, PhantomData<D>);

impl<D: prost::Message + Default + Send + 'static> Decoder for SessionDecoder<D> {
    type Item = D;
    type Error = Status;

    fn decode(&mut self, buf: &mut DecodeBuf<'_>) -> Result<Option<D>, Status> {
        self.0.received(Service::Hub, buf.remaining());
        let message = buf.copy_to_bytes(buf.remaining());
        D::decode(message).map(Some).map_err(undecodable)
    }

    fn buffer_settings(&self) -> BufferSettings {
        session_buffers()
    }
}
