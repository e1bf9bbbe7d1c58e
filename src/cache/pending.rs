//! The cache's side of write-behind: the queues it flushes and closes, the values they hold
//! for reads before the writer runs, and the cache step of a write.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Weak};
use std::time::Duration;

use super::lookup::decode;
use super::{Cache, CacheError, Cacheable};
use crate::codec::Codec;
use crate::key::Key;
use crate::metrics::{KeyDigest, Operation, Strategy};
use crate::store::{Store, StoreValue};

/// A write-behind queue, as the cache that owns its values sees it.
pub(crate) trait PendingWrites: Send + Sync {
    /// Writes everything queued now; how many writes were written.
    fn flush(&self) -> Pin<Box<dyn Future<Output = Result<u64, CacheError>> + Send + '_>>;
    /// Stops the queue after a last flush.
    fn close(&self) -> Pin<Box<dyn Future<Output = Result<u64, CacheError>> + Send + '_>>;
    /// The framed value of the newest write of `key` still queued or being written.
    fn pending_value(&self, key: &Key) -> Option<StoreValue>;
}

impl<V: Cacheable, S: Store, C> Cache<V, S, C> {
    /// The value of a write-behind write of `key` still queued on this cache (or a
    /// [`typed`](Cache::typed) view of it), newest first: what a read must see before the
    /// writer has run.
    pub(crate) fn pending_value(&self, key: &Key) -> Option<V>
    where
        C: Codec<V>,
    {
        let stored = self
            .pending_queues()
            .iter()
            .find_map(|queue| queue.pending_value(key))?;
        decode::<V, C>(&self.shared.codec, &stored, usize::MAX, self.kind())
            .map(|hit| hit.value)
            .map_err(|error| tracing::warn!(key = %KeyDigest(key), %error, "queued value does not decode as this cache's type"))
            .ok()
    }

    /// Stores `value` under `key` — or, when there is no value or it cannot be stored, deletes
    /// `key`, so that the previous value is not served after a write. When the store itself
    /// is failing, the delete runs in the background: the caller waits for one timeout, not
    /// two. Logs instead of failing.
    pub(crate) async fn store_or_invalidate(
        &self,
        strategy: Strategy,
        key: &Key,
        value: Option<&V>,
        ttl: Option<Duration>,
    ) where
        C: Codec<V>,
    {
        // A load of the key in flight may have read the row this write replaced.
        self.shared.flights.supersede(key);
        let encoded = value.map(|value| (self.encode(value, ttl), self.tags_of(key, value)));
        let value = encoded.is_some();
        let stored = match encoded {
            Some((encoded, tags)) => {
                self.observed(Operation::Set, strategy, async {
                    self.check_open()?;
                    Ok(self.put(key, encoded?, ttl, &tags).await?)
                })
                .await
            }
            None => Ok(()),
        };
        if value && stored.is_ok() {
            return;
        }
        if let Err(error) = &stored {
            crate::log::warn_summarised!(error.kind(), key = %KeyDigest(key), %error, "could not cache the written value, invalidating");
        }
        let cache = self.clone();
        let key = key.clone();
        let invalidate = async move {
            if let Err(error) = cache.delete_as(strategy, &key).await {
                tracing::error!(key = %KeyDigest(&key), %error, "could not invalidate the key either: its previous value may be served until it expires");
            }
        };
        if matches!(stored, Err(CacheError::Store(_))) {
            tokio::spawn(invalidate);
        } else {
            invalidate.await;
        }
    }

    /// Registers a write-behind queue, so that [`Cache::flush_pending_writes`] and
    /// [`Cache::close`] reach it.
    pub(crate) fn register_pending(&self, queue: Weak<dyn PendingWrites>) {
        let mut pending = self
            .shared
            .pending
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        pending.retain(|queue| queue.strong_count() > 0);
        pending.push(queue);
    }

    fn pending_queues(&self) -> Vec<Arc<dyn PendingWrites>> {
        let pending = self
            .shared
            .pending
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        pending.iter().filter_map(Weak::upgrade).collect()
    }

    /// Writes every write queued by the write-behind layers built on this cache now, instead
    /// of at their next batch; how many writes were written. Without write-behind layers
    /// there is nothing to write and this returns 0.
    ///
    /// A write that fails is retried on its backoff schedule until it is written or
    /// dead-lettered, so against a failing writer this returns only when every queued write
    /// has used its attempts (bound it with `tokio::time::timeout` if that is too long).
    ///
    /// ```
    /// # use tower_caching::Cache;
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let cache: Cache<u8> = Cache::in_memory();
    /// assert_eq!(cache.flush_pending_writes().await?, 0);
    /// # Ok(())
    /// # }
    /// ```
    pub async fn flush_pending_writes(&self) -> Result<u64, CacheError> {
        let mut written = 0;
        for queue in self.pending_queues() {
            written += queue.flush().await?;
        }
        Ok(written)
    }

    /// Flushes and stops every write-behind queue, then closes the cache: later calls return
    /// [`CacheError::Closed`] and the layers pass requests straight to their inner service.
    /// Closing twice is harmless. Returns how many queued writes the final flush wrote.
    ///
    /// ```
    /// # use tower_caching::{key::Key, Cache, CacheError};
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let cache: Cache<u8> = Cache::in_memory();
    /// cache.close().await?;
    /// assert!(matches!(cache.get(&Key::new("k")?).await, Err(CacheError::Closed)));
    /// # Ok(())
    /// # }
    /// ```
    pub async fn close(&self) -> Result<u64, CacheError> {
        if !self.is_closed()
            && let Err(error) = self.save_hot_keys().await
        {
            // The snapshot only speeds up the next start: closing goes on without it.
            tracing::warn!(%error, "cannot save the hot-key snapshot");
        }
        let mut written = 0;
        for queue in self.pending_queues() {
            written += queue.close().await?;
        }
        self.shared.closed.store(true, Ordering::Release);
        Ok(written)
    }
}
