//! A pure, incremental decoder for HTTP/2 connections carrying gRPC: what `duplex tap`
//! shows. No I/O, no clock, no panics on any input.
//!
//! Layers, bottom up:
//! - [`frame`]: the 9-byte frame header and every frame type's payload;
//! - [`decoder`]: one direction's bytes, in any chunking, into the preface and frames;
//! - [`grpc`]: DATA payloads into gRPC length-prefixed messages, across frame boundaries;
//! - [`flow`]: each side's send windows, per stream and per connection, and blocked time;
//! - [`conn`]: both directions together, with HPACK (one decoder per direction), streams,
//!   messages, windows and per-stream totals;
//! - [`schema`]: protobuf descriptors to show messages as text.
//!
//! ```
//! use std::time::Instant;
//! use duplex_wire::{ConnectionDecoder, Direction, Event};
//!
//! let mut conn = ConnectionDecoder::default();
//! let mut bytes = duplex_wire::frame::PREFACE.to_vec();
//! bytes.extend_from_slice(&[0, 0, 0, 4, 0, 0, 0, 0, 0]); // an empty SETTINGS frame
//! let events = conn.feed(Direction::ClientToServer, &bytes, Instant::now());
//! assert!(matches!(events[0], Event::Preface { .. }));
//! assert!(matches!(&events[1], Event::Frame(f) if f.frame.header.kind.to_string() == "SETTINGS"));
//! ```

pub mod conn;
pub mod decoder;
pub mod flow;
pub mod frame;
#[cfg(feature = "fuzzing")]
#[doc(hidden)]
pub mod fuzzing;
pub mod grpc;
pub mod schema;
#[cfg(test)]
mod testing;

pub use conn::{
    ConnectionDecoder, ConnectionSummary, Event, FrameEvent, HeaderBlock, HeaderRole, Limits,
    StreamSummary,
};
pub use decoder::{DecodeError, FrameDecoder, Item};
pub use flow::{FlowControl, FlowNote, Scope};
pub use frame::{
    ErrorCode, Flags, Frame, FrameError, FrameHeader, FrameType, Payload, Setting, SettingId,
};
pub use grpc::{GrpcMessage, MessageSplitter, Partial};
pub use schema::{Decoded, Schema};

use std::fmt;

/// Which way bytes travel on the connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Direction {
    /// From the client (the side that sent the preface) to the server: `→`.
    ClientToServer,
    /// From the server to the client: `←`.
    ServerToClient,
}

impl Direction {
    /// Both directions, client to server first.
    pub const BOTH: [Direction; 2] = [Direction::ClientToServer, Direction::ServerToClient];

    /// 0 for client to server, 1 for server to client: the index into per-side arrays.
    pub fn index(self) -> usize {
        match self {
            Self::ClientToServer => 0,
            Self::ServerToClient => 1,
        }
    }

    /// The other direction.
    pub fn opposite(self) -> Self {
        match self {
            Self::ClientToServer => Self::ServerToClient,
            Self::ServerToClient => Self::ClientToServer,
        }
    }

    /// `→` or `←`.
    pub fn arrow(self) -> &'static str {
        match self {
            Self::ClientToServer => "→",
            Self::ServerToClient => "←",
        }
    }

    /// `client` or `server`: the side that sends in this direction.
    pub fn sender(self) -> &'static str {
        match self {
            Self::ClientToServer => "client",
            Self::ServerToClient => "server",
        }
    }
}

impl fmt::Display for Direction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.arrow())
    }
}

/// Lower-case hex of at most `limit` bytes, with `…(+N)` when cut.
pub fn hex(bytes: &[u8], limit: usize) -> String {
    use fmt::Write as _;
    let shown = &bytes[..bytes.len().min(limit)];
    let mut out = String::with_capacity(shown.len() * 2 + 12);
    for b in shown {
        let _ = write!(out, "{b:02x}");
    }
    if bytes.len() > shown.len() {
        let _ = write!(out, "…(+{})", bytes.len() - shown.len());
    }
    out
}
