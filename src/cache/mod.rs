//! The typed [`Cache`] handle: get, set, delete, pattern delete, exists, the imperative
//! cache-aside [`Cache::get_or_load`], and the lifecycle calls
//! [`flush_pending_writes`](Cache::flush_pending_writes) and [`close`](Cache::close).
//!
//! A `Cache<V>` stores values of one type `V` in a [`Store`], framed with a small header
//! (when stored, until when fresh) and encoded with a [`Codec`]. It is cheap to clone; clones
//! share everything. Several caches of different value types may share one store.
//!
//! Layers that read and write **the same keys** must be built on one cache or on its
//! [`typed`](Cache::typed) views: a write voids the loads of its key in flight only in the
//! cache it goes through, and a load that read the row before the write would otherwise
//! store that older row after it.
//!
//! # Example
//!
//! ```
//! use std::time::Duration;
//! use serde::{Deserialize, Serialize};
//! use tower_caching::{key::KeyBuilder, Cache};
//!
//! #[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
//! struct Entry { id: String, owner_name: String }
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let cache: Cache<Entry> = Cache::in_memory();
//! let key = KeyBuilder::new().entry("e1");
//!
//! let entry = cache
//!     .get_or_load(&key, Some(Duration::from_secs(300)), || async {
//!         // The database, on a miss only.
//!         Ok::<_, std::convert::Infallible>(Entry { id: "e1".into(), owner_name: "Ana".into() })
//!     })
//!     .await?;
//! assert_eq!(cache.get(&key).await?, Some(entry));
//! assert!(cache.delete(&key).await?);
//! # Ok(())
//! # }
//! ```

use std::any::Any;
use std::fmt;
use std::future::Future;
use std::marker::PhantomData;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use bytes::Bytes;

use crate::codec::{Codec, Json};
use crate::engine::flight::Flights;
use crate::frame::{self, Header, Kind};
use crate::key::{Key, Pattern, Tag};
use crate::metrics::{Observer, Operation, Strategy};
use crate::store::{MemoryStore, Reframe, Store, StoreError, StoreValue};

mod builder;
mod error;
mod lookup;
mod pending;

pub use self::builder::CacheBuilder;
pub use self::error::CacheError;
pub(crate) use self::lookup::{Hit, Lookup};
pub(crate) use self::pending::PendingWrites;

/// What a [`Cache`] can hold: cloneable and shareable across threads. Implemented for every
/// such type; how a value becomes bytes is its cache's [`Codec`] (`Codec<V>`: serde for
/// [`Json`], prost for `Protobuf`).
///
/// ```
/// fn cacheable<V: tower_caching::Cacheable>() {}
/// cacheable::<Option<Vec<String>>>();
/// ```
pub trait Cacheable: Clone + Send + Sync + 'static {}

impl<V: Clone + Send + Sync + 'static> Cacheable for V {}

/// The default limit on an encoded value: 1 MiB.
///
/// ```
/// assert_eq!(tower_caching::cache::DEFAULT_MAX_VALUE_SIZE, 1024 * 1024);
/// ```
pub const DEFAULT_MAX_VALUE_SIZE: usize = 1 << 20;

/// Encoded values longer than this are compressed by default: 1 KiB. See
/// [`CacheBuilder::compress_above`].
///
/// ```
/// assert_eq!(tower_caching::cache::DEFAULT_COMPRESS_ABOVE, 1024);
/// ```
pub const DEFAULT_COMPRESS_ABOVE: usize = 1024;

