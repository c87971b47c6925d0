//! Who a session is and which rooms it may read and write.
//!
//! Rights are lists of room patterns: an exact name (`lobby`), a prefix ending in `*`
//! (`game.eu.*` matches `game.eu.1` and `game.eu.lobby`), or `*` for every room. Reading
//! covers join, subscribe, history and presence; writing covers publish. The server builds
//! an [`Identity`] from a verified token (or grants everything when auth is off); the hub
//! checks it on every command.

use std::time::SystemTime;

use crate::HubError;

/// One room pattern.
#[derive(Debug, Clone, PartialEq, Eq)]
enum RoomPattern {
    Any,
    Exact(String),
    Prefix(String),
}

impl RoomPattern {
    fn parse(text: &str) -> Result<Self, HubError> {
        if text == "*" {
            return Ok(RoomPattern::Any);
        }
        match text.strip_suffix('*') {
            Some(prefix) if !prefix.contains('*') => Ok(RoomPattern::Prefix(prefix.to_owned())),
            _ if !text.contains('*') => Ok(RoomPattern::Exact(text.to_owned())),
            _ => Err(HubError::InvalidArgument(format!(
                "room pattern {text:?}: `*` may only end a pattern"
            ))),
        }
    }

    fn matches(&self, room: &str) -> bool {
        match self {
            RoomPattern::Any => true,
            RoomPattern::Exact(name) => name == room,
            RoomPattern::Prefix(prefix) => room.starts_with(prefix.as_str()),
        }
    }
}

/// The rooms a session may read and write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rights {
    read: Vec<RoomPattern>,
    write: Vec<RoomPattern>,
}

impl Rights {
    /// Every room, both ways (auth off).
    pub fn all() -> Self {
        Self {
            read: vec![RoomPattern::Any],
            write: vec![RoomPattern::Any],
        }
    }

    /// Rights from pattern lists, as a token's claims carry them.
    pub fn new<S: AsRef<str>>(read: &[S], write: &[S]) -> Result<Self, HubError> {
        let parse = |patterns: &[S]| {
            patterns
                .iter()
                .map(|p| RoomPattern::parse(p.as_ref()))
                .collect::<Result<Vec<_>, _>>()
        };
        Ok(Self {
            read: parse(read)?,
            write: parse(write)?,
        })
    }

    /// Whether these rights let a caller join, subscribe to or read the history of `room`.
    pub fn can_read(&self, room: &str) -> bool {
        self.read.iter().any(|p| p.matches(room))
    }

    /// Whether these rights let a caller publish to `room`.
    pub fn can_write(&self, room: &str) -> bool {
        self.write.iter().any(|p| p.matches(room))
    }

    /// PERMISSION_DENIED unless `room` may be read.
    pub fn check_read(&self, room: &str) -> Result<(), HubError> {
        if self.can_read(room) {
            Ok(())
        } else {
            Err(HubError::PermissionDenied(format!(
                "no right to read room {room}"
            )))
        }
    }

    /// PERMISSION_DENIED unless `room` may be written.
    pub fn check_write(&self, room: &str) -> Result<(), HubError> {
        if self.can_write(room) {
            Ok(())
        } else {
            Err(HubError::PermissionDenied(format!(
                "no right to publish to room {room}"
            )))
        }
    }
}

/// Longest name a caller may choose for itself, in bytes (as the `duplex-name` header).
pub const MAX_NAME_LEN: usize = 128;

/// Where an identity's name comes from, which decides whether a call may choose another.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Naming {
    /// From verified credentials (a token's subject): every call shows this name.
    Verified,
    /// Chosen by the caller (anonymous): a call may name its sender or presence itself,
    /// shown after `prefix` (set when tokens are verified, so it never equals a subject).
    Chosen {
        /// What every chosen name is shown after (e.g. `anon:`); empty without tokens.
        prefix: String,
    },
}

