//! The durable write-behind queue: a Redis stream read by a consumer group.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use futures_util::stream::{FuturesUnordered, StreamExt};
use redis::aio::{ConnectionLike, ConnectionManager};
use redis::streams::{StreamAutoClaimReply, StreamId, StreamReadReply};
use serde::{de::DeserializeOwned, Serialize};
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;
use tower_layer::Layer;
use tower_service::Service;

use super::service::WriteBehindService;
use super::{
    hand_dead_letter, write_once, DeadLetter, DeadLetterHook, Enqueue, Settings, WriteBehind,
    WriteQueue,
};
use crate::cache::{CacheError, Cacheable, PendingWrites};
use crate::codec::Codec;
use crate::frame::millis;
use crate::key::{escape_part, Key};
use crate::layer::CacheLayer;
use crate::metrics::{KeyDigest, Observer, Operation};
use crate::store::commands::Commands;
use crate::store::{RedisStore, Store, StoreError, StoreValue};
use crate::BoxError;

/// The consumer group every instance reads a queue's stream with.
const GROUP: &str = "writers";

/// How many dead letters the dead-letter stream keeps, about.
const DEAD_LETTERS_KEPT: usize = 10_000;

/// Takes a key's write lease — unless the key's recorded version is already this entry's
/// or newer (`0`: a replay, nothing to write), or another consumer holds the lease (`-1`:
/// busy, try later). `1`: the lease is ours. `KEYS[1]` lease, `KEYS[2]` version; `ARGV`
/// consumer, lease in ms, the entry id's two halves.
const ACQUIRE: &str = r#"
local recorded = redis.call('GET', KEYS[2])
if recorded then
  local ms, seq = string.match(recorded, '^(%d+)-(%d+)$')
  if ms then
    ms = tonumber(ms)
    local entry_ms = tonumber(ARGV[3])
    if ms > entry_ms or (ms == entry_ms and tonumber(seq) >= tonumber(ARGV[4])) then
      return 0
    end
  end
end
local holder = redis.call('GET', KEYS[1])
if holder and holder ~= ARGV[1] then
  return -1
end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return 1
"#;

/// After a successful write: records its version for the key, acknowledges and deletes
/// the entry, and gives the lease back. `KEYS[1]` stream, `KEYS[2]` version, `KEYS[3]`
/// lease; `ARGV` group, entry id, retention in ms, consumer.
const RECORD: &str = r#"
redis.call('SET', KEYS[2], ARGV[2], 'PX', ARGV[3])
redis.call('XACK', KEYS[1], ARGV[1], ARGV[2])
redis.call('XDEL', KEYS[1], ARGV[2])
if redis.call('GET', KEYS[3]) == ARGV[4] then
  redis.call('DEL', KEYS[3])
end
return 1
"#;

/// Gives a lease back after a failed write. `KEYS[1]` lease, `ARGV[1]` consumer.
const RELEASE: &str = r#"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('DEL', KEYS[1])
end
return 1
"#;

/// Acknowledges and deletes entries. `KEYS[1]` stream, `ARGV` group then entry ids.
const DONE: &str = r#"
for i = 2, #ARGV do
  redis.call('XACK', KEYS[1], ARGV[1], ARGV[i])
  redis.call('XDEL', KEYS[1], ARGV[i])
end
return #ARGV - 1
"#;

