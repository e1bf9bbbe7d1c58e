//! Warming a cache on startup, and the hot keys that make it worth it.
//!
//! [`Cache::warm`] loads a list (or [stream](Cache::warm_stream)) of keys with bounded
//! concurrency, logging its progress every few seconds and counting each key in the
//! `cache_warmed_keys_total{outcome}` metric; with a [budget](Warm::budget) it stops in
//! time for the service to become ready. Keys already cached cost one lookup (on a
//! [`TieredStore`](crate::store::TieredStore), that lookup copies the shared tier's value
//! into the process's own); the others are loaded once each, coalesced with any request
//! that misses them meanwhile.
//!
//! [`HotKeys`] tracks which keys a cache reads most and snapshots them to the store; a
//! restarted instance warms that snapshot with [`Cache::warm_hot_keys`], so that its first
//! requests for its hot set are hits.
//!
//! ```
//! use std::time::Duration;
//! use tower_caching::{key::Key, warm::HotKeys, Cache, MemoryStore, Store};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let store = MemoryStore::new(); // a shared Redis in production
//! let load = |key: Key| async move { Ok::<_, std::io::Error>(format!("row of {key}")) };
//!
//! // The first instance reads, and saves its hot keys when it closes.
//! let first: Cache<String> = Cache::builder(store.clone()).hot_keys(HotKeys::new("rows")).build();
//! first.get_or_load(&Key::new("row:1")?, None, || load(Key::new("row:1").unwrap())).await?;
//! first.close().await?;
//!
//! // The next one warms them before it answers.
//! store.delete(&Key::new("row:1")?).await?; // (as if the cache had been lost)
//! let next: Cache<String> = Cache::builder(store).hot_keys(HotKeys::new("rows")).build();
//! let report = next
//!     .warm_hot_keys(Some(Duration::from_secs(300)), load)
//!     .budget(Duration::from_secs(5))
//!     .await;
//! assert_eq!(report.loaded, 1);
//! assert_eq!(next.get(&Key::new("row:1")?).await?.as_deref(), Some("row of row:1"));
//! # Ok(())
//! # }
//! ```

use std::fmt;
use std::future::{Future, IntoFuture};
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use futures_util::stream::{self, BoxStream, StreamExt};

use crate::cache::{Cache, CacheError, Cacheable, Shared};
use crate::codec::{Codec, CodecError};
use crate::engine::{FutureLoad, Outcome, ReadFuture};
use crate::key::Key;
use crate::store::{Store, StoreError, StoreValue};

mod hot;

pub use self::hot::HotKeys;
use self::hot::Snapshot;
pub(crate) use self::hot::Tracker;

/// A cache's hot-key tracking: its settings and its counts.
pub(crate) struct Hot {
    pub(crate) config: HotKeys,
    pub(crate) tracker: Tracker,
}

impl Hot {
    pub(crate) fn new(config: HotKeys) -> Self {
        Hot {
            tracker: config.tracker(),
            config,
        }
    }
}

/// What a warm-up did.
///
/// ```
/// use tower_caching::{key::Key, Cache};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let cache: Cache<u32> = Cache::in_memory();
/// cache.set(&Key::new("n:1")?, &1, None).await?;
/// let keys = vec![Key::new("n:1")?, Key::new("n:2")?, Key::new("n:bad")?];
/// let report = cache
///     .warm(keys, None, |key: Key| async move {
///         key.as_str()[2..].parse::<u32>().map_err(|_| "not a number")
///     })
///     .await;
/// assert_eq!((report.cached, report.loaded, report.failed), (1, 1, 1));
/// assert!(!report.stopped_at_budget);
/// # Ok(())
/// # }
/// ```
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct WarmReport {
    /// Keys that were cached already.
    pub cached: u64,
    /// Keys loaded and cached.
    pub loaded: u64,
    /// Keys whose load failed or panicked (nothing cached for them).
    pub failed: u64,
    /// Whether the budget ran out before every key was warmed: the keys not reached were
    /// left alone; loads already started finish and are cached.
    pub stopped_at_budget: bool,
    /// How long it took.
    pub elapsed: Duration,
}

impl WarmReport {
    /// How many keys were warmed, whatever the outcome. See [`WarmReport`] for an example.
    pub fn done(&self) -> u64 {
        self.cached + self.loaded + self.failed
    }
}

