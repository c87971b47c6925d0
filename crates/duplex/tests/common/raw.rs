//! Raw HTTP/2 on a TCP socket, for the attacks the `h2` crate refuses to produce:
//! hand-encoded frames (9-byte header + payload, RFC 9113 §4.1) and HPACK blocks
//! (literals without Huffman coding, RFC 7541), and a reader that records what the server
//! sent back, decoded by `duplex-wire` (the `tap` decoder).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use duplex_wire::{ConnectionDecoder, Direction, Event, HeaderBlock, Payload};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpSocket, TcpStream};
use tokio::task::JoinHandle;

pub(crate) const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

// Frame types (RFC 9113 §6).
pub(crate) const DATA: u8 = 0x0;
pub(crate) const HEADERS: u8 = 0x1;
pub(crate) const RST_STREAM: u8 = 0x3;
pub(crate) const SETTINGS: u8 = 0x4;
pub(crate) const PING: u8 = 0x6;
pub(crate) const GOAWAY: u8 = 0x7;
pub(crate) const WINDOW_UPDATE: u8 = 0x8;
pub(crate) const CONTINUATION: u8 = 0x9;

// Flags.
pub(crate) const END_STREAM: u8 = 0x1;
pub(crate) const ACK: u8 = 0x1;
pub(crate) const END_HEADERS: u8 = 0x4;

// SETTINGS identifiers (RFC 9113 §6.5.2).
pub(crate) const SETTINGS_HEADER_TABLE_SIZE: u16 = 0x1;
pub(crate) const SETTINGS_ENABLE_PUSH: u16 = 0x2;
pub(crate) const SETTINGS_INITIAL_WINDOW_SIZE: u16 = 0x4;

// Error codes (RFC 9113 §7).
pub(crate) const NO_ERROR: u32 = 0x0;
pub(crate) const PROTOCOL_ERROR: u32 = 0x1;
pub(crate) const STREAM_CLOSED: u32 = 0x5;
pub(crate) const REFUSED_STREAM: u32 = 0x7;
pub(crate) const CANCEL: u32 = 0x8;
pub(crate) const COMPRESSION_ERROR: u32 = 0x9;
pub(crate) const ENHANCE_YOUR_CALM: u32 = 0xb;

/// The RFC name of an error code, for test output.
pub(crate) fn error_name(code: u32) -> String {
    duplex_wire::frame::ErrorCode(code).to_string()
}

/// One frame: 24-bit length, type, flags, 31-bit stream id, payload.
pub(crate) fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = u32::try_from(payload.len()).expect("a frame payload under 16 MiB");
    assert!(len < 1 << 24, "a frame payload under 16 MiB");
    let mut out = Vec::with_capacity(9 + payload.len());
    out.extend_from_slice(&len.to_be_bytes()[1..]);
    out.push(kind);
    out.push(flags);
    out.extend_from_slice(&(stream & 0x7fff_ffff).to_be_bytes());
    out.extend_from_slice(payload);
    out
}

pub(crate) fn settings(pairs: &[(u16, u32)]) -> Vec<u8> {
    let mut payload = Vec::with_capacity(pairs.len() * 6);
    for (id, value) in pairs {
        payload.extend_from_slice(&id.to_be_bytes());
        payload.extend_from_slice(&value.to_be_bytes());
    }
    frame(SETTINGS, 0, 0, &payload)
}

pub(crate) fn settings_ack() -> Vec<u8> {
    frame(SETTINGS, ACK, 0, &[])
}

pub(crate) fn ping(opaque: u64) -> Vec<u8> {
    frame(PING, 0, 0, &opaque.to_be_bytes())
}

pub(crate) fn rst_stream(stream: u32, code: u32) -> Vec<u8> {
    frame(RST_STREAM, 0, stream, &code.to_be_bytes())
}

pub(crate) fn window_update(stream: u32, increment: u32) -> Vec<u8> {
    frame(WINDOW_UPDATE, 0, stream, &increment.to_be_bytes())
}

