//! Encoding of `ServerFrame`s. Each frame is encoded once into `Bytes`; fan-out shares
//! those bytes with every subscriber (a reference count, not a copy or a re-encode).

use bytes::Bytes;
use duplex_proto::hub::{
    CommandError, Joined, Lagged, Left, Member, Message, PresenceEvent, PublishAck, ServerFrame,
    Shutdown, presence_event, server_frame::Frame,
};
use duplex_store::{Offset, StoredMessage};
use prost::Message as _;
use prost::encoding::{encode_varint, encoded_len_varint};

use crate::HubError;

pub(crate) fn encode(frame: Frame) -> Bytes {
    ServerFrame { frame: Some(frame) }.encode_to_vec().into()
}

/// The wire form of a stored message.
pub fn message(stored: &StoredMessage) -> Message {
    Message {
        room: stored.room.clone(),
        offset: stored.offset,
        time_unix_micros: stored.time_unix_micros,
        sender: stored.sender.clone(),
        payload: stored.payload.clone(),
        content_type: stored.content_type.clone(),
        client_message_id: stored.client_id.clone(),
        key: stored.key.clone(),
    }
}

/// The `ServerFrame` carrying `stored`, encoded straight from it: the bytes prost would
/// write for `ServerFrame { message: message(stored) }`, without first copying five strings
/// and the payload into a `Message`. It runs once per message appended and per message
/// replayed.
pub(crate) fn message_frame(stored: &StoredMessage) -> Bytes {
    use Field::{Number, Text};
    // `Message`'s fields in field-number order, as prost writes them.
    let fields = [
        Text(1, stored.room.as_bytes()),
        Number(2, stored.offset),
        // int64 goes on the wire as its two's-complement u64.
        Number(3, stored.time_unix_micros as u64),
        Text(4, stored.sender.as_bytes()),
        Text(5, &stored.payload),
        Text(6, stored.content_type.as_bytes()),
        Text(7, stored.client_id.as_bytes()),
        Text(8, stored.key.as_bytes()),
    ];
    let inner: usize = fields.iter().map(Field::encoded_len).sum();
    let mut out = Vec::with_capacity(1 + encoded_len_varint(inner as u64) + inner);
    out.push(key(1, LENGTH_DELIMITED)); // ServerFrame.message
    encode_varint(inner as u64, &mut out);
    for field in &fields {
        field.put(&mut out);
    }
    out.into()
}

/// A scalar field of a proto3 message: left out when it holds its default (empty, 0).
enum Field<'a> {
    /// string or bytes: length-delimited.
    Text(u8, &'a [u8]),
    /// uint64 or int64: a varint.
    Number(u8, u64),
}

impl Field<'_> {
    fn is_default(&self) -> bool {
        match self {
            Field::Text(_, value) => value.is_empty(),
            Field::Number(_, value) => *value == 0,
        }
    }

    fn encoded_len(&self) -> usize {
        match self {
            _ if self.is_default() => 0,
            Field::Text(_, value) => 1 + encoded_len_varint(value.len() as u64) + value.len(),
            Field::Number(_, value) => 1 + encoded_len_varint(*value),
        }
    }

    fn put(&self, out: &mut Vec<u8>) {
        if self.is_default() {
            return;
        }
        match self {
            Field::Text(field, value) => {
                out.push(key(*field, LENGTH_DELIMITED));
                encode_varint(value.len() as u64, out);
                out.extend_from_slice(value);
            }
            Field::Number(field, value) => {
                out.push(key(*field, VARINT));
                encode_varint(*value, out);
            }
        }
    }
}

const VARINT: u8 = 0;
const LENGTH_DELIMITED: u8 = 2;

/// A field key of one byte (field numbers up to 15).
const fn key(field: u8, wire_type: u8) -> u8 {
    field << 3 | wire_type
}

pub(crate) fn lagged(room: &str, last_offset: Offset, dropped: u64) -> Bytes {
    encode(Frame::Lagged(Lagged {
        room: room.to_owned(),
        last_offset,
        dropped,
    }))
}

pub(crate) fn joined(
    command_id: u64,
    room: &str,
    earliest: Offset,
    last: Offset,
    members: Vec<Member>,
    unlisted_members: u64,
) -> Bytes {
    encode(Frame::Joined(Joined {
        command_id,
        room: room.to_owned(),
        earliest_offset: earliest,
        last_offset: last,
        members,
        unlisted_members,
    }))
}

pub(crate) fn left(command_id: u64, room: &str) -> Bytes {
    encode(Frame::Left(Left {
        command_id,
        room: room.to_owned(),
    }))
}

pub(crate) fn presence(room: &str, member: Member, joined: bool) -> Bytes {
    let kind = if joined {
        presence_event::Kind::Joined
    } else {
        presence_event::Kind::Left
    };
    encode(Frame::Presence(PresenceEvent {
        room: room.to_owned(),
        member: Some(member),
        kind: kind as i32,
    }))
}

pub(crate) fn publish_ack(command_id: u64, room: &str, offset: Offset, duplicate: bool) -> Bytes {
    encode(Frame::PublishAck(PublishAck {
        command_id,
        room: room.to_owned(),
        offset,
        duplicate,
    }))
}

pub(crate) fn error(command_id: u64, room: &str, error: &HubError) -> Bytes {
    encode(Frame::Error(CommandError {
        command_id,
        code: error.code() as i32,
        message: error.to_string(),
        room: room.to_owned(),
        earliest_offset: error.earliest_offset().unwrap_or(0),
    }))
}

pub(crate) fn shutdown(reason: &str, retry_after_ms: u32) -> Bytes {
    encode(Frame::Shutdown(Shutdown {
        reason: reason.to_owned(),
        retry_after_ms,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_message_frame_is_what_prost_writes() {
        let texts = ["", "r", "héllo ✓", &"x".repeat(200), &"y".repeat(20_000)];
        let numbers = [0, 1, 127, 128, u64::MAX];
        let times = [0, 1, -1, i64::MIN, 1_700_000_000_000_000];
        let mut cases = 0;
        for (i, text) in texts.iter().enumerate() {
            for (j, &number) in numbers.iter().enumerate() {
                for (k, &time) in times.iter().enumerate() {
                    // Vary which fields are empty from case to case.
                    let pick = |n: usize| texts[(i + j + k + n) % texts.len()].to_owned();
                    let stored = StoredMessage {
                        room: text.to_string(),
                        offset: number,
                        time_unix_micros: time,
                        sender: pick(1),
                        content_type: pick(2),
                        client_id: pick(3),
                        key: pick(4),
                        payload: Bytes::from(pick(0).into_bytes()),
                    };
                    assert_eq!(
                        message_frame(&stored),
                        encode(Frame::Message(message(&stored))),
                        "{stored:?}"
                    );
                    cases += 1;
                }
            }
        }
        assert_eq!(cases, 125);
    }
}
