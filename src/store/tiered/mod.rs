//! Two tiers: an in-process L1 in front of a shared Redis L2, kept coherent by a pub/sub
//! backplane ([`backplane`]) or by Redis's own client-side-caching invalidations
//! ([`tracking`]).

use std::fmt;
use std::future::{Future, Ready, ready};
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use pin_project::pin_project;
use tokio_util::sync::CancellationToken;

use super::commands::GetFuture;
use super::{MemoryStore, RedisConfig, RedisStore, Store, StoreError, StoreValue};
use crate::key::{Key, Pattern, Tag};

mod backplane;
mod tracking;

pub use self::tracking::Tracking;

/// The default Redis channel of invalidations between instances.
///
/// ```
/// assert_eq!(tower_caching::store::DEFAULT_CHANNEL, "tower-caching:invalidations");
/// ```
pub const DEFAULT_CHANNEL: &str = "tower-caching:invalidations";

/// How a [`TieredStore`] learns that a key changed elsewhere, so that its L1 drops it.
///
/// - [`Coherence::Backplane`]: every write made through this crate publishes the keys it
///   changed on a Redis pub/sub channel, and every instance drops them. Works on every
///   Redis; a write by another client (another service, `redis-cli`) is **not** seen, and
///   stays in L1 until `l1_ttl`.
/// - [`Coherence::Tracking`]: Redis itself tells this instance about every change to a
///   key under the tracked prefixes (RESP3 client-side caching, `CLIENT TRACKING ON
///   BCAST`, Redis 6 or later), whoever made it: writes, deletes, expiries, evictions,
///   `FLUSHALL`. No `PUBLISH` per write. Keys outside the prefixes never enter L1.
///
/// A `&str` is a backplane channel:
///
/// ```
/// use tower_caching::store::{Coherence, Tracking};
///
/// assert_eq!(Coherence::from("payments:invalidations"), Coherence::Backplane("payments:invalidations".into()));
/// let tracked = Coherence::from(Tracking::prefix("entries:"));
/// assert!(matches!(tracked, Coherence::Tracking(_)));
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Coherence {
    /// A pub/sub channel that writes through this crate publish their invalidations on.
    Backplane(String),
    /// Redis's invalidation messages for the keys under some prefixes.
    Tracking(Tracking),
}

impl From<&str> for Coherence {
    fn from(channel: &str) -> Self {
        Coherence::Backplane(channel.to_owned())
    }
}

impl From<String> for Coherence {
    fn from(channel: String) -> Self {
        Coherence::Backplane(channel)
    }
}

impl From<Tracking> for Coherence {
    fn from(tracking: Tracking) -> Self {
        Coherence::Tracking(tracking)
    }
}

/// Two tiers: an in-process [`MemoryStore`] (L1, typed values, no decode on a hit) in front
/// of a shared [`RedisStore`] (L2), kept coherent across app instances by a Redis pub/sub
/// **backplane** or by Redis's own invalidation messages ([`Coherence`]).
///
/// - A read tries L1, then L2; an L2 hit is copied into L1 for at most `l1_ttl` (less when
///   the value is fresh for less), typed once a cache has decoded it. A read that overlapped
///   an invalidation of its key leaves L1 alone: it may have fetched the old value.
/// - A write or delete goes to L2, then L1. On a backplane it is then **published**: every
///   other instance on the channel drops the key (or pattern) from its L1. With tracking,
///   Redis sends the invalidation itself, to every instance, this one included.
/// - When the coherence connection drops or goes silent, L1 is **cleared** — it may have
///   missed invalidations — bypassed until the connection is back, then refilled from L2
///   as reads come.
///
/// Backplane or tracking? The backplane works on every Redis version and carries a pattern
/// delete as one message; tracking also sees writes this crate did not make (a foreign
/// writer's change is otherwise served from L1 until `l1_ttl`), costs no `PUBLISH` per
/// write, and keeps L1 typed like the backplane does (unlike redis-rs's own client cache,
/// which holds raw replies and decodes every hit). Its cost: Redis sends an invalidation for
/// every change under the tracked prefixes, including keys this instance never read, and a
/// write made through this instance drops its own L1 copy too (the next read refills it).
///
/// ```no_run
/// use std::time::Duration;
/// use tower_caching::store::{MemoryStore, RedisConfig, RedisStore, TieredStore};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let config = RedisConfig::from_env()?;
/// let l2 = RedisStore::connect(config.clone()).await?;
/// let store = TieredStore::new(MemoryStore::new(), l2, &config, Duration::from_secs(30))?;
/// # let _ = store;
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct TieredStore {
    l1: MemoryStore,
    l2: RedisStore,
    shared: Arc<Shared>,
}

