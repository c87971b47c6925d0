//! [`MemoryStore`]: every room's log in memory, bounded. For `--store memory` and tests.
//!
//! Nothing survives the process. Each room is a queue of its retained messages plus its
//! last offset; one mutex guards the map of rooms and is held only for the copy in or out
//! (never across an await). "Durable" here means "in the map": [`Store::append`] returns
//! once the batch is in, and [`Store::commits`] counts appends that stored something.
//!
//! Memory stays bounded: a room keeps at most [`Retention::max_messages`] messages, or
//! [`DEFAULT_MAX_MESSAGES_PER_ROOM`] when retention sets no count. A room whose messages
//! have all gone keeps only its last offset.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::{
    BoxFuture, MAX_RETENTION_DELETES_PER_RUN, Offset, Retention, RoomBounds, Store, StoreError,
    StoredMessage,
};

/// Messages a room keeps when [`Retention::max_messages`] is `None`, so that memory stays
/// bounded whatever the configuration.
pub const DEFAULT_MAX_MESSAGES_PER_ROOM: u64 = 100_000;

/// One room's log: retained messages, oldest first, and the last offset ever appended.
#[derive(Debug, Default)]
struct RoomLog {
    messages: VecDeque<StoredMessage>,
    last: Offset,
}

impl RoomLog {
    /// Drops the oldest messages beyond `max` and, when `cutoff` is given, those older
    /// than it (stopping at the first it keeps), `limit` at most. Returns how many went.
    fn trim(&mut self, max: u64, cutoff: Option<i64>, limit: u64) -> u64 {
        let mut removed = 0;
        while let Some(oldest) = self.messages.front()
            && removed < limit
        {
            let over_count = self.messages.len() as u64 > max;
            let expired = cutoff.is_some_and(|cutoff| oldest.time_unix_micros < cutoff);
            if !over_count && !expired {
                break;
            }
            self.messages.pop_front();
            removed += 1;
        }
        removed
    }
}

/// A bounded in-memory store. See the [module docs](self).
#[derive(Debug)]
pub struct MemoryStore {
    rooms: Mutex<HashMap<String, RoomLog>>,
    retention: Retention,
    max_messages: u64,
    commits: AtomicU64,
}

impl MemoryStore {
    /// An empty store keeping what `retention` says, and never more than
    /// [`DEFAULT_MAX_MESSAGES_PER_ROOM`] per room unless `retention.max_messages` says so.
    pub fn new(retention: Retention) -> Self {
        MemoryStore {
            rooms: Mutex::new(HashMap::new()),
            retention,
            max_messages: retention
                .max_messages
                .unwrap_or(DEFAULT_MAX_MESSAGES_PER_ROOM),
            commits: AtomicU64::new(0),
        }
    }

    fn rooms(&self) -> std::sync::MutexGuard<'_, HashMap<String, RoomLog>> {
        // A panic while holding the lock cannot leave a room half-updated in a way that
        // breaks its invariants (appends are checked before any change), so keep serving.
        self.rooms
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn append_now(&self, batch: Vec<StoredMessage>) -> Result<(), StoreError> {
        if batch.is_empty() {
            return Ok(());
        }
        let mut rooms = self.rooms();
        // Check the whole batch first: it is stored whole or not at all.
        let mut within_batch: HashMap<&str, Offset> = HashMap::new();
        for message in &batch {
            let room = message.room.as_str();
            let last = match within_batch.get(room) {
                Some(&last) => last,
                None => rooms.get(room).map_or(0, |log| log.last),
            };
            if message.offset <= last {
                return Err(StoreError::OffsetNotIncreasing {
                    room: room.to_owned(),
                    offset: message.offset,
                    last,
                });
            }
            within_batch.insert(room, message.offset);
        }
        drop(within_batch);
        for message in batch {
            let log = rooms.entry(message.room.clone()).or_default();
            log.last = message.offset;
            log.messages.push_back(message);
            log.trim(self.max_messages, None, u64::MAX);
        }
        self.commits.fetch_add(1, Ordering::AcqRel);
        Ok(())
    }

    fn read_after_now(
        &self,
        room: &str,
        after: Offset,
        limit: usize,
        max_bytes: usize,
    ) -> Vec<StoredMessage> {
        let rooms = self.rooms();
        let Some(log) = rooms.get(room) else {
            return Vec::new();
        };
        // Offsets increase along the queue, so binary search for the first one after.
        let start = log.messages.partition_point(|m| m.offset <= after);
        let mut page = crate::PageBudget::new(max_bytes);
        log.messages
            .range(start..)
            .take(limit)
            .take_while(|m| page.admit(m.size()))
            .cloned()
            .collect()
    }

    fn bounds_now(&self, room: &str) -> Option<RoomBounds> {
        let rooms = self.rooms();
        let log = rooms.get(room)?;
        Some(RoomBounds {
            earliest: log.messages.front()?.offset,
            last: log.messages.back()?.offset,
        })
    }

    fn enforce_retention_now(&self, now_unix_micros: i64) -> u64 {
        let cutoff = self.retention.age_cutoff(now_unix_micros);
        let mut rooms = self.rooms();
        let mut removed = 0;
        for log in rooms.values_mut() {
            let budget = MAX_RETENTION_DELETES_PER_RUN - removed;
            if budget == 0 {
                break;
            }
            removed += log.trim(self.max_messages, cutoff, budget);
        }
        removed
    }
}