pub(crate) fn data(stream: u32, payload: &[u8], end_stream: bool) -> Vec<u8> {
    frame(
        DATA,
        if end_stream { END_STREAM } else { 0 },
        stream,
        payload,
    )
}

/// A HEADERS frame carrying `block`; `flags` as given (END_HEADERS is not implied).
pub(crate) fn headers(stream: u32, flags: u8, block: &[u8]) -> Vec<u8> {
    frame(HEADERS, flags, stream, block)
}

pub(crate) fn continuation(stream: u32, end_headers: bool, block: &[u8]) -> Vec<u8> {
    frame(
        CONTINUATION,
        if end_headers { END_HEADERS } else { 0 },
        stream,
        block,
    )
}

/// One gRPC length-prefixed message, uncompressed.
pub(crate) fn grpc_message(payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(5 + payload.len());
    out.push(0);
    out.extend_from_slice(&u32::try_from(payload.len()).unwrap().to_be_bytes());
    out.extend_from_slice(payload);
    out
}

/// Hand-written HPACK (RFC 7541) encodings: no Huffman coding, no compression unless asked.
pub(crate) mod hpack {
    /// An integer with an N-bit prefix (§5.1); `pattern` holds the bits above the prefix.
    pub(crate) fn integer(out: &mut Vec<u8>, pattern: u8, prefix_bits: u32, mut value: usize) {
        let max = (1usize << prefix_bits) - 1;
        if value < max {
            out.push(pattern | value as u8);
            return;
        }
        out.push(pattern | max as u8);
        value -= max;
        while value >= 128 {
            out.push((value % 128) as u8 | 0x80);
            value /= 128;
        }
        out.push(value as u8);
    }

    /// A string literal, not Huffman-coded (§5.2).
    pub(crate) fn string(out: &mut Vec<u8>, bytes: &[u8]) {
        integer(out, 0, 7, bytes.len());
        out.extend_from_slice(bytes);
    }

    /// Literal header field without indexing, new name (§6.2.2).
    pub(crate) fn literal(name: &str, value: &[u8]) -> Vec<u8> {
        let mut out = vec![0x00];
        string(&mut out, name.as_bytes());
        string(&mut out, value);
        out
    }

    /// Literal header field with incremental indexing, new name (§6.2.1): the decoder
    /// adds it to its dynamic table (as index 62, pushing older entries up).
    pub(crate) fn literal_indexed(name: &str, value: &[u8]) -> Vec<u8> {
        let mut out = vec![0x40];
        string(&mut out, name.as_bytes());
        string(&mut out, value);
        out
    }

    /// Indexed header field (§6.1): 1..=61 static table, 62.. dynamic table.
    pub(crate) fn indexed(index: usize) -> Vec<u8> {
        let mut out = Vec::new();
        integer(&mut out, 0x80, 7, index);
        out
    }

    /// Dynamic table size update (§6.3).
    pub(crate) fn table_size_update(size: usize) -> Vec<u8> {
        let mut out = Vec::new();
        integer(&mut out, 0x20, 5, size);
        out
    }

    /// The standard gRPC request fields besides the pseudo-headers.
    pub(crate) const GRPC: &[(&str, &str)] =
        &[("content-type", "application/grpc"), ("te", "trailers")];

    /// The pseudo-headers of a POST to `path`, then `fields`, all as plain literals.
    pub(crate) fn request(path: &str, fields: &[(&str, &str)]) -> Vec<u8> {
        let mut out = Vec::new();
        for (name, value) in [
            (":method", "POST"),
            (":scheme", "http"),
            (":path", path),
            (":authority", "localhost"),
        ]
        .into_iter()
        .chain(fields.iter().copied())
        {
            out.extend(literal(name, value.as_bytes()));
        }
        out
    }
}

