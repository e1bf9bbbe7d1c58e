//! Prometheus metrics (feature `metrics`), in the names of the original service, and the
//! tracing spans of cache operations.
//!
//! | metric | type | labels |
//! |---|---|---|
//! | `{ns}_cache_hits_total` | counter | `strategy` |
//! | `{ns}_cache_misses_total` | counter | `strategy` |
//! | `{ns}_cache_errors_total` | counter | `operation`, `error_type` |
//! | `{ns}_cache_operation_duration_seconds` | histogram, 10 µs – 1 s | `operation`, `strategy` |
//! | `{ns}_cache_write_behind_flush_duration_seconds` | histogram, 1 ms – 60 s | |
//! | `{ns}_cache_write_behind_queue_size` | gauge | |
//! | `{ns}_cache_coalesced_waiters_total` | counter | `strategy` |
//! | `{ns}_cache_refreshes_total` | counter | `strategy` |
//! | `{ns}_cache_negative_hits_total` | counter | `strategy` |
//! | `{ns}_cache_stale_served_total` | counter | `strategy` |
//! | `{ns}_cache_write_behind_retries_total` | counter | |
//! | `{ns}_cache_write_behind_dead_letters_total` | counter | |
//! | `{ns}_cache_circuit_state` | gauge: 0 closed, 1 open, 2 half-open | |
//! | `{ns}_cache_circuit_opened_total` | counter | |
//! | `{ns}_cache_repairs_owed` | gauge: keys, pattern deletes and tag invalidations the store missed, waiting for it to answer ([auto-recovery](crate::store::CircuitBreaker#auto-recovery)) | |
//! | `{ns}_cache_warmed_keys_total` | keys a [warm-up](crate::warm) found cached, loaded or failed to load | `outcome` |
//!
//! `strategy` is one of `cache_aside`, `read_through`, `write_through`, `write_behind`,
//! `write_around`, or `direct` for calls on the [`Cache`](crate::Cache) handle itself
//! (`get_or_load` counts as `cache_aside`). No label ever holds a key. With
//! [`MetricsBuilder::cache_name`] every metric also carries a constant `cache` label, so
//! several caches can share one registry.
//!
//! Label handles are resolved once, when the metrics are registered: recording is a few
//! atomic adds, with no allocation and no lookup.
//!
//! # Example
//!
//! ```
//! use prometheus::Registry;
//! use tower_caching::{metrics::Metrics, Cache, MemoryStore};
//!
//! let registry = Registry::new();
//! let metrics = Metrics::builder().namespace("conn_dict").register(&registry)?;
//! let cache: Cache<String> = Cache::builder(MemoryStore::new()).metrics(metrics).build();
//! # let _ = cache;
//! // Registering the same names twice is an error, not a panic:
//! assert!(Metrics::builder().namespace("conn_dict").register(&registry).is_err());
//! # Ok::<(), prometheus::Error>(())
//! ```

use std::fmt;
use std::time::Instant;

#[cfg(feature = "metrics")]
use std::sync::Arc;

/// Which strategy an event belongs to; the `strategy` label.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Strategy {
    CacheAside,
    ReadThrough,
    WriteThrough,
    WriteBehind,
    WriteAround,
    Direct,
}

impl Strategy {
    #[cfg(feature = "metrics")]
    const ALL: [Strategy; 6] = [
        Strategy::CacheAside,
        Strategy::ReadThrough,
        Strategy::WriteThrough,
        Strategy::WriteBehind,
        Strategy::WriteAround,
        Strategy::Direct,
    ];

    /// The label value, also the `strategy` field of `cache` spans.
    pub(crate) fn name(self) -> &'static str {
        match self {
            Strategy::CacheAside => "cache_aside",
            Strategy::ReadThrough => "read_through",
            Strategy::WriteThrough => "write_through",
            Strategy::WriteBehind => "write_behind",
            Strategy::WriteAround => "write_around",
            Strategy::Direct => "direct",
        }
    }

    #[cfg(feature = "metrics")]
    pub(crate) fn label(self) -> &'static str {
        self.name()
    }
}

/// A store operation; the `operation` label.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Operation {
    Get,
    GetMany,
    Set,
    SetMany,
    Delete,
    DeleteMany,
    DeletePattern,
    Exists,
    InvalidateTag,
    WriteBehindFlush,
}

