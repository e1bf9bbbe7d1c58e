use super::{Key, KeyError};

/// Turns a request into the [`Key`] it is cached under, or `None` to bypass the cache for
/// this request.
///
/// Implemented for closures `Fn(&Req) -> K` where `K` is a [`Key`], `Option<Key>`,
/// `Result<Key, KeyError>`, `String` or `&'static str` (strings are validated; an invalid
/// one bypasses the cache and is logged, it never fails the request).
///
/// ```
/// use tower_caching::key::{Key, KeyBuilder, KeyExtractor};
///
/// struct GetEntry { id: String }
///
/// let keys = KeyBuilder::new();
/// let by_id = move |req: &GetEntry| keys.entry(&req.id);
/// assert_eq!(by_id.key(&GetEntry { id: "7".into() }), Some(Key::new("entry:7")?));
///
/// let raw = |req: &GetEntry| format!("entry:{}", req.id);
/// assert_eq!(raw.key(&GetEntry { id: "bad\n".into() }), None);
/// # Ok::<(), tower_caching::key::KeyError>(())
/// ```
pub trait KeyExtractor<Req> {
    /// The key for `request`, or `None` to bypass the cache.
    fn key(&self, request: &Req) -> Option<Key>;
}

impl<Req, F, K> KeyExtractor<Req> for F
where
    F: Fn(&Req) -> K,
    K: IntoKey,
{
    fn key(&self, request: &Req) -> Option<Key> {
        self(request).into_key()
    }
}

/// A request that knows the key it is cached under: what [`DefaultKey`], the layers' default
/// extractor, asks for.
///
/// ```
/// use tower_caching::key::{CacheKey, DefaultKey, Key, KeyBuilder, KeyExtractor};
///
/// struct GetEntry { id: String }
///
/// impl CacheKey for GetEntry {
///     fn cache_key(&self) -> Option<Key> {
///         Some(KeyBuilder::new().entry(&self.id))
///     }
/// }
///
/// let key = DefaultKey.key(&GetEntry { id: "9".into() });
/// assert_eq!(key.unwrap().as_str(), "entry:9");
/// ```
pub trait CacheKey {
    /// This request's key, or `None` to bypass the cache.
    fn cache_key(&self) -> Option<Key>;
}

/// The layers' default [`KeyExtractor`]: the request's own [`CacheKey`].
/// See [`CacheKey`] for an example.
#[derive(Clone, Copy, Debug, Default)]
pub struct DefaultKey;

impl<Req: CacheKey> KeyExtractor<Req> for DefaultKey {
    fn key(&self, request: &Req) -> Option<Key> {
        request.cache_key()
    }
}

/// What a [`KeyExtractor`] closure may return: a [`Key`], or `Option<Key>` to bypass the
/// cache for some requests. Sealed.
///
/// ```
/// use tower_caching::key::{IntoKey, Key};
///
/// assert!(Key::new("k").unwrap().into_key().is_some());
/// assert!(None::<Key>.into_key().is_none());
/// ```
pub trait IntoKey: sealed::Sealed {
    /// The validated key, or `None` to bypass the cache.
    fn into_key(self) -> Option<Key>;
}

mod sealed {
    pub trait Sealed {}
    impl Sealed for super::Key {}
    impl Sealed for Option<super::Key> {}
    impl Sealed for Result<super::Key, super::KeyError> {}
    impl Sealed for String {}
    impl Sealed for &'static str {}
}

impl IntoKey for Key {
    fn into_key(self) -> Option<Key> {
        Some(self)
    }
}

impl IntoKey for Option<Key> {
    fn into_key(self) -> Option<Key> {
        self
    }
}

impl IntoKey for Result<Key, KeyError> {
    fn into_key(self) -> Option<Key> {
        self.map_err(|error| tracing::warn!(%error, "invalid cache key, bypassing the cache"))
            .ok()
    }
}

impl IntoKey for String {
    fn into_key(self) -> Option<Key> {
        Key::new(self).into_key()
    }
}

impl IntoKey for &'static str {
    fn into_key(self) -> Option<Key> {
        Key::new(self).into_key()
    }
}
