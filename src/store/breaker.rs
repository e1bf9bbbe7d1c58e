use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use pin_project::pin_project;

use super::{Store, StoreError, StoreValue};
use crate::key::{Key, Pattern, Tag};
use crate::metrics::Observer;

/// A circuit breaker in front of a store: after `failures` consecutive failed operations it
/// **opens** and fails every operation at once with [`StoreError::Unavailable`] — sending
/// nothing, so a dead or stalled Redis costs requests no timeout and sees no reconnection
/// storm — for `open_for`; then it lets **one** probe through (**half-open**): success closes
/// it, failure opens it again.
///
/// The strategies treat `Unavailable` like any store failure: reads go to the loader, writes
/// to the writer. With metrics, the state is the gauge `{ns}_cache_circuit_state` (0 closed,
/// 1 open, 2 half-open) and openings count in `{ns}_cache_circuit_opened_total`.
///
/// ```
/// use std::time::Duration;
/// use tower_caching::store::{CircuitBreaker, MemoryStore};
/// use tower_caching::Cache;
///
/// let store = CircuitBreaker::builder(MemoryStore::new())
///     .failures(5)
///     .open_for(Duration::from_secs(2))
///     .build();
/// let cache: Cache<String, _> = Cache::new(store);
/// # let _ = cache;
/// ```
#[derive(Clone, Debug)]
pub struct CircuitBreaker<S> {
    inner: S,
    state: Arc<Breaker>,
}

#[derive(Debug)]
struct Breaker {
    failures: u32,
    open_for: Duration,
    mode: Mutex<Mode>,
    observer: Observer,
}

#[derive(Debug, Clone, Copy)]
enum Mode {
    Closed { failures: u32 },
    Open { until: Instant },
    HalfOpen { probing: bool },
}

/// Whether the breaker let an operation through, and whether it is the half-open probe.
#[derive(Clone, Copy, Debug)]
enum Admit {
    Pass,
    Probe,
}

impl Breaker {
    fn admit(&self) -> Result<Admit, StoreError> {
        let mut mode = self.mode.lock().unwrap_or_else(|e| e.into_inner());
        match *mode {
            Mode::Closed { .. } => Ok(Admit::Pass),
            Mode::Open { until } if Instant::now() < until => Err(StoreError::Unavailable),
            Mode::Open { .. } | Mode::HalfOpen { probing: false } => {
                *mode = Mode::HalfOpen { probing: true };
                self.observer.circuit_state(2);
                Ok(Admit::Probe)
            }
            Mode::HalfOpen { probing: true } => Err(StoreError::Unavailable),
        }
    }

    fn record(&self, admit: Admit, ok: bool) {
        let mut mode = self.mode.lock().unwrap_or_else(|e| e.into_inner());
        let next = match (*mode, admit, ok) {
            (_, Admit::Probe, true) => Mode::Closed { failures: 0 },
            (_, Admit::Probe, false) => {
                self.observer.circuit_opened();
                Mode::Open {
                    until: Instant::now() + self.open_for,
                }
            }
            (Mode::Closed { .. }, Admit::Pass, true) => Mode::Closed { failures: 0 },
            (Mode::Closed { failures }, Admit::Pass, false) if failures + 1 >= self.failures => {
                self.observer.circuit_opened();
                tracing::warn!(failures = failures + 1, open_for = ?self.open_for, "cache store circuit opened");
                Mode::Open {
                    until: Instant::now() + self.open_for,
                }
            }
            (Mode::Closed { failures }, Admit::Pass, false) => Mode::Closed {
                failures: failures + 1,
            },
            // An operation admitted before the circuit opened, finishing after: it changes
            // nothing.
            (mode, Admit::Pass, _) => mode,
        };
        self.observer.circuit_state(match next {
            Mode::Closed { .. } => 0,
            Mode::Open { .. } => 1,
            Mode::HalfOpen { .. } => 2,
        });
        if matches!((*mode, next), (Mode::HalfOpen { .. }, Mode::Closed { .. })) {
            tracing::info!("cache store circuit closed");
        }
        *mode = next;
    }

