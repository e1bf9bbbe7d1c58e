//! The read engine: lookup, one coalesced load per key, store under a lease, refresh-ahead,
//! fail-safe and stale values — written once, driven by every read path.
//!
//! The read strategies ([`CacheLayer::cache_aside`](crate::CacheLayer::cache_aside),
//! [`read_through`](crate::CacheLayer::read_through)), [`Cache::get_or_load`], the HTTP
//! layer and the gRPC layer are adapters: each says how its request becomes a key and how a
//! load becomes a cacheable value (or a result only its caller may see), and the engine does
//! the rest. What they all guarantee follows from that:
//!
//! - **One load per key** in this process, however many requests miss at once — including
//!   a request whose lookup missed just before another's load ended: it takes that load's
//!   result instead of loading a second time (or looks again, once the load is too old to
//!   be kept).
//! - **A panic fails only the requests that waited for it.** The load runs on its own task;
//!   a panic there is a [`LoadError::Panicked`] for its waiters (a `500` on the HTTP layer),
//!   and the next request for the key loads again.
//! - **No stale overwrite.** A write or invalidation of a key while a load of it is in
//!   flight voids that load's lease: it answers its waiters but does not store what it read.
//! - **Cancellation-safe.** A waiter that goes away cancels nothing: the load finishes and
//!   stores its value for the next request.
//!
//! ```
//! use std::sync::{atomic::{AtomicU32, Ordering}, Arc};
//! use tower_caching::{key::Key, Cache, LoadError};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let cache: Cache<String> = Cache::in_memory();
//! let key = Key::new("greeting")?;
//! // A loader that panics fails its callers, and only them…
//! let panicked = tokio::spawn({
//!     let (cache, key) = (cache.clone(), key.clone());
//!     async move {
//!         cache
//!             .get_or_load(&key, None, || async { panic!("bug") as Result<String, std::io::Error> })
//!             .await
//!     }
//! });
//! assert!(matches!(panicked.await?, Err(LoadError::Panicked)));
//! // …and the next request loads again.
//! let loads = Arc::new(AtomicU32::new(0));
//! let value = cache
//!     .get_or_load(&key, None, {
//!         let loads = loads.clone();
//!         move || async move {
//!             loads.fetch_add(1, Ordering::SeqCst);
//!             Ok::<_, std::io::Error>("olá".to_string())
//!         }
//!     })
//!     .await?;
//! assert_eq!((value.as_str(), loads.load(Ordering::SeqCst)), ("olá", 1));
//! # Ok(())
//! # }
//! ```

use std::future::Future;
use std::time::Duration;

use crate::cache::{Cache, Cacheable};
use crate::codec::Codec;
use crate::key::Key;
use crate::metrics::Strategy;
use crate::store::Store;

mod across;
mod batch;
mod error;
pub(crate) mod flight;
mod read;

pub use self::error::LoadError;
pub(crate) use self::read::{Outcome, ReadFuture};

/// Fail-safe settings: how long entries outlive their freshness, and how long a stale value
/// served because the loader failed is served again before the loader is retried.
#[derive(Clone, Copy, Debug)]
pub(crate) struct FailSafe {
    pub(crate) grace: Duration,
    pub(crate) throttle: Duration,
}

/// How a read path uses the engine: its metrics label and its optional behaviours.
#[derive(Clone, Copy, Debug)]
pub struct ReadPolicy {
    pub(crate) strategy: Strategy,
    pub(crate) fail_safe: Option<FailSafe>,
    pub(crate) soft_timeout: Option<Duration>,
    pub(crate) refresh_ahead: Option<f64>,
    pub(crate) early_expiration: Option<f64>,
    /// Cold misses load once across the instances sharing the store, under a lease of
    /// this TTL.
    pub(crate) shared_lease: Option<Duration>,
}

impl ReadPolicy {
    /// Lookup, coalesced load and store: nothing optional.
    pub(crate) const fn plain(strategy: Strategy) -> Self {
        ReadPolicy {
            strategy,
            fail_safe: None,
            soft_timeout: None,
            refresh_ahead: None,
            early_expiration: None,
            shared_lease: None,
        }
    }

    /// Whether a hit needs the wall clock: a plain hit reads none.
    fn timed(&self) -> bool {
        self.fail_safe.is_some() || self.refresh_ahead.is_some() || self.early_expiration.is_some()
    }

    /// How long entries are kept past their freshness.
    pub(crate) fn grace(&self) -> Duration {
        self.fail_safe.map_or(Duration::ZERO, |f| f.grace)
    }
}

/// What a read path shares with the loads it starts: the cache and the policy.
pub trait ReadContext: Clone + Send + Sync + 'static {
    /// The cached value.
    type Value: Cacheable;
    /// The store.
    type Store: Store;
    /// The codec.
    type Codec: Codec<Self::Value>;
    /// The cache.
    fn cache(&self) -> &Cache<Self::Value, Self::Store, Self::Codec>;
    /// The policy.
    fn policy(&self) -> &ReadPolicy;
    /// Whether a cached value means "not found" (counted apart when hit).
    fn is_negative(&self, _value: &Self::Value) -> bool {
        false
    }
}

/// Whether to cache a loaded value, and for how long: `None` not at all, `Some(None)`
/// without expiry.
pub(crate) type Admission = Option<Option<Duration>>;

