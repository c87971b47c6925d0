//! The encoding of one message without its room and offset: the value of the redb messages
//! table, and the body of a message in a cluster's JetStream stream.
//!
//! The room and offset are the table key, so the record holds the rest:
//!
//! ```text
//! version: u8 = 1
//! time_unix_micros: i64, little endian
//! sender, content_type, client_id, key: each a LEB128 varint length + UTF-8 bytes
//! payload: LEB128 varint length + bytes
//! ```
//!
//! A typical record costs 14 bytes beyond its strings and payload. Decoding checks every
//! length, the UTF-8 and that nothing trails, and answers damage with
//! [`StoreError::CorruptRecord`], never a panic: the file is input like any other.

use bytes::Bytes;

use crate::{NewMessage, Offset, StoreError, StoredMessage};

/// Version byte of the record layout written by this code.
const RECORD_VERSION: u8 = 1;

/// The length of `encode(message)`, without encoding it.
pub fn encoded_len(message: &NewMessage) -> usize {
    let fields = [
        message.sender.len(),
        message.content_type.len(),
        message.client_id.len(),
        message.key.len(),
        message.payload.len(),
    ];
    1 + 8
        + fields
            .iter()
            .map(|&len| varint_len(len as u64) + len)
            .sum::<usize>()
}

fn varint_len(value: u64) -> usize {
    // 7 bits a byte; 0 still takes one.
    (64 - (value | 1).leading_zeros() as usize).div_ceil(7)
}

/// Encodes everything of `message` but its room and offset, into a buffer of exactly its
/// length (the memory store keeps it as is).
pub fn encode(message: &NewMessage) -> Vec<u8> {
    let mut out = Vec::with_capacity(encoded_len(message));
    out.push(RECORD_VERSION);
    out.extend_from_slice(&message.time_unix_micros.to_le_bytes());
    for field in [
        message.sender.as_bytes(),
        message.content_type.as_bytes(),
        message.client_id.as_bytes(),
        message.key.as_bytes(),
        &message.payload,
    ] {
        put_varint(&mut out, field.len() as u64);
        out.extend_from_slice(field);
    }
    out
}

/// Decodes a record stored under (`room`, `offset`).
pub fn decode(room: &str, offset: Offset, bytes: &[u8]) -> Result<StoredMessage, StoreError> {
    let corrupt = |reason: String| StoreError::CorruptRecord {
        room: room.to_owned(),
        offset,
        reason,
    };
    let mut reader = Reader { bytes };
    let version = reader.take(1, "version").map_err(corrupt)?[0];
    if version != RECORD_VERSION {
        return Err(corrupt(format!(
            "unknown record version {version} (this build reads {RECORD_VERSION})"
        )));
    }
    let time = reader.take(8, "time").map_err(corrupt)?;
    let time_unix_micros = i64::from_le_bytes(time.try_into().expect("took 8 bytes"));
    let sender = reader.string("sender").map_err(corrupt)?;
    let content_type = reader.string("content type").map_err(corrupt)?;
    let client_id = reader.string("client id").map_err(corrupt)?;
    let key = reader.string("key").map_err(corrupt)?;
    let payload = reader.field("payload").map_err(corrupt)?;
    if !reader.bytes.is_empty() {
        return Err(corrupt(format!(
            "{} unexpected bytes after the payload",
            reader.bytes.len()
        )));
    }
    Ok(StoredMessage {
        room: room.to_owned(),
        offset,
        time_unix_micros,
        sender,
        content_type,
        client_id,
        key,
        payload: Bytes::copy_from_slice(payload),
    })
}

/// Reads just the time of a record, for age retention.
pub fn decode_time(room: &str, offset: Offset, bytes: &[u8]) -> Result<i64, StoreError> {
    match bytes {
        [RECORD_VERSION, rest @ ..] if rest.len() >= 8 => {
            Ok(i64::from_le_bytes(rest[..8].try_into().expect("8 bytes")))
        }
        _ => decode(room, offset, bytes).map(|message| message.time_unix_micros),
    }
}

fn put_varint(out: &mut Vec<u8>, mut value: u64) {
    while value >= 0x80 {
        out.push((value as u8) | 0x80);
        value >>= 7;
    }
    out.push(value as u8);
}

/// A cursor over a record that fails, rather than panics, when the bytes run out.
struct Reader<'a> {
    bytes: &'a [u8],
}

