//! The worker of a durable queue in one process: queues with `XADD`, takes what is due.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use redis::aio::ConnectionLike;
use redis::streams::{StreamAutoClaimReply, StreamId, StreamReadReply};
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;

use crate::cache::{CacheError, PendingWrites};
use crate::codec::Codec;
use crate::frame::millis;
use crate::key::Key;
use crate::metrics::{KeyDigest, Observer, Operation};
use crate::store::{StoreError, StoreValue};
use crate::strategy::write_behind::{DeadLetterHook, Enqueue, Settings, Unqueued, WriteQueue};

use super::direct::DirectWrites;
use super::{GROUP, StreamQueue};
use crate::strategy::write_behind::writer::sealed::Writer;

/// How long a worker's liveness lasts without a refresh: past it, other instances take
/// over what it holds.
const LIVENESS: std::time::Duration = std::time::Duration::from_secs(5);

/// How often a worker refreshes its liveness and looks for departed ones.
const HEARTBEAT: std::time::Duration = std::time::Duration::from_secs(1);

/// A stream entry id, `{ms}-{seq}`: the version of the write it holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(super) struct EntryId {
    pub(super) ms: u64,
    pub(super) seq: u64,
}

impl EntryId {
    pub(super) fn parse(id: &str) -> Option<Self> {
        let (ms, seq) = id.split_once('-')?;
        Some(EntryId {
            ms: ms.parse().ok()?,
            seq: seq.parse().ok()?,
        })
    }
}

impl fmt::Display for EntryId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.ms, self.seq)
    }
}

/// An entry this worker holds: read, not yet acknowledged.
pub(super) struct Delivered<Req> {
    pub(super) id: EntryId,
    pub(super) key: Key,
    pub(super) request: Req,
    pub(super) attempts: u32,
    /// Its number among the writes this worker queued, when it queued it.
    pub(super) ours: Option<u64>,
}

/// A failed write waiting for its next attempt.
pub(super) struct Retry<Req> {
    pub(super) key: Key,
    pub(super) request: Req,
    pub(super) attempts: u32,
    pub(super) ours: Option<u64>,
    pub(super) not_before: Instant,
}

/// What one round did.
pub(super) struct Round {
    pub(super) taken: usize,
    pub(super) written: u64,
}

/// Rounds run one at a time (the worker's and flushes'), so a key's writes never overlap.
pub(super) struct RoundState {
    pub(super) group_ready: bool,
    pub(super) claim_cursor: String,
    /// When idle consumers were last looked for.
    pub(super) consumers_checked: Option<Instant>,
}

/// The worker of one [`StreamQueue`] in this process: queues with `XADD`, writes what it
/// reads or claims, acknowledges what was written.
pub(crate) struct StreamWorker<Req, Conn, Co, D> {
    pub(super) queue: StreamQueue<Conn>,
    pub(super) stream: String,
    pub(super) consumer: String,
    pub(super) codec: Co,
    pub(super) writer: Arc<dyn Writer<Req>>,
    pub(super) dead_letter: Arc<D>,
    pub(super) settings: Settings,
    pub(super) observer: Observer,
    pub(super) room: Arc<Semaphore>,
    pub(super) retries: Mutex<BTreeMap<EntryId, Retry<Req>>>,
    pub(super) rounds: tokio::sync::Mutex<RoundState>,
    pub(super) wake: Notify,
    pub(super) closed: AtomicBool,
    pub(super) started: AtomicBool,
    pub(super) since_batch: AtomicUsize,
    pub(super) held: AtomicUsize,
    /// How many writes this worker queued: each entry carries its number.
    pub(super) produced: AtomicU64,
    /// The writes made directly because Redis could not queue them, in order with ours.
    pub(super) direct: Arc<DirectWrites>,
    /// A command failed since the last read: this consumer's pending entries may hold some
    /// it does not know of.
    pub(super) unsure: AtomicBool,
}

