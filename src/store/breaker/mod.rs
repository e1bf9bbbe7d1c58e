use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use pin_project::pin_project;

use super::lease::{Acquired, LeaseBackend, LeaseFuture, Watch};
use super::{Store, StoreError, StoreValue};
use crate::key::{Key, Pattern, Tag};
use crate::metrics::{KeyDigest, Observer};

mod repair;

use self::repair::Repairs;

/// How long the repair task waits after a failed round while the circuit is closed.
const REPAIR_RETRY: Duration = Duration::from_millis(100);

/// A circuit breaker in front of a store: after `failures` consecutive failed operations it
/// **opens** and fails every operation at once with [`StoreError::Unavailable`] — sending
/// nothing, so a dead or stalled Redis costs requests no timeout and sees no reconnection
/// storm — for `open_for`; then it lets **one** probe through (**half-open**): success closes
/// it, failure opens it again.
///
/// Only failures of the store count: a command it rejects while healthy
/// ([`StoreError::Rejected`]: a value of another type at the key, a full server) does not.
///
/// The strategies treat `Unavailable` like any store failure: reads go to the loader, writes
/// to the writer.
///
/// # Auto-recovery
///
/// A write the store could not apply — a set or delete that failed, timed out (it may
/// still land later) or was refused while the circuit was open — would leave the key's
/// previous value in the store, older than the writer's. The breaker remembers each such
/// key (and pattern delete and tag invalidation), latest wins, up to
/// [`repairs`](CircuitBreakerBuilder::repairs) keys, and deletes them as soon as the store
/// answers again: a task in the background retries while the circuit is closed, and is the
/// half-open probe when it opens. Until its repair lands a key **is bypassed**: reads of it
/// miss (so they load, and the load's set, sent after any late one, settles it), and so
/// do all reads while a tag invalidation is owed. So a slow or stalled store leaves no key
/// serving a value older than the writer's once it answers again.
///
/// With metrics, the state is the gauge `{ns}_cache_circuit_state` (0 closed,
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
    repairs: Repairs,
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

    /// How long until the circuit lets a probe through, when it is open.
    fn until_probe(&self) -> Option<Duration> {
        let mode = self.mode.lock().unwrap_or_else(|e| e.into_inner());
        match *mode {
            Mode::Open { until } => Some(until.saturating_duration_since(Instant::now())),
            _ => None,
        }
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

    /// Records an outcome: only a failure of the store counts against it.
    fn outcome<T>(&mut self, result: &Result<T, StoreError>) {
        self.record(result.as_ref().map_or_else(|e| !e.is_unhealthy(), |_| true));
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
    repairs: usize,
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
            repairs: 100_000,
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

    /// How many keys, pattern deletes and tag invalidations wait for the store to answer
    /// again (see [auto-recovery](CircuitBreaker#auto-recovery)).
    ///
    /// ```
    /// # use tower_caching::store::{CircuitBreaker, MemoryStore};
    /// assert_eq!(CircuitBreaker::new(MemoryStore::new()).repairs_owed(), 0);
    /// ```
    pub fn repairs_owed(&self) -> usize {
        self.state.repairs.owed()
    }

    /// The breaker's admission, for the crate's Redis commands that are not store
    /// operations (the durable write-behind queue's).
    #[cfg(feature = "redis")]
    pub(crate) fn gate(&self) -> Gate {
        Gate(self.state.clone())
    }

    /// Runs a write of `keys`: admitted or refused by the circuit, its outcome recorded;
    /// a failure owes the keys a repair, a success settles what they owed before it.
    async fn write<T>(
        &self,
        keys: &[Key],
        operation: impl Future<Output = Result<T, StoreError>>,
    ) -> Result<T, StoreError> {
        let stamp = self.state.repairs.stamp();
        let result = self.admitted(operation).await;
        match &result {
            Ok(_) => self.state.repairs.settle_keys(keys, stamp),
            Err(error) => {
                if let [key] = keys {
                    tracing::debug!(key = %KeyDigest(key), %error, "write not applied: the key owes a repair");
                }
                self.state.repairs.owe_keys(keys);
                self.repair_in_background();
            }
        }
        result
    }

    /// Runs `operation` if the circuit admits it, recording its outcome.
    async fn admitted<T>(
        &self,
        operation: impl Future<Output = Result<T, StoreError>>,
    ) -> Result<T, StoreError> {
        let mut ticket = Ticket::new(self.state.clone(), self.state.admit()?);
        let result = operation.await;
        ticket.outcome(&result);
        result
    }

    /// Starts the repair task unless it runs. It holds the breaker weakly: it ends once
    /// nothing is owed or every handle on the store is gone.
    fn repair_in_background(&self) {
        let repairs = &self.state.repairs;
        if repairs.draining.swap(true, Ordering::AcqRel) {
            return;
        }
        if tokio::runtime::Handle::try_current().is_err() {
            // Nothing to run it on: the next failure within a runtime starts it.
            repairs.draining.store(false, Ordering::Release);
            return;
        }
        tokio::spawn(repair_until_paid(
            self.inner.clone(),
            Arc::downgrade(&self.state),
        ));
    }
}

/// A breaker's admission without its store: commands run through it are refused while the
/// circuit is open and count towards it like the store's own.
#[cfg(feature = "redis")]
#[derive(Clone, Debug)]
pub(crate) struct Gate(Arc<Breaker>);

#[cfg(feature = "redis")]
impl Gate {
    pub(crate) async fn run<T>(
        &self,
        operation: impl Future<Output = Result<T, StoreError>>,
    ) -> Result<T, StoreError> {
        let mut ticket = Ticket::new(self.0.clone(), self.0.admit()?);
        let result = operation.await;
        ticket.outcome(&result);
        result
    }
}

/// The repair task: rounds of repairs, each admitted by the circuit (the half-open probe
/// when it was open), until nothing is owed.
async fn repair_until_paid<S: Store>(inner: S, state: std::sync::Weak<Breaker>) {
    loop {
        let Some(breaker) = state.upgrade() else {
            return;
        };
        let repairs = &breaker.repairs;
        if repairs.owed() == 0 {
            repairs.draining.store(false, Ordering::Release);
            // A debt owed between the look and the flag found the task still running.
            if repairs.owed() == 0 || repairs.draining.swap(true, Ordering::AcqRel) {
                return;
            }
        }
        let wait = match breaker.admit() {
            Ok(admit) => {
                let mut ticket = Ticket::new(breaker.clone(), admit);
                let paid = repair_round(&inner, repairs).await;
                ticket.record(paid);
                if paid {
                    continue;
                }
                breaker.until_probe().unwrap_or(REPAIR_RETRY)
            }
            Err(_) => breaker.until_probe().unwrap_or(REPAIR_RETRY),
        };
        drop(breaker);
        tokio::time::sleep(wait.max(Duration::from_millis(1))).await;
    }
}

/// One round: a batch of owed keys deleted in one round trip, then the owed patterns and
/// tags. Whether the store answered every step.
async fn repair_round<S: Store>(inner: &S, repairs: &Repairs) -> bool {
    let round = repairs.next_round();
    if round.is_empty() {
        return true;
    }
    if !round.keys.is_empty() {
        let keys: Vec<Key> = round.keys.iter().map(|(key, _)| key.clone()).collect();
        match inner.delete_many(&keys).await {
            Err(error) if error.is_unhealthy() => return false,
            Err(error) => {
                tracing::error!(keys = keys.len(), %error, "the store rejects deleting keys that owe a repair: they may serve old values until they expire");
                repairs.repaired_keys(&round.keys);
            }
            Ok(_) => repairs.repaired_keys(&round.keys),
        }
    }
    for (pattern, stamp) in &round.patterns {
        match inner.delete_pattern(pattern).await {
            Err(error) if error.is_unhealthy() => return false,
            _ => repairs.repaired_pattern(pattern, *stamp),
        }
    }
    for (tag, stamp) in &round.tags {
        match inner.invalidate_tag(tag).await {
            Err(error) if error.is_unhealthy() => return false,
            _ => repairs.repaired_tag(tag, *stamp),
        }
    }
    tracing::info!(
        keys = round.keys.len(),
        patterns = round.patterns.len(),
        tags = round.tags.len(),
        "writes the store missed were repaired"
    );
    true
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

    /// How many keys may owe a repair at once (default 100,000, at least 1; see
    /// [auto-recovery](CircuitBreaker#auto-recovery)). Past it the oldest is forgotten,
    /// logged and left to expire.
    ///
    /// ```
    /// use tower_caching::store::{CircuitBreaker, MemoryStore};
    ///
    /// let store = CircuitBreaker::builder(MemoryStore::new()).repairs(10_000).build();
    /// assert_eq!(store.repairs_owed(), 0);
    /// ```
    pub fn repairs(mut self, keys: usize) -> Self {
        self.repairs = keys;
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
                repairs: Repairs::new(self.repairs, self.observer.clone()),
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
    /// The key owes a repair: a miss, without asking the store.
    bypassed: bool,
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
            return Poll::Ready(if *this.bypassed {
                Ok(None)
            } else {
                Err(StoreError::Unavailable)
            });
        };
        let result = std::task::ready!(inner.poll(cx));
        if let Some(ticket) = this.ticket {
            ticket.outcome(&result);
        }
        Poll::Ready(result)
    }
}

