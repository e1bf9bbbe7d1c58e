use std::collections::HashMap;
use std::future::{Ready, ready};
use std::num::NonZeroU64;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use moka::Expiry;
use moka::ops::compute::Op;
use moka::sync::Cache as Moka;

use super::{Kept, Store, StoreError, StoreValue};
use crate::key::{Key, Pattern, Tag};

/// What an entry costs beyond its key and decoded value: moka's node, its deques and
/// timer wheel, the slot, and the allocator's rounding — measured over 300,000 entries
/// (`tests/memory_weight.rs`, glibc on x86-64), so that a byte bound is a true one.
const ENTRY_OVERHEAD: usize = 470;

/// What keeping the frame beside the decoded form adds, besides its length: its allocation
/// and the shared handle `bytes` gives it. An estimate: with [`ENTRY_OVERHEAD`] it makes the
/// 534 B an entry that kept both was measured to cost beyond its lengths (540 B).
const FRAME_OVERHEAD: usize = 64;

/// The in-process store on [moka]: bounded, with a TTL per entry. The embedded default.
///
/// It keeps the decoded value a [`Cache`](crate::Cache) attaches to each [`StoreValue`], so
/// an in-memory hit hands back a clone of the typed value without decoding — and keeps only
/// that: the frame is made again from it, the first time someone asks a value for its
/// [`bytes`](StoreValue::bytes) (a raw [`Store::get`], a view of another type). So an entry
/// costs about a tenth more than the typed value kept in moka by hand
/// (`tests/memory_weight.rs`). Bytes stored without a decoded form are kept as they are.
///
/// By default it holds up to 256 MiB of entries, counted by what they really cost: key,
/// decoded form, bytes when kept, and a fixed overhead per entry (true within 20 % of
/// resident memory, `tests/memory_weight.rs`); past that the least valuable entries are
/// evicted (TinyLFU). Clones share the same entries.
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
    tags: Arc<TagIndex>,
}

/// An entry: what moka keeps inline in its node, so kept small — the value as [`Kept`]
/// (the decoded form alone when it can be framed again), the TTL in milliseconds, and the
/// tag filing behind a pointer (most entries have none).
#[derive(Clone)]
struct Slot {
    value: Kept,
    ttl_ms: Option<NonZeroU64>,
    /// The tags this entry is filed under, with the filing's generation.
    tags: Option<Arc<Filing>>,
}

struct Filing {
    tags: Box<[Tag]>,
    generation: u64,
}

impl Slot {
    fn into_value(self) -> StoreValue {
        StoreValue::from_kept(self.value)
    }

    fn ttl(&self) -> Option<Duration> {
        self.ttl_ms.map(|ms| Duration::from_millis(ms.get()))
    }

    /// What the byte bound counts for this entry besides its key.
    fn weight(&self) -> usize {
        match &self.value {
            Kept::Frame(bytes, decoded) => {
                FRAME_OVERHEAD + bytes.len() + decoded.as_ref().map_or(0, |(_, size)| *size)
            }
            Kept::Decoded { size, .. } => *size as usize,
        }
    }
}

/// Which keys each tag holds. A filing is dropped when its entry leaves the store (moka's
/// eviction listener, for every cause: expiry, eviction, replacement, removal), so the
/// index holds only live entries. Generations tell a replaced entry's filing from its
/// successor's.
#[derive(Default)]
struct TagIndex {
    keys: Mutex<HashMap<Tag, HashMap<Key, u64>>>,
    next_generation: AtomicU64,
}

impl TagIndex {
    fn lock(&self) -> MutexGuard<'_, HashMap<Tag, HashMap<Key, u64>>> {
        self.keys.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn file(&self, key: &Key, tags: &[Tag]) -> u64 {
        let generation = self.next_generation.fetch_add(1, Ordering::Relaxed);
        let mut index = self.lock();
        for tag in tags {
            index
                .entry(tag.clone())
                .or_default()
                .insert(key.clone(), generation);
        }
        generation
    }

    fn unfile(&self, key: &Key, slot: &Slot) {
        let Some(filing) = &slot.tags else {
            return;
        };
        let mut index = self.lock();
        for tag in filing.tags.iter() {
            if let Some(keys) = index.get_mut(tag) {
                if keys.get(key) == Some(&filing.generation) {
                    keys.remove(key);
                }
                if keys.is_empty() {
                    index.remove(tag);
                }
            }
        }
    }