impl<Req, Conn, Co, D> StreamWorker<Req, Conn, Co, D>
where
    Req: Clone + Send + Sync + 'static,
    Conn: ConnectionLike + Clone + Send + Sync + 'static,
    Co: Codec<Req>,
    D: DeadLetterHook<Req>,
{
    pub(super) fn new(
        mut queue: StreamQueue<Conn>,
        codec: Co,
        writer: Arc<dyn Writer<Req>>,
        dead_letter: Arc<D>,
        settings: Settings,
        observer: Observer,
    ) -> Arc<Self> {
        queue.claim_after = queue.claim_after.max(settings.backoff_max * 2);
        Arc::new(StreamWorker {
            stream: queue.stream_key(),
            consumer: format!("{}-{:016x}", std::process::id(), fastrand::u64(..)),
            queue,
            codec,
            writer,
            dead_letter,
            room: Arc::new(Semaphore::new(settings.capacity)),
            settings,
            observer,
            retries: Mutex::new(BTreeMap::new()),
            rounds: tokio::sync::Mutex::new(RoundState {
                group_ready: false,
                claim_cursor: "0-0".to_owned(),
                consumers_checked: None,
            }),
            wake: Notify::new(),
            closed: AtomicBool::new(false),
            started: AtomicBool::new(false),
            since_batch: AtomicUsize::new(0),
            held: AtomicUsize::new(0),
            produced: AtomicU64::new(0),
            direct: Arc::default(),
            unsure: AtomicBool::new(false),
        })
    }

    pub(super) fn lock_retries(&self) -> MutexGuard<'_, BTreeMap<EntryId, Retry<Req>>> {
        self.retries.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(super) async fn run<T: redis::FromRedisValue>(
        &self,
        operation: &'static str,
        command: &redis::Cmd,
    ) -> Result<T, StoreError> {
        let run = self.queue.commands.run(operation, command);
        let result = match &self.queue.gate {
            Some(gate) => gate.run(run).await,
            None => run.await,
        };
        if result.is_err() {
            self.unsure.store(true, Ordering::Release);
        }
        result
    }

    pub(super) async fn run_pipeline<T: redis::FromRedisValue>(
        &self,
        operation: &'static str,
        pipeline: &redis::Pipeline,
    ) -> Result<T, StoreError> {
        let run = self.queue.commands.run_pipeline::<T>(operation, pipeline);
        let result = match &self.queue.gate {
            Some(gate) => gate.run(run).await,
            None => run.await,
        };
        if result.is_err() {
            self.unsure.store(true, Ordering::Release);
        }
        result
    }

    /// Starts the worker, once, if a Tokio runtime is here. It holds the worker weakly
    /// between rounds: it stops within one batch interval of the last service being dropped,
    /// and after [`close`](PendingWrites::close) it runs no round.
    pub(super) fn spawn_worker(self: &Arc<Self>) {
        if self.started.load(Ordering::Acquire)
            || tokio::runtime::Handle::try_current().is_err()
            || self.started.swap(true, Ordering::AcqRel)
        {
            return;
        }
        let weak = Arc::downgrade(self);
        let interval = self.settings.batch_interval;
        tokio::spawn(async move {
            // The first round at once: a new instance writes what others left behind.
            let mut first = true;
            let mut next_round = Instant::now();
            let mut next_heartbeat = Instant::now() + HEARTBEAT;
            loop {
                let Some(worker) = weak.upgrade() else {
                    return;
                };
                if std::mem::take(&mut first) {
                    worker.keep_alive().await;
                } else {
                    tokio::select! {
                        _ = tokio::time::sleep_until(next_round) => {}
                        _ = worker.wake.notified() => {}
                        // A departed instance's entries are taken over as soon as its
                        // liveness lapses, not after `claim_after`.
                        _ = tokio::time::sleep_until(next_heartbeat) => {
                            next_heartbeat = Instant::now() + HEARTBEAT;
                            if !worker.keep_alive().await {
                                continue;
                            }
                        }
                    }
                }
                next_round = Instant::now() + interval;
                loop {
                    match worker.background_round().await {
                        Ok(Some(round)) if round.taken > 0 => continue,
                        Ok(Some(_)) => break,
                        Ok(None) => return,
                        Err(error) => {
                            crate::log::warn_summarised!(error.kind(), stream = %worker.stream, %error, "durable write-behind round failed, will retry");
                            break;
                        }
                    }
                }
            }
        });
    }

    /// Refreshes this consumer's liveness and, every [`HEARTBEAT`], takes over the entries
    /// held by consumers whose liveness lapsed (instances that died): whether it took any.
    pub(super) async fn keep_alive(&self) -> bool {
        let mut alive = redis::cmd("SET");
        alive
            .arg(self.queue.alive_key(&self.consumer))
            .arg(1)
            .arg("PX")
            .arg(millis(LIVENESS));
        if self.run::<()>("write_behind_alive", &alive).await.is_err() {
            return false;
        }
        // Under the round lock: a key's writes never overlap.
        let state = self.rounds.lock().await;
        if self.closed.load(Ordering::Acquire) || !state.group_ready {
            return false;
        }
        self.take_over_departed().await > 0
    }

    /// Claims every entry held by a consumer without liveness, into this worker's retries
    /// (due now); how many.
    async fn take_over_departed(&self) -> usize {
        let mut info = redis::cmd("XINFO");
        info.arg("CONSUMERS").arg(&self.stream).arg(GROUP);
        let Ok(consumers) = self
            .run::<Vec<HashMap<String, redis::Value>>>("write_behind_consumers", &info)
            .await
        else {
            return 0;
        };
        let holding: Vec<String> = consumers
            .iter()
            .filter_map(|consumer| {
                let name: String = redis::from_redis_value(consumer.get("name")?.clone()).ok()?;
                let pending: u64 =
                    redis::from_redis_value(consumer.get("pending")?.clone()).ok()?;
                (pending > 0 && name != self.consumer).then_some(name)
            })
            .collect();
        if holding.is_empty() {
            return 0;
        }
        let mut look = redis::pipe();
        for name in &holding {
            look.exists(self.queue.alive_key(name));
        }
        let Ok(alive) = self
            .run_pipeline::<Vec<bool>>("write_behind_consumers", &look)
            .await
        else {
            return 0;
        };
        let mut taken = 0;
        for (name, _) in holding.iter().zip(alive).filter(|(_, alive)| !alive) {
            let mut pending = redis::cmd("XPENDING");
            pending
                .arg(&self.stream)
                .arg(GROUP)
                .arg("-")
                .arg("+")
                .arg(self.settings.max_batch.max(1))
                .arg(name);
            let Ok(ids) = self
                .run::<Vec<(String, String, u64, u64)>>("write_behind_claim", &pending)
                .await
            else {
                continue;
            };
            if ids.is_empty() {
                continue;
            }
            let mut claim = redis::cmd("XCLAIM");
            claim
                .arg(&self.stream)
                .arg(GROUP)
                .arg(&self.consumer)
                .arg(0);
            for (id, ..) in &ids {
                claim.arg(id);
            }
            let Ok(claimed) = self
                .run::<redis::streams::StreamClaimReply>("write_behind_claim", &claim)
                .await
            else {
                continue;
            };
            tracing::info!(stream = %self.stream, consumer = %name, entries = claimed.ids.len(), "taking over the writes of a departed instance");
            let now = Instant::now();
            let mut held = 0;
            for entry in claimed.ids {
                held += 1;
                match self.decode(&entry) {
                    Ok(write) => {
                        self.lock_retries().insert(
                            write.id,
                            Retry {
                                key: write.key,
                                request: write.request,
                                attempts: 0,
                                ours: write.ours,
                                not_before: now,
                            },
                        );
                    }
                    Err(reason) => self.bury_undecodable(&entry, &reason).await,
                }
            }
            self.hold(held);
            taken += held;
        }
        taken
    }

    /// The worker's round: `None`, without reading anything, once the queue is closed.
    pub(super) async fn background_round(&self) -> Result<Option<Round>, StoreError> {
        let mut state = self.rounds.lock().await;
        // Checked under the round lock: a close that flushed first has the last word.
        if self.closed.load(Ordering::Acquire) {
            return Ok(None);
        }
        self.round_locked(&mut state).await.map(Some)
    }

    pub(super) async fn create_group(&self) -> Result<(), StoreError> {
        let mut create = redis::cmd("XGROUP");
        create
            .arg("CREATE")
            .arg(&self.stream)
            .arg(GROUP)
            .arg("0")
            .arg("MKSTREAM");
        match self.run::<()>("write_behind_group", &create).await {
            Err(error) if !has_code(&error, "BUSYGROUP") => Err(error),
            _ => Ok(()),
        }
    }

    /// Takes what is due — retries, entries idle too long with any consumer, new entries —
    /// and writes it.
    pub(super) async fn round(&self) -> Result<Round, StoreError> {
        let mut state = self.rounds.lock().await;
        self.round_locked(&mut state).await
    }

    pub(super) async fn round_locked(&self, state: &mut RoundState) -> Result<Round, StoreError> {
        if !state.group_ready {
            self.create_group().await?;
            state.group_ready = true;
        }
        let result = self.take_and_write(state).await;
        if let Err(error) = &result
            && has_code(error, "NOGROUP")
        {
            state.group_ready = false;
        }
        result
    }

    pub(super) async fn take_and_write(&self, state: &mut RoundState) -> Result<Round, StoreError> {
        let max = self.settings.max_batch;
        let mut batch: BTreeMap<EntryId, Delivered<Req>> = BTreeMap::new();
        {
            let now = Instant::now();
            let mut retries = self.lock_retries();
            let due: Vec<EntryId> = retries
                .iter()
                .filter(|(_, retry)| retry.not_before <= now)
                .map(|(id, _)| *id)
                .take(max)
                .collect();
            for id in due {
                let retry = retries.remove(&id).expect("listed above");
                batch.insert(id, delivered(id, retry));
            }
        }

        // Backpressure: while this process holds `capacity` writes (the database is failing,
        // they wait for retries), new entries stay in Redis rather than in its memory.
        if self.held.load(Ordering::Acquire) >= self.settings.capacity {
            let taken = batch.len();
            let written = self.write(batch).await;
            return Ok(Round { taken, written });
        }

        let mut claim = redis::cmd("XAUTOCLAIM");
        claim
            .arg(&self.stream)
            .arg(GROUP)
            .arg(&self.consumer)
            .arg(millis(self.queue.claim_after))
            .arg(&state.claim_cursor)
            .arg("COUNT")
            .arg(max);
        // `>`: entries never delivered; `0`: this consumer's own pending ones.
        let read_group = |from: &str| {
            let mut read = redis::cmd("XREADGROUP");
            read.arg("GROUP")
                .arg(GROUP)
                .arg(&self.consumer)
                .arg("COUNT")
                .arg(max)
                .arg("STREAMS")
                .arg(&self.stream)
                .arg(from);
            read
        };
        let read = read_group(">");
        // After a failed command, entries may have been delivered to this consumer without
        // it learning of them (a read that timed out after Redis ran it), or left
        // unacknowledged: it reads its own pending entries back, instead of leaving them
        // until `claim_after` (those it holds already are skipped below).
        let own = self
            .unsure
            .swap(false, Ordering::AcqRel)
            .then(|| read_group("0"));
        // In one round trip.
        let mut take = redis::pipe();
        take.add_command(claim).add_command(read);
        let (claimed, fresh, own) = match own {
            Some(own) => {
                take.add_command(own);
                let (claimed, fresh, own): (
                    StreamAutoClaimReply,
                    Option<StreamReadReply>,
                    Option<StreamReadReply>,
                ) = self.run_pipeline("write_behind_read", &take).await?;
                (claimed, fresh, own)
            }
            None => {
                let (claimed, fresh): (StreamAutoClaimReply, Option<StreamReadReply>) =
                    self.run_pipeline("write_behind_read", &take).await?;
                (claimed, fresh, None)
            }
        };
        let wrapped = claimed.next_stream_id == "0-0";
        state.claim_cursor = claimed.next_stream_id;
        let mut entries = claimed.claimed;
        let mut seen: HashSet<String> = entries.iter().map(|e| e.id.clone()).collect();
        for entry in [fresh, own]
            .into_iter()
            .flatten()
            .flat_map(|r| r.keys)
            .flat_map(|k| k.ids)
        {
            // An entry deleted meanwhile comes back from the pending list without fields.
            if !entry.map.is_empty() && seen.insert(entry.id.clone()) {
                entries.push(entry);
            }
        }

        let mut delivered_now = 0;
        for entry in entries {
            let held_already =
                EntryId::parse(&entry.id).is_some_and(|id| self.lock_retries().contains_key(&id));
            if held_already {
                continue;
            }
            delivered_now += 1;
            match self.decode(&entry) {
                Ok(write) => {
                    batch.insert(write.id, write);
                }
                Err(reason) => self.bury_undecodable(&entry, &reason).await,
            }
        }
        self.hold(delivered_now);

        // Older retries of the keys in this batch join it: superseded, or superseding.
        let keys: HashSet<Key> = batch.values().map(|write| write.key.clone()).collect();
        {
            let mut retries = self.lock_retries();
            let joining: Vec<EntryId> = retries
                .iter()
                .filter(|(_, retry)| keys.contains(&retry.key))
                .map(|(id, _)| *id)
                .collect();
            for id in joining {
                let retry = retries.remove(&id).expect("listed above");
                batch.insert(id, delivered(id, retry));
            }
        }

        let check_due = state
            .consumers_checked
            .is_none_or(|at| at.elapsed() >= self.queue.claim_after);
        if wrapped && check_due {
            state.consumers_checked = Some(Instant::now());
            self.forget_idle_consumers().await;
        }
        let taken = batch.len();
        let written = self.write(batch).await;
        Ok(Round { taken, written })
    }

    pub(super) fn decode(&self, entry: &StreamId) -> Result<Delivered<Req>, String> {
        let id = EntryId::parse(&entry.id).ok_or("the entry id is not a stream id")?;
        let field = |name: &str| -> Result<Vec<u8>, String> {
            let value = entry.map.get(name).ok_or(format!("no field `{name}`"))?;
            redis::from_redis_value_ref::<Vec<u8>>(value).map_err(|e| e.to_string())
        };
        let key = String::from_utf8(field("k")?).map_err(|e| e.to_string())?;
        let key = Key::new(key).map_err(|e| e.to_string())?;
        let request: Req = self.codec.decode(&field("r")?).map_err(|e| e.to_string())?;
        // Written by this worker's process: its number, for writes made directly since.
        let ours = entry
            .map
            .get("p")
            .and_then(|p| redis::from_redis_value_ref::<String>(p).ok())
            .filter(|producer| *producer == self.consumer)
            .and_then(|_| field("n").ok())
            .and_then(|n| String::from_utf8(n).ok()?.parse().ok());
        Ok(Delivered {
            id,
            key,
            request,
            attempts: 0,
            ours,
        })
    }
}

