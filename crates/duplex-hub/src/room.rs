//! `Room`: one room's live state — who subscribes, who is present, how far the room's
//! total order has been delivered — and room-name validation.
//!
//! The sequencer is the only writer of offsets; it fans out under the room's lock, and a
//! joining session switches from replay to live under the same lock. That lock is what
//! makes resume gap-free and duplicate-free while publishers are busy.

use std::sync::{Arc, Mutex, MutexGuard};

use duplex_proto::hub::Member;
use duplex_store::{Offset, Store};
use tokio::sync::OnceCell;

use crate::HubError;
use crate::queue::{Frame, LivePush, SubscriberQueue};

/// Longest room name, in bytes.
pub const MAX_ROOM_NAME: usize = 128;

/// Checks a room name: 1–128 bytes of `[A-Za-z0-9._:-]`.
pub fn validate_room_name(name: &str) -> Result<(), HubError> {
    if name.is_empty() || name.len() > MAX_ROOM_NAME {
        return Err(HubError::InvalidArgument(format!(
            "room name must be 1 to {MAX_ROOM_NAME} bytes, got {}",
            name.len()
        )));
    }
    if let Some(bad) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | ':' | '-')))
    {
        return Err(HubError::InvalidArgument(format!(
            "room name {name:?} contains {bad:?}: use letters, digits and . _ : -"
        )));
    }
    Ok(())
}

/// A subscriber registered in a room.
#[derive(Debug)]
pub(crate) struct Subscriber {
    pub session_id: u64,
    pub queue: Arc<SubscriberQueue>,
}

#[derive(Debug, Default)]
pub(crate) struct RoomState {
    /// Next offset the sequencer assigns (sequencer-only).
    pub next_offset: Offset,
    /// Last offset fanned out: everything up to it is durable and was delivered live.
    pub delivered: Offset,
    pub subscribers: Vec<Subscriber>,
    /// Listed members, at most `max_presence_listed`.
    pub members: Vec<Member>,
    /// Visible members present beyond the list: counted, not listed.
    pub unlisted_members: u64,
    /// Recent client message ids → offset, oldest first, for dedupe (sequencer-only).
    pub recent_ids: std::collections::HashMap<String, Offset>,
    pub recent_order: std::collections::VecDeque<String>,
}

#[derive(Debug)]
pub(crate) struct Room {
    pub name: Arc<str>,
    state: Mutex<RoomState>,
    loaded: OnceCell<()>,
}

impl Room {
    pub fn new(name: &str) -> Self {
        Self {
            name: name.into(),
            state: Mutex::new(RoomState::default()),
            loaded: OnceCell::new(),
        }
    }

    pub fn lock(&self) -> MutexGuard<'_, RoomState> {
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Loads the room's position and its newest client ids (for dedupe) from the store,
    /// once. Runs in the task of whoever first uses the room (a join, a unary publish),
    /// never in the sequencer: a room coming back into use must not stall every other
    /// room's publishes. It reads no payloads (see `Store::recent_client_ids`).
    pub async fn ensure_loaded(
        &self,
        store: &dyn Store,
        dedupe_window: usize,
    ) -> Result<(), HubError> {
        self.loaded
            .get_or_try_init(|| async {
                let last = store.last_offset(&self.name).await?;
                let recent = store.recent_client_ids(&self.name, dedupe_window).await?;
                let mut state = self.lock();
                state.next_offset = last + 1;
                state.delivered = last;
                for (offset, id) in recent {
                    remember_id(&mut state, id, offset, dedupe_window);
                }
                Ok::<(), HubError>(())
            })
            .await
            .map(|_| ())
    }

    /// Whether [`Room::ensure_loaded`] has completed: the sequencer only takes loaded rooms.
    pub fn is_loaded(&self) -> bool {
        self.loaded.initialized()
    }

    /// Sends `frame` to every subscriber but `except`, detaching those that lagged out or
    /// went away.
    pub fn broadcast(state: &mut RoomState, frame: &Frame, except: Option<u64>) {
        state.subscribers.retain(|subscriber| {
            Some(subscriber.session_id) == except
                || subscriber.queue.push_live(frame.clone()) == LivePush::Queued
        });
    }
}

/// Records a client message id, forgetting the oldest beyond `window`.
pub(crate) fn remember_id(state: &mut RoomState, id: String, offset: Offset, window: usize) {
    if state.recent_ids.insert(id.clone(), offset).is_none() {
        state.recent_order.push_back(id);
    }
    while state.recent_order.len() > window {
        if let Some(old) = state.recent_order.pop_front() {
            state.recent_ids.remove(&old);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn room_names() {
        assert!(validate_room_name("lobby").is_ok());
        assert!(validate_room_name("game.eu-1:table_7").is_ok());
        assert!(validate_room_name("").is_err());
        assert!(validate_room_name("has space").is_err());
        assert!(validate_room_name("slash/room").is_err());
        assert!(validate_room_name("é").is_err());
        assert!(validate_room_name(&"r".repeat(129)).is_err());
        assert!(validate_room_name(&"r".repeat(128)).is_ok());
    }
}