/// Who a session is: its name (the `sender` of what it publishes), its rights, and when
/// its credentials expire (the session ends then).
#[derive(Debug, Clone)]
pub struct Identity {
    /// The name it shows as: the sender of its publishes, its presence name.
    pub name: String,
    /// Which rooms it may read and write.
    pub rights: Rights,
    /// When its credentials expire (its sessions end then); `None`: never.
    pub expires_at: Option<SystemTime>,
    /// Whom the publish rate limit counts this caller as: every session and unary call
    /// with the same key shares one budget. The server sets it (a token's subject, or the
    /// peer address of an anonymous caller); it is never shown to anyone.
    pub quota_key: String,
    /// Whether calls may rename the caller (anonymous) or not (a verified token).
    pub naming: Naming,
}

impl Identity {
    /// A session with every right and no expiry (auth off).
    pub fn anonymous(name: impl Into<String>) -> Self {
        let name = name.into();
        Self {
            quota_key: format!("name:{name}"),
            name,
            rights: Rights::all(),
            expires_at: None,
            naming: Naming::Chosen {
                prefix: String::new(),
            },
        }
    }

    /// Whether the name comes from verified credentials.
    pub fn is_verified(&self) -> bool {
        self.naming == Naming::Verified
    }

    /// The name a call shows when it asks for `requested`: the identity's own name when
    /// it is verified or `requested` is empty; else `requested` (1 to [`MAX_NAME_LEN`]
    /// bytes, INVALID_ARGUMENT otherwise) after the anonymous prefix.
    pub fn name_for_call(&self, requested: &str) -> Result<String, HubError> {
        match &self.naming {
            Naming::Chosen { prefix } if !requested.is_empty() => {
                if requested.len() > MAX_NAME_LEN {
                    return Err(HubError::InvalidArgument(format!(
                        "a name must be 1 to {MAX_NAME_LEN} bytes"
                    )));
                }
                Ok(format!("{prefix}{requested}"))
            }
            _ => Ok(self.name.clone()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patterns_match_exact_prefix_and_any() {
        let rights = Rights::new(&["lobby", "game.eu.*"], &["game.eu.1"]).unwrap();
        assert!(rights.can_read("lobby"));
        assert!(!rights.can_read("lobby2"));
        assert!(rights.can_read("game.eu.1"));
        assert!(rights.can_read("game.eu.lobby"));
        assert!(!rights.can_read("game.us.1"));
        assert!(!rights.can_read("game.eu"), "the prefix includes the dot");
        assert!(rights.can_write("game.eu.1"));
        assert!(!rights.can_write("lobby"));
        let all = Rights::new(&["*"], &[] as &[&str]).unwrap();
        assert!(all.can_read("anything"));
        assert!(!all.can_write("anything"));
        assert_eq!(
            all.check_write("x").unwrap_err().code(),
            crate::Code::PermissionDenied
        );
    }

    #[test]
    fn only_anonymous_callers_choose_their_name() {
        let mut identity = Identity::anonymous("anon:me");
        identity.naming = Naming::Chosen {
            prefix: "anon:".into(),
        };
        assert_eq!(identity.name_for_call("").unwrap(), "anon:me");
        assert_eq!(identity.name_for_call("bob").unwrap(), "anon:bob");
        let long = "x".repeat(MAX_NAME_LEN + 1);
        assert_eq!(
            identity.name_for_call(&long).unwrap_err().code(),
            crate::Code::InvalidArgument
        );
        identity.naming = Naming::Verified;
        assert_eq!(identity.name_for_call("bob").unwrap(), "anon:me");
    }

    #[test]
    fn star_only_at_the_end() {
        assert!(Rights::new(&["a*b"], &[] as &[&str]).is_err());
        assert!(Rights::new(&["**"], &[] as &[&str]).is_err());
        assert!(Rights::new(&["a.*"], &[] as &[&str]).is_ok());
    }
}
