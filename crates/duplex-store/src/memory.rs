//! [`MemoryStore`]: every room's log in memory, bounded. For `--store memory` and tests.
//!
//! Nothing survives the process. Each room is a queue of its retained messages plus its
//! last offset; one mutex guards the map of rooms and is held only for the copy in or out
//! (never across an await). "Durable" here means "in the map": [`Store::append`] returns
//! once the batch is in, and [`Store::commits`] counts appends that stored something.
//!
//! Each message is kept as one exact-size record (the redb record layout, see the `record`
//! module) and its offset: the payload is copied out of whatever buffer it arrived in (a
//! slice of a receive buffer would pin the whole buffer), and a stored message costs its
//! payload and strings plus about [`MESSAGE_COST`] bytes. Reads decode copies.
//!
//! Memory stays bounded twice over:
//! - per room: at most [`Retention::max_messages`] messages, or
//!   [`DEFAULT_MAX_MESSAGES_PER_ROOM`] when retention sets no count;
//! - in total: at most `max_bytes` (see [`MemoryStore::with_max_bytes`]), counting every
//!   message's record and [`MESSAGE_COST`], and every room's name and [`ROOM_COST`]. An
//!   append that would go over it first **evicts the oldest messages of the whole store**
//!   (in append order, whatever their room), as retention would: a resume from before them
//!   gets the usual "older than retention" error with the earliest offset left. A room
//!   whose messages have all gone keeps only its name and last offset (so its offsets
//!   never go back); only when rooms alone fill the bound is an append refused, with
//!   [`StoreError::Full`].
//!
//! The dedupe index (see [`Dedupe`](crate::Dedupe)) has its own bound, not counted in `max_bytes`: at
//! most [`Dedupe::max_ids`](crate::Dedupe::max_ids) ids in all and
//! [`Dedupe::max_ids_per_room`](crate::Dedupe::max_ids_per_room) per room, each
//! costing about [`ID_COST`] bytes (a hash-map entry and a slot in two age queues), so the
//! default million ids take up to about 160 MB. Past a bound the oldest ids (of the room,
//! or of the store) are forgotten early, exactly as in [`RedbStore`](crate::RedbStore);
//! ids older than the window are pruned on each append (bounded like the redb backend's)
//! and by [`Store::enforce_retention`].

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use foldhash::fast::RandomState as FastHash;

use crate::dedupe::{message_keys, prune_budget};
use crate::{
    Appended, BoxFuture, MAX_RETENTION_DELETES_PER_RUN, MESSAGE_OVERHEAD, NewMessage, Offset,
    PageBudget, Retention, RoomBounds, Store, StoreError, StoredMessage, record,
};

/// Messages a room keeps when [`Retention::max_messages`] is `None`, so that memory stays
/// bounded whatever the configuration.
pub const DEFAULT_MAX_MESSAGES_PER_ROOM: u64 = 100_000;

/// Total bytes a store made with [`MemoryStore::new`] keeps (see the [module docs](self)).
pub const DEFAULT_MAX_BYTES: usize = 512 << 20;

/// What one stored message costs beyond its record: its slot in its room's queue and in
/// the store's eviction order, and the allocator's header on the record.
pub const MESSAGE_COST: usize = 64;

/// What one room costs beyond its name: its map entry, queue and shared name.
pub const ROOM_COST: usize = 128;

/// About what one remembered client id costs at most: its entry in the id map (32 bytes
/// and the map's slack) and its slots in the store's and its room's age queues (48 and 32
/// bytes; the queues may hold as many stale slots again before they are compacted, which
/// this does not count).
pub const ID_COST: usize = 160;

/// One stored message: its offset and its record, allocated to the byte.
#[derive(Debug)]
struct Kept {
    offset: Offset,
    record: Box<[u8]>,
}

impl Kept {
    fn cost(&self) -> usize {
        self.record.len() + MESSAGE_COST
    }
}

