//! The replay→live switch of a join: replay `(after, delivered]` from the store in pages
//! paced by the client, then register for live delivery under the room lock.
//!
//! This is what makes resume gap-free and duplicate-free while publishers are busy: the
//! sequencer advances a room's `delivered` mark and fans out under the same lock (see
//! `room.rs`), so a subscriber registered when its cursor reached `delivered` receives
//! every later message live and none twice. Bounds: one page (`replay_page` messages,
//! `replay_page_bytes` bytes) is held at a time, charged to the connection's and client
//! address's byte budgets while it waits to be queued.
//!
//! Presence follows the same switch. Until it registers, the joiner is not among the
//! room's subscribers, so joins and leaves of others while it replays reach it in no event;
//! at registration, under the room lock, it gets one event for each difference between the
//! `joined` list it was sent and the room's list now ([`presence_since`]), and every change
//! after that live. So a joiner's view of presence is its `joined` list plus events, with
//! nothing missed between the two, and no event comes before its `joined` frame.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use duplex_proto::hub::Member;
use duplex_store::Offset;

use crate::HubError;
use crate::counters::Tally;
use crate::frames;
use crate::queue::{Frame, MessageFrame, coalescing_key};
use crate::room::{Room, RoomState, Subscriber};

/// Whether a reader whose last offset is `after` would miss messages retention removed,
/// when the room's first retained offset is `first_retained`.
///
/// With `dense` offsets (each of a room's messages the previous offset + 1: the embedded
/// stores) any hole before `first_retained` is a removed message. A shared log's offsets
/// are not dense (a cluster's are stream sequences: other rooms' messages take the numbers
/// between), so a hole says nothing; what does is the reader's own last message being gone
/// (retention removes the oldest first, so messages after it may be gone too: reported, to
/// be safe), and `after` 0 — "from the start" — is served with whatever is retained.
pub(crate) fn retention_removed(after: Offset, first_retained: Offset, dense: bool) -> bool {
    if dense {
        after + 1 < first_retained
    } else {
        after > 0 && after < first_retained
    }
}

/// Fails a resume that cannot be served without a gap (`dense`: see [`retention_removed`]).
pub(crate) fn check_resume(
    room: &str,
    after: Offset,
    earliest: Option<Offset>,
    last: Offset,
    dense: bool,
) -> Result<(), HubError> {
    if after > last {
        return Err(HubError::InvalidArgument(format!(
            "room {room}: offset {after} is beyond the last offset {last}"
        )));
    }
    // Messages after `after` exist (after < last) but the first of them is gone.
    let available_from = earliest.unwrap_or(last + 1);
    if after < last && retention_removed(after, available_from, dense) {
        return Err(HubError::ResumeTooOld {
            room: room.to_owned(),
            after,
            earliest: available_from.min(last),
        });
    }
    Ok(())
}

/// What a joiner was told of the room's presence (its `joined` list), so registration can
/// tell it what changed since.
#[derive(Debug)]
pub(crate) struct PresenceSeen {
    /// The listed members its `joined` frame carried.
    pub(crate) members: Vec<Member>,
    /// The joiner's own presence session id, never announced to itself.
    pub(crate) own_session: String,
}

/// The presence events that bring a joiner that was sent `seen` up to the room's list now:
/// a `left` for each listed member gone since, a `joined` for each listed one new since.
/// Call under the room lock, at the joiner's registration. Costs O(listed members).
pub(crate) fn presence_since(room: &Room, seen: &PresenceSeen) -> Vec<Frame> {
    let now = room.presence().members(&room.name).members;
    let present =
        |list: &[Member], member: &Member| list.iter().any(|m| m.session_id == member.session_id);
    let left = seen
        .members
        .iter()
        .filter(|member| !present(&now, member))
        .map(|member| frames::presence(&room.name, member.clone(), false));
    let joined = now
        .iter()
        .filter(|member| member.session_id != seen.own_session && !present(&seen.members, member))
        .map(|member| frames::presence(&room.name, member.clone(), true));
    left.chain(joined).map(Frame::own).collect()
}

/// Registers `subscriber` for live delivery and presence events: first the presence
/// changes it missed since `seen`, then everything live. Under the room lock (`state`).
fn register(room: &Room, state: &mut RoomState, subscriber: Subscriber, seen: &PresenceSeen) {
    let mut tally = Tally::default();
    // Stops at the first push that finds the subscriber lagged out or gone.
    let caught_up = presence_since(room, seen).into_iter().all(|event| {
        subscriber.queue.push_live(event, &mut tally) == crate::queue::LivePush::Queued
    });
    tally.report(subscriber.queue.counters());
    if caught_up {
        state.subscribers.push(subscriber);
    }
}

/// How much of a room's history a replay reads and holds at once.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Page {
    pub messages: usize,
    pub bytes: usize,
}

