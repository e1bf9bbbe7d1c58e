//! Codecs turn typed values into the bytes a [`Store`](crate::store::Store) keeps.
//!
//! A codec is a [`Codec<V>`] for each value type `V` it can encode. [`Json`] (serde_json),
//! the default, and [`MsgPack`] (feature `msgpack`, a compact binary alternative) encode any
//! serde type; `Protobuf` (feature `protobuf`) encodes prost messages in their wire
//! format, so a tonic service caches its own message types without serde. A value that does
//! not decode is a [`CodecError`]; the read paths treat it as a miss, never as a panic.
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
//! assert!(Codec::<Vec<u32>>::decode(&Json, b"\xff garbage").is_err());
//! # Ok::<(), tower_caching::codec::CodecError>(())
//! ```

use serde::{Serialize, de::DeserializeOwned};

/// Encodes and decodes values of type `V`.
///
/// ```
/// use serde::{de::DeserializeOwned, Serialize};
/// use tower_caching::codec::{Codec, CodecError, Json};
///
/// /// JSON, pretty-printed.
/// #[derive(Clone)]
/// struct Pretty;
///
/// impl<V: Serialize + DeserializeOwned> Codec<V> for Pretty {
///     fn encode_into(&self, value: &V, buf: &mut Vec<u8>) -> Result<(), CodecError> {
///         serde_json::to_writer_pretty(buf, value).map_err(|e| CodecError::new("pretty", e))
///     }
///     fn decode(&self, bytes: &[u8]) -> Result<V, CodecError> {
///         Json.decode(bytes)
///     }
/// }
/// let cache: tower_caching::Cache<u8, _, _> =
///     tower_caching::Cache::builder(tower_caching::MemoryStore::new()).codec(Pretty).build();
/// # let _ = cache;
/// ```
#[diagnostic::on_unimplemented(
    message = "the codec `{Self}` cannot encode `{V}`",
    note = "`Json` and `MsgPack` encode serde types (derive `Serialize` and `Deserialize`); \
            `Protobuf` encodes prost messages"
)]
pub trait Codec<V>: Clone + Send + Sync + 'static {
    /// Appends the encoding of `value` to `buf`.
    fn encode_into(&self, value: &V, buf: &mut Vec<u8>) -> Result<(), CodecError>;

    /// Decodes a value from all of `bytes`.
    fn decode(&self, bytes: &[u8]) -> Result<V, CodecError>;
}

/// A value could not be encoded or decoded.
///
/// ```
/// use tower_caching::codec::{Codec, Json};
///
/// let error = Codec::<u32>::decode(&Json, b"not json").unwrap_err();
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
/// Json.encode_into(&"hi".to_string(), &mut out)?;
/// assert_eq!(Codec::<String>::decode(&Json, &out)?, "hi");
/// # Ok::<(), tower_caching::codec::CodecError>(())
/// ```
#[derive(Clone, Copy, Debug, Default)]
pub struct Json;

impl<V: Serialize + DeserializeOwned> Codec<V> for Json {
    fn encode_into(&self, value: &V, buf: &mut Vec<u8>) -> Result<(), CodecError> {
        serde_json::to_writer(buf, value).map_err(|e| CodecError::new("json", e))
    }

    fn decode(&self, bytes: &[u8]) -> Result<V, CodecError> {
        serde_json::from_slice(bytes).map_err(|e| CodecError::new("json", e))
    }
}

/// MessagePack through rmp-serde, with field names (so that adding a field stays
/// compatible): about half the size of JSON and faster to decode.
///
/// ```
/// use tower_caching::codec::{Codec, MsgPack};
/// let mut out = Vec::new();
/// MsgPack.encode_into(&(1u8, "x".to_string()), &mut out)?;
/// let back: (u8, String) = MsgPack.decode(&out)?;
/// assert_eq!(back, (1, "x".to_string()));
/// # Ok::<(), tower_caching::codec::CodecError>(())
/// ```
#[cfg(feature = "msgpack")]
#[cfg_attr(docsrs, doc(cfg(feature = "msgpack")))]
#[derive(Clone, Copy, Debug, Default)]
pub struct MsgPack;

#[cfg(feature = "msgpack")]
impl<V: Serialize + DeserializeOwned> Codec<V> for MsgPack {
    fn encode_into(&self, value: &V, buf: &mut Vec<u8>) -> Result<(), CodecError> {
        rmp_serde::encode::write_named(buf, value).map_err(|e| CodecError::new("msgpack", e))
    }

    fn decode(&self, bytes: &[u8]) -> Result<V, CodecError> {
        rmp_serde::from_slice(bytes).map_err(|e| CodecError::new("msgpack", e))
    }
}

/// Protocol Buffers through prost: a message is stored in its wire format, so a tonic
/// service caches its own generated types (no serde derive on them), and the bytes are what
/// any protobuf reader of the same schema decodes. Adding a field stays compatible both
/// ways, as protobuf promises.
///
/// It encodes any [`prost::Message`]. A read layer's "not found" is, in protobuf's terms, a
/// message with an optional field (`message Found { Entry entry = 1; }`, whose prost type
/// holds an `Option<Entry>`): an empty message and no message would otherwise be the same
/// zero bytes. (`Option<M>` itself cannot have an impl beside the one for every message:
/// prost could make `Option` a message one day.)
///
/// ```
/// use tower_caching::codec::{Codec, Protobuf};
///
/// #[derive(Clone, PartialEq, prost::Message)]
/// struct Entry {
///     #[prost(string, tag = "1")]
///     id: String,
///     #[prost(uint64, tag = "2")]
///     version: u64,
/// }
///
/// let entry = Entry { id: "e1".into(), version: 7 };
/// let mut bytes = Vec::new();
/// Protobuf.encode_into(&entry, &mut bytes)?;
/// assert_eq!(bytes, [0x0a, 2, b'e', b'1', 0x10, 7]);
/// let back: Entry = Protobuf.decode(&bytes)?;
/// assert_eq!(back, entry);
/// assert!(Codec::<Entry>::decode(&Protobuf, b"\xff\xff").is_err());
/// # Ok::<(), tower_caching::codec::CodecError>(())
/// ```
#[cfg(feature = "protobuf")]
#[cfg_attr(docsrs, doc(cfg(feature = "protobuf")))]
#[derive(Clone, Copy, Debug, Default)]
pub struct Protobuf;

#[cfg(feature = "protobuf")]
impl<M: prost::Message + Default> Codec<M> for Protobuf {
    fn encode_into(&self, value: &M, buf: &mut Vec<u8>) -> Result<(), CodecError> {
        // A `Vec` grows: the only encode error, too little room, cannot happen.
        value
            .encode(buf)
            .map_err(|e| CodecError::new("protobuf", e))
    }

    fn decode(&self, bytes: &[u8]) -> Result<M, CodecError> {
        M::decode(bytes).map_err(|e| CodecError::new("protobuf", e))
    }
}