/// A GOAWAY the server sent.
#[derive(Debug, Clone)]
pub(crate) struct GoAway {
    pub last_stream: u32,
    pub code: u32,
    pub debug: String,
    /// Since the connection was opened.
    pub after: Duration,
}

impl std::fmt::Display for GoAway {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "GOAWAY({}, last_stream={}, {:?})",
            error_name(self.code),
            self.last_stream,
            self.debug
        )
    }
}

/// What the server has sent on one connection so far.
#[derive(Debug, Clone, Default)]
pub(crate) struct Seen {
    pub frames: usize,
    pub bytes: usize,
    /// Frames by type.
    pub kinds: BTreeMap<u8, usize>,
    /// RST_STREAM frames by error code.
    pub resets: BTreeMap<u32, usize>,
    /// Streams the server reset, and why (the first 64).
    pub reset_streams: Vec<(u32, u32)>,
    pub goaway: Option<GoAway>,
    /// Decoded header blocks (responses, trailers; the first 4096).
    pub headers: Vec<HeaderBlock>,
    /// DATA payload bytes per stream.
    pub data: BTreeMap<u32, Vec<u8>>,
    pub pings_acked: usize,
    pub settings_acks: usize,
    /// The server's SETTINGS_INITIAL_WINDOW_SIZE (65,535 until its SETTINGS arrive).
    pub server_initial_window: u32,
    /// WINDOW_UPDATE increments the server granted, per stream (0 = the connection).
    pub granted: BTreeMap<u32, u64>,
    /// Set when the server closed the connection (EOF or reset), since it was opened.
    pub closed_after: Option<Duration>,
}

impl Seen {
    pub(crate) fn count(&self, kind: u8) -> usize {
        self.kinds.get(&kind).copied().unwrap_or(0)
    }

    pub(crate) fn reset_count(&self, code: u32) -> usize {
        self.resets.get(&code).copied().unwrap_or(0)
    }

    /// The header blocks the server sent on `stream`, in order.
    pub(crate) fn headers_of(&self, stream: u32) -> Vec<&HeaderBlock> {
        self.headers
            .iter()
            .filter(|block| block.stream_id == stream)
            .collect()
    }

    /// The first value of `name` in any header block on `stream`.
    pub(crate) fn header(&self, stream: u32, name: &str) -> Option<String> {
        self.headers_of(stream)
            .iter()
            .find_map(|block| block.get(name).map(str::to_owned))
    }

    /// What the server did to `stream`: `RST_STREAM(code)` for an error reset; else its
    /// `:status`, `grpc-status` and (percent-decoded) `grpc-message`; or `nothing`.
    ///
    /// RST_STREAM(NO_ERROR) is left out: h2 sends it when a response ends before the
    /// request did ("stop sending"), a race, not an outcome.
    pub(crate) fn stream_outcome(&self, stream: u32) -> String {
        if let Some((_, code)) = self
            .reset_streams
            .iter()
            .find(|(id, code)| *id == stream && *code != NO_ERROR)
        {
            return format!("RST_STREAM({})", error_name(*code));
        }
        let mut parts = Vec::new();
        if let Some(status) = self.header(stream, ":status") {
            parts.push(format!("HTTP {status}"));
        }
        if let Some(grpc) = self.header(stream, "grpc-status") {
            parts.push(format!("grpc-status {grpc}"));
        }
        if let Some(message) = self.header(stream, "grpc-message") {
            parts.push(format!("{:?}", percent_decode(&message)));
        }
        if let Some(accepted) = self.header(stream, "grpc-accept-encoding") {
            parts.push(format!("grpc-accept-encoding {accepted:?}"));
        }
        if parts.is_empty() {
            return "nothing".to_owned();
        }
        parts.join(" ")
    }