/// One room's log: retained messages, oldest first, and the last offset ever appended.
#[derive(Debug, Default)]
struct RoomLog {
    messages: VecDeque<Kept>,
    last: Offset,
}

impl RoomLog {
    /// Drops the oldest messages beyond `max` and, when `cutoff` is given, those older
    /// than it (stopping at the first it keeps), `limit` at most. Returns how many went
    /// and the bytes of their records.
    fn trim(
        &mut self,
        room: &str,
        max: u64,
        cutoff: Option<i64>,
        limit: u64,
    ) -> Result<(u64, usize), StoreError> {
        let mut removed = 0;
        let mut bytes = 0;
        while let Some(oldest) = self.messages.front()
            && removed < limit
        {
            let over_count = self.messages.len() as u64 > max;
            let expired = match cutoff {
                Some(cutoff) => record::decode_time(room, oldest.offset, &oldest.record)? < cutoff,
                None => false,
            };
            if !over_count && !expired {
                break;
            }
            if let Some(gone) = self.messages.pop_front() {
                bytes += gone.record.len();
            }
            removed += 1;
        }
        Ok((removed, bytes))
    }
}

/// The dedupe index in memory: the same content as the redb tables. A slot in either
/// queue is live while `ids` still maps its id to its time; others are skipped (and
/// compacted away once they are as many as the live ones).
#[derive(Debug, Default)]
struct IdIndex {
    /// Id key → offset and time of the message that first carried it.
    ids: HashMap<u128, (Offset, i64), FastHash>,
    /// Every remembered id, in insertion order (the hub's times: oldest first).
    by_age: VecDeque<(i64, u128, u64)>,
    /// Per room key: its ids in insertion order.
    by_room: HashMap<u64, VecDeque<(i64, u128)>, FastHash>,
    /// Per room key: how many of its ids are live (`by_room` may hold stale slots).
    counts: HashMap<u64, u64, FastHash>,
}

impl IdIndex {
    fn is_live(&self, time: i64, id: u128) -> bool {
        self.ids.get(&id).is_some_and(|&(_, t)| t == time)
    }

    fn insert(&mut self, id: u128, room: u64, offset: Offset, time: i64) {
        self.ids.insert(id, (offset, time));
        self.by_age.push_back((time, id, room));
        self.by_room.entry(room).or_default().push_back((time, id));
        *self.counts.entry(room).or_default() += 1;
    }

    /// Removes a live id; its queue slots go stale.
    fn forget(&mut self, id: u128, room: u64) {
        if self.ids.remove(&id).is_some()
            && let Some(count) = self.counts.get_mut(&room)
        {
            *count -= 1;
            if *count == 0 {
                self.counts.remove(&room);
                self.by_room.remove(&room);
            }
        }
    }

    fn bound_room(&mut self, room: u64, max: u64) {
        while self.counts.get(&room).is_some_and(|&count| count > max) {
            let Some((time, id)) = self.by_room.get_mut(&room).and_then(VecDeque::pop_front) else {
                break;
            };
            if self.is_live(time, id) {
                self.forget(id, room);
            }
        }
        if let Some(queue) = self.by_room.get_mut(&room) {
            let live = self.counts.get(&room).copied().unwrap_or(0) as usize;
            if queue.len() > 2 * live + 64 {
                let ids = &self.ids;
                queue.retain(|&(time, id)| ids.get(&id).is_some_and(|&(_, t)| t == time));
            }
        }
    }

    /// Forgets the oldest ids while more than `max` are held, and up to `budget` older
    /// than `cutoff`.
    fn prune(&mut self, cutoff: i64, budget: u64, max: u64) {
        let mut pruned = 0;
        while let Some(&(time, id, room)) = self.by_age.front() {
            let over = self.ids.len() as u64 > max;
            if !over && (pruned >= budget || time >= cutoff) {
                break;
            }
            self.by_age.pop_front();
            if self.is_live(time, id) {
                self.forget(id, room);
                pruned += 1;
            }
        }
        if self.by_age.len() > 2 * self.ids.len() + 64 {
            let ids = &self.ids;
            self.by_age
                .retain(|&(time, id, _)| ids.get(&id).is_some_and(|&(_, t)| t == time));
        }
    }
}

