//! Leases shared by every instance of an application on one store: the right to load a cold
//! key, held by one instance at a time, so that concurrent misses of the key on N instances
//! make one loader call in all (memcache's leases, across processes).

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use super::{StoreError, StoreValue};
use crate::key::{Key, Tag};

/// A boxed future of a lease operation: leases are taken on cold misses only, where one
/// allocation is nothing beside the round trip.
pub(crate) type LeaseFuture<'a, T> =
    Pin<Box<dyn Future<Output = Result<T, StoreError>> + Send + 'a>>;

/// What an attempt to take a lease came to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(
    not(feature = "redis"),
    allow(dead_code, reason = "only Redis stores share leases")
)]
pub(crate) enum Acquired {
    /// Taken: load.
    Held,
    /// Another instance holds it.
    Busy,
    /// The key holds a value (stored since the miss): read it.
    Landed,
}

/// A waiter's interest in one key's lease, until dropped.
pub(crate) trait Watch: Send + Sync {
    /// Until the key's lease ends (its value landed, or it was given up), or at most `pause`.
    fn wait(&self, pause: Duration) -> Pin<Box<dyn Future<Output = ()> + Send + '_>>;
}

/// What a store that shares leases between instances does (a Redis store).
pub(crate) trait LeaseBackend: Send + Sync + 'static {
    /// Starts watching `key`'s lease: a lease that ends from now on ends the next wait.
    fn watch(&self, key: &Key) -> Box<dyn Watch>;

    /// Takes the lease of `key` for `ttl` under `token`, unless another holder has it or the
    /// key holds a value by now.
    fn acquire<'a>(
        &'a self,
        key: &'a Key,
        token: &'a str,
        ttl: Duration,
    ) -> LeaseFuture<'a, Acquired>;

    /// Extends the lease for `ttl` if `token` still holds it; whether it does.
    fn renew<'a>(&'a self, key: &'a Key, token: &'a str, ttl: Duration) -> LeaseFuture<'a, bool>;

    /// Gives the lease up if `token` holds it.
    fn release<'a>(&'a self, key: &'a Key, token: &'a str) -> LeaseFuture<'a, ()>;

    /// Stores `value` under `key` (filed under `tags`) and gives the lease up, at once — only
    /// if `token` still holds the lease and the key is still absent: a holder whose lease
    /// was taken over, or whose key was written meanwhile, never overwrites what is there.
    /// Whether it stored.
    fn put_fenced<'a>(
        &'a self,
        key: &'a Key,
        token: &'a str,
        value: StoreValue,
        ttl: Option<Duration>,
        tags: &'a [Tag],
    ) -> LeaseFuture<'a, bool>;
}

/// A store's leases shared between instances ([`Store::shared_leases`](super::Store::shared_leases)):
/// handed to the read layers that opt in with `share_loads_across_instances`.
///
/// ```
/// use tower_caching::store::{MemoryStore, Store};
/// // An in-process store has nothing to share.
/// assert!(MemoryStore::new().shared_leases().is_none());
/// ```
#[derive(Clone)]
pub struct SharedLeases(pub(crate) Arc<dyn LeaseBackend>);

impl fmt::Debug for SharedLeases {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SharedLeases")
    }
}
