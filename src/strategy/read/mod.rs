//! Cache-aside and read-through: serve reads from the cache, load misses from the inner
//! loader service.
//!
//! On a **hit** the cached value is returned and the loader is not called. On a **miss**
//! the loader is called, its value returned and cached. The two share everything below;
//! read-through adds refresh-ahead.
//!
//! # Guarantees
//!
//! - **Coalescing**: concurrent misses of one key make exactly one loader call; every
//!   waiter gets its value or its error, shared in an `Arc` ([`LoadError`]: the loader's
//!   error type need not be `Clone`). The load runs on its own task: a waiter that is
//!   cancelled (client gone) never stalls the others, and the value is still cached.
//! - **Panics**: a loader (or key extractor, TTL policy, predicate) that panics fails the
//!   requests that waited for that load with [`LoadError::Panicked`]; the next request for
//!   the key loads again.
//! - **Writes win**: a write or invalidation of a key (write-through, write-around,
//!   write-behind, [`Cache::set`], [`Cache::delete`], …) while a load of it is in flight
//!   keeps that load's value out of the cache: a load that read the old row never
//!   overwrites the new one.
//! - **Fall-open**: a store that fails, times out or holds undecodable bytes is a miss; a
//!   value that cannot be cached (too large, store down) is still served.
//! - **Decisions from the result**: [`cache_if`](crate::CacheLayer::cache_if) decides
//!   whether a loaded value is cached at all; the TTL policy sees the value.
//! - **Negative caching**, off by default: a value that
//!   [`not_found`](crate::CacheLayer::not_found) classifies as "not found" (e.g. `None`) is
//!   cached only when [`negative_ttl`](crate::CacheLayer::negative_ttl) is set, for that TTL.
//! - **Errors**: the service's error is [`LoadError`]`<E>` around the loader's error `E`.
//! - **Consistency**: eventual. A value changed behind the cache's back is served until its
//!   TTL ends; use write-through or write-around on the write path to shorten that.
//! - **Read-through's refresh-ahead**: a hit in the last fraction of its TTL returns the
//!   cached value and reloads it in the background (one reload per key), so a hot key never
//!   expires under load; or **XFetch** ([`early_expiration`](crate::CacheLayer::early_expiration)),
//!   which reloads early with a probability that rises towards expiry.
//! - **Fail-safe** ([`fail_safe`](crate::CacheLayer::fail_safe), off by default): entries
//!   outlive their TTL by a grace period; when a stale entry's reload fails (or exceeds the
//!   [`soft_timeout`](crate::CacheLayer::soft_timeout)), the stale value is served instead.
//!
//! # Example
//!
//! ```
//! use std::convert::Infallible;
//! use tower::{service_fn, ServiceExt};
//! use tower_caching::{key::KeyBuilder, Cache, CacheLayer};
//! use tower_layer::Layer;
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! let cache: Cache<Option<String>> = Cache::in_memory();
//! let keys = KeyBuilder::new();
//! let layer = CacheLayer::cache_aside(cache)
//!     .key(move |id: &String| keys.entry(id))
//!     .not_found(Option::is_none); // `None` is "not found": not cached (no negative TTL)
//!
//! let repository = service_fn(|id: String| async move {
//!     Ok::<_, Infallible>((id == "e1").then(|| "Ana".to_string()))
//! });
//! let service = layer.layer(repository);
//! assert_eq!(service.clone().oneshot("e1".into()).await.unwrap(), Some("Ana".into()));
//! assert_eq!(service.oneshot("nope".into()).await.unwrap(), None);
//! # }
//! ```

use std::fmt;
use std::marker::PhantomData;
use std::time::Duration;

#[cfg(doc)]
use crate::LoadError;
use crate::cache::Cache;
use crate::codec::Json;
use crate::engine::{FailSafe, ReadPolicy};
use crate::layer::CacheLayer;
use crate::metrics::Strategy;
use crate::store::MemoryStore;
use crate::strategy::{Always, Never};

mod future;
mod service;

pub use self::future::ResponseFuture;
pub use self::service::ReadService;

/// The settings of a read strategy; `M` is [`CacheAsideMode`] or [`ReadThroughMode`].
pub struct Read<M, V, St = MemoryStore, C = Json, P = Always, N = Never> {
    pub(crate) cache: Cache<V, St, C>,
    pub(crate) cache_if: P,
    pub(crate) not_found: N,
    pub(crate) negative_ttl: Option<Duration>,
    pub(crate) policy: ReadPolicy,
    _mode: PhantomData<fn() -> M>,
}

