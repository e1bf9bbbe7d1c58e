use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use pin_project::pin_project;
use tower_service::Service;

use super::{Read, ReadMode};
use crate::LoadError;
use crate::cache::{Cache, Cacheable};
use crate::codec::Codec;
use crate::engine::{Admission, Load, Loaded, Outcome, ReadContext, ReadFuture, ReadPolicy};
use crate::key::Key;
use crate::layer::CacheLayer;
use crate::store::Store;
use crate::strategy::Predicate;
use crate::ttl::TtlPolicy;

/// The response future of [`ReadService`](super::ReadService): the engine's read (look up,
/// then on a miss join or start the key's one load), or the loader's own call when the
/// request bypasses the cache.
#[pin_project]
pub struct ResponseFuture<Svc, Req, S, K, T>
where
    Svc: Service<Req>,
    Arc<CacheLayer<S, K, T>>: ReadContext,
    ServiceLoad<Svc, Req>: Load<Arc<CacheLayer<S, K, T>>>,
{
    #[pin]
    kind: Kind<Svc, Req, S, K, T>,
}

// The read is the large variant, and the common one: boxing it would cost every hit.
#[allow(clippy::large_enum_variant)]
#[pin_project(project = KindProj)]
enum Kind<Svc, Req, S, K, T>
where
    Svc: Service<Req>,
    Arc<CacheLayer<S, K, T>>: ReadContext,
    ServiceLoad<Svc, Req>: Load<Arc<CacheLayer<S, K, T>>>,
{
    Read {
        #[pin]
        read: ReadFuture<Arc<CacheLayer<S, K, T>>, ServiceLoad<Svc, Req>>,
    },
    Own {
        #[pin]
        future: Svc::Future,
    },
}

impl<M, V, St, C, P, N> Read<M, V, St, C, P, N>
where
    V: Cacheable,
    P: Predicate<V>,
    N: Predicate<V>,
{
    /// Whether to cache `value`, and for how long.
    fn admission<T: TtlPolicy<V>>(&self, ttl: &T, key: &Key, value: &V) -> Admission {
        if !self.cache_if.test(value) {
            return None;
        }
        if self.not_found.test(value) {
            return self.negative_ttl.map(Some);
        }
        Some(ttl.ttl(key, value))
    }
}

impl<M, V, St, C, P, N, K, T> ReadContext for Arc<CacheLayer<Read<M, V, St, C, P, N>, K, T>>
where
    M: ReadMode,
    V: Cacheable,
    St: Store,
    C: Codec<V>,
    P: Predicate<V> + Send + Sync + 'static,
    N: Predicate<V> + Send + Sync + 'static,
    K: Send + Sync + 'static,
    T: TtlPolicy<V> + Send + Sync + 'static,
{
    type Value = V;
    type Store = St;
    type Codec = C;

    fn cache(&self) -> &Cache<V, St, C> {
        &self.strategy.cache
    }

    fn policy(&self) -> &ReadPolicy {
        &self.strategy.policy
    }

    fn is_negative(&self, value: &V) -> bool {
        self.strategy.not_found.test(value)
    }
}

/// A read strategy's load: the loader service called with the request.
#[derive(Debug)]
pub struct ServiceLoad<Svc, Req> {
    inner: Svc,
    request: Req,
}

impl<Svc, Req, M, V, St, C, P, N, K, T> Load<Arc<CacheLayer<Read<M, V, St, C, P, N>, K, T>>>
    for ServiceLoad<Svc, Req>
