//! The write-behind queue and its worker.

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use futures_util::stream::StreamExt;
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;

use super::writer::sealed::Writer;
use super::{DeadLetter, DeadLetterHook, Enqueue, Settings, WriteQueue, hand_dead_letter};
use crate::BoxError;
use crate::cache::{CacheError, PendingWrites};
use crate::key::Key;
use crate::metrics::{KeyDigest, Observer, Operation};
use crate::store::StoreValue;

/// The queued writes of one write-behind layer, shared by its services, its worker and the
/// cache's registry.
pub(crate) struct Queue<Req, D> {
    state: Mutex<State<Req>>,
    room: Arc<Semaphore>,
    writer: Arc<dyn Writer<Req>>,
    dead_letter: Arc<D>,
    settings: Settings,
    wake: Notify,
    closed: AtomicBool,
    worker_started: AtomicBool,
    /// No service is left to queue writes: the worker writes what is left and ends.
    orphaned: AtomicBool,
    observer: Observer,
}

struct State<Req> {
    slots: HashMap<Key, Slot<Req>>,
    /// Keys with a pending write, by the sequence number of that write: the write order.
    order: BTreeMap<u64, Key>,
    next_seq: u64,
}

struct Slot<Req> {
    /// The next write of this key, coalesced.
    pending: Option<Write<Req>>,
    /// The write of this key the writer is running, if any.
    in_flight: Option<Write<Req>>,
}

struct Write<Req> {
    request: Req,
    /// The framed value the write puts in the cache, for reads before the writer runs.
    value: Option<StoreValue>,
    seq: u64,
    attempts: u32,
    not_before: Instant,
}

/// What one batch did.
struct Batch {
    taken: usize,
    written: u64,
}

/// What became of one written key.
enum Outcome<Req> {
    Written,
    Retry,
    Superseded,
    Dead(DeadLetter<Req>),
}

