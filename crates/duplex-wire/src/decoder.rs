//! Incremental framing of one direction of an HTTP/2 connection: feed bytes as they
//! arrive, in any chunking, and take out the preface and complete frames.
//!
//! The decoder holds at most one frame (header + up to 16 MiB of payload) plus whatever
//! was fed past it; it never panics on any input. A frame whose payload is malformed is
//! reported as an error and skipped (its header says where it ends); a client direction
//! that does not start with the preface is not HTTP/2, and the decoder stops there.

use bytes::{Buf as _, BytesMut};

use crate::frame::{FRAME_HEADER_LEN, Frame, FrameError, FrameHeader, PREFACE};

/// What one direction produced.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Item {
    /// The 24-byte client connection preface.
    Preface,
    /// A complete, structurally valid frame.
    Frame(Frame),
}

/// Why bytes could not be decoded.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// The client did not open with the HTTP/2 preface (HTTP/1.1, TLS, or garbage):
    /// nothing more is decoded in this direction.
    #[error("not HTTP/2: expected the connection preface, got {}", show_bytes(.got))]
    BadPreface {
        /// The first bytes that arrived instead.
        got: Vec<u8>,
    },
    /// A frame with a readable header but a malformed payload; it was skipped.
    #[error("malformed frame: {error}")]
    Frame {
        /// The header of the skipped frame.
        header: FrameHeader,
        /// What was wrong with its payload.
        error: FrameError,
    },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    /// Expecting the preface; the number of preface bytes already matched.
    Preface,
    Frames,
    /// After a bad preface: input is dropped.
    Stopped,
}

/// Incremental frame decoder for one direction.
#[derive(Debug)]
pub struct FrameDecoder {
    buf: BytesMut,
    state: State,
}

impl FrameDecoder {
    /// A decoder for the client-to-server direction, which starts with the preface.
    pub fn client() -> Self {
        Self {
            buf: BytesMut::new(),
            state: State::Preface,
        }
    }

    /// A decoder for the server-to-client direction (frames from the first byte).
    pub fn server() -> Self {
        Self {
            buf: BytesMut::new(),
            state: State::Frames,
        }
    }

    /// Appends bytes received in this direction.
    pub fn feed(&mut self, bytes: &[u8]) {
        if self.state != State::Stopped {
            self.buf.extend_from_slice(bytes);
        }
    }

    /// Whether decoding stopped for good (the preface was wrong).
    pub fn is_stopped(&self) -> bool {
        self.state == State::Stopped
    }

    /// Bytes fed but not yet decoded (a partial frame).
    pub fn buffered(&self) -> usize {
        self.buf.len()
    }

    /// The next complete item, `None` when more bytes are needed.
    pub fn next_item(&mut self) -> Option<Result<Item, DecodeError>> {
        match self.state {
            State::Stopped => None,
            State::Preface => {
                let n = self.buf.len().min(PREFACE.len());
                if self.buf[..n] != PREFACE[..n] {
                    self.state = State::Stopped;
                    let got = self.buf[..self.buf.len().min(32)].to_vec();
                    self.buf = BytesMut::new();
                    return Some(Err(DecodeError::BadPreface { got }));
                }
                if n < PREFACE.len() {
                    return None;
                }
                self.buf.advance(PREFACE.len());
                self.state = State::Frames;
                Some(Ok(Item::Preface))
            }
            State::Frames => {
                let head: &[u8; FRAME_HEADER_LEN] =
                    self.buf.get(..FRAME_HEADER_LEN)?.try_into().ok()?;
                let header = FrameHeader::parse(head);
                let total = FRAME_HEADER_LEN + header.length as usize;
                if self.buf.len() < total {
                    // Reserve once, so a large frame arriving in small reads is not copied
                    // over and over.
                    self.buf.reserve(total - self.buf.len());
                    return None;
                }
                self.buf.advance(FRAME_HEADER_LEN);
                let payload = self.buf.split_to(header.length as usize).freeze();
                Some(
                    Frame::parse(header, payload)
                        .map(Item::Frame)
                        .map_err(|error| DecodeError::Frame { header, error }),
                )
            }
        }
    }
}

