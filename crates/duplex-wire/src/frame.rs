//! HTTP/2 frames (RFC 9113 §4 and §6): the 9-byte header and the payload of every frame
//! type, parsed from complete frames. Unknown frame types are kept raw, as the RFC requires
//! a receiver to ignore them.
//!
//! Parsing is strict about structure (lengths, padding, stream 0 rules) and returns a
//! [`FrameError`] instead of panicking; semantic rules that leave the frame readable
//! (a zero WINDOW_UPDATE increment, an out-of-range SETTINGS value) are reported by
//! [`Frame::violations`] so an inspector can show the frame *and* what is wrong with it.

use std::fmt;

use bytes::{Buf as _, Bytes};

/// Length of the frame header that starts every frame.
pub const FRAME_HEADER_LEN: usize = 9;

/// The client connection preface (RFC 9113 §3.4), sent before the client's first frame.
pub const PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Largest payload a frame header can declare (24-bit length).
pub const MAX_FRAME_LEN: u32 = (1 << 24) - 1;

/// Largest flow-control window (2^31 - 1).
pub const MAX_WINDOW: u32 = (1 << 31) - 1;

/// The frame header: 24-bit length, type, flags, the reserved bit and a 31-bit stream id.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FrameHeader {
    /// Payload length in bytes (not counting these 9 bytes).
    pub length: u32,
    /// The frame type.
    pub kind: FrameType,
    /// Raw flag bits; their meaning depends on `kind` (see [`Flags`]).
    pub flags: Flags,
    /// The reserved high bit of the stream id field; must be ignored, shown when set.
    pub reserved: bool,
    /// Stream identifier (0 = the connection).
    pub stream_id: u32,
}

impl FrameHeader {
    /// Parses the 9 header bytes. Every bit pattern is a header; checks come later.
    pub fn parse(bytes: &[u8; FRAME_HEADER_LEN]) -> Self {
        let length = u32::from_be_bytes([0, bytes[0], bytes[1], bytes[2]]);
        let stream = u32::from_be_bytes([bytes[5], bytes[6], bytes[7], bytes[8]]);
        Self {
            length,
            kind: FrameType::from(bytes[3]),
            flags: Flags(bytes[4]),
            reserved: stream & 0x8000_0000 != 0,
            stream_id: stream & 0x7fff_ffff,
        }
    }

    /// Encodes the header back into its 9 bytes.
    pub fn encode(&self) -> [u8; FRAME_HEADER_LEN] {
        let len = self.length.min(MAX_FRAME_LEN).to_be_bytes();
        let stream = (self.stream_id & 0x7fff_ffff) | if self.reserved { 0x8000_0000 } else { 0 };
        let s = stream.to_be_bytes();
        [
            len[1],
            len[2],
            len[3],
            u8::from(self.kind),
            self.flags.0,
            s[0],
            s[1],
            s[2],
            s[3],
        ]
    }
}

/// The ten frame types of RFC 9113, and any other type kept by number.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum FrameType {
    /// DATA (0x0): message bytes of a stream.
    Data,
    /// HEADERS (0x1): opens a stream or carries trailers.
    Headers,
    /// PRIORITY (0x2): deprecated stream priority.
    Priority,
    /// RST_STREAM (0x3): ends one stream with an error code.
    RstStream,
    /// SETTINGS (0x4): connection parameters, or their acknowledgement.
    Settings,
    /// PUSH_PROMISE (0x5): a server push (never sent by gRPC servers).
    PushPromise,
    /// PING (0x6): liveness probe, echoed with ACK.
    Ping,
    /// GOAWAY (0x7): the sender stops taking new streams.
    GoAway,
    /// WINDOW_UPDATE (0x8): flow-control credit for a stream or the connection.
    WindowUpdate,
    /// CONTINUATION (0x9): the rest of a header block.
    Continuation,
    /// A type this decoder does not know (extensions such as ALTSVC or ORIGIN).
    Unknown(u8),
}

