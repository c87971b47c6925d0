//! Room names as NATS subject tokens and KV key parts.
//!
//! A room name is 1–128 bytes of `[A-Za-z0-9._:-]` (`duplex-hub`'s `validate_room_name`).
//! `.` splits subject tokens, so `a.b`, `.a` and `a..b` would not be one token, and `:` is
//! not allowed in a KV key. So a room travels as **one token: its name in base64url without
//! padding** (`[A-Za-z0-9_-]`, at most 171 characters), which is valid in a subject, in a
//! wildcard-free subscription and in a KV key, and decodes back to exactly the name. The
//! encoding is total over any bytes, so a name the hub would refuse still maps to a valid
//! token (it never gets here, but nothing downstream depends on that).

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;

/// `room` as one subject token (see the module docs).
pub fn room_token(room: &str) -> String {
    URL_SAFE_NO_PAD.encode(room.as_bytes())
}

/// The room a token names; `None` for a token no room encodes to (not base64url, or not
/// UTF-8): a message on such a subject was not written by duplex.
pub fn room_from_token(token: &str) -> Option<String> {
    let bytes = URL_SAFE_NO_PAD.decode(token).ok()?;
    String::from_utf8(bytes).ok()
}

/// The subjects of one deployment, all under one prefix (`--nats-prefix`, default `duplex`),
/// so several deployments can share a NATS account.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Subjects {
    prefix: String,
}

impl Subjects {
    /// The subjects under `prefix` (one or more subject tokens, no wildcards).
    pub fn new(prefix: &str) -> Self {
        Subjects {
            prefix: prefix.to_owned(),
        }
    }

    /// Where a room's messages are stored: `<prefix>.room.<token>`.
    pub fn room(&self, room: &str) -> String {
        format!("{}.room.{}", self.prefix, room_token(room))
    }

    /// Every room's stored subject: the stream's subject filter, `<prefix>.room.>`.
    pub fn all_rooms(&self) -> String {
        format!("{}.room.>", self.prefix)
    }

    /// Where the stream republishes a room's stored messages for live delivery:
    /// `<prefix>.live.<token>`.
    pub fn live(&self, room: &str) -> String {
        format!("{}.live.{}", self.prefix, room_token(room))
    }

    /// Every room's live subject, `<prefix>.live.>`: the republish destination.
    pub fn all_live(&self) -> String {
        format!("{}.live.>", self.prefix)
    }

    /// The room a stored or live subject of this deployment names, if it is one.
    pub fn room_of(&self, subject: &str) -> Option<String> {
        let rest = subject.strip_prefix(&self.prefix)?.strip_prefix('.')?;
        let token = rest
            .strip_prefix("room.")
            .or_else(|| rest.strip_prefix("live."))?;
        if token.contains('.') {
            return None;
        }
        room_from_token(token)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_room_name_is_one_token_that_decodes_back() {
        let names = [
            "lobby",
            ".a",
            "a.",
            "a..b",
            "a:b",
            "*",
            ">",
            "-_-",
            &"x".repeat(128),
        ];
        let subjects = Subjects::new("duplex");
        for name in names {
            let token = room_token(name);
            assert!(!token.is_empty());
            assert!(
                token
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_'),
                "{name:?} -> {token:?}"
            );
            assert_eq!(room_from_token(&token).as_deref(), Some(name));
            assert_eq!(
                subjects.room_of(&subjects.room(name)).as_deref(),
                Some(name)
            );
            assert_eq!(
                subjects.room_of(&subjects.live(name)).as_deref(),
                Some(name)
            );
        }
        assert_eq!(subjects.room_of("duplex.room.a.b"), None);
        assert_eq!(subjects.room_of("other.room.bG9iYnk"), None);
        assert_eq!(subjects.room_of("duplex.room.!!"), None);
    }
}
