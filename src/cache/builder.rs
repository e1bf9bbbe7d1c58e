use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};

use super::{Cache, Cacheable, DEFAULT_COMPRESS_ABOVE, DEFAULT_MAX_VALUE_SIZE, Shared};
use crate::codec::{Codec, Json};
use crate::engine::flight::Flights;
use crate::metrics::Observer;
use crate::store::{MemoryStore, Store};
use crate::warm::{Hot, HotKeys};

/// Builds a [`Cache`]: choose the codec, the value size limit and when to compress.
///
/// ```
/// use tower_caching::{store::MemoryStore, Cache};
///
/// let cache: Cache<String> = Cache::builder(MemoryStore::new())
///     .max_value_size(64 * 1024)
///     .build();
/// # let _ = cache;
/// ```
#[derive(Debug, Clone)]
pub struct CacheBuilder<S, C = Json> {
    store: S,
    codec: C,
    max_value_size: usize,
    compress_above: Option<usize>,
    hot_keys: Option<HotKeys>,
    #[cfg(feature = "metrics")]
    metrics: Option<crate::metrics::Metrics>,
}

impl<S: Store, C> CacheBuilder<S, C> {
    /// Encodes values with `codec` instead of JSON.
    ///
    /// ```
    /// # #[cfg(feature = "msgpack")] {
    /// use tower_caching::{codec::MsgPack, Cache, MemoryStore};
    /// let cache: Cache<String, MemoryStore, MsgPack> =
    ///     Cache::builder(MemoryStore::new()).codec(MsgPack).build();
    /// # let _ = cache;
    /// # }
    /// ```
    pub fn codec<C2>(self, codec: C2) -> CacheBuilder<S, C2> {
        CacheBuilder {
            store: self.store,
            codec,
            max_value_size: self.max_value_size,
            compress_above: self.compress_above,
            hot_keys: self.hot_keys,
            #[cfg(feature = "metrics")]
            metrics: self.metrics,
        }
    }

    /// Records hits, misses, errors and latencies into `metrics` (see
    /// [`metrics`](crate::metrics)). Several caches may share one [`Metrics`].
    ///
    /// [`Metrics`]: crate::metrics::Metrics
    ///
    /// ```
    /// use tower_caching::{metrics::Metrics, Cache, MemoryStore};
    ///
    /// let metrics = Metrics::builder().register(&prometheus::Registry::new())?;
    /// let names: Cache<String> = Cache::builder(MemoryStore::new()).metrics(metrics.clone()).build();
    /// let counts: Cache<u64> = Cache::builder(MemoryStore::new()).metrics(metrics).build();
    /// # let _ = (names, counts);
    /// # Ok::<(), prometheus::Error>(())
    /// ```
    #[cfg(feature = "metrics")]
    #[cfg_attr(docsrs, doc(cfg(feature = "metrics")))]
    pub fn metrics(mut self, metrics: crate::metrics::Metrics) -> Self {
        self.metrics = Some(metrics);
        self
    }

    /// Refuses to cache values whose encoding is larger than `bytes` (default
    /// [`DEFAULT_MAX_VALUE_SIZE`]). [`Cache::set`] returns [`CacheError::ValueTooLarge`](super::CacheError::ValueTooLarge); the
    /// layers skip caching such a value and serve it. See [`CacheError`](super::CacheError) for an example.
    pub fn max_value_size(mut self, bytes: usize) -> Self {
        self.max_value_size = bytes;
        self
    }

