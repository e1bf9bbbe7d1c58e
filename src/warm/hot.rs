//! Which keys a cache reads most, in bounded memory, and their snapshot in the store.

use std::collections::HashMap;
use std::hash::{BuildHasher, RandomState};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
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
/// Memory is bounded: every read is counted in a count-min sketch of fixed size (4 rows of
/// 64 × [`top`](HotKeys::top) counters, rounded up to a power of two, at least 4,096 and at
/// most 65,536 a row: 1 MiB for the default 1,000 keys), and only about 1.3 × `top` keys
/// are kept, those whose estimate is highest; once that many are, a read of a colder key
/// takes no lock. All counts are halved every `10 ×` row-width reads (655,360 by default),
/// so that the set follows what is hot now rather than what was hot yesterday.
///
/// Instances of one service that use the same name share one snapshot (the last
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
        Tracker::new(self.top)
    }
}

/// How many of the hottest keys one shard keeps: its share of them, and room for their
/// uneven spread over the shards.
fn per_shard(top: usize) -> usize {
    let share = top.div_ceil(SHARDS);
    share + 2 * share.isqrt() + 4
}

/// How many counters one row of the sketch has: many more than the keys kept, so that the
/// reads of cold keys sharing a counter rarely add up to a hot key's.
fn sketch_width(top: usize) -> usize {
    (top * 64).clamp(4096, 1 << 16).next_power_of_two()
}

/// Rows of the sketch: a key's estimate is the least of its counters, one per row.
const ROWS: usize = 4;

/// The counts: a count-min sketch of every key read (fixed memory, no lock), and per shard
/// the hottest keys with their estimates. A read of a cold key touches only the sketch; a
/// key enters its shard when its estimate beats the coldest one kept there. Every
/// `10 × width` reads all counts are halved, so that what was hot yesterday gives way to
/// what is hot now.
pub(crate) struct Tracker {
    sketch: Box<[AtomicU32]>,
    width: usize,
    reads: AtomicU64,
    shards: Box<[Mutex<HashMap<Key, u32>>]>,
    /// The coldest estimate each full shard keeps (0 while it has room): a read whose
    /// estimate is no higher cannot enter, and takes no lock.
    floors: Box<[AtomicU32]>,
    hasher: RandomState,
    per_shard: usize,
    top: usize,
}

impl Tracker {
    fn new(top: usize) -> Self {
        let width = sketch_width(top);
        Tracker {
            sketch: (0..ROWS * width).map(|_| AtomicU32::new(0)).collect(),
            width,
            reads: AtomicU64::new(0),
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
            floors: (0..SHARDS).map(|_| AtomicU32::new(0)).collect(),
            hasher: RandomState::new(),
            per_shard: per_shard(top),
            top,
        }
    }

    /// Counts one read of `key`.
    pub(crate) fn record(&self, key: &Key) {
        let hash = self.hasher.hash_one(key);
        let (h1, h2) = (hash as usize, ((hash >> 32) as usize) | 1);
        let mut estimate = u32::MAX;
        for row in 0..ROWS {
            let at = row * self.width + (h1.wrapping_add(row.wrapping_mul(h2)) & (self.width - 1));
            let count = self.sketch[at]
                .fetch_add(1, Ordering::Relaxed)
                .saturating_add(1);
            estimate = estimate.min(count);
        }
        let reads = self.reads.fetch_add(1, Ordering::Relaxed) + 1;
        if reads.is_multiple_of(10 * self.width as u64) {
            self.age();
        }
        let shard = (hash >> 60) as usize % SHARDS;
        if estimate <= self.floors[shard].load(Ordering::Relaxed) {
            return;
        }
        let mut kept = self.shards[shard].lock().unwrap_or_else(|e| e.into_inner());
        if let Some(count) = kept.get_mut(key) {
            *count = estimate;
            return;
        }
        if kept.len() >= self.per_shard {
            let Some((coldest, count)) = kept
                .iter()
                .min_by_key(|(_, count)| **count)
                .map(|(key, count)| (key.clone(), *count))
            else {
                return;
            };
            if estimate <= count {
                return;
            }
            kept.remove(&coldest);
        }
        kept.insert(key.clone(), estimate);
        let floor = if kept.len() >= self.per_shard {
            kept.values().copied().min().unwrap_or(0)
        } else {
            0
        };
        self.floors[shard].store(floor, Ordering::Relaxed);
    }

    /// Halves every count.
    fn age(&self) {
        for counter in self.sketch.iter() {
            let _ = counter.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |c| Some(c / 2));
        }
        for (shard, floor) in self.shards.iter().zip(self.floors.iter()) {
            let mut kept = shard.lock().unwrap_or_else(|e| e.into_inner());
            for count in kept.values_mut() {
                *count /= 2;
            }
            floor.store(floor.load(Ordering::Relaxed) / 2, Ordering::Relaxed);
        }
    }

    /// The hottest keys, hottest first.
    pub(crate) fn hottest(&self) -> Vec<Key> {
        let mut all: Vec<(Key, u32)> = self
            .shards
            .iter()
            .flat_map(|shard| {
                let kept = shard.lock().unwrap_or_else(|e| e.into_inner());
                kept.iter()
                    .map(|(key, count)| (key.clone(), *count))
                    .collect::<Vec<_>>()
            })
            .collect();
        all.sort_unstable_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        all.truncate(self.top);
        all.into_iter().map(|(key, _)| key).collect()
    }
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
            // A thousand keys read once each, per round: 99 % of the reads.
            for cold in 0..1000 {
                tracker.record(&key(1_000_000 + round * 1000 + cold));
            }
        }
        let kept: usize = tracker.shards.iter().map(|s| s.lock().unwrap().len()).sum();
        assert!(kept <= SHARDS * tracker.per_shard, "{kept} keys kept");
        let mut hottest = tracker.hottest();
        hottest.sort();
        let mut expected: Vec<Key> = (0..10).map(key).collect();
        expected.sort();
        assert_eq!(hottest, expected);
    }

    #[test]
    fn a_key_that_cooled_down_gives_way() {
        let tracker = HotKeys::new("t").top(2).tracker();
        // Read most of all, but long ago...
        for _ in 0..100_000 {
            tracker.record(&key(1));
        }
        // ...then never again, while two other keys are read a tenth of the time each.
        for round in 0..30_000 {
            tracker.record(&key(2));
            tracker.record(&key(3));
            for cold in 0..8 {
                tracker.record(&key(100 + round * 8 + cold));
            }
        }
        let mut hottest = tracker.hottest();
        hottest.sort();
        assert_eq!(hottest, [key(2), key(3)]);
    }
}
