//! The seam for presence: [`Presence`], who is in which room, with the listed/unlisted cap
//! that keeps one join's cost bounded however big the crowd (`max_presence_listed`).
//!
//! Today presence is local and not behind this trait: each room keeps its listed members
//! and its count of unlisted ones in its state (`room.rs`), changed under the room lock by
//! the session's join and leave, because the presence event a join fans out must be
//! ordered with the room's deliveries and with the joiner's own registration. Moving that
//! code onto the trait means reworking the session's join/leave, which another change of
//! issue 12 rewrites; it is left for then. A cluster implements the trait over a NATS KV
//! bucket (one key per member with a TTL, so a dead node's members expire), and the hub
//! then fans out the presence events the bucket's watch reports.

use duplex_proto::hub::Member;
use duplex_store::BoxFuture;

use crate::HubError;
use crate::hub::RoomPresence;

/// How a member shows in a room's presence.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Listing {
    /// In the room's member list: its join and leave are presence events.
    Listed,
    /// Past the list's cap: counted in `unlisted`, no events.
    Counted,
}

/// Who is present in each room, bounded per room by a cap on the listed members.
pub trait Presence: Send + Sync + 'static {
    /// Adds `member` to `room`: listed while the room lists fewer than `max_listed`,
    /// counted otherwise. Returns the room's presence as it was before, and how the member
    /// shows (what [`leave`](Presence::leave) undoes).
    fn join(
        &self,
        room: &str,
        member: Member,
        max_listed: usize,
    ) -> BoxFuture<'_, Result<(RoomPresence, Listing), HubError>>;

    /// Removes `member` from `room` as it was joined. Returns whether it was listed (so a
    /// presence event goes out).
    fn leave(
        &self,
        room: &str,
        member: &Member,
        listing: Listing,
    ) -> BoxFuture<'_, Result<bool, HubError>>;

    /// The room's listed members and the count of the others.
    fn list(&self, room: &str) -> BoxFuture<'_, Result<RoomPresence, HubError>>;
}