    fn take(&self, tag: &Tag) -> HashMap<Key, u64> {
        self.lock().remove(tag).unwrap_or_default()
    }

    #[cfg(test)]
    fn tag_count(&self) -> usize {
        self.lock().len()
    }
}

struct SlotExpiry;

impl Expiry<Key, Slot> for SlotExpiry {
    fn expire_after_create(&self, _: &Key, slot: &Slot, _: Instant) -> Option<Duration> {
        slot.ttl()
    }

    fn expire_after_update(
        &self,
        _: &Key,
        slot: &Slot,
        _: Instant,
        _: Option<Duration>,
    ) -> Option<Duration> {
        slot.ttl()
    }
}

impl MemoryStore {
    /// A store bounded to 256 MiB of keys and values.
    ///
    /// ```
    /// # use tower_caching::store::MemoryStore;
    /// let store = MemoryStore::new();
    /// let same_entries = store.clone(); // clones share the entries
    /// # let _ = same_entries;
    /// ```
    pub fn new() -> Self {
        MemoryStore::builder().build()
    }

    /// A builder to choose the bound. See [`MemoryStoreBuilder`] for an example.
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

    /// What the entries weigh against a [`max_bytes`](MemoryStoreBuilder::max_bytes) bound:
    /// their estimated memory, in bytes (with [`max_entries`](MemoryStoreBuilder::max_entries),
    /// their number).
    ///
    /// ```
    /// # use tower_caching::store::MemoryStore;
    /// assert_eq!(MemoryStore::new().weighted_size(), 0);
    /// ```
    pub fn weighted_size(&self) -> u64 {
        self.entries.run_pending_tasks();
        self.entries.weighted_size()
    }

    /// The value under `key`, synchronously: for stores layered on this one.
    pub(crate) fn get_now(&self, key: &Key) -> Option<StoreValue> {
        self.entries.get(key).map(Slot::into_value)
    }

    /// Attaches `decoded` to the entry under `key` if it still holds `bytes` (the same
    /// buffer, not a copy): an invalidation in between wins.
    #[cfg(feature = "redis")]
    pub(crate) fn attach_decoded(
        &self,
        key: &Key,
        bytes: &bytes::Bytes,
        decoded: Arc<dyn std::any::Any + Send + Sync>,
        size: usize,
    ) {
        self.entries.entry(key.clone()).and_compute_with(|current| {
            let Some(entry) = current else {
                return Op::Nop;
            };
            let slot = entry.value();
            match &slot.value {
                Kept::Frame(kept, None)
                    if kept.as_ptr() == bytes.as_ptr() && kept.len() == bytes.len() =>
                {
                    Op::Put(Slot {
                        value: Kept::Frame(kept.clone(), Some((decoded, size))),
                        ttl_ms: slot.ttl_ms,
                        tags: slot.tags.clone(),
                    })
                }
                _ => Op::Nop,
            }
        });
    }

    /// Removes the entry under `key`, synchronously.
    #[cfg(feature = "redis")]
    pub(crate) fn remove_now(&self, key: &Key) {
        self.entries.invalidate(key);
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
        self.insert_tagged(key, value, ttl, None);
    }

