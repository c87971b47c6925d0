//! `ByteBudget`: bytes that many subscriber queues share, so the sum over the streams of
//! one connection, or over the connections of one client address, stays bounded however
//! many streams there are.
//!
//! Each queue bounds itself (`--queue-bytes`); a budget bounds the sum. A queue charges a
//! frame's bytes to every budget it belongs to when it queues the frame and gives them
//! back when the frame is sent, dropped or the stream ends ([`QueueBudgets`]); a replay
//! charges the page it holds. The hot path is one atomic add and one atomic subtract per
//! frame per budget, no lock: a budget is a counter, not a queue.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::sync::Notify;

/// Bytes queued for sending by a group of streams, against a limit.
#[derive(Debug)]
pub struct ByteBudget {
    /// Bytes charged now: frames queued and replay pages held by the group's streams.
    used: AtomicUsize,
    /// Most bytes the group may hold; a charge that would pass it is refused.
    limit: usize,
    /// Replays waiting for bytes to be given back: only then does a release notify, so the
    /// hot path pays one load for it.
    waiters: AtomicUsize,
    freed: Notify,
}

impl ByteBudget {
    /// A budget of `limit` bytes (at least 1), shared by whoever holds the `Arc`.
    pub fn new(limit: usize) -> Arc<Self> {
        Arc::new(Self {
            used: AtomicUsize::new(0),
            limit: limit.max(1),
            waiters: AtomicUsize::new(0),
            freed: Notify::new(),
        })
    }

    /// Bytes charged now.
    pub fn used(&self) -> usize {
        self.used.load(Ordering::Relaxed)
    }

    /// The most bytes it lets be charged at once.
    pub fn limit(&self) -> usize {
        self.limit
    }

    /// Charges `bytes` if they fit under the limit. Never adds and takes back: a charge
    /// that does not fit leaves the count alone, so it cannot make another charge fail or
    /// wake the waiters for nothing.
    fn try_charge(&self, bytes: usize) -> bool {
        self.used
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |used| {
                used.checked_add(bytes).filter(|after| *after <= self.limit)
            })
            .is_ok()
    }

    /// Takes back a charge just made, without waking anyone (nothing was used).
    fn uncharge(&self, bytes: usize) {
        self.used.fetch_sub(bytes, Ordering::SeqCst);
    }

    /// Charges `bytes` whatever the limit (a frame a stream must be able to send to make
    /// progress at all: its first reply or replayed message).
    fn force_charge(&self, bytes: usize) {
        self.used.fetch_add(bytes, Ordering::SeqCst);
    }

    fn release(&self, bytes: usize) {
        self.used.fetch_sub(bytes, Ordering::SeqCst);
        if self.waiters.load(Ordering::SeqCst) != 0 {
            self.freed.notify_waiters();
        }
    }
}

/// The budgets one stream's queue charges: its connection's and its client address's.
/// Empty (no budget) for streams the engine serves without a connection (tests, tools).
#[derive(Debug, Clone, Default)]
pub struct QueueBudgets {
    connection: Option<Arc<ByteBudget>>,
    address: Option<Arc<ByteBudget>>,
}

impl QueueBudgets {
    /// The budgets of a session's connection and of its client address; `None` for a
    /// level that is not limited.
    pub fn new(connection: Option<Arc<ByteBudget>>, address: Option<Arc<ByteBudget>>) -> Self {
        Self {
            connection,
            address,
        }
    }

    fn each(&self) -> impl Iterator<Item = &ByteBudget> {
        self.connection
            .iter()
            .chain(self.address.iter())
            .map(|b| &**b)
    }

    /// Charges `bytes` to every budget, or to none if one of them is full.
    pub(crate) fn try_charge(&self, bytes: usize) -> bool {
        let Some(connection) = &self.connection else {
            return self.address.as_ref().is_none_or(|a| a.try_charge(bytes));
        };
        if !connection.try_charge(bytes) {
            return false;
        }
        if self.address.as_ref().is_none_or(|a| a.try_charge(bytes)) {
            return true;
        }
        connection.uncharge(bytes);
        false
    }

