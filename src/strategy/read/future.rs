use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::{Duration, Instant};

use pin_project::pin_project;
use tower_service::Service;

use super::{Read, ReadMode, ReadThroughMode};
use crate::cache::frame::{now_ms, Header};
use crate::cache::{unwrap_outcome, CacheError, Cacheable, Lookup, SharedLoad};
use crate::codec::Codec;
use crate::key::Key;
use crate::layer::CacheLayer;
use crate::metrics::{KeyDigest, Observer, Operation, Strategy};
use crate::store::Store;
use crate::strategy::Predicate;
use crate::ttl::TtlPolicy;

/// The response future of [`ReadService`](super::ReadService): look up, then (on a miss)
/// load — or join the load in flight — and cache.
#[pin_project]
pub struct ResponseFuture<Svc, Req, S, K, T>
where
    Svc: Service<Req>,
    S: ReadStrategy,
{
    #[pin]
    state: State<Svc, Req, S, K, T>,
    span: tracing::Span,
}

#[pin_project(project = StateProj)]
enum State<Svc, Req, S, K, T>
where
    Svc: Service<Req>,
    S: ReadStrategy,
{
    Lookup {
        #[pin]
        lookup: Lookup<S::Value, S::Store, S::Codec>,
        layer: Arc<CacheLayer<S, K, T>>,
        key: Option<Key>,
        call: Option<(Svc, Req)>,
        started: Option<Instant>,
    },
    Load {
        #[pin]
        load: SharedLoad<S::Value, Svc::Error>,
        stale: Option<S::Value>,
        #[pin]
        soft_timeout: Option<tokio::time::Sleep>,
        observer: Observer,
        strategy: Strategy,
    },
    Bypass {
        #[pin]
        future: Svc::Future,
    },
}

/// What a read future needs of its strategy. Implemented by [`Read`]; sealed.
pub trait ReadStrategy: sealed::Sealed + Send + Sync + 'static {
    /// The cached value.
    type Value: Cacheable;
    /// The store.
    type Store: Store;
    /// The codec.
    type Codec: Codec;
}

mod sealed {
    pub trait Sealed {}
    impl<M, V, St, C, P, N> Sealed for super::Read<M, V, St, C, P, N> {}
}

impl<M, V, St, C, P, N> ReadStrategy for Read<M, V, St, C, P, N>
where
    M: ReadMode,
    V: Cacheable,
    St: Store,
    C: Codec,
    P: Predicate<V> + Send + Sync + 'static,
    N: Predicate<V> + Send + Sync + 'static,
{
    type Value = V;
    type Store = St;
    type Codec = C;
}

impl<M, V, St, C, P, N> Read<M, V, St, C, P, N>
where
    V: Cacheable,
    P: Predicate<V>,
    N: Predicate<V>,
{
    /// Whether to cache `value`, and for how long (`Some(None)`: forever).
    fn admission<T: TtlPolicy<V>>(
        &self,
        ttl: &T,
        key: &Key,
        value: &V,
    ) -> Option<Option<Duration>> {
        if !self.cache_if.test(value) {
            return None;
        }
        if self.not_found.test(value) {
            return self.negative_ttl.map(Some);
        }
        Some(ttl.ttl(key, value))
    }

    /// Whether a hit stored with `header` should be reloaded in the background now: in its
    /// refresh-ahead window, or chosen by XFetch.
    fn refresh_due(&self, header: &Header, now: u64) -> bool {
        let Some(until) = header.fresh_until_ms else {
            return false;
        };
        if let Some(fraction) = self.refresh_ahead {
            let whole = until.saturating_sub(header.stored_at_ms) as f64;
            if until.saturating_sub(now) as f64 <= whole * fraction {
                return true;
            }
        }
        if let Some(beta) = self.early_expiration {
            // now − δ·β·ln(rand) ≥ expiry, with δ the last load's duration.
            let delta = f64::from(header.load_ms.max(1));
            let draw = fastrand::f64().max(f64::MIN_POSITIVE);
            return now as f64 - delta * beta * draw.ln() >= until as f64;
        }
        false
    }
}