struct Shared {
    /// This instance, so that it ignores its own messages.
    id: String,
    coherence: Coherence,
    l1_ttl: Duration,
    connected: AtomicBool,
    /// Counts invalidations (local, or received from Redis), each counted after it was
    /// applied to L2 and before it touches L1, so that an L2 value read before one does not
    /// land in L1 after it: per key (hashed into a few slots) for key invalidations, and all
    /// at once for patterns and clears.
    invalidations: Invalidations,
    /// Ends the subscriber (and closes its connection) when the last store clone is dropped.
    stop: CancellationToken,
}

impl Drop for Shared {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

impl Shared {
    /// Whether L1 may hold `key` now: coherence is up, and covers the key.
    fn serves_l1(&self, key: &Key) -> bool {
        self.connected.load(Ordering::Acquire)
            && match &self.coherence {
                Coherence::Backplane(_) => true,
                Coherence::Tracking(tracking) => tracking.covers(key.as_str()),
            }
    }

    /// Whether a write fills L1 with its value: not with tracking, where Redis echoes the
    /// write's own invalidation back to this instance, which would drop the copy again.
    fn fills_on_write(&self) -> bool {
        matches!(self.coherence, Coherence::Backplane(_))
    }

    /// Marks L1 as possibly incoherent: bypassed until [`Shared::coherent_again`].
    fn lost(&self, l1: &MemoryStore) {
        self.connected.store(false, Ordering::Release);
        self.invalidations.everything();
        l1.clear();
    }

    /// Marks L1 as coherent from now on, emptied of what it may have kept from before.
    fn coherent_again(&self, l1: &MemoryStore) {
        self.invalidations.everything();
        l1.clear();
        self.connected.store(true, Ordering::Release);
    }
}

/// How many counters key invalidations are spread over: a read is held back only by an
/// invalidation of its own slot.
const INVALIDATION_SLOTS: usize = 256;

struct Invalidations {
    all: AtomicU64,
    slots: Box<[AtomicU64]>,
}

impl Invalidations {
    fn new() -> Self {
        Invalidations {
            all: AtomicU64::new(0),
            slots: (0..INVALIDATION_SLOTS).map(|_| AtomicU64::new(0)).collect(),
        }
    }

    fn slot(&self, key: &str) -> &AtomicU64 {
        use std::hash::{BuildHasher, BuildHasherDefault, DefaultHasher};
        let hash = BuildHasherDefault::<DefaultHasher>::default().hash_one(key);
        &self.slots[(hash as usize) % INVALIDATION_SLOTS]
    }

    /// Counts an invalidation of `key`.
    fn key(&self, key: &str) {
        self.slot(key).fetch_add(1, Ordering::AcqRel);
    }

    /// Counts an invalidation of everything (a pattern, a clear).
    fn everything(&self) {
        self.all.fetch_add(1, Ordering::AcqRel);
    }

    /// What a read of `key` compares before and after.
    fn seen(&self, key: &str) -> (u64, u64) {
        (
            self.all.load(Ordering::Acquire),
            self.slot(key).load(Ordering::Acquire),
        )
    }
}

impl fmt::Debug for TieredStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TieredStore")
            .field("l1", &self.l1)
            .field("l2", &self.l2)
            .field("coherence", &self.shared.coherence)
            .field("l1_ttl", &self.shared.l1_ttl)
            .finish()
    }
}

impl TieredStore {
    /// L1 `l1` in front of L2 `l2`, with the backplane on the default channel; `config`
    /// tells the subscriber where Redis is. Must be called within a Tokio runtime. See
    /// [`TieredStore`] for an example.
    pub fn new(
        l1: MemoryStore,
        l2: RedisStore,
        config: &RedisConfig,
        l1_ttl: Duration,
    ) -> Result<Self, StoreError> {
        Self::with_coherence(l1, l2, config, l1_ttl, DEFAULT_CHANNEL)
    }