impl From<u8> for FrameType {
    fn from(byte: u8) -> Self {
        match byte {
            0 => Self::Data,
            1 => Self::Headers,
            2 => Self::Priority,
            3 => Self::RstStream,
            4 => Self::Settings,
            5 => Self::PushPromise,
            6 => Self::Ping,
            7 => Self::GoAway,
            8 => Self::WindowUpdate,
            9 => Self::Continuation,
            other => Self::Unknown(other),
        }
    }
}

impl From<FrameType> for u8 {
    fn from(kind: FrameType) -> u8 {
        match kind {
            FrameType::Data => 0,
            FrameType::Headers => 1,
            FrameType::Priority => 2,
            FrameType::RstStream => 3,
            FrameType::Settings => 4,
            FrameType::PushPromise => 5,
            FrameType::Ping => 6,
            FrameType::GoAway => 7,
            FrameType::WindowUpdate => 8,
            FrameType::Continuation => 9,
            FrameType::Unknown(other) => other,
        }
    }
}

impl fmt::Display for FrameType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let name = match self {
            Self::Data => "DATA",
            Self::Headers => "HEADERS",
            Self::Priority => "PRIORITY",
            Self::RstStream => "RST_STREAM",
            Self::Settings => "SETTINGS",
            Self::PushPromise => "PUSH_PROMISE",
            Self::Ping => "PING",
            Self::GoAway => "GOAWAY",
            Self::WindowUpdate => "WINDOW_UPDATE",
            Self::Continuation => "CONTINUATION",
            Self::Unknown(n) => return write!(f, "UNKNOWN(0x{n:02x})"),
        };
        f.pad(name)
    }
}

/// A frame's flag byte.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Flags(pub u8);

impl Flags {
    /// DATA, HEADERS: the sender's last frame on this stream.
    pub const END_STREAM: u8 = 0x1;
    /// SETTINGS, PING: this frame acknowledges the peer's.
    pub const ACK: u8 = 0x1;
    /// HEADERS, PUSH_PROMISE, CONTINUATION: the header block is complete.
    pub const END_HEADERS: u8 = 0x4;
    /// DATA, HEADERS, PUSH_PROMISE: a pad length byte and padding are present.
    pub const PADDED: u8 = 0x8;
    /// HEADERS: exclusive bit, stream dependency and weight are present.
    pub const PRIORITY: u8 = 0x20;

    /// Whether every bit of `mask` is set.
    pub fn has(self, mask: u8) -> bool {
        self.0 & mask == mask
    }

    /// Names of the flags that are defined for `kind` and set, in bit order.
    /// Bits undefined for the type are shown as hex (a receiver ignores them).
    pub fn names(self, kind: FrameType) -> Vec<String> {
        let defined: &[(u8, &str)] = match kind {
            FrameType::Data => &[(Self::END_STREAM, "END_STREAM"), (Self::PADDED, "PADDED")],
            FrameType::Headers => &[
                (Self::END_STREAM, "END_STREAM"),
                (Self::END_HEADERS, "END_HEADERS"),
                (Self::PADDED, "PADDED"),
                (Self::PRIORITY, "PRIORITY"),
            ],
            FrameType::Settings | FrameType::Ping => &[(Self::ACK, "ACK")],
            FrameType::PushPromise => {
                &[(Self::END_HEADERS, "END_HEADERS"), (Self::PADDED, "PADDED")]
            }
            FrameType::Continuation => &[(Self::END_HEADERS, "END_HEADERS")],
            _ => &[],
        };
        let mut names = Vec::new();
        let mut rest = self.0;
        for (bit, name) in defined {
            if self.0 & bit != 0 {
                names.push((*name).to_owned());
                rest &= !bit;
            }
        }
        if rest != 0 {
            names.push(format!("0x{rest:02x}"));
        }
        names
    }
}