    fn insert_tagged(
        &self,
        key: &Key,
        value: StoreValue,
        ttl: Option<Duration>,
        tags: Option<Arc<Filing>>,
    ) {
        let ttl_ms = ttl.map(|ttl| {
            let ms = crate::frame::clamp_ttl(ttl).as_millis();
            NonZeroU64::new(u64::try_from(ms).unwrap_or(u64::MAX)).unwrap_or(NonZeroU64::MIN)
        });
        let value = value.into_kept();
        self.entries.insert(
            key.clone(),
            Slot {
                value,
                ttl_ms,
                tags,
            },
        );
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
    /// Bounds the store by the memory its entries take, estimated per entry as described on
    /// [`MemoryStore`].
    ///
    /// ```
    /// # use tower_caching::store::MemoryStore;
    /// let store = MemoryStore::builder().max_bytes(64 << 20).build();
    /// # let _ = store;
    /// ```
    pub fn max_bytes(mut self, bytes: u64) -> Self {
        self.bound = Bound::Bytes(bytes);
        self
    }

    /// Bounds the store by its number of entries.
    ///
    /// ```
    /// # use tower_caching::store::MemoryStore;
    /// let store = MemoryStore::builder().max_entries(10_000).build();
    /// # let _ = store;
    /// ```
    pub fn max_entries(mut self, entries: u64) -> Self {
        self.bound = Bound::Entries(entries);
        self
    }

    /// The store. See [`MemoryStoreBuilder`] for an example.
    pub fn build(self) -> MemoryStore {
        let tags = Arc::new(TagIndex::default());
        let listener_tags = tags.clone();
        let builder = Moka::builder().expire_after(SlotExpiry).eviction_listener(
            move |key: Arc<Key>, slot: Slot, _| listener_tags.unfile(&key, &slot),
        );
        let entries = match self.bound {
            Bound::Entries(entries) => builder.max_capacity(entries).build(),
            Bound::Bytes(bytes) => builder
                .max_capacity(bytes)
                .weigher(|key: &Key, slot: &Slot| {
                    let weight = ENTRY_OVERHEAD + key.as_str().len() + slot.weight();
                    u32::try_from(weight).unwrap_or(u32::MAX)
                })
                .build(),
        };
        MemoryStore { entries, tags }
    }
}

impl Store for MemoryStore {
    type GetFuture = Ready<Result<Option<StoreValue>, StoreError>>;

    #[inline]
    fn get(&self, key: &Key) -> Self::GetFuture {
        ready(Ok(self.get_now(key)))
    }