    /// [`TieredStore::new`] on another channel (one per application sharing a Redis).
    ///
    /// ```no_run
    /// use std::time::Duration;
    /// use tower_caching::store::{MemoryStore, RedisConfig, RedisStore, TieredStore};
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let config = RedisConfig::from_env()?;
    /// let l2 = RedisStore::connect(config.clone()).await?;
    /// let store = TieredStore::with_channel(
    ///     MemoryStore::builder().max_entries(50_000).build(),
    ///     l2,
    ///     &config,
    ///     Duration::from_secs(30),
    ///     "payments:invalidations",
    /// )?;
    /// // L1 serves reads only while the backplane is subscribed.
    /// println!("coherent: {}", store.is_coherent());
    /// # Ok(())
    /// # }
    /// ```
    pub fn with_channel(
        l1: MemoryStore,
        l2: RedisStore,
        config: &RedisConfig,
        l1_ttl: Duration,
        channel: &str,
    ) -> Result<Self, StoreError> {
        Self::with_coherence(l1, l2, config, l1_ttl, channel)
    }

    /// L1 `l1` in front of L2 `l2`, kept coherent as `coherence` says: a backplane channel,
    /// or Redis's own invalidations of the keys under some prefixes ([`Tracking`]), which
    /// also drop an L1 copy that another client changed. `config` tells where Redis is.
    /// Must be called within a Tokio runtime.
    ///
    /// ```no_run
    /// use std::time::Duration;
    /// use tower_caching::store::{MemoryStore, RedisConfig, RedisStore, TieredStore, Tracking};
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let config = RedisConfig::from_env()?;
    /// let l2 = RedisStore::connect(config.clone()).await?;
    /// let store = TieredStore::with_coherence(
    ///     MemoryStore::new(),
    ///     l2,
    ///     &config,
    ///     Duration::from_secs(30),
    ///     // Every change to a key under `entry:`, by anyone, drops it from L1.
    ///     Tracking::prefix("entry:"),
    /// )?;
    /// # let _ = store;
    /// # Ok(())
    /// # }
    /// ```
    ///
    /// Overlapping prefixes are refused, as Redis would refuse them:
    ///
    /// ```
    /// use std::time::Duration;
    /// use tower_caching::store::{MemoryStore, RedisConfig, RedisStore, TieredStore, Tracking};
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// let config = RedisConfig::new("127.0.0.1:6379");
    /// let l2 = RedisStore::connect_lazy(config.clone()).unwrap();
    /// let overlapping = Tracking::prefix("entry:").and_prefix("entry:1");
    /// let refused = TieredStore::with_coherence(MemoryStore::new(), l2, &config, Duration::from_secs(30), overlapping);
    /// assert!(refused.unwrap_err().to_string().contains("overlap"));
    /// # }
    /// ```
    pub fn with_coherence(
        l1: MemoryStore,
        l2: RedisStore,
        config: &RedisConfig,
        l1_ttl: Duration,
        coherence: impl Into<Coherence>,
    ) -> Result<Self, StoreError> {
        let client = config.client()?;
        Self::start(
            l1,
            l2,
            l1_ttl,
            coherence.into(),
            Subscription::Fixed(Box::new(client)),
        )
    }

    /// [`TieredStore::with_coherence`] over a store that follows Redis Sentinels
    /// ([`RedisStore::connect_sentinel`]): the backplane (or tracking) connection is on the
    /// primary the store is on, and moves with it after a failover (L1 is cleared meanwhile,
    /// as after any disconnection). `coherence` is a backplane channel or a [`Tracking`].
    /// Must be called within a Tokio runtime.
    ///
    /// ```no_run
    /// use std::time::Duration;
    /// use tower_caching::store::{MemoryStore, RedisStore, SentinelConfig, TieredStore};
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let l2 = RedisStore::connect_sentinel(SentinelConfig::new(["10.0.0.1:26379"], "cache")).await?;
    /// let store = TieredStore::over_sentinels(
    ///     MemoryStore::new(),
    ///     l2,
    ///     Duration::from_secs(30),
    ///     tower_caching::store::DEFAULT_CHANNEL,
    /// )?;
    /// # let _ = store;
    /// # Ok(())
    /// # }
    /// ```
    ///
    /// A store on a single node is refused (use [`TieredStore::new`]):
    ///
    /// ```
    /// use std::time::Duration;
    /// use tower_caching::store::{MemoryStore, RedisConfig, RedisStore, TieredStore};
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let l2 = RedisStore::connect_lazy(RedisConfig::new("127.0.0.1:6379"))?;
    /// let refused = TieredStore::over_sentinels(MemoryStore::new(), l2, Duration::from_secs(30), "c");
    /// assert!(refused.is_err());
    /// # Ok(())
    /// # }
    /// ```
    pub fn over_sentinels(
        l1: MemoryStore,
        l2: RedisStore,
        l1_ttl: Duration,
        coherence: impl Into<Coherence>,
    ) -> Result<Self, StoreError> {
        if !l2.follows_sentinels() {
            return Err(StoreError::Connect {
                message: "the L2 store does not follow Redis Sentinels: use TieredStore::new"
                    .into(),
                source: None,
            });
        }
        Self::start(l1, l2, l1_ttl, coherence.into(), Subscription::Primary)
    }