    /// A probe that ended without an outcome (its future was dropped: a request timeout, a
    /// client gone) hands the probe to the next operation instead of keeping the circuit
    /// half-open with nothing to close it.
    fn abandon(&self, admit: Admit) {
        if let Admit::Probe = admit {
            let mut mode = self.mode.lock().unwrap_or_else(|e| e.into_inner());
            if let Mode::HalfOpen { probing: true } = *mode {
                *mode = Mode::HalfOpen { probing: false };
            }
        }
    }

    async fn run<T>(
        self: &Arc<Self>,
        operation: impl Future<Output = Result<T, StoreError>>,
    ) -> Result<T, StoreError> {
        let mut ticket = Ticket::new(self.clone(), self.admit()?);
        let result = operation.await;
        ticket.record(result.is_ok());
        result
    }
}

/// An admitted operation's obligation to report its outcome; dropped unreported, it gives
/// the probe back.
#[derive(Debug)]
struct Ticket {
    breaker: Arc<Breaker>,
    admit: Admit,
    reported: bool,
}

impl Ticket {
    fn new(breaker: Arc<Breaker>, admit: Admit) -> Self {
        Ticket {
            breaker,
            admit,
            reported: false,
        }
    }

    fn record(&mut self, ok: bool) {
        self.reported = true;
        self.breaker.record(self.admit, ok);
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        if !self.reported {
            self.breaker.abandon(self.admit);
        }
    }
}

/// Builds a [`CircuitBreaker`].
#[derive(Debug)]
pub struct CircuitBreakerBuilder<S> {
    inner: S,
    failures: u32,
    open_for: Duration,
    observer: Observer,
}

impl<S: Store> CircuitBreaker<S> {
    /// A breaker around `inner` that opens after 5 consecutive failures, for 2 seconds.
    ///
    /// ```
    /// # use tower_caching::{store::{CircuitBreaker, MemoryStore}, Cache};
    /// let cache: Cache<String, _> = Cache::new(CircuitBreaker::new(MemoryStore::new()));
    /// # let _ = cache;
    /// ```
    pub fn new(inner: S) -> Self {
        Self::builder(inner).build()
    }

    /// A builder to choose the thresholds. See
    /// [`failures`](CircuitBreakerBuilder::failures) for an example.
    pub fn builder(inner: S) -> CircuitBreakerBuilder<S> {
        CircuitBreakerBuilder {
            inner,
            failures: 5,
            open_for: Duration::from_secs(2),
            observer: Observer::default(),
        }
    }

    /// The store behind the breaker.
    ///
    /// ```
    /// # use tower_caching::store::{CircuitBreaker, MemoryStore};
    /// let store = CircuitBreaker::new(MemoryStore::new());
    /// assert_eq!(store.get_ref().entry_count(), 0);
    /// ```
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// Whether the breaker stops operations now (open, or half-open with its probe out).
    ///
    /// ```
    /// # use tower_caching::store::{CircuitBreaker, MemoryStore};
    /// assert!(!CircuitBreaker::new(MemoryStore::new()).is_open());
    /// ```
    pub fn is_open(&self) -> bool {
        let mode = self.state.mode.lock().unwrap_or_else(|e| e.into_inner());
        match *mode {
            Mode::Closed { .. } => false,
            Mode::Open { until } => Instant::now() < until,
            Mode::HalfOpen { probing } => probing,
        }
    }
}

impl<S: Store> CircuitBreakerBuilder<S> {
    /// Consecutive failures that open the circuit (default 5, at least 1).
    ///
    /// ```
    /// use std::time::Duration;
    /// use tower_caching::store::{CircuitBreaker, MemoryStore};
    ///
    /// let store = CircuitBreaker::builder(MemoryStore::new())
    ///     .failures(3)
    ///     .open_for(Duration::from_secs(5))
    ///     .build();
    /// assert!(!store.is_open());
    /// ```
    pub fn failures(mut self, failures: u32) -> Self {
        self.failures = failures.max(1);
        self
    }

    /// How long the circuit stays open before a probe (default 2 s). See
    /// [`failures`](CircuitBreakerBuilder::failures) for an example.
    pub fn open_for(mut self, duration: Duration) -> Self {
        self.open_for = duration;
        self
    }