/// A stream dependency (RFC 9113 §5.3.2, deprecated but still on the wire).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Priority {
    /// The exclusive bit.
    pub exclusive: bool,
    /// The stream this one depends on.
    pub dependency: u32,
    /// Weight as sent (0–255); the effective weight is one more.
    pub weight: u8,
}

impl Priority {
    fn parse(buf: &mut Bytes) -> Self {
        let word = buf.get_u32();
        Self {
            exclusive: word & 0x8000_0000 != 0,
            dependency: word & 0x7fff_ffff,
            weight: buf.get_u8(),
        }
    }
}

/// A SETTINGS parameter identifier (RFC 9113 §6.5.2, RFC 8441).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum SettingId {
    /// SETTINGS_HEADER_TABLE_SIZE (0x1).
    HeaderTableSize,
    /// SETTINGS_ENABLE_PUSH (0x2).
    EnablePush,
    /// SETTINGS_MAX_CONCURRENT_STREAMS (0x3).
    MaxConcurrentStreams,
    /// SETTINGS_INITIAL_WINDOW_SIZE (0x4): each new stream's starting send window.
    InitialWindowSize,
    /// SETTINGS_MAX_FRAME_SIZE (0x5).
    MaxFrameSize,
    /// SETTINGS_MAX_HEADER_LIST_SIZE (0x6).
    MaxHeaderListSize,
    /// SETTINGS_ENABLE_CONNECT_PROTOCOL (0x8, RFC 8441): extended CONNECT, e.g. WebSocket over HTTP/2.
    EnableConnectProtocol,
    /// An identifier this decoder does not know; receivers ignore these.
    Unknown(u16),
}

impl From<u16> for SettingId {
    fn from(id: u16) -> Self {
        match id {
            1 => Self::HeaderTableSize,
            2 => Self::EnablePush,
            3 => Self::MaxConcurrentStreams,
            4 => Self::InitialWindowSize,
            5 => Self::MaxFrameSize,
            6 => Self::MaxHeaderListSize,
            8 => Self::EnableConnectProtocol,
            other => Self::Unknown(other),
        }
    }
}

impl fmt::Display for SettingId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let name = match self {
            Self::HeaderTableSize => "HEADER_TABLE_SIZE",
            Self::EnablePush => "ENABLE_PUSH",
            Self::MaxConcurrentStreams => "MAX_CONCURRENT_STREAMS",
            Self::InitialWindowSize => "INITIAL_WINDOW_SIZE",
            Self::MaxFrameSize => "MAX_FRAME_SIZE",
            Self::MaxHeaderListSize => "MAX_HEADER_LIST_SIZE",
            Self::EnableConnectProtocol => "ENABLE_CONNECT_PROTOCOL",
            Self::Unknown(n) => return write!(f, "0x{n:04x}"),
        };
        f.write_str(name)
    }
}

/// One SETTINGS parameter.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Setting {
    /// Which parameter.
    pub id: SettingId,
    /// Its new value.
    pub value: u32,
}

/// An HTTP/2 error code (RST_STREAM, GOAWAY), named when known.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ErrorCode(pub u32);

impl ErrorCode {
    /// The RFC 9113 §7 name, if the code is one of them.
    pub fn name(self) -> Option<&'static str> {
        const NAMES: [&str; 14] = [
            "NO_ERROR",
            "PROTOCOL_ERROR",
            "INTERNAL_ERROR",
            "FLOW_CONTROL_ERROR",
            "SETTINGS_TIMEOUT",
            "STREAM_CLOSED",
            "FRAME_SIZE_ERROR",
            "REFUSED_STREAM",
            "CANCEL",
            "COMPRESSION_ERROR",
            "CONNECT_ERROR",
            "ENHANCE_YOUR_CALM",
            "INADEQUATE_SECURITY",
            "HTTP_1_1_REQUIRED",
        ];
        NAMES.get(self.0 as usize).copied()
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.name() {
            Some(name) => f.write_str(name),
            None => write!(f, "0x{:x}", self.0),
        }
    }
}

