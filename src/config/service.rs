//! The layer and service of configured routes.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::{Method, Request, Response};
use http_body::Body;
use tower_layer::Layer;
use tower_service::Service;

use crate::BoxError;
use crate::codec::Codec;
use crate::http::body::passthrough;
use crate::http::{CacheBody, CachedResponse, HttpCacheLayer, PathInvalidation, PathKey};
use crate::layer::CacheLayer;
use crate::store::Store;
use crate::ttl::{FixedTtl, Jitter};

use super::route::{IsSuccess, RouteKey};

type InvalidateLayer<St, C> =
    CacheLayer<crate::strategy::WriteAround<CachedResponse, St, C, PathInvalidation, IsSuccess>>;

pub(super) enum Action<St, C> {
    Read(HttpCacheLayer<St, C, RouteKey, Jitter<FixedTtl>>),
    Invalidate(InvalidateLayer<St, C>),
}

/// The layer [`CacheConfig::layer`](super::CacheConfig::layer) builds.
pub struct ConfiguredCacheLayer<St, C> {
    pub(super) routes: Arc<Vec<(Method, PathKey, Action<St, C>)>>,
}

impl<St, C> Clone for ConfiguredCacheLayer<St, C> {
    fn clone(&self) -> Self {
        ConfiguredCacheLayer {
            routes: self.routes.clone(),
        }
    }
}

impl<St, C> fmt::Debug for ConfiguredCacheLayer<St, C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ConfiguredCacheLayer")
            .field("routes", &self.routes.len())
            .finish()
    }
}

impl<Svc, St, C> Layer<Svc> for ConfiguredCacheLayer<St, C> {
    type Service = ConfiguredCache<Svc, St, C>;

    fn layer(&self, inner: Svc) -> Self::Service {
        ConfiguredCache {
            inner,
            routes: self.routes.clone(),
        }
    }
}

/// The service of [`ConfiguredCacheLayer`].
pub struct ConfiguredCache<Svc, St, C> {
    inner: Svc,
    routes: Arc<Vec<(Method, PathKey, Action<St, C>)>>,
}

impl<Svc: Clone, St, C> Clone for ConfiguredCache<Svc, St, C> {
    fn clone(&self) -> Self {
        ConfiguredCache {
            inner: self.inner.clone(),
            routes: self.routes.clone(),
        }
    }
}

impl<Svc: fmt::Debug, St, C> fmt::Debug for ConfiguredCache<Svc, St, C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ConfiguredCache")
            .field("inner", &self.inner)
            .finish_non_exhaustive()
    }
}

impl<Svc, ReqBody, ResBody, St, C> Service<Request<ReqBody>> for ConfiguredCache<Svc, St, C>
where
    Svc: Service<Request<ReqBody>, Response = Response<ResBody>> + Clone + Send + 'static,
    Svc::Future: Send + 'static,
    Svc::Error: Send + Sync + 'static,
    ReqBody: Send + 'static,
    ResBody: Body<Data = Bytes> + Unpin + Send + 'static,
    ResBody::Error: Into<BoxError>,
    St: Store,
    C: Codec<CachedResponse>,
{
    type Response = Response<CacheBody<ResBody>>;
    type Error = Svc::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Svc::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<ReqBody>) -> Self::Future {
        let clone = self.inner.clone();
        let inner = std::mem::replace(&mut self.inner, clone);
        let method = request.method();
        let route = self.routes.iter().find(|(route_method, matcher, _)| {
            (route_method == method || (route_method == Method::GET && method == Method::HEAD))
                && matcher.params(request.uri().path()).is_some()
        });
        match route.map(|(_, _, action)| action) {
            Some(Action::Read(layer)) => Box::pin(layer.layer(inner).call(request)),
            Some(Action::Invalidate(layer)) => passthrough(layer.layer(inner).call(request)),
            None => {
                let mut inner = inner;
                passthrough(inner.call(request))
            }
        }
    }
}
