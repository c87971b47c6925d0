//! gRPC length-prefixed messages (the 5-byte prefix: compressed flag, 32-bit big-endian
//! length) cut out of the DATA payloads of one stream in one direction.
//!
//! A message can span DATA frames and a frame can hold several messages, so the splitter
//! keeps the state between frames. Only the first `capture_limit` bytes of a message are
//! kept (for protobuf decoding and hex); the rest is counted, so a 4 GiB length prefix
//! costs no memory.

use bytes::{Bytes, BytesMut};

/// Length of the gRPC message prefix.
pub const PREFIX_LEN: usize = 5;

/// One complete gRPC message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GrpcMessage {
    /// 1-based position among the messages of this stream and direction.
    pub index: u64,
    /// The compressed flag (the first prefix byte; values other than 0 and 1 are invalid).
    pub flag: u8,
    /// The length declared by the prefix.
    pub length: u32,
    /// The first bytes of the message, at most the capture limit.
    pub data: Bytes,
}

impl GrpcMessage {
    /// Whether the compressed flag is set.
    pub fn compressed(&self) -> bool {
        self.flag != 0
    }

    /// Whether `data` holds less than the whole message.
    pub fn truncated(&self) -> bool {
        (self.data.len() as u64) < u64::from(self.length)
    }
}

/// A message whose prefix has been read but whose body is still arriving.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Partial {
    /// The message's 0-based position in its stream and direction.
    pub index: u64,
    /// Body bytes received so far.
    pub received: u64,
    /// The length its prefix declared.
    pub length: u32,
}

#[derive(Debug)]
enum State {
    /// Reading the 5-byte prefix.
    Prefix {
        bytes: [u8; PREFIX_LEN],
        have: usize,
    },
    /// Reading a body: `remaining` bytes still to come.
    Body {
        flag: u8,
        length: u32,
        data: BytesMut,
        remaining: u64,
    },
}

/// Splits one direction of one stream into gRPC messages.
#[derive(Debug)]
pub struct MessageSplitter {
    state: State,
    next_index: u64,
    capture_limit: usize,
}

impl MessageSplitter {
    /// A splitter that keeps at most `capture_limit` bytes of each message.
    pub fn new(capture_limit: usize) -> Self {
        Self {
            state: State::Prefix {
                bytes: [0; PREFIX_LEN],
                have: 0,
            },
            next_index: 1,
            capture_limit,
        }
    }

    /// Takes the next DATA payload; returns the messages it completed, in order.
    pub fn push(&mut self, mut data: &[u8]) -> Vec<GrpcMessage> {
        let mut done = Vec::new();
        loop {
            match &mut self.state {
                State::Prefix { bytes, have } => {
                    if data.is_empty() {
                        return done;
                    }
                    let take = (PREFIX_LEN - *have).min(data.len());
                    bytes[*have..*have + take].copy_from_slice(&data[..take]);
                    *have += take;
                    data = &data[take..];
                    if *have < PREFIX_LEN {
                        return done;
                    }
                    let flag = bytes[0];
                    let length = u32::from_be_bytes([bytes[1], bytes[2], bytes[3], bytes[4]]);
                    let capture = (length as usize).min(self.capture_limit);
                    self.state = State::Body {
                        flag,
                        length,
                        data: BytesMut::with_capacity(capture.min(64 * 1024)),
                        remaining: u64::from(length),
                    };
                }
                State::Body {
                    flag,
                    length,
                    data: body,
                    remaining,
                } => {
                    let take = (*remaining).min(data.len() as u64) as usize;
                    let room = self.capture_limit.saturating_sub(body.len()).min(take);
                    body.extend_from_slice(&data[..room]);
                    data = &data[take..];
                    *remaining -= take as u64;
                    if *remaining > 0 {
                        return done;
                    }
                    done.push(GrpcMessage {
                        index: self.next_index,
                        flag: *flag,
                        length: *length,
                        data: std::mem::take(body).freeze(),
                    });
                    self.next_index += 1;
                    self.state = State::Prefix {
                        bytes: [0; PREFIX_LEN],
                        have: 0,
                    };
                }
            }
        }
    }

    /// The message in progress, if a prefix has been read and its body is incomplete.
    pub fn partial(&self) -> Option<Partial> {
        match &self.state {
            State::Body {
                length, remaining, ..
            } => Some(Partial {
                index: self.next_index,
                received: u64::from(*length) - remaining,
                length: *length,
            }),
            State::Prefix { .. } => None,
        }
    }

    /// Bytes of an unfinished prefix or body: non-zero at END_STREAM means the stream
    /// ended mid-message.
    pub fn leftover(&self) -> u64 {
        match &self.state {
            State::Prefix { have, .. } => *have as u64,
            State::Body {
                length, remaining, ..
            } => PREFIX_LEN as u64 + u64::from(*length) - remaining,
        }
    }

    /// Messages completed so far.
    pub fn count(&self) -> u64 {
        self.next_index - 1
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::grpc;

    #[test]
    fn several_messages_in_one_payload() {
        let mut splitter = MessageSplitter::new(1024);
        let mut bytes = grpc(b"one");
        bytes.extend(grpc(b""));
        bytes.extend(grpc(b"three"));
        let messages = splitter.push(&bytes);
        let bodies: Vec<&[u8]> = messages.iter().map(|m| &m.data[..]).collect();
        assert_eq!(bodies, [&b"one"[..], b"", b"three"]);
        assert_eq!(
            messages.iter().map(|m| m.index).collect::<Vec<_>>(),
            [1, 2, 3]
        );
        assert!(splitter.partial().is_none());
        assert_eq!(splitter.leftover(), 0);
        assert_eq!(splitter.count(), 3);
    }

    #[test]
    fn a_message_split_at_every_byte() {
        let mut splitter = MessageSplitter::new(1024);
        let mut bytes = grpc(b"hello");
        bytes.extend(grpc(b"world"));
        let mut messages = Vec::new();
        for (i, byte) in bytes.iter().enumerate() {
            messages.extend(splitter.push(&[*byte]));
            if i == 6 {
                assert_eq!(
                    splitter.partial(),
                    Some(Partial {
                        index: 1,
                        received: 2,
                        length: 5
                    })
                );
            }
        }
        assert_eq!(messages.len(), 2);
        assert_eq!(&messages[1].data[..], b"world");
    }

    #[test]
    fn compressed_flag_and_capture_limit() {
        let mut splitter = MessageSplitter::new(4);
        let mut bytes = vec![1, 0, 0, 0, 10];
        bytes.extend_from_slice(b"0123456789");
        let messages = splitter.push(&bytes);
        assert_eq!(messages.len(), 1);
        assert!(messages[0].compressed());
        assert_eq!(messages[0].length, 10);
        assert_eq!(&messages[0].data[..], b"0123");
        assert!(messages[0].truncated());
    }

    #[test]
    fn a_huge_length_prefix_costs_no_memory() {
        let mut splitter = MessageSplitter::new(16);
        assert!(
            splitter
                .push(&[0, 0xff, 0xff, 0xff, 0xff, 1, 2, 3])
                .is_empty()
        );
        let partial = splitter.partial().unwrap();
        assert_eq!((partial.received, partial.length), (3, u32::MAX));
        assert_eq!(splitter.leftover(), 8);
    }
}