/// A typed handle on a store. See the [module docs](self).
///
/// ```
/// # use tower_caching::{key::Key, Cache};
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), tower_caching::CacheError> {
/// let cache: Cache<String> = Cache::in_memory();
/// let key = Key::new("greeting")?;
/// cache.set(&key, &"olá".to_string(), None).await?;
/// assert_eq!(cache.get(&key).await?.as_deref(), Some("olá"));
/// # Ok(())
/// # }
/// ```
pub struct Cache<V, S = MemoryStore, C = Json> {
    shared: Arc<Shared<S, C>>,
    tags: Option<TagPolicy<V>>,
    /// What the frames this handle writes say stored them, and what it expects to read.
    kind: Kind,
    /// Frames this handle's values again, for a store that keeps only their decoded form.
    reframe: Arc<dyn Reframe>,
    _value: PhantomData<fn() -> V>,
}

/// Frames a value of `V` as [`Cache::encode_with`] does.
struct Reframer<V, C> {
    codec: C,
    compress_above: Option<usize>,
    _value: PhantomData<fn(V)>,
}

impl<V: Cacheable, C: Codec<V>> Reframe for Reframer<V, C> {
    fn reframe(&self, decoded: &(dyn Any + Send + Sync), header: Header) -> Bytes {
        decoded
            .downcast_ref::<V>()
            .and_then(|value| frame::encode(&self.codec, header, value, self.compress_above).ok())
            .map_or_else(Bytes::new, |encoded| encoded.bytes)
    }
}

impl<V: Cacheable, S, C: Codec<V>> Cache<V, S, C> {
    /// A handle on `shared` for values of `V`, with no tag policy.
    fn on(shared: Arc<Shared<S, C>>) -> Self {
        let reframe = Arc::new(Reframer::<V, C> {
            codec: shared.codec.clone(),
            compress_above: shared.compress_above,
            _value: PhantomData,
        });
        Cache {
            shared,
            tags: None,
            kind: Kind::Value,
            reframe,
            _value: PhantomData,
        }
    }
}

/// The tags an entry is filed under, from its key and value.
type TagPolicy<V> = Arc<dyn Fn(&Key, &V) -> Vec<Tag> + Send + Sync>;

pub(crate) struct Shared<S, C> {
    store: S,
    codec: C,
    max_value_size: usize,
    compress_above: Option<usize>,
    closed: AtomicBool,
    pub(crate) flights: Flights,
    pending: Mutex<Vec<Weak<dyn PendingWrites>>>,
    observer: Observer,
    pub(crate) hot: Option<crate::warm::Hot>,
}

impl<S, C> Shared<S, C> {
    pub(crate) fn store(&self) -> &S {
        &self.store
    }

    pub(crate) fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }
}

impl<V, S, C> Clone for Cache<V, S, C> {
    fn clone(&self) -> Self {
        Cache {
            shared: self.shared.clone(),
            tags: self.tags.clone(),
            kind: self.kind,
            reframe: self.reframe.clone(),
            _value: PhantomData,
        }
    }
}

impl<V, S: fmt::Debug, C: fmt::Debug> fmt::Debug for Cache<V, S, C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Cache")
            .field("value", &std::any::type_name::<V>())
            .field("store", &self.shared.store)
            .field("codec", &self.shared.codec)
            .field("max_value_size", &self.shared.max_value_size)
            .field("closed", &self.shared.closed.load(Ordering::Relaxed))
            .field("tagged", &self.tags.is_some())
            .finish()
    }
}

impl<V, S, C> Cache<V, S, C> {
    /// This handle, writing frames of `kind` and reading only those: the response layers'
    /// caches, so that a typed cache on the same key sees a clash instead of a miss.
    #[cfg_attr(not(feature = "http"), allow(dead_code))]
    pub(crate) fn storing(mut self, kind: Kind) -> Self {
        self.kind = kind;
        self
    }

    pub(crate) fn kind(&self) -> Kind {
        self.kind
    }
}

impl<V: Cacheable, S: Store, C> Cache<V, S, C> {
    /// The store.
    ///
    /// ```
    /// # use tower_caching::Cache;
    /// let cache: Cache<String> = Cache::in_memory();
    /// assert_eq!(cache.store().entry_count(), 0);
    /// ```
    pub fn store(&self) -> &S {
        &self.shared.store
    }

    /// The same cache viewed with another value type: it shares the store, codec, metrics,
    /// coalescing and write-behind queues. Reads through either see the other's queued
    /// write-behind writes, so give the reading side of a write-behind key a view of the
    /// writing side's cache (`Cache<Metrics>` writes, `Cache<Option<Metrics>>` reads).
    ///
    /// ```
    /// # use tower_caching::Cache;
    /// let counters: Cache<u64> = Cache::in_memory();
    /// let reads: Cache<Option<u64>> = counters.typed();
    /// # let _ = reads;
    /// ```
    pub fn typed<V2: Cacheable>(&self) -> Cache<V2, S, C>
    where
        C: Codec<V2>,
    {
        Cache::on(self.shared.clone())
    }