impl<Req, D> Queue<Req, D>
where
    Req: Clone + Send + Sync + 'static,
    D: DeadLetterHook<Req>,
{
    pub(crate) fn new(
        writer: Arc<dyn Writer<Req>>,
        dead_letter: Arc<D>,
        settings: Settings,
        observer: Observer,
    ) -> Arc<Self> {
        Arc::new(Queue {
            state: Mutex::new(State {
                slots: HashMap::new(),
                order: BTreeMap::new(),
                next_seq: 0,
            }),
            room: Arc::new(Semaphore::new(settings.capacity)),
            writer,
            dead_letter,
            settings,
            wake: Notify::new(),
            closed: AtomicBool::new(false),
            worker_started: AtomicBool::new(false),
            orphaned: AtomicBool::new(false),
            observer,
        })
    }

    fn lock(&self) -> MutexGuard<'_, State<Req>> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }

    fn depth(&self) -> usize {
        self.settings.capacity - self.room.available_permits()
    }

    /// Queues `request` for `key`, holding `permit` for as long as it stays queued. A write
    /// already waiting for `key` is replaced (it is older), and its room given back. Once the
    /// queue is closed the request is handed back, to be written directly.
    fn push(
        self: &Arc<Self>,
        key: Key,
        request: Req,
        value: Option<StoreValue>,
        permit: OwnedSemaphorePermit,
    ) -> Result<(), Req> {
        self.start_worker();
        let mut state = self.lock();
        // Checked under the lock that `close` takes, so no write slips in behind the final
        // flush.
        if self.is_closed() {
            return Err(request);
        }
        let seq = state.next_seq;
        state.next_seq += 1;
        let write = Write {
            request,
            value,
            seq,
            attempts: 0,
            not_before: Instant::now(),
        };
        let slot = state.slots.entry(key.clone()).or_insert(Slot {
            pending: None,
            in_flight: None,
        });
        let replaced = slot.pending.replace(write);
        match replaced {
            Some(older) => {
                state.order.remove(&older.seq);
                drop(permit);
            }
            None => {
                permit.forget();
                self.observer.queue_size(1);
            }
        }
        state.order.insert(seq, key);
        let full_batch = state.order.len() >= self.settings.max_batch;
        drop(state);
        if full_batch {
            self.wake.notify_one();
        }
        Ok(())
    }

    fn start_worker(self: &Arc<Self>) {
        if self.worker_started.swap(true, Ordering::AcqRel) {
            return;
        }
        let queue = self.clone();
        tokio::spawn(async move { queue.run_worker().await });
    }

    /// Writes a batch every interval (or when one is full) until the queue is closed, or
    /// until its last service is gone and everything it queued is written.
    async fn run_worker(self: Arc<Self>) {
        let mut next_batch = Instant::now() + self.settings.batch_interval;
        loop {
            if !self.orphaned.load(Ordering::Acquire) {
                tokio::select! {
                    _ = tokio::time::sleep_until(next_batch) => {
                        next_batch = Instant::now() + self.settings.batch_interval;
                    }
                    _ = self.wake.notified() => {}
                }
            }
            if self.is_closed() {
                return;
            }
            if self.orphaned.load(Ordering::Acquire) {
                self.flush_all().await;
                return;
            }
            while self.write_batch().await.taken > 0 {}
        }
    }

    /// Takes up to one batch of the writes that may run now (not backing off, no write of
    /// the same key running) and marks them in flight.
    fn take_batch(&self) -> Vec<(Key, Req)> {
        let now = Instant::now();
        let mut state = self.lock();
        let State { slots, order, .. } = &mut *state;
        let mut batch = Vec::new();
        // Walked in write order only until the batch is full, not to the end: with many
        // distinct keys queued, a whole walk per batch cost more than the writes.
        let mut leaving = Vec::new();
        for (&seq, key) in order.iter() {
            if batch.len() >= self.settings.max_batch {
                break;
            }
            let Some(slot) = slots.get_mut(key) else {
                leaving.push(seq);
                continue;
            };
            let ready = slot.in_flight.is_none()
                && slot
                    .pending
                    .as_ref()
                    .is_some_and(|write| write.not_before <= now);
            if !ready {
                continue;
            }
            let write = slot.pending.take().expect("checked above");
            batch.push((key.clone(), write.request.clone()));
            slot.in_flight = Some(write);
            leaving.push(seq);
        }
        for seq in leaving {
            order.remove(&seq);
        }
        batch
    }

    /// Runs one batch.
    async fn write_batch(&self) -> Batch {
        let (keys, requests): (Vec<Key>, Vec<Req>) = self.take_batch().into_iter().unzip();
        let taken = keys.len();
        let started = Instant::now();
        let mut writes = self.writer.write_all(requests);
        let mut written = 0;
        while let Some((index, result)) = writes.next().await {
            match self.complete(&keys[index], result) {
                Outcome::Written => written += 1,
                Outcome::Dead(letter) => {
                    self.observer.dead_letter();
                    hand_dead_letter(&*self.dead_letter, letter);
                }
                Outcome::Retry | Outcome::Superseded => {}
            }
        }
        if taken > 0 {
            self.observer.flush_batch(started.into_std());
            tracing::debug!(taken, written, depth = self.depth(), "write-behind batch");
        }
        Batch { taken, written }
    }

    fn complete(&self, key: &Key, result: Result<(), BoxError>) -> Outcome<Req> {
        let mut state = self.lock();
        let State { slots, order, .. } = &mut *state;
        let Some(slot) = slots.get_mut(key) else {
            return Outcome::Superseded;
        };
        let Some(mut write) = slot.in_flight.take() else {
            return Outcome::Superseded;
        };
        write.attempts += 1;
        if result.is_err() {
            self.observer.error(Operation::WriteBehindFlush, "writer");
        }
        let outcome = match result {
            Ok(_) => {
                self.release();
                Outcome::Written
            }
            Err(_) if slot.pending.is_some() => {
                // A newer write of this key waits: the failed, older one is moot.
                self.release();
                Outcome::Superseded
            }
            Err(error) if write.attempts >= self.settings.max_attempts => {
                self.release();
                Outcome::Dead(DeadLetter {
                    key: key.clone(),
                    request: write.request,
                    error,
                    attempts: write.attempts,
                })
            }
            Err(error) => {
                self.observer.retry();
                tracing::warn!(key = %KeyDigest(key), attempts = write.attempts, %error, "write-behind write failed, will retry");
                write.not_before = Instant::now() + self.settings.backoff(write.attempts);
                order.insert(write.seq, key.clone());
                slot.pending = Some(write);
                Outcome::Retry
            }
        };
        if slot.pending.is_none() && slot.in_flight.is_none() {
            slots.remove(key);
        }
        outcome
    }

    /// Gives one write's room back.
    fn release(&self) {
        self.room.add_permits(1);
        self.observer.queue_size(-1);
    }

    /// Whether any write queued before sequence number `before` is still waiting or
    /// running, and when the earliest waiting one may run.
    fn remaining_before(&self, before: u64) -> (bool, Option<Instant>) {
        let state = self.lock();
        let mut remaining = false;
        let mut earliest: Option<Instant> = None;
        for slot in state.slots.values() {
            for write in [&slot.pending, &slot.in_flight].into_iter().flatten() {
                if write.seq < before {
                    remaining = true;
                }
            }
            if let Some(write) = &slot.pending {
                earliest = Some(earliest.map_or(write.not_before, |e| e.min(write.not_before)));
            }
        }
        (remaining, earliest)
    }

    /// Writes every write queued so far, retrying with backoff, until each is written or
    /// dead-lettered; how many this call wrote.
    async fn flush_all(&self) -> u64 {
        let before = self.lock().next_seq;
        let mut written = 0u64;
        loop {
            let batch = self.write_batch().await;
            written += batch.written;
            if batch.taken > 0 {
                continue;
            }
            let (remaining, earliest) = self.remaining_before(before);
            if !remaining {
                return written;
            }
            // Waiting on backoff, or on a batch the worker is running.
            let wake_at = earliest
                .unwrap_or_else(Instant::now)
                .max(Instant::now() + Duration::from_millis(1));
            tokio::time::sleep_until(wake_at.min(Instant::now() + Duration::from_millis(20))).await;
        }
    }
}