/// A durable write-behind queue: every queued write is an entry of a Redis stream, read by
/// a consumer group that all instances of the application share.
///
/// - **Acknowledged = in Redis**: a write is answered once `XADD` succeeded, so it survives
///   a crash or kill of the process that took it. (It survives Redis only as far as Redis
///   persists: AOF with `appendfsync always`, or replicas, for the strict case.)
/// - **Written by any instance**: each instance's worker reads new entries with
///   `XREADGROUP`, and takes over entries another consumer has held longer than
///   [`claim_after`](StreamQueue::claim_after) with `XAUTOCLAIM` — the writes of an
///   instance that died. An entry is acknowledged (`XACK`) and deleted only after the
///   writer succeeded.
/// - **Idempotent replays, last write wins**: an entry's stream id is its version. Each
///   batch writes only the newest entry of each key, holding the key's write lease (so two
///   instances never write one key at once); after a write, its version is recorded for
///   the key (kept for [`version_retention`](StreamQueue::version_retention)), and an entry
///   no newer than the recorded version is acknowledged without being written again. So a
///   key never goes back to an older value. Delivery is at least once: an instance that
///   dies between the writer's success and the acknowledgement gets that write replayed.
/// - **Never silently lost**: a write `XADD` cannot queue (Redis down) is written directly,
///   before the response; a write that fails [`max_attempts`](crate::CacheLayer::max_attempts)
///   times goes to the dead-letter hook *and* to the stream
///   [`dead_letter_key`](StreamQueue::dead_letter_key); an entry that does not decode
///   (another version of the request type) goes to that stream too, without blocking the
///   others.
/// - **Bounded in memory**: a process holds at most [`capacity`](crate::CacheLayer::capacity)
///   writes (plus one batch) read from the stream and not yet written; while the database
///   fails, the rest wait in Redis. `capacity` also bounds the `XADD`s in flight.
/// - The whole queue lives in one hash slot (`{name}`), so it works on Redis Cluster; give
///   busy queues different names to spread them.
///
/// The `write_behind_queue_size` gauge counts the writes this process holds (read, not yet
/// acknowledged); the stream's backlog is `XLEN` of [`stream_key`](StreamQueue::stream_key).
/// The window in which a replay can still write an older value: when an `XADD` times out
/// after Redis applied it, the write is also written directly; if Redis stays unreachable
/// and a newer write of the same key is written directly too, the replay of the first entry
/// later overwrites it.
///
/// ```no_run
/// use std::convert::Infallible;
/// use serde::{Deserialize, Serialize};
/// use tower_caching::store::{RedisConfig, RedisStore};
/// use tower_caching::strategy::StreamQueue;
/// use tower_caching::{key::KeyBuilder, Cache, CacheLayer};
/// use tower_layer::Layer;
///
/// #[derive(Clone, Serialize, Deserialize)]
/// struct UpdateMetrics { ispb: String, lookups: u64 }
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let store = RedisStore::connect(RedisConfig::from_env()?).await?;
/// let cache: Cache<u64, RedisStore> = Cache::new(store.clone());
/// let keys = KeyBuilder::new();
/// let layer = CacheLayer::write_behind(cache)
///     .key(move |req: &UpdateMetrics| keys.metrics(&req.ispb))
///     .value(|req: &UpdateMetrics| Some(req.lookups))
///     .durable(StreamQueue::new(&store, "metrics"));
/// let database = tower::service_fn(|_: UpdateMetrics| async { Ok::<_, Infallible>(()) });
/// let service = layer.layer(database);
/// # let _ = service;
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct StreamQueue<Conn = ConnectionManager> {
    commands: Commands<Conn>,
    name: String,
    claim_after: Duration,
    retention: Duration,
}

impl<Conn> fmt::Debug for StreamQueue<Conn> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StreamQueue")
            .field("stream", &self.stream_key())
            .field("claim_after", &self.claim_after)
            .field("version_retention", &self.retention)
            .finish()
    }
}

impl StreamQueue<ConnectionManager> {
    /// The queue `name` on the Redis of `store` (its connection and command timeout).
    ///
    /// ```
    /// # use tower_caching::{store::{RedisConfig, RedisStore}, strategy::StreamQueue};
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let store = RedisStore::connect_lazy(RedisConfig::new("127.0.0.1:6379"))?;
    /// let queue = StreamQueue::new(&store, "participant-metrics");
    /// assert_eq!(queue.stream_key(), "tower-caching:wb:{participant-metrics}");
    /// # Ok(())
    /// # }
    /// ```
    pub fn new(store: &RedisStore, name: &str) -> Self {
        StreamQueue::with_commands(store.commands().clone(), name)
    }
}

#[cfg(feature = "cluster")]
#[cfg_attr(docsrs, doc(cfg(feature = "cluster")))]
impl StreamQueue<redis::cluster_async::ClusterConnection> {
    /// The queue `name` on the Redis Cluster of `store`; the queue's keys share one slot.
    ///
    /// ```no_run
    /// # use tower_caching::{store::{RedisClusterConfig, RedisClusterStore}, strategy::StreamQueue};
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let store = RedisClusterStore::connect(RedisClusterConfig::new(["10.0.0.1:7000"])).await?;
    /// let queue = StreamQueue::on_cluster(&store, "participant-metrics");
    /// # let _ = queue;
    /// # Ok(())
    /// # }
    /// ```
    pub fn on_cluster(store: &crate::store::RedisClusterStore, name: &str) -> Self {
        StreamQueue::with_commands(store.commands().clone(), name)
    }
}

