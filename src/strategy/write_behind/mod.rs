//! Write-behind (write-back): store the value in the cache, queue the write, answer at once;
//! a background worker calls the writer later, in batches.
//!
//! # Guarantees
//!
//! - **Acknowledged = queued**: the response is returned once the write is in the queue and
//!   its value in the cache; the writer runs every
//!   [`batch_interval`](crate::CacheLayer::batch_interval) (10 s by default) or as soon as
//!   [`max_batch`](crate::CacheLayer::max_batch) writes wait.
//! - **One call per write, or per batch**: the writer is called once per write, a batch's
//!   calls at once; with [`writes_batches`](crate::CacheLayer::writes_batches) it is a
//!   `Service<Vec<Req>>` called once per batch (see [`PerBatch`]).
//! - **Coalescing, in order**: writes to one key coalesce — the writer sees the last one —
//!   and never overlap: a key's next write starts after its previous one finished, so the
//!   writer always ends with the last value.
//! - **Bounded, with backpressure**: at most [`capacity`](crate::CacheLayer::capacity)
//!   writes wait; when the queue is full, `poll_ready` waits for room (no memory growth, no
//!   dropped write).
//! - **Retries, then a dead letter, never a silent loss**: a failed write stays queued and is
//!   retried with exponential backoff (capped, jittered); after
//!   [`max_attempts`](crate::CacheLayer::max_attempts) it is handed to the
//!   [dead-letter hook](crate::CacheLayer::on_dead_letter) (by default: logged at error
//!   level) and never blocks the other keys.
//! - **Flush and shutdown**: [`Cache::flush_pending_writes`](crate::Cache::flush_pending_writes)
//!   writes everything now; [`Cache::close`](crate::Cache::close) flushes and stops the
//!   worker; writes that arrive after it go straight to the writer.
//! - **Owned by its services**: a layer makes a queue per service it builds (shared by that
//!   service's clones) and starts nothing; the worker starts with the first request (or
//!   [`WriteBehindService::start`]), and when the last clone is dropped it writes what is
//!   left and ends (a durable queue leaves its entries to the other instances). Flush and
//!   close reach the queues of the services still alive: keep a service until its cache is
//!   closed.
//! - **In queue order**: the cache steps of one key's writes land in the order the writes
//!   were queued, and run to the end even when the caller goes away; a writer that panics
//!   is a failed attempt (retried, then dead-lettered), never a dead worker.
//! - **What it does not survive**, by default: a crash or kill of the process loses the
//!   writes still in the in-memory queue; the queue depth is the window. With
//!   [`durable`](crate::CacheLayer::durable)`(`[`StreamQueue`]`)` (feature `redis`) the
//!   queue is a Redis stream instead: an acknowledged write survives the process, and any
//!   instance writes it — see [`StreamQueue`] for what that guarantees and costs.
//! - The layered service's error is the writer's; it can only occur when a write bypasses
//!   the queue (no key, or after close).
//!
//! # Example
//!
//! ```
//! use std::{convert::Infallible, time::Duration};
//! use tower::{service_fn, ServiceExt};
//! use tower_caching::{key::KeyBuilder, Cache, CacheLayer};
//! use tower_layer::Layer;
//!
//! #[derive(Clone)]
//! struct UpdateMetrics { ispb: String, lookups: u64 }
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let cache: Cache<u64> = Cache::in_memory();
//! let keys = KeyBuilder::new();
//! let layer = CacheLayer::write_behind(cache.clone())
//!     .key(move |req: &UpdateMetrics| keys.metrics(&req.ispb))
//!     .value(|req: &UpdateMetrics| Some(req.lookups))
//!     .batch_interval(Duration::from_secs(10));
//! let database = service_fn(|req: UpdateMetrics| async move {
//!     println!("UPDATE metrics SET lookups = {} WHERE ispb = {}", req.lookups, req.ispb);
//!     Ok::<_, Infallible>(())
//! });
//! let service = layer.layer(database);
//! service.clone().oneshot(UpdateMetrics { ispb: "1".into(), lookups: 7 }).await?; // queued
//! assert_eq!(cache.flush_pending_writes().await?, 1);                      // written
//! # Ok(())
//! # }
//! ```

