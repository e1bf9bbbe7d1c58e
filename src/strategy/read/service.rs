use std::task::{Context, Poll};

use tower_layer::Layer;
use tower_service::Service;

use super::future::ResponseFuture;
use super::{Read, ReadMode};
use crate::LoadError;
use crate::cache::Cacheable;
use crate::codec::Codec;
use crate::key::KeyExtractor;
use crate::layer::CacheLayer;
use crate::store::Store;
use crate::strategy::Predicate;
use crate::ttl::TtlPolicy;

crate::macros::strategy_service!(
    /// The service of a read strategy ([`CacheAside`](super::CacheAside) or
    /// [`ReadThrough`](super::ReadThrough)) around the loader `Svc`.
    ReadService,
    "loader"
);

impl<Svc, M, V, St, C, P, N, K, T> Layer<Svc> for CacheLayer<Read<M, V, St, C, P, N>, K, T>
where
    P: Clone,
    N: Clone,
    K: Clone,
    T: Clone,
{
    type Service = ReadService<Svc, Read<M, V, St, C, P, N>, K, T>;

    fn layer(&self, inner: Svc) -> Self::Service {
        ReadService::new(inner, self.clone())
    }
}

impl<Svc, Req, M, V, St, C, P, N, K, T> Service<Req>
    for ReadService<Svc, Read<M, V, St, C, P, N>, K, T>
where
    Svc: Service<Req, Response = V> + Clone + Send + 'static,
    Svc::Future: Send + 'static,
    Svc::Error: Send + Sync + 'static,
    Req: Send + 'static,
    M: ReadMode,
    V: Cacheable,
    St: Store,
    C: Codec<V>,
    P: Predicate<V> + Send + Sync + 'static,
    N: Predicate<V> + Send + Sync + 'static,
    K: KeyExtractor<Req> + Send + Sync + 'static,
    T: TtlPolicy<V> + Send + Sync + 'static,
{
    type Response = V;
    type Error = LoadError<Svc::Error>;
    type Future = ResponseFuture<Svc, Req, Read<M, V, St, C, P, N>, K, T>;

    #[inline]
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner
            .poll_ready(cx)
            .map_err(|error| LoadError::Failed(std::sync::Arc::new(error)))
    }

    fn call(&mut self, request: Req) -> Self::Future {
        // The ready service goes with this request; the clone waits for its own poll_ready.
        let clone = self.inner.clone();
        let inner = std::mem::replace(&mut self.inner, clone);
        match self.layer.key.key(&request) {
            Some(key) if !self.layer.strategy.cache.is_closed() => {
                ResponseFuture::read(self.layer.clone(), key, inner, request)
            }
            _ => {
                let mut inner = inner;
                ResponseFuture::bypass(inner.call(request))
            }
        }
    }
}