    /// Reports the circuit's state into `metrics`.
    ///
    /// ```
    /// use tower_caching::{metrics::Metrics, store::{CircuitBreaker, MemoryStore}};
    ///
    /// let metrics = Metrics::builder().register(&prometheus::Registry::new())?;
    /// let store = CircuitBreaker::builder(MemoryStore::new()).metrics(&metrics).build();
    /// # let _ = store;
    /// # Ok::<(), prometheus::Error>(())
    /// ```
    #[cfg(feature = "metrics")]
    #[cfg_attr(docsrs, doc(cfg(feature = "metrics")))]
    pub fn metrics(mut self, metrics: &crate::metrics::Metrics) -> Self {
        self.observer = Observer::new(Some(metrics.clone()));
        self
    }

    /// The breaker, closed. See [`failures`](CircuitBreakerBuilder::failures) for an
    /// example.
    pub fn build(self) -> CircuitBreaker<S> {
        self.observer.circuit_state(0);
        CircuitBreaker {
            inner: self.inner,
            state: Arc::new(Breaker {
                failures: self.failures,
                open_for: self.open_for,
                mode: Mutex::new(Mode::Closed { failures: 0 }),
                observer: self.observer,
            }),
        }
    }
}

/// The future of [`CircuitBreaker`]'s `get`: refused at once, or the inner store's get,
/// whose outcome the breaker records.
#[pin_project]
pub struct BreakerGet<F> {
    #[pin]
    inner: Option<F>,
    ticket: Option<Ticket>,
}

impl<F> std::fmt::Debug for BreakerGet<F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BreakerGet")
            .field("refused", &self.inner.is_none())
            .finish()
    }
}

impl<F> Future for BreakerGet<F>
where
    F: Future<Output = Result<Option<StoreValue>, StoreError>>,
{
    type Output = Result<Option<StoreValue>, StoreError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let Some(inner) = this.inner.as_pin_mut() else {
            return Poll::Ready(Err(StoreError::Unavailable));
        };
        let result = std::task::ready!(inner.poll(cx));
        if let Some(ticket) = this.ticket {
            ticket.record(result.is_ok());
        }
        Poll::Ready(result)
    }
}

impl<S: Store> Store for CircuitBreaker<S> {
    type GetFuture = BreakerGet<S::GetFuture>;

    fn get(&self, key: &Key) -> Self::GetFuture {
        match self.state.admit() {
            Ok(admit) => BreakerGet {
                inner: Some(self.inner.get(key)),
                ticket: Some(Ticket::new(self.state.clone(), admit)),
            },
            Err(_) => BreakerGet {
                inner: None,
                ticket: None,
            },
        }
    }

    async fn get_many(&self, keys: &[Key]) -> Result<Vec<Option<StoreValue>>, StoreError> {
        self.state.run(self.inner.get_many(keys)).await
    }

    async fn set(
        &self,
        key: &Key,
        value: StoreValue,
        ttl: Option<Duration>,
    ) -> Result<(), StoreError> {
        self.state.run(self.inner.set(key, value, ttl)).await
    }

    async fn set_many(
        &self,
        entries: Vec<(Key, StoreValue, Option<Duration>)>,
    ) -> Result<(), StoreError> {
        self.state.run(self.inner.set_many(entries)).await
    }

    async fn delete(&self, key: &Key) -> Result<bool, StoreError> {
        self.state.run(self.inner.delete(key)).await
    }

    async fn delete_many(&self, keys: &[Key]) -> Result<u64, StoreError> {
        self.state.run(self.inner.delete_many(keys)).await
    }

    async fn delete_pattern(&self, pattern: &Pattern) -> Result<u64, StoreError> {
        self.state.run(self.inner.delete_pattern(pattern)).await
    }

    async fn exists(&self, key: &Key) -> Result<bool, StoreError> {
        self.state.run(self.inner.exists(key)).await
    }

    async fn set_tagged(
        &self,
        key: &Key,
        value: StoreValue,
        ttl: Option<Duration>,
        tags: &[Tag],
    ) -> Result<(), StoreError> {
        self.state
            .run(self.inner.set_tagged(key, value, ttl, tags))
            .await
    }

    async fn invalidate_tag(&self, tag: &Tag) -> Result<u64, StoreError> {
        self.state.run(self.inner.invalidate_tag(tag)).await
    }

    fn keeps_decoded(&self) -> bool {
        self.inner.keeps_decoded()
    }
}