impl<'a> Reader<'a> {
    fn take(&mut self, len: usize, what: &str) -> Result<&'a [u8], String> {
        if self.bytes.len() < len {
            return Err(format!(
                "truncated {what}: needs {len} bytes, {} left",
                self.bytes.len()
            ));
        }
        let (head, tail) = self.bytes.split_at(len);
        self.bytes = tail;
        Ok(head)
    }

    fn varint(&mut self, what: &str) -> Result<u64, String> {
        let mut value = 0u64;
        for shift in (0..64).step_by(7) {
            let byte = self.take(1, what)?[0];
            let bits = u64::from(byte & 0x7f);
            if shift == 63 && bits > 1 {
                return Err(format!("length of {what} overflows 64 bits"));
            }
            value |= bits << shift;
            if byte & 0x80 == 0 {
                return Ok(value);
            }
        }
        Err(format!("length of {what} is longer than 10 bytes"))
    }

    fn field(&mut self, what: &str) -> Result<&'a [u8], String> {
        let len = self.varint(what)?;
        let len = usize::try_from(len).map_err(|_| format!("length of {what} too large"))?;
        self.take(len, what)
    }

    fn string(&mut self, what: &str) -> Result<String, String> {
        let bytes = self.field(what)?;
        std::str::from_utf8(bytes)
            .map(str::to_owned)
            .map_err(|error| format!("{what} is not UTF-8: {error}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message() -> NewMessage {
        NewMessage {
            room: "lobby".into(),
            time_unix_micros: -1_234_567_890_123,
            sender: "ada".into(),
            content_type: "text/plain; charset=utf-8".into(),
            client_id: "c-42".into(),
            key: "player-7".into(),
            payload: Bytes::from(vec![0xAB; 300]),
        }
    }

    /// `message` as decoding its record stored at ("lobby", 7) must give it back.
    fn stored_at_7(message: NewMessage) -> StoredMessage {
        StoredMessage::from_new(message, 7)
    }

    #[test]
    fn round_trips_every_field() {
        let original = message();
        let encoded = encode(&original);
        assert_eq!(
            decode("lobby", 7, &encoded).unwrap(),
            stored_at_7(original.clone())
        );
        assert_eq!(
            decode_time("lobby", 7, &encoded).unwrap(),
            original.time_unix_micros
        );
    }

    #[test]
    fn empty_fields_cost_one_byte_each() {
        let empty = NewMessage {
            sender: String::new(),
            content_type: String::new(),
            client_id: String::new(),
            key: String::new(),
            payload: Bytes::new(),
            ..message()
        };
        let encoded = encode(&empty);
        assert_eq!(encoded.len(), 1 + 8 + 5);
        assert_eq!(decode("lobby", 7, &encoded).unwrap(), stored_at_7(empty));
    }

    #[test]
    fn every_truncation_is_an_error_naming_the_record() {
        let encoded = encode(&message());
        for len in 0..encoded.len() {
            match decode("lobby", 7, &encoded[..len]) {
                Err(StoreError::CorruptRecord { room, offset, .. }) => {
                    assert_eq!((room.as_str(), offset), ("lobby", 7));
                }
                other => panic!("truncated to {len}: {other:?}"),
            }
        }
    }

    #[test]
    fn trailing_bytes_unknown_version_and_bad_utf8_are_errors() {
        let mut trailing = encode(&message());
        trailing.push(0);
        assert!(decode("r", 1, &trailing).is_err());

        let mut version = encode(&message());
        version[0] = 9;
        let error = decode("r", 1, &version).unwrap_err();
        assert!(
            error.to_string().contains("unknown record version 9"),
            "{error}"
        );
        assert!(decode_time("r", 1, &version).is_err());

        let mut utf8 = encode(&message());
        utf8[10] = 0xFF; // first byte of the sender
        let error = decode("r", 1, &utf8).unwrap_err();
        assert!(error.to_string().contains("sender is not UTF-8"), "{error}");
    }

    #[test]
    fn huge_or_overlong_lengths_are_errors() {
        let mut overlong = vec![RECORD_VERSION];
        overlong.extend_from_slice(&0i64.to_le_bytes());
        overlong.extend_from_slice(&[0xFF; 11]);
        assert!(decode("r", 1, &overlong).is_err());

        let mut huge = vec![RECORD_VERSION];
        huge.extend_from_slice(&0i64.to_le_bytes());
        put_varint(&mut huge, u64::MAX);
        assert!(decode("r", 1, &huge).is_err());
    }

    #[test]
    fn arbitrary_bytes_never_panic() {
        // A small xorshift generator: deterministic, bounded, no dependency.
        let mut state = 0x9E37_79B9_7F4A_7C15u64;
        let mut next = || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        for _ in 0..20_000 {
            let len = (next() % 64) as usize;
            let mut bytes: Vec<u8> = (0..len).map(|_| next() as u8).collect();
            if next() % 2 == 0 && !bytes.is_empty() {
                bytes[0] = RECORD_VERSION;
            }
            let _ = decode("r", 1, &bytes);
            let _ = decode_time("r", 1, &bytes);
        }
    }
}