impl<Conn> StreamQueue<Conn> {
    fn with_commands(commands: Commands<Conn>, name: &str) -> Self {
        let name = if name.is_empty() { "default" } else { name };
        StreamQueue {
            commands,
            name: escape_part(name).into_owned(),
            claim_after: Duration::from_secs(60),
            retention: Duration::from_secs(3600),
        }
    }

    /// How long an entry may stay with a consumer before another instance takes it over
    /// (default 60 s). Longer than the slowest write; it is raised to twice the backoff cap,
    /// so that a write waiting for its retry is not taken over.
    ///
    /// ```
    /// # use std::time::Duration;
    /// # use tower_caching::{store::{RedisConfig, RedisStore}, strategy::StreamQueue};
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # let store = RedisStore::connect_lazy(RedisConfig::new("127.0.0.1:6379"))?;
    /// let queue = StreamQueue::new(&store, "metrics")
    ///     .claim_after(Duration::from_secs(120))
    ///     .version_retention(Duration::from_secs(6 * 3600));
    /// # let _ = queue;
    /// # Ok(())
    /// # }
    /// ```
    pub fn claim_after(mut self, idle: Duration) -> Self {
        self.claim_after = idle.max(Duration::from_millis(1));
        self
    }

    /// How long the version of a key's last written entry is kept (default 1 h): replays
    /// of older entries within it are skipped. Longer than any entry can wait. See
    /// [`claim_after`](StreamQueue::claim_after) for an example.
    pub fn version_retention(mut self, retention: Duration) -> Self {
        self.retention = retention.max(Duration::from_secs(1));
        self
    }

    /// The stream's key: `tower-caching:wb:{name}` — for `XLEN` (the backlog) and
    /// `XPENDING` (what the instances hold). See [`new`](StreamQueue::new) for an example.
    pub fn stream_key(&self) -> String {
        format!("tower-caching:wb:{{{}}}", self.name)
    }

    /// The key of the stream of dead letters: writes abandoned after their last attempt,
    /// and entries that do not decode (fields `id`, `k`, `r`, `error`).
    ///
    /// ```
    /// # use tower_caching::{store::{RedisConfig, RedisStore}, strategy::StreamQueue};
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # let store = RedisStore::connect_lazy(RedisConfig::new("127.0.0.1:6379"))?;
    /// let queue = StreamQueue::new(&store, "metrics");
    /// assert_eq!(queue.dead_letter_key(), "tower-caching:wb:{metrics}:dead");
    /// # Ok(())
    /// # }
    /// ```
    pub fn dead_letter_key(&self) -> String {
        format!("tower-caching:wb:{{{}}}:dead", self.name)
    }

    fn version_key(&self, key: &Key) -> String {
        format!("tower-caching:wb:{{{}}}:v:{}", self.name, key.as_str())
    }

    fn lease_key(&self, key: &Key) -> String {
        format!("tower-caching:wb:{{{}}}:l:{}", self.name, key.as_str())
    }
}

/// A stream entry id, `{ms}-{seq}`: the version of the write it holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
struct EntryId {
    ms: u64,
    seq: u64,
}