impl Operation {
    #[cfg(feature = "metrics")]
    const ALL: [Operation; 10] = [
        Operation::Get,
        Operation::GetMany,
        Operation::Set,
        Operation::SetMany,
        Operation::Delete,
        Operation::DeleteMany,
        Operation::DeletePattern,
        Operation::Exists,
        Operation::InvalidateTag,
        Operation::WriteBehindFlush,
    ];

    #[cfg(feature = "metrics")]
    pub(crate) fn label(self) -> &'static str {
        match self {
            Operation::Get => "get",
            Operation::GetMany => "get_many",
            Operation::Set => "set",
            Operation::SetMany => "set_many",
            Operation::Delete => "delete",
            Operation::DeleteMany => "delete_many",
            Operation::DeletePattern => "delete_pattern",
            Operation::Exists => "exists",
            Operation::InvalidateTag => "invalidate_tag",
            Operation::WriteBehindFlush => "write_behind_flush",
        }
    }
}

/// The metrics of one or more caches, registered on a Prometheus registry. Cheap to clone;
/// clones record into the same metrics. Attach with
/// [`CacheBuilder::metrics`](crate::CacheBuilder::metrics).
///
/// ```
/// use tower_caching::{metrics::Metrics, Cache, MemoryStore};
///
/// let metrics = Metrics::builder().register(prometheus::default_registry())?;
/// let store = MemoryStore::new();
/// let entries: Cache<String> = Cache::builder(store.clone()).metrics(metrics.clone()).build();
/// let counters: Cache<u64> = Cache::builder(store).metrics(metrics).build();
/// # let _ = (entries, counters);
/// # Ok::<(), prometheus::Error>(())
/// ```
#[cfg(feature = "metrics")]
#[cfg_attr(docsrs, doc(cfg(feature = "metrics")))]
#[derive(Clone)]
pub struct Metrics {
    inner: Arc<Handles>,
}

#[cfg(feature = "metrics")]
impl fmt::Debug for Metrics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Metrics")
            .field("namespace", &self.inner.namespace)
            .finish_non_exhaustive()
    }
}

#[cfg(feature = "metrics")]
struct Handles {
    namespace: String,
    hits: [prometheus::IntCounter; 6],
    misses: [prometheus::IntCounter; 6],
    coalesced: [prometheus::IntCounter; 6],
    refreshes: [prometheus::IntCounter; 6],
    negative_hits: [prometheus::IntCounter; 6],
    stale_served: [prometheus::IntCounter; 6],
    duration: Vec<[prometheus::Histogram; 6]>,
    errors: prometheus::IntCounterVec,
    flush_duration: prometheus::Histogram,
    queue_size: prometheus::IntGauge,
    retries: prometheus::IntCounter,
    dead_letters: prometheus::IntCounter,
    circuit_state: prometheus::IntGauge,
    circuit_opened: prometheus::IntCounter,
    repairs_owed: prometheus::IntGauge,
    warmed: prometheus::IntCounterVec,
}

/// Configures and registers [`Metrics`].
#[cfg(feature = "metrics")]
#[cfg_attr(docsrs, doc(cfg(feature = "metrics")))]
#[derive(Clone, Debug)]
pub struct MetricsBuilder {
    namespace: String,
    cache_name: Option<String>,
}

#[cfg(feature = "metrics")]
impl Metrics {
    /// A builder with the namespace `tower_caching`.
    ///
    /// ```
    /// use tower_caching::{metrics::Metrics, Cache, MemoryStore};
    ///
    /// let registry = prometheus::Registry::new();
    /// let metrics = Metrics::builder().namespace("conn_dict").register(&registry)?;
    /// let cache: Cache<String> = Cache::builder(MemoryStore::new()).metrics(metrics).build();
    /// # let _ = cache;
    /// # Ok::<(), prometheus::Error>(())
    /// ```
    pub fn builder() -> MetricsBuilder {
        MetricsBuilder {
            namespace: "tower_caching".into(),
            cache_name: None,
        }
    }
}