    /// A one-line account for the report: GOAWAY or not, resets, closure.
    pub(crate) fn summary(&self) -> String {
        let mut parts = Vec::new();
        if let Some(goaway) = &self.goaway {
            parts.push(goaway.to_string());
        } else {
            parts.push("no GOAWAY".to_owned());
        }
        for (code, count) in &self.resets {
            parts.push(format!("{count}×RST_STREAM({})", error_name(*code)));
        }
        match self.closed_after {
            Some(after) => parts.push(format!("closed after {after:.2?}")),
            None => parts.push("connection open".to_owned()),
        }
        parts.join(", ")
    }
}

/// A raw client connection: bytes go out as given; a background task reads and records
/// everything the server sends (once [`RawConn::start_reading`] is called).
pub(crate) struct RawConn {
    pub write: OwnedWriteHalf,
    read: Option<OwnedReadHalf>,
    pub seen: Arc<Mutex<Seen>>,
    opened: Instant,
    reader: Option<JoinHandle<()>>,
    /// Bytes written so far.
    pub written: usize,
}

/// How a bounded write ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Wrote {
    /// Everything was written.
    All,
    /// The socket stopped taking bytes for the whole time limit: the server stopped
    /// reading (flow control at the TCP level).
    Blocked,
    /// The write failed: the server closed or reset the connection.
    Failed(std::io::ErrorKind),
}

impl RawConn {
    /// A TCP connection with nothing sent yet. `recv_buffer` shrinks our socket's receive
    /// buffer, so a server writing to a client that does not read is pushed back soon.
    pub(crate) async fn tcp(addr: SocketAddr, recv_buffer: Option<u32>) -> Self {
        let socket = TcpSocket::new_v4().unwrap();
        if let Some(size) = recv_buffer {
            socket.set_recv_buffer_size(size).unwrap();
            // A small send buffer too, so the flood's own bytes wait in the server's
            // receive buffer, not in ours.
            socket.set_send_buffer_size(size).unwrap();
        }
        let tcp: TcpStream = socket.connect(addr).await.expect("connect to the server");
        tcp.set_nodelay(true).unwrap();
        let (read, write) = tcp.into_split();
        Self {
            write,
            read: Some(read),
            seen: Arc::default(),
            opened: Instant::now(),
            reader: None,
            written: 0,
        }
    }

    /// Connects, sends the preface with `settings`, acknowledges the server's SETTINGS
    /// (so its limits are in force) and starts recording what the server sends.
    pub(crate) async fn open(addr: SocketAddr, settings_pairs: &[(u16, u32)]) -> Self {
        let mut conn = Self::tcp(addr, None).await;
        let mut hello = PREFACE.to_vec();
        hello.extend(settings(settings_pairs));
        // The server's first frame is its SETTINGS (RFC 9113 §3.4): acknowledging it
        // before reading it is what every client does in effect, and saves a round trip.
        hello.extend(settings_ack());
        conn.send(&hello).await.expect("send the preface");
        conn.start_reading();
        let acked = conn
            .wait_for(super::STEP, |seen| seen.settings_acks > 0 || seen.closed())
            .await;
        assert!(acked, "the server acknowledges our SETTINGS");
        conn
    }

    /// [`RawConn::open`] with the largest windows, so the server never waits on us.
    pub(crate) async fn open_wide(addr: SocketAddr) -> Self {
        const MAX_WINDOW: u32 = (1 << 31) - 1;
        let mut conn = Self::open(addr, &[(SETTINGS_INITIAL_WINDOW_SIZE, MAX_WINDOW)]).await;
        conn.send(&window_update(0, MAX_WINDOW - 65_535))
            .await
            .expect("send WINDOW_UPDATE");
        conn
    }

    /// Connects and sends the preface and `settings`, and never reads.
    pub(crate) async fn open_unread(addr: SocketAddr, settings_pairs: &[(u16, u32)]) -> Self {
        let mut conn = Self::tcp(addr, Some(4096)).await;
        let mut hello = PREFACE.to_vec();
        hello.extend(settings(settings_pairs));
        hello.extend(settings_ack());
        conn.send(&hello).await.expect("send the preface");
        conn
    }