impl EntryId {
    fn parse(id: &str) -> Option<Self> {
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
struct Delivered<Req> {
    id: EntryId,
    key: Key,
    request: Req,
    attempts: u32,
}

/// A failed write waiting for its next attempt.
struct Retry<Req> {
    key: Key,
    request: Req,
    attempts: u32,
    not_before: Instant,
}

/// What one round did.
struct Round {
    taken: usize,
    written: u64,
}

/// Rounds run one at a time (the worker's and flushes'), so a key's writes never overlap.
struct RoundState {
    group_ready: bool,
    claim_cursor: String,
    /// When idle consumers were last looked for.
    consumers_checked: Option<Instant>,
}

/// The worker of one [`StreamQueue`] in this process: queues with `XADD`, writes what it
/// reads or claims, acknowledges what was written.
pub(crate) struct StreamWorker<Svc, Req, Conn, Co, D> {
    queue: StreamQueue<Conn>,
    stream: String,
    consumer: String,
    codec: Co,
    writer: Svc,
    dead_letter: Arc<D>,
    settings: Settings,
    observer: Observer,
    room: Arc<Semaphore>,
    retries: Mutex<BTreeMap<EntryId, Retry<Req>>>,
    rounds: tokio::sync::Mutex<RoundState>,
    wake: Notify,
    closed: AtomicBool,
    started: AtomicBool,
    since_batch: AtomicUsize,
    held: AtomicUsize,
}

impl<Svc, Req, Conn, Co, D> StreamWorker<Svc, Req, Conn, Co, D>
where
    Svc: Service<Req> + Clone + Send + Sync + 'static,
    Svc::Future: Send,
    Svc::Error: Into<BoxError>,
    Req: Serialize + DeserializeOwned + Clone + Send + Sync + 'static,
    Conn: ConnectionLike + Clone + Send + Sync + 'static,
    Co: Codec,
    D: DeadLetterHook<Req>,
{
    fn new(
        mut queue: StreamQueue<Conn>,
        codec: Co,
        writer: Svc,
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
        })
    }

