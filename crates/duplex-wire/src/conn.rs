//! Both directions of one HTTP/2 connection, decoded together: frames, HPACK header
//! blocks (HEADERS/PUSH_PROMISE + CONTINUATION reassembled first), gRPC messages per
//! stream and direction, the flow-control windows, and per-stream totals.
//!
//! The caller feeds each direction's bytes in the order they crossed the wire and gets
//! [`Event`]s back; nothing here does I/O or reads the clock (the caller passes `now`).
//!
//! HPACK state is per direction (each side's encoder fills its own dynamic table), so
//! there is one decoder per direction. A header block that cannot be decoded leaves that
//! table in an unknown state: headers in that direction are not decoded after it, and
//! the events say so, but frames, messages and windows go on being decoded.
//!
//! SETTINGS take effect when the peer acknowledges them, which is when a well-behaved
//! peer (h2, grpc-go, C-core) starts sending under them; frames before the ACK in the
//! peer's direction are counted under the old values.
//!
//! Bounds: at most [`Limits::max_streams`] open streams are tracked, a header block is at
//! most [`Limits::max_header_block`] bytes, a message keeps at most
//! [`Limits::message_capture`] bytes, and at most [`Limits::max_closed_streams`] closed
//! streams are kept for the summary (older ones are counted, not kept).

use std::collections::{BTreeMap, VecDeque};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};

use crate::Direction;
use crate::decoder::{DecodeError, FrameDecoder, Item};
use crate::flow::{FlowControl, FlowNote, Scope};
use crate::frame::{ErrorCode, Flags, Frame, FrameType, Payload, Setting, SettingId};
use crate::grpc::{GrpcMessage, MessageSplitter, Partial};

/// The bounds on what one connection may make the decoder hold.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// Bytes of each gRPC message kept for decoding and display.
    pub message_capture: usize,
    /// Largest header block (HEADERS + CONTINUATION) reassembled.
    pub max_header_block: usize,
    /// Largest HPACK dynamic table a peer may ask for.
    pub max_hpack_table: usize,
    /// Open streams tracked at once; frames of further streams are still shown.
    pub max_streams: usize,
    /// Closed streams kept for the summary.
    pub max_closed_streams: usize,
    /// Unacknowledged SETTINGS frames remembered per side.
    pub max_pending_settings: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            message_capture: 4 << 20,
            max_header_block: 1 << 20,
            max_hpack_table: 1 << 20,
            max_streams: 10_000,
            max_closed_streams: 10_000,
            max_pending_settings: 16,
        }
    }
}

/// One thing seen on the wire.
#[derive(Clone, Debug)]
pub enum Event {
    /// The client connection preface.
    Preface {
        /// The side that sent it (always the client).
        direction: Direction,
    },
    /// A frame and what it meant.
    Frame(Box<FrameEvent>),
    /// Bytes that could not be decoded (a malformed frame, which was skipped, or a
    /// missing preface, after which the direction is no longer decoded).
    Error {
        /// Which side sent the undecodable bytes.
        direction: Direction,
        /// What was wrong with them.
        error: DecodeError,
    },
}

/// A decoded frame with everything derived from it.
#[derive(Clone, Debug)]
pub struct FrameEvent {
    /// Which side sent the frame.
    pub direction: Direction,
    /// The frame as parsed.
    pub frame: Frame,
    /// The decoded header list, on the frame that completed a header block.
    pub headers: Option<HeaderBlock>,
    /// gRPC messages this DATA frame completed.
    pub messages: Vec<GrpcMessage>,
    /// The message still arriving after this DATA frame.
    pub partial: Option<Partial>,
    /// The stream's `:path`, when its request headers were decoded.
    pub path: Option<String>,
    /// How the frame moved the send windows.
    pub flow: Vec<FlowNote>,
    /// On a SETTINGS ACK: the peer's settings it put into effect.
    pub applied: Vec<Setting>,
    /// Protocol violations and decoding problems worth showing.
    pub notes: Vec<String>,
}

/// What a header block is, from its place in the stream.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HeaderRole {
    /// The client's headers that open a stream.
    Request,
    /// The server's response headers, before any message.
    Response,
    /// Headers after the body (gRPC status).
    Trailers,
    /// A response that is only trailers (a gRPC error before any message).
    TrailersOnly,
    /// The request of a PUSH_PROMISE.
    Push,
}

/// A decoded header list. Names and values are shown as text (invalid UTF-8 replaced).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HeaderBlock {
    /// Which kind of header block this is.
    pub role: HeaderRole,
    /// The stream the headers belong to (the promised stream for a push).
    pub stream_id: u32,
    /// The header fields in order, as (name, value).
    pub fields: Vec<(String, String)>,
}