/// What a load produced.
#[derive(Debug)]
pub enum Loaded<V, P> {
    /// A value every waiter may be given, cached as `admission` says.
    Shared { value: V, admission: Admission },
    /// A result only the caller that started the load may see (a response that may be
    /// private); `failed`: a stale value may stand in for it.
    Private { private: P, failed: bool },
}

/// How a read path loads a missing key: its inner service and request, or a future.
pub trait Load<X: ReadContext>: Send + 'static {
    /// What only the caller that started the load may see ([`std::convert::Infallible`]
    /// when every load is shareable).
    type Private: Send + 'static;
    /// The load's error, shared by its waiters.
    type Error: Send + Sync + 'static;
    /// Loads `key`; runs on the load's own task.
    fn load(
        self,
        context: X,
        key: Key,
    ) -> impl Future<Output = Result<Loaded<X::Value, Self::Private>, Self::Error>> + Send + 'static;
}

impl<V: Cacheable, S: Store, C: Codec<V>> ReadContext for Cache<V, S, C> {
    type Value = V;
    type Store = S;
    type Codec = C;

    fn cache(&self) -> &Cache<V, S, C> {
        self
    }

    fn policy(&self) -> &ReadPolicy {
        const POLICY: ReadPolicy = ReadPolicy::plain(Strategy::CacheAside);
        &POLICY
    }
}

/// [`Cache::get_or_load`]'s loader: a future, cached for one TTL.
pub(crate) struct FutureLoad<Fut> {
    load: Fut,
    ttl: Option<Duration>,
}

impl<Fut> FutureLoad<Fut> {
    pub(crate) fn new(load: Fut, ttl: Option<Duration>) -> Self {
        FutureLoad { load, ttl }
    }
}

impl<V, S, C, Fut, E> Load<Cache<V, S, C>> for FutureLoad<Fut>
where
    V: Cacheable,
    S: Store,
    C: Codec<V>,
    Fut: Future<Output = Result<V, E>> + Send + 'static,
    E: Send + Sync + 'static,
{
    type Private = std::convert::Infallible;
    type Error = E;

    fn load(
        self,
        _: Cache<V, S, C>,
        _: Key,
    ) -> impl Future<Output = Result<Loaded<V, Self::Private>, E>> + Send + 'static {
        let ttl = self.ttl;
        let load = self.load;
        async move {
            load.await.map(|value| Loaded::Shared {
                value,
                admission: Some(ttl),
            })
        }
    }
}

impl<V: Cacheable, S: Store, C: Codec<V>> Cache<V, S, C> {
    /// Cache-aside, imperatively: the cached value of `key`, or the value `loader` produces,
    /// which is then cached for `ttl`.
    ///
    /// - Concurrent calls for one key while it loads share **one** call of a loader (the
    ///   first caller's); the others wait for its value or its error, shared in an `Arc`
    ///   ([`LoadError::Failed`]): the error type need not be `Clone`.
    /// - The load runs on its own Tokio task: a caller that is cancelled does not cancel
    ///   it, and the value is still cached for the next caller. A loader that panics is
    ///   [`LoadError::Panicked`] for the callers that waited for it, and the next call loads
    ///   again.
    /// - A write or invalidation of `key` while it loads keeps the loaded value out of the
    ///   cache (it may be older than the write).
    /// - A store that fails, times out or holds an undecodable value counts as a miss; a
    ///   value that cannot be cached (too large, store down) is still returned. Only the
    ///   loader's error is an error.
    ///
    /// ```
    /// # use std::{sync::atomic::{AtomicU32, Ordering}, sync::Arc};
    /// # use tower_caching::{key::Key, Cache};
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let cache: Cache<String> = Cache::in_memory();
    /// let key = Key::new("config:default")?;
    /// let loads = Arc::new(AtomicU32::new(0));
    /// for _ in 0..3 {
    ///     let loads = loads.clone();
    ///     let value = cache.get_or_load(&key, None, move || async move {
    ///         loads.fetch_add(1, Ordering::SeqCst);
    ///         Ok::<_, std::io::Error>("from the database".to_string())
    ///     }).await?;
    ///     assert_eq!(value, "from the database");
    /// }
    /// assert_eq!(loads.load(Ordering::SeqCst), 1);
    /// # Ok(())
    /// # }
    /// ```
    pub async fn get_or_load<F, Fut, E>(
        &self,
        key: &Key,
        ttl: Option<Duration>,
        loader: F,
    ) -> Result<V, LoadError<E>>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<V, E>> + Send + 'static,
        E: Send + Sync + 'static,
    {
        let load = FutureLoad {
            load: loader(),
            ttl,
        };
        match ReadFuture::new(self.clone(), key.clone(), load).await {
            Outcome::Hit(hit) | Outcome::Stale(hit) => Ok(hit.value),
            Outcome::Pending(value) | Outcome::Loaded(value) => Ok(value),
            Outcome::Failed(error) => Err(LoadError::Failed(error)),
            Outcome::Panicked => Err(LoadError::Panicked),
            Outcome::Private(never) => match never {},
            // Only loads with private results hand their loader back.
            Outcome::Unshared(load) => load
                .load
                .await
                .map_err(|error| LoadError::Failed(std::sync::Arc::new(error))),
        }
    }
}
