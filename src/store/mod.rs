//! Stores: where cached bytes live.
//!
//! [`Store`] is one trait over raw bytes. [`MemoryStore`] (moka, in process) is the embedded
//! default; [`RedisStore`] (feature `redis`) keeps values in Redis behind one auto-reconnecting
//! multiplexed connection.
//!
//! A store never interprets values. The typed [`Cache`](crate::Cache) handle frames and
//! encodes them, and may attach the decoded value to a [`StoreValue`] so that an in-process
//! store can hand it back without decoding (the in-memory fast path).
//!
//! # Example
//!
//! ```
//! use std::time::Duration;
//! use tower_caching::key::{Key, Pattern};
//! use tower_caching::store::{MemoryStore, Store, StoreValue};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let store = MemoryStore::new();
//! let key = Key::new("entry:1")?;
//! store.set(&key, StoreValue::from_static(b"bytes"), Some(Duration::from_secs(60))).await?;
//! assert_eq!(store.get(&key).await?.unwrap().bytes().as_ref(), b"bytes");
//! assert_eq!(store.delete_pattern(&Pattern::prefix("entry:")).await?, 1);
//! assert!(!store.exists(&key).await?);
//! # Ok(())
//! # }
//! ```

use std::any::Any;
use std::fmt;
use std::future::Future;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use bytes::Bytes;

use crate::frame;
use crate::key::{Key, Pattern, Tag};

pub(crate) mod breaker;
#[cfg(feature = "cluster")]
mod cluster;
#[cfg(feature = "redis")]
pub(crate) mod commands;
pub(crate) mod lease;
mod memory;
#[cfg(feature = "redis")]
mod redis;
#[cfg(feature = "redis")]
mod tiered;

pub use self::breaker::{BreakerGet, CircuitBreaker, CircuitBreakerBuilder};
#[cfg(feature = "cluster")]
#[cfg_attr(docsrs, doc(cfg(feature = "cluster")))]
pub use self::cluster::{RedisClusterConfig, RedisClusterStore};
pub use self::lease::SharedLeases;
pub use self::memory::{MemoryStore, MemoryStoreBuilder};
#[cfg(feature = "redis")]
#[cfg_attr(docsrs, doc(cfg(feature = "redis")))]
pub use self::redis::{ConfigError, RedisConfig, RedisConnection, RedisStore, SentinelConfig};
#[cfg(feature = "redis")]
#[cfg_attr(docsrs, doc(cfg(feature = "redis")))]
pub use self::tiered::{Coherence, DEFAULT_CHANNEL, TieredGet, TieredStore, Tracking};

/// A value as a store keeps it: bytes, plus an optional decoded form that only in-process
/// stores keep.
///
/// Cloning is cheap (reference counts).
///
/// ```
/// use tower_caching::store::StoreValue;
/// let value = StoreValue::from(vec![1, 2, 3]);
/// assert_eq!(value.bytes().as_ref(), &[1, 2, 3]);
/// assert_eq!(value.len(), 3);
/// ```
#[derive(Clone)]
pub struct StoreValue {
    frame: Frame,
    decoded: Option<Arc<dyn Any + Send + Sync>>,
    /// About how many bytes the decoded form takes, when the bytes are not a guide to it
    /// (they are compressed): what a byte-bounded store counts for it.
    decoded_size: Option<usize>,
    /// How to frame the decoded form again: what lets an in-process store keep the decoded
    /// form alone, without the bytes beside it.
    reframe: Option<Arc<dyn Reframe>>,
    /// Called with the decoded form once a cache decodes these bytes: how a two-tier store
    /// gets the typed value of an L2 hit into L1.
    on_decoded: Option<DecodedHook>,
}

/// The bytes of a [`StoreValue`].
#[derive(Clone)]
enum Frame {
    Kept(Bytes),
    /// Not kept (the store kept the decoded form only): framed again, from the decoded form,
    /// the first time they are asked for.
    Deferred {
        header: [u8; frame::HEADER_LEN],
        len: usize,
        bytes: OnceLock<Bytes>,
    },
}

