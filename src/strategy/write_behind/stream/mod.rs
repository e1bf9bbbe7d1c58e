//! The durable write-behind queue: a Redis stream read by a consumer group.

use std::fmt;
use std::time::Duration;

use redis::aio::ConnectionLike;
use tower_layer::Layer;

use super::service::WriteBehindService;
use super::{DeadLetterHook, WriteBehind, WriterMode};
use crate::cache::Cacheable;
use crate::codec::Codec;
use crate::key::Key;
use crate::key::builder::escape_part;
use crate::layer::CacheLayer;
use crate::store::breaker::Gate;
use crate::store::commands::Commands;
use crate::store::{CircuitBreaker, RedisConnection, RedisStore, Store};

/// The consumer group every instance reads a queue's stream with.
const GROUP: &str = "writers";

/// How many dead letters the dead-letter stream keeps, about.
const DEAD_LETTERS_KEPT: usize = 10_000;

/// Acknowledges and deletes the superseded entries of a batch, then takes the write lease of
/// each key the batch writes — unless the key's recorded version is already that entry's
/// or newer (`0`: a replay, acknowledged and deleted here, nothing to write), or another
/// live consumer holds the lease (`-1`: busy, try later; a holder whose liveness lapsed
/// has departed). `1`: the lease is ours. One script for the whole batch: one round trip.
/// `KEYS[1]` stream, then each write's lease and version keys; `ARGV` group, consumer,
/// lease in ms, the liveness keys' prefix (the queue's slot), the number of superseded
/// entries, their ids, then each write's entry id.
const ACQUIRE: &str = r#"
local group, consumer, lease_ms, alive = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
local superseded = tonumber(ARGV[5])
for i = 6, 5 + superseded do
  redis.call('XACK', KEYS[1], group, ARGV[i])
  redis.call('XDEL', KEYS[1], ARGV[i])