/// The operation-duration buckets: 10 µs to 1 s, since an in-memory hit takes microseconds
/// and a Redis hit tens to hundreds of them.
#[cfg(feature = "metrics")]
const DURATION_BUCKETS: [f64; 16] = [
    0.00001, 0.000025, 0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05,
    0.1, 0.25, 0.5, 1.0,
];

/// The write-behind flush buckets: 1 ms to 60 s.
#[cfg(feature = "metrics")]
const FLUSH_BUCKETS: [f64; 12] = [
    0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 15.0, 60.0,
];

#[cfg(feature = "metrics")]
impl MetricsBuilder {
    /// The namespace, the metric names' prefix (default `tower_caching`; the original
    /// service used `conn_dict`).
    ///
    /// ```
    /// # use tower_caching::metrics::Metrics;
    /// let registry = prometheus::Registry::new();
    /// Metrics::builder().namespace("conn_dict").register(&registry)?;
    /// assert!(registry.gather().iter().any(|f| f.name() == "conn_dict_cache_hits_total"));
    /// # Ok::<(), prometheus::Error>(())
    /// ```
    pub fn namespace(mut self, namespace: impl Into<String>) -> Self {
        self.namespace = namespace.into();
        self
    }

    /// Adds a constant label `cache="<name>"` to every metric, so several caches can
    /// register in one registry.
    ///
    /// ```
    /// # use tower_caching::metrics::Metrics;
    /// let registry = prometheus::Registry::new();
    /// Metrics::builder().cache_name("entries").register(&registry)?;
    /// Metrics::builder().cache_name("configs").register(&registry)?; // no clash
    /// # Ok::<(), prometheus::Error>(())
    /// ```
    pub fn cache_name(mut self, name: impl Into<String>) -> Self {
        self.cache_name = Some(name.into());
        self
    }

