use std::future::Future;
use std::marker::PhantomData;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::task::{Context, Poll};

use pin_project::pin_project;

use super::{Cache, CacheError, Cacheable};
use crate::codec::Codec;
use crate::frame::{self, Header, Kind};
use crate::key::Key;
use crate::metrics::KeyDigest;
use crate::metrics::{Operation, Strategy};
use crate::store::{Store, StoreValue};

/// A value found in the cache, with its age.
#[derive(Clone, Debug)]
pub(crate) struct Hit<V> {
    pub(crate) value: V,
    pub(crate) header: Header,
}

/// Decodes a framed value, from its attached decoded form when the store kept one. A value
/// over `max` bytes (written by other software), or compressed and claiming to expand past
/// it, is refused before decoding or expanding.
pub(crate) fn decode<V: Cacheable, C: Codec<V>>(
    codec: &C,
    stored: &StoreValue,
    max: usize,
    kind: Kind,
) -> Result<Hit<V>, CacheError> {
    if stored.len() > max {
        return Err(CacheError::ValueTooLarge {
            size: stored.len(),
            max,
        });
    }
    // The header alone first: a store that kept the decoded form may not keep the bytes.
    let header = frame::header(stored.header_bytes()).map_err(CacheError::from)?;
    if header.kind != kind {
        return Err(CacheError::Clash {
            found: header.kind.describe(),
            expected: kind.describe(),
        });
    }
    if let Some(value) = stored.decoded().and_then(|d| d.downcast_ref::<V>()) {
        return Ok(Hit {
            value: value.clone(),
            header,
        });
    }
    let (header, payload) = frame::split(stored.bytes()).map_err(CacheError::from)?;
    let expanded;
    let payload = if header.compressed {
        expanded = frame::expand(payload, max)?;
        &expanded[..]
    } else {
        payload
    };
    let value: V = codec.decode(payload).map_err(CacheError::Decode)?;
    stored.decoded_by_cache(
        || Arc::new(value.clone()),
        frame::HEADER_LEN + payload.len(),
    );
    Ok(Hit { value, header })
}

/// The future of a cache lookup: the store's get, then the decode.
#[pin_project]
pub(crate) struct Lookup<V, S: Store, C> {
    #[pin]
    pub(super) get: Option<S::GetFuture>,
    /// Why there is no get: the cache is closed (`true`), or the lookup is skipped.
    pub(super) closed: bool,
    pub(super) codec: C,
    /// The cache's value size limit.
    pub(super) max: usize,
    /// The kind of frame the cache reads.
    pub(super) kind: Kind,
    pub(super) _value: PhantomData<fn() -> V>,
}

impl<V, S: Store, C> Lookup<V, S, C> {
    /// A lookup that finds nothing without asking the store.
    pub(crate) fn skipped(codec: C) -> Self {
        Lookup {
            get: None,
            closed: false,
            codec,
            max: usize::MAX,
            kind: Kind::Value,
            _value: PhantomData,
        }
    }
}

impl<V: Cacheable, S: Store, C: Codec<V>> Future for Lookup<V, S, C> {
    type Output = Result<Option<Hit<V>>, CacheError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let Some(get) = this.get.as_pin_mut() else {
            return Poll::Ready(if *this.closed {
                Err(CacheError::Closed)
            } else {
                Ok(None)
            });
        };
        let stored = match std::task::ready!(get.poll(cx)) {
            Ok(Some(stored)) => stored,
            Ok(None) => return Poll::Ready(Ok(None)),
            Err(error) => return Poll::Ready(Err(error.into())),
        };
        Poll::Ready(decode(this.codec, &stored, *this.max, *this.kind).map(Some))
    }
}

impl<V: Cacheable, S: Store, C: Codec<V>> Cache<V, S, C> {
    /// Looks `key` up without allocating beyond the store's lookup: the layers' hit path.
    pub(crate) fn lookup(&self, key: &Key) -> Lookup<V, S, C> {
        let closed = self.shared.closed.load(Ordering::Acquire);
        Lookup {
            get: (!closed).then(|| self.shared.store.get(key)),
            closed,
            codec: self.shared.codec.clone(),
            max: self.shared.max_value_size,
            kind: self.kind(),
            _value: PhantomData,
        }
    }

    /// The value under `key`, `None` when absent or expired.
    ///
    /// A value that does not decode (written by other software, or by an incompatible
    /// version of `V`) is [`CacheError::Decode`] or [`CacheError::Corrupt`];
    /// [`Cache::get_or_load`] and the layers treat it as a miss.
    ///
    /// ```
    /// # use tower_caching::{key::Key, Cache};
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let cache: Cache<u32> = Cache::in_memory();
    /// let key = Key::new("answer")?;
    /// assert_eq!(cache.get(&key).await?, None);
    /// cache.set(&key, &42, None).await?;
    /// assert_eq!(cache.get(&key).await?, Some(42));
    /// # Ok(())
    /// # }
    /// ```
    pub async fn get(&self, key: &Key) -> Result<Option<V>, CacheError> {
        self.check_open()?;
        let hit = self
            .observed(Operation::Get, Strategy::Direct, self.lookup(key))
            .await?;
        Ok(hit.map(|hit| hit.value))
    }

    /// The values under `keys`, in order, in one round trip. A value that does not decode is
    /// `None` here (and logged), so one bad entry does not fail the batch.
    ///
    /// ```
    /// # use tower_caching::{key::Key, Cache};
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let cache: Cache<u32> = Cache::in_memory();
    /// let (a, b) = (Key::new("a")?, Key::new("b")?);
    /// cache.set(&a, &1, None).await?;
    /// assert_eq!(cache.get_many(&[a, b]).await?, vec![Some(1), None]);
    /// # Ok(())
    /// # }
    /// ```
    pub async fn get_many(&self, keys: &[Key]) -> Result<Vec<Option<V>>, CacheError> {
        self.check_open()?;
        let values = self
            .observed(Operation::GetMany, Strategy::Direct, async {
                Ok(self.shared.store.get_many(keys).await?)
            })
            .await?;
        Ok(values
            .into_iter()
            .zip(keys)
            .map(|(value, key)| {
                let value = value?;
                decode::<V, C>(
                    &self.shared.codec,
                    &value,
                    self.shared.max_value_size,
                    self.kind(),
                )
                .map_err(|error| {
                    self.observer().error(Operation::GetMany, error.kind());
                    tracing::warn!(key = %KeyDigest(key), %error, "undecodable cache value");
                })
                .ok()
                .map(|hit| hit.value)
            })
            .collect())
    }
}