/// The type-specific content of a frame, with padding removed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Payload {
    /// A DATA frame's content.
    Data {
        /// Pad length when PADDED was set.
        pad_len: Option<u8>,
        /// The stream's message bytes (for gRPC, length-prefixed messages).
        data: Bytes,
    },
    /// A HEADERS frame's content.
    Headers {
        /// Pad length when PADDED was set.
        pad_len: Option<u8>,
        /// Priority fields when PRIORITY was set.
        priority: Option<Priority>,
        /// A fragment of an HPACK header block (whole when END_HEADERS is set).
        fragment: Bytes,
    },
    /// PRIORITY: the deprecated priority fields.
    Priority(Priority),
    /// RST_STREAM: the error code that ended the stream.
    RstStream(ErrorCode),
    /// SETTINGS: the parameters, empty for an ACK.
    Settings(Vec<Setting>),
    /// PUSH_PROMISE's content.
    PushPromise {
        /// Pad length when PADDED was set.
        pad_len: Option<u8>,
        /// The stream the server reserves for the push.
        promised_stream_id: u32,
        /// A fragment of the pushed request's HPACK header block.
        fragment: Bytes,
    },
    /// PING: the 8 opaque bytes the receiver echoes.
    Ping([u8; 8]),
    /// GOAWAY's content.
    GoAway {
        /// Highest stream id the sender processed or may still process.
        last_stream_id: u32,
        /// Why the connection goes away.
        error_code: ErrorCode,
        /// Opaque diagnostic bytes (often a UTF-8 reason).
        debug_data: Bytes,
    },
    /// WINDOW_UPDATE's content.
    WindowUpdate {
        /// The 31-bit increment (0 is a protocol error, kept so it can be shown).
        increment: u32,
    },
    /// CONTINUATION's content.
    Continuation {
        /// The next fragment of the header block.
        fragment: Bytes,
    },
    /// The payload of an unknown frame type, untouched.
    Unknown(Bytes),
}

/// One complete, structurally valid frame.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Frame {
    /// The 9-byte header.
    pub header: FrameHeader,
    /// The content, per frame type.
    pub payload: Payload,
}

/// Why a frame's payload could not be read. The frame's extent is still known (its
/// header said how long it is), so a decoder can skip it and go on.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    /// A frame type that belongs to a stream arrived on stream 0.
    #[error("{0} frame on stream 0 (it must belong to a stream)")]
    NeedsStream(FrameType),
    /// A connection-level frame type arrived on a stream.
    #[error("{kind} frame on stream {stream} (it must be on stream 0)")]
    NeedsStreamZero {
        /// The frame's type.
        kind: FrameType,
        /// The stream it arrived on.
        stream: u32,
    },
    /// The payload length does not fit the frame type.
    #[error("{kind} frame has length {length}, expected {expected}")]
    BadLength {
        /// The frame's type.
        kind: FrameType,
        /// The length its header declared.
        length: u32,
        /// What the type requires, in words.
        expected: &'static str,
    },
    /// The pad length leaves no room for the padding in the payload.
    #[error("{kind} frame: pad length {pad_len} leaves no room in a {length}-byte payload")]
    PaddingTooLong {
        /// The frame's type.
        kind: FrameType,
        /// The pad length the frame declared.
        pad_len: u8,
        /// The payload length its header declared.
        length: u32,
    },
}

