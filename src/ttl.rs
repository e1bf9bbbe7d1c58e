//! Time-to-live policies: how long a value stays fresh in the cache.
//!
//! A [`TtlPolicy`] sees the request and the value, so a TTL can depend on either (a short TTL
//! for a volatile kind of entry, one read from the value itself). `None` means "never
//! expires". Closures `Fn(&Req, &V) -> Option<Duration>` are policies, and so is a bare
//! [`Duration`]. [`Jitter`] spreads expiry times so that keys written together do not expire
//! together.
//!
//! The constants are the TTLs of the original payments directory service.
//!
//! # Example
//!
//! ```
//! use std::time::Duration;
//! use tower_caching::ttl::{self, Jitter, TtlPolicy};
//!
//! let policy = Jitter::new(ttl::ENTRY, 0.1);
//! let chosen = policy.ttl(&(), &"value").unwrap();
//! assert!(chosen >= Duration::from_secs(270) && chosen <= Duration::from_secs(330));
//!
//! // A TTL taken from the value:
//! let from_value = |_: &(), v: &u64| Some(Duration::from_secs(*v));
//! assert_eq!(from_value.ttl(&(), &3), Some(Duration::from_secs(3)));
//! ```

use std::time::Duration;

/// `entry:{id}`: 5 minutes.
pub const ENTRY: Duration = Duration::from_secs(5 * 60);
/// `metrics:{ispb}`: 10 minutes.
pub const METRICS: Duration = Duration::from_secs(10 * 60);
/// `config:{name}`: 1 hour.
pub const CONFIG: Duration = Duration::from_secs(60 * 60);
/// `participant:{ispb}`: 15 minutes.
pub const PARTICIPANT: Duration = Duration::from_secs(15 * 60);
/// `dict:key:{key}`: 5 minutes.
pub const DICT_KEY: Duration = Duration::from_secs(5 * 60);
/// `dict:ispb:{ispb}`: 5 minutes.
pub const DICT_ISPB: Duration = Duration::from_secs(5 * 60);

/// Decides how long a value loaded or written for a request stays fresh.
///
/// ```
/// use std::time::Duration;
/// use tower_caching::ttl::{NoTtl, TtlPolicy};
///
/// assert_eq!(Duration::from_secs(5).ttl(&(), &1), Some(Duration::from_secs(5)));
/// assert_eq!(NoTtl.ttl(&(), &1), None);
/// ```
pub trait TtlPolicy<Req: ?Sized, V: ?Sized> {
    /// The TTL for `value`, produced for `request`; `None` never expires.
    fn ttl(&self, request: &Req, value: &V) -> Option<Duration>;
}

impl<Req: ?Sized, V: ?Sized> TtlPolicy<Req, V> for Duration {
    fn ttl(&self, _: &Req, _: &V) -> Option<Duration> {
        Some(*self)
    }
}

impl<Req: ?Sized, V: ?Sized, F> TtlPolicy<Req, V> for F
where
    F: Fn(&Req, &V) -> Option<Duration>,
{
    fn ttl(&self, request: &Req, value: &V) -> Option<Duration> {
        self(request, value)
    }
}

/// Values never expire; only deletes and eviction remove them.
///
/// ```
/// use tower_caching::ttl::{NoTtl, TtlPolicy};
/// assert_eq!(NoTtl.ttl(&(), &()), None);
/// ```
#[derive(Clone, Copy, Debug, Default)]
pub struct NoTtl;

impl<Req: ?Sized, V: ?Sized> TtlPolicy<Req, V> for NoTtl {
    fn ttl(&self, _: &Req, _: &V) -> Option<Duration> {
        None
    }
}

/// The default policy of the layers: a fixed TTL.
///
/// ```
/// use std::time::Duration;
/// use tower_caching::ttl::{FixedTtl, TtlPolicy};
/// assert_eq!(FixedTtl::default().ttl(&(), &()), Some(Duration::from_secs(300)));
/// ```
#[derive(Clone, Copy, Debug)]
pub struct FixedTtl(pub Duration);

impl Default for FixedTtl {
    /// Five minutes, the seed's TTL for entries.
    fn default() -> Self {
        FixedTtl(ENTRY)
    }
}

impl<Req: ?Sized, V: ?Sized> TtlPolicy<Req, V> for FixedTtl {
    fn ttl(&self, _: &Req, _: &V) -> Option<Duration> {
        Some(self.0)
    }
}

/// Scales another policy's TTL by a random factor in `1 ± spread`, so that keys written at
/// the same moment expire at different moments.
///
/// ```
/// use std::time::Duration;
/// use tower_caching::ttl::{Jitter, TtlPolicy};
///
/// let policy = Jitter::new(Duration::from_secs(100), 0.2);
/// for _ in 0..100 {
///     let ttl = policy.ttl(&(), &()).unwrap();
///     assert!(ttl >= Duration::from_secs(80) && ttl <= Duration::from_secs(120));
/// }
/// ```
#[derive(Clone, Copy, Debug)]
pub struct Jitter<T> {
    inner: T,
    spread: f64,
}

impl<T> Jitter<T> {
    /// Jitters `inner` by `±spread` (a fraction: `0.1` is ±10 %), clamped to `0.0..=1.0`.
    pub fn new(inner: T, spread: f64) -> Self {
        let spread = if spread.is_finite() {
            spread.clamp(0.0, 1.0)
        } else {
            0.0
        };
        Jitter { inner, spread }
    }
}

impl<Req: ?Sized, V: ?Sized, T: TtlPolicy<Req, V>> TtlPolicy<Req, V> for Jitter<T> {
    fn ttl(&self, request: &Req, value: &V) -> Option<Duration> {
        let ttl = self.inner.ttl(request, value)?;
        let factor = 1.0 + self.spread * (fastrand::f64() * 2.0 - 1.0);
        Some(ttl.mul_f64(factor).max(Duration::from_millis(1)))
    }
}