/// Shows bytes as text when they are printable ASCII (an HTTP/1 request line), hex otherwise.
fn show_bytes(bytes: &[u8]) -> String {
    if bytes
        .iter()
        .all(|b| b.is_ascii_graphic() || matches!(b, b' ' | b'\r' | b'\n'))
    {
        format!("{:?}", String::from_utf8_lossy(bytes))
    } else {
        crate::hex(bytes, 32)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frame::{FrameType, Payload};
    use crate::testing::{data, frame, settings};

    fn drain(decoder: &mut FrameDecoder) -> Vec<Result<Item, DecodeError>> {
        std::iter::from_fn(|| decoder.next_item()).collect()
    }

    #[test]
    fn preface_and_frames_fed_one_byte_at_a_time() {
        let mut bytes = PREFACE.to_vec();
        bytes.extend(settings(&[(4, 1024)]));
        bytes.extend(data(1, true, b"hello"));
        let mut decoder = FrameDecoder::client();
        let mut items = Vec::new();
        for byte in &bytes {
            decoder.feed(&[*byte]);
            items.extend(drain(&mut decoder));
        }
        assert_eq!(items.len(), 3);
        assert_eq!(items[0], Ok(Item::Preface));
        assert!(matches!(&items[1], Ok(Item::Frame(f)) if f.header.kind == FrameType::Settings));
        assert!(
            matches!(&items[2], Ok(Item::Frame(f)) if f.payload == Payload::Data { pad_len: None, data: bytes::Bytes::from_static(b"hello") })
        );
        assert_eq!(decoder.buffered(), 0);
    }

    #[test]
    fn several_frames_in_one_chunk() {
        let mut bytes = settings(&[]);
        bytes.extend(frame(6, 0, 0, b"pingpong"));
        bytes.extend(data(3, false, b"x"));
        let mut decoder = FrameDecoder::server();
        decoder.feed(&bytes);
        assert_eq!(drain(&mut decoder).len(), 3);
    }

    #[test]
    fn http1_instead_of_the_preface_stops_the_direction() {
        let mut decoder = FrameDecoder::client();
        decoder.feed(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n");
        let items = drain(&mut decoder);
        assert_eq!(items.len(), 1);
        let error = items[0].clone().unwrap_err();
        assert!(error.to_string().contains("GET / HTTP/1.1"), "{error}");
        assert!(decoder.is_stopped());
        decoder.feed(&settings(&[]));
        assert!(drain(&mut decoder).is_empty());
        assert_eq!(decoder.buffered(), 0);
    }

    #[test]
    fn a_partial_preface_waits_then_a_wrong_byte_fails() {
        let mut decoder = FrameDecoder::client();
        decoder.feed(&PREFACE[..10]);
        assert!(drain(&mut decoder).is_empty());
        decoder.feed(b"\x16\x03");
        assert!(matches!(
            drain(&mut decoder)[..],
            [Err(DecodeError::BadPreface { .. })]
        ));
    }

    #[test]
    fn a_malformed_frame_is_skipped_and_decoding_goes_on() {
        let mut bytes = frame(4, 0, 0, &[0; 7]); // SETTINGS of length 7
        bytes.extend(frame(6, 0, 0, b"12345678"));
        let mut decoder = FrameDecoder::server();
        decoder.feed(&bytes);
        let items = drain(&mut decoder);
        assert!(matches!(&items[0], Err(DecodeError::Frame { header, .. }) if header.length == 7));
        assert!(matches!(&items[1], Ok(Item::Frame(f)) if f.header.kind == FrameType::Ping));
    }

    #[test]
    fn a_huge_declared_length_just_waits() {
        let mut decoder = FrameDecoder::server();
        decoder.feed(&[0xff, 0xff, 0xff, 0, 0, 0, 0, 0, 1, 1, 2, 3]);
        assert!(drain(&mut decoder).is_empty());
        assert_eq!(decoder.buffered(), 12);
    }
}
