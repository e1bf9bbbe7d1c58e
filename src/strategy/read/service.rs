use std::fmt;
use std::sync::Arc;
use std::task::{Context, Poll};

use tower_layer::Layer;
use tower_service::Service;

use super::future::ResponseFuture;
use super::{Read, ReadMode};
use crate::cache::Cacheable;
use crate::codec::Codec;
use crate::key::KeyExtractor;
use crate::layer::CacheLayer;
use crate::store::Store;
use crate::strategy::Predicate;
use crate::ttl::TtlPolicy;

/// The service of a read strategy ([`CacheAside`](super::CacheAside) or
/// [`ReadThrough`](super::ReadThrough)) around the loader `Svc`.
pub struct ReadService<Svc, S, K, T> {
    inner: Svc,
    layer: Arc<CacheLayer<S, K, T>>,
}

impl<Svc, S, K, T> ReadService<Svc, S, K, T> {
    /// Wraps `inner` with the settings of `layer`.
    pub fn new(inner: Svc, layer: CacheLayer<S, K, T>) -> Self {
        ReadService {
            inner,
            layer: Arc::new(layer),
        }
    }

    /// The inner loader.
    pub fn get_ref(&self) -> &Svc {
        &self.inner
    }

    /// The inner loader, mutably.
    pub fn get_mut(&mut self) -> &mut Svc {
        &mut self.inner
    }

    /// The inner loader, consuming the service.
    pub fn into_inner(self) -> Svc {
        self.inner
    }
}

impl<Svc: Clone, S, K, T> Clone for ReadService<Svc, S, K, T> {
    fn clone(&self) -> Self {
        ReadService {
            inner: self.inner.clone(),
            layer: self.layer.clone(),
        }
    }
}

impl<Svc: fmt::Debug, S: fmt::Debug, K, T> fmt::Debug for ReadService<Svc, S, K, T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ReadService")
            .field("inner", &self.inner)
            .field("layer", &self.layer)
            .finish()
    }
}

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
    Svc::Error: Clone + Send + Sync + 'static,
    Req: Send + 'static,
    M: ReadMode,
    V: Cacheable,
    St: Store,
    C: Codec,
    P: Predicate<V> + Send + Sync + 'static,
    N: Predicate<V> + Send + Sync + 'static,
    K: KeyExtractor<Req> + Send + Sync + 'static,
    T: TtlPolicy<V> + Send + Sync + 'static,
{
    type Response = V;
    type Error = Svc::Error;
    type Future = ResponseFuture<Svc, Req, Read<M, V, St, C, P, N>, K, T>;

    #[inline]
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Req) -> Self::Future {
        // The ready service goes with this request; the clone waits for its own poll_ready.
        let clone = self.inner.clone();
        let inner = std::mem::replace(&mut self.inner, clone);
        match self.layer.key.key(&request) {
            Some(key) if !self.layer.strategy.cache.is_closed() => {
                ResponseFuture::lookup(self.layer.clone(), key, inner, request)
            }
            _ => {
                let mut inner = inner;
                ResponseFuture::bypass(inner.call(request))
            }
        }
    }
}