end
local replies = {}
for w = 1, (#KEYS - 1) / 2 do
  local lease, version = KEYS[2 * w], KEYS[2 * w + 1]
  local id = ARGV[5 + superseded + w]
  local entry_ms, entry_seq = string.match(id, '^(%d+)-(%d+)$')
  entry_ms, entry_seq = tonumber(entry_ms), tonumber(entry_seq)
  local reply = nil
  local recorded = redis.call('GET', version)
  if recorded then
    local ms, seq = string.match(recorded, '^(%d+)-(%d+)$')
    if ms then
      ms = tonumber(ms)
      if ms > entry_ms or (ms == entry_ms and tonumber(seq) >= entry_seq) then
        redis.call('XACK', KEYS[1], group, id)
        redis.call('XDEL', KEYS[1], id)
        reply = 0
      end
    end
  end
  if not reply then
    local holder = redis.call('GET', lease)
    if holder and holder ~= consumer and redis.call('EXISTS', alive .. holder) == 1 then
      reply = -1
    else
      redis.call('SET', lease, consumer, 'PX', lease_ms)
      reply = 1
    end
  end
  replies[w] = reply
end
return replies
"#;

/// After successful writes: records each one's version for its key, acknowledges and
/// deletes its entry, and gives its lease back; one script for the batch. `KEYS[1]` stream,
/// then each write's version and lease keys; `ARGV` group, retention in ms, consumer, then
/// each write's entry id.
const RECORD: &str = r#"
local group, retention, consumer = ARGV[1], ARGV[2], ARGV[3]
for w = 1, (#KEYS - 1) / 2 do
  local version, lease, id = KEYS[2 * w], KEYS[2 * w + 1], ARGV[3 + w]
  redis.call('SET', version, id, 'PX', retention)
  redis.call('XACK', KEYS[1], group, id)
  redis.call('XDEL', KEYS[1], id)
  if redis.call('GET', lease) == consumer then
    redis.call('DEL', lease)
  end
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
///   `XREADGROUP`. Each worker keeps a liveness key fresh (every second, lasting 5 s); an
///   instance that died (crash, `SIGKILL`) is noticed when its liveness lapses, and another
///   takes over the entries and write leases it held at once — within about 5 s. Entries
///   any consumer has held longer than [`claim_after`](StreamQueue::claim_after) are taken
///   over too (`XAUTOCLAIM`): a live instance stuck on a write. An entry is acknowledged (`XACK`) and deleted only after the
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
/// A write written directly (its `XADD` failed, timed out or was refused by the breaker)
/// is never overwritten by an older write of its key that the same instance queued — the
/// worker skips those (and a timed-out `XADD` of the same write that landed late). The
/// window that remains is across instances while Redis is unreachable: another instance's
/// worker knows nothing of this instance's direct writes, so an older entry this instance
/// queued before Redis failed, taken over by another instance after this one died, can
/// still be written after a newer direct write.
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
pub struct StreamQueue<Conn = RedisConnection> {
    commands: Commands<Conn>,
    /// The circuit breaker of the store the queue was made from, if any.
    gate: Option<Gate>,
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

/// What a [`StreamQueue`] can live on: a [`RedisStore`] or [`RedisClusterStore`](crate::store::RedisClusterStore),
/// or one behind a [`CircuitBreaker`] — then every Redis command of the queue passes the
/// same breaker as the cache's, so that while Redis is down a write-behind write costs no
/// timeout: it is written directly at once. Sealed.
///
/// ```
/// use tower_caching::store::{CircuitBreaker, RedisConfig, RedisStore};
/// use tower_caching::strategy::StreamQueue;
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let store = CircuitBreaker::new(RedisStore::connect_lazy(RedisConfig::new("127.0.0.1:6379"))?);
/// // The cache and its queue share one breaker: one timeout, then nothing while it is open.
/// let queue = StreamQueue::new(&store, "participant-metrics");
/// # let _ = queue;
/// # Ok(())
/// # }
/// ```
pub trait StreamStore: sealed::Sealed {}

mod sealed {
    use super::*;

    /// The connection a queue sends its commands on, and the breaker they pass.
    #[allow(missing_debug_implementations)]
    pub struct Parts<C> {
        pub(crate) commands: Commands<C>,
        pub(crate) gate: Option<Gate>,
    }

    /// The parts a queue needs.
    pub trait Sealed {
        /// The redis-rs connection.
        type Connection;
        #[doc(hidden)]
        fn queue_parts(&self) -> Parts<Self::Connection>;
    }

    impl Sealed for RedisStore {
        type Connection = RedisConnection;
        fn queue_parts(&self) -> Parts<RedisConnection> {
            Parts {
                commands: self.commands().clone(),
                gate: None,
            }
        }
    }

    impl<S: Sealed + Store> Sealed for CircuitBreaker<S> {
        type Connection = S::Connection;
        fn queue_parts(&self) -> Parts<S::Connection> {
            Parts {
                gate: Some(self.gate()),
                ..self.get_ref().queue_parts()
            }
        }
    }

    #[cfg(feature = "cluster")]
    impl Sealed for crate::store::RedisClusterStore {
        type Connection = redis::cluster_async::ClusterConnection;
        fn queue_parts(&self) -> Parts<Self::Connection> {
            Parts {
                commands: self.commands().clone(),
                gate: None,
            }
        }
    }
}

impl StreamStore for RedisStore {}
impl<S: StreamStore + Store> StreamStore for CircuitBreaker<S> {}
#[cfg(feature = "cluster")]
impl StreamStore for crate::store::RedisClusterStore {}

impl<Conn> StreamQueue<Conn> {
    /// The queue `name` on the Redis of `store` (its connection and command timeout, and
    /// its circuit breaker when it has one).
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
    pub fn new<S: StreamStore<Connection = Conn>>(store: &S, name: &str) -> Self {
        let parts = store.queue_parts();
        StreamQueue::with_commands(parts.commands, parts.gate, name)
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
        StreamQueue::new(store, name)
    }
}

impl<Conn> StreamQueue<Conn> {
    fn with_commands(commands: Commands<Conn>, gate: Option<Gate>, name: &str) -> Self {
        let name = if name.is_empty() { "default" } else { name };
        StreamQueue {
            commands,
            gate,
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

    fn alive_prefix(&self) -> String {
        format!("tower-caching:wb:{{{}}}:alive:", self.name)
    }

    fn alive_key(&self, consumer: &str) -> String {
        format!("{}{consumer}", self.alive_prefix())
    }

    fn lease_key(&self, key: &Key) -> String {
        format!("tower-caching:wb:{{{}}}:l:{}", self.name, key.as_str())
    }
}

mod direct;
mod worker;
mod write;

pub(crate) use self::worker::StreamWorker;

impl<Svc, Req, V, St, C, F, A, D, W, K, T, Conn> Layer<Svc>
    for CacheLayer<WriteBehind<Req, V, St, C, F, A, D, StreamQueue<Conn>, W>, K, T>
where
    W: WriterMode<Req, Svc>,
    Req: Clone + Send + Sync + 'static,
    V: Cacheable,
    St: Store,
    C: Codec<V> + Codec<Req>,
    F: Clone,
    A: Clone,
    D: DeadLetterHook<Req>,
    K: Clone,
    T: Clone,
    Conn: ConnectionLike + Clone + Send + Sync + 'static,
{
    type Service = WriteBehindService<
        W::Direct,
        Req,
        WriteBehind<Req, V, St, C, F, A, D, StreamQueue<Conn>, W>,
        K,
        T,
    >;

    /// Makes the service and its worker; nothing runs until the first request or
    /// [`WriteBehindService::start`], which a new instance calls to write what crashed ones
    /// left without waiting for a write of its own.
    fn layer(&self, inner: Svc) -> Self::Service {
        let cache = &self.strategy.cache;
        let worker = StreamWorker::new(
            self.strategy.queue.clone(),
            cache.codec().clone(),
            W::queue_writer(&inner),
            self.strategy.dead_letter.clone(),
            self.strategy.settings,
            cache.observer().clone(),
        );
        WriteBehindService::new(W::direct(inner), self.clone(), worker)
    }
}
