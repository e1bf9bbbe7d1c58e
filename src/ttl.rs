//! Time-to-live policies: how long a value stays fresh in the cache.
//!
//! A [`TtlPolicy`] sees the key and the value, so a TTL can depend on either (a short TTL
//! for a volatile kind of key, one read from the value itself). It sees the key rather than
//! the request because the inner service consumes the request before the value exists; the
//! key is what the request was reduced to. `None` means "never expires". Closures
//! `Fn(&Key, &V) -> Option<Duration>` are policies, and so is a bare [`Duration`]. [`Jitter`]
//! shortens TTLs by a random fraction, so that keys written together do not expire
//! together.
//!
//! The constants are common defaults for the [`KeyBuilder`](crate::key::KeyBuilder)'s
//! shorthand kinds.
//!
//! # Example
//!
//! ```
//! use std::time::Duration;
//! use tower_caching::key::Key;
//! use tower_caching::ttl::{self, Jitter, TtlPolicy};
//!
//! let key = Key::new("entry:1").unwrap();
//! let policy = Jitter::new(ttl::ENTRY, 0.1);
//! let chosen = policy.ttl(&key, &"value").unwrap();
//! assert!(chosen >= Duration::from_secs(270) && chosen <= Duration::from_secs(300));
//!
//! // A TTL taken from the value:
//! let from_value = |_: &Key, v: &u64| Some(Duration::from_secs(*v));
//! assert_eq!(from_value.ttl(&key, &3), Some(Duration::from_secs(3)));
//! ```

use std::time::Duration;

use crate::key::Key;

/// `entry:{id}`: 5 minutes. One default per shorthand kind of the key builder:
///
/// ```
/// use std::time::Duration;
/// use tower_caching::ttl;
///
/// assert_eq!(ttl::ENTRY, Duration::from_secs(300));
/// assert_eq!(ttl::METRICS, Duration::from_secs(600));
/// assert_eq!(ttl::CONFIG, Duration::from_secs(3600));
/// ```
pub const ENTRY: Duration = Duration::from_secs(5 * 60);
/// `metrics:{id}`: 10 minutes. See [`ENTRY`] for an example.
pub const METRICS: Duration = Duration::from_secs(10 * 60);
/// `config:{name}`: 1 hour. See [`ENTRY`] for an example.
pub const CONFIG: Duration = Duration::from_secs(60 * 60);

/// Decides how long a value cached under a key stays fresh.
///
/// ```
/// use std::time::Duration;
/// use tower_caching::{key::Key, ttl::{NoTtl, TtlPolicy}};
///
/// let key = Key::new("k").unwrap();
/// assert_eq!(Duration::from_secs(5).ttl(&key, &1), Some(Duration::from_secs(5)));
/// assert_eq!(NoTtl.ttl(&key, &1), None);
/// ```
pub trait TtlPolicy<V: ?Sized> {
    /// The TTL for `value` under `key`; `None` never expires.
    fn ttl(&self, key: &Key, value: &V) -> Option<Duration>;
}

impl<V: ?Sized> TtlPolicy<V> for Duration {
    fn ttl(&self, _: &Key, _: &V) -> Option<Duration> {
        Some(*self)
    }
}

impl<V: ?Sized, F> TtlPolicy<V> for F
where
    F: Fn(&Key, &V) -> Option<Duration>,
{
    fn ttl(&self, key: &Key, value: &V) -> Option<Duration> {
        self(key, value)
    }
}

/// Values never expire; only deletes and eviction remove them.
///
/// ```
/// use tower_caching::{key::Key, ttl::{NoTtl, TtlPolicy}};
/// assert_eq!(NoTtl.ttl(&Key::new("k").unwrap(), &()), None);
/// ```
#[derive(Clone, Copy, Debug, Default)]
pub struct NoTtl;

impl<V: ?Sized> TtlPolicy<V> for NoTtl {
    fn ttl(&self, _: &Key, _: &V) -> Option<Duration> {
        None
    }
}

/// The default policy of the layers: a fixed TTL.
///
/// ```
/// use std::time::Duration;
/// use tower_caching::{key::Key, ttl::{FixedTtl, TtlPolicy}};
/// let key = Key::new("k").unwrap();
/// assert_eq!(FixedTtl::default().ttl(&key, &()), Some(Duration::from_secs(300)));
/// ```
#[derive(Clone, Copy, Debug)]
pub struct FixedTtl(pub Duration);

impl Default for FixedTtl {
    /// Five minutes, the seed's TTL for entries.
    fn default() -> Self {
        FixedTtl(ENTRY)
    }
}

impl<V: ?Sized> TtlPolicy<V> for FixedTtl {
    fn ttl(&self, _: &Key, _: &V) -> Option<Duration> {
        Some(self.0)
    }
}

/// Shortens another policy's TTL by a random fraction of at most `spread`, so that keys
/// written at the same moment expire at different moments. Jitter only ever shortens: a
/// configured TTL is a promise about how stale a value may be, and no entry outlives it.
///
/// ```
/// use std::time::Duration;
/// use tower_caching::{key::Key, ttl::{Jitter, TtlPolicy}};
///
/// let key = Key::new("k").unwrap();
/// let policy = Jitter::new(Duration::from_secs(100), 0.2);
/// for _ in 0..100 {
///     let ttl = policy.ttl(&key, &()).unwrap();
///     assert!(ttl >= Duration::from_secs(80) && ttl <= Duration::from_secs(100));
/// }
/// ```
#[derive(Clone, Copy, Debug)]
pub struct Jitter<T> {
    inner: T,
    spread: f64,
}

impl<T> Jitter<T> {
    /// Shortens `inner` by up to `spread` (a fraction: `0.1` is up to 10 %), clamped to
    /// `0.0..=1.0`.
    ///
    /// ```
    /// use std::time::Duration;
    /// use tower_caching::{key::Key, ttl::{Jitter, TtlPolicy}};
    ///
    /// let ttl = Jitter::new(Duration::from_secs(100), 0.1);
    /// let chosen = TtlPolicy::<u8>::ttl(&ttl, &Key::new("k").unwrap(), &0).unwrap();
    /// assert!((90..=100).contains(&chosen.as_secs()));
    /// ```
    pub fn new(inner: T, spread: f64) -> Self {
        let spread = if spread.is_finite() {
            spread.clamp(0.0, 1.0)
        } else {
            0.0
        };
        Jitter { inner, spread }
    }
}

impl<V: ?Sized, T: TtlPolicy<V>> TtlPolicy<V> for Jitter<T> {
    fn ttl(&self, key: &Key, value: &V) -> Option<Duration> {
        let ttl = self.inner.ttl(key, value)?;
        let factor = 1.0 - self.spread * fastrand::f64();
        // In floating point, never past `ttl` and never an overflow (`Duration::MAX`).
        let jittered = Duration::try_from_secs_f64(ttl.as_secs_f64() * factor).unwrap_or(ttl);
        Some(jittered.min(ttl).max(Duration::from_millis(1).min(ttl)))
    }
}