/// Where a warm-up takes its keys from.
enum Source {
    Keys {
        keys: BoxStream<'static, Key>,
        total: Option<usize>,
    },
    /// The hot-key snapshot in the store.
    Snapshot,
}

/// A warm-up, configured by its builder methods and run by awaiting it (see
/// [`Cache::warm`]). Dropping it before it ends cancels it: no further key is started, and
/// the loads already started finish and are cached.
#[must_use = "a warm-up does nothing until it is awaited"]
pub struct Warm<V, S, C, F> {
    cache: Cache<V, S, C>,
    source: Source,
    ttl: Option<Duration>,
    loader: F,
    concurrency: usize,
    budget: Option<Duration>,
    progress_every: Duration,
}

impl<V, S, C, F> fmt::Debug for Warm<V, S, C, F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Warm")
            .field("ttl", &self.ttl)
            .field("concurrency", &self.concurrency)
            .field("budget", &self.budget)
            .field("progress_every", &self.progress_every)
            .finish_non_exhaustive()
    }
}

impl<V, S, C, F> Warm<V, S, C, F> {
    /// How many keys load at once (default 16).
    ///
    /// ```
    /// # use tower_caching::{key::Key, Cache};
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// let cache: Cache<u32> = Cache::in_memory();
    /// let keys = (0..100).map(|i| Key::new(format!("n:{i}")).unwrap());
    /// let report = cache
    ///     .warm(keys, None, |_key: Key| async { Ok::<_, std::io::Error>(1) })
    ///     .concurrency(4)
    ///     .await;
    /// assert_eq!(report.loaded, 100);
    /// # }
    /// ```
    pub fn concurrency(mut self, loads: usize) -> Self {
        self.concurrency = loads.max(1);
        self
    }

    /// Stops after `budget`, so that warming never holds back readiness longer than that;
    /// [`WarmReport::stopped_at_budget`] says whether it did. To warm on in the background
    /// instead, spawn the warm-up and wait for it at most so long
    /// (`tokio::time::timeout(budget, &mut handle)`).
    ///
    /// ```
    /// use std::time::Duration;
    /// # use tower_caching::{key::Key, Cache};
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// let cache: Cache<u32> = Cache::in_memory();
    /// let keys = (0..100).map(|i| Key::new(format!("n:{i}")).unwrap());
    /// let slow = |_key: Key| async {
    ///     tokio::time::sleep(Duration::from_secs(1)).await;
    ///     Ok::<_, std::io::Error>(1)
    /// };
    /// let report = cache.warm(keys, None, slow).budget(Duration::from_millis(50)).await;
    /// assert!(report.stopped_at_budget);
    /// assert!(report.elapsed < Duration::from_secs(1));
    /// # }
    /// ```
    pub fn budget(mut self, budget: Duration) -> Self {
        self.budget = Some(budget);
        self
    }

    /// How often a progress line is logged (`tracing`, level info; default every 5 s). A
    /// last line says how it ended. See [`Cache::warm`].
    pub fn progress_every(mut self, every: Duration) -> Self {
        self.progress_every = every.max(Duration::from_millis(10));
        self
    }
}

impl<V, S, C, F, Fut, E> IntoFuture for Warm<V, S, C, F>
where
    V: Cacheable,
    S: Store,
    C: Codec<V>,
    F: Fn(Key) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<V, E>> + Send + 'static,
    E: Send + Sync + 'static,
{
    type Output = WarmReport;
    type IntoFuture = Pin<Box<dyn Future<Output = WarmReport> + Send>>;

    fn into_future(self) -> Self::IntoFuture {
        Box::pin(self.run())
    }
}