impl Frame {
    /// Parses a frame from its header and exactly `header.length` payload bytes.
    pub fn parse(header: FrameHeader, mut buf: Bytes) -> Result<Self, FrameError> {
        let kind = header.kind;
        let length = header.length;
        debug_assert_eq!(buf.len() as u64, u64::from(length));
        let bad_length = |expected| FrameError::BadLength {
            kind,
            length,
            expected,
        };
        let needs_stream = || {
            if header.stream_id == 0 {
                Err(FrameError::NeedsStream(kind))
            } else {
                Ok(())
            }
        };
        let needs_zero = || {
            if header.stream_id != 0 {
                Err(FrameError::NeedsStreamZero {
                    kind,
                    stream: header.stream_id,
                })
            } else {
                Ok(())
            }
        };
        let payload = match kind {
            FrameType::Data => {
                needs_stream()?;
                let pad_len = strip_padding(&header, &mut buf)?;
                Payload::Data { pad_len, data: buf }
            }
            FrameType::Headers => {
                needs_stream()?;
                let pad_len = strip_padding(&header, &mut buf)?;
                let priority = if header.flags.has(Flags::PRIORITY) {
                    if buf.len() < 5 {
                        return Err(bad_length("at least 5 (+ padding) with PRIORITY"));
                    }
                    Some(Priority::parse(&mut buf))
                } else {
                    None
                };
                Payload::Headers {
                    pad_len,
                    priority,
                    fragment: buf,
                }
            }
            FrameType::Priority => {
                needs_stream()?;
                if length != 5 {
                    return Err(bad_length("5"));
                }
                Payload::Priority(Priority::parse(&mut buf))
            }
            FrameType::RstStream => {
                needs_stream()?;
                if length != 4 {
                    return Err(bad_length("4"));
                }
                Payload::RstStream(ErrorCode(buf.get_u32()))
            }
            FrameType::Settings => {
                needs_zero()?;
                if header.flags.has(Flags::ACK) && length != 0 {
                    return Err(bad_length("0 with ACK"));
                }
                if !length.is_multiple_of(6) {
                    return Err(bad_length("a multiple of 6"));
                }
                let mut params = Vec::with_capacity(buf.len() / 6);
                while buf.has_remaining() {
                    params.push(Setting {
                        id: SettingId::from(buf.get_u16()),
                        value: buf.get_u32(),
                    });
                }
                Payload::Settings(params)
            }
            FrameType::PushPromise => {
                needs_stream()?;
                let pad_len = strip_padding(&header, &mut buf)?;
                if buf.len() < 4 {
                    return Err(bad_length("at least 4 (+ padding)"));
                }
                let promised_stream_id = buf.get_u32() & 0x7fff_ffff;
                Payload::PushPromise {
                    pad_len,
                    promised_stream_id,
                    fragment: buf,
                }
            }
            FrameType::Ping => {
                needs_zero()?;
                if length != 8 {
                    return Err(bad_length("8"));
                }
                let mut opaque = [0u8; 8];
                buf.copy_to_slice(&mut opaque);
                Payload::Ping(opaque)
            }
            FrameType::GoAway => {
                needs_zero()?;
                if length < 8 {
                    return Err(bad_length("at least 8"));
                }
                Payload::GoAway {
                    last_stream_id: buf.get_u32() & 0x7fff_ffff,
                    error_code: ErrorCode(buf.get_u32()),
                    debug_data: buf,
                }
            }
            FrameType::WindowUpdate => {
                if length != 4 {
                    return Err(bad_length("4"));
                }
                Payload::WindowUpdate {
                    increment: buf.get_u32() & 0x7fff_ffff,
                }
            }
            FrameType::Continuation => {
                needs_stream()?;
                Payload::Continuation { fragment: buf }
            }
            FrameType::Unknown(_) => Payload::Unknown(buf),
        };
        Ok(Self { header, payload })
    }

