//! Writes made directly because Redis could not queue them, kept in order with the
//! worker's own writes of the same keys.
//!
//! A direct write is newer than every write of its key this instance queued before it. So
//! while it runs the worker starts no older write of the key (it defers them), it waits for
//! the worker's writes of the key already running, and once it succeeded the older ones are
//! skipped. If it fails, nothing is skipped: the older writes were acknowledged and must
//! still reach the writer.
//!
//! An `XADD` that failed may still have run: a command that timed out, or whose connection
//! broke, can reach Redis after the caller gave up, and its entry then comes after writes
//! of its key queued since. Its number is disowned: whatever became of the direct write,
//! the worker never writes that entry (it would go over what was acknowledged after it).

use std::collections::{BTreeSet, HashMap};
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::Notify;

use crate::key::Key;
use crate::strategy::write_behind::DirectTicket;

/// How many directly written keys are remembered.
const KEPT: usize = 100_000;

#[derive(Debug, Default)]
pub(super) struct DirectWrites {
    state: Mutex<State>,
    /// A key the worker was writing is no longer busy.
    idle: Notify,
}

#[derive(Debug, Default)]
struct State {
    /// The newest direct write of each key that succeeded, by number.
    written: HashMap<Key, u64>,
    /// The direct writes running, by number.
    writing: HashMap<Key, u64>,
    /// How many writes of each key the worker runs now.
    busy: HashMap<Key, usize>,
    /// The numbers whose `XADD` failed: if Redis ran it after all, its entry is skipped.
    disowned: BTreeSet<u64>,
}

/// What the worker does with a write of a key.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Verdict {
    /// Write it; the key is busy until [`DirectWrites::done`].
    Write,
    /// A newer direct write of the key succeeded: acknowledge it unwritten.
    Skip,
    /// A newer direct write of the key runs: later.
    Defer,
}

impl DirectWrites {
    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The worker's verdict on a write of `key` that this instance queued as number `ours`
    /// (`None`: another instance's, which knows nothing of this one's direct writes).
    pub(super) fn verdict(&self, key: &Key, ours: Option<u64>) -> Verdict {
        let mut state = self.state();
        if let Some(ours) = ours {
            if state.written.get(key).is_some_and(|newest| ours <= *newest) {
                return Verdict::Skip;
            }
            if state.writing.get(key).is_some_and(|newest| ours <= *newest) {
                return Verdict::Defer;
            }
        }
        *state.busy.entry(key.clone()).or_insert(0) += 1;
        Verdict::Write
    }

    /// Whether the entry numbered `ours` is one whose `XADD` failed, which Redis ran after
    /// all: it is never written, and is not the newest of its key in its batch either
    /// (every write of the key acknowledged since is newer). Remembered, not forgotten once
    /// asked: if the entry's `XACK` fails, it is delivered again and must be skipped again.
    pub(super) fn disowned(&self, ours: Option<u64>) -> bool {
        ours.is_some_and(|ours| self.state().disowned.contains(&ours))
    }

    /// The worker's write of `key` (a [`Verdict::Write`]) ended.
    pub(super) fn done(&self, key: &Key) {
        let mut state = self.state();
        if let Some(busy) = state.busy.get_mut(key) {
            *busy -= 1;
            if *busy == 0 {
                state.busy.remove(key);
                self.idle.notify_waiters();
            }
        }
    }

    /// A write of `key` numbered `ours` was written by the worker: what was written
    /// directly before it is older, and need not be remembered.
    pub(super) fn written_by_worker(&self, key: &Key, ours: Option<u64>) {
        let Some(ours) = ours else {
            return;
        };
        let mut state = self.state();
        if state.written.get(key).is_some_and(|newest| ours > *newest) {
            state.written.remove(key);
        }
    }

    /// A direct write of `key` numbered `number` is about to run: its `XADD` failed.
    pub(super) fn ticket(self: &Arc<Self>, key: Key, number: u64) -> Ticket {
        let mut state = self.state();
        state.disowned.insert(number);
        if state.disowned.len() > KEPT {
            // Most failed `XADD`s never reached Redis; the oldest are the least likely to.
            state.disowned.pop_first();
        }
        let newest = state.writing.entry(key.clone()).or_insert(number);
        *newest = (*newest).max(number);
        drop(state);
        Ticket {
            direct: self.clone(),
            key,
            number,
            written: false,
        }
    }