    fn start(
        l1: MemoryStore,
        l2: RedisStore,
        l1_ttl: Duration,
        coherence: Coherence,
        subscription: Subscription,
    ) -> Result<Self, StoreError> {
        if let Coherence::Tracking(tracking) = &coherence {
            tracking.check()?;
        }
        let stop = CancellationToken::new();
        let shared = Arc::new(Shared {
            id: format!("{:016x}", fastrand::u64(..)),
            coherence,
            l1_ttl,
            connected: AtomicBool::new(false),
            invalidations: Invalidations::new(),
            stop: stop.clone(),
        });
        let subscriber = Subscriber {
            subscription,
            l1: l1.clone(),
            l2: l2.clone(),
            shared: Arc::downgrade(&shared),
        };
        tokio::spawn(async move {
            tokio::select! {
                _ = stop.cancelled() => {}
                _ = subscriber.run() => {}
            }
        });
        Ok(TieredStore { l1, l2, shared })
    }

    /// Counts invalidations of `keys`, before they are applied to L1.
    fn invalidating<'k>(&self, keys: impl IntoIterator<Item = &'k Key>) {
        for key in keys {
            self.shared.invalidations.key(key.as_str());
        }
    }

    /// Whether L1 is kept coherent now (the backplane is subscribed, or tracking is on): L1
    /// is only used while it is. See [`with_channel`](TieredStore::with_channel) for an
    /// example.
    pub fn is_coherent(&self) -> bool {
        self.shared.connected.load(Ordering::Acquire)
    }

    /// Writes `value` under `key` into L1 after its L2 write, unless an invalidation of the
    /// key ran since `before` or runs while the copy is made (it may have been a newer
    /// write, which L1 must not hide), or L1 must not hold the key; then drops L1's copy.
    async fn after_write(
        &self,
        key: &Key,
        value: StoreValue,
        ttl: Option<Duration>,
        before: (u64, u64),
    ) {
        let invalidations = &self.shared.invalidations;
        self.invalidating([key]);
        let own = invalidations.seen(key.as_str());
        // Only this write's own count since `before`: read in one step with it, so that an
        // invalidation landing between a check and the count cannot pass unseen.
        let unchanged = own == (before.0, before.1.wrapping_add(1));
        let fill = unchanged && self.shared.fills_on_write() && self.shared.serves_l1(key);
        if fill {
            let l1_ttl = ttl.map_or(self.shared.l1_ttl, |ttl| ttl.min(self.shared.l1_ttl));
            let _ = self.l1.set(key, value, Some(l1_ttl)).await;
        }
        // Checked after the copy: an invalidation counted since may have deleted before it.
        if !fill || invalidations.seen(key.as_str()) != own {
            let _ = self.l1.delete(key).await;
        }
        self.publish('k', key.as_str()).await;
    }

    async fn publish(&self, kind: char, target: &str) {
        let Coherence::Backplane(channel) = &self.shared.coherence else {
            // Redis sends tracking invalidations itself.
            return;
        };
        let text = backplane::message(&self.shared.id, kind, target);
        if let Err(error) = self.l2.publish(channel, &text).await {
            // Other instances may keep a stale L1 entry until its TTL: log it loudly.
            tracing::error!(%error, "cache invalidation not published to other instances");
        }
    }

    /// Publishes the invalidation of `keys`, in one message.
    async fn publish_keys(&self, keys: &[Key]) {
        match keys {
            [] => {}
            [key] => self.publish('k', key.as_str()).await,
            keys => {
                let joined = keys.iter().map(Key::as_str).collect::<Vec<_>>().join("\n");
                self.publish('K', &joined).await;
            }
        }
    }
}

