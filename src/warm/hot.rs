//! Which keys a cache reads most, in bounded memory, and their snapshot in the store.

use std::collections::HashMap;
use std::hash::{BuildHasher, RandomState};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

use crate::key::Key;
use crate::key::builder::escape_part;

/// How many independently locked parts the counts are split into, so that concurrent reads
/// of different keys rarely wait for each other.
const SHARDS: usize = 16;

/// Tracks the keys a cache reads most (hits and misses alike), snapshots them to the store
/// on [`Cache::close`](crate::Cache::close) and every [`snapshot_every`](HotKeys::snapshot_every),
/// so that a starting instance can [preload](crate::Cache::warm_hot_keys) them.
///
/// Memory is bounded: about three times [`top`](HotKeys::top) keys are counted at most
/// (2,700 for the default 1,000). When a part of the table fills, the less-read half of it is forgotten and the counts of the
/// rest are halved, so that the set follows what is hot now rather than what was hot
/// yesterday. Instances of one service that use the same name share one snapshot (the last
/// one saved).
///
/// ```
/// use std::time::Duration;
/// use tower_caching::{warm::HotKeys, Cache, MemoryStore};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let hot = HotKeys::new("entries").top(1_000).snapshot_every(Duration::from_secs(60));
/// assert_eq!(hot.snapshot_key().as_str(), "tower-caching:hot:entries");
/// let cache: Cache<String> = Cache::builder(MemoryStore::new()).hot_keys(hot).build();
/// # let _ = cache;
/// # Ok(())
/// # }
/// ```
#[derive(Clone, Debug)]
pub struct HotKeys {
    name: String,
    top: usize,
    snapshot_every: Option<Duration>,
    snapshot_ttl: Duration,
    file: Option<PathBuf>,
}

impl HotKeys {
    /// Tracking under `name` (the snapshot's key is `tower-caching:hot:{name}`), keeping the
    /// 1,000 hottest keys and saving them every minute and on close, for 7 days.
    ///
    /// ```
    /// # use tower_caching::warm::HotKeys;
    /// let hot = HotKeys::new("entries");
    /// # let _ = hot;
    /// ```
    pub fn new(name: &str) -> Self {
        HotKeys {
            name: escape_part(name).into_owned(),
            top: 1000,
            snapshot_every: Some(Duration::from_secs(60)),
            snapshot_ttl: Duration::from_secs(7 * 24 * 3600),
            file: None,
        }
    }

    /// Keeps the snapshot in a file instead of the store: for a cache whose store does not
    /// outlive the process (a [`MemoryStore`](crate::MemoryStore)). The file is replaced
    /// whole (written aside, then renamed), so a crash mid-save leaves the previous one.
    ///
    /// ```
    /// use tower_caching::{key::Key, warm::HotKeys, Cache, MemoryStore};
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let path = std::env::temp_dir().join(format!("hot-{}.json", std::process::id()));
    /// let hot = HotKeys::new("entries").file(&path);
    /// let cache: Cache<u32> = Cache::builder(MemoryStore::new()).hot_keys(hot.clone()).build();
    /// cache.get_or_load(&Key::new("n:1")?, None, || async { Ok::<_, std::io::Error>(1) }).await?;
    /// cache.close().await?;
    /// // The next process, with a new memory store:
    /// let next: Cache<u32> = Cache::builder(MemoryStore::new()).hot_keys(hot).build();
    /// assert_eq!(next.saved_hot_keys().await?, [Key::new("n:1")?]);
    /// # std::fs::remove_file(path)?;
    /// # Ok(())
    /// # }
    /// ```
    pub fn file(mut self, path: impl AsRef<Path>) -> Self {
        self.file = Some(path.as_ref().to_owned());
        self
    }

    /// How many of the hottest keys are kept and snapshotted (default 1,000). See
    /// [`HotKeys`] for an example.
    pub fn top(mut self, keys: usize) -> Self {
        self.top = keys.max(1);
        self
    }

    /// How often the snapshot is saved from a background task, besides on close (default
    /// one minute; `None`: only on close and [`Cache::save_hot_keys`](crate::Cache::save_hot_keys)).
    /// The task needs a Tokio runtime when the cache is built, and stops with the cache.
    ///
    /// ```
    /// use std::time::Duration;
    /// # use tower_caching::warm::HotKeys;
    /// let hot = HotKeys::new("entries").snapshot_every(None);
    /// let also = HotKeys::new("entries").snapshot_every(Duration::from_secs(30));
    /// # let _ = (hot, also);
    /// ```
    pub fn snapshot_every(mut self, every: impl Into<Option<Duration>>) -> Self {
        self.snapshot_every = every
            .into()
            .map(|every| every.max(Duration::from_millis(10)));
        self
    }

    /// How long a snapshot is kept in the store (default 7 days). See [`HotKeys::new`].
    pub fn snapshot_ttl(mut self, ttl: Duration) -> Self {
        self.snapshot_ttl = ttl;
        self
    }