    fn end(&self, key: &Key, number: u64, written: bool) {
        let mut state = self.state();
        if state.writing.get(key) == Some(&number) {
            state.writing.remove(key);
        }
        if written {
            let newest = state.written.entry(key.clone()).or_insert(number);
            *newest = (*newest).max(number);
            if state.written.len() > KEPT {
                // The newest half stays: a key forgotten here is only as exposed as it is
                // to another instance's worker.
                let mut numbers: Vec<u64> = state.written.values().copied().collect();
                numbers.sort_unstable();
                let cut = numbers[numbers.len() / 2];
                state.written.retain(|_, n| *n >= cut);
            }
        }
    }
}

/// A direct write's place in the order of its key's writes: dropped without
/// [`written`](DirectTicket::written), the write failed and defers nothing any more.
pub(super) struct Ticket {
    direct: Arc<DirectWrites>,
    key: Key,
    number: u64,
    written: bool,
}

impl DirectTicket for Ticket {
    fn ready(&mut self) -> Pin<Box<dyn Future<Output = ()> + Send + '_>> {
        Box::pin(async move {
            loop {
                let idle = self.direct.idle.notified();
                tokio::pin!(idle);
                // Registered before the look: a wake-up between the two is not lost.
                idle.as_mut().enable();
                if !self.direct.state().busy.contains_key(&self.key) {
                    return;
                }
                idle.await;
            }
        })
    }

    fn written(mut self: Box<Self>) {
        self.written = true;
        self.direct.end(&self.key, self.number, true);
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        if !self.written {
            self.direct.end(&self.key, self.number, false);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> Key {
        Key::new("k").unwrap()
    }

    #[test]
    fn older_writes_wait_while_a_direct_write_runs_and_are_skipped_once_it_succeeded() {
        let direct = Arc::new(DirectWrites::default());
        let ticket = direct.ticket(key(), 5);
        assert_eq!(direct.verdict(&key(), Some(3)), Verdict::Defer);
        assert_eq!(
            direct.verdict(&key(), None),
            Verdict::Write,
            "another instance's"
        );
        direct.done(&key());
        Box::new(ticket).written();
        assert_eq!(direct.verdict(&key(), Some(3)), Verdict::Skip);
        assert_eq!(direct.verdict(&key(), Some(6)), Verdict::Write);
    }

    #[test]
    fn a_failed_direct_write_skips_nothing() {
        let direct = Arc::new(DirectWrites::default());
        drop(direct.ticket(key(), 5));
        assert_eq!(direct.verdict(&key(), Some(3)), Verdict::Write);
    }

    #[test]
    fn an_entry_whose_xadd_failed_is_never_written_even_if_redis_ran_it_late() {
        let direct = Arc::new(DirectWrites::default());
        // 2 could not be queued and was written directly; 3 was queued and written since.
        Box::new(direct.ticket(key(), 2)).written();
        assert_eq!(direct.verdict(&key(), Some(3)), Verdict::Write);
        direct.done(&key());
        direct.written_by_worker(&key(), Some(3));
        // Redis ran 2's `XADD` after all, after 3's.
        assert!(direct.disowned(Some(2)));
        assert!(!direct.disowned(Some(3)));
        // Its `XACK` failed: delivered again, it is skipped again.
        assert!(
            direct.disowned(Some(2)),
            "a redelivered late entry would be written"
        );
        // The same when the direct write failed: its caller was told so.
        drop(direct.ticket(key(), 4));
        assert_eq!(direct.verdict(&key(), Some(5)), Verdict::Write);
        direct.done(&key());
        assert!(direct.disowned(Some(4)));
        assert!(!direct.disowned(None), "another instance's");
    }

    #[tokio::test]
    async fn a_direct_write_waits_for_the_workers_write_of_its_key() {
        let direct = Arc::new(DirectWrites::default());
        assert_eq!(direct.verdict(&key(), Some(1)), Verdict::Write);
        let mut ticket: Box<dyn DirectTicket> = Box::new(direct.ticket(key(), 2));
        let waiting = tokio::time::timeout(std::time::Duration::from_millis(20), ticket.ready());
        assert!(waiting.await.is_err(), "the worker's write still runs");
        direct.done(&key());
        ticket.ready().await;
    }
}