/// Frames a decoded form again, as the cache that decoded (or encoded) it would: the same
/// header, codec and compression.
pub(crate) trait Reframe: Send + Sync {
    /// The frame of `decoded` under `header`; empty if `decoded` is not this cache's type or
    /// does not encode (it encoded once, so neither happens to a value a cache attached).
    fn reframe(&self, decoded: &(dyn Any + Send + Sync), header: frame::Header) -> Bytes;
}

/// Called with the decoded form and its size (see [`StoreValue::decoded_size`]).
type DecodedHook = Arc<dyn Fn(Arc<dyn Any + Send + Sync>, usize) + Send + Sync>;

/// What an in-process store keeps of a value that carries its decoded form: the decoded form
/// alone when the value can be framed again, the frame beside it otherwise.
#[derive(Clone)]
pub(crate) enum Kept {
    /// The frame, with the decoded form and its size when one is attached.
    Frame(Bytes, Option<(Arc<dyn Any + Send + Sync>, usize)>),
    /// The decoded form only; the frame is made again when someone asks for the bytes.
    Decoded {
        decoded: Arc<dyn Any + Send + Sync>,
        reframe: Arc<dyn Reframe>,
        header: [u8; frame::HEADER_LEN],
        /// The frame's length, and the decoded form's size (see
        /// [`StoreValue::decoded_size`]).
        len: u32,
        size: u32,
    },
}

impl StoreValue {
    /// A value of `bytes` only.
    ///
    /// ```
    /// # use tower_caching::store::StoreValue;
    /// let value = StoreValue::new(bytes::Bytes::from_static(b"abc"));
    /// assert_eq!(value.len(), 3);
    /// assert!(value.decoded().is_none());
    /// ```
    pub fn new(bytes: Bytes) -> Self {
        StoreValue {
            frame: Frame::Kept(bytes),
            decoded: None,
            decoded_size: None,
            reframe: None,
            on_decoded: None,
        }
    }

    /// A value from a static byte string.
    ///
    /// ```
    /// # use tower_caching::store::StoreValue;
    /// assert!(StoreValue::from_static(b"").is_empty());
    /// ```
    pub fn from_static(bytes: &'static [u8]) -> Self {
        StoreValue::new(Bytes::from_static(bytes))
    }

    /// Attaches the decoded form of `bytes`. It must be what decoding `bytes` gives; stores
    /// that keep values out of process drop it.
    ///
    /// ```
    /// # use std::sync::Arc;
    /// # use tower_caching::store::StoreValue;
    /// let value = StoreValue::from(b"7".to_vec()).with_decoded(Arc::new(7u32));
    /// assert_eq!(value.decoded().and_then(|d| d.downcast_ref::<u32>()), Some(&7));
    /// ```
    pub fn with_decoded(mut self, decoded: Arc<dyn Any + Send + Sync>) -> Self {
        self.decoded = Some(decoded);
        self
    }

    /// Attaches the decoded form of bytes that are compressed, with `size`, the length of
    /// their expansion: about what the decoded form takes.
    pub(crate) fn with_decoded_of_size(
        mut self,
        decoded: Arc<dyn Any + Send + Sync>,
        size: usize,
    ) -> Self {
        self.decoded = Some(decoded);
        self.decoded_size = Some(size);
        self
    }

    /// Says how to frame the decoded form again, so that an in-process store may keep it
    /// without the bytes.
    pub(crate) fn reframed_by(mut self, reframe: Arc<dyn Reframe>) -> Self {
        self.reframe = Some(reframe);
        self
    }

    /// What an in-process store keeps of this value.
    pub(crate) fn into_kept(self) -> Kept {
        let size = self.decoded_size();
        let len = self.len();
        let header = match &self.frame {
            Frame::Kept(bytes) => bytes.first_chunk::<{ frame::HEADER_LEN }>().copied(),
            Frame::Deferred { header, .. } => Some(*header),
        };
        match (self.decoded, self.reframe, header) {
            (Some(decoded), Some(reframe), Some(header))
                if u32::try_from(len).is_ok() && u32::try_from(size).is_ok() =>
            {
                Kept::Decoded {
                    len: len as u32,
                    size: size as u32,
                    decoded,
                    reframe,
                    header,
                }
            }
            (decoded, _, _) => {
                let bytes = match self.frame {
                    Frame::Kept(bytes) => bytes,
                    // Not reached: a deferred frame comes from `Kept::Decoded`, with both.
                    Frame::Deferred { bytes, .. } => bytes.into_inner().unwrap_or_default(),
                };
                Kept::Frame(bytes, decoded.map(|decoded| (decoded, size)))
            }
        }
    }