    /// The store key of the snapshot. See [`HotKeys`] for an example.
    pub fn snapshot_key(&self) -> Key {
        Key::new(format!("tower-caching:hot:{}", self.name))
            .unwrap_or_else(|_| Key::new("tower-caching:hot").expect("a valid key"))
    }

    pub(crate) fn snapshot_file(&self) -> Option<&Path> {
        self.file.as_deref()
    }

    /// The most a snapshot of [`HotKeys::top`] keys can weigh: no more is read.
    pub(crate) fn snapshot_limit(&self) -> usize {
        // A key is at most 1,024 bytes, and JSON escapes a byte in at most 6.
        64 + self.top * (Key::MAX_LEN * 6 + 3)
    }

    pub(crate) fn interval(&self) -> Option<Duration> {
        self.snapshot_every
    }

    pub(crate) fn ttl(&self) -> Duration {
        self.snapshot_ttl
    }

    pub(crate) fn limit(&self) -> usize {
        self.top
    }

    pub(crate) fn tracker(&self) -> Tracker {
        Tracker {
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
            hasher: RandomState::new(),
            per_shard: per_shard(self.top),
            top: self.top,
        }
    }
}

/// How many keys a shard counts before it forgets its colder half: room for its share of
/// the hottest keys, and for their uneven spread over the shards, twice over.
fn per_shard(top: usize) -> usize {
    let share = top.div_ceil(SHARDS);
    2 * (share + 2 * share.isqrt() + 4)
}

/// The counts: per shard, a map from key to a decaying read count.
pub(crate) struct Tracker {
    shards: Box<[Mutex<HashMap<Key, u32>>]>,
    hasher: RandomState,
    per_shard: usize,
    top: usize,
}

impl Tracker {
    /// Counts one read of `key`: no allocation once the key is counted.
    pub(crate) fn record(&self, key: &Key) {
        let shard = self.hasher.hash_one(key) as usize % SHARDS;
        let mut counts = self.shards[shard].lock().unwrap_or_else(|e| e.into_inner());
        if let Some(count) = counts.get_mut(key) {
            *count = count.saturating_add(1);
            return;
        }
        if counts.len() >= self.per_shard {
            forget_the_colder_half(&mut counts);
        }
        counts.insert(key.clone(), 1);
    }

    /// The hottest keys, hottest first.
    pub(crate) fn hottest(&self) -> Vec<Key> {
        let mut all: Vec<(Key, u32)> = self
            .shards
            .iter()
            .flat_map(|shard| {
                let counts = shard.lock().unwrap_or_else(|e| e.into_inner());
                counts
                    .iter()
                    .map(|(key, count)| (key.clone(), *count))
                    .collect::<Vec<_>>()
            })
            .collect();
        all.sort_unstable_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        all.truncate(self.top);
        all.into_iter().map(|(key, _)| key).collect()
    }
}

fn forget_the_colder_half(counts: &mut HashMap<Key, u32>) {
    let mut all: Vec<(Key, u32)> = counts.drain().collect();
    let keep = all.len() / 2;
    all.select_nth_unstable_by(keep, |a, b| b.1.cmp(&a.1));
    counts.extend(
        all.into_iter()
            .take(keep)
            .map(|(key, count)| (key, count.div_ceil(2))),
    );
}

/// The snapshot's encoding: a version, and the keys hottest first.
#[derive(serde::Serialize, serde::Deserialize)]
pub(crate) struct Snapshot {
    pub(crate) version: u32,
    pub(crate) keys: Vec<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(i: usize) -> Key {
        Key::new(format!("k:{i}")).unwrap()
    }

    #[test]
    fn memory_is_bounded_and_the_hot_set_survives_a_flood_of_cold_keys() {
        let tracker = HotKeys::new("t").top(10).tracker();
        for round in 0..1000 {
            for hot in 0..10 {
                tracker.record(&key(hot));
            }
            // A thousand keys read once each, per round.
            for cold in 0..1000 {
                tracker.record(&key(1_000_000 + round * 1000 + cold));
            }
        }
        let counted: usize = tracker.shards.iter().map(|s| s.lock().unwrap().len()).sum();
        assert!(
            counted <= SHARDS * tracker.per_shard,
            "{counted} keys counted"
        );
        let mut hottest = tracker.hottest();
        hottest.sort();
        let mut expected: Vec<Key> = (0..10).map(key).collect();
        expected.sort();
        assert_eq!(hottest, expected);
    }

    #[test]
    fn a_key_that_cooled_down_gives_way() {
        let tracker = HotKeys::new("t").top(2).tracker();
        for _ in 0..100 {
            tracker.record(&key(1));
        }
        // Key 2 becomes the hot one; key 1 is never read again.
        for round in 0..200 {
            tracker.record(&key(2));
            tracker.record(&key(3));
            for cold in 0..8 {
                tracker.record(&key(100 + round * 8 + cold));
            }
        }
        let hottest = tracker.hottest();
        assert!(
            hottest.contains(&key(2)) && hottest.contains(&key(3)),
            "{hottest:?}"
        );
    }
}