use std::fmt;
use std::marker::PhantomData;
use std::sync::Arc;
use std::time::Duration;

use std::future::Future;
use std::pin::Pin;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::BoxError;
use crate::cache::{Cache, PendingWrites};
use crate::codec::Json;
use crate::key::Key;
use crate::layer::CacheLayer;
use crate::store::{MemoryStore, StoreValue};

mod queue;
mod service;
#[cfg(feature = "redis")]
mod stream;
mod writer;

pub use self::service::{WriteBehindFuture, WriteBehindService};
#[cfg(feature = "redis")]
#[cfg_attr(docsrs, doc(cfg(feature = "redis")))]
pub use self::stream::{StreamQueue, StreamStore};
pub use self::writer::{BatchOfOne, PerBatch, PerWrite, WriterMode};

/// The write-behind strategy for requests `Req`, queueing in `Q`. See the
/// [module docs](self).
pub struct WriteBehind<
    Req,
    V,
    St = MemoryStore,
    C = Json,
    F = RequestValue,
    A = DefaultAck,
    D = LogDeadLetter,
    Q = InMemoryQueue,
    W = PerWrite,
> {
    pub(crate) cache: Cache<V, St, C>,
    pub(crate) value: F,
    pub(crate) ack: A,
    pub(crate) dead_letter: Arc<D>,
    pub(crate) settings: Settings,
    pub(crate) queue: Q,
    _request: PhantomData<fn(Req) -> W>,
}

/// The default write-behind queue: in process, fast, lost with the process. See
/// [`StreamQueue`] for one that survives it.
#[derive(Clone, Copy, Debug, Default)]
pub struct InMemoryQueue;

/// Queue and retry settings.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Settings {
    pub(crate) batch_interval: Duration,
    pub(crate) max_batch: usize,
    pub(crate) capacity: usize,
    pub(crate) max_attempts: u32,
    pub(crate) backoff_base: Duration,
    pub(crate) backoff_max: Duration,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            batch_interval: Duration::from_secs(10),
            max_batch: 100,
            capacity: 10_000,
            max_attempts: 10,
            backoff_base: Duration::from_millis(100),
            backoff_max: Duration::from_secs(30),
        }
    }
}

impl Settings {
    /// The wait before attempt `attempt + 1`, after `attempt` failures: exponential from
    /// the base, capped, with ±20 % jitter so that retries of many keys spread out.
    pub(crate) fn backoff(&self, attempt: u32) -> Duration {
        let exponential = self.backoff_base.saturating_mul(
            1u32.checked_shl(attempt.saturating_sub(1))
                .unwrap_or(u32::MAX),
        );
        let capped = exponential.min(self.backoff_max);
        let factor = 0.8 + 0.4 * fastrand::f64();
        // Never an overflow, whatever the cap (`Duration::MAX` included).
        Duration::try_from_secs_f64(capped.as_secs_f64() * factor)
            .unwrap_or(capped)
            .min(crate::frame::MAX_TTL)
    }
}

impl<Req, V, St, C, F: Clone, A: Clone, D, Q: Clone, W> Clone
    for WriteBehind<Req, V, St, C, F, A, D, Q, W>
{
    fn clone(&self) -> Self {
        WriteBehind {
            cache: self.cache.clone(),
            value: self.value.clone(),
            ack: self.ack.clone(),
            dead_letter: self.dead_letter.clone(),
            settings: self.settings,
            queue: self.queue.clone(),
            _request: PhantomData,
        }
    }
}

impl<Req, V, St: fmt::Debug, C: fmt::Debug, F, A, D, Q: fmt::Debug, W> fmt::Debug
    for WriteBehind<Req, V, St, C, F, A, D, Q, W>
{
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WriteBehind")
            .field("cache", &self.cache)
            .field("settings", &self.settings)
            .field("queue", &self.queue)
            .finish_non_exhaustive()
    }
}

