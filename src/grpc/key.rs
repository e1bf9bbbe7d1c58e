//! How a unary call becomes a cache key.

use std::fmt;
use std::sync::Arc;

use bytes::{Buf, Bytes};

use crate::key::{IntoKey, Key, KeyBuilder};

/// How a unary call is keyed: [`GrpcKey::encoded`] (the default: method path and a hash of
/// the encoded message) or [`GrpcKey::typed`] (a closure over the method path and the
/// decoded-from message bytes).
#[derive(Clone)]
pub struct GrpcKey {
    kind: KeyKind,
}

type TypedKey = Arc<dyn Fn(&str, &[u8]) -> Option<Key> + Send + Sync>;

#[derive(Clone)]
enum KeyKind {
    Encoded(KeyBuilder),
    Typed(TypedKey),
}

impl fmt::Debug for GrpcKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.kind {
            KeyKind::Encoded(builder) => f.debug_tuple("Encoded").field(builder).finish(),
            KeyKind::Typed(_) => f.write_str("Typed"),
        }
    }
}

impl GrpcKey {
    /// `grpc:{method path} {SHA-256 digest of the encoded request}`: two requests share a
    /// reply only when their bytes are equal.
    ///
    /// ```
    /// # use tower_caching::grpc::GrpcKey;
    /// let key = GrpcKey::encoded();
    /// # let _ = key;
    /// ```
    pub fn encoded() -> Self {
        GrpcKey {
            kind: KeyKind::Encoded(KeyBuilder::new()),
        }
    }

    /// [`GrpcKey::encoded`] under a prefix. See [`GrpcCacheLayer::new`](super::GrpcCacheLayer::new) for an example.
    pub fn encoded_with_prefix(prefix: &str) -> Self {
        GrpcKey {
            kind: KeyKind::Encoded(KeyBuilder::new().prefix(prefix)),
        }
    }

    /// A key from the method path and the request message (uncompressed protobuf bytes):
    /// decode it and return the key, or `None` to pass the call through.
    ///
    /// ```
    /// use tower_caching::{grpc::GrpcKey, key::KeyBuilder};
    ///
    /// // With prost: `GetEntryRequest::decode(message).ok().map(|r| keys.entry(&r.id))`.
    /// let keys = KeyBuilder::new();
    /// let key = GrpcKey::typed(move |_method: &str, message: &[u8]| {
    ///     std::str::from_utf8(message).ok().map(|id| keys.entry(id))
    /// });
    /// # let _ = key;
    /// ```
    pub fn typed<F, K>(key: F) -> Self
    where
        F: Fn(&str, &[u8]) -> K + Send + Sync + 'static,
        K: IntoKey,
    {
        GrpcKey {
            kind: KeyKind::Typed(Arc::new(move |method, message| {
                key(method, message).into_key()
            })),
        }
    }

    pub(super) fn key(&self, method: &str, body: &Bytes) -> Option<Key> {
        match &self.kind {
            KeyKind::Encoded(builder) => {
                // A digest nobody can collide: two messages never share a reply.
                let part = format!("{method} {}", crate::key::builder::digest(body));
                Some(builder.build("grpc", &part))
            }
            KeyKind::Typed(key) => key(method, unary_message(body)?),
        }
    }
}

/// The message of a unary gRPC body: one uncompressed length-prefixed frame.
fn unary_message(body: &Bytes) -> Option<&[u8]> {
    let mut header = body.get(..5)?;
    let compressed = header.get_u8();
    let len = header.get_u32() as usize;
    if compressed != 0 || body.len() != 5 + len {
        return None;
    }
    Some(&body[5..])
}