/// Replays `(after, delivered]` from the store, page by page at the client's pace, then
/// registers the subscriber for live delivery under the room lock. Only offsets up to the
/// room's delivered mark are replayed: anything later is fanned out live after registration.
pub(crate) async fn replay_then_live(
    store: Arc<dyn duplex_store::Store>,
    room: Arc<Room>,
    subscriber: Subscriber,
    cancelled: Arc<AtomicBool>,
    after: Offset,
    page: Page,
    seen: PresenceSeen,
) {
    let queue = subscriber.queue.clone();
    if let Err(error) = replay(&*store, &room, subscriber, &cancelled, after, page, &seen).await {
        // The room cannot be served without a gap (retention removed what was needed
        // meanwhile) or the store failed: end the session with that error, so the client
        // reconnects and learns where it can resume, rather than wait on a dead room.
        queue.finish(Some(error));
    }
}

async fn replay(
    store: &dyn duplex_store::Store,
    room: &Room,
    subscriber: Subscriber,
    cancelled: &AtomicBool,
    after: Offset,
    page: Page,
    seen: &PresenceSeen,
) -> Result<(), HubError> {
    let mut cursor = after;
    loop {
        let limit = {
            let mut state = room.lock();
            if cancelled.load(Ordering::Relaxed) {
                return Ok(());
            }
            if cursor >= state.delivered {
                register(room, &mut state, subscriber, seen);
                return Ok(());
            }
            state.delivered
        };
        // The page is charged to the connection's and address's budgets before it is
        // read, and given back once it is queued: many streams replaying at once wait
        // for each other instead of each pinning a page. A client gone meanwhile stops it.
        let queue = subscriber.queue.clone();
        let mut page_hold = tokio::select! {
            hold = queue.budgets().hold(page.bytes) => hold,
            () = queue.closed() => return Ok(()),
        };
        // Paged by bytes as well as count: the page is held while the client drains the
        // queue, and a page of big messages must not pin more than the queue does.
        let messages = store
            .read_page(&room.name, cursor, page.messages, page.bytes)
            .await?;
        if let Some(first) = messages.first()
            && first.offset > cursor + 1
        {
            // Offsets may skip; a skip is a loss only if retention removed what the cursor
            // needs next.
            let earliest = store
                .bounds(&room.name)
                .await?
                .map_or(first.offset, |b| b.earliest);
            if retention_removed(cursor, earliest, store.offsets_are_dense()) {
                return Err(HubError::ResumeTooOld {
                    room: room.name.to_string(),
                    after: cursor,
                    earliest,
                });
            }
        }
        let before = cursor;
        let read_nothing = messages.is_empty();
        for message in messages.into_iter().take_while(|m| m.offset <= limit) {
            let frame = Frame::message(MessageFrame {
                bytes: frames::message_frame(&message),
                room: room.name.clone(),
                offset: message.offset,
                key: coalescing_key(&message.key),
            });
            // An error here means the client left, lagged out or the join was cancelled.
            let size = frame.len();
            if subscriber
                .queue
                .push_reliable_unless(frame, Some(cancelled))
                .await
                .is_err()
            {
                return Ok(());
            }
            // Queued, and charged there: the page holds that much less.
            page_hold.give_back(size);
            subscriber.queue.counters().replayed(1);
            cursor = message.offset;
        }
        if cursor == before {
            if read_nothing {
                // Nothing after the cursor is left: retention emptied the room meanwhile.
                return Err(HubError::ResumeTooOld {
                    room: room.name.to_string(),
                    after: cursor,
                    earliest: limit + 1,
                });
            }
            // The next stored offset is past the mark: nothing exists up to it.
            cursor = limit;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resume_bounds() {
        let check = |after, earliest, last| check_resume("r", after, earliest, last, true);
        // Empty room: only 0 is a valid resume point.
        assert!(check(0, None, 0).is_ok());
        assert!(check(1, None, 0).is_err());
        // Messages 1..=10 retained.
        assert!(check(0, Some(1), 10).is_ok());
        assert!(check(10, Some(1), 10).is_ok());
        assert!(check(11, Some(1), 10).is_err());
        // Retention kept 6..=10: resuming after 4 would skip 5.
        let error = check(4, Some(6), 10).unwrap_err();
        assert_eq!(error.earliest_offset(), Some(6));
        assert_eq!(error.code(), crate::Code::FailedPrecondition);
        assert!(check(5, Some(6), 10).is_ok());
        // Everything trimmed (last 10, none retained): only 10 itself is fine.
        assert!(check(10, None, 10).is_ok());
        assert!(check(3, None, 10).is_err());
    }

    #[test]
    fn resume_bounds_without_dense_offsets() {
        let check = |after, earliest, last| check_resume("r", after, earliest, last, false);
        // The room's first message is at 5 (other rooms took 1..=4): from the start is fine.
        assert!(check(0, Some(5), 9).is_ok());
        // A reader whose last message (7) is still retained misses nothing.
        assert!(check(7, Some(5), 9).is_ok());
        // One whose last message (3) is gone may have missed some: refused, to be safe.
        assert_eq!(
            check(3, Some(5), 9).unwrap_err().code(),
            crate::Code::FailedPrecondition
        );
        assert!(check(10, Some(5), 9).is_err());
    }
}