    /// Files every entry this cache stores — through [`Cache::set`] or any layer built on
    /// it — under the tags `tags(key, value)` returns, so that one
    /// [`invalidate_tag`](Cache::invalidate_tag) drops them all. Replaces any earlier
    /// policy; [`typed`](Cache::typed) views start without one.
    ///
    /// ```
    /// use serde::{Deserialize, Serialize};
    /// use tower_caching::{key::{KeyBuilder, Tag}, Cache};
    ///
    /// #[derive(Clone, Serialize, Deserialize)]
    /// struct Entry { id: String, ispb: String }
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let cache: Cache<Entry> = Cache::in_memory()
    ///     .tag_with(|_key, entry: &Entry| Tag::new(format!("ispb:{}", entry.ispb)).into_iter().collect());
    /// let keys = KeyBuilder::new();
    /// for id in ["e1", "e2"] {
    ///     let entry = Entry { id: id.into(), ispb: "12345678".into() };
    ///     cache.set(&keys.entry(id), &entry, None).await?;
    /// }
    /// assert_eq!(cache.invalidate_tag(&Tag::new("ispb:12345678")?).await?, 2);
    /// assert!(cache.get(&keys.entry("e1")).await?.is_none());
    /// # Ok(())
    /// # }
    /// ```
    pub fn tag_with(mut self, tags: impl Fn(&Key, &V) -> Vec<Tag> + Send + Sync + 'static) -> Self {
        self.tags = Some(Arc::new(tags));
        self
    }

    /// Removes every entry filed under `tag` (see [`Cache::tag_with`]), whatever its key,
    /// without scanning the keyspace; how many were removed. On a shared store every
    /// instance sees it at once; a [`TieredStore`](crate::store::TieredStore) also drops
    /// them from every instance's L1.
    ///
    /// ```
    /// # use tower_caching::{key::Tag, Cache};
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let cache: Cache<u8> = Cache::in_memory();
    /// assert_eq!(cache.invalidate_tag(&Tag::new("nothing")?).await?, 0);
    /// # Ok(())
    /// # }
    /// ```
    pub async fn invalidate_tag(&self, tag: &Tag) -> Result<u64, CacheError> {
        self.invalidate_tag_as(Strategy::Direct, tag).await
    }

    pub(crate) async fn invalidate_tag_as(
        &self,
        strategy: Strategy,
        tag: &Tag,
    ) -> Result<u64, CacheError> {
        self.check_open()?;
        self.shared.flights.supersede_all();
        self.observed(Operation::InvalidateTag, strategy, async {
            Ok(self.shared.store.invalidate_tag(tag).await?)
        })
        .await
    }

    /// The tags of `value` under `key`: none without a policy.
    pub(crate) fn tags_of(&self, key: &Key, value: &V) -> Vec<Tag> {
        self.tags
            .as_ref()
            .map_or_else(Vec::new, |tags| tags(key, value))
    }

    /// Stores a framed value, filed under `tags` when there are any.
    pub(crate) async fn put(
        &self,
        key: &Key,
        stored: StoreValue,
        ttl: Option<Duration>,
        tags: &[Tag],
    ) -> Result<(), StoreError> {
        if tags.is_empty() {
            self.shared.store.set(key, stored, ttl).await
        } else {
            self.shared.store.set_tagged(key, stored, ttl, tags).await
        }
    }

    /// Stores framed values: the untagged in one round trip, the tagged each with its tags.
    pub(crate) async fn put_many(
        &self,
        entries: Vec<(Key, StoreValue, Option<Duration>, Vec<Tag>)>,
    ) -> Result<(), StoreError> {
        let (tagged, untagged): (Vec<_>, Vec<_>) = entries
            .into_iter()
            .partition(|(_, _, _, tags)| !tags.is_empty());
        let untagged: Vec<_> = untagged
            .into_iter()
            .map(|(key, stored, ttl, _)| (key, stored, ttl))
            .collect();
        let untagged = async {
            if untagged.is_empty() {
                Ok(())
            } else {
                self.shared.store.set_many(untagged).await
            }
        };
        let tagged =
            futures_util::future::try_join_all(tagged.iter().map(|(key, stored, ttl, tags)| {
                self.shared
                    .store
                    .set_tagged(key, stored.clone(), *ttl, tags)
            }));
        let (untagged, tagged) = futures_util::future::join(untagged, tagged).await;
        untagged.and(tagged.map(|_| ()))
    }

