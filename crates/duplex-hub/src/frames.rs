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

pub(crate) fn message_frame(stored: &StoredMessage) -> Bytes {
    encode(Frame::Message(message(stored)))
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