    fn lock_retries(&self) -> MutexGuard<'_, BTreeMap<EntryId, Retry<Req>>> {
        self.retries.lock().unwrap_or_else(|e| e.into_inner())
    }

    async fn run<T: redis::FromRedisValue>(
        &self,
        operation: &'static str,
        command: &redis::Cmd,
    ) -> Result<T, StoreError> {
        self.queue.commands.run(operation, command).await
    }

    /// Starts the worker, once, if a Tokio runtime is here. It holds the worker weakly
    /// between rounds: it stops within one batch interval of the last service being dropped,
    /// and after [`close`](PendingWrites::close) it runs no round.
    fn spawn_worker(self: &Arc<Self>) {
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
            loop {
                let Some(worker) = weak.upgrade() else {
                    return;
                };
                if !std::mem::take(&mut first) {
                    tokio::select! {
                        _ = tokio::time::sleep(interval) => {}
                        _ = worker.wake.notified() => {}
                    }
                }
                loop {
                    match worker.background_round().await {
                        Ok(Some(round)) if round.taken > 0 => continue,
                        Ok(Some(_)) => break,
                        Ok(None) => return,
                        Err(error) => {
                            tracing::warn!(stream = %worker.stream, %error, "durable write-behind round failed, will retry");
                            break;
                        }
                    }
                }
            }
        });
    }

    /// The worker's round: `None`, without reading anything, once the queue is closed.
    async fn background_round(&self) -> Result<Option<Round>, StoreError> {
        let mut state = self.rounds.lock().await;
        // Checked under the round lock: a close that flushed first has the last word.
        if self.closed.load(Ordering::Acquire) {
            return Ok(None);
        }
        self.round_locked(&mut state).await.map(Some)
    }

    async fn create_group(&self) -> Result<(), StoreError> {
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
    async fn round(&self) -> Result<Round, StoreError> {
        let mut state = self.rounds.lock().await;
        self.round_locked(&mut state).await
    }

    async fn round_locked(&self, state: &mut RoundState) -> Result<Round, StoreError> {
        if !state.group_ready {
            self.create_group().await?;
            state.group_ready = true;
        }
        let result = self.take_and_write(state).await;
        if let Err(error) = &result {
            if has_code(error, "NOGROUP") {
                state.group_ready = false;
            }
        }
        result
    }

    async fn take_and_write(&self, state: &mut RoundState) -> Result<Round, StoreError> {
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
        let claimed: StreamAutoClaimReply = self.run("write_behind_claim", &claim).await?;
        let wrapped = claimed.next_stream_id == "0-0";
        state.claim_cursor = claimed.next_stream_id;
        let mut entries = claimed.claimed;

        let mut read = redis::cmd("XREADGROUP");
        read.arg("GROUP")
            .arg(GROUP)
            .arg(&self.consumer)
            .arg("COUNT")
            .arg(max)
            .arg("STREAMS")
            .arg(&self.stream)
            .arg(">");
        let fresh: Option<StreamReadReply> = self.run("write_behind_read", &read).await?;
        entries.extend(fresh.into_iter().flat_map(|r| r.keys).flat_map(|k| k.ids));

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

    fn decode(&self, entry: &StreamId) -> Result<Delivered<Req>, String> {
        let id = EntryId::parse(&entry.id).ok_or("the entry id is not a stream id")?;
        let field = |name: &str| -> Result<Vec<u8>, String> {
            let value = entry.map.get(name).ok_or(format!("no field `{name}`"))?;
            redis::from_redis_value_ref::<Vec<u8>>(value).map_err(|e| e.to_string())
        };
        let key = String::from_utf8(field("k")?).map_err(|e| e.to_string())?;
        let key = Key::new(key).map_err(|e| e.to_string())?;
        let request = self
            .codec
            .decode::<Req>(&field("r")?)
            .map_err(|e| e.to_string())?;
        Ok(Delivered {
            id,
            key,
            request,
            attempts: 0,
        })
    }

    /// Writes the newest entry of each key that is newer than the key's recorded version;
    /// acknowledges the rest.
    async fn write(&self, batch: BTreeMap<EntryId, Delivered<Req>>) -> u64 {
        if batch.is_empty() {
            return 0;
        }
        let started = Instant::now();
        let mut newest: HashMap<Key, Delivered<Req>> = HashMap::new();
        let mut done: Vec<EntryId> = Vec::new();
        for (_, write) in batch {
            if let Some(older) = newest.insert(write.key.clone(), write) {
                done.push(older.id);
            }
        }
        let newest: Vec<Delivered<Req>> = newest.into_values().collect();
        let lease_ms = millis(self.queue.claim_after);
        let leases = futures_util::future::join_all(newest.iter().map(|write| {
            let mut acquire = redis::cmd("EVAL");
            acquire
                .arg(ACQUIRE)
                .arg(2)
                .arg(self.queue.lease_key(&write.key))
                .arg(self.queue.version_key(&write.key))
                .arg(&self.consumer)
                .arg(lease_ms)
                .arg(write.id.ms)
                .arg(write.id.seq);
            async move { self.run::<i64>("write_behind_lease", &acquire).await }
        }))
        .await;
        let mut writes = Vec::new();
        for (write, lease) in newest.into_iter().zip(leases) {
            match lease {
                Ok(1) => writes.push(write),
                Ok(0) => done.push(write.id),
                // Another instance writes this key now (or Redis failed): later, not an attempt.
                _ => self.retry_later(write, self.settings.backoff_base),
            }
        }
        self.done(&done).await;

        let mut running: FuturesUnordered<_> = writes
            .into_iter()
            .map(|write| {
                let writer = self.writer.clone();
                async move {
                    let result = write_once(writer, write.request.clone()).await.map(drop);
                    (write, result)
                }
            })
            .collect();
        let mut written = 0;
        while let Some((write, result)) = running.next().await {
            match result {
                Ok(_) => {
                    written += 1;
                    self.record(&write).await;
                }
                Err(error) => self.failed(write, error).await,
            }
        }
        self.observer.flush_batch(started.into_std());
        tracing::debug!(stream = %self.stream, written, "durable write-behind batch");
        written
    }

    /// After a successful write: records its version, acknowledges and deletes it.
    async fn record(&self, write: &Delivered<Req>) {
        let mut record = redis::cmd("EVAL");
        record
            .arg(RECORD)
            .arg(3)
            .arg(&self.stream)
            .arg(self.queue.version_key(&write.key))
            .arg(self.queue.lease_key(&write.key))
            .arg(GROUP)
            .arg(write.id.to_string())
            .arg(millis(self.queue.retention))
            .arg(&self.consumer);
        if let Err(error) = self.run::<u64>("write_behind_ack", &record).await {
            // Still pending in Redis: replayed after `claim_after`, an idempotent rewrite.
            tracing::warn!(key = %KeyDigest(&write.key), %error, "written, but not acknowledged: it will be written again");
        }
        self.release(1);
    }

    async fn failed(&self, mut write: Delivered<Req>, error: BoxError) {
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

    fn retry_later(&self, write: Delivered<Req>, wait: Duration) {
        let retry = Retry {
            key: write.key,
            request: write.request,
            attempts: write.attempts,
            not_before: Instant::now() + wait,
        };
        self.lock_retries().insert(write.id, retry);
    }

    /// Acknowledges and deletes entries that need no write (superseded, or replays).
    async fn done(&self, ids: &[EntryId]) {
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
    async fn bury(&self, id: EntryId, key: &Key, payload: &[u8], reason: &str) {
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

    async fn bury_undecodable(&self, entry: &StreamId, reason: &str) {
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
    async fn forget_idle_consumers(&self) {
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
            if let (Some(name), Some(0), Some(idle)) = (name, pending, idle) {
                if idle > limit && name != self.consumer {
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
    }

    fn hold(&self, count: usize) {
        if count > 0 {
            self.held.fetch_add(count, Ordering::AcqRel);
            self.observer.queue_size(count as i64);
        }
    }

    fn release(&self, count: usize) {
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
    async fn flush_all(&self) -> Result<u64, CacheError> {
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

fn delivered<Req>(id: EntryId, retry: Retry<Req>) -> Delivered<Req> {
    Delivered {
        id,
        key: retry.key,
        request: retry.request,
        attempts: retry.attempts,
    }
}

/// Whether `error` is Redis's error `code` (e.g. `BUSYGROUP`).
fn has_code(error: &StoreError, code: &str) -> bool {
    match error {
        StoreError::Backend { source, .. } => {
            source
                .downcast_ref::<redis::RedisError>()
                .and_then(redis::RedisError::code)
                == Some(code)
        }
        _ => false,
    }
}

impl<Svc, Req, Conn, Co, D> PendingWrites for StreamWorker<Svc, Req, Conn, Co, D>
where
    Svc: Service<Req> + Clone + Send + Sync + 'static,
    Svc::Future: Send,
    Svc::Error: Into<BoxError>,
    Req: Serialize + DeserializeOwned + Clone + Send + Sync + 'static,
    Conn: ConnectionLike + Clone + Send + Sync + 'static,
    Co: Codec,
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

impl<Svc, Req, Conn, Co, D> WriteQueue<Req> for StreamWorker<Svc, Req, Conn, Co, D>
where
    Svc: Service<Req> + Clone + Send + Sync + 'static,
    Svc::Future: Send,
    Svc::Error: Into<BoxError>,
    Req: Serialize + DeserializeOwned + Clone + Send + Sync + 'static,
    Conn: ConnectionLike + Clone + Send + Sync + 'static,
    Co: Codec,
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
        Enqueue::Pending(Box::pin(async move {
            // Room in the queue is room for an `XADD` in flight.
            let _permit = permit;
            let mut add = redis::cmd("XADD");
            add.arg(&self.stream)
                .arg("*")
                .arg("k")
                .arg(key.as_str())
                .arg("r")
                .arg(payload);
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
                    tracing::warn!(key = %KeyDigest(&key), %error, "write-behind write not queued in Redis: written directly");
                    Err(request)
                }
            }
        }))
    }
}

impl<Svc, Req, V, St, C, F, A, D, K, T, Conn> Layer<Svc>
    for CacheLayer<WriteBehind<Req, V, St, C, F, A, D, StreamQueue<Conn>>, K, T>
where
    Svc: Service<Req> + Clone + Send + Sync + 'static,
    Svc::Future: Send,
    Svc::Error: Into<BoxError>,
    Req: Serialize + DeserializeOwned + Clone + Send + Sync + 'static,
    V: Cacheable,
    St: Store,
    C: Codec,
    F: Clone,
    A: Clone,
    D: DeadLetterHook<Req>,
    K: Clone,
    T: Clone,
    Conn: ConnectionLike + Clone + Send + Sync + 'static,
{
    type Service =
        WriteBehindService<Svc, Req, WriteBehind<Req, V, St, C, F, A, D, StreamQueue<Conn>>, K, T>;

    /// Makes the service and its worker; nothing runs until the first request or
    /// [`WriteBehindService::start`], which a new instance calls to write what crashed ones
    /// left without waiting for a write of its own.
    fn layer(&self, inner: Svc) -> Self::Service {
        let cache = &self.strategy.cache;
        let worker = StreamWorker::new(
            self.strategy.queue.clone(),
            cache.codec().clone(),
            inner.clone(),
            self.strategy.dead_letter.clone(),
            self.strategy.settings,
            cache.observer().clone(),
        );
        WriteBehindService::new(inner, self.clone(), worker)
    }
}