    /// Rules of RFC 9113 this frame breaks although it could be read: a zero
    /// WINDOW_UPDATE increment, SETTINGS values out of range, a stream depending on itself.
    pub fn violations(&self) -> Vec<String> {
        let mut found = Vec::new();
        match &self.payload {
            Payload::WindowUpdate { increment: 0 } => {
                found.push("WINDOW_UPDATE increment of 0 is a PROTOCOL_ERROR".to_owned())
            }
            Payload::Settings(params) => {
                for p in params {
                    let bad = match p.id {
                        SettingId::EnablePush | SettingId::EnableConnectProtocol => p.value > 1,
                        SettingId::InitialWindowSize => p.value > MAX_WINDOW,
                        SettingId::MaxFrameSize => !(1 << 14..=MAX_FRAME_LEN).contains(&p.value),
                        _ => false,
                    };
                    if bad {
                        found.push(format!("SETTINGS {}={} is out of range", p.id, p.value));
                    }
                }
            }
            Payload::Headers {
                priority: Some(p), ..
            }
            | Payload::Priority(p)
                if p.dependency == self.header.stream_id =>
            {
                found.push(format!("stream {} depends on itself", p.dependency))
            }
            _ => {}
        }
        found
    }

    /// Bytes this frame takes from flow-control windows: a DATA frame's whole payload,
    /// padding and pad length byte included (RFC 9113 §6.9); 0 for every other type.
    pub fn flow_controlled_len(&self) -> u32 {
        match self.payload {
            Payload::Data { .. } => self.header.length,
            _ => 0,
        }
    }
}

