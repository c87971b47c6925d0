//! Encoding of `ServerFrame`s. Each frame is encoded once into `Bytes`; fan-out shares
//! those bytes with every subscriber (a reference count, not a copy or a re-encode).

use bytes::Bytes;
use duplex_proto::hub::{
    CommandError, Joined, Lagged, Left, Member, Message, PresenceEvent, PublishAck, ServerFrame,
    Shutdown, presence_event, server_frame::Frame,
};
use duplex_store::{Offset, StoredMessage};
use prost::Message as _;

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
    use prost::encoding::{encode_varint, encoded_len_varint};

    let text_fields: [(u8, &[u8]); 6] = [
        (1, stored.room.as_bytes()),
        (4, stored.sender.as_bytes()),
        (5, &stored.payload),
        (6, stored.content_type.as_bytes()),
        (7, stored.client_id.as_bytes()),
        (8, stored.key.as_bytes()),
    ];
    let number_fields: [(u8, u64); 2] = [
        (2, stored.offset),
        // int64 goes on the wire as its two's-complement u64.
        (3, stored.time_unix_micros as u64),
    ];
    let len_field = |len: usize| 1 + encoded_len_varint(len as u64) + len;
    let inner: usize = text_fields
        .iter()
        .filter(|(_, value)| !value.is_empty())
        .map(|(_, value)| len_field(value.len()))
        .chain(
            number_fields
                .iter()
                .filter(|(_, value)| *value != 0)
                .map(|(_, value)| 1 + encoded_len_varint(*value)),
        )
        .sum();
    let mut out = Vec::with_capacity(len_field(inner));
    out.push(key(1, LENGTH_DELIMITED)); // ServerFrame.message
    encode_varint(inner as u64, &mut out);
    // In field-number order, as prost writes them.
    let [room, sender, payload, content_type, client_id, message_key] = text_fields;
    let [offset, time] = number_fields;
    let put_text = |out: &mut Vec<u8>, (field, value): (u8, &[u8])| {
        if !value.is_empty() {
            out.push(key(field, LENGTH_DELIMITED));
            encode_varint(value.len() as u64, out);
            out.extend_from_slice(value);
        }
    };
    let put_number = |out: &mut Vec<u8>, (field, value): (u8, u64)| {
        if value != 0 {
            out.push(key(field, VARINT));
            encode_varint(value, out);
        }
    };
    put_text(&mut out, room);
    put_number(&mut out, offset);
    put_number(&mut out, time);
    for field in [sender, payload, content_type, client_id, message_key] {
        put_text(&mut out, field);
    }
    out.into()
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
) -> Bytes {
    encode(Frame::Joined(Joined {
        command_id,
        room: room.to_owned(),
        earliest_offset: earliest,
        last_offset: last,
        members,
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
        code: error.code(),
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