pub(super) fn delivered<Req>(id: EntryId, retry: Retry<Req>) -> Delivered<Req> {
    Delivered {
        id,
        key: retry.key,
        request: retry.request,
        attempts: retry.attempts,
        ours: retry.ours,
    }
}

/// Whether `error` is Redis's error `code` (e.g. `BUSYGROUP`).
pub(super) fn has_code(error: &StoreError, code: &str) -> bool {
    match error {
        StoreError::Backend { source, .. } => {
            source.downcast_ref::<redis::RedisError>().is_some_and(|e| {
                // A pipeline's error has no code of its own: its commands' show in its text.
                e.code() == Some(code) || e.to_string().contains(&format!("\"{code}\""))
            })
        }
        _ => false,
    }
}

impl<Req, Conn, Co, D> PendingWrites for StreamWorker<Req, Conn, Co, D>
where
    Req: Clone + Send + Sync + 'static,
    Conn: ConnectionLike + Clone + Send + Sync + 'static,
    Co: Codec<Req>,
    D: DeadLetterHook<Req>,
{
    fn flush(&self) -> Pin<Box<dyn Future<Output = Result<u64, CacheError>> + Send + '_>> {
        Box::pin(self.flush_all())
    }

    fn close(&self) -> Pin<Box<dyn Future<Output = Result<u64, CacheError>> + Send + '_>> {
        Box::pin(async move {
            self.closed.store(true, Ordering::Release);
            let written = self.flush_all().await;
            self.wake.notify_one();
            written
        })
    }

    fn pending_value(&self, _: &Key) -> Option<StoreValue> {
        None
    }
}