impl HeaderBlock {
    /// The first value of `name`.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.fields
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// Totals for one stream.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct StreamSummary {
    /// The stream id.
    pub id: u32,
    /// The stream's `:path`, once its request headers were decoded.
    pub path: Option<String>,
    /// Indexed by [`Direction::index`]: gRPC messages each side sent.
    pub messages: [u64; 2],
    /// DATA payload bytes (flow-controlled length) each side sent.
    pub data_bytes: [u64; 2],
    /// Indexed by [`Direction::index`]: frames each side sent on the stream.
    pub frames: [u64; 2],
    /// Time each side's stream send window was at or below zero.
    pub blocked: [Duration; 2],
    /// Whether each side ended the stream (END_STREAM).
    pub ended: [bool; 2],
    /// Who reset the stream, and why.
    pub reset: Option<(Direction, ErrorCode)>,
    /// The `grpc-status` of the trailers, when they arrived.
    pub grpc_status: Option<String>,
    /// The `grpc-message` of the trailers, when present.
    pub grpc_message: Option<String>,
}

/// Totals for the connection.
#[derive(Clone, Debug, Default)]
pub struct ConnectionSummary {
    /// Streams by id: closed ones kept within the limit, then the ones still open.
    pub streams: Vec<StreamSummary>,
    /// Closed streams no longer kept.
    pub streams_dropped: u64,
    /// Time each side's connection send window was at or below zero.
    pub connection_blocked: [Duration; 2],
    /// Frames each side sent, all streams.
    pub frames: [u64; 2],
}

/// A header block being reassembled from HEADERS/PUSH_PROMISE and CONTINUATION frames.
#[derive(Debug)]
struct PendingBlock {
    /// The stream of the frames carrying it.
    stream_id: u32,
    /// The stream the headers describe (differs for PUSH_PROMISE).
    target: u32,
    push: bool,
    end_stream: bool,
    data: BytesMut,
    overflowed: bool,
}

/// One direction's HPACK decoder and the header block it is reassembling.
struct Hpack {
    decoder: loona_hpack::Decoder<'static>,
    pending: Option<PendingBlock>,
    /// Why the dynamic table can no longer be trusted.
    lost: Option<String>,
}

impl std::fmt::Debug for Hpack {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Hpack")
            .field("pending", &self.pending)
            .field("lost", &self.lost)
            .finish_non_exhaustive()
    }
}

impl Hpack {
    fn new() -> Self {
        let mut decoder = loona_hpack::Decoder::new();
        decoder.set_max_allowed_table_size(4096);
        Self {
            decoder,
            pending: None,
            lost: None,
        }
    }
}

#[derive(Debug)]
struct StreamState {
    summary: StreamSummary,
    splitters: [MessageSplitter; 2],
    /// Whether DATA is split into gRPC messages (content-type application/grpc*, or unknown).
    grpc: bool,
    /// Header blocks seen per direction.
    blocks: [u32; 2],
}

/// Decodes both directions of one HTTP/2 connection.
#[derive(Debug)]
pub struct ConnectionDecoder {
    limits: Limits,
    framers: [FrameDecoder; 2],
    hpack: [Hpack; 2],
    /// SETTINGS each side sent that its peer has not acknowledged yet.
    unacked_settings: [VecDeque<Vec<Setting>>; 2],
    flow: FlowControl,
    streams: BTreeMap<u32, StreamState>,
    /// Highest stream id opened by the client (odd) and the server (even).
    highest: [u32; 2],
    closed: VecDeque<StreamSummary>,
    closed_dropped: u64,
    frames: [u64; 2],
}

impl Default for ConnectionDecoder {
    fn default() -> Self {
        Self::new(Limits::default())
    }
}

impl ConnectionDecoder {
    /// A decoder for a connection whose client speaks first (prior-knowledge h2c or
    /// TLS with ALPN h2, after the handshake).
    pub fn new(limits: Limits) -> Self {
        Self {
            limits,
            framers: [FrameDecoder::client(), FrameDecoder::server()],
            hpack: [Hpack::new(), Hpack::new()],
            unacked_settings: [VecDeque::new(), VecDeque::new()],
            flow: FlowControl::default(),
            streams: BTreeMap::new(),
            highest: [0, 0],
            closed: VecDeque::new(),
            closed_dropped: 0,
            frames: [0, 0],
        }
    }

