//! The seam for presence: [`Presence`], who is in which room, with the listed/unlisted cap
//! that keeps one join's cost bounded however big the crowd (`max_presence_listed`);
//! [`LocalPresence`], the single-node implementation; and [`PresenceEvents`], where an
//! implementation that learns of members elsewhere (a cluster) reports them to a room.
//!
//! **Where ordering comes from: the room lock.** A joiner's `joined` frame lists the room's
//! members as they were just before its join; a change after that reaches it as a presence
//! event: at its registration as a subscriber (when its replay ends), one event for each
//! difference between that list and the room's list then (`resume.rs`), and every later
//! change live; no change shows twice; messages and presence events reach each subscriber
//! in one order.
//! The engine gets this by doing everything under the room's lock (`room.rs`): the join
//! reads the list, adds the member and fans out its event in one critical section; a leave
//! removes the member and its subscriber and fans out its event in one; deliveries and a
//! subscriber's registration happen under the same lock. The seam keeps that by splitting
//! presence in two:
//!
//! - The calls that read or change what a room's members are — [`members`](Presence::members),
//!   [`join`](Presence::join), [`leave`](Presence::leave) — are **synchronous** and cheap:
//!   the engine makes them under the room lock, next to the fan-out of the event they
//!   cause. They must not block or wait on I/O; a remote store is written behind them.
//! - A change made elsewhere is applied through [`PresenceEvents::apply`], which runs the
//!   implementation's change under the room lock and fans out the event it returns in the
//!   same critical section, exactly like a feed's [`RoomDelivery`](crate::RoomDelivery)
//!   delivers messages. So a remote change is ordered with local joins, with deliveries and
//!   with each subscriber's registration, as a local one is.
//!
//! Lock order: the room lock, then the implementation's own lock. An implementation never
//! calls [`PresenceEvents::apply`] while holding its own lock. [`members`](Presence::members)
//! is also called without the room lock (the unary `Presence` call), so each change must be
//! atomic under the implementation's own lock too.
//!
//! Bounds: the engine calls `join` only for visible members (hidden joins are never shown)
//! and `leave` exactly once per `join`, with the [`Listing`] `join` returned, so a session's
//! leave undoes exactly its join. A room lists at most `max_listed` members; the others are
//! counted. Nothing is promoted from counted to listed when a listed member leaves (each
//! join's cost stays what it was when it joined).
//!
//! **What a cluster implementation does** (a NATS KV bucket, one key per member
//! `<room>.<node>.<session>` with a TTL and `limit_markers`, so a dead node's members
//! expire and its watchers see them go):
//!
//! - It keeps a mirror of each room followed on this node: the listed members and the
//!   count, as [`LocalPresence`] keeps them. `members` reads the mirror.
//! - [`follow`](Presence::follow) (once per room load, in the joiner's task) starts a
//!   `watch_with_history` on the room's keys and returns once the current members are in
//!   the mirror, so the first joiner's `joined` frame already lists them. For each later
//!   change from another node the watch task calls [`PresenceEvents::apply`] with a closure
//!   that updates the mirror and returns the event when the member is (or was) listed. It
//!   skips this node's own keys: their joins and leaves were applied when they happened.
//!   Dropping the returned [`FeedHandle`] stops the watch.
//! - `join` and `leave` update the mirror at once (so the joiner's list and the events are
//!   ordered as above) and record the change in a map of this node's keys that a writer
//!   task reconciles with the bucket (create, refresh every heartbeat, delete): the map is
//!   bounded by this node's sessions × rooms, so a slow bucket delays writes but never
//!   grows a queue or blocks the room lock. A write that fails is retried by the next
//!   reconciliation; a node that dies has its keys expire.
//! - The cap is applied per node on its mirror: nodes may disagree briefly about who is
//!   listed when members join at once on several nodes; each node's list stays bounded.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};

use duplex_proto::hub::Member;
use duplex_store::BoxFuture;

use crate::HubError;
use crate::feed::FeedHandle;
use crate::frames;
use crate::hub::RoomPresence;
use crate::queue::Frame;
use crate::room::Room;

/// How a member shows in a room's presence.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Listing {
    /// In the room's member list: its join and leave are presence events.
    Listed,
    /// Past the list's cap: counted in `unlisted`, no events.
    Counted,
}

/// A change of a room's presence that goes out as a presence event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PresenceChange {
    /// A listed member joined.
    Joined(Member),
    /// A listed member left.
    Left(Member),
}

/// Who is present in each room, bounded per room by a cap on the listed members. See the
/// module docs for what is called under the room lock and why.
pub trait Presence: Send + Sync + 'static {
    /// The room's listed members and the count of the others. Called under the room lock
    /// (a joiner's `joined` list) and without it (the unary `Presence` call).
    fn members(&self, room: &str) -> RoomPresence;

    /// Adds the visible `member` to `room`: listed while the room lists fewer than
    /// `max_listed`, counted otherwise. Returns how it shows (what
    /// [`leave`](Presence::leave) is given back). Called under the room lock; must not block.
    fn join(&self, room: &str, member: &Member, max_listed: usize) -> Listing;

    /// Removes `member` from `room`, joined with `listing`. Returns whether it was in the
    /// list (so a presence event goes out). Called under the room lock; must not block.
    fn leave(&self, room: &str, member: &Member, listing: Listing) -> bool;

    /// Starts reporting `room`'s presence changes made elsewhere to `events`, until the
    /// returned handle is dropped. Called once per room load, in the joining session's
    /// task; returns once the room's current members are known here.
    fn follow(
        &self,
        room: &str,
        events: PresenceEvents,
    ) -> BoxFuture<'_, Result<FeedHandle, HubError>>;
}