/// A queue as the write-behind service sees it: the in-memory [`queue::Queue`] or the
/// durable [`StreamQueue`]'s worker.
pub(crate) trait WriteQueue<Req>: PendingWrites {
    /// The semaphore whose permits are room in the queue.
    fn room(&self) -> Arc<Semaphore>;
    /// Whether the queue was closed: writes then go straight to the writer.
    fn is_closed(&self) -> bool;
    /// How many writes this process holds, waiting or running.
    fn depth(&self) -> usize;
    /// Whether the queue keeps each write's framed value, for reads before the writer runs.
    fn keeps_values(&self) -> bool;
    /// Starts the worker, once (within a Tokio runtime).
    fn start(self: Arc<Self>);
    /// The last service is gone: the worker writes what is left, then ends.
    fn producers_gone(&self);
    /// Queues `request` for `key`, holding `permit` while it waits in process.
    fn enqueue(
        self: Arc<Self>,
        key: Key,
        request: Req,
        value: Option<StoreValue>,
        permit: OwnedSemaphorePermit,
    ) -> Enqueue<Req>;
}

/// What became of a request handed to a [`WriteQueue`].
pub(crate) enum Enqueue<Req> {
    /// Queued already.
    Queued,
    /// Being queued; hands the request back when it could not be, to be written directly.
    #[cfg_attr(not(feature = "redis"), allow(dead_code))]
    Pending(Pin<Box<dyn Future<Output = Result<(), Unqueued<Req>>> + Send>>),
    /// Not queued (the queue is closed): write it directly.
    Direct(Req),
}

/// A request a durable queue could not queue, to be written directly.
#[cfg_attr(not(feature = "redis"), allow(dead_code))]
pub(crate) struct Unqueued<Req> {
    pub(crate) request: Req,
    /// The direct write's place among the queue's writes of its key.
    pub(crate) ticket: Box<dyn DirectTicket>,
}

/// Keeps a direct write in order with the queue's own writes of its key: it runs once the
/// queue's writes of the key in flight ended, and once it succeeded the queue never writes
/// an older write of the key after it. Dropped without [`written`](DirectTicket::written):
/// the direct write failed.
pub(crate) trait DirectTicket: Send {
    /// Waits until the queue's writes of the key in flight have ended.
    fn ready(&mut self) -> Pin<Box<dyn Future<Output = ()> + Send + '_>>;
    /// The direct write succeeded.
    fn written(self: Box<Self>);
}

/// Calls `writer` with `request` once; a panic in it is a failed attempt like an error, so
/// that one bad write never kills the worker that writes all the others.
pub(crate) async fn write_once<Svc, Req>(
    writer: Svc,
    request: Req,
) -> Result<Svc::Response, BoxError>
where
    Svc: tower_service::Service<Req>,
    Svc::Error: Into<BoxError>,
{
    use futures_util::FutureExt;
    use tower::ServiceExt;
    match std::panic::AssertUnwindSafe(writer.oneshot(request))
        .catch_unwind()
        .await
    {
        Ok(result) => result.map_err(Into::into),
        Err(_) => Err("the write-behind writer panicked".into()),
    }
}

/// Hands `letter` to `hook`; a panic in the hook is logged, and the worker goes on.
pub(crate) fn hand_dead_letter<Req, D: DeadLetterHook<Req>>(hook: &D, letter: DeadLetter<Req>) {
    let key = letter.key.clone();
    if std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| hook.dead_letter(letter))).is_err()
    {
        tracing::error!(key = %crate::metrics::KeyDigest(&key), "the dead-letter hook panicked: the write is lost");
    }
}