    /// Feeds bytes that `direction` sent, received at `now`; returns what they completed.
    pub fn feed(&mut self, direction: Direction, bytes: &[u8], now: Instant) -> Vec<Event> {
        self.framers[direction.index()].feed(bytes);
        let mut events = Vec::new();
        while let Some(item) = self.framers[direction.index()].next_item() {
            events.push(match item {
                Ok(Item::Preface) => Event::Preface { direction },
                Ok(Item::Frame(frame)) => {
                    Event::Frame(Box::new(self.on_frame(direction, frame, now)))
                }
                Err(error) => {
                    if let DecodeError::Frame { header, .. } = &error {
                        self.frames[direction.index()] += 1;
                        // A skipped header block fragment leaves the HPACK table unknown.
                        if matches!(
                            header.kind,
                            FrameType::Headers | FrameType::PushPromise | FrameType::Continuation
                        ) {
                            self.hpack_lost(direction, "a malformed header frame was skipped");
                        }
                    }
                    Event::Error { direction, error }
                }
            });
        }
        events
    }

    /// The flow-control windows as they stand.
    pub fn flow(&self) -> &FlowControl {
        &self.flow
    }

    /// Totals so far: closed streams (within the limit) and open ones, by id.
    pub fn summary(&self, now: Instant) -> ConnectionSummary {
        let mut streams: Vec<StreamSummary> = self.closed.iter().cloned().collect();
        for (id, state) in &self.streams {
            let mut summary = state.summary.clone();
            for side in Direction::BOTH {
                summary.blocked[side.index()] = self
                    .flow
                    .blocked_time(side, Scope::Stream(*id), now)
                    .unwrap_or_default();
            }
            streams.push(summary);
        }
        streams.sort_by_key(|s| s.id);
        ConnectionSummary {
            streams,
            streams_dropped: self.closed_dropped,
            connection_blocked: Direction::BOTH.map(|side| {
                self.flow
                    .blocked_time(side, Scope::Connection, now)
                    .unwrap_or_default()
            }),
            frames: self.frames,
        }
    }

    fn on_frame(&mut self, direction: Direction, frame: Frame, now: Instant) -> FrameEvent {
        let d = direction.index();
        self.frames[d] += 1;
        let stream_id = frame.header.stream_id;
        let mut event = FrameEvent {
            direction,
            notes: frame.violations(),
            frame,
            headers: None,
            messages: Vec::new(),
            partial: None,
            path: None,
            flow: Vec::new(),
            applied: Vec::new(),
        };
        let frame = &event.frame;

        // A header block must be followed by its CONTINUATIONs and nothing else.
        if let Some(pending) = &self.hpack[d].pending {
            let continues = frame.header.kind == FrameType::Continuation
                && frame.header.stream_id == pending.stream_id;
            if !continues {
                let msg = format!(
                    "header block of stream {} interrupted by {} (PROTOCOL_ERROR)",
                    pending.stream_id, frame.header.kind
                );
                self.hpack[d].pending = None;
                self.hpack_lost(direction, &msg);
                event.notes.push(msg);
            }
        }

        if let Some(state) = self.streams.get_mut(&stream_id) {
            state.summary.frames[d] += 1;
        }

        let end_stream = frame.header.flags.has(Flags::END_STREAM);
        match &frame.payload {
            Payload::Data { data, .. } => {
                let len = frame.flow_controlled_len();
                event.flow = self.flow.data(direction, stream_id, len, now);
                match self.streams.get_mut(&stream_id) {
                    Some(state) => {
                        state.summary.data_bytes[d] += u64::from(len);
                        if state.grpc {
                            let splitter = &mut state.splitters[d];
                            event.messages = splitter.push(data);
                            event.partial = splitter.partial();
                            state.summary.messages[d] = splitter.count();
                            if end_stream && splitter.leftover() > 0 {
                                event.notes.push(format!(
                                    "stream ended in the middle of a gRPC message ({} bytes of it sent)",
                                    splitter.leftover()
                                ));
                            }
                        }
                        event.path = state.summary.path.clone();
                    }
                    None => event.notes.push(self.untracked(stream_id)),
                }
                if end_stream {
                    self.end_stream(direction, stream_id, now);
                }
            }
            Payload::Headers { fragment, .. } => {
                let fragment = fragment.clone();
                let end_headers = frame.header.flags.has(Flags::END_HEADERS);
                if !self.streams.contains_key(&stream_id) {
                    if self.is_closed(stream_id) {
                        event
                            .notes
                            .push(format!("HEADERS on closed stream {stream_id}"));
                    } else {
                        self.open_stream(stream_id, &mut event.notes);
                    }
                }
                self.hpack[d].pending = Some(PendingBlock {
                    stream_id,
                    target: stream_id,
                    push: false,
                    end_stream,
                    data: BytesMut::new(),
                    overflowed: false,
                });
                self.continue_block(direction, &fragment, end_headers, &mut event, now);
            }
            Payload::PushPromise {
                promised_stream_id,
                fragment,
                ..
            } => {
                let (promised, fragment) = (*promised_stream_id, fragment.clone());
                let end_headers = frame.header.flags.has(Flags::END_HEADERS);
                self.open_stream(promised, &mut event.notes);
                if let Some(state) = self.streams.get_mut(&promised) {
                    // The promised request is the client side of the pushed stream, which
                    // the client never sends on.
                    state.summary.ended[Direction::ClientToServer.index()] = true;
                }
                self.hpack[d].pending = Some(PendingBlock {
                    stream_id,
                    target: promised,
                    push: true,
                    end_stream: false,
                    data: BytesMut::new(),
                    overflowed: false,
                });
                self.continue_block(direction, &fragment, end_headers, &mut event, now);
            }
            Payload::Continuation { fragment } => {
                let fragment = fragment.clone();
                let end_headers = frame.header.flags.has(Flags::END_HEADERS);
                if self.hpack[d].pending.is_some() {
                    self.continue_block(direction, &fragment, end_headers, &mut event, now);
                } else {
                    let msg = "CONTINUATION without a header block to continue (PROTOCOL_ERROR)";
                    event.notes.push(msg.to_owned());
                    self.hpack_lost(direction, msg);
                }
            }
            Payload::RstStream(code) => {
                let code = *code;
                if let Some(state) = self.streams.get_mut(&stream_id) {
                    state.summary.reset = Some((direction, code));
                    self.close_stream(stream_id, now);
                }
            }
            Payload::Settings(params) => {
                if frame.header.flags.has(Flags::ACK) {
                    let peer = direction.opposite();
                    match self.unacked_settings[peer.index()].pop_front() {
                        Some(params) => {
                            event.flow = self.apply_settings(peer, &params, now);
                            event.applied = params;
                        }
                        None => event
                            .notes
                            .push("SETTINGS ACK with no SETTINGS to acknowledge".to_owned()),
                    }
                } else {
                    let queue = &mut self.unacked_settings[d];
                    if queue.len() == self.limits.max_pending_settings {
                        queue.pop_front();
                        event
                            .notes
                            .push("too many unacknowledged SETTINGS; oldest forgotten".to_owned());
                    }
                    queue.push_back(params.clone());
                }
            }
            Payload::WindowUpdate { increment } => {
                match self
                    .flow
                    .window_update(direction, stream_id, *increment, now)
                {
                    Some(note) => event.flow.push(note),
                    None => event.notes.push(self.untracked(stream_id)),
                }
            }
            Payload::Priority(_)
            | Payload::Ping(_)
            | Payload::GoAway { .. }
            | Payload::Unknown(_) => {}
        }
        if event.path.is_none() {
            event.path = self
                .streams
                .get(&stream_id)
                .and_then(|s| s.summary.path.clone());
        }
        event
    }

