use std::future::{ready, Ready};
use std::sync::Arc;
use std::time::{Duration, Instant};

use moka::sync::Cache as Moka;
use moka::Expiry;

use super::{Store, StoreError, StoreValue};
use crate::key::{Key, Pattern};

/// The in-process store on [moka]: bounded, with a TTL per entry. The embedded default.
///
/// It keeps the decoded value a [`Cache`](crate::Cache) attaches to each [`StoreValue`], so
/// an in-memory hit hands back a clone of the typed value without decoding.
///
/// By default it holds up to 256 MiB of keys and values (counted by bytes); past that the
/// least valuable entries are evicted (TinyLFU). Clones share the same entries.
///
/// ```
/// use tower_caching::store::MemoryStore;
///
/// let bounded_by_bytes = MemoryStore::builder().max_bytes(64 << 20).build();
/// let bounded_by_count = MemoryStore::builder().max_entries(10_000).build();
/// # let _ = (bounded_by_bytes, bounded_by_count);
/// ```
///
/// [moka]: https://docs.rs/moka
#[derive(Clone)]
pub struct MemoryStore {
    entries: Moka<Key, Slot>,
}

#[derive(Clone)]
struct Slot {
    value: StoreValue,
    ttl: Option<Duration>,
}

struct SlotExpiry;

impl Expiry<Key, Slot> for SlotExpiry {
    fn expire_after_create(&self, _: &Key, slot: &Slot, _: Instant) -> Option<Duration> {
        slot.ttl
    }

    fn expire_after_update(
        &self,
        _: &Key,
        slot: &Slot,
        _: Instant,
        _: Option<Duration>,
    ) -> Option<Duration> {
        slot.ttl
    }
}

impl MemoryStore {
    /// A store bounded to 256 MiB of keys and values.
    pub fn new() -> Self {
        MemoryStore::builder().build()
    }

    /// A builder to choose the bound.
    pub fn builder() -> MemoryStoreBuilder {
        MemoryStoreBuilder {
            bound: Bound::Bytes(256 << 20),
        }
    }

    /// The number of entries, an estimate (moka applies writes in batches).
    ///
    /// ```
    /// # use tower_caching::store::MemoryStore;
    /// assert_eq!(MemoryStore::new().entry_count(), 0);
    /// ```
    pub fn entry_count(&self) -> u64 {
        self.entries.run_pending_tasks();
        self.entries.entry_count()
    }

    /// The value under `key`, synchronously: for stores layered on this one.
    pub(crate) fn get_now(&self, key: &Key) -> Option<StoreValue> {
        self.entries.get(key).map(|slot| slot.value)
    }

    /// Removes every entry.
    ///
    /// ```
    /// # use tower_caching::store::MemoryStore;
    /// MemoryStore::new().clear();
    /// ```
    pub fn clear(&self) {
        self.entries.invalidate_all();
    }

    fn insert(&self, key: &Key, value: StoreValue, ttl: Option<Duration>) {
        let ttl = ttl.map(|ttl| ttl.max(Duration::from_millis(1)));
        self.entries.insert(key.clone(), Slot { value, ttl });
    }
}

impl Default for MemoryStore {
    fn default() -> Self {
        MemoryStore::new()
    }
}

impl std::fmt::Debug for MemoryStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemoryStore")
            .field("entries", &self.entries.entry_count())
            .field("weighted_size", &self.entries.weighted_size())
            .finish()
    }
}

/// Builds a [`MemoryStore`].
///
/// ```
/// use tower_caching::store::MemoryStore;
/// let store = MemoryStore::builder().max_bytes(1 << 20).build();
/// # let _ = store;
/// ```
#[derive(Debug, Clone)]
pub struct MemoryStoreBuilder {
    bound: Bound,
}

#[derive(Debug, Clone, Copy)]
enum Bound {
    Bytes(u64),
    Entries(u64),
}

impl MemoryStoreBuilder {
    /// Bounds the store by the bytes of its keys and values.
    pub fn max_bytes(mut self, bytes: u64) -> Self {
        self.bound = Bound::Bytes(bytes);
        self
    }

    /// Bounds the store by its number of entries.
    pub fn max_entries(mut self, entries: u64) -> Self {
        self.bound = Bound::Entries(entries);
        self
    }

    /// The store.
    pub fn build(self) -> MemoryStore {
        let builder = Moka::builder().expire_after(SlotExpiry);
        let entries = match self.bound {
            Bound::Entries(entries) => builder.max_capacity(entries).build(),
            Bound::Bytes(bytes) => builder
                .max_capacity(bytes)
                .weigher(|key: &Key, slot: &Slot| {
                    // The decoded form is not counted: its size is unknown, and it is roughly
                    // as large as the bytes.
                    let weight = key.as_str().len() + slot.value.len() * 2;
                    u32::try_from(weight).unwrap_or(u32::MAX)
                })
                .build(),
        };
        MemoryStore { entries }
    }
}

impl Store for MemoryStore {
    type GetFuture = Ready<Result<Option<StoreValue>, StoreError>>;

    #[inline]
    fn get(&self, key: &Key) -> Self::GetFuture {
        ready(Ok(self.get_now(key)))
    }

    async fn get_many(&self, keys: &[Key]) -> Result<Vec<Option<StoreValue>>, StoreError> {
        Ok(keys
            .iter()
            .map(|key| self.entries.get(key).map(|slot| slot.value))
            .collect())
    }

    async fn set(
        &self,
        key: &Key,
        value: StoreValue,
        ttl: Option<Duration>,
    ) -> Result<(), StoreError> {
        self.insert(key, value, ttl);
        Ok(())
    }

    async fn set_many(
        &self,
        entries: Vec<(Key, StoreValue, Option<Duration>)>,
    ) -> Result<(), StoreError> {
        for (key, value, ttl) in entries {
            self.insert(&key, value, ttl);
        }
        Ok(())
    }

    async fn delete(&self, key: &Key) -> Result<bool, StoreError> {
        Ok(self.entries.remove(key).is_some())
    }

    async fn delete_many(&self, keys: &[Key]) -> Result<u64, StoreError> {
        Ok(keys
            .iter()
            .filter(|key| self.entries.remove(*key).is_some())
            .count() as u64)
    }

    async fn delete_pattern(&self, pattern: &Pattern) -> Result<u64, StoreError> {
        let matching: Vec<Arc<Key>> = self
            .entries
            .iter()
            .filter(|(key, _)| pattern.matches(key.as_str()))
            .map(|(key, _)| key)
            .collect();
        let mut deleted = 0;
        for key in matching {
            if self.entries.remove(key.as_ref()).is_some() {
                deleted += 1;
            }
        }
        Ok(deleted)
    }

    async fn exists(&self, key: &Key) -> Result<bool, StoreError> {
        Ok(self.entries.contains_key(key))
    }

    fn keeps_decoded(&self) -> bool {
        true
    }
}