    pub(crate) fn force_charge(&self, bytes: usize) {
        self.each().for_each(|b| b.force_charge(bytes));
    }

    pub(crate) fn release(&self, bytes: usize) {
        if bytes != 0 {
            self.each().for_each(|b| b.release(bytes));
        }
    }

    /// Charges `bytes` for a replay page before it is read, waiting while a budget is
    /// full (other streams' frames are sent, dropped or ended by the send-stall timeout);
    /// the returned hold gives them back when dropped. A page larger than a budget's whole
    /// limit is charged once that budget is empty, so it cannot wait for ever.
    pub(crate) async fn hold(&self, bytes: usize) -> BudgetHold {
        // Counted as a waiter until this returns or is dropped (the client went away).
        let _waiting = Waiting::new(self);
        loop {
            let mut freed: Vec<_> = self.each().map(|b| Box::pin(b.freed.notified())).collect();
            for notified in &mut freed {
                notified.as_mut().enable();
            }
            let fits = self.try_charge(bytes)
                || (self.each().all(|b| b.used() == 0) && {
                    self.force_charge(bytes);
                    true
                });
            if fits {
                break;
            }
            // Woken by a release; and every second anyway, so a wake-up lost to a race
            // (a charge taken back on the other budget) costs a second, not the stream.
            let _ = tokio::time::timeout(
                std::time::Duration::from_secs(1),
                futures::future::select_all(freed),
            )
            .await;
        }
        BudgetHold {
            budgets: self.clone(),
            bytes,
        }
    }
}

/// A replay waiting for bytes, counted in its budgets' `waiters` for as long as it lives.
struct Waiting<'a>(&'a QueueBudgets);

impl<'a> Waiting<'a> {
    fn new(budgets: &'a QueueBudgets) -> Self {
        for budget in budgets.each() {
            budget.waiters.fetch_add(1, Ordering::SeqCst);
        }
        Self(budgets)
    }
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        for budget in self.0.each() {
            budget.waiters.fetch_sub(1, Ordering::SeqCst);
        }
    }
}

/// Bytes charged to a stream's budgets for as long as it lives (a replay page).
#[derive(Debug)]
pub(crate) struct BudgetHold {
    budgets: QueueBudgets,
    bytes: usize,
}

impl BudgetHold {
    /// Gives back up to `bytes` of the hold now (what was held has moved on: a replayed
    /// message went into the queue, which charges it itself).
    pub(crate) fn give_back(&mut self, bytes: usize) {
        let bytes = bytes.min(self.bytes);
        self.bytes -= bytes;
        self.budgets.release(bytes);
    }
}

impl Drop for BudgetHold {
    fn drop(&mut self) {
        self.budgets.release(self.bytes);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_charge_that_does_not_fit_either_budget_charges_neither() {
        let connection = ByteBudget::new(100);
        let address = ByteBudget::new(150);
        let a = QueueBudgets::new(Some(connection.clone()), Some(address.clone()));
        let b = QueueBudgets::new(Some(ByteBudget::new(100)), Some(address.clone()));
        assert!(a.try_charge(100));
        assert!(!a.try_charge(1), "the connection budget is full");
        assert!(!b.try_charge(60), "the address budget is full");
        assert_eq!((connection.used(), address.used()), (100, 100));
        a.release(100);
        assert!(b.try_charge(60));
        assert_eq!((connection.used(), address.used()), (0, 60));
    }

    #[tokio::test]
    async fn a_page_hold_waits_for_bytes_given_back() {
        let budget = ByteBudget::new(100);
        let budgets = QueueBudgets::new(Some(budget.clone()), None);
        assert!(budgets.try_charge(80));
        let waiting = tokio::spawn({
            let budgets = budgets.clone();
            async move { budgets.hold(50).await }
        });
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        assert!(!waiting.is_finished(), "50 bytes do not fit beside 80");
        budgets.release(80);
        let hold = tokio::time::timeout(std::time::Duration::from_secs(5), waiting)
            .await
            .expect("the release wakes the hold")
            .expect("the hold task");
        assert_eq!(budget.used(), 50);
        drop(hold);
        assert_eq!(budget.used(), 0);
    }
}