/// What an append does with one message of its batch, decided before anything changes.
#[derive(Debug)]
enum Plan {
    /// Store it, and remember its id (key, room key) if it carries one.
    Store(Option<(u128, u64)>),
    /// A repeat of a remembered id: this is the original.
    Repeat(Appended),
    /// A repeat of the message at this index of the same batch.
    RepeatOf(usize),
}

/// Everything behind the store's lock.
#[derive(Debug, Default)]
struct Rooms {
    logs: HashMap<Arc<str>, RoomLog>,
    /// Every stored message's room and offset, in append order: what total-bound eviction
    /// takes from first. Entries of messages retention already removed are skipped then
    /// (their slot stays counted in `bytes` until they are).
    order: VecDeque<(Arc<str>, Offset)>,
    /// What the rooms, their records and `order` cost, by [`MESSAGE_COST`] and
    /// [`ROOM_COST`]; never over the store's bound after an append.
    bytes: usize,
    /// Client ids remembered for dedupe, bounded by the store's [`crate::Dedupe`].
    ids: IdIndex,
}

impl Rooms {
    /// Evicts the oldest message of the store (or a stale `order` entry); false when there
    /// is nothing left to evict.
    fn evict_oldest(&mut self) -> bool {
        let Some((room, offset)) = self.order.pop_front() else {
            return false;
        };
        // The entry's slot: whether or not its message is still there.
        self.bytes -= MESSAGE_COST;
        if let Some(log) = self.logs.get_mut(&room)
            && log.messages.front().is_some_and(|m| m.offset == offset)
            && let Some(gone) = log.messages.pop_front()
        {
            self.bytes -= gone.record.len();
        }
        true
    }
}

/// A bounded in-memory store. See the [module docs](self).
#[derive(Debug)]
pub struct MemoryStore {
    rooms: Mutex<Rooms>,
    retention: Retention,
    max_messages: u64,
    /// Bound on [`Rooms::bytes`].
    max_bytes: usize,
    commits: AtomicU64,
}

impl MemoryStore {
    /// An empty store keeping what `retention` says, never more than
    /// [`DEFAULT_MAX_MESSAGES_PER_ROOM`] per room unless `retention.max_messages` says so,
    /// and at most [`DEFAULT_MAX_BYTES`] in all.
    pub fn new(retention: Retention) -> Self {
        Self::with_max_bytes(retention, DEFAULT_MAX_BYTES)
    }

    /// An empty store like [`MemoryStore::new`] that keeps at most `max_bytes` in all,
    /// evicting the oldest messages of any room past it (see the [module docs](self)).
    pub fn with_max_bytes(retention: Retention, max_bytes: usize) -> Self {
        MemoryStore {
            rooms: Mutex::new(Rooms::default()),
            retention,
            max_messages: retention
                .max_messages
                .unwrap_or(DEFAULT_MAX_MESSAGES_PER_ROOM),
            max_bytes,
            commits: AtomicU64::new(0),
        }
    }

    /// Bytes the store holds now, as it counts them against its bound.
    pub fn bytes(&self) -> usize {
        self.rooms().bytes
    }