    /// Starts the background reader.
    pub(crate) fn start_reading(&mut self) {
        let Some(mut read) = self.read.take() else {
            return;
        };
        let seen = self.seen.clone();
        seen.lock().unwrap().server_initial_window = 65_535;
        let opened = self.opened;
        self.reader = Some(tokio::spawn(async move {
            let mut decoder = ConnectionDecoder::default();
            let mut buf = vec![0u8; 64 * 1024];
            loop {
                let n = match read.read(&mut buf).await {
                    Ok(0) | Err(_) => 0,
                    Ok(n) => n,
                };
                let mut seen = seen.lock().unwrap();
                if n == 0 {
                    seen.closed_after = Some(opened.elapsed());
                    return;
                }
                seen.bytes += n;
                for event in decoder.feed(Direction::ServerToClient, &buf[..n], Instant::now()) {
                    let Event::Frame(event) = event else { continue };
                    seen.frames += 1;
                    let header = event.frame.header;
                    *seen.kinds.entry(u8::from(header.kind)).or_default() += 1;
                    let flags = header.flags.0;
                    match &event.frame.payload {
                        Payload::RstStream(code) => {
                            *seen.resets.entry(code.0).or_default() += 1;
                            if seen.reset_streams.len() < 64 {
                                seen.reset_streams.push((header.stream_id, code.0));
                            }
                        }
                        Payload::GoAway {
                            last_stream_id,
                            error_code,
                            debug_data,
                        } => {
                            seen.goaway.get_or_insert(GoAway {
                                last_stream: *last_stream_id,
                                code: error_code.0,
                                debug: String::from_utf8_lossy(debug_data).into_owned(),
                                after: opened.elapsed(),
                            });
                        }
                        Payload::Ping(_) if flags & ACK != 0 => seen.pings_acked += 1,
                        Payload::Settings(_) if flags & ACK != 0 => seen.settings_acks += 1,
                        Payload::Settings(settings) => {
                            for setting in settings {
                                if setting.id == duplex_wire::SettingId::InitialWindowSize {
                                    seen.server_initial_window = setting.value;
                                }
                            }
                        }
                        Payload::WindowUpdate { increment } => {
                            *seen.granted.entry(header.stream_id).or_default() +=
                                u64::from(*increment);
                        }
                        Payload::Data { data, .. } => {
                            let kept = seen.data.entry(header.stream_id).or_default();
                            if kept.len() < 8 << 20 {
                                kept.extend_from_slice(data);
                            }
                        }
                        _ => {}
                    }
                    if let Some(block) = &event.headers
                        && seen.headers.len() < 4096
                    {
                        seen.headers.push(block.clone());
                    }
                }
            }
        }));
    }

    pub(crate) async fn send(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.write.write_all(bytes).await?;
        self.written += bytes.len();
        Ok(())
    }

    /// Writes `bytes` unless the socket takes nothing for `limit` or fails.
    pub(crate) async fn send_within(&mut self, bytes: &[u8], limit: Duration) -> Wrote {
        let mut offset = 0;
        while offset < bytes.len() {
            match tokio::time::timeout(limit, self.write.write(&bytes[offset..])).await {
                Err(_) => return Wrote::Blocked,
                Ok(Err(error)) => return Wrote::Failed(error.kind()),
                Ok(Ok(0)) => return Wrote::Failed(std::io::ErrorKind::WriteZero),
                Ok(Ok(n)) => {
                    offset += n;
                    self.written += n;
                }
            }
        }
        Wrote::All
    }