/// A write that failed [`max_attempts`](crate::CacheLayer::max_attempts) times and left the
/// queue: the dead-letter hook's input. Persist it, alert on it, replay it.
///
/// ```
/// use std::sync::{Arc, Mutex};
/// use tower_caching::{strategy::DeadLetter, Cache, CacheLayer};
///
/// #[derive(Clone)]
/// struct Update { id: String, value: u64 }
///
/// let parked = Arc::new(Mutex::new(Vec::new()));
/// let layer = CacheLayer::write_behind(Cache::<u64>::in_memory())
///     .key(|u: &Update| tower_caching::key::KeyBuilder::new().metrics(&u.id))
///     .value(|u: &Update| Some(u.value))
///     .max_attempts(5)
///     .on_dead_letter({
///         let parked = parked.clone();
///         move |letter: DeadLetter<Update>| parked.lock().unwrap().push(letter.request)
///     });
/// let writer = tower::service_fn(|_: Update| async { Ok::<_, std::convert::Infallible>(()) });
/// let service = tower_layer::Layer::layer(&layer, writer);
/// # let _ = service;
/// ```
#[derive(Debug)]
#[non_exhaustive]
pub struct DeadLetter<Req> {
    /// The key.
    pub key: Key,
    /// The request, as the writer last received it.
    pub request: Req,
    /// The writer's last error.
    pub error: BoxError,
    /// How many times the writer was called.
    pub attempts: u32,
}

/// What the writer receives a dead letter with. Implemented for closures
/// `Fn(DeadLetter<Req>)` and by [`LogDeadLetter`].
///
/// ```
/// use std::sync::atomic::{AtomicU64, Ordering};
/// use tower_caching::strategy::write_behind::{DeadLetterHook, LogDeadLetter};
/// use tower_caching::strategy::DeadLetter;
///
/// /// Counts abandoned writes, then logs them as the default hook does.
/// struct Counted(AtomicU64);
/// impl<Req> DeadLetterHook<Req> for Counted {
///     fn dead_letter(&self, letter: DeadLetter<Req>) {
///         self.0.fetch_add(1, Ordering::Relaxed);
///         LogDeadLetter.dead_letter(letter);
///     }
/// }
/// ```
pub trait DeadLetterHook<Req>: Send + Sync + 'static {
    /// Takes a write that will not be retried.
    fn dead_letter(&self, letter: DeadLetter<Req>);
}

impl<Req, F: Fn(DeadLetter<Req>) + Send + Sync + 'static> DeadLetterHook<Req> for F {
    fn dead_letter(&self, letter: DeadLetter<Req>) {
        self(letter)
    }
}

/// The default dead-letter hook: logs the key, attempts and error at error level. See
/// [`DeadLetterHook`] for an example.
#[derive(Clone, Copy, Debug, Default)]
pub struct LogDeadLetter;

impl<Req> DeadLetterHook<Req> for LogDeadLetter {
    fn dead_letter(&self, letter: DeadLetter<Req>) {
        tracing::error!(
            key = %crate::metrics::KeyDigest(&letter.key),
            attempts = letter.attempts,
            error = %letter.error,
            "write-behind write abandoned after its last attempt"
        );
    }
}

/// Where write-behind takes the value to cache from: a closure `Fn(&Req) -> Option<V>`, or
/// [`RequestValue`] (the default) when the request converts into the value.
///
/// ```
/// use tower_caching::strategy::write_behind::{RequestToValue, RequestValue};
///
/// let from_closure = |update: &(u32, u64)| Some(update.1);
/// assert_eq!(RequestToValue::<_, u64>::value(&from_closure, &(7, 42)), Some(42));
/// assert_eq!(RequestToValue::<u64, u64>::value(&RequestValue, &5), Some(5));
/// ```
pub trait RequestToValue<Req, V> {
    /// The value to cache for `request`; `None` invalidates the key instead.
    fn value(&self, request: &Req) -> Option<V>;
}

impl<Req, V, F: Fn(&Req) -> Option<V>> RequestToValue<Req, V> for F {
    fn value(&self, request: &Req) -> Option<V> {
        self(request)
    }
}

/// The default value source: `V: From<Req>` (so a request that is the value works as is).
/// See [`RequestToValue`] for an example.
#[derive(Clone, Copy, Debug, Default)]
pub struct RequestValue;

