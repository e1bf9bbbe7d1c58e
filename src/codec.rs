//! Codecs turn typed values into the bytes a [`Store`](crate::store::Store) keeps.
//!
//! [`Json`] (serde_json) is the default. [`MsgPack`] (feature `msgpack`) is a compact
//! binary alternative. A value that does not decode is a [`CodecError`]; the read paths treat
//! it as a miss, never as a panic.
//!
//! # Example
//!
//! ```
//! use tower_caching::codec::{Codec, Json};
//!
//! let mut bytes = Vec::new();
//! Json.encode_into(&vec![1, 2, 3], &mut bytes)?;
//! assert_eq!(bytes, b"[1,2,3]");
//! let back: Vec<u32> = Json.decode(&bytes)?;
//! assert_eq!(back, [1, 2, 3]);
//! assert!(Json.decode::<Vec<u32>>(b"\xff garbage").is_err());
//! # Ok::<(), tower_caching::codec::CodecError>(())
//! ```

use serde::{Serialize, de::DeserializeOwned};

/// Encodes and decodes values.
///
/// ```
/// use serde::{de::DeserializeOwned, Serialize};
/// use tower_caching::codec::{Codec, CodecError, Json};
///
/// /// JSON, pretty-printed.
/// #[derive(Clone)]
/// struct Pretty;
///
/// impl Codec for Pretty {
///     fn encode_into<V: Serialize + ?Sized>(&self, value: &V, buf: &mut Vec<u8>) -> Result<(), CodecError> {
///         serde_json::to_writer_pretty(buf, value).map_err(|e| CodecError::new("pretty", e))
///     }
///     fn decode<V: DeserializeOwned>(&self, bytes: &[u8]) -> Result<V, CodecError> {
///         Json.decode(bytes)
///     }
/// }
/// let cache: tower_caching::Cache<u8, _, _> =
///     tower_caching::Cache::builder(tower_caching::MemoryStore::new()).codec(Pretty).build();
/// # let _ = cache;
/// ```
pub trait Codec: Clone + Send + Sync + 'static {
    /// Appends the encoding of `value` to `buf`.
    fn encode_into<V: Serialize + ?Sized>(
        &self,
        value: &V,
        buf: &mut Vec<u8>,
    ) -> Result<(), CodecError>;

    /// Decodes a value from all of `bytes`.
    fn decode<V: DeserializeOwned>(&self, bytes: &[u8]) -> Result<V, CodecError>;
}

/// A value could not be encoded or decoded.
///
/// ```
/// use tower_caching::codec::{Codec, Json};
///
/// let error = Json.decode::<u32>(b"not json").unwrap_err();
/// assert!(error.to_string().starts_with("json codec:"));
/// ```
#[derive(Debug, thiserror::Error)]
#[error("{codec} codec: {source}")]
pub struct CodecError {
    codec: &'static str,
    #[source]
    source: Box<dyn std::error::Error + Send + Sync>,
}

impl CodecError {
    /// Wraps an error of the codec named `codec`.
    ///
    /// ```
    /// use tower_caching::codec::CodecError;
    /// let error = CodecError::new("custom", std::fmt::Error);
    /// assert!(error.to_string().starts_with("custom codec"));
    /// ```
    pub fn new(
        codec: &'static str,
        source: impl Into<Box<dyn std::error::Error + Send + Sync>>,
    ) -> Self {
        CodecError {
            codec,
            source: source.into(),
        }
    }
}

/// JSON through serde_json: readable in `redis-cli`, the default.
///
/// ```
/// use tower_caching::codec::{Codec, Json};
/// let mut out = Vec::new();
/// Json.encode_into(&"hi", &mut out)?;
/// assert_eq!(Json.decode::<String>(&out)?, "hi");
/// # Ok::<(), tower_caching::codec::CodecError>(())
/// ```
#[derive(Clone, Copy, Debug, Default)]
pub struct Json;

impl Codec for Json {
    fn encode_into<V: Serialize + ?Sized>(
        &self,
        value: &V,
        buf: &mut Vec<u8>,
    ) -> Result<(), CodecError> {
        serde_json::to_writer(buf, value).map_err(|e| CodecError::new("json", e))
    }

    fn decode<V: DeserializeOwned>(&self, bytes: &[u8]) -> Result<V, CodecError> {
        serde_json::from_slice(bytes).map_err(|e| CodecError::new("json", e))
    }
}

/// MessagePack through rmp-serde, with field names (so that adding a field stays
/// compatible): about half the size of JSON and faster to decode.
///
/// ```
/// use tower_caching::codec::{Codec, MsgPack};
/// let mut out = Vec::new();
/// MsgPack.encode_into(&(1u8, "x"), &mut out)?;
/// assert_eq!(MsgPack.decode::<(u8, String)>(&out)?, (1, "x".to_string()));
/// # Ok::<(), tower_caching::codec::CodecError>(())
/// ```
#[cfg(feature = "msgpack")]
#[cfg_attr(docsrs, doc(cfg(feature = "msgpack")))]
#[derive(Clone, Copy, Debug, Default)]
pub struct MsgPack;

#[cfg(feature = "msgpack")]
impl Codec for MsgPack {
    fn encode_into<V: Serialize + ?Sized>(
        &self,
        value: &V,
        buf: &mut Vec<u8>,
    ) -> Result<(), CodecError> {
        rmp_serde::encode::write_named(buf, value).map_err(|e| CodecError::new("msgpack", e))
    }

    fn decode<V: DeserializeOwned>(&self, bytes: &[u8]) -> Result<V, CodecError> {
        rmp_serde::from_slice(bytes).map_err(|e| CodecError::new("msgpack", e))
    }
}