where
    Svc: Service<Req, Response = V> + Send + 'static,
    Svc::Future: Send + 'static,
    Svc::Error: Send + Sync + 'static,
    Req: Send + 'static,
    M: ReadMode,
    V: Cacheable,
    St: Store,
    C: Codec<V>,
    P: Predicate<V> + Send + Sync + 'static,
    N: Predicate<V> + Send + Sync + 'static,
    K: Send + Sync + 'static,
    T: TtlPolicy<V> + Send + Sync + 'static,
{
    type Private = std::convert::Infallible;
    type Error = Svc::Error;

    fn load(
        self,
        layer: Arc<CacheLayer<Read<M, V, St, C, P, N>, K, T>>,
        key: Key,
    ) -> impl Future<Output = Result<Loaded<V, Self::Private>, Svc::Error>> + Send + 'static {
        let ServiceLoad { mut inner, request } = self;
        async move {
            let value = inner.call(request).await?;
            let admission = layer.strategy.admission(&layer.ttl, &key, &value);
            Ok(Loaded::Shared { value, admission })
        }
    }
}

impl<Svc, Req, M, V, St, C, P, N, K, T> ResponseFuture<Svc, Req, Read<M, V, St, C, P, N>, K, T>
where
    Svc: Service<Req, Response = V> + Send + 'static,
    Svc::Future: Send + 'static,
    Svc::Error: Send + Sync + 'static,
    Req: Send + 'static,
    M: ReadMode,
    V: Cacheable,
    St: Store,
    C: Codec<V>,
    P: Predicate<V> + Send + Sync + 'static,
    N: Predicate<V> + Send + Sync + 'static,
    K: Send + Sync + 'static,
    T: TtlPolicy<V> + Send + Sync + 'static,
{
    pub(super) fn read(
        layer: Arc<CacheLayer<Read<M, V, St, C, P, N>, K, T>>,
        key: Key,
        inner: Svc,
        request: Req,
    ) -> Self {
        ResponseFuture {
            kind: Kind::Read {
                read: ReadFuture::new(layer, key, ServiceLoad { inner, request }),
            },
        }
    }

    pub(super) fn bypass(future: Svc::Future) -> Self {
        ResponseFuture {
            kind: Kind::Own { future },
        }
    }
}

impl<Svc, Req, M, V, St, C, P, N, K, T> Future
    for ResponseFuture<Svc, Req, Read<M, V, St, C, P, N>, K, T>
where
    Svc: Service<Req, Response = V> + Send + 'static,
    Svc::Future: Send + 'static,
    Svc::Error: Send + Sync + 'static,
    Req: Send + 'static,
    M: ReadMode,
    V: Cacheable,
    St: Store,
    C: Codec<V>,
    P: Predicate<V> + Send + Sync + 'static,
    N: Predicate<V> + Send + Sync + 'static,
    K: Send + Sync + 'static,
    T: TtlPolicy<V> + Send + Sync + 'static,
{
    type Output = Result<V, LoadError<Svc::Error>>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        loop {
            let outcome = match this.kind.as_mut().project() {
                KindProj::Own { future } => {
                    return Poll::Ready(
                        ready!(future.poll(cx)).map_err(|error| LoadError::Failed(Arc::new(error))),
                    );
                }
                KindProj::Read { read } => ready!(read.poll(cx)),
            };
            return Poll::Ready(match outcome {
                Outcome::Hit(hit) | Outcome::Stale(hit) => Ok(hit.value),
                Outcome::Pending(value) | Outcome::Loaded(value) => Ok(value),
                Outcome::Failed(error) => Err(LoadError::Failed(error)),
                Outcome::Panicked => Err(LoadError::Panicked),
                Outcome::Private(never) => match never {},
                Outcome::Unshared(ServiceLoad { mut inner, request }) => {
                    this.kind.set(Kind::Own {
                        future: inner.call(request),
                    });
                    continue;
                }
            });
        }
    }
}

impl<Svc, Req, S, K, T> std::fmt::Debug for ResponseFuture<Svc, Req, S, K, T>
where
    Svc: Service<Req>,
    Arc<CacheLayer<S, K, T>>: ReadContext,
    ServiceLoad<Svc, Req>: Load<Arc<CacheLayer<S, K, T>>>,
{
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ResponseFuture").finish_non_exhaustive()
    }
}