    /// Applies SETTINGS that `sender` sent, now that its peer acknowledged them.
    fn apply_settings(
        &mut self,
        sender: Direction,
        params: &[Setting],
        now: Instant,
    ) -> Vec<FlowNote> {
        let mut notes = Vec::new();
        for param in params {
            match param.id {
                SettingId::InitialWindowSize if param.value <= crate::frame::MAX_WINDOW => {
                    notes.extend(self.flow.initial_window(sender, param.value, now));
                }
                SettingId::HeaderTableSize => {
                    // It bounds the table of the decoder at `sender`, that is, the encoder
                    // of the peer's direction.
                    let size = (param.value as usize).min(self.limits.max_hpack_table);
                    self.hpack[sender.opposite().index()]
                        .decoder
                        .set_max_allowed_table_size(size);
                }
                _ => {}
            }
        }
        notes
    }

    /// Adds a fragment to the pending block and decodes it once complete.
    fn continue_block(
        &mut self,
        direction: Direction,
        fragment: &Bytes,
        end_headers: bool,
        event: &mut FrameEvent,
        now: Instant,
    ) {
        let d = direction.index();
        let limit = self.limits.max_header_block;
        let Some(pending) = self.hpack[d].pending.as_mut() else {
            return;
        };
        if pending.data.len() + fragment.len() > limit {
            if !pending.overflowed {
                event.notes.push(format!(
                    "header block of stream {} exceeds {limit} bytes; not decoded",
                    pending.stream_id
                ));
            }
            pending.overflowed = true;
            pending.data = BytesMut::new();
        } else if !pending.overflowed {
            pending.data.extend_from_slice(fragment);
        }
        if !end_headers {
            return;
        }
        let Some(block) = self.hpack[d].pending.take() else {
            return;
        };
        if block.overflowed {
            self.hpack_lost(direction, "a header block was too large to decode");
        } else if let Some(why) = &self.hpack[d].lost {
            event
                .notes
                .push(format!("headers not decoded: HPACK state lost ({why})"));
        } else {
            match self.hpack[d].decoder.decode(&block.data) {
                Ok(list) => {
                    let fields: Vec<(String, String)> = list
                        .into_iter()
                        .map(|(n, v)| {
                            (
                                String::from_utf8_lossy(&n).into_owned(),
                                String::from_utf8_lossy(&v).into_owned(),
                            )
                        })
                        .collect();
                    event.headers = Some(self.on_headers(direction, &block, fields));
                }
                Err(error) => {
                    let msg = format!("HPACK error: {error}");
                    event.notes.push(msg.clone());
                    self.hpack_lost(direction, &msg);
                }
            }
        }
        event.path = self
            .streams
            .get(&block.stream_id)
            .and_then(|s| s.summary.path.clone());
        if block.end_stream {
            // END_STREAM on HEADERS counts once the block is complete.
            self.end_stream(direction, block.stream_id, now);
        }
    }

