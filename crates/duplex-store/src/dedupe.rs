//! The keys of the dedupe index, shared by both backends: a 128-bit hash of (room, client
//! id) and a 64-bit hash of the room, both cut from SHA-256 so they are the same in every
//! build and on every machine (the redb index outlives the process).
//!
//! SHA-256 rather than a fast hash: a publisher chooses its ids, and with a hash it could
//! steer it could make another client's id look like a repeat of its own. What it costs is
//! about a microsecond per message that carries an id; messages without one pay nothing.

use sha2::{Digest, Sha256};

use crate::redb_store::PRUNE_PER_COMMIT;
use crate::{Dedupe, NewMessage};

/// The index keys of `message` (its id's, its room's), or `None` when it is not
/// remembered: dedupe is off or it carries no client id.
pub(crate) fn message_keys(dedupe: &Dedupe, message: &NewMessage) -> Option<(u128, u64)> {
    (dedupe.is_on() && !message.client_id.is_empty()).then(|| {
        (
            id_key(&message.room, &message.client_id),
            room_key(&message.room),
        )
    })
}

/// How many expired ids one append may prune: [`PRUNE_PER_COMMIT`], or twice the ids it
/// added if more, so pruning always outpaces remembering.
pub(crate) fn prune_budget(remembered: u64) -> u64 {
    PRUNE_PER_COMMIT.max(2 * remembered)
}

/// The index key of `id` in `room`: the first 16 bytes of SHA-256(len(room) ‖ room ‖ id),
/// the room's length (4 bytes, little endian) keeping ("ab", "c") apart from ("a", "bc").
pub(crate) fn id_key(room: &str, id: &str) -> u128 {
    let mut hash = Sha256::new();
    hash.update((room.len() as u32).to_le_bytes());
    hash.update(room.as_bytes());
    hash.update(id.as_bytes());
    let digest = hash.finalize();
    let mut key = [0u8; 16];
    key.copy_from_slice(&digest[..16]);
    u128::from_le_bytes(key)
}

/// The key of `room` in the per-room tables of the index: the first 8 bytes of
/// SHA-256("room" ‖ room). Two rooms sharing one (odds about r²/2⁶⁵ for r rooms) would only
/// share their per-room bound.
pub(crate) fn room_key(room: &str) -> u64 {
    let mut hash = Sha256::new();
    hash.update(b"room");
    hash.update(room.as_bytes());
    let digest = hash.finalize();
    let mut key = [0u8; 8];
    key.copy_from_slice(&digest[..8]);
    u64::from_le_bytes(key)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_tell_rooms_and_ids_apart() {
        assert_ne!(id_key("ab", "c"), id_key("a", "bc"));
        assert_ne!(id_key("r", "1"), id_key("s", "1"));
        assert_eq!(id_key("r", "1"), id_key("r", "1"));
        assert_ne!(room_key("r"), room_key("s"));
    }
}