impl<Svc, Req, M, V, St, C, P, N, K, T> ResponseFuture<Svc, Req, Read<M, V, St, C, P, N>, K, T>
where
    Svc: Service<Req, Response = V> + Send + 'static,
    Svc::Future: Send + 'static,
    Svc::Error: Clone + Send + Sync + 'static,
    Req: Send + 'static,
    M: ReadMode,
    V: Cacheable,
    St: Store,
    C: Codec,
    P: Predicate<V> + Send + Sync + 'static,
    N: Predicate<V> + Send + Sync + 'static,
    K: Send + Sync + 'static,
    T: TtlPolicy<V> + Send + Sync + 'static,
{
    pub(super) fn lookup(
        layer: Arc<CacheLayer<Read<M, V, St, C, P, N>, K, T>>,
        key: Key,
        inner: Svc,
        request: Req,
    ) -> Self {
        let span = tracing::debug_span!(
            "cache",
            strategy = M::STRATEGY,
            operation = "read",
            key = %KeyDigest(&key),
            outcome = tracing::field::Empty,
        );
        ResponseFuture {
            state: State::Lookup {
                started: layer.strategy.cache.observer().start(),
                lookup: layer.strategy.cache.lookup(&key),
                layer,
                key: Some(key),
                call: Some((inner, request)),
            },
            span,
        }
    }

    pub(super) fn bypass(future: Svc::Future) -> Self {
        ResponseFuture {
            state: State::Bypass { future },
            span: tracing::Span::none(),
        }
    }
}

/// Calls the loader as the one load of `key` (or joins the load in flight; then `false`)
/// and caches what the strategy admits — or, when the load fails and a stale value is known,
/// keeps serving that for fail-safe's throttle.
fn load<Svc, Req, M, V, St, C, P, N, K, T>(
    layer: &Arc<CacheLayer<Read<M, V, St, C, P, N>, K, T>>,
    key: &Key,
    mut inner: Svc,
    request: Req,
    stale: Option<V>,
    store_healthy: bool,
) -> (SharedLoad<V, Svc::Error>, bool)
where
    Svc: Service<Req, Response = V> + Send + 'static,
    Svc::Future: Send + 'static,
    Svc::Error: Clone + Send + Sync + 'static,
    Req: Send + 'static,
    M: ReadMode,
    V: Cacheable,
    St: Store,
    C: Codec,
    P: Predicate<V> + Send + Sync + 'static,
    N: Predicate<V> + Send + Sync + 'static,
    K: Send + Sync + 'static,
    T: TtlPolicy<V> + Send + Sync + 'static,
{
    let layer = layer.clone();
    let owned_key = key.clone();
    let started = Instant::now();
    let flights = layer.strategy.cache.clone();
    flights.flights().join_or_start(key, move |id| async move {
        // `call` runs on the load's own task, not under the coalescing lock.
        let result = inner.call(request).await;
        let read = &layer.strategy;
        let grace = read.fail_safe.map_or(Duration::ZERO, |f| f.grace);
        match &result {
            // The lookup already met a failing store: no second timeout for the write.
            _ if !store_healthy => {}
            Ok(value) => {
                if let Some(ttl) = read.admission(&layer.ttl, &owned_key, value) {
                    let took = started.elapsed();
                    read.cache
                        .store_entry(strategy::<M>(), &owned_key, value, ttl, grace, took)
                        .await;
                }
            }
            Err(_) => {
                if let (Some(stale), Some(fail_safe)) = (&stale, read.fail_safe) {
                    let throttle = Some(fail_safe.throttle);
                    read.cache
                        .store_entry(
                            strategy::<M>(),
                            &owned_key,
                            stale,
                            throttle,
                            grace,
                            Duration::ZERO,
                        )
                        .await;
                }
            }
        }
        read.cache.flights().finish(&owned_key, id);
        result
    })
}

/// The `strategy` label of a read mode.
fn strategy<M: ReadMode>() -> Strategy {
    if M::STRATEGY == ReadThroughMode::STRATEGY {
        Strategy::ReadThrough
    } else {
        Strategy::CacheAside
    }
}

impl<Svc, Req, M, V, St, C, P, N, K, T> Future
    for ResponseFuture<Svc, Req, Read<M, V, St, C, P, N>, K, T>