impl<S: Store> Store for CircuitBreaker<S> {
    type GetFuture = BreakerGet<S::GetFuture>;

    fn get(&self, key: &Key) -> Self::GetFuture {
        if self.state.repairs.bypasses(key) {
            return BreakerGet {
                inner: None,
                ticket: None,
                bypassed: true,
            };
        }
        match self.state.admit() {
            Ok(admit) => BreakerGet {
                inner: Some(self.inner.get(key)),
                ticket: Some(Ticket::new(self.state.clone(), admit)),
                bypassed: false,
            },
            Err(_) => BreakerGet {
                inner: None,
                ticket: None,
                bypassed: false,
            },
        }
    }

    async fn get_many(&self, keys: &[Key]) -> Result<Vec<Option<StoreValue>>, StoreError> {
        let mut values = self.admitted(self.inner.get_many(keys)).await?;
        if self.state.repairs.owed() > 0 {
            for (value, key) in values.iter_mut().zip(keys) {
                if self.state.repairs.bypasses(key) {
                    *value = None;
                }
            }
        }
        Ok(values)
    }

    async fn set(
        &self,
        key: &Key,
        value: StoreValue,
        ttl: Option<Duration>,
    ) -> Result<(), StoreError> {
        self.write(std::slice::from_ref(key), self.inner.set(key, value, ttl))
            .await
    }