    fn rooms(&self) -> std::sync::MutexGuard<'_, Rooms> {
        // A panic while holding the lock cannot leave a room half-updated in a way that
        // breaks its invariants (appends are checked before any change), so keep serving.
        self.rooms
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn append_now(&self, batch: Vec<NewMessage>) -> Result<Vec<Appended>, StoreError> {
        if batch.is_empty() {
            return Ok(Vec::new());
        }
        let dedupe = self.retention.dedupe;
        let mut rooms = self.rooms();
        let rooms = &mut *rooms;
        // Decide every message first (duplicates, within the batch too, and the bytes the
        // rest need), so the batch is stored whole or not at all.
        let mut seen: HashMap<u128, usize, FastHash> = HashMap::default();
        let mut plan = Vec::with_capacity(batch.len());
        let mut needed = 0;
        let mut new_rooms: Vec<&str> = Vec::new();
        for (index, message) in batch.iter().enumerate() {
            let key = message_keys(&dedupe, message);
            if let Some((id, _)) = key {
                if let Some(&first) = seen.get(&id) {
                    plan.push(Plan::RepeatOf(first));
                    continue;
                }
                if let Some(&(offset, time)) = rooms.ids.ids.get(&id)
                    && dedupe.still_holds(time, message.time_unix_micros)
                {
                    plan.push(Plan::Repeat(Appended {
                        offset,
                        time_unix_micros: time,
                        duplicate: true,
                    }));
                    continue;
                }
                seen.insert(id, index);
            }
            plan.push(Plan::Store(key));
            if !rooms.logs.contains_key(message.room.as_str())
                && !new_rooms.contains(&message.room.as_str())
            {
                new_rooms.push(&message.room);
                needed += message.room.len() + ROOM_COST;
            }
            needed += record::encoded_len(message) + MESSAGE_COST;
        }
        drop(new_rooms);
        while rooms.bytes + needed > self.max_bytes {
            if !rooms.evict_oldest() {
                return Err(StoreError::Full {
                    max_bytes: self.max_bytes,
                });
            }
        }
        let mut outcome: Vec<Appended> = Vec::with_capacity(batch.len());
        let mut newest = i64::MIN;
        let mut remembered = 0u64;
        for (message, step) in batch.iter().zip(plan) {
            newest = newest.max(message.time_unix_micros);
            let key = match step {
                Plan::Store(key) => key,
                Plan::Repeat(original) => {
                    outcome.push(original);
                    continue;
                }
                Plan::RepeatOf(first) => {
                    outcome.push(Appended {
                        duplicate: true,
                        ..outcome[first]
                    });
                    continue;
                }
            };
            let name: Arc<str> = match rooms.logs.get_key_value(message.room.as_str()) {
                Some((name, _)) => name.clone(),
                None => {
                    rooms.bytes += message.room.len() + ROOM_COST;
                    let name: Arc<str> = message.room.as_str().into();
                    rooms.logs.insert(name.clone(), RoomLog::default());
                    name
                }
            };
            let Some(log) = rooms.logs.get_mut(&name) else {
                continue;
            };
            log.last += 1;
            let offset = log.last;
            let kept = Kept {
                offset,
                // Exactly the record's bytes: nothing of the buffer the payload came in.
                record: record::encode(message).into_boxed_slice(),
            };
            rooms.bytes += kept.cost();
            log.messages.push_back(kept);
            let (_, trimmed) = log.trim(&name, self.max_messages, None, u64::MAX)?;
            rooms.bytes -= trimmed;
            rooms.order.push_back((name, offset));
            if let Some((id, room)) = key {
                rooms.ids.forget(id, room); // an expired entry, if any
                rooms.ids.insert(id, room, offset, message.time_unix_micros);
                rooms.ids.bound_room(room, dedupe.max_ids_per_room);
                remembered += 1;
            }
            outcome.push(Appended {
                offset,
                time_unix_micros: message.time_unix_micros,
                duplicate: false,
            });
        }
        if dedupe.is_on() {
            let budget = prune_budget(remembered);
            let cutoff = newest.saturating_sub(dedupe.window_micros());
            rooms.ids.prune(cutoff, budget, dedupe.max_ids);
        }
        if outcome.iter().any(|appended| !appended.duplicate) {
            self.commits.fetch_add(1, Ordering::AcqRel);
        }
        Ok(outcome)
    }