/// Removes the pad length byte and the padding when PADDED is set.
fn strip_padding(header: &FrameHeader, buf: &mut Bytes) -> Result<Option<u8>, FrameError> {
    if !header.flags.has(Flags::PADDED) {
        return Ok(None);
    }
    let Some(&pad_len) = buf.first() else {
        return Err(FrameError::BadLength {
            kind: header.kind,
            length: header.length,
            expected: "at least 1 with PADDED",
        });
    };
    buf.advance(1);
    if usize::from(pad_len) > buf.len() {
        return Err(FrameError::PaddingTooLong {
            kind: header.kind,
            pad_len,
            length: header.length,
        });
    }
    buf.truncate(buf.len() - usize::from(pad_len));
    Ok(Some(pad_len))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::frame;

    fn parse(bytes: &[u8]) -> Result<Frame, FrameError> {
        let header = FrameHeader::parse(bytes[..9].try_into().unwrap());
        Frame::parse(header, Bytes::copy_from_slice(&bytes[9..]))
    }

    #[test]
    fn header_fields_and_the_reserved_bit() {
        let bytes = [0x01, 0x02, 0x03, 0x01, 0x25, 0x80, 0, 0, 0x07];
        let header = FrameHeader::parse(&bytes);
        assert_eq!(header.length, 0x010203);
        assert_eq!(header.kind, FrameType::Headers);
        assert_eq!(header.flags, Flags(0x25));
        assert!(header.reserved);
        assert_eq!(header.stream_id, 7);
        assert_eq!(header.encode(), bytes);
    }

    #[test]
    fn data_plain_and_padded() {
        let f = parse(&frame(0, Flags::END_STREAM, 1, b"abc")).unwrap();
        assert_eq!(
            f.payload,
            Payload::Data {
                pad_len: None,
                data: Bytes::from_static(b"abc")
            }
        );
        assert_eq!(f.flow_controlled_len(), 3);
        // Pad length 2, data "ab", two bytes of padding.
        let f = parse(&frame(0, Flags::PADDED, 1, b"\x02ab\0\0")).unwrap();
        assert_eq!(
            f.payload,
            Payload::Data {
                pad_len: Some(2),
                data: Bytes::from_static(b"ab")
            }
        );
        // Padding counts against flow control.
        assert_eq!(f.flow_controlled_len(), 5);
        // All padding, no data: allowed.
        let f = parse(&frame(0, Flags::PADDED, 1, b"\x02\0\0")).unwrap();
        assert!(matches!(f.payload, Payload::Data { data, .. } if data.is_empty()));
    }

    #[test]
    fn headers_with_padding_and_priority() {
        let mut payload = vec![3]; // pad length
        payload.extend_from_slice(&(0x8000_0003u32).to_be_bytes()); // exclusive, depends on 3
        payload.push(15); // weight 16
        payload.extend_from_slice(b"\x82\x84");
        payload.extend_from_slice(&[0, 0, 0]);
        let flags = Flags::PADDED | Flags::PRIORITY | Flags::END_HEADERS;
        let f = parse(&frame(1, flags, 5, &payload)).unwrap();
        assert_eq!(
            f.payload,
            Payload::Headers {
                pad_len: Some(3),
                priority: Some(Priority {
                    exclusive: true,
                    dependency: 3,
                    weight: 15
                }),
                fragment: Bytes::from_static(b"\x82\x84"),
            }
        );
        assert_eq!(
            Flags(flags).names(FrameType::Headers),
            ["END_HEADERS", "PADDED", "PRIORITY"]
        );
    }

    #[test]
    fn priority_rst_stream_ping_window_update() {
        let f = parse(&frame(2, 0, 3, &[0, 0, 0, 1, 200])).unwrap();
        assert_eq!(
            f.payload,
            Payload::Priority(Priority {
                exclusive: false,
                dependency: 1,
                weight: 200
            })
        );
        let f = parse(&frame(3, 0, 3, &8u32.to_be_bytes())).unwrap();
        assert_eq!(f.payload, Payload::RstStream(ErrorCode(8)));
        assert_eq!(ErrorCode(8).to_string(), "CANCEL");
        assert_eq!(ErrorCode(0x99).to_string(), "0x99");
        let f = parse(&frame(6, Flags::ACK, 0, b"12345678")).unwrap();
        assert_eq!(f.payload, Payload::Ping(*b"12345678"));
        assert_eq!(f.header.flags.names(FrameType::Ping), ["ACK"]);
        // The reserved bit of the increment is ignored.
        let f = parse(&frame(8, 0, 0, &0x8000_0010u32.to_be_bytes())).unwrap();
        assert_eq!(f.payload, Payload::WindowUpdate { increment: 16 });
    }

    #[test]
    fn settings_each_parameter_and_ack() {
        let mut payload = Vec::new();
        for (id, value) in [
            (1u16, 4096u32),
            (2, 0),
            (3, 100),
            (4, 1024),
            (5, 16384),
            (6, 8192),
            (8, 1),
            (0x99, 7),
        ] {
            payload.extend_from_slice(&id.to_be_bytes());
            payload.extend_from_slice(&value.to_be_bytes());
        }
        let f = parse(&frame(4, 0, 0, &payload)).unwrap();
        let Payload::Settings(params) = &f.payload else {
            panic!("not settings")
        };
        let names: Vec<String> = params
            .iter()
            .map(|p| format!("{}={}", p.id, p.value))
            .collect();
        assert_eq!(
            names,
            [
                "HEADER_TABLE_SIZE=4096",
                "ENABLE_PUSH=0",
                "MAX_CONCURRENT_STREAMS=100",
                "INITIAL_WINDOW_SIZE=1024",
                "MAX_FRAME_SIZE=16384",
                "MAX_HEADER_LIST_SIZE=8192",
                "ENABLE_CONNECT_PROTOCOL=1",
                "0x0099=7"
            ]
        );
        assert!(f.violations().is_empty());
        let f = parse(&frame(4, Flags::ACK, 0, &[])).unwrap();
        assert_eq!(f.payload, Payload::Settings(vec![]));
    }

    #[test]
    fn push_promise_goaway_continuation_unknown() {
        let mut payload = vec![1];
        payload.extend_from_slice(&2u32.to_be_bytes());
        payload.extend_from_slice(b"\x82\0");
        let f = parse(&frame(5, Flags::PADDED | Flags::END_HEADERS, 1, &payload)).unwrap();
        assert_eq!(
            f.payload,
            Payload::PushPromise {
                pad_len: Some(1),
                promised_stream_id: 2,
                fragment: Bytes::from_static(b"\x82")
            }
        );
        let mut payload = 5u32.to_be_bytes().to_vec();
        payload.extend_from_slice(&11u32.to_be_bytes());
        payload.extend_from_slice(b"too_many_pings");
        let f = parse(&frame(7, 0, 0, &payload)).unwrap();
        assert_eq!(
            f.payload,
            Payload::GoAway {
                last_stream_id: 5,
                error_code: ErrorCode(11),
                debug_data: Bytes::from_static(b"too_many_pings")
            }
        );
        let f = parse(&frame(9, Flags::END_HEADERS, 1, b"\x84")).unwrap();
        assert_eq!(
            f.payload,
            Payload::Continuation {
                fragment: Bytes::from_static(b"\x84")
            }
        );
        let f = parse(&frame(0xa, 0xff, 0, b"origin")).unwrap();
        assert_eq!(f.header.kind, FrameType::Unknown(0xa));
        assert_eq!(f.header.kind.to_string(), "UNKNOWN(0x0a)");
        assert_eq!(f.payload, Payload::Unknown(Bytes::from_static(b"origin")));
        assert_eq!(f.header.flags.names(f.header.kind), ["0xff"]);
    }

    #[test]
    fn malformed_payloads_are_errors() {
        let cases: Vec<(Vec<u8>, &str)> = vec![
            (frame(0, 0, 0, b"x"), "DATA frame on stream 0"),
            (frame(1, 0, 0, b""), "HEADERS frame on stream 0"),
            (frame(9, 0, 0, b""), "CONTINUATION frame on stream 0"),
            (frame(4, 0, 1, b""), "SETTINGS frame on stream 1"),
            (frame(6, 0, 3, b"12345678"), "PING frame on stream 3"),
            (frame(7, 0, 1, &[0; 8]), "GOAWAY frame on stream 1"),
            (frame(4, 0, 0, &[0; 7]), "a multiple of 6"),
            (frame(4, Flags::ACK, 0, &[0; 6]), "0 with ACK"),
            (frame(0, Flags::PADDED, 1, b""), "at least 1 with PADDED"),
            (frame(0, Flags::PADDED, 1, b"\x03ab"), "pad length 3"),
            (frame(1, Flags::PRIORITY, 1, b"\0\0\0"), "with PRIORITY"),
            (frame(2, 0, 1, &[0; 4]), "expected 5"),
            (frame(3, 0, 1, &[0; 3]), "expected 4"),
            (frame(6, 0, 0, &[0; 7]), "expected 8"),
            (frame(7, 0, 0, &[0; 7]), "at least 8"),
            (frame(8, 0, 0, &[0; 3]), "expected 4"),
            (frame(5, 0, 1, &[0; 3]), "at least 4"),
        ];
        for (bytes, expected) in cases {
            let error = parse(&bytes).expect_err(expected).to_string();
            assert!(
                error.contains(expected),
                "{error:?} should mention {expected:?}"
            );
        }
    }

    #[test]
    fn readable_frames_that_break_rules_are_flagged() {
        let f = parse(&frame(8, 0, 1, &0u32.to_be_bytes())).unwrap();
        assert_eq!(
            f.violations(),
            ["WINDOW_UPDATE increment of 0 is a PROTOCOL_ERROR"]
        );
        let mut payload = Vec::new();
        for (id, value) in [(2u16, 2u32), (4, 1 << 31), (5, 100)] {
            payload.extend_from_slice(&id.to_be_bytes());
            payload.extend_from_slice(&value.to_be_bytes());
        }
        let f = parse(&frame(4, 0, 0, &payload)).unwrap();
        assert_eq!(f.violations().len(), 3, "{:?}", f.violations());
        let f = parse(&frame(2, 0, 3, &[0, 0, 0, 3, 0])).unwrap();
        assert_eq!(f.violations(), ["stream 3 depends on itself"]);
    }
}