impl<V, S, C, F, Fut, E> Warm<V, S, C, F>
where
    V: Cacheable,
    S: Store,
    C: Codec<V>,
    F: Fn(Key) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<V, E>> + Send + 'static,
    E: Send + Sync + 'static,
{
    async fn run(self) -> WarmReport {
        let started = Instant::now();
        let (keys, total) = match self.source {
            Source::Keys { keys, total } => (keys, total),
            Source::Snapshot => match self.cache.saved_hot_keys().await {
                Ok(keys) => {
                    let total = keys.len();
                    (stream::iter(keys).boxed(), Some(total))
                }
                Err(error) => {
                    tracing::warn!(%error, "no hot-key snapshot to warm from");
                    (stream::empty().boxed(), Some(0))
                }
            },
        };
        let cache = self.cache;
        let loader = Arc::new(self.loader);
        let ttl = self.ttl;
        let mut warming = keys
            .map(|key| {
                let (cache, loader) = (cache.clone(), loader.clone());
                async move {
                    let load = FutureLoad::new(loader(key.clone()), ttl);
                    ReadFuture::warming(cache, key, load).await
                }
            })
            .buffer_unordered(self.concurrency);
        let deadline = self
            .budget
            .map(|budget| tokio::time::Instant::now() + budget);
        let out_of_time = async {
            match deadline {
                Some(deadline) => tokio::time::sleep_until(deadline).await,
                None => std::future::pending().await,
            }
        };
        tokio::pin!(out_of_time);
        let mut progress = tokio::time::interval(self.progress_every);
        progress.tick().await;
        let mut report = WarmReport::default();
        loop {
            tokio::select! {
                next = warming.next() => match next {
                    Some(outcome) => {
                        let label = match outcome {
                            Outcome::Hit(_) | Outcome::Stale(_) | Outcome::Pending(_) => {
                                report.cached += 1;
                                "cached"
                            }
                            Outcome::Loaded(_) => {
                                report.loaded += 1;
                                "loaded"
                            }
                            _ => {
                                report.failed += 1;
                                "failed"
                            }
                        };
                        cache.observer().warmed(label);
                    }
                    None => break,
                },
                () = &mut out_of_time => {
                    report.stopped_at_budget = true;
                    break;
                }
                _ = progress.tick() => log_progress(&report, total, started, "warming the cache"),
            }
        }
        report.elapsed = started.elapsed();
        let end = if report.stopped_at_budget {
            "cache warm-up stopped at its budget"
        } else {
            "cache warmed"
        };
        log_progress(&report, total, started, end);
        report
    }
}

fn log_progress(report: &WarmReport, total: Option<usize>, started: Instant, message: &str) {
    let seconds = started.elapsed().as_secs_f64();
    tracing::info!(
        done = report.done(),
        total,
        cached = report.cached,
        loaded = report.loaded,
        failed = report.failed,
        keys_per_second = (report.done() as f64 / seconds.max(1e-3)) as u64,
        "{message}"
    );
}

impl<V: Cacheable, S: Store, C: Codec<V>> Cache<V, S, C> {
    /// Warms `keys`: each key not cached is loaded with `loader` and cached for `ttl`, 16
    /// at a time (see [`Warm::concurrency`]), until all are done or the
    /// [budget](Warm::budget) runs out. Await the returned [`Warm`] for its [`WarmReport`].
    ///
    /// A load coalesces with requests missing the same key meanwhile, a failed or panicking
    /// load only counts as failed, and a key someone writes while it loads keeps the
    /// written value. Progress is logged every 5 s and counted in
    /// `cache_warmed_keys_total{outcome="cached"|"loaded"|"failed"}`.
    ///
    /// ```
    /// use std::time::Duration;
    /// use tower_caching::{key::KeyBuilder, Key, Cache};
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// let cache: Cache<String> = Cache::in_memory();
    /// let keys = KeyBuilder::new();
    /// let ids = ["e1", "e2", "e3"];
    /// let report = cache
    ///     .warm(ids.map(|id| keys.entry(id)), Some(Duration::from_secs(300)), |key: Key| async move {
    ///         Ok::<_, std::io::Error>(format!("loaded {key}"))
    ///     })
    ///     .await;
    /// assert_eq!(report.loaded, 3);
    /// # }
    /// ```
    pub fn warm<I, F>(&self, keys: I, ttl: Option<Duration>, loader: F) -> Warm<V, S, C, F>
    where
        I: IntoIterator<Item = Key>,
        I::IntoIter: Send + 'static,
    {
        let keys = keys.into_iter();
        let total = match keys.size_hint() {
            (low, Some(high)) if low == high => Some(low),
            _ => None,
        };
        self.warm_from(
            Source::Keys {
                keys: stream::iter(keys).boxed(),
                total,
            },
            ttl,
            loader,
        )
    }