    async fn get_many(&self, keys: &[Key]) -> Result<Vec<Option<StoreValue>>, StoreError> {
        Ok(keys.iter().map(|key| self.get_now(key)).collect())
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

    async fn set_tagged(
        &self,
        key: &Key,
        value: StoreValue,
        ttl: Option<Duration>,
        tags: &[Tag],
    ) -> Result<(), StoreError> {
        let generation = self.tags.file(key, tags);
        let filing = Filing {
            tags: tags.into(),
            generation,
        };
        self.insert_tagged(key, value, ttl, Some(Arc::new(filing)));
        Ok(())
    }

    async fn invalidate_tag(&self, tag: &Tag) -> Result<u64, StoreError> {
        let mut removed = 0;
        for (key, generation) in self.tags.take(tag) {
            // Only the filed entry: one stored again since, without the tag, stays.
            let result = self.entries.entry(key).and_compute_with(|current| {
                let filed = current.is_some_and(|entry| {
                    entry
                        .value()
                        .tags
                        .as_ref()
                        .is_some_and(|filing| filing.generation == generation)
                });
                if filed { Op::Remove } else { Op::Nop }
            });
            if matches!(result, moka::ops::compute::CompResult::Removed(_)) {
                removed += 1;
            }
        }
        Ok(removed)
    }

    fn keeps_decoded(&self) -> bool {
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn tag_bookkeeping_leaves_with_its_entries() {
        let store = MemoryStore::new();
        let tag = Tag::new("t").unwrap();
        let key = Key::new("k").unwrap();
        let value = StoreValue::from_static(b"v");
        store
            .set_tagged(
                &key,
                value.clone(),
                Some(Duration::from_millis(20)),
                std::slice::from_ref(&tag),
            )
            .await
            .unwrap();
        assert_eq!(store.tags.tag_count(), 1);
        // moka's timer wheel evicts expired entries at about one-second granularity.
        tokio::time::sleep(Duration::from_millis(1300)).await;
        store.entries.run_pending_tasks();
        assert_eq!(
            store.tags.tag_count(),
            0,
            "expired entry left its filing behind"
        );

        store
            .set_tagged(&key, value.clone(), None, std::slice::from_ref(&tag))
            .await
            .unwrap();
        store.set(&key, value.clone(), None).await.unwrap();
        store.entries.run_pending_tasks();
        assert_eq!(
            store.tags.tag_count(),
            0,
            "replaced entry left its filing behind"
        );
        assert_eq!(store.invalidate_tag(&tag).await.unwrap(), 0);
        assert!(
            store.exists(&key).await.unwrap(),
            "untagged successor was removed"
        );
    }
}

#[cfg(test)]
mod kept_decoded {
    use super::*;
    use crate::Cache;
    use crate::frame;

    fn key(name: &str) -> Key {
        Key::new(name).unwrap()
    }

    #[tokio::test]
    async fn a_cached_value_is_kept_decoded_and_framed_again_when_its_bytes_are_asked_for() {
        let store = MemoryStore::new();
        let cache: Cache<Vec<String>> = Cache::new(store.clone());
        let value = vec!["a".to_string(), "b".to_string()];
        cache
            .set(&key("k"), &value, Some(Duration::from_secs(60)))
            .await
            .unwrap();
        let slot = store.entries.get(&key("k")).unwrap();
        assert!(
            matches!(slot.value, Kept::Decoded { .. }),
            "the frame was kept beside the decoded value"
        );

        let stored = store.get(&key("k")).await.unwrap().unwrap();
        let length = stored.len();
        let bytes = stored.bytes().clone();
        assert_eq!(bytes.len(), length, "the frame's length changed");
        let (header, payload) = frame::split(&bytes).unwrap();
        assert_eq!(payload, br#"["a","b"]"#);
        assert!(header.fresh_until_ms.is_some(), "the header lost its TTL");
        assert_eq!(
            frame::header(stored.header_bytes()).unwrap(),
            header,
            "framed again under another header"
        );

        // The bytes alone are a value any other cache reads: as Redis would hold them.
        let elsewhere = MemoryStore::new();
        elsewhere
            .set(&key("k"), StoreValue::new(bytes), None)
            .await
            .unwrap();
        let read: Cache<Vec<String>> = Cache::new(elsewhere);
        assert_eq!(read.get(&key("k")).await.unwrap(), Some(value));
    }

    #[tokio::test]
    async fn a_view_of_another_type_decodes_the_framed_again_bytes() {
        let store = MemoryStore::new();
        let counts: Cache<u64> = Cache::new(store.clone());
        counts.set(&key("n"), &7, None).await.unwrap();
        let optional: Cache<Option<u64>> = counts.typed();
        assert_eq!(optional.get(&key("n")).await.unwrap(), Some(Some(7)));
        assert_eq!(counts.get(&key("n")).await.unwrap(), Some(7));
    }

    #[tokio::test]
    async fn a_compressed_value_is_framed_again_compressed() {
        let store = MemoryStore::new();
        let cache: Cache<String> = Cache::new(store.clone());
        let long = "tower ".repeat(2_000);
        cache.set(&key("long"), &long, None).await.unwrap();
        let stored = store.get(&key("long")).await.unwrap().unwrap();
        let (header, payload) = frame::split(stored.bytes()).unwrap();
        assert!(header.compressed, "framed again without compression");
        assert!(stored.len() < long.len() / 4);
        let expanded = frame::expand(payload, usize::MAX).unwrap();
        assert_eq!(
            serde_json::from_slice::<String>(&expanded).unwrap(),
            long,
            "the expansion is not the value"
        );
        assert_eq!(cache.get(&key("long")).await.unwrap(), Some(long));
    }

    #[tokio::test]
    async fn a_value_moved_between_stores_stays_decoded_and_readable() {
        let from = MemoryStore::new();
        let cache: Cache<String> = Cache::new(from.clone());
        cache.set(&key("k"), &"v".to_string(), None).await.unwrap();
        let to = MemoryStore::new();
        let value = from.get(&key("k")).await.unwrap().unwrap();
        to.set(&key("k"), value, None).await.unwrap();
        assert!(matches!(
            to.entries.get(&key("k")).unwrap().value,
            Kept::Decoded { .. }
        ));
        let moved = to.get(&key("k")).await.unwrap().unwrap();
        assert_eq!(frame::split(moved.bytes()).unwrap().1, br#""v""#);
        let read: Cache<String> = Cache::new(to);
        assert_eq!(read.get(&key("k")).await.unwrap().as_deref(), Some("v"));
    }

    #[test]
    fn the_slot_moka_holds_inline_is_small() {
        // What each entry's node carries inline (it was 120 B with the frame kept).
        assert!(
            std::mem::size_of::<Slot>() <= 88,
            "{}",
            std::mem::size_of::<Slot>()
        );
    }

    #[tokio::test]
    async fn raw_bytes_are_kept_as_they_are() {
        let store = MemoryStore::new();
        store
            .set(&key("raw"), StoreValue::from_static(b"not a frame"), None)
            .await
            .unwrap();
        let stored = store.get(&key("raw")).await.unwrap().unwrap();
        assert_eq!(stored.bytes().as_ref(), b"not a frame");
        assert!(stored.decoded().is_none());
    }
}
