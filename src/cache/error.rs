use crate::codec::CodecError;
use crate::frame::FrameError;
use crate::key::KeyError;
use crate::store::StoreError;

/// A cache operation failed.
///
/// ```
/// use tower_caching::{key::Key, Cache, CacheError};
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let cache: Cache<String> = tower_caching::Cache::builder(tower_caching::MemoryStore::new())
///     .max_value_size(8)
///     .build();
/// let error = cache.set(&Key::new("k")?, &"far too long".to_string(), None).await.unwrap_err();
/// assert!(matches!(error, CacheError::ValueTooLarge { max: 8, .. }));
/// assert_eq!(error.kind(), "too_large");
/// # Ok(())
/// # }
/// ```
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CacheError {
    /// A key did not validate.
    #[error(transparent)]
    InvalidKey(#[from] KeyError),
    /// The store failed, timed out or could not be reached.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A value could not be encoded.
    #[error("cannot encode the value")]
    Encode(#[source] CodecError),
    /// A stored value could not be decoded as the cache's value type.
    #[error("cannot decode the cached value")]
    Decode(#[source] CodecError),
    /// A stored value is not a frame this crate wrote.
    #[error("corrupt cached value: {reason}")]
    Corrupt {
        /// What is wrong with it.
        reason: &'static str,
    },
    /// The key holds a value another kind of layer stored — an HTTP or gRPC response where
    /// a typed value was expected, or the reverse: two caches use one key and would
    /// overwrite each other's entries. Give them different keys (a key prefix).
    #[error("the key holds {found}, not {expected}: two caches use one key")]
    Clash {
        /// What the key holds.
        found: &'static str,
        /// What this cache stores.
        expected: &'static str,
    },
    /// An encoded value is larger than the cache's limit.
    #[error("encoded value is {size} bytes, the limit is {max}")]
    ValueTooLarge {
        /// The encoded size.
        size: usize,
        /// The limit.
        max: usize,
    },
    /// The cache was closed.
    #[error("the cache is closed")]
    Closed,
}

impl CacheError {
    /// A short stable name for metrics labels.
    ///
    /// ```
    /// assert_eq!(tower_caching::CacheError::Closed.kind(), "closed");
    /// ```
    pub fn kind(&self) -> &'static str {
        match self {
            CacheError::InvalidKey(_) => "invalid_key",
            CacheError::Store(error) => error.kind(),
            CacheError::Encode(_) => "encode",
            CacheError::Decode(_) | CacheError::Corrupt { .. } => "decode",
            CacheError::Clash { .. } => "clash",
            CacheError::ValueTooLarge { .. } => "too_large",
            CacheError::Closed => "closed",
        }
    }
}

impl CacheError {
    /// Whether the store failed (not just rejected one command or held a bad value): then a
    /// read does not pay a second timeout to store what it loaded.
    pub(crate) fn is_store_failure(&self) -> bool {
        matches!(self, CacheError::Store(error) if error.is_unhealthy())
    }
}

impl From<FrameError> for CacheError {
    fn from(error: FrameError) -> Self {
        match error {
            FrameError::Encode(error) => CacheError::Encode(error),
            FrameError::Corrupt(reason) => CacheError::Corrupt { reason },
            FrameError::TooLarge { size, max } => CacheError::ValueTooLarge { size, max },
        }
    }
}