impl<Req, Conn, Co, D> WriteQueue<Req> for StreamWorker<Req, Conn, Co, D>
where
    Req: Clone + Send + Sync + 'static,
    Conn: ConnectionLike + Clone + Send + Sync + 'static,
    Co: Codec<Req>,
    D: DeadLetterHook<Req>,
{
    fn room(&self) -> Arc<Semaphore> {
        self.room.clone()
    }

    fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }

    fn depth(&self) -> usize {
        self.held.load(Ordering::Acquire)
    }

    fn keeps_values(&self) -> bool {
        // The cache holds a queued write's value from the moment it is queued.
        false
    }

    fn start(self: Arc<Self>) {
        self.spawn_worker();
    }

    fn producers_gone(&self) {
        // What is queued stays in the stream, for this process's other queues and the
        // other instances; the worker ends at its next wake-up.
        self.wake.notify_one();
    }

    fn enqueue(
        self: Arc<Self>,
        key: Key,
        request: Req,
        _: Option<StoreValue>,
        permit: OwnedSemaphorePermit,
    ) -> Enqueue<Req> {
        if self.is_closed() {
            return Enqueue::Direct(request);
        }
        self.spawn_worker();
        let mut payload = Vec::new();
        if let Err(error) = self.codec.encode_into(&request, &mut payload) {
            tracing::error!(key = %KeyDigest(&key), %error, "write-behind request does not encode: written directly");
            return Enqueue::Direct(request);
        }
        let number = self.produced.fetch_add(1, Ordering::AcqRel) + 1;
        Enqueue::Pending(Box::pin(async move {
            // Room in the queue is room for an `XADD` in flight.
            let _permit = permit;
            let mut add = redis::cmd("XADD");
            add.arg(&self.stream)
                .arg("*")
                .arg("k")
                .arg(key.as_str())
                .arg("r")
                .arg(payload)
                .arg("p")
                .arg(&self.consumer)
                .arg("n")
                .arg(number);
            match self.run::<String>("write_behind_enqueue", &add).await {
                Ok(_) => {
                    if self.since_batch.fetch_add(1, Ordering::AcqRel) + 1
                        >= self.settings.max_batch
                    {
                        self.since_batch.store(0, Ordering::Release);
                        self.wake.notify_one();
                    }
                    Ok(())
                }
                Err(error) => {
                    self.observer
                        .error(Operation::WriteBehindFlush, error.kind());
                    crate::log::warn_summarised!(error.kind(), key = %KeyDigest(&key), %error, "write-behind write not queued in Redis: written directly");
                    Err(Unqueued {
                        request,
                        ticket: Box::new(self.direct.ticket(key, number)),
                    })
                }
            }
        }))
    }
}