/// Cache-aside: the cache sits beside the loader. See the [module docs](self).
pub type CacheAside<V, St = MemoryStore, C = Json, P = Always, N = Never> =
    Read<CacheAsideMode, V, St, C, P, N>;

/// Read-through: the cache owns the loader, and refreshes hot keys ahead of expiry. See
/// the [module docs](self).
pub type ReadThrough<V, St = MemoryStore, C = Json, P = Always, N = Never> =
    Read<ReadThroughMode, V, St, C, P, N>;

/// Marks [`CacheAside`].
#[derive(Debug, Clone, Copy)]
pub enum CacheAsideMode {}

/// Marks [`ReadThrough`].
#[derive(Debug, Clone, Copy)]
pub enum ReadThroughMode {}

/// A read strategy's mode. Sealed.
pub trait ReadMode: sealed::Sealed + Send + Sync + 'static {
    /// The `strategy` label: `cache_aside` or `read_through`.
    const STRATEGY: &'static str;
}

impl ReadMode for CacheAsideMode {
    const STRATEGY: &'static str = "cache_aside";
}

impl ReadMode for ReadThroughMode {
    const STRATEGY: &'static str = "read_through";
}

/// The `strategy` label of a read mode.
fn strategy<M: ReadMode>() -> Strategy {
    if M::STRATEGY == ReadThroughMode::STRATEGY {
        Strategy::ReadThrough
    } else {
        Strategy::CacheAside
    }
}

mod sealed {
    pub trait Sealed {}
    impl Sealed for super::CacheAsideMode {}
    impl Sealed for super::ReadThroughMode {}
}

impl<M, V, St, C, P: Clone, N: Clone> Clone for Read<M, V, St, C, P, N> {
    fn clone(&self) -> Self {
        Read {
            cache: self.cache.clone(),
            cache_if: self.cache_if.clone(),
            not_found: self.not_found.clone(),
            negative_ttl: self.negative_ttl,
            policy: self.policy,
            _mode: PhantomData,
        }
    }
}

impl<M: ReadMode, V, St: fmt::Debug, C: fmt::Debug, P, N> fmt::Debug for Read<M, V, St, C, P, N> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Read")
            .field("strategy", &M::STRATEGY)
            .field("cache", &self.cache)
            .field("negative_ttl", &self.negative_ttl)
            .field("policy", &self.policy)
            .finish_non_exhaustive()
    }
}

impl<M: ReadMode, V, St, C> Read<M, V, St, C> {
    fn new(cache: Cache<V, St, C>) -> Self {
        Read {
            cache,
            cache_if: Always,
            not_found: Never,
            negative_ttl: None,
            policy: ReadPolicy::plain(strategy::<M>()),
            _mode: PhantomData,
        }
    }
}

impl<V, St, C> CacheLayer<CacheAside<V, St, C>> {
    /// Cache-aside around a loader service whose response is the value `V`.
    ///
    /// ```
    /// use tower::{service_fn, ServiceExt};
    /// use tower_caching::{key::KeyBuilder, Cache, CacheLayer};
    /// use tower_layer::Layer;
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// let keys = KeyBuilder::new();
    /// let lookup = CacheLayer::cache_aside(Cache::<String>::in_memory())
    ///     .key(move |id: &u32| keys.entry(&id.to_string()))
    ///     .layer(service_fn(|id: u32| async move { Ok::<_, std::convert::Infallible>(format!("entry {id}")) }));
    /// assert_eq!(lookup.oneshot(7).await.unwrap(), "entry 7");
    /// # }
    /// ```
    pub fn cache_aside(cache: Cache<V, St, C>) -> Self {
        CacheLayer::with_strategy(Read::new(cache))
    }
}

impl<V, St, C> CacheLayer<ReadThrough<V, St, C>> {
    /// Read-through around a loader service whose response is the value `V`.
    ///
    /// ```
    /// use tower::{service_fn, ServiceExt};
    /// use tower_caching::{key::KeyBuilder, Cache, CacheLayer};
    /// use tower_layer::Layer;
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// let cache: Cache<String> = Cache::in_memory();
    /// let keys = KeyBuilder::new();
    /// let config = CacheLayer::read_through(cache.clone())
    ///     .key(move |name: &String| keys.config(name))
    ///     .layer(service_fn(|name: String| async move { Ok::<_, std::convert::Infallible>(format!("{name}=on")) }));
    /// config.oneshot("default".to_string()).await.unwrap();
    /// assert!(cache.exists(&KeyBuilder::new().config("default")).await.unwrap());
    /// # }
    /// ```
    pub fn read_through(cache: Cache<V, St, C>) -> Self {
        CacheLayer::with_strategy(Read::new(cache))
    }
}

