use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::{Duration, Instant};

use pin_project::pin_project;
use tower_service::Service;

use super::{Read, ReadMode, ReadThroughMode};
use crate::cache::frame::{now_ms, Header};
use crate::cache::{unwrap_outcome, Cacheable, Lookup, SharedLoad};
use crate::codec::Codec;
use crate::key::Key;
use crate::layer::CacheLayer;
use crate::metrics::{KeyDigest, Operation, Strategy};
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

    /// Whether a hit stored with `header` is in its refresh-ahead window.
    fn refresh_due(&self, header: &Header) -> bool {
        let (Some(fraction), Some(until)) = (self.refresh_ahead, header.fresh_until_ms) else {
            return false;
        };
        let whole = until.saturating_sub(header.stored_at_ms) as f64;
        let left = until.saturating_sub(now_ms()) as f64;
        left <= whole * fraction
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
/// and caches what the strategy admits.
fn load<Svc, Req, M, V, St, C, P, N, K, T>(
    layer: &Arc<CacheLayer<Read<M, V, St, C, P, N>, K, T>>,
    key: &Key,
    mut inner: Svc,
    request: Req,
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
    let admission = {
        let (layer, key) = (layer.clone(), key.clone());
        move |value: &V| layer.strategy.admission(&layer.ttl, &key, value)
    };
    // `call` runs on the load's own task, not under the coalescing lock.
    let call = async move { inner.call(request).await };
    layer
        .strategy
        .cache
        .load_coalesced(strategy::<M>(), key, admission, call)
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
                    let found = match result {
                        Ok(found) => found,
                        Err(error) => {
                            observer.error(Operation::Get, error.kind());
                            tracing::warn!(key = %KeyDigest(&key), %error, "cache lookup failed, loading");
                            None
                        }
                    };
                    let (inner, request) = call.take().expect("lookup polled after completion");
                    match found {
                        Some(hit) => {
                            observer.hit(strategy);
                            if layer.strategy.not_found.test(&hit.value) {
                                observer.negative_hit(strategy);
                            }
                            this.span.record("outcome", "hit");
                            if layer.strategy.refresh_due(&hit.header) {
                                // Not awaited: the load runs on its own task, once per key.
                                if load(layer, &key, inner, request).1 {
                                    observer.refresh(strategy);
                                }
                            }
                            return Poll::Ready(Ok(hit.value));
                        }
                        None => {
                            observer.miss(strategy);
                            let (load, started) = load(layer, &key, inner, request);
                            if !started {
                                observer.coalesced(strategy);
                            }
                            this.span
                                .record("outcome", if started { "miss" } else { "coalesced" });
                            this.state.set(State::Load { load });
                        }
                    }
                }
                StateProj::Load { load } => return load.poll(cx).map(unwrap_outcome),
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