    /// The value an in-process store kept.
    pub(crate) fn from_kept(kept: Kept) -> Self {
        match kept {
            Kept::Frame(bytes, decoded) => {
                let (decoded, decoded_size) = match decoded {
                    Some((decoded, size)) => (Some(decoded), Some(size)),
                    None => (None, None),
                };
                StoreValue {
                    frame: Frame::Kept(bytes),
                    decoded,
                    decoded_size,
                    reframe: None,
                    on_decoded: None,
                }
            }
            Kept::Decoded {
                decoded,
                reframe,
                header,
                len,
                size,
            } => StoreValue {
                frame: Frame::Deferred {
                    header,
                    len: len as usize,
                    bytes: OnceLock::new(),
                },
                decoded: Some(decoded),
                decoded_size: Some(size as usize),
                reframe: Some(reframe),
                on_decoded: None,
            },
        }
    }

    /// The frame header: the first bytes, without framing a deferred value again.
    pub(crate) fn header_bytes(&self) -> &[u8] {
        match &self.frame {
            Frame::Kept(bytes) => bytes,
            Frame::Deferred { header, .. } => header,
        }
    }

    /// About how many bytes the decoded form takes, if there is one: the length of the
    /// bytes, or of their expansion when they are compressed.
    pub(crate) fn decoded_size(&self) -> usize {
        match &self.decoded {
            Some(_) => self.decoded_size.unwrap_or(self.len()),
            None => 0,
        }
    }

    /// Asks whoever decodes these bytes to hand the decoded form to `hook`.
    #[cfg(feature = "redis")]
    pub(crate) fn on_decoded(
        mut self,
        hook: impl Fn(Arc<dyn Any + Send + Sync>, usize) + Send + Sync + 'static,
    ) -> Self {
        self.on_decoded = Some(Arc::new(hook));
        self
    }

    /// Hands the decoded form of the bytes, and the length of the encoding it came from
    /// (expanded, if the bytes are compressed), to the hook, if there is one: the cache calls
    /// it after decoding a value the store did not keep decoded.
    pub(crate) fn decoded_by_cache(
        &self,
        decoded: impl FnOnce() -> Arc<dyn Any + Send + Sync>,
        size: usize,
    ) {
        if let Some(hook) = &self.on_decoded {
            hook(decoded(), size);
        }
    }

    /// The bytes.
    ///
    /// ```
    /// # use tower_caching::store::StoreValue;
    /// assert_eq!(StoreValue::from_static(b"ab").bytes().as_ref(), b"ab");
    /// ```
    pub fn bytes(&self) -> &Bytes {
        match &self.frame {
            Frame::Kept(bytes) => bytes,
            Frame::Deferred { header, bytes, .. } => bytes.get_or_init(|| self.reframe(header)),
        }
    }

    fn reframe(&self, header: &[u8; frame::HEADER_LEN]) -> Bytes {
        match (&self.reframe, &self.decoded, frame::header(header)) {
            (Some(reframe), Some(decoded), Ok(header)) => reframe.reframe(decoded.as_ref(), header),
            _ => Bytes::new(),
        }
    }

    /// The bytes, consuming the value.
    ///
    /// ```
    /// # use tower_caching::store::StoreValue;
    /// let bytes = StoreValue::from(vec![1, 2]).into_bytes();
    /// assert_eq!(&bytes[..], &[1, 2]);
    /// ```
    pub fn into_bytes(self) -> Bytes {
        match self.frame {
            Frame::Kept(bytes) => bytes,
            Frame::Deferred { .. } => self.bytes().clone(),
        }
    }

    /// The decoded form, when the store kept one. See
    /// [`with_decoded`](StoreValue::with_decoded) for an example.
    pub fn decoded(&self) -> Option<&Arc<dyn Any + Send + Sync>> {
        self.decoded.as_ref()
    }