/// Where the coherence connection goes.
enum Subscription {
    /// The address of the configuration.
    Fixed(Box<redis::Client>),
    /// The primary the L2 store follows now.
    Primary,
}

/// Keeps L1 coherent for as long as the store lives: holds the backplane subscription or
/// the tracking connection, reconnecting with backoff, and clears L1 whenever it was
/// disconnected or went silent.
struct Subscriber {
    subscription: Subscription,
    l1: MemoryStore,
    l2: RedisStore,
    shared: std::sync::Weak<Shared>,
}

/// How often the coherence connection proves it is alive (a heartbeat through the
/// backplane, a `PING` on the tracking connection); one that shows no sign of life for
/// [`SILENCE`] is taken as dead (a half-open connection delivers nothing and reports no
/// error): L1 is cleared and the connection renewed.
const HEARTBEAT: Duration = Duration::from_millis(500);

/// How long a coherence connection may show no sign of life: eight heartbeats, so that a
/// busy machine's scheduling delays never pass for a dead connection.
const SILENCE: Duration = Duration::from_secs(4);

impl Subscriber {
    async fn run(self) {
        let mut backoff = Duration::from_millis(50);
        loop {
            let Some(coherence) = self.shared.upgrade().map(|s| s.coherence.clone()) else {
                return;
            };
            let client = match &self.subscription {
                Subscription::Fixed(client) => Some(client.as_ref().clone()),
                Subscription::Primary => self.l2.primary_client(),
            };
            let listened = match (client, coherence) {
                (None, _) => false,
                (Some(client), Coherence::Backplane(channel)) => {
                    self.backplane(client, &channel).await
                }
                (Some(client), Coherence::Tracking(tracking)) => {
                    self.tracking(client, &tracking).await
                }
            };
            if let Some(shared) = self.shared.upgrade() {
                shared.lost(&self.l1);
            }
            if listened {
                backoff = Duration::from_millis(50);
                tracing::warn!("cache coherence connection lost: L1 cleared");
            } else {
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(2));
            }
        }
    }

    /// Marks L1 coherent once the connection is up; `false` if the store is gone.
    fn coherent(&self) -> bool {
        match self.shared.upgrade() {
            Some(shared) => {
                shared.coherent_again(&self.l1);
                true
            }
            None => false,
        }
    }
}

/// How long an L2 value may live in L1: `l1_ttl`, or less when the value's own freshness
/// ends sooner (from its frame header), so L1 never serves it past that. `None` when it is
/// no longer fresh: stale values (kept for fail-safe) stay in L2 only.
fn l1_ttl_of(value: &StoreValue, l1_ttl: Duration) -> Option<Duration> {
    let Ok(header) = crate::frame::header(value.header_bytes()) else {
        return Some(l1_ttl);
    };
    match header.fresh_until_ms {
        None => Some(l1_ttl),
        Some(until) => {
            let left = until.checked_sub(crate::frame::now_ms())?;
            (left > 0).then(|| l1_ttl.min(Duration::from_millis(left)))
        }
    }
}

/// The future of [`TieredStore`]'s `get`: an L1 hit at once, or the L2 lookup that fills L1.
#[pin_project(project = TieredGetProj)]
pub enum TieredGet {
    /// Found in L1.
    L1(#[pin] Ready<Result<Option<StoreValue>, StoreError>>),
    /// Looked up in L2.
    L2(#[pin] GetFuture),
}

impl fmt::Debug for TieredGet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            TieredGet::L1(_) => "TieredGet::L1",
            TieredGet::L2(_) => "TieredGet::L2",
        })
    }
}

impl Future for TieredGet {
    type Output = Result<Option<StoreValue>, StoreError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project() {
            TieredGetProj::L1(found) => found.poll(cx),
            TieredGetProj::L2(lookup) => lookup.poll(cx),
        }
    }
}

impl Store for TieredStore {
    type GetFuture = TieredGet;