impl<Req, D> PendingWrites for Queue<Req, D>
where
    Req: Clone + Send + Sync + 'static,
    D: DeadLetterHook<Req>,
{
    fn flush(&self) -> Pin<Box<dyn Future<Output = Result<u64, CacheError>> + Send + '_>> {
        Box::pin(async move { Ok(self.flush_all().await) })
    }

    fn pending_value(&self, key: &Key) -> Option<StoreValue> {
        let state = self.lock();
        let slot = state.slots.get(key)?;
        slot.pending
            .as_ref()
            .or(slot.in_flight.as_ref())
            .and_then(|write| write.value.clone())
    }

    fn close(&self) -> Pin<Box<dyn Future<Output = Result<u64, CacheError>> + Send + '_>> {
        Box::pin(async move {
            {
                let _state = self.lock();
                self.closed.store(true, Ordering::Release);
            }
            let written = self.flush_all().await;
            self.wake.notify_one();
            Ok(written)
        })
    }
}

impl<Req, D> WriteQueue<Req> for Queue<Req, D>
where
    Req: Clone + Send + Sync + 'static,
    D: DeadLetterHook<Req>,
{
    fn room(&self) -> Arc<Semaphore> {
        self.room.clone()
    }

    fn is_closed(&self) -> bool {
        Queue::is_closed(self)
    }

    fn depth(&self) -> usize {
        Queue::depth(self)
    }

    fn keeps_values(&self) -> bool {
        true
    }

    fn start(self: Arc<Self>) {
        self.start_worker();
    }

    fn producers_gone(&self) {
        self.orphaned.store(true, Ordering::Release);
        self.wake.notify_one();
    }

    fn enqueue(
        self: Arc<Self>,
        key: Key,
        request: Req,
        value: Option<StoreValue>,
        permit: OwnedSemaphorePermit,
    ) -> Enqueue<Req> {
        match self.push(key, request, value, permit) {
            Ok(()) => Enqueue::Queued,
            Err(request) => Enqueue::Direct(request),
        }
    }
}