    /// Sends `payload` as DATA on `stream` within the server's flow-control windows
    /// (16 KiB frames), waiting up to `limit` for each WINDOW_UPDATE it needs. `sent` holds
    /// what was already sent: per stream, and under key 0 for the connection. Returns
    /// whether everything went out.
    pub(crate) async fn send_data_windowed(
        &mut self,
        stream: u32,
        payload: &[u8],
        end_stream: bool,
        sent: &mut BTreeMap<u32, u64>,
        limit: Duration,
    ) -> bool {
        let available = |seen: &Seen, sent: &BTreeMap<u32, u64>| {
            let window = |id: u32, initial: u64| {
                (initial + seen.granted.get(&id).copied().unwrap_or(0))
                    .saturating_sub(sent.get(&id).copied().unwrap_or(0))
            };
            window(stream, u64::from(seen.server_initial_window)).min(window(0, 65_535))
        };
        let mut offset = 0;
        loop {
            let rest = payload.len() - offset;
            let room = {
                let seen = self.seen.lock().unwrap();
                available(&seen, sent)
            };
            if rest > 0 && room == 0 {
                let sent_now = sent.clone();
                let ended = |seen: &Seen| {
                    seen.goaway.is_some()
                        || seen.closed()
                        || seen.reset_streams.iter().any(|(id, _)| *id == stream)
                };
                if !self
                    .wait_for(limit, |seen| available(seen, &sent_now) > 0 || ended(seen))
                    .await
                    || ended(&self.seen.lock().unwrap())
                {
                    return false;
                }
                continue;
            }
            let take = rest
                .min(16 * 1024)
                .min(usize::try_from(room).unwrap_or(usize::MAX));
            let last = take == rest;
            let bytes = data(stream, &payload[offset..offset + take], last && end_stream);
            if self.send(&bytes).await.is_err() {
                return false;
            }
            *sent.entry(stream).or_default() += take as u64;
            *sent.entry(0).or_default() += take as u64;
            offset += take;
            if last {
                return true;
            }
        }
    }

    /// A copy of what the server sent so far.
    pub(crate) fn seen(&self) -> Seen {
        self.seen.lock().unwrap().clone()
    }

    /// Waits up to `limit` for `done` to hold on what was seen; returns whether it did.
    pub(crate) async fn wait_for(&self, limit: Duration, done: impl Fn(&Seen) -> bool) -> bool {
        let deadline = Instant::now() + limit;
        loop {
            if done(&self.seen.lock().unwrap()) {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }

    /// Waits up to `limit` for a GOAWAY or the end of the connection.
    pub(crate) async fn wait_for_goaway_or_close(&self, limit: Duration) -> Seen {
        self.wait_for(limit, |seen| seen.goaway.is_some() || seen.closed())
            .await;
        self.seen()
    }

    /// Whether the connection still works: a PING is acknowledged within `limit`.
    pub(crate) async fn ping_pong(&mut self, limit: Duration) -> bool {
        let before = self.seen().pings_acked;
        if self.send(&ping(0x6475_706c_6578)).await.is_err() {
            return false;
        }
        self.wait_for(limit, |seen| seen.pings_acked > before).await
    }

    pub(crate) fn elapsed(&self) -> Duration {
        self.opened.elapsed()
    }
}

/// Percent-decodes a `grpc-message` value (the gRPC spec's encoding).
pub(crate) fn percent_decode(value: &str) -> String {
    let raw = value.as_bytes();
    let mut out = Vec::with_capacity(raw.len());
    let mut i = 0;
    while i < raw.len() {
        let hex = raw
            .get(i + 1..i + 3)
            .and_then(|h| std::str::from_utf8(h).ok())
            .and_then(|h| u8::from_str_radix(h, 16).ok());
        match (raw[i], hex) {
            (b'%', Some(byte)) => {
                out.push(byte);
                i += 3;
            }
            (byte, _) => {
                out.push(byte);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

impl Seen {
    pub(crate) fn closed(&self) -> bool {
        self.closed_after.is_some()
    }
}

impl Drop for RawConn {
    fn drop(&mut self) {
        if let Some(reader) = self.reader.take() {
            reader.abort();
        }
    }
}