    /// Records what a decoded header block says about its stream.
    fn on_headers(
        &mut self,
        direction: Direction,
        block: &PendingBlock,
        fields: Vec<(String, String)>,
    ) -> HeaderBlock {
        let d = direction.index();
        let mut headers = HeaderBlock {
            role: HeaderRole::Request,
            stream_id: block.target,
            fields,
        };
        let Some(state) = self.streams.get_mut(&block.target) else {
            headers.role = match direction {
                Direction::ClientToServer => HeaderRole::Request,
                Direction::ServerToClient => HeaderRole::Response,
            };
            return headers;
        };
        let first = if block.push {
            true
        } else {
            state.blocks[d] += 1;
            state.blocks[d] == 1
        };
        headers.role = match (block.push, direction, first) {
            (true, _, _) => HeaderRole::Push,
            (false, Direction::ClientToServer, true) => HeaderRole::Request,
            (false, Direction::ServerToClient, true)
                if block.end_stream && headers.get("grpc-status").is_some() =>
            {
                HeaderRole::TrailersOnly
            }
            (false, Direction::ServerToClient, true) => HeaderRole::Response,
            (false, _, false) => HeaderRole::Trailers,
        };
        if matches!(headers.role, HeaderRole::Request | HeaderRole::Push) {
            state.summary.path = headers.get(":path").map(str::to_owned);
            state.grpc = headers
                .get("content-type")
                .is_none_or(|ct| ct.starts_with("application/grpc"));
        }
        if let Some(status) = headers.get("grpc-status") {
            state.summary.grpc_status = Some(status.to_owned());
            state.summary.grpc_message = headers.get("grpc-message").map(str::to_owned);
        }
        headers
    }

    fn open_stream(&mut self, id: u32, notes: &mut Vec<String>) {
        if self.streams.contains_key(&id) {
            return;
        }
        if self.streams.len() >= self.limits.max_streams {
            notes.push(format!(
                "more than {} open streams; stream {id} is not tracked",
                self.limits.max_streams
            ));
            return;
        }
        let parity = usize::from(id.is_multiple_of(2));
        self.highest[parity] = self.highest[parity].max(id);
        self.flow.open_stream(id);
        self.streams.insert(
            id,
            StreamState {
                summary: StreamSummary {
                    id,
                    ..StreamSummary::default()
                },
                splitters: [
                    MessageSplitter::new(self.limits.message_capture),
                    MessageSplitter::new(self.limits.message_capture),
                ],
                grpc: true,
                blocks: [0, 0],
            },
        );
    }

    /// Whether `id` belongs to a stream that was opened and has closed (or was skipped
    /// over, which closes it implicitly).
    fn is_closed(&self, id: u32) -> bool {
        id != 0
            && id <= self.highest[usize::from(id.is_multiple_of(2))]
            && !self.streams.contains_key(&id)
    }

    fn untracked(&self, id: u32) -> String {
        if self.is_closed(id) {
            format!("stream {id} is closed")
        } else {
            format!("stream {id} was never opened")
        }
    }

    fn end_stream(&mut self, direction: Direction, id: u32, now: Instant) {
        if let Some(state) = self.streams.get_mut(&id) {
            state.summary.ended[direction.index()] = true;
            if state.summary.ended == [true, true] {
                self.close_stream(id, now);
            }
        }
    }

    fn close_stream(&mut self, id: u32, now: Instant) {
        let Some(state) = self.streams.remove(&id) else {
            return;
        };
        let mut summary = state.summary;
        if let Some(blocked) = self.flow.close_stream(id, now) {
            summary.blocked = blocked;
        }
        self.closed.push_back(summary);
        while self.closed.len() > self.limits.max_closed_streams {
            self.closed.pop_front();
            self.closed_dropped += 1;
        }
    }