    async fn set_many(
        &self,
        entries: Vec<(Key, StoreValue, Option<Duration>)>,
    ) -> Result<(), StoreError> {
        let keys: Vec<Key> = entries.iter().map(|(key, _, _)| key.clone()).collect();
        self.write(&keys, self.inner.set_many(entries)).await
    }

    async fn delete(&self, key: &Key) -> Result<bool, StoreError> {
        self.write(std::slice::from_ref(key), self.inner.delete(key))
            .await
    }

    async fn delete_many(&self, keys: &[Key]) -> Result<u64, StoreError> {
        self.write(keys, self.inner.delete_many(keys)).await
    }

    async fn delete_pattern(&self, pattern: &Pattern) -> Result<u64, StoreError> {
        let stamp = self.state.repairs.stamp();
        let result = self.admitted(self.inner.delete_pattern(pattern)).await;
        match &result {
            Ok(_) => self.state.repairs.settle_pattern(pattern, stamp),
            Err(_) => {
                self.state.repairs.owe_pattern(pattern);
                self.repair_in_background();
            }
        }
        result
    }

    async fn exists(&self, key: &Key) -> Result<bool, StoreError> {
        if self.state.repairs.bypasses(key) {
            return Ok(false);
        }
        self.admitted(self.inner.exists(key)).await
    }

    async fn set_tagged(
        &self,
        key: &Key,
        value: StoreValue,
        ttl: Option<Duration>,
        tags: &[Tag],
    ) -> Result<(), StoreError> {
        self.write(
            std::slice::from_ref(key),
            self.inner.set_tagged(key, value, ttl, tags),
        )
        .await
    }

    async fn invalidate_tag(&self, tag: &Tag) -> Result<u64, StoreError> {
        let stamp = self.state.repairs.stamp();
        let result = self.admitted(self.inner.invalidate_tag(tag)).await;
        match &result {
            Ok(_) => self.state.repairs.settle_tag(tag, stamp),
            Err(_) => {
                self.state.repairs.owe_tag(tag);
                self.repair_in_background();
            }
        }
        result
    }

    fn keeps_decoded(&self) -> bool {
        self.inner.keeps_decoded()
    }
    fn shared_leases(&self) -> Option<super::SharedLeases> {
        let leases = self.inner.shared_leases()?;
        Some(super::SharedLeases(Arc::new(GuardedLeases {
            breaker: self.clone(),
            leases,
        })))
    }
}

/// The inner store's leases behind the circuit, like its other commands: refused while it is
/// open (the cold miss then loads alone, without paying a timeout), their outcomes counted,
/// and a fenced put that fails — it may still land later — owes its key a repair, as a
/// failed set does; one that succeeds settles what the key owed before it.
struct GuardedLeases<S> {
    breaker: CircuitBreaker<S>,
    leases: super::SharedLeases,
}

impl<S: Store> LeaseBackend for GuardedLeases<S> {
    fn watch(&self, key: &Key) -> Box<dyn Watch> {
        self.leases.0.watch(key)
    }

    fn acquire<'a>(
        &'a self,
        key: &'a Key,
        token: &'a str,
        ttl: Duration,
    ) -> LeaseFuture<'a, Acquired> {
        Box::pin(
            self.breaker
                .admitted(self.leases.0.acquire(key, token, ttl)),
        )
    }

    fn renew<'a>(&'a self, key: &'a Key, token: &'a str, ttl: Duration) -> LeaseFuture<'a, bool> {
        Box::pin(self.breaker.admitted(self.leases.0.renew(key, token, ttl)))
    }

    fn release<'a>(&'a self, key: &'a Key, token: &'a str) -> LeaseFuture<'a, ()> {
        Box::pin(self.breaker.admitted(self.leases.0.release(key, token)))
    }

    fn put_fenced<'a>(
        &'a self,
        key: &'a Key,
        token: &'a str,
        value: StoreValue,
        ttl: Option<Duration>,
        tags: &'a [Tag],
    ) -> LeaseFuture<'a, bool> {
        Box::pin(self.breaker.write(
            std::slice::from_ref(key),
            self.leases.0.put_fenced(key, token, value, ttl, tags),
        ))
    }
}