    pub(crate) fn codec(&self) -> &C {
        &self.shared.codec
    }

    pub(crate) fn flights(&self) -> &Flights {
        &self.shared.flights
    }

    pub(crate) fn observer(&self) -> &Observer {
        &self.shared.observer
    }

    /// The hot-key tracking, if the cache has it.
    pub(crate) fn hot(&self) -> Option<&crate::warm::Hot> {
        self.shared.hot.as_ref()
    }

    /// Runs a store operation, timing it and counting its error.
    pub(crate) async fn observed<T>(
        &self,
        operation: Operation,
        strategy: Strategy,
        run: impl Future<Output = Result<T, CacheError>>,
    ) -> Result<T, CacheError> {
        let observer = self.observer();
        let started = observer.start();
        let result = run.await;
        observer.finish(operation, strategy, started);
        if let Err(error) = &result {
            observer.error(operation, error.kind());
        }
        result
    }

    fn check_open(&self) -> Result<(), CacheError> {
        if self.shared.closed.load(Ordering::Acquire) {
            Err(CacheError::Closed)
        } else {
            Ok(())
        }
    }

    /// Frames and encodes `value` for `key` and `ttl`.
    pub(crate) fn encode(&self, value: &V, ttl: Option<Duration>) -> Result<StoreValue, CacheError>
    where
        C: Codec<V>,
    {
        self.encode_with(value, Header::new(ttl))
    }

    pub(crate) fn encode_with(
        &self,
        value: &V,
        mut header: Header,
    ) -> Result<StoreValue, CacheError>
    where
        C: Codec<V>,
    {
        header.kind = self.kind;
        let encoded = frame::encode(
            &self.shared.codec,
            header,
            value,
            self.shared.compress_above,
        )?;
        // The limit is on the value as readers expand it, so that none is refused on read.
        if encoded.plain_len > self.shared.max_value_size {
            return Err(CacheError::ValueTooLarge {
                size: encoded.plain_len,
                max: self.shared.max_value_size,
            });
        }
        let stored = StoreValue::new(encoded.bytes);
        Ok(if self.shared.store.keeps_decoded() {
            // The encoding's length, compressed or not, is the guide to the decoded size.
            stored
                .with_decoded_of_size(Arc::new(value.clone()), encoded.plain_len)
                .reframed_by(self.reframe.clone())
        } else {
            stored
        })
    }

    /// Stores `value` under `key`; `ttl` of `None` never expires.
    ///
    /// ```
    /// # use std::time::Duration;
    /// # use tower_caching::{key::Key, Cache};
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let cache: Cache<String> = Cache::in_memory();
    /// cache.set(&Key::new("k")?, &"v".to_string(), Some(Duration::from_secs(60))).await?;
    /// # Ok(())
    /// # }
    /// ```
    pub async fn set(&self, key: &Key, value: &V, ttl: Option<Duration>) -> Result<(), CacheError>
    where
        C: Codec<V>,
    {
        self.set_as(Strategy::Direct, key, value, ttl).await
    }

    pub(crate) async fn set_as(
        &self,
        strategy: Strategy,
        key: &Key,
        value: &V,
        ttl: Option<Duration>,
    ) -> Result<(), CacheError>
    where
        C: Codec<V>,
    {
        self.check_open()?;
        self.shared.flights.supersede(key);
        self.observed(Operation::Set, strategy, async {
            let stored = self.encode(value, ttl)?;
            Ok(self
                .put(key, stored, ttl, &self.tags_of(key, value))
                .await?)
        })
        .await
    }

    /// Stores every `(key, value)` with one `ttl`, in one round trip.
    ///
    /// ```
    /// # use tower_caching::{key::Key, Cache};
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let cache: Cache<u8> = Cache::in_memory();
    /// cache.set_many(&[(Key::new("a")?, 1), (Key::new("b")?, 2)], None).await?;
    /// assert_eq!(cache.get(&Key::new("b")?).await?, Some(2));
    /// # Ok(())
    /// # }
    /// ```
    pub async fn set_many(
        &self,
        entries: &[(Key, V)],
        ttl: Option<Duration>,
    ) -> Result<(), CacheError>
    where
        C: Codec<V>,
    {
        self.check_open()?;
        let entries = entries
            .iter()
            .map(|(key, value)| {
                self.shared.flights.supersede(key);
                let stored = self.encode(value, ttl)?;
                Ok((key.clone(), stored, ttl, self.tags_of(key, value)))
            })
            .collect::<Result<Vec<_>, CacheError>>()?;
        self.observed(Operation::SetMany, Strategy::Direct, async {
            Ok(self.put_many(entries).await?)
        })
        .await
    }