    /// [`Cache::warm`] from a stream of keys (a database cursor, a file read as it goes).
    ///
    /// ```
    /// use futures_util::stream;
    /// use tower_caching::{Key, Cache};
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// let cache: Cache<u32> = Cache::in_memory();
    /// let keys = stream::iter((0..10).map(|i| Key::new(format!("n:{i}")).unwrap()));
    /// let report = cache
    ///     .warm_stream(keys, None, |_key: Key| async { Ok::<_, std::io::Error>(1) })
    ///     .await;
    /// assert_eq!(report.loaded, 10);
    /// # }
    /// ```
    pub fn warm_stream<K, F>(&self, keys: K, ttl: Option<Duration>, loader: F) -> Warm<V, S, C, F>
    where
        K: futures_util::Stream<Item = Key> + Send + 'static,
    {
        self.warm_from(
            Source::Keys {
                keys: keys.boxed(),
                total: None,
            },
            ttl,
            loader,
        )
    }

    /// [`Cache::warm`] of the hot keys a [`HotKeys`] snapshot saved (by this instance or
    /// another of the same service), hottest first. No snapshot, or a cache without
    /// [`CacheBuilder::hot_keys`](crate::CacheBuilder::hot_keys), warms nothing. See the
    /// [module docs](self) for an example.
    pub fn warm_hot_keys<F>(&self, ttl: Option<Duration>, loader: F) -> Warm<V, S, C, F> {
        self.warm_from(Source::Snapshot, ttl, loader)
    }

    fn warm_from<F>(&self, source: Source, ttl: Option<Duration>, loader: F) -> Warm<V, S, C, F> {
        Warm {
            cache: self.clone(),
            source,
            ttl,
            loader,
            concurrency: 16,
            budget: None,
            progress_every: Duration::from_secs(5),
        }
    }
}

impl<V: Cacheable, S: Store, C> Cache<V, S, C> {
    /// The keys this cache reads most, hottest first (empty without
    /// [`CacheBuilder::hot_keys`](crate::CacheBuilder::hot_keys)).
    ///
    /// ```
    /// use tower_caching::{key::Key, warm::HotKeys, Cache, MemoryStore};
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let cache: Cache<u32> = Cache::builder(MemoryStore::new()).hot_keys(HotKeys::new("n")).build();
    /// let (hot, cold) = (Key::new("n:hot")?, Key::new("n:cold")?);
    /// for _ in 0..3 {
    ///     cache.get_or_load(&hot, None, || async { Ok::<_, std::io::Error>(1) }).await?;
    /// }
    /// cache.get_or_load(&cold, None, || async { Ok::<_, std::io::Error>(2) }).await?;
    /// assert_eq!(cache.hot_keys(), [hot, cold]);
    /// # Ok(())
    /// # }
    /// ```
    pub fn hot_keys(&self) -> Vec<Key> {
        self.hot()
            .map_or_else(Vec::new, |hot| hot.tracker.hottest())
    }

    /// Saves the hot keys to the store now (also done on [`Cache::close`] and every
    /// [`HotKeys::snapshot_every`]); returns how many. With nothing read yet the snapshot
    /// already there is kept, so that an instance stopped before its first request does not
    /// erase the hot set of the one before.
    ///
    /// ```
    /// use tower_caching::{key::Key, warm::HotKeys, Cache, MemoryStore};
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let cache: Cache<u32> = Cache::builder(MemoryStore::new()).hot_keys(HotKeys::new("n")).build();
    /// assert_eq!(cache.save_hot_keys().await?, 0);
    /// cache.get_or_load(&Key::new("n:1")?, None, || async { Ok::<_, std::io::Error>(1) }).await?;
    /// assert_eq!(cache.save_hot_keys().await?, 1);
    /// assert_eq!(cache.saved_hot_keys().await?, [Key::new("n:1")?]);
    /// # Ok(())
    /// # }
    /// ```
    pub async fn save_hot_keys(&self) -> Result<usize, CacheError> {
        match self.hot() {
            Some(hot) => save(self.store(), hot).await,
            None => Ok(0),
        }
    }