impl Store for MemoryStore {
    fn append(&self, batch: Vec<StoredMessage>) -> BoxFuture<'_, Result<(), StoreError>> {
        Box::pin(std::future::ready(self.append_now(batch)))
    }

    fn read_after(
        &self,
        room: &str,
        after: Offset,
        limit: usize,
    ) -> BoxFuture<'_, Result<Vec<StoredMessage>, StoreError>> {
        Box::pin(std::future::ready(Ok(self.read_after_now(
            room,
            after,
            limit,
            usize::MAX,
        ))))
    }

    fn read_page(
        &self,
        room: &str,
        after: Offset,
        limit: usize,
        max_bytes: usize,
    ) -> BoxFuture<'_, Result<Vec<StoredMessage>, StoreError>> {
        Box::pin(std::future::ready(Ok(
            self.read_after_now(room, after, limit, max_bytes)
        )))
    }

    fn bounds(&self, room: &str) -> BoxFuture<'_, Result<Option<RoomBounds>, StoreError>> {
        Box::pin(std::future::ready(Ok(self.bounds_now(room))))
    }

    fn last_offset(&self, room: &str) -> BoxFuture<'_, Result<Offset, StoreError>> {
        let last = self.rooms().get(room).map_or(0, |log| log.last);
        Box::pin(std::future::ready(Ok(last)))
    }

    fn enforce_retention(&self, now_unix_micros: i64) -> BoxFuture<'_, Result<u64, StoreError>> {
        Box::pin(std::future::ready(Ok(
            self.enforce_retention_now(now_unix_micros)
        )))
    }

    fn commits(&self) -> u64 {
        self.commits.load(Ordering::Acquire)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use futures::executor::block_on;
    use std::time::Duration;

    fn message(room: &str, offset: Offset, time_unix_micros: i64) -> StoredMessage {
        StoredMessage {
            room: room.into(),
            offset,
            time_unix_micros,
            sender: String::new(),
            content_type: String::new(),
            client_id: String::new(),
            key: String::new(),
            payload: Bytes::from_static(b"x"),
        }
    }

    #[test]
    fn default_cap_bounds_a_room_without_count_retention() {
        let store = MemoryStore::new(Retention::default());
        let total = DEFAULT_MAX_MESSAGES_PER_ROOM + 10;
        for chunk in (1..=total).collect::<Vec<_>>().chunks(10_000) {
            block_on(store.append(chunk.iter().map(|&o| message("r", o, 0)).collect())).unwrap();
        }
        let bounds = block_on(store.bounds("r")).unwrap().unwrap();
        assert_eq!(
            bounds,
            RoomBounds {
                earliest: 11,
                last: total
            }
        );
        assert_eq!(block_on(store.last_offset("r")).unwrap(), total);
    }

    #[test]
    fn count_age_and_last_offset() {
        let store = MemoryStore::new(Retention {
            max_messages: Some(3),
            max_age: Some(Duration::from_micros(100)),
        });
        block_on(store.append((1..=5).map(|o| message("r", o, o as i64 * 10)).collect())).unwrap();
        assert_eq!(
            block_on(store.bounds("r")).unwrap(),
            Some(RoomBounds {
                earliest: 3,
                last: 5
            })
        );
        // now = 135: cutoff 35 drops offsets 3 (t=30); keeps 4 (t=40) and 5.
        assert_eq!(block_on(store.enforce_retention(135)).unwrap(), 1);
        assert_eq!(
            block_on(store.bounds("r")).unwrap(),
            Some(RoomBounds {
                earliest: 4,
                last: 5
            })
        );
        assert_eq!(block_on(store.enforce_retention(1_000)).unwrap(), 2);
        assert_eq!(block_on(store.bounds("r")).unwrap(), None);
        assert_eq!(block_on(store.last_offset("r")).unwrap(), 5);
        assert!(matches!(
            block_on(store.append(vec![message("r", 5, 0)])),
            Err(StoreError::OffsetNotIncreasing { last: 5, .. })
        ));
        block_on(store.append(vec![message("r", 6, 0)])).unwrap();
        assert_eq!(store.commits(), 2);
    }

    #[test]
    fn pages_stop_at_their_byte_bound() {
        let store = MemoryStore::new(Retention::default());
        let big = |offset| StoredMessage {
            payload: Bytes::from(vec![0u8; 1000]),
            ..message("r", offset, 0)
        };
        block_on(store.append((1..=10).map(big).collect())).unwrap();
        let size = big(1).size();
        let page = block_on(store.read_page("r", 0, 100, 3 * size + 10)).unwrap();
        assert_eq!(page.iter().map(|m| m.offset).collect::<Vec<_>>(), [1, 2, 3]);
        // A first message over the bound comes alone; the count still applies.
        assert_eq!(block_on(store.read_page("r", 3, 100, 10)).unwrap().len(), 1);
        assert_eq!(
            block_on(store.read_page("r", 0, 2, usize::MAX))
                .unwrap()
                .len(),
            2
        );
    }

    #[test]
    fn paging_and_refused_batches() {
        let store = MemoryStore::new(Retention::default());
        block_on(store.append((1..=10).map(|o| message("r", o * 2, 0)).collect())).unwrap();
        let page = block_on(store.read_after("r", 5, 3)).unwrap();
        assert_eq!(
            page.iter().map(|m| m.offset).collect::<Vec<_>>(),
            [6, 8, 10]
        );
        assert!(block_on(store.read_after("nope", 0, 3)).unwrap().is_empty());
        // A batch with a bad second room stores nothing of its first.
        let refused = block_on(store.append(vec![message("a", 1, 0), message("r", 3, 0)]));
        assert!(refused.is_err());
        assert_eq!(block_on(store.last_offset("a")).unwrap(), 0);
    }
}
