//! The five caching strategies, each a [`CacheLayer`](crate::CacheLayer) around an inner
//! service.
//!
//! | strategy | inner | reads | writes | consistency | when |
//! |---|---|---|---|---|---|
//! | [cache-aside](CacheAside) | loader | hit: cache; miss: loader, then cache | — | eventual (TTL) | read ≫ write |
//! | [read-through](ReadThrough) | loader | as cache-aside, plus refresh-ahead | — | eventual, hot keys never expire | configuration, reference data |
//! | [write-through](WriteThrough) | writer | — | writer, then cache | strong for writes through the layer | data read right after it is written |
//! | [write-behind](WriteBehind) | writer | — | cache now, writer later in batches | eventual; writes survive only a clean shutdown | counters, metrics, bursts |
//! | [write-around](WriteAround) | writer | — | writer, then invalidate | next read repopulates | bulk loads, rarely read data |
//!
//! All of them share these guarantees:
//!
//! - **The cache never fails a request.** A store that is down, slow (past its command
//!   timeout), full or holding undecodable bytes makes a read a miss and a write skip the
//!   cache; it is logged, never returned. The write strategies keep the inner service's
//!   error type; the read strategies return [`LoadError`](crate::LoadError)`<E>` around the
//!   loader's `E`, shared by every request that waited for one load (so `E` need not be
//!   `Clone`) or saying that the load panicked.
//! - **A panic fails only the requests that depended on it**: a loader, writer, key
//!   extractor, TTL policy or predicate that panics never wedges a key or stops a worker;
//!   the next request works.
//! - **Readiness is the inner service's**: `poll_ready` is propagated (and write-behind also
//!   waits for room in its queue), and a call goes to the service that was polled ready.
//! - **No allocation on a hit** beyond the key and the store's lookup, and no decode at all on
//!   the in-memory store.

pub mod read;
pub mod write_around;
pub mod write_behind;
pub mod write_through;

pub use self::read::{CacheAside, ReadThrough};
pub use self::write_around::{Invalidation, InvalidationPolicy, KeyOnly, WriteAround};
pub use self::write_behind::{
    BatchOfOne, DeadLetter, InMemoryQueue, PerBatch, PerWrite, WriteBehind, WriterMode,
};
#[cfg(feature = "redis")]
#[cfg_attr(docsrs, doc(cfg(feature = "redis")))]
pub use self::write_behind::{StreamQueue, StreamStore};
pub use self::write_through::WriteThrough;

/// A yes/no decision about a value: whether to cache it, whether it means "not found".
/// Implemented for closures `Fn(&V) -> bool`, [`Always`] and [`Never`].
///
/// ```
/// use tower_caching::strategy::{Always, Predicate};
/// assert!(Always.test(&1));
/// assert!(!(|v: &Option<u8>| v.is_none()).test(&Some(1)));
/// ```
pub trait Predicate<V: ?Sized> {
    /// The decision for `value`.
    fn test(&self, value: &V) -> bool;
}

impl<V: ?Sized, F: Fn(&V) -> bool> Predicate<V> for F {
    fn test(&self, value: &V) -> bool {
        self(value)
    }
}

/// The predicate that always says yes.
///
/// ```
/// use tower_caching::strategy::{Always, Predicate};
/// assert!(Always.test("anything"));
/// ```
#[derive(Clone, Copy, Debug, Default)]
pub struct Always;

impl<V: ?Sized> Predicate<V> for Always {
    fn test(&self, _: &V) -> bool {
        true
    }
}

/// The predicate that always says no.
///
/// ```
/// use tower_caching::strategy::{Never, Predicate};
/// assert!(!Never.test(&42));
/// ```
#[derive(Clone, Copy, Debug, Default)]
pub struct Never;

impl<V: ?Sized> Predicate<V> for Never {
    fn test(&self, _: &V) -> bool {
        false
    }
}
