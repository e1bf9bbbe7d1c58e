//! Writing what a round took, and the bookkeeping after: versions, acknowledgements,
//! retries, dead letters.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::Ordering;
use std::time::Duration;

use futures_util::stream::StreamExt;
use redis::aio::ConnectionLike;
use redis::streams::StreamId;
use tokio::time::Instant;

use crate::cache::CacheError;
use crate::codec::Codec;
use crate::frame::millis;
use crate::key::Key;
use crate::metrics::{KeyDigest, Operation};

use crate::BoxError;
use crate::strategy::write_behind::{DeadLetter, DeadLetterHook, hand_dead_letter};

use super::direct::{DirectWrites, Verdict};
use super::worker::{Delivered, EntryId, Retry, StreamWorker};
use super::{ACQUIRE, DEAD_LETTERS_KEPT, DONE, GROUP, RECORD, RELEASE};

impl<Req, Conn, Co, D> StreamWorker<Req, Conn, Co, D>
where
    Req: Clone + Send + Sync + 'static,
    Conn: ConnectionLike + Clone + Send + Sync + 'static,
    Co: Codec<Req>,
    D: DeadLetterHook<Req>,
{
    /// Writes the newest entry of each key that is newer than the key's recorded version;
    /// acknowledges the rest.
    pub(super) async fn write(&self, batch: BTreeMap<EntryId, Delivered<Req>>) -> u64 {
        if batch.is_empty() {
            return 0;
        }
        let started = Instant::now();
        let mut newest: HashMap<Key, Delivered<Req>> = HashMap::new();
        let mut done: Vec<EntryId> = Vec::new();
        for (_, write) in batch {
            // Before choosing each key's newest: a late entry comes last in the stream.
            if self.direct.disowned(write.ours) {
                done.push(write.id);
                continue;
            }
            if let Some(older) = newest.insert(write.key.clone(), write) {
                done.push(older.id);
            }
        }
        // A newer write of the key written directly (Redis could not queue it) wins: the
        // queued one is skipped once that succeeded, and waits while it runs. The keys
        // written here are busy (direct writes wait for them) until the writers end.
        let mut busy = Busy {
            direct: &self.direct,
            keys: Vec::new(),
        };
        let mut chosen = Vec::new();
        for write in newest.into_values() {
            match self.direct.verdict(&write.key, write.ours) {
                Verdict::Write => {
                    busy.keys.push(write.key.clone());
                    chosen.push(write);
                }
                Verdict::Skip => done.push(write.id),
                Verdict::Defer => self.retry_later(write, self.settings.backoff_base),
            }
        }
        let mut writes = Vec::new();
        match self.acquire(&done, &chosen).await {
            Ok(replies) if replies.len() == chosen.len() => {
                let mut replays = 0;
                for (write, reply) in chosen.into_iter().zip(replies) {
                    match reply {
                        1 => writes.push(write),
                        // A replay: the script acknowledged it.
                        0 => replays += 1,
                        // Another instance writes this key now: later, not an attempt.
                        _ => self.retry_later(write, self.settings.backoff_base),
                    }
                }
                self.release(done.len() + replays);
            }
            // Redis failed (or answered out of shape): nothing is written now, every write
            // is tried again later, not as an attempt; the superseded entries stay pending,
            // to be skipped again.
            result => {
                if let Err(error) = &result {
                    tracing::warn!(%error, "write-behind leases not taken: the batch will be tried again");
                }
                for write in chosen {
                    self.retry_later(write, self.settings.backoff_base);
                }
                self.release(done.len());
            }
        }

        let mut running = self
            .writer
            .write_all(writes.iter().map(|write| write.request.clone()).collect());
        // The writers run to their end without waiting for Redis: a writer holding a
        // database connection gives it back as soon as it is done. The bookkeeping follows,
        // in one round trip for the successes.
        let mut results: Vec<Option<Result<(), BoxError>>> = writes.iter().map(|_| None).collect();
        while let Some((index, result)) = running.next().await {
            results[index] = Some(result);
        }
        let mut succeeded = Vec::new();
        let mut failed = Vec::new();
        for (write, result) in writes.into_iter().zip(results) {
            match result.unwrap_or_else(|| Err("the writer did not answer for this write".into())) {
                Ok(()) => succeeded.push(write),
                Err(error) => failed.push((write, error)),
            }
        }
        let written = succeeded.len() as u64;
        for write in &succeeded {
            self.direct.written_by_worker(&write.key, write.ours);
        }
        drop(busy);
        futures_util::future::join(
            self.record(&succeeded),
            futures_util::future::join_all(
                failed
                    .into_iter()
                    .map(|(write, error)| self.failed(write, error)),
            ),
        )
        .await;
        self.observer.flush_batch(started.into_std());
        tracing::debug!(stream = %self.stream, written, "durable write-behind batch");
        written
    }

    /// Acknowledges the `superseded` entries and takes the leases of `chosen`, in one
    /// script ([`ACQUIRE`]): a reply per write.
    async fn acquire(
        &self,
        superseded: &[EntryId],
        chosen: &[Delivered<Req>],
    ) -> Result<Vec<i64>, crate::store::StoreError> {
        if chosen.is_empty() && superseded.is_empty() {
            return Ok(Vec::new());
        }
        let mut acquire = redis::cmd("EVAL");
        acquire
            .arg(ACQUIRE)
            .arg(1 + 2 * chosen.len())
            .arg(&self.stream);
        for write in chosen {
            acquire
                .arg(self.queue.lease_key(&write.key))
                .arg(self.queue.version_key(&write.key));
        }
        acquire
            .arg(GROUP)
            .arg(&self.consumer)
            .arg(millis(self.queue.claim_after))
            .arg(self.queue.alive_prefix())
            .arg(superseded.len());
        for id in superseded {
            acquire.arg(id.to_string());
        }
        for write in chosen {
            acquire.arg(write.id.to_string());
        }
        self.run("write_behind_lease", &acquire).await
    }

    /// After successful writes: records their versions, acknowledges and deletes them, in
    /// one script.
    pub(super) async fn record(&self, writes: &[Delivered<Req>]) {
        if writes.is_empty() {
            return;
        }
        let mut record = redis::cmd("EVAL");
        record
            .arg(RECORD)
            .arg(1 + 2 * writes.len())
            .arg(&self.stream);
        for write in writes {
            record
                .arg(self.queue.version_key(&write.key))
                .arg(self.queue.lease_key(&write.key));
        }
        record
            .arg(GROUP)
            .arg(millis(self.queue.retention))
            .arg(&self.consumer);
        for write in writes {
            record.arg(write.id.to_string());
        }
        if let Err(error) = self.run::<()>("write_behind_ack", &record).await {
            // Still pending in Redis: read back at the next round (the failure marks the
            // worker unsure), an idempotent rewrite unless a newer write landed first.
            tracing::warn!(writes = writes.len(), %error, "written, but not acknowledged: they will be written again");
        }
        self.release(writes.len());
    }

    pub(super) async fn failed(&self, mut write: Delivered<Req>, error: BoxError) {
        write.attempts += 1;
        self.observer.error(Operation::WriteBehindFlush, "writer");
        let mut release = redis::cmd("EVAL");
        release
            .arg(RELEASE)
            .arg(1)
            .arg(self.queue.lease_key(&write.key))
            .arg(&self.consumer);
        // Best effort: a lease not given back lapses after `claim_after`.
        let _ = self.run::<u64>("write_behind_lease", &release).await;
        if write.attempts >= self.settings.max_attempts {
            self.observer.dead_letter();
            let mut payload = Vec::new();
            let _ = self.codec.encode_into(&write.request, &mut payload);
            self.bury(write.id, &write.key, &payload, &error.to_string())
                .await;
            hand_dead_letter(
                &*self.dead_letter,
                DeadLetter {
                    key: write.key,
                    request: write.request,
                    error,
                    attempts: write.attempts,
                },
            );
            return;
        }
        self.observer.retry();
        tracing::warn!(key = %KeyDigest(&write.key), attempts = write.attempts, %error, "durable write-behind write failed, will retry");
        // Resets the entry's idle time, so that no other instance takes it over meanwhile.
        let mut keep = redis::cmd("XCLAIM");
        keep.arg(&self.stream)
            .arg(GROUP)
            .arg(&self.consumer)
            .arg(0)
            .arg(write.id.to_string())
            .arg("JUSTID");
        let _ = self.run::<redis::Value>("write_behind_claim", &keep).await;
        let wait = self.settings.backoff(write.attempts);
        self.retry_later(write, wait);
    }

    pub(super) fn retry_later(&self, write: Delivered<Req>, wait: Duration) {
        let retry = Retry {
            key: write.key,
            request: write.request,
            attempts: write.attempts,
            ours: write.ours,
            not_before: Instant::now() + wait,
        };
        self.lock_retries().insert(write.id, retry);
    }

    /// Acknowledges and deletes entries that need no write (superseded, or replays).
    pub(super) async fn done(&self, ids: &[EntryId]) {
        if ids.is_empty() {
            return;
        }
        let mut done = redis::cmd("EVAL");
        done.arg(DONE).arg(1).arg(&self.stream).arg(GROUP);
        for id in ids {
            done.arg(id.to_string());
        }
        if let Err(error) = self.run::<u64>("write_behind_ack", &done).await {
            tracing::warn!(%error, "superseded write-behind entries not acknowledged: they will be skipped again");
        }
        self.release(ids.len());
    }

    /// Moves an entry to the dead-letter stream and acknowledges it.
    pub(super) async fn bury(&self, id: EntryId, key: &Key, payload: &[u8], reason: &str) {
        let mut add = redis::cmd("XADD");
        add.arg(self.queue.dead_letter_key())
            .arg("MAXLEN")
            .arg("~")
            .arg(DEAD_LETTERS_KEPT)
            .arg("*")
            .arg("id")
            .arg(id.to_string())
            .arg("k")
            .arg(key.as_str())
            .arg("r")
            .arg(payload)
            .arg("error")
            .arg(reason);
        if let Err(error) = self.run::<String>("write_behind_dead_letter", &add).await {
            tracing::error!(key = %KeyDigest(key), %error, "dead letter not recorded in Redis; the entry stays queued");
            // No longer held here: it is delivered again after `claim_after`.
            self.release(1);
            return;
        }
        self.done(&[id]).await;
    }

    pub(super) async fn bury_undecodable(&self, entry: &StreamId, reason: &str) {
        self.observer.dead_letter();
        tracing::error!(stream = %self.stream, id = %entry.id, reason, "durable write-behind entry does not decode: moved to the dead letters");
        let Some(id) = EntryId::parse(&entry.id) else {
            return;
        };
        let key = entry
            .map
            .get("k")
            .and_then(|k| redis::from_redis_value_ref::<String>(k).ok())
            .and_then(|k| Key::new(k).ok())
            .unwrap_or_else(|| Key::new("?").expect("valid"));
        let payload = entry
            .map
            .get("r")
            .and_then(|r| redis::from_redis_value_ref::<Vec<u8>>(r).ok())
            .unwrap_or_default();
        self.bury(id, &key, &payload, reason).await;
    }

    /// Removes consumers (dead instances) that hold nothing and were idle for ten claim
    /// periods: each instance adds one, and the group would grow forever.
    pub(super) async fn forget_idle_consumers(&self) {
        let mut info = redis::cmd("XINFO");
        info.arg("CONSUMERS").arg(&self.stream).arg(GROUP);
        let Ok(consumers) = self
            .run::<Vec<HashMap<String, redis::Value>>>("write_behind_consumers", &info)
            .await
        else {
            return;
        };
        let limit = millis(self.queue.claim_after).saturating_mul(10);
        for consumer in consumers {
            let field = |name: &str| consumer.get(name).cloned();
            let name: Option<String> = field("name").and_then(|v| redis::from_redis_value(v).ok());
            let pending: Option<u64> =
                field("pending").and_then(|v| redis::from_redis_value(v).ok());
            let idle: Option<u64> = field("idle").and_then(|v| redis::from_redis_value(v).ok());
            if let (Some(name), Some(0), Some(idle)) = (name, pending, idle)
                && idle > limit
                && name != self.consumer
            {
                let mut forget = redis::cmd("XGROUP");
                forget
                    .arg("DELCONSUMER")
                    .arg(&self.stream)
                    .arg(GROUP)
                    .arg(name);
                let _ = self.run::<u64>("write_behind_consumers", &forget).await;
            }
        }
    }

    pub(super) fn hold(&self, count: usize) {
        if count > 0 {
            self.held.fetch_add(count, Ordering::AcqRel);
            self.observer.queue_size(count as i64);
        }
    }

    pub(super) fn release(&self, count: usize) {
        let released = self
            .held
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |held| {
                Some(held.saturating_sub(count))
            })
            .map_or(0, |held| held.min(count));
        if released > 0 {
            self.observer.queue_size(-(released as i64));
        }
    }

    /// Rounds until nothing is due and no write waits for a retry; how many were written.
    pub(super) async fn flush_all(&self) -> Result<u64, CacheError> {
        let mut written = 0;
        loop {
            let round = self.round().await?;
            written += round.written;
            if round.taken > 0 {
                continue;
            }
            let earliest = self.lock_retries().values().map(|r| r.not_before).min();
            match earliest {
                None => return Ok(written),
                Some(at) => {
                    tokio::time::sleep_until(at.max(Instant::now() + Duration::from_millis(1)))
                        .await
                }
            }
        }
    }
}

/// The keys a batch writes, busy until the batch's writers ended (or the round was dropped).
struct Busy<'a> {
    direct: &'a DirectWrites,
    keys: Vec<Key>,
}

impl Drop for Busy<'_> {
    fn drop(&mut self) {
        for key in &self.keys {
            self.direct.done(key);
        }
    }
}