    /// The hot keys the last snapshot saved, hottest first; keys in it that do not
    /// validate are skipped, and at most [`HotKeys::top`] are read. A snapshot that is not
    /// one is [`CacheError::Decode`]. See [`Cache::save_hot_keys`] for an example.
    pub async fn saved_hot_keys(&self) -> Result<Vec<Key>, CacheError> {
        let Some(hot) = self.hot() else {
            return Ok(Vec::new());
        };
        let bytes = match hot.config.snapshot_file() {
            Some(path) => match read_file(path.to_owned(), hot.config.snapshot_limit()).await? {
                Some(bytes) => bytes,
                None => return Ok(Vec::new()),
            },
            None => match self.store().get(&hot.config.snapshot_key()).await? {
                Some(stored) => stored.bytes().clone(),
                None => return Ok(Vec::new()),
            },
        };
        if bytes.len() > hot.config.snapshot_limit() {
            return Err(CacheError::ValueTooLarge {
                size: bytes.len(),
                max: hot.config.snapshot_limit(),
            });
        }
        let snapshot: Snapshot = serde_json::from_slice(&bytes)
            .map_err(|e| CacheError::Decode(CodecError::new("hot-key snapshot", e)))?;
        Ok(snapshot
            .keys
            .into_iter()
            .filter_map(|key| Key::new(key).ok())
            .take(hot.config.limit())
            .collect())
    }
}

async fn save<S: Store>(store: &S, hot: &Hot) -> Result<usize, CacheError> {
    let keys = hot.tracker.hottest();
    if keys.is_empty() {
        return Ok(0);
    }
    let snapshot = Snapshot {
        version: 1,
        keys: keys.iter().map(|key| key.as_str().to_owned()).collect(),
    };
    let bytes = serde_json::to_vec(&snapshot)
        .map_err(|e| CacheError::Encode(CodecError::new("hot-key snapshot", e)))?;
    match hot.config.snapshot_file() {
        Some(path) => write_file(path.to_owned(), bytes).await?,
        None => {
            store
                .set(
                    &hot.config.snapshot_key(),
                    StoreValue::from(bytes),
                    Some(hot.config.ttl()),
                )
                .await?
        }
    }
    Ok(keys.len())
}

fn file_error(operation: &'static str, error: std::io::Error) -> CacheError {
    CacheError::Store(StoreError::Backend {
        operation,
        source: Box::new(error),
    })
}

/// Replaces the file at `path` with `bytes`: written aside, then renamed over it.
async fn write_file(path: PathBuf, bytes: Vec<u8>) -> Result<(), CacheError> {
    let write = move || -> std::io::Result<()> {
        let mut aside = path.clone().into_os_string();
        aside.push(format!(".{}.tmp", std::process::id()));
        let aside = PathBuf::from(aside);
        std::fs::write(&aside, &bytes)?;
        std::fs::rename(&aside, &path)
    };
    tokio::task::spawn_blocking(write)
        .await
        .map_err(|e| file_error("save_hot_keys", std::io::Error::other(e)))?
        .map_err(|e| file_error("save_hot_keys", e))
}

/// The file at `path`, at most `limit + 1` bytes of it; `None` if there is none.
async fn read_file(path: PathBuf, limit: usize) -> Result<Option<bytes::Bytes>, CacheError> {
    let read = move || -> std::io::Result<Option<Vec<u8>>> {
        use std::io::Read;
        let file = match std::fs::File::open(&path) {
            Ok(file) => file,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e),
        };
        let mut bytes = Vec::new();
        file.take(limit as u64 + 1).read_to_end(&mut bytes)?;
        Ok(Some(bytes))
    };
    tokio::task::spawn_blocking(read)
        .await
        .map_err(|e| file_error("saved_hot_keys", std::io::Error::other(e)))?
        .map(|bytes| bytes.map(bytes::Bytes::from))
        .map_err(|e| file_error("saved_hot_keys", e))
}

/// Saves the snapshot every interval until the cache is dropped or closed.
pub(crate) fn spawn_snapshots<S: Store, C: Send + Sync + 'static>(shared: &Arc<Shared<S, C>>) {
    let Some(every) = shared.hot.as_ref().and_then(|hot| hot.config.interval()) else {
        return;
    };
    let Ok(runtime) = tokio::runtime::Handle::try_current() else {
        tracing::warn!("no Tokio runtime: hot keys are saved only on close");
        return;
    };
    let shared: Weak<Shared<S, C>> = Arc::downgrade(shared);
    runtime.spawn(async move {
        let mut tick = tokio::time::interval(every);
        tick.tick().await;
        loop {
            tick.tick().await;
            let Some(shared) = shared.upgrade() else {
                return;
            };
            if shared.is_closed() {
                return;
            }
            let hot = shared.hot.as_ref().expect("hot keys are tracked");
            if let Err(error) = save(shared.store(), hot).await {
                tracing::warn!(%error, "cannot save the hot-key snapshot");
            }
        }
    });
}
