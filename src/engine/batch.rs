//! Bulk cache-aside: many keys, their hits in one round trip, their misses in one load.

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use super::LoadError;
use super::flight::{Landed, Landing, Lease};
use crate::cache::{Cache, Cacheable};
use crate::codec::Codec;
use crate::key::Key;
use crate::metrics::{KeyDigest, Operation, Strategy};
use crate::store::Store;

impl<V: Cacheable, S: Store, C: Codec<V>> Cache<V, S, C> {
    /// Bulk cache-aside: the values of `keys`, in order, with the hits fetched in one round
    /// trip and **all** the misses loaded by one call of `loader`, which returns the values
    /// it found by key (a key it leaves out is `None` here, and not cached). The loaded
    /// values are cached for `ttl` in one round trip.
    ///
    /// Keys already being loaded — by [`get_or_load`](Cache::get_or_load), a read layer or
    /// another batch — are not loaded again: this call waits for those loads. A
    /// [`get_or_load`](Cache::get_or_load) of a key this batch is loading waits for the
    /// batch in turn. Store failures are misses, leases and panics as in `get_or_load`.
    ///
    /// ```
    /// # use std::collections::HashMap;
    /// # use tower_caching::{key::Key, Cache};
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let cache: Cache<String> = Cache::in_memory();
    /// let key = |id: &str| Key::new(format!("entry:{id}")).unwrap();
    /// cache.set(&key("1"), &"cached".to_string(), None).await?;
    ///
    /// let wanted = [key("1"), key("2"), key("3")];
    /// let values = cache
    ///     .get_many_or_load(&wanted, None, |missing| async move {
    ///         assert_eq!(missing.len(), 2); // entry:2 and entry:3, in one call
    ///         let found: HashMap<_, _> =
    ///             missing.into_iter().filter(|k| k.as_str() == "entry:2").map(|k| (k, "loaded".to_string())).collect();
    ///         Ok::<_, std::io::Error>(found)
    ///     })
    ///     .await?;
    /// assert_eq!(values, vec![Some("cached".into()), Some("loaded".into()), None]);
    /// # Ok(())
    /// # }
    /// ```
    pub async fn get_many_or_load<F, Fut, E>(
        &self,
        keys: &[Key],
        ttl: Option<Duration>,
        loader: F,
    ) -> Result<Vec<Option<V>>, LoadError<E>>
    where
        F: FnOnce(Vec<Key>) -> Fut,
        Fut: Future<Output = Result<HashMap<Key, V>, E>> + Send + 'static,
        E: Send + Sync + 'static,
    {
        let strategy = Strategy::CacheAside;
        // Before the lookup: a load that ends after it is joined, not repeated.
        let seen = self.flights().landed();
        let mut lookup_failed = false;
        let mut values: Vec<Option<V>> = match self.get_many(keys).await {
            Ok(values) => values,
            Err(error) => {
                lookup_failed = true;
                crate::log::warn_summarised!(error.kind(), keys = keys.len(), %error, "cache lookup failed, loading");
                vec![None; keys.len()]
            }
        };
        for value in &values {
            match value {
                Some(_) => self.observer().hit(strategy),
                None => self.observer().miss(strategy),
            }
        }
        let misses: Vec<Key> = keys
            .iter()
            .zip(&values)
            .filter(|(_, value)| value.is_none())
            .map(|(key, _)| key.clone())
            .collect();
        if misses.is_empty() {
            return Ok(values);
        }
        let cache = self.clone();
        let mut loader = Some(loader);
        let start = |missing: Vec<Key>, leases: Vec<Lease>, landing: Landing| {
            let leases: HashMap<Key, Lease> = missing.iter().cloned().zip(leases).collect();
            let load = (loader.take().expect("started once"))(missing);
            async move {
                // Dropped at the end: the batch leaves the table once its values are stored.
                let _landing = landing;
                match load.await {
                    Ok(found) => {
                        cache.store_many_leased(&found, ttl, &leases).await;
                        Ok(Arc::new(found))
                    }
                    Err(error) => Err(Landed::Failed(Arc::new(error))),
                }
            }
        };
        let joined = self
            .flights()
            .join_or_start_many::<V, E, std::convert::Infallible, _>(
                &misses,
                seen,
                lookup_failed,
                start,
            );
        let mut loaded = Vec::with_capacity(joined.len());
        for load in joined {
            loaded.push(match load.await {
                Landed::Value(value) => Some(value),
                Landed::Missing | Landed::Private { .. } => None,
                Landed::Failed(error) => return Err(LoadError::Failed(error)),
                Landed::Panicked => return Err(LoadError::Panicked),
            });
        }
        let mut loaded = loaded.into_iter();
        for value in values.iter_mut().filter(|value| value.is_none()) {
            *value = loaded.next().flatten();
        }
        Ok(values)
    }

    /// Caches the `values` whose lease is current in one round trip; whether any was
    /// stored.
    async fn store_many_leased(
        &self,
        values: &HashMap<Key, V>,
        ttl: Option<Duration>,
        leases: &HashMap<Key, Lease>,
    ) -> bool {
        let current = |key: &Key| leases.get(key).is_some_and(Lease::is_current);
        if self.is_closed() || values.is_empty() {
            return false;
        }
        let entries: Vec<_> = values
            .iter()
            .filter(|(key, _)| current(key))
            .filter_map(|(key, value)| match self.encode(value, ttl) {
                Ok(stored) => Some((key.clone(), stored, ttl, self.tags_of(key, value))),
                Err(error) => {
                    self.observer().error(Operation::SetMany, error.kind());
                    tracing::warn!(key = %KeyDigest(key), %error, "value not cached");
                    None
                }
            })
            .collect();
        if entries.is_empty() {
            return false;
        }
        let written: Vec<Key> = entries.iter().map(|(key, ..)| key.clone()).collect();
        let stored = self
            .observed(Operation::SetMany, Strategy::CacheAside, async {
                Ok(self.put_many(entries).await?)
            })
            .await;
        if let Err(error) = stored {
            crate::log::warn_summarised!(error.kind(), keys = values.len(), %error, "values not cached");
            for key in &written {
                if let Some(lease) = leases.get(key).filter(|lease| lease.is_current()) {
                    lease.not_kept(ttl);
                }
            }
            return false;
        }
        // Writes that raced the store may have landed before it: take those values out.
        let raced: Vec<Key> = written.into_iter().filter(|key| !current(key)).collect();
        if !raced.is_empty() {
            let _ = self.store().delete_many(&raced).await;
        }
        true
    }
}