    fn get(&self, key: &Key) -> Self::GetFuture {
        if self.is_coherent()
            && let Some(value) = self.l1.get_now(key)
        {
            return TieredGet::L1(ready(Ok(Some(value))));
        }
        let (l1, l2, key) = (self.l1.clone(), self.l2.clone(), key.clone());
        let shared = self.shared.clone();
        let l1_ttl = shared.l1_ttl;
        // Keys outside what L1 may hold never enter it, so the hit path above needs no
        // prefix check.
        let coherent = shared.serves_l1(&key);
        let before = shared.invalidations.seen(key.as_str());
        TieredGet::L2(Box::pin(async move {
            let found = l2.get(&key).await?;
            let Some(value) = found else {
                return Ok(None);
            };
            let Some(ttl) = coherent.then(|| l1_ttl_of(&value, l1_ttl)).flatten() else {
                return Ok(Some(value));
            };
            let unchanged = || shared.invalidations.seen(key.as_str()) == before;
            if !unchanged() {
                return Ok(Some(value));
            }
            let _ = l1.set(&key, value.clone(), Some(ttl)).await;
            if !unchanged() {
                // An invalidation ran meanwhile: it may have missed this copy.
                let _ = l1.delete(&key).await;
                return Ok(Some(value));
            }
            // Once a cache decodes it, L1 keeps the typed value: later L1 hits skip decoding.
            let bytes = value.bytes().clone();
            Ok(Some(value.on_decoded(move |decoded, size| {
                l1.attach_decoded(&key, &bytes, decoded, size);
                // The same guard as the copy: an invalidation that ran while the typed value
                // was written back may have been undone by it.
                if shared.invalidations.seen(key.as_str()) != before {
                    l1.remove_now(&key);
                }
            })))
        }))
    }

    async fn get_many(&self, keys: &[Key]) -> Result<Vec<Option<StoreValue>>, StoreError> {
        self.l2.get_many(keys).await
    }

    async fn set(
        &self,
        key: &Key,
        value: StoreValue,
        ttl: Option<Duration>,
    ) -> Result<(), StoreError> {
        let before = self.shared.invalidations.seen(key.as_str());
        self.l2.set(key, value.clone(), ttl).await?;
        self.after_write(key, value, ttl, before).await;
        Ok(())
    }

    async fn set_many(
        &self,
        entries: Vec<(Key, StoreValue, Option<Duration>)>,
    ) -> Result<(), StoreError> {
        let keys: Vec<Key> = entries.iter().map(|(key, _, _)| key.clone()).collect();
        self.l2.set_many(entries).await?;
        self.invalidating(&keys);
        let _ = self.l1.delete_many(&keys).await;
        self.publish_keys(&keys).await;
        Ok(())
    }

    // Each invalidation is applied to L2 first and counted after: a read that copies from
    // L2 into L1 meanwhile either saw L2 after it, or sees the count move and drops its copy.
    async fn delete(&self, key: &Key) -> Result<bool, StoreError> {
        let deleted = self.l2.delete(key).await;
        self.invalidating([key]);
        let _ = self.l1.delete(key).await;
        self.publish('k', key.as_str()).await;
        deleted
    }

    async fn delete_many(&self, keys: &[Key]) -> Result<u64, StoreError> {
        let deleted = self.l2.delete_many(keys).await;
        self.invalidating(keys);
        let _ = self.l1.delete_many(keys).await;
        self.publish_keys(keys).await;
        deleted
    }

    async fn delete_pattern(&self, pattern: &Pattern) -> Result<u64, StoreError> {
        let deleted = self.l2.delete_pattern(pattern).await;
        self.shared.invalidations.everything();
        let _ = self.l1.delete_pattern(pattern).await;
        self.publish('p', pattern.as_str()).await;
        deleted
    }

    async fn exists(&self, key: &Key) -> Result<bool, StoreError> {
        self.l2.exists(key).await
    }

    async fn set_tagged(
        &self,
        key: &Key,
        value: StoreValue,
        ttl: Option<Duration>,
        tags: &[Tag],
    ) -> Result<(), StoreError> {
        // L1 needs no filing: a tag's invalidation names its keys to every instance.
        let before = self.shared.invalidations.seen(key.as_str());
        self.l2.set_tagged(key, value.clone(), ttl, tags).await?;
        self.after_write(key, value, ttl, before).await;
        Ok(())
    }

    async fn invalidate_tag(&self, tag: &Tag) -> Result<u64, StoreError> {
        let (keys, deleted) = self.l2.invalidate_tag_keys(tag).await;
        self.invalidating(&keys);
        let _ = self.l1.delete_many(&keys).await;
        // Published even when L2 failed part way: other instances must drop what was deleted.
        for batch in keys.chunks(1000) {
            self.publish_keys(batch).await;
        }
        deleted
    }

    fn keeps_decoded(&self) -> bool {
        true
    }
    fn shared_leases(&self) -> Option<super::SharedLeases> {
        self.l2.shared_leases()
    }
}
