//! [`CacheLayer`]: one generic layer for the five strategies.

use std::fmt;

use crate::key::DefaultKey;
use crate::ttl::FixedTtl;

/// A tower [`Layer`](tower_layer::Layer) that caches around an inner loader or writer
/// service with the strategy `S`, keys from the key extractor `K` and TTLs from the TTL
/// policy `T`.
///
/// Build one with a strategy constructor, then swap the policies:
///
/// | constructor | inner service | strategy |
/// |---|---|---|
/// | [`CacheLayer::cache_aside`] | loader | [`CacheAside`](crate::strategy::CacheAside) |
/// | [`CacheLayer::read_through`] | loader | [`ReadThrough`](crate::strategy::ReadThrough) |
/// | [`CacheLayer::write_through`] | writer | [`WriteThrough`](crate::strategy::WriteThrough) |
/// | [`CacheLayer::write_behind`] | writer | [`WriteBehind`](crate::strategy::WriteBehind) |
/// | [`CacheLayer::write_around`] | writer | [`WriteAround`](crate::strategy::WriteAround) |
///
/// - [`.key(..)`](CacheLayer::key) sets the [`KeyExtractor`](crate::key::KeyExtractor) (a
///   closure `Fn(&Req) -> Key`, for instance); the default, [`DefaultKey`], asks the request
///   ([`CacheKey`](crate::key::CacheKey)).
/// - [`.ttl(..)`](CacheLayer::ttl) sets the [`TtlPolicy`](crate::ttl::TtlPolicy) (a
///   `Duration`, [`Jitter`](crate::ttl::Jitter), a closure); the default is five minutes.
///
/// Cloning a layer shares its cache: every service it makes reads and writes the same store.
///
/// ```
/// use std::time::Duration;
/// use tower::{service_fn, ServiceBuilder, ServiceExt};
/// use tower_caching::{key::KeyBuilder, ttl::Jitter, Cache, CacheLayer};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let cache: Cache<String> = Cache::in_memory();
/// let keys = KeyBuilder::new();
/// let service = ServiceBuilder::new()
///     .layer(
///         CacheLayer::cache_aside(cache)
///             .key(move |id: &u32| keys.entry(&id.to_string()))
///             .ttl(Jitter::new(Duration::from_secs(300), 0.1)),
///     )
///     .service(service_fn(|id: u32| async move {
///         Ok::<_, std::convert::Infallible>(format!("entry {id} from the database"))
///     }));
/// assert_eq!(service.oneshot(7).await.unwrap(), "entry 7 from the database");
/// # }
/// ```
#[derive(Clone)]
pub struct CacheLayer<S, K = DefaultKey, T = FixedTtl> {
    pub(crate) strategy: S,
    pub(crate) key: K,
    pub(crate) ttl: T,
}

impl<S> CacheLayer<S> {
    pub(crate) fn with_strategy(strategy: S) -> Self {
        CacheLayer {
            strategy,
            key: DefaultKey,
            ttl: FixedTtl::default(),
        }
    }
}

impl<S, K, T> CacheLayer<S, K, T> {
    /// Uses `key` to turn each request into its cache key (or `None` to bypass the cache).
    ///
    /// ```
    /// use tower_caching::{key::KeyBuilder, Cache, CacheLayer};
    ///
    /// let keys = KeyBuilder::new().prefix("payments");
    /// let layer = CacheLayer::cache_aside(Cache::<String>::in_memory())
    ///     .key(move |id: &String| keys.entry(id));
    /// # let _ = layer;
    /// ```
    pub fn key<K2>(self, key: K2) -> CacheLayer<S, K2, T> {
        CacheLayer {
            strategy: self.strategy,
            key,
            ttl: self.ttl,
        }
    }

    /// Uses `ttl` to decide how long each cached value stays fresh.
    ///
    /// ```
    /// use tower_caching::{ttl::{self, Jitter}, Cache, CacheLayer};
    ///
    /// // The original's entry TTL, shortened by up to 10 % so that entries do not expire together.
    /// let layer = CacheLayer::cache_aside(Cache::<String>::in_memory())
    ///     .ttl(Jitter::new(ttl::ENTRY, 0.1));
    /// # let _ = layer;
    /// ```
    pub fn ttl<T2>(self, ttl: T2) -> CacheLayer<S, K, T2> {
        CacheLayer {
            strategy: self.strategy,
            key: self.key,
            ttl,
        }
    }

    /// The strategy and its settings.
    ///
    /// ```
    /// use tower_caching::{Cache, CacheLayer};
    ///
    /// let layer = CacheLayer::cache_aside(Cache::<String>::in_memory());
    /// println!("{:?}", layer.strategy());
    /// ```
    pub fn strategy(&self) -> &S {
        &self.strategy
    }

    pub(crate) fn map_strategy<S2>(self, f: impl FnOnce(S) -> S2) -> CacheLayer<S2, K, T> {
        CacheLayer {
            strategy: f(self.strategy),
            key: self.key,
            ttl: self.ttl,
        }
    }
}

impl<S: fmt::Debug, K, T> fmt::Debug for CacheLayer<S, K, T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CacheLayer")
            .field("strategy", &self.strategy)
            .field("key", &std::any::type_name::<K>())
            .field("ttl", &std::any::type_name::<T>())
            .finish()
    }
}