    /// Removes `key`; whether it was there.
    ///
    /// ```
    /// # use tower_caching::{key::Key, Cache};
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let cache: Cache<u8> = Cache::in_memory();
    /// assert!(!cache.delete(&Key::new("nothing")?).await?);
    /// # Ok(())
    /// # }
    /// ```
    pub async fn delete(&self, key: &Key) -> Result<bool, CacheError> {
        self.delete_as(Strategy::Direct, key).await
    }

    pub(crate) async fn delete_as(
        &self,
        strategy: Strategy,
        key: &Key,
    ) -> Result<bool, CacheError> {
        self.check_open()?;
        self.shared.flights.supersede(key);
        self.observed(Operation::Delete, strategy, async {
            Ok(self.shared.store.delete(key).await?)
        })
        .await
    }

    /// Removes every key of `keys` in one round trip; how many were there.
    ///
    /// ```
    /// # use tower_caching::{key::Key, Cache};
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let cache: Cache<u8> = Cache::in_memory();
    /// let (a, b) = (Key::new("a")?, Key::new("b")?);
    /// cache.set(&a, &1, None).await?;
    /// assert_eq!(cache.delete_many(&[a, b]).await?, 1);
    /// # Ok(())
    /// # }
    /// ```
    pub async fn delete_many(&self, keys: &[Key]) -> Result<u64, CacheError> {
        self.delete_many_as(Strategy::Direct, keys).await
    }

    pub(crate) async fn delete_many_as(
        &self,
        strategy: Strategy,
        keys: &[Key],
    ) -> Result<u64, CacheError> {
        self.check_open()?;
        for key in keys {
            self.shared.flights.supersede(key);
        }
        self.observed(Operation::DeleteMany, strategy, async {
            Ok(self.shared.store.delete_many(keys).await?)
        })
        .await
    }

    /// Removes every key matching `pattern` (in the store, whatever its value type); how
    /// many were removed. Build patterns with [`Pattern::prefix`] or
    /// [`KeyBuilder::pattern`](crate::key::KeyBuilder::pattern) so that user input is
    /// matched literally.
    ///
    /// ```
    /// # use tower_caching::{key::{KeyBuilder, Pattern}, Cache};
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let cache: Cache<u8> = Cache::in_memory();
    /// let keys = KeyBuilder::new();
    /// cache.set(&keys.build("vsync", "1"), &1, None).await?;
    /// cache.set(&keys.build("vsync", "2"), &2, None).await?;
    /// assert_eq!(cache.delete_pattern(&keys.pattern("vsync")).await?, 2);
    /// # Ok(())
    /// # }
    /// ```
    pub async fn delete_pattern(&self, pattern: &Pattern) -> Result<u64, CacheError> {
        self.delete_pattern_as(Strategy::Direct, pattern).await
    }

    pub(crate) async fn delete_pattern_as(
        &self,
        strategy: Strategy,
        pattern: &Pattern,
    ) -> Result<u64, CacheError> {
        self.check_open()?;
        self.shared.flights.supersede_matching(pattern);
        self.observed(Operation::DeletePattern, strategy, async {
            Ok(self.shared.store.delete_pattern(pattern).await?)
        })
        .await
    }

    /// Whether `key` holds a value.
    ///
    /// ```
    /// # use tower_caching::{key::Key, Cache};
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let cache: Cache<u8> = Cache::in_memory();
    /// let key = Key::new("k")?;
    /// cache.set(&key, &1, None).await?;
    /// assert!(cache.exists(&key).await?);
    /// # Ok(())
    /// # }
    /// ```
    pub async fn exists(&self, key: &Key) -> Result<bool, CacheError> {
        self.check_open()?;
        self.observed(Operation::Exists, Strategy::Direct, async {
            Ok(self.shared.store.exists(key).await?)
        })
        .await
    }

    /// Whether [`Cache::close`] was called. See [`Cache::close`] for an example.
    pub fn is_closed(&self) -> bool {
        self.shared.is_closed()
    }
}