    fn read_after_now(
        &self,
        room: &str,
        after: Offset,
        limit: usize,
        max_bytes: usize,
    ) -> Result<Vec<StoredMessage>, StoreError> {
        let rooms = self.rooms();
        let Some(log) = rooms.logs.get(room) else {
            return Ok(Vec::new());
        };
        // Offsets increase along the queue, so binary search for the first one after.
        let start = log.messages.partition_point(|m| m.offset <= after);
        let mut page = PageBudget::new(max_bytes);
        // Sized up front: collecting from `take_while` would grow (and copy) the page from 4.
        let mut messages = Vec::with_capacity(limit.min(log.messages.len() - start));
        for kept in log
            .messages
            .range(start..)
            .take(limit)
            .take_while(|m| page.admit(m.record.len() + room.len() + MESSAGE_OVERHEAD))
        {
            messages.push(record::decode(room, kept.offset, &kept.record)?);
        }
        Ok(messages)
    }

    fn bounds_now(&self, room: &str) -> Option<RoomBounds> {
        let rooms = self.rooms();
        let log = rooms.logs.get(room)?;
        Some(RoomBounds {
            earliest: log.messages.front()?.offset,
            last: log.messages.back()?.offset,
        })
    }

    fn enforce_retention_now(&self, now_unix_micros: i64) -> Result<u64, StoreError> {
        let cutoff = self.retention.age_cutoff(now_unix_micros);
        let mut rooms = self.rooms();
        let rooms = &mut *rooms;
        let dedupe = self.retention.dedupe;
        if dedupe.is_on() {
            let id_cutoff = now_unix_micros.saturating_sub(dedupe.window_micros());
            rooms
                .ids
                .prune(id_cutoff, MAX_RETENTION_DELETES_PER_RUN, dedupe.max_ids);
        }
        let mut removed = 0;
        for (name, log) in rooms.logs.iter_mut() {
            let budget = MAX_RETENTION_DELETES_PER_RUN - removed;
            if budget == 0 {
                break;
            }
            let (count, bytes) = log.trim(name, self.max_messages, cutoff, budget)?;
            removed += count;
            rooms.bytes -= bytes;
        }
        Ok(removed)
    }
}