impl<M, V, St, C, P, N, K, T> CacheLayer<Read<M, V, St, C, P, N>, K, T> {
    /// Caches a loaded value only when `predicate` says so (e.g. never an error-shaped or
    /// empty response). Values it rejects are served, not cached.
    ///
    /// ```
    /// use tower::{service_fn, ServiceExt};
    /// use tower_caching::{key::Key, Cache, CacheLayer};
    /// use tower_layer::Layer;
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// let cache: Cache<Vec<u32>> = Cache::in_memory();
    /// let search = CacheLayer::cache_aside(cache.clone())
    ///     .key(|q: &&'static str| Key::new(format!("search:{q}")).ok())
    ///     .cache_if(|results: &Vec<u32>| !results.is_empty())
    ///     .layer(service_fn(|_: &'static str| async { Ok::<_, std::convert::Infallible>(Vec::new()) }));
    /// assert!(search.oneshot("nothing").await.unwrap().is_empty()); // served…
    /// assert!(!cache.exists(&Key::new("search:nothing").unwrap()).await.unwrap()); // …not cached
    /// # }
    /// ```
    pub fn cache_if<P2>(self, predicate: P2) -> CacheLayer<Read<M, V, St, C, P2, N>, K, T> {
        self.map_strategy(|read| Read {
            cache: read.cache,
            cache_if: predicate,
            not_found: read.not_found,
            negative_ttl: read.negative_ttl,
            policy: read.policy,
            _mode: PhantomData,
        })
    }

    /// Classifies values as "not found" (e.g. `Option::is_none`). Such values are cached
    /// only with a [`negative_ttl`](CacheLayer::negative_ttl).
    ///
    /// ```
    /// use tower_caching::{Cache, CacheLayer};
    ///
    /// let layer = CacheLayer::cache_aside(Cache::<Option<String>>::in_memory())
    ///     .not_found(Option::<String>::is_none); // a missing entry is not cached…
    /// # let _ = layer;
    /// ```
    pub fn not_found<N2>(self, classifier: N2) -> CacheLayer<Read<M, V, St, C, P, N2>, K, T> {
        self.map_strategy(|read| Read {
            cache: read.cache,
            cache_if: read.cache_if,
            not_found: classifier,
            negative_ttl: read.negative_ttl,
            policy: read.policy,
            _mode: PhantomData,
        })
    }

    /// Caches "not found" values for `ttl` (usually much shorter than the TTL of found
    /// values), so repeated lookups of a missing key stop reaching the loader.
    ///
    /// ```
    /// use std::time::Duration;
    /// use tower_caching::{Cache, CacheLayer};
    ///
    /// let layer = CacheLayer::cache_aside(Cache::<Option<String>>::in_memory())
    ///     .not_found(Option::<String>::is_none)
    ///     .negative_ttl(Duration::from_secs(30)); // …unless briefly, to shield the database
    /// # let _ = layer;
    /// ```
    pub fn negative_ttl(mut self, ttl: Duration) -> Self {
        self.strategy.negative_ttl = Some(ttl);
        self
    }

    /// Fail-safe (FusionCache's model): entries are kept `grace` past their TTL. When a
    /// stale entry's reload fails, the stale value is served instead of the error (counted
    /// as `stale_served`) and served again for `throttle` before the loader is retried, so a
    /// failing source is not hammered.
    ///
    /// A hard loader timeout is tower's `timeout::Timeout` (feature `timeout`) on the loader:
    /// its error is a failure like any other, answered with the stale value when there is one.
    ///
    /// ```
    /// use std::time::Duration;
    /// use tower_caching::{Cache, CacheLayer};
    ///
    /// // Serve values up to an hour past their TTL while the source fails; retry it every 30 s.
    /// let layer = CacheLayer::read_through(Cache::<String>::in_memory())
    ///     .fail_safe(Duration::from_secs(3600), Duration::from_secs(30));
    /// # let _ = layer;
    /// ```
    pub fn fail_safe(mut self, grace: Duration, throttle: Duration) -> Self {
        self.strategy.policy.fail_safe = Some(FailSafe { grace, throttle });
        self
    }