    fn hpack_lost(&mut self, direction: Direction, why: &str) {
        let hpack = &mut self.hpack[direction.index()];
        hpack.pending = None;
        if hpack.lost.is_none() {
            hpack.lost = Some(why.to_owned());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frame::PREFACE;
    use crate::testing::*;
    use Direction::{ClientToServer as C2S, ServerToClient as S2C};

    /// A connection decoder with the handshake done: both sides' SETTINGS exchanged and
    /// acknowledged, the server's announcing `server_window` per stream.
    fn handshaken(server_window: u32) -> (ConnectionDecoder, Instant) {
        let t0 = Instant::now();
        let mut conn = ConnectionDecoder::default();
        let mut client = PREFACE.to_vec();
        client.extend(settings(&[(2, 0)]));
        conn.feed(C2S, &client, t0);
        conn.feed(S2C, &settings(&[(4, server_window)]), t0);
        conn.feed(S2C, &settings_ack(), t0);
        conn.feed(C2S, &settings_ack(), t0);
        (conn, t0)
    }

    fn frames(events: Vec<Event>) -> Vec<FrameEvent> {
        events
            .into_iter()
            .map(|e| match e {
                Event::Frame(f) => *f,
                other => panic!("expected a frame, got {other:?}"),
            })
            .collect()
    }

    #[test]
    fn a_whole_grpc_call_request_messages_trailers_and_totals() {
        let (mut conn, t0) = handshaken(65_535);
        let mut client_enc = loona_hpack::Encoder::new();
        let mut server_enc = loona_hpack::Encoder::new();

        let mut bytes = headers(
            1,
            false,
            &hpack(&mut client_enc, &request_fields("/chat.Chat/Chat")),
        );
        bytes.extend(data(1, false, &grpc(b"\x0a\x02hi")));
        let seen = frames(conn.feed(C2S, &bytes, t0));
        let request = seen[0].headers.as_ref().unwrap();
        assert_eq!(request.role, HeaderRole::Request);
        assert_eq!(request.get(":path"), Some("/chat.Chat/Chat"));
        assert_eq!(request.get("grpc-timeout"), Some("5S"));
        assert_eq!(seen[1].messages.len(), 1);
        assert_eq!(&seen[1].messages[0].data[..], b"\x0a\x02hi");
        assert_eq!(seen[1].path.as_deref(), Some("/chat.Chat/Chat"));

        let mut bytes = headers(
            1,
            false,
            &hpack(
                &mut server_enc,
                &[(":status", "200"), ("content-type", "application/grpc")],
            ),
        );
        bytes.extend(data(1, false, &grpc(b"\x0a\x06<<hi>>")));
        bytes.extend(headers(
            1,
            true,
            &hpack(&mut server_enc, &[("grpc-status", "0")]),
        ));
        let seen = frames(conn.feed(S2C, &bytes, t0));
        assert_eq!(seen[0].headers.as_ref().unwrap().role, HeaderRole::Response);
        assert_eq!(seen[1].messages[0].index, 1);
        let trailers = seen[2].headers.as_ref().unwrap();
        assert_eq!(trailers.role, HeaderRole::Trailers);
        assert_eq!(seen[2].path.as_deref(), Some("/chat.Chat/Chat"));

        // The client half-closes with an empty DATA frame: the stream is done.
        frames(conn.feed(C2S, &data(1, true, b""), t0));
        let summary = conn.summary(t0);
        assert_eq!(summary.streams.len(), 1);
        let stream = &summary.streams[0];
        assert_eq!(stream.path.as_deref(), Some("/chat.Chat/Chat"));
        assert_eq!(stream.messages, [1, 1]);
        assert_eq!(stream.data_bytes, [9, 13]);
        assert_eq!(stream.ended, [true, true]);
        assert_eq!(stream.grpc_status.as_deref(), Some("0"));
        assert!(
            conn.flow().window(C2S, Scope::Stream(1)).is_none(),
            "closed streams are forgotten"
        );
    }

    #[test]
    fn headers_and_continuations_are_reassembled_before_decoding() {
        let (mut conn, t0) = handshaken(65_535);
        let mut enc = loona_hpack::Encoder::new();
        let block = hpack(&mut enc, &request_fields("/a.B/C"));
        let (a, rest) = block.split_at(5);
        let (b, c) = rest.split_at(7);
        let mut bytes = frame(1, 0, 1, a);
        bytes.extend(frame(9, 0, 1, b));
        bytes.extend(frame(9, Flags::END_HEADERS, 1, c));
        let seen = frames(conn.feed(C2S, &bytes, t0));
        assert!(seen[0].headers.is_none() && seen[1].headers.is_none());
        let headers = seen[2].headers.as_ref().unwrap();
        assert_eq!(headers.get(":path"), Some("/a.B/C"));
        assert_eq!(headers.fields.len(), 7);
    }

    #[test]
    fn an_interrupted_header_block_is_a_protocol_error_and_stops_header_decoding() {
        let (mut conn, t0) = handshaken(65_535);
        let mut enc = loona_hpack::Encoder::new();
        let block = hpack(&mut enc, &request_fields("/a.B/C"));
        let mut bytes = frame(1, 0, 1, &block[..4]);
        bytes.extend(frame(6, 0, 0, b"12345678"));
        bytes.extend(headers(
            3,
            false,
            &hpack(&mut enc, &request_fields("/a.B/C")),
        ));
        let seen = frames(conn.feed(C2S, &bytes, t0));
        assert!(
            seen[1].notes[0].contains("interrupted by PING"),
            "{:?}",
            seen[1].notes
        );
        assert!(seen[2].headers.is_none());
        assert!(
            seen[2].notes[0].contains("HPACK state lost"),
            "{:?}",
            seen[2].notes
        );
    }

    #[test]
    fn hpack_huffman_and_dynamic_table_per_direction() {
        // RFC 7541 C.4.1 and C.4.2: Huffman-coded requests, the second one indexing an
        // entry the first one added to the dynamic table.
        let (mut conn, t0) = handshaken(65_535);
        let first = [
            0x82, 0x86, 0x84, 0x41, 0x8c, 0xf1, 0xe3, 0xc2, 0xe5, 0xf2, 0x3a, 0x6b, 0xa0, 0xab,
            0x90, 0xf4, 0xff,
        ];
        let second = [
            0x82, 0x86, 0x84, 0xbe, 0x58, 0x86, 0xa8, 0xeb, 0x10, 0x64, 0x9c, 0xbf,
        ];
        let seen = frames(conn.feed(C2S, &headers(1, true, &first), t0));
        let h = seen[0].headers.as_ref().unwrap();
        assert_eq!(h.get(":authority"), Some("www.example.com"));
        let seen = frames(conn.feed(C2S, &headers(3, true, &second), t0));
        let h = seen[0].headers.as_ref().unwrap();
        assert_eq!(h.get(":authority"), Some("www.example.com"));
        assert_eq!(h.get("cache-control"), Some("no-cache"));
        // The server's table is its own: index 62 is empty there.
        let seen = frames(conn.feed(S2C, &headers(1, false, &[0xbe]), t0));
        assert!(seen[0].headers.is_none());
        assert!(
            seen[0].notes[0].starts_with("HPACK error"),
            "{:?}",
            seen[0].notes
        );
        // ...and the client's direction still decodes.
        let seen = frames(conn.feed(C2S, &headers(5, true, &second), t0));
        assert!(seen[0].headers.is_some());
    }

    #[test]
    fn a_small_initial_window_blocks_the_client_until_window_update() {
        let (mut conn, t0) = handshaken(1024);
        let mut enc = loona_hpack::Encoder::new();
        frames(conn.feed(
            C2S,
            &headers(
                1,
                false,
                &hpack(&mut enc, &request_fields("/chat.Chat/Chat")),
            ),
            t0,
        ));
        assert_eq!(conn.flow().window(C2S, Scope::Stream(1)), Some(1024));
        let message = grpc(&[b'x'; 2000]);
        let seen = frames(conn.feed(C2S, &data(1, false, &message[..1024]), t0));
        assert!(seen[0].flow.contains(&FlowNote::Blocked {
            side: C2S,
            scope: Scope::Stream(1),
            window: 0
        }));
        assert_eq!(seen[0].partial.unwrap().received, 1019);
        let t1 = t0 + Duration::from_millis(25);
        let seen = frames(conn.feed(S2C, &window_update(1, 1024), t1));
        assert!(matches!(
            seen[0].flow[0],
            FlowNote::Unblocked { side: C2S, scope: Scope::Stream(1), window: 1024, after } if after == Duration::from_millis(25)
        ));
        let seen = frames(conn.feed(C2S, &data(1, false, &message[1024..]), t1));
        assert_eq!(seen[0].messages[0].length, 2000);
        assert_eq!(
            conn.summary(t1).streams[0].blocked[0],
            Duration::from_millis(25)
        );
    }

    #[test]
    fn settings_apply_when_acknowledged() {
        let (mut conn, t0) = handshaken(65_535);
        let mut enc = loona_hpack::Encoder::new();
        frames(conn.feed(
            C2S,
            &headers(1, false, &hpack(&mut enc, &request_fields("/a.B/C"))),
            t0,
        ));
        frames(conn.feed(S2C, &settings(&[(4, 100)]), t0));
        assert_eq!(conn.flow().window(C2S, Scope::Stream(1)), Some(65_535));
        let seen = frames(conn.feed(C2S, &settings_ack(), t0));
        assert_eq!(conn.flow().window(C2S, Scope::Stream(1)), Some(100));
        assert_eq!(seen[0].flow.len(), 1);
        assert_eq!(
            seen[0].applied,
            [Setting {
                id: SettingId::InitialWindowSize,
                value: 100
            }]
        );
        let seen = frames(conn.feed(C2S, &settings_ack(), t0));
        assert!(seen[0].notes[0].contains("no SETTINGS to acknowledge"));
    }

    #[test]
    fn trailers_only_reset_and_push() {
        let (mut conn, t0) = handshaken(65_535);
        let mut client_enc = loona_hpack::Encoder::new();
        let mut server_enc = loona_hpack::Encoder::new();
        frames(conn.feed(
            C2S,
            &headers(1, true, &hpack(&mut client_enc, &request_fields("/x.Y/Z"))),
            t0,
        ));
        let seen = frames(conn.feed(
            S2C,
            &headers(
                1,
                true,
                &hpack(
                    &mut server_enc,
                    &[
                        (":status", "200"),
                        ("grpc-status", "12"),
                        ("grpc-message", "unknown method"),
                    ],
                ),
            ),
            t0,
        ));
        assert_eq!(
            seen[0].headers.as_ref().unwrap().role,
            HeaderRole::TrailersOnly
        );
        let summary = conn.summary(t0);
        assert_eq!(summary.streams[0].grpc_status.as_deref(), Some("12"));
        assert_eq!(
            summary.streams[0].grpc_message.as_deref(),
            Some("unknown method")
        );

        frames(conn.feed(
            C2S,
            &headers(3, false, &hpack(&mut client_enc, &request_fields("/x.Y/Z"))),
            t0,
        ));
        frames(conn.feed(C2S, &frame(3, 0, 3, &8u32.to_be_bytes()), t0));
        let summary = conn.summary(t0);
        assert_eq!(summary.streams[1].reset, Some((C2S, ErrorCode(8))));
        let seen = frames(conn.feed(C2S, &data(3, false, b"late"), t0));
        assert_eq!(seen[0].notes, ["stream 3 is closed"]);

        frames(conn.feed(
            C2S,
            &headers(
                5,
                true,
                &hpack(&mut client_enc, &[(":method", "GET"), (":path", "/")]),
            ),
            t0,
        ));
        let mut promise = 2u32.to_be_bytes().to_vec();
        promise.extend(hpack(
            &mut server_enc,
            &[(":method", "GET"), (":path", "/style.css")],
        ));
        let seen = frames(conn.feed(S2C, &frame(5, Flags::END_HEADERS, 5, &promise), t0));
        let push = seen[0].headers.as_ref().unwrap();
        assert_eq!((push.role, push.stream_id), (HeaderRole::Push, 2));
        assert_eq!(
            conn.summary(t0)
                .streams
                .iter()
                .find(|s| s.id == 2)
                .unwrap()
                .path
                .as_deref(),
            Some("/style.css")
        );
    }

    #[test]
    fn non_grpc_bodies_are_not_split_and_stream_count_is_bounded() {
        let t0 = Instant::now();
        let mut conn = ConnectionDecoder::new(Limits {
            max_streams: 1,
            max_closed_streams: 0,
            ..Limits::default()
        });
        conn.feed(C2S, PREFACE, t0);
        let mut enc = loona_hpack::Encoder::new();
        let fields = [
            (":method", "POST"),
            (":path", "/upload"),
            ("content-type", "text/plain"),
        ];
        frames(conn.feed(C2S, &headers(1, false, &hpack(&mut enc, &fields)), t0));
        let seen = frames(conn.feed(C2S, &data(1, false, &grpc(b"abc")), t0));
        assert!(seen[0].messages.is_empty() && seen[0].partial.is_none());
        let seen = frames(conn.feed(C2S, &headers(3, false, &hpack(&mut enc, &fields)), t0));
        assert!(
            seen[0].notes.iter().any(|n| n.contains("not tracked")),
            "{:?}",
            seen[0].notes
        );
        frames(conn.feed(C2S, &frame(3, 0, 1, &0u32.to_be_bytes()), t0));
        assert_eq!(conn.summary(t0).streams_dropped, 1);
    }

    #[test]
    fn a_missing_preface_is_reported_once() {
        let mut conn = ConnectionDecoder::default();
        let events = conn.feed(C2S, b"GET / HTTP/1.1\r\n\r\n", Instant::now());
        assert!(matches!(
            &events[..],
            [Event::Error {
                error: DecodeError::BadPreface { .. },
                ..
            }]
        ));
        assert!(conn.feed(C2S, b"more", Instant::now()).is_empty());
    }
}