impl std::fmt::Debug for dyn Presence {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Presence")
    }
}

/// Where an implementation reports one room's presence changes made elsewhere. Holds the
/// room weakly: once the room is gone from this process, [`apply`](PresenceEvents::apply)
/// says so and the implementation should stop following it.
#[derive(Debug, Clone)]
pub struct PresenceEvents {
    room: Weak<Room>,
}

impl PresenceEvents {
    pub(crate) fn new(room: &Arc<Room>) -> Self {
        PresenceEvents {
            room: Arc::downgrade(room),
        }
    }

    /// Runs `change` under the room's lock — where the implementation updates what
    /// [`Presence::members`] returns — and fans out the event it returns to the room's
    /// subscribers in the same critical section. Returns false once the room is gone from
    /// this process (then `change` is not run).
    pub fn apply(&self, change: impl FnOnce() -> Option<PresenceChange>) -> bool {
        let Some(room) = self.room.upgrade() else {
            return false;
        };
        let mut state = room.lock();
        if let Some(change) = change() {
            let (member, joined) = match change {
                PresenceChange::Joined(member) => (member, true),
                PresenceChange::Left(member) => (member, false),
            };
            let event = Frame::own(frames::presence(&room.name, member, joined));
            Room::broadcast(&mut state, &event, None);
        }
        true
    }
}

/// One room's members in [`LocalPresence`].
#[derive(Debug, Default)]
struct RoomMembers {
    /// Listed members, at most the cap given to each join.
    listed: Vec<Member>,
    /// Visible members present beyond the list: counted, not listed.
    unlisted: u64,
}

/// The single-node presence: every member is a session of this process, so presence is a
/// table in memory and nothing happens elsewhere to follow.
#[derive(Debug, Default)]
pub struct LocalPresence {
    /// Members by room; a room is in it only while it has a member, so it is bounded by
    /// the sessions' joins (`max_rooms_per_session` each). One std mutex for every room,
    /// held for a lookup and a change or a copy of one room's list (at most
    /// `max_presence_listed` members), never across an await.
    rooms: Mutex<HashMap<Arc<str>, RoomMembers>>,
}

impl LocalPresence {
    /// An empty table.
    pub fn new() -> Self {
        Self::default()
    }

    fn rooms(&self) -> std::sync::MutexGuard<'_, HashMap<Arc<str>, RoomMembers>> {
        self.rooms.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl Presence for LocalPresence {
    fn members(&self, room: &str) -> RoomPresence {
        self.rooms()
            .get(room)
            .map(|members| RoomPresence {
                members: members.listed.clone(),
                unlisted: members.unlisted,
            })
            .unwrap_or_default()
    }

    fn join(&self, room: &str, member: &Member, max_listed: usize) -> Listing {
        let mut rooms = self.rooms();
        let members = rooms.entry(room.into()).or_default();
        if members.listed.len() < max_listed {
            members.listed.push(member.clone());
            Listing::Listed
        } else {
            members.unlisted += 1;
            Listing::Counted
        }
    }

    fn leave(&self, room: &str, member: &Member, listing: Listing) -> bool {
        let mut rooms = self.rooms();
        let Some(members) = rooms.get_mut(room) else {
            return false;
        };
        let was_listed = match listing {
            Listing::Counted => {
                members.unlisted = members.unlisted.saturating_sub(1);
                false
            }
            Listing::Listed => {
                let before = members.listed.len();
                members.listed.retain(|m| m.session_id != member.session_id);
                members.listed.len() != before
            }
        };
        if members.listed.is_empty() && members.unlisted == 0 {
            rooms.remove(room);
        }
        was_listed
    }

    fn follow(
        &self,
        _room: &str,
        _events: PresenceEvents,
    ) -> BoxFuture<'_, Result<FeedHandle, HubError>> {
        Box::pin(std::future::ready(Ok(FeedHandle::none())))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn member(session: u64) -> Member {
        Member {
            name: format!("m{session}"),
            session_id: format!("s{session}"),
        }
    }

    /// Each leave undoes exactly its join (listed or counted, no promotion), and a room
    /// is forgotten once its last member leaves, so the table stays bounded by the joins.
    #[test]
    fn local_leaves_undo_their_joins_and_empty_rooms_are_forgotten() {
        let presence = LocalPresence::new();
        let joins: Vec<_> = (1..=3).map(|s| presence.join("r", &member(s), 2)).collect();
        assert_eq!(joins, [Listing::Listed, Listing::Listed, Listing::Counted]);
        let listed = presence.members("r");
        assert_eq!((listed.members.len(), listed.unlisted), (2, 1));

        assert!(
            presence.leave("r", &member(1), Listing::Listed),
            "an event goes out"
        );
        assert!(
            !presence.leave("r", &member(3), Listing::Counted),
            "no event"
        );
        let listed = presence.members("r");
        assert_eq!((listed.members, listed.unlisted), (vec![member(2)], 0));
        assert!(
            !presence.leave("r", &member(1), Listing::Listed),
            "already gone"
        );

        assert!(presence.leave("r", &member(2), Listing::Listed));
        assert!(presence.rooms().is_empty(), "the empty room is forgotten");
        assert!(!presence.leave("r", &member(2), Listing::Counted));
        assert!(presence.rooms().is_empty());
    }
}