impl<Req: Clone, V: From<Req>> RequestToValue<Req, V> for RequestValue {
    fn value(&self, request: &Req) -> Option<V> {
        Some(V::from(request.clone()))
    }
}

/// The response a write-behind call answers with at once: a closure `Fn(&Req) -> Resp`, or
/// [`DefaultAck`] (the default), `Resp::default()`.
///
/// ```
/// use tower_caching::strategy::write_behind::{Acknowledge, DefaultAck};
///
/// assert_eq!(Acknowledge::<u8, u16>::acknowledge(&DefaultAck, &1), 0);
/// let accepted = |_: &u8| 202u16;
/// assert_eq!(accepted.acknowledge(&1), 202);
/// ```
pub trait Acknowledge<Req, Resp> {
    /// The response for a queued `request`.
    fn acknowledge(&self, request: &Req) -> Resp;
}

impl<Req, Resp, F: Fn(&Req) -> Resp> Acknowledge<Req, Resp> for F {
    fn acknowledge(&self, request: &Req) -> Resp {
        self(request)
    }
}

/// Answers queued writes with `Resp::default()`. See [`Acknowledge`] for an example.
#[derive(Clone, Copy, Debug, Default)]
pub struct DefaultAck;

impl<Req, Resp: Default> Acknowledge<Req, Resp> for DefaultAck {
    fn acknowledge(&self, _: &Req) -> Resp {
        Resp::default()
    }
}

impl<Req, V, St, C> CacheLayer<WriteBehind<Req, V, St, C>> {
    /// Write-behind around a writer service for requests `Req` (see the
    /// [module docs](crate::strategy::write_behind) for a complete example).
    ///
    /// ```
    /// use tower_caching::{key::Key, Cache, CacheLayer};
    ///
    /// // Requests that are the value itself: (id, counter).
    /// let layer = CacheLayer::write_behind(Cache::<(u32, u64)>::in_memory())
    ///     .key(|update: &(u32, u64)| Key::new(format!("counter:{}", update.0)).ok());
    /// let writer = tower::service_fn(|_: (u32, u64)| async { Ok::<_, std::convert::Infallible>(()) });
    /// let service = tower_layer::Layer::layer(&layer, writer);
    /// # let _ = service;
    /// ```
    pub fn write_behind(cache: Cache<V, St, C>) -> Self {
        CacheLayer::with_strategy(WriteBehind {
            cache,
            value: RequestValue,
            ack: DefaultAck,
            dead_letter: Arc::new(LogDeadLetter),
            settings: Settings::default(),
            queue: InMemoryQueue,
            _request: PhantomData,
        })
    }
}