where
    Svc: Service<Req, Response = V> + Send + 'static,
    Svc::Future: Send + 'static,
    Svc::Error: Clone + Send + Sync + 'static,
    Req: Send + 'static,
    M: ReadMode,
    V: Cacheable,
    St: Store,
    C: Codec,
    P: Predicate<V> + Send + Sync + 'static,
    N: Predicate<V> + Send + Sync + 'static,
    K: Send + Sync + 'static,
    T: TtlPolicy<V> + Send + Sync + 'static,
{
    type Output = Result<V, Svc::Error>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        let _entered = this.span.enter();
        loop {
            match this.state.as_mut().project() {
                StateProj::Lookup {
                    lookup,
                    layer,
                    key,
                    call,
                    started,
                } => {
                    let strategy = strategy::<M>();
                    let observer = layer.strategy.cache.observer();
                    let result = ready!(lookup.poll(cx));
                    observer.finish(Operation::Get, strategy, *started);
                    let key = key.take().expect("lookup polled after completion");
                    let store_healthy = !matches!(result, Err(CacheError::Store(_)));
                    let found = match result {
                        Ok(found) => found,
                        Err(error) => {
                            observer.error(Operation::Get, error.kind());
                            tracing::warn!(key = %KeyDigest(&key), %error, "cache lookup failed, loading");
                            None
                        }
                    };
                    let (inner, request) = call.take().expect("lookup polled after completion");
                    let read = &layer.strategy;
                    let fail_safe = read.fail_safe.is_some();
                    // The wall clock only for the options that need it: a plain hit reads none.
                    let timed = fail_safe
                        || read.refresh_ahead.is_some()
                        || read.early_expiration.is_some();
                    let now = if timed { now_ms() } else { 0 };
                    let stale = match found {
                        Some(hit) if !(fail_safe && hit.header.is_stale(now)) => {
                            observer.hit(strategy);
                            if layer.strategy.not_found.test(&hit.value) {
                                observer.negative_hit(strategy);
                            }
                            this.span.record("outcome", "hit");
                            if timed && layer.strategy.refresh_due(&hit.header, now) {
                                // Not awaited: the load runs on its own task, once per key.
                                if load(layer, &key, inner, request, None, true).1 {
                                    observer.refresh(strategy);
                                }
                            }
                            return Poll::Ready(Ok(hit.value));
                        }
                        Some(stale) => Some(stale.value),
                        None => None,
                    };
                    // A write-behind write of this key still queued: its value, not the
                    // loader's older one.
                    if let Some(value) = layer.strategy.cache.pending_value(&key) {
                        observer.hit(strategy);
                        this.span.record("outcome", "pending");
                        return Poll::Ready(Ok(value));
                    }
                    observer.miss(strategy);
                    let soft_timeout = layer
                        .strategy
                        .soft_timeout
                        .filter(|_| stale.is_some())
                        .map(tokio::time::sleep);
                    let (load, started) =
                        load(layer, &key, inner, request, stale.clone(), store_healthy);
                    if !started {
                        observer.coalesced(strategy);
                    }
                    this.span
                        .record("outcome", if started { "miss" } else { "coalesced" });
                    let observer = observer.clone();
                    this.state.set(State::Load {
                        load,
                        stale,
                        soft_timeout,
                        observer,
                        strategy,
                    });
                }
                StateProj::Load {
                    load,
                    stale,
                    soft_timeout,
                    observer,
                    strategy,
                } => {
                    if let Poll::Ready(outcome) = load.poll(cx) {
                        return Poll::Ready(match (unwrap_outcome(outcome), stale.take()) {
                            (Ok(value), _) => Ok(value),
                            (Err(_), Some(value)) => {
                                observer.stale_served(*strategy);
                                this.span.record("outcome", "stale");
                                Ok(value)
                            }
                            (Err(error), None) => Err(error),
                        });
                    }
                    if let Some(timer) = soft_timeout.as_pin_mut() {
                        if timer.poll(cx).is_ready() {
                            if let Some(value) = stale.take() {
                                observer.stale_served(*strategy);
                                this.span.record("outcome", "stale");
                                return Poll::Ready(Ok(value));
                            }
                        }
                    }
                    return Poll::Pending;
                }
                StateProj::Bypass { future } => return future.poll(cx),
            }
        }
    }
}

impl<Svc, Req, S, K, T> std::fmt::Debug for ResponseFuture<Svc, Req, S, K, T>
where
    Svc: Service<Req>,
    S: ReadStrategy,
{
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ResponseFuture").finish_non_exhaustive()
    }
}