    /// Compresses (LZ4) a value whose encoding is longer than `bytes` — default
    /// [`DEFAULT_COMPRESS_ABOVE`], 1 KiB — when that saves at least a tenth of it. Each
    /// stored value says whether it is compressed, so values written with another
    /// threshold, or none, still read. The size limit applies to the value uncompressed, and
    /// a compressed value claiming to expand past it is refused unexpanded.
    ///
    /// ```
    /// use tower_caching::{key::Key, store::{MemoryStore, Store}, Cache};
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let store = MemoryStore::new();
    /// let cache: Cache<String> = Cache::builder(store.clone()).compress_above(256).build();
    /// let key = Key::new("page")?;
    /// cache.set(&key, &"a line of text\n".repeat(100), None).await?;
    /// let stored = store.get(&key).await?.unwrap();
    /// assert!(stored.len() < 200, "{} bytes", stored.len()); // 1,600 bytes of JSON
    /// assert_eq!(cache.get(&key).await?.unwrap().len(), 1_500);
    /// # Ok(())
    /// # }
    /// ```
    pub fn compress_above(mut self, bytes: usize) -> Self {
        self.compress_above = Some(bytes);
        self
    }

    /// Stores every value uncompressed (values stored compressed still read).
    ///
    /// ```
    /// use tower_caching::{store::MemoryStore, Cache};
    /// let cache: Cache<String> = Cache::builder(MemoryStore::new()).no_compression().build();
    /// # let _ = cache;
    /// ```
    pub fn no_compression(mut self) -> Self {
        self.compress_above = None;
        self
    }

    /// Tracks the keys this cache reads most and snapshots them to the store, for a
    /// starting instance to [warm](Cache::warm_hot_keys) (see [`HotKeys`]). With a
    /// snapshot interval, `build` must run within a Tokio runtime to start the task that
    /// saves it.
    ///
    /// ```
    /// use tower_caching::{warm::HotKeys, Cache, MemoryStore};
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// let cache: Cache<String> = Cache::builder(MemoryStore::new())
    ///     .hot_keys(HotKeys::new("entries").top(500))
    ///     .build();
    /// assert!(cache.hot_keys().is_empty());
    /// # }
    /// ```
    pub fn hot_keys(mut self, hot_keys: HotKeys) -> Self {
        self.hot_keys = Some(hot_keys);
        self
    }

    /// The cache. See [`CacheBuilder`] for an example.
    pub fn build<V: Cacheable>(self) -> Cache<V, S, C>
    where
        C: Codec<V>,
    {
        let shared = Arc::new(Shared {
            store: self.store,
            codec: self.codec,
            max_value_size: self.max_value_size,
            compress_above: self.compress_above,
            closed: AtomicBool::new(false),
            flights: Flights::default(),
            pending: Mutex::new(Vec::new()),
            #[cfg(feature = "metrics")]
            observer: Observer::new(self.metrics),
            #[cfg(not(feature = "metrics"))]
            observer: Observer::default(),
            hot: self.hot_keys.map(Hot::new),
        });
        crate::warm::spawn_snapshots(&shared);
        Cache::on(shared)
    }
}

impl<V: Cacheable> Cache<V>
where
    Json: Codec<V>,
{
    /// A cache on a new [`MemoryStore`] with the default bound, encoding with JSON.
    ///
    /// ```
    /// # use tower_caching::Cache;
    /// let cache: Cache<String> = Cache::in_memory();
    /// # let _ = cache;
    /// ```
    pub fn in_memory() -> Self {
        Cache::builder(MemoryStore::new()).build()
    }
}

impl<V: Cacheable, S: Store> Cache<V, S>
where
    Json: Codec<V>,
{
    /// A cache on `store`, encoding with JSON.
    ///
    /// ```
    /// use tower_caching::{store::MemoryStore, Cache};
    /// let store = MemoryStore::new();
    /// let names: Cache<String> = Cache::new(store.clone());
    /// let counts: Cache<u64> = Cache::new(store); // same store, another type
    /// # let _ = (names, counts);
    /// ```
    pub fn new(store: S) -> Self {
        Cache::builder(store).build()
    }
}

impl<S: Store> Cache<(), S> {
    /// A builder for a cache on `store`. See [`CacheBuilder`] for an example.
    pub fn builder(store: S) -> CacheBuilder<S> {
        CacheBuilder {
            store,
            codec: Json,
            max_value_size: DEFAULT_MAX_VALUE_SIZE,
            compress_above: Some(DEFAULT_COMPRESS_ABOVE),
            hot_keys: None,
            #[cfg(feature = "metrics")]
            metrics: None,
        }
    }
}