impl Store for MemoryStore {
    fn append(&self, batch: Vec<NewMessage>) -> BoxFuture<'_, Result<Vec<Appended>, StoreError>> {
        Box::pin(std::future::ready(self.append_now(batch)))
    }

    fn read_after(
        &self,
        room: &str,
        after: Offset,
        limit: usize,
    ) -> BoxFuture<'_, Result<Vec<StoredMessage>, StoreError>> {
        Box::pin(std::future::ready(self.read_after_now(
            room,
            after,
            limit,
            usize::MAX,
        )))
    }

    fn read_page(
        &self,
        room: &str,
        after: Offset,
        limit: usize,
        max_bytes: usize,
    ) -> BoxFuture<'_, Result<Vec<StoredMessage>, StoreError>> {
        Box::pin(std::future::ready(
            self.read_after_now(room, after, limit, max_bytes),
        ))
    }

    fn bounds(&self, room: &str) -> BoxFuture<'_, Result<Option<RoomBounds>, StoreError>> {
        Box::pin(std::future::ready(Ok(self.bounds_now(room))))
    }

    fn last_offset(&self, room: &str) -> BoxFuture<'_, Result<Offset, StoreError>> {
        let last = self.rooms().logs.get(room).map_or(0, |log| log.last);
        Box::pin(std::future::ready(Ok(last)))
    }

    fn enforce_retention(&self, now_unix_micros: i64) -> BoxFuture<'_, Result<u64, StoreError>> {
        Box::pin(std::future::ready(
            self.enforce_retention_now(now_unix_micros),
        ))
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

    /// A message of `room`; the `_offset` it will get is only there to read the tests.
    fn message(room: &str, _offset: Offset, time_unix_micros: i64) -> NewMessage {
        NewMessage {
            room: room.into(),
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
            ..Default::default()
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
        let appended = block_on(store.append(vec![message("r", 6, 0)])).unwrap();
        assert_eq!(
            appended[0].offset, 6,
            "offsets go on after retention emptied the room"
        );
        assert_eq!(store.commits(), 2);
    }

    #[test]
    fn a_stored_message_costs_its_bytes_and_a_little() {
        let store = MemoryStore::new(Retention::default());
        // The payload is a slice of a much bigger buffer, as a received one is.
        let buffer = Bytes::from(vec![9u8; 64 * 1024]);
        let messages: Vec<_> = (1..=100)
            .map(|o| NewMessage {
                sender: "ada".into(),
                payload: buffer.slice(0..100),
                ..message("r", o, 0)
            })
            .collect();
        block_on(store.append(messages)).unwrap();
        drop(buffer);
        let per_message = (store.bytes() - ("r".len() + ROOM_COST)) / 100;
        assert!(per_message <= 100 + 200, "{per_message} bytes per message");
        let back = block_on(store.read_after("r", 99, 10)).unwrap();
        assert_eq!(back[0].payload, Bytes::from(vec![9u8; 100]));
        assert_eq!(back[0].sender, "ada");
    }

    #[test]
    fn the_total_bound_evicts_the_oldest_messages_of_any_room() {
        let big = |room: &str, offset| NewMessage {
            payload: Bytes::from(vec![0u8; 1000]),
            ..message(room, offset, 0)
        };
        let store = MemoryStore::with_max_bytes(Retention::default(), 10_000);
        for offset in 1..=5 {
            block_on(store.append(vec![big("a", offset), big("b", offset)])).unwrap();
            assert!(store.bytes() <= 10_000);
        }
        // Ten messages of ~1.1 KB do not fit in 10 kB: the oldest went, "a" first.
        let a = block_on(store.bounds("a")).unwrap().unwrap();
        let b = block_on(store.bounds("b")).unwrap().unwrap();
        assert!(a.earliest > 1 && a.earliest >= b.earliest, "{a:?} {b:?}");
        assert_eq!((a.last, b.last), (5, 5));
        assert_eq!(block_on(store.last_offset("a")).unwrap(), 5);
        // Retention's trims and the eviction order agree.
        block_on(store.append(vec![big("a", 6)])).unwrap();
        assert!(store.bytes() <= 10_000);

        // Rooms alone over the bound: refused, nothing stored.
        let tiny = MemoryStore::with_max_bytes(
            Retention::default(),
            2 * (ROOM_COST + 1) + MESSAGE_COST + 20,
        );
        block_on(tiny.append(vec![message("x", 1, 0)])).unwrap();
        block_on(tiny.append(vec![message("y", 1, 0)])).unwrap();
        assert!(matches!(
            block_on(tiny.append(vec![message("z", 1, 0)])),
            Err(StoreError::Full { .. })
        ));
        assert_eq!(block_on(tiny.last_offset("z")).unwrap(), 0);
    }

    #[test]
    fn pages_stop_at_their_byte_bound() {
        let store = MemoryStore::new(Retention::default());
        let big = |offset| NewMessage {
            payload: Bytes::from(vec![0u8; 1000]),
            ..message("r", offset, 0)
        };
        block_on(store.append((1..=10).map(big).collect())).unwrap();
        let size = StoredMessage::from_new(big(1), 1).size();
        let page = block_on(store.read_page("r", 0, 100, 3 * size + 100)).unwrap();
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
        block_on(store.append((1..=10).map(|o| message("r", o, 0)).collect())).unwrap();
        let page = block_on(store.read_after("r", 5, 3)).unwrap();
        assert_eq!(page.iter().map(|m| m.offset).collect::<Vec<_>>(), [6, 7, 8]);
        assert!(block_on(store.read_after("nope", 0, 3)).unwrap().is_empty());
        // A batch that cannot fit stores nothing of its first room either.
        let tiny = MemoryStore::with_max_bytes(Retention::default(), ROOM_COST + 1 + 200);
        let refused = block_on(tiny.append(vec![message("a", 1, 0), message("b", 1, 0)]));
        assert!(
            matches!(refused, Err(StoreError::Full { .. })),
            "{refused:?}"
        );
        assert_eq!(block_on(tiny.last_offset("a")).unwrap(), 0);
    }
}