impl<Req, V, St, C, F, A, D, Q, W, K, T>
    CacheLayer<WriteBehind<Req, V, St, C, F, A, D, Q, W>, K, T>
{
    /// Takes the value to cache from the request with `f` (`None` invalidates the key).
    ///
    /// ```
    /// use tower_caching::{key::Key, Cache, CacheLayer};
    ///
    /// #[derive(Clone)]
    /// struct Update { id: u32, lookups: u64 }
    /// let layer = CacheLayer::write_behind(Cache::<u64>::in_memory())
    ///     .key(|u: &Update| Key::new(format!("lookups:{}", u.id)).ok())
    ///     .value(|u: &Update| Some(u.lookups));
    /// let writer = tower::service_fn(|_: Update| async { Ok::<_, std::convert::Infallible>(()) });
    /// let service = tower_layer::Layer::layer(&layer, writer);
    /// # let _ = service;
    /// ```
    pub fn value<F2>(self, f: F2) -> CacheLayer<WriteBehind<Req, V, St, C, F2, A, D, Q, W>, K, T> {
        self.map_strategy(|s| WriteBehind {
            cache: s.cache,
            value: f,
            ack: s.ack,
            dead_letter: s.dead_letter,
            settings: s.settings,
            queue: s.queue,
            _request: PhantomData,
        })
    }

    /// Answers queued writes with `f(&request)` (e.g. an HTTP 202).
    ///
    /// ```
    /// use tower_caching::{Cache, CacheLayer};
    ///
    /// let layer = CacheLayer::write_behind(Cache::<u64>::in_memory())
    ///     .acknowledge(|_: &u64| "202 Accepted");
    /// let writer = tower::service_fn(|_: u64| async { Ok::<_, std::convert::Infallible>("200 OK") });
    /// let service = tower_layer::Layer::layer(&layer, writer);
    /// # let _ = service;
    /// ```
    pub fn acknowledge<A2>(
        self,
        f: A2,
    ) -> CacheLayer<WriteBehind<Req, V, St, C, F, A2, D, Q, W>, K, T> {
        self.map_strategy(|s| WriteBehind {
            cache: s.cache,
            value: s.value,
            ack: f,
            dead_letter: s.dead_letter,
            settings: s.settings,
            queue: s.queue,
            _request: PhantomData,
        })
    }

    /// Hands writes abandoned after their last attempt to `hook` (see [`DeadLetter`] for a
    /// complete example).
    ///
    /// ```
    /// use tower_caching::{strategy::DeadLetter, Cache, CacheLayer};
    ///
    /// let layer = CacheLayer::write_behind(Cache::<u64>::in_memory())
    ///     .on_dead_letter(|letter: DeadLetter<u64>| eprintln!("lost {}: {}", letter.key, letter.error));
    /// let writer = tower::service_fn(|_: u64| async { Ok::<_, std::convert::Infallible>(()) });
    /// let service = tower_layer::Layer::layer(&layer, writer);
    /// # let _ = service;
    /// ```
    pub fn on_dead_letter<D2>(
        self,
        hook: D2,
    ) -> CacheLayer<WriteBehind<Req, V, St, C, F, A, D2, Q, W>, K, T> {
        self.map_strategy(|s| WriteBehind {
            cache: s.cache,
            value: s.value,
            ack: s.ack,
            dead_letter: Arc::new(hook),
            settings: s.settings,
            queue: s.queue,
            _request: PhantomData,
        })
    }

    /// Queues writes in `queue` instead of in process: a [`StreamQueue`] keeps them in a
    /// Redis stream, so that they survive a crash of the process and any instance writes
    /// them. Requests are stored with the cache's codec, which must then encode them too
    /// (`Serialize` and `DeserializeOwned` requests for [`Json`](crate::codec::Json)).
    ///
    /// ```no_run
    /// use tower_caching::store::{RedisConfig, RedisStore};
    /// use tower_caching::{strategy::StreamQueue, Cache, CacheLayer};
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let store = RedisStore::connect(RedisConfig::from_env()?).await?;
    /// let layer = CacheLayer::write_behind(Cache::<u64>::in_memory())
    ///     .durable(StreamQueue::new(&store, "counters"));
    /// let writer = tower::service_fn(|_: u64| async { Ok::<_, std::convert::Infallible>(()) });
    /// let service = tower_layer::Layer::layer(&layer, writer);
    /// # let _ = service;
    /// # Ok(())
    /// # }
    /// ```
    pub fn durable<Q2>(
        self,
        queue: Q2,
    ) -> CacheLayer<WriteBehind<Req, V, St, C, F, A, D, Q2, W>, K, T> {
        self.map_strategy(|s| WriteBehind {
            cache: s.cache,
            value: s.value,
            ack: s.ack,
            dead_letter: s.dead_letter,
            settings: s.settings,
            queue,
            _request: PhantomData,
        })
    }

    /// Makes the writer a batch writer: a `Service<Vec<Req>>` called once per batch with
    /// all of its writes, in queue order, instead of once per write (see [`PerBatch`] for
    /// what its outcome means). With many distinct keys, one statement a batch instead of
    /// one a key. A write that skips the queue is a batch of one ([`BatchOfOne`]).
    ///
    /// ```
    /// use std::sync::{Arc, Mutex};
    /// use tower::ServiceExt;
    /// use tower_caching::{key::Key, Cache, CacheLayer};
    /// use tower_layer::Layer;
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let cache: Cache<u64> = Cache::in_memory();
    /// let calls = Arc::new(Mutex::new(Vec::new()));
    /// let batch_writer = tower::service_fn({
    ///     let calls = calls.clone();
    ///     move |rows: Vec<(u32, u64)>| {
    ///         calls.lock().unwrap().push(rows.len()); // INSERT .. VALUES (..), (..), ..
    ///         async { Ok::<_, std::convert::Infallible>(()) }
    ///     }
    /// });
    /// let service = CacheLayer::write_behind(cache.clone())
    ///     .key(|row: &(u32, u64)| Key::new(format!("counter:{}", row.0)).ok())
    ///     .value(|row: &(u32, u64)| Some(row.1))
    ///     .writes_batches()
    ///     .layer(batch_writer);
    /// for id in 0..3 {
    ///     service.clone().oneshot((id, 1)).await?;
    /// }
    /// assert_eq!(cache.flush_pending_writes().await?, 3);
    /// assert_eq!(*calls.lock().unwrap(), [3]); // one call for the three keys
    /// # Ok(())
    /// # }
    /// ```
    pub fn writes_batches(
        self,
    ) -> CacheLayer<WriteBehind<Req, V, St, C, F, A, D, Q, PerBatch>, K, T> {
        self.map_strategy(|s| WriteBehind {
            cache: s.cache,
            value: s.value,
            ack: s.ack,
            dead_letter: s.dead_letter,
            settings: s.settings,
            queue: s.queue,
            _request: PhantomData,
        })
    }

    /// How often queued writes are written (default 10 s, the original's
    /// `REDIS_WRITE_BEHIND_BATCH`).
    ///
    /// ```
    /// # use std::time::Duration;
    /// # use tower_caching::{Cache, CacheLayer};
    /// let layer = CacheLayer::write_behind(Cache::<u64>::in_memory())
    ///     .batch_interval(Duration::from_secs(1))
    ///     .max_batch(500)
    ///     .capacity(50_000)
    ///     .max_attempts(20)
    ///     .backoff(Duration::from_millis(200), Duration::from_secs(60));
    /// let writer = tower::service_fn(|_: u64| async { Ok::<_, std::convert::Infallible>(()) });
    /// let service = tower_layer::Layer::layer(&layer, writer);
    /// # let _ = service;
    /// ```
    pub fn batch_interval(mut self, interval: Duration) -> Self {
        self.strategy.settings.batch_interval = interval.max(Duration::from_millis(1));
        self
    }

    /// How many writes one batch holds, and how many waiting writes trigger a batch before
    /// the interval ends (default 100). See [`batch_interval`](CacheLayer::batch_interval)
    /// for an example.
    pub fn max_batch(mut self, max_batch: usize) -> Self {
        self.strategy.settings.max_batch = max_batch.max(1);
        self
    }

    /// How many writes may wait, at most (default 10 000). Past it, callers wait in
    /// `poll_ready`. See [`batch_interval`](CacheLayer::batch_interval) for an example.
    pub fn capacity(mut self, capacity: usize) -> Self {
        self.strategy.settings.capacity = capacity.max(1);
        self
    }

    /// How many times a write is tried before it is dead-lettered (default 10). See
    /// [`batch_interval`](CacheLayer::batch_interval) for an example.
    pub fn max_attempts(mut self, attempts: u32) -> Self {
        self.strategy.settings.max_attempts = attempts.max(1);
        self
    }

    /// The first retry delay and the cap of the exponential backoff (default 100 ms, 30 s).
    /// See [`batch_interval`](CacheLayer::batch_interval) for an example.
    pub fn backoff(mut self, base: Duration, max: Duration) -> Self {
        self.strategy.settings.backoff_base = base;
        self.strategy.settings.backoff_max = max.max(base);
        self
    }
}