    /// Registers the metrics on `registry` (e.g. `prometheus::default_registry()`). Fails,
    /// without registering anything, when the names are taken or invalid.
    ///
    /// ```
    /// # use tower_caching::metrics::Metrics;
    /// let registry = prometheus::Registry::new();
    /// Metrics::builder().register(&registry)?;
    /// assert!(Metrics::builder().register(&registry).is_err()); // taken: an error, not a panic
    /// # Ok::<(), prometheus::Error>(())
    /// ```
    pub fn register(self, registry: &prometheus::Registry) -> Result<Metrics, prometheus::Error> {
        use prometheus::{HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, Opts};

        let opts = |name: &str, help: &str| {
            let mut opts = Opts::new(name, help).namespace(self.namespace.clone());
            if let Some(cache) = &self.cache_name {
                opts = opts.const_label("cache", cache.clone());
            }
            opts
        };
        let by_strategy =
            |name: &str, help: &str| IntCounterVec::new(opts(name, help), &["strategy"]);
        let hits = by_strategy("cache_hits_total", "Cache hits by strategy.")?;
        let misses = by_strategy("cache_misses_total", "Cache misses by strategy.")?;
        let coalesced = by_strategy(
            "cache_coalesced_waiters_total",
            "Requests that waited for a load already in flight instead of loading.",
        )?;
        let refreshes = by_strategy(
            "cache_refreshes_total",
            "Background reloads started by refresh-ahead.",
        )?;
        let negative_hits = by_strategy(
            "cache_negative_hits_total",
            "Hits on cached not-found values.",
        )?;
        let stale_served = by_strategy(
            "cache_stale_served_total",
            "Stale values served because the loader failed or was slower than the soft timeout.",
        )?;
        let errors = IntCounterVec::new(
            opts(
                "cache_errors_total",
                "Cache errors by operation and error type.",
            ),
            &["operation", "error_type"],
        )?;
        // The kinds an alert watches exist from the start, at zero: a rule over
        // `rate(errors_total[5m])` then fires on the first error instead of showing no data.
        for operation in Operation::ALL {
            for kind in ALERTED_ERRORS {
                errors.with_label_values(&[operation.label(), kind]);
            }
        }
        let duration = HistogramVec::new(
            HistogramOpts::from(opts(
                "cache_operation_duration_seconds",
                "Cache store operation latency.",
            ))
            .buckets(DURATION_BUCKETS.to_vec()),
            &["operation", "strategy"],
        )?;
        let flush_duration = prometheus::Histogram::with_opts(
            HistogramOpts::from(opts(
                "cache_write_behind_flush_duration_seconds",
                "Duration of one write-behind batch.",
            ))
            .buckets(FLUSH_BUCKETS.to_vec()),
        )?;
        let queue_size = IntGauge::with_opts(opts(
            "cache_write_behind_queue_size",
            "Writes waiting in write-behind queues.",
        ))?;
        let retries = IntCounter::with_opts(opts(
            "cache_write_behind_retries_total",
            "Failed write-behind writes queued again for a retry.",
        ))?;
        let dead_letters = IntCounter::with_opts(opts(
            "cache_write_behind_dead_letters_total",
            "Write-behind writes abandoned after their last attempt.",
        ))?;

        let circuit_state = IntGauge::with_opts(opts(
            "cache_circuit_state",
            "Circuit breaker state: 0 closed, 1 open, 2 half-open.",
        ))?;
        let circuit_opened = IntCounter::with_opts(opts(
            "cache_circuit_opened_total",
            "Times the circuit breaker opened.",
        ))?;
        let repairs_owed = IntGauge::with_opts(opts(
            "cache_repairs_owed",
            "Keys, pattern deletes and tag invalidations the store missed, owed a repair.",
        ))?;
        let warmed = IntCounterVec::new(
            opts(
                "cache_warmed_keys_total",
                "Keys warmed at start-up, by outcome (cached, loaded, failed).",
            ),
            &["outcome"],
        )?;
        for outcome in ["cached", "loaded", "failed"] {
            warmed.with_label_values(&[outcome]);
        }
        let collectors = || -> Vec<Box<dyn prometheus::core::Collector>> {
            vec![
                Box::new(hits.clone()),
                Box::new(misses.clone()),
                Box::new(errors.clone()),
                Box::new(duration.clone()),
                Box::new(flush_duration.clone()),
                Box::new(queue_size.clone()),
                Box::new(coalesced.clone()),
                Box::new(refreshes.clone()),
                Box::new(negative_hits.clone()),
                Box::new(stale_served.clone()),
                Box::new(retries.clone()),
                Box::new(dead_letters.clone()),
                Box::new(circuit_state.clone()),
                Box::new(circuit_opened.clone()),
                Box::new(repairs_owed.clone()),
                Box::new(warmed.clone()),
            ]
        };
        for (index, collector) in collectors().into_iter().enumerate() {
            if let Err(error) = registry.register(collector) {
                // All or nothing: a half-registered set would clash with the retry.
                for registered in collectors().into_iter().take(index) {
                    let _ = registry.unregister(registered);
                }
                return Err(error);
            }
        }

        let per_strategy =
            |vec: &IntCounterVec| Strategy::ALL.map(|s| vec.with_label_values(&[s.label()]));
        Ok(Metrics {
            inner: Arc::new(Handles {
                namespace: self.namespace,
                hits: per_strategy(&hits),
                misses: per_strategy(&misses),
                coalesced: per_strategy(&coalesced),
                refreshes: per_strategy(&refreshes),
                negative_hits: per_strategy(&negative_hits),
                stale_served: per_strategy(&stale_served),
                duration: Operation::ALL
                    .iter()
                    .map(|op| {
                        Strategy::ALL.map(|s| duration.with_label_values(&[op.label(), s.label()]))
                    })
                    .collect(),
                errors,
                flush_duration,
                queue_size,
                retries,
                dead_letters,
                circuit_state,
                circuit_opened,
                repairs_owed,
                warmed,
            }),
        })
    }
}

/// The error kinds registered at zero for every operation: the store's failures, and the
/// per-value ones.
#[cfg(feature = "metrics")]
const ALERTED_ERRORS: [&str; 8] = [
    "timeout",
    "circuit_open",
    "backend",
    "connect",
    "rejected",
    "decode",
    "clash",
    "too_large",
];

/// Records what the cache does: into [`Metrics`] when the cache has them, nowhere otherwise.
#[derive(Clone, Debug, Default)]
pub(crate) struct Observer {
    #[cfg(feature = "metrics")]
    metrics: Option<Metrics>,
}

macro_rules! strategy_counter {
    ($($name:ident => $field:ident),* $(,)?) => {
        $(
            #[inline]
            pub(crate) fn $name(&self, _strategy: Strategy) {
                #[cfg(feature = "metrics")]
                if let Some(metrics) = &self.metrics {
                    metrics.inner.$field[_strategy as usize].inc();
                }
            }
        )*
    };
}