    /// Stampede protection across instances: concurrent misses of a cold key on every
    /// instance sharing the store make **one** loader call in all. The instance whose miss
    /// takes the key's lease in the store (`SET NX PX`, renewed while the load runs) loads
    /// and stores; the others wait for the value to land and serve it (they look every few
    /// milliseconds, backing off to 50 ms). A holder that dies is taken over once its lease
    /// expires (`lease` after its last renewal), one whose load fails or panics gives the
    /// lease up at once, and a holder whose lease was taken over, or whose key was written
    /// meanwhile, does not store (the store checks the lease's token and that the key is
    /// still absent, in one script), so a late holder never overwrites newer data. A delete
    /// of the key on any instance (`delete`, `delete_many`, a tag's invalidation; not a
    /// pattern delete) voids its lease, so a holder that read the row before the write that
    /// delete follows does not cache it. A waiter waits at most four leases, then loads on its own. A load whose value is not cached
    /// (a not-found without [`negative_ttl`](CacheLayer::negative_ttl)) gives the lease up
    /// with nothing to share: the next waiting instance loads.
    ///
    /// Only cold misses share their load, and only on stores that share leases
    /// ([`Store::shared_leases`](crate::store::Store::shared_leases): `RedisStore`, and a
    /// `CircuitBreaker` or `TieredStore` over one). A stale value's reload, a refresh, and
    /// every load on other stores run on each instance as before. A lease should outlast
    /// a typical load; it is at least 30 ms.
    ///
    /// ```
    /// use std::time::Duration;
    /// use tower_caching::{Cache, CacheLayer};
    ///
    /// // On a MemoryStore it changes nothing; on a shared RedisStore, one load in all.
    /// let layer = CacheLayer::cache_aside(Cache::<String>::in_memory())
    ///     .share_loads_across_instances(Duration::from_secs(5));
    /// # let _ = layer;
    /// ```
    pub fn share_loads_across_instances(mut self, lease: Duration) -> Self {
        self.strategy.policy.shared_lease = Some(lease.max(Duration::from_millis(30)));
        self
    }

    /// Soft timeout (with [`fail_safe`](CacheLayer::fail_safe)): when the reload of a stale
    /// entry takes longer than `timeout`, the stale value is served at once while the reload
    /// finishes in the background and refreshes the entry.
    ///
    /// ```
    /// use std::time::Duration;
    /// use tower_caching::{Cache, CacheLayer};
    ///
    /// let layer = CacheLayer::read_through(Cache::<String>::in_memory())
    ///     .fail_safe(Duration::from_secs(3600), Duration::from_secs(30))
    ///     .soft_timeout(Duration::from_millis(100));
    /// # let _ = layer;
    /// ```
    pub fn soft_timeout(mut self, timeout: Duration) -> Self {
        self.strategy.policy.soft_timeout = Some(timeout);
        self
    }
}

impl<V, St, C, P, N, K, T> CacheLayer<ReadThrough<V, St, C, P, N>, K, T> {
    /// Refresh-ahead: a hit whose remaining TTL is at most `fraction` of its whole TTL
    /// (e.g. `0.2`: the last 20 %) is served from the cache and reloaded in the background.
    /// `fraction` is clamped to `0.0..=1.0`.
    ///
    /// ```
    /// use tower_caching::{Cache, CacheLayer};
    ///
    /// let layer = CacheLayer::read_through(Cache::<String>::in_memory()).refresh_ahead(0.2);
    /// # let _ = layer;
    /// ```
    pub fn refresh_ahead(mut self, fraction: f64) -> Self {
        self.strategy.policy.refresh_ahead = Some(if fraction.is_finite() {
            fraction.clamp(0.0, 1.0)
        } else {
            0.0
        });
        self
    }

    /// Probabilistic early expiration (XFetch, Vattani et al., VLDB 2015), an alternative
    /// to [`refresh_ahead`](CacheLayer::refresh_ahead): each hit reloads in the background
    /// with a probability that grows as expiry nears, scaled by how long the last load took
    /// and by `beta` (1.0 is the paper's optimum; larger refreshes earlier). Concurrent hits
    /// never synchronise into a herd.
    ///
    /// ```
    /// use tower_caching::{Cache, CacheLayer};
    ///
    /// let layer = CacheLayer::read_through(Cache::<String>::in_memory()).early_expiration(1.0);
    /// # let _ = layer;
    /// ```
    pub fn early_expiration(mut self, beta: f64) -> Self {
        self.strategy.policy.early_expiration =
            Some(if beta.is_finite() { beta.max(0.0) } else { 1.0 });
        self
    }
}