    /// The length of the bytes.
    ///
    /// ```
    /// # use tower_caching::store::StoreValue;
    /// assert_eq!(StoreValue::from_static(b"abc").len(), 3);
    /// ```
    pub fn len(&self) -> usize {
        match &self.frame {
            Frame::Kept(bytes) => bytes.len(),
            Frame::Deferred { len, .. } => *len,
        }
    }

    /// Whether the bytes are empty.
    ///
    /// ```
    /// # use tower_caching::store::StoreValue;
    /// assert!(StoreValue::from(Vec::new()).is_empty());
    /// ```
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl From<Bytes> for StoreValue {
    fn from(bytes: Bytes) -> Self {
        StoreValue::new(bytes)
    }
}

impl From<Vec<u8>> for StoreValue {
    fn from(bytes: Vec<u8>) -> Self {
        StoreValue::new(Bytes::from(bytes))
    }
}

impl fmt::Debug for StoreValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StoreValue")
            .field("len", &self.len())
            .field("decoded", &self.decoded.is_some())
            .finish()
    }
}

/// A key-value store of bytes with per-entry TTLs.
///
/// Any `Store` works under every layer; the conformance suite in `tests/store_conformance.rs`
/// is what a new one must pass. Wrapping one is the usual way to add behaviour:
///
/// ```
/// use tower_caching::store::{CircuitBreaker, MemoryStore, Store};
///
/// fn takes_any_store<S: Store>(store: S) -> tower_caching::Cache<String, S> {
///     tower_caching::Cache::new(store)
/// }
/// let cache = takes_any_store(CircuitBreaker::new(MemoryStore::new()));
/// # let _ = cache;
/// ```
///
/// Implementations are cheap to clone and every clone shares the same data. [`Store::get`]
/// returns a named `'static` future, so the cache layers' response futures can hold it
/// without boxing; the other operations are off the hit path and may borrow.
///
/// A TTL of `None` never expires. TTLs are kept with millisecond precision; a TTL that rounds
/// to zero is one millisecond.
pub trait Store: Clone + Send + Sync + 'static {
    /// The future of [`Store::get`].
    type GetFuture: Future<Output = Result<Option<StoreValue>, StoreError>> + Send + 'static;

    /// The value under `key`, or `None` when absent or expired.
    fn get(&self, key: &Key) -> Self::GetFuture;

    /// The values under `keys`, in order, in one round trip where the backend allows.
    fn get_many(
        &self,
        keys: &[Key],
    ) -> impl Future<Output = Result<Vec<Option<StoreValue>>, StoreError>> + Send;

    /// Stores `value` under `key` for `ttl`.
    fn set(
        &self,
        key: &Key,
        value: StoreValue,
        ttl: Option<Duration>,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// Stores every `(key, value, ttl)`, in one round trip where the backend allows.
    fn set_many(
        &self,
        entries: Vec<(Key, StoreValue, Option<Duration>)>,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// Removes `key`; whether it was there.
    fn delete(&self, key: &Key) -> impl Future<Output = Result<bool, StoreError>> + Send;

    /// Removes every key of `keys`, in one round trip where the backend allows; how many
    /// were there.
    fn delete_many(&self, keys: &[Key]) -> impl Future<Output = Result<u64, StoreError>> + Send;

    /// Removes every key matching `pattern`; how many were removed.
    fn delete_pattern(
        &self,
        pattern: &Pattern,
    ) -> impl Future<Output = Result<u64, StoreError>> + Send;

    /// Whether `key` holds a live value.
    fn exists(&self, key: &Key) -> impl Future<Output = Result<bool, StoreError>> + Send;

    /// Stores `value` under `key` for `ttl`, filed under every tag of `tags` so that
    /// [`Store::invalidate_tag`] finds it. The filing comes first: an entry is never
    /// stored without it. A tag's bookkeeping lives no longer than the last entry filed
    /// under it.
    fn set_tagged(
        &self,
        key: &Key,
        value: StoreValue,
        ttl: Option<Duration>,
        tags: &[Tag],
    ) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// Removes every entry filed under `tag` — from this store and, for shared stores, for
    /// every instance — without scanning the keyspace; how many entries were removed. An
    /// entry stored again under the same key without the tag may be removed too: an extra
    /// miss, never a stale hit.
    fn invalidate_tag(&self, tag: &Tag) -> impl Future<Output = Result<u64, StoreError>> + Send;

    /// Whether the store keeps the decoded form attached to a [`StoreValue`] (in-process
    /// stores). When `false`, the cache does not build one. Default `false`.
    fn keeps_decoded(&self) -> bool {
        false
    }

    /// The leases this store shares between the instances that use it, for read layers
    /// that load a cold key once across instances
    /// ([`share_loads_across_instances`](crate::CacheLayer::share_loads_across_instances)).
    /// Default `None`: each instance loads on its own (in-process stores, Redis Cluster).
    ///
    /// ```
    /// use tower_caching::store::{MemoryStore, Store};
    /// assert!(MemoryStore::new().shared_leases().is_none());
    /// ```
    fn shared_leases(&self) -> Option<SharedLeases> {
        None
    }
}

/// A store operation failed.
///
/// ```
/// use tower_caching::store::StoreError;
/// assert_eq!(StoreError::Unavailable.kind(), "circuit_open");
/// assert_eq!(StoreError::Unavailable.to_string(), "cache store unavailable: circuit open");
/// ```
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// No connection could be made within the connect timeout, or the server refused it.
    #[error("cannot connect to the cache store: {message}")]
    Connect {
        /// What went wrong.
        message: String,
        /// The underlying error, if any.
        #[source]
        source: Option<Box<dyn std::error::Error + Send + Sync>>,
    },
    /// The operation did not finish within the command timeout.
    #[error("cache store operation `{operation}` timed out after {timeout:?}")]
    Timeout {
        /// The operation, e.g. `get`.
        operation: &'static str,
        /// The timeout that elapsed.
        timeout: Duration,
    },
    /// A [`CircuitBreaker`] is open: the operation was not sent.
    #[error("cache store unavailable: circuit open")]
    Unavailable,
    /// The store answered, but rejected this one command: the value at its key has another
    /// type (`WRONGTYPE`), or the store is full (`OOM` under `maxmemory` with
    /// `noeviction`). The store is healthy, so a [`CircuitBreaker`] does not count it; a
    /// read treats it as a miss and its next load replaces the value.
    #[error("cache store rejected `{operation}`")]
    Rejected {
        /// The operation, e.g. `get`.
        operation: &'static str,
        /// The backend's error.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// The backend answered with an error.
    #[error("cache store operation `{operation}` failed")]
    Backend {
        /// The operation, e.g. `get`.
        operation: &'static str,
        /// The backend's error.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}

impl StoreError {
    /// A short stable name for metrics labels: `connect`, `timeout`, `circuit_open`,
    /// `rejected` or `backend`.
    ///
    /// ```
    /// # use std::time::Duration;
    /// # use tower_caching::store::StoreError;
    /// let e = StoreError::Timeout { operation: "get", timeout: Duration::from_millis(5) };
    /// assert_eq!(e.kind(), "timeout");
    /// ```
    pub fn kind(&self) -> &'static str {
        match self {
            StoreError::Connect { .. } => "connect",
            StoreError::Timeout { .. } => "timeout",
            StoreError::Unavailable => "circuit_open",
            StoreError::Rejected { .. } => "rejected",
            StoreError::Backend { .. } => "backend",
        }
    }

    /// Whether the error says the store is unwell (unreachable, slow, failing) rather than
    /// that it rejected one command: what a [`CircuitBreaker`] counts, and what makes a
    /// read skip storing its load.
    ///
    /// ```
    /// # use tower_caching::store::StoreError;
    /// assert!(StoreError::Unavailable.is_unhealthy());
    /// let full = StoreError::Rejected { operation: "set", source: "OOM".into() };
    /// assert!(!full.is_unhealthy());
    /// ```
    pub fn is_unhealthy(&self) -> bool {
        !matches!(self, StoreError::Rejected { .. })
    }
}