impl Observer {
    #[cfg(feature = "metrics")]
    pub(crate) fn new(metrics: Option<Metrics>) -> Self {
        Observer { metrics }
    }

    strategy_counter!(
        hit => hits,
        miss => misses,
        coalesced => coalesced,
        refresh => refreshes,
        negative_hit => negative_hits,
        stale_served => stale_served,
    );

    /// Counts an error of `operation`, labelled with the error's kind.
    #[inline]
    pub(crate) fn error(&self, _operation: Operation, _kind: &'static str) {
        #[cfg(feature = "metrics")]
        if let Some(metrics) = &self.metrics {
            metrics
                .inner
                .errors
                .with_label_values(&[_operation.label(), _kind])
                .inc();
        }
    }

    /// The start of a timed operation; `None` when nothing records it.
    #[inline]
    pub(crate) fn start(&self) -> Option<Instant> {
        #[cfg(feature = "metrics")]
        if self.metrics.is_some() {
            return Some(Instant::now());
        }
        None
    }

    /// Records the duration of `operation` begun at `started`.
    #[inline]
    pub(crate) fn finish(
        &self,
        _operation: Operation,
        _strategy: Strategy,
        _started: Option<Instant>,
    ) {
        #[cfg(feature = "metrics")]
        if let (Some(metrics), Some(started)) = (&self.metrics, _started) {
            metrics.inner.duration[_operation as usize][_strategy as usize]
                .observe(started.elapsed().as_secs_f64());
        }
    }

    /// Records one write-behind batch.
    pub(crate) fn flush_batch(&self, _started: Instant) {
        #[cfg(feature = "metrics")]
        if let Some(metrics) = &self.metrics {
            metrics
                .inner
                .flush_duration
                .observe(_started.elapsed().as_secs_f64());
        }
    }

    /// Moves the write-behind queue gauge by `delta`.
    pub(crate) fn queue_size(&self, _delta: i64) {
        #[cfg(feature = "metrics")]
        if let Some(metrics) = &self.metrics {
            metrics.inner.queue_size.add(_delta);
        }
    }

    /// Counts a write-behind retry.
    pub(crate) fn retry(&self) {
        #[cfg(feature = "metrics")]
        if let Some(metrics) = &self.metrics {
            metrics.inner.retries.inc();
        }
    }

    /// Sets the circuit breaker gauge.
    pub(crate) fn circuit_state(&self, _state: i64) {
        #[cfg(feature = "metrics")]
        if let Some(metrics) = &self.metrics {
            metrics.inner.circuit_state.set(_state);
        }
    }

    /// Sets how many repairs the store owes.
    pub(crate) fn repairs_owed(&self, _owed: usize) {
        #[cfg(feature = "metrics")]
        if let Some(metrics) = &self.metrics {
            metrics.inner.repairs_owed.set(_owed as i64);
        }
    }

    /// Counts an opening of the circuit.
    pub(crate) fn circuit_opened(&self) {
        #[cfg(feature = "metrics")]
        if let Some(metrics) = &self.metrics {
            metrics.inner.circuit_opened.inc();
        }
    }

    /// Counts a key warmed with `outcome` (`cached`, `loaded` or `failed`).
    pub(crate) fn warmed(&self, _outcome: &'static str) {
        #[cfg(feature = "metrics")]
        if let Some(metrics) = &self.metrics {
            metrics.inner.warmed.with_label_values(&[_outcome]).inc();
        }
    }

    /// Counts a dead-lettered write.
    pub(crate) fn dead_letter(&self) {
        #[cfg(feature = "metrics")]
        if let Some(metrics) = &self.metrics {
            metrics.inner.dead_letters.inc();
        }
    }
}

/// Prints a key as a hash, so that spans and logs never carry user-supplied values.
#[derive(Debug)]
pub(crate) struct KeyDigest<'a>(pub(crate) &'a crate::key::Key);

impl fmt::Display for KeyDigest<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        use std::hash::{Hash, Hasher};
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        self.0.hash(&mut hasher);
        write!(f, "#{:016x}", hasher.finish())
    }
}
