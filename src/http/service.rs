use std::collections::VecDeque;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::{Bytes, BytesMut};
use http::header::{self};
use http::{Method, Request, Response, StatusCode};
use http_body::{Body, Frame};
use http_body_util::BodyExt;
use tower_service::Service;

use super::CachedResponse;
use super::body::{CacheBody, passthrough};
use super::key::{HttpKey, RequestKey, key_as_get};
use crate::BoxError;
use crate::cache::Cache;
use crate::codec::{Codec, Json};
use crate::engine::{Load, Loaded, Outcome, ReadContext, ReadFuture, ReadPolicy};
use crate::frame::now_ms;
use crate::key::Key;
use crate::metrics::Operation;
use crate::store::{MemoryStore, Store};
use crate::ttl::{FixedTtl, TtlPolicy};

use super::layer::{Settings, cache_control_has};

/// The service of [`HttpCacheLayer`](super::HttpCacheLayer).
pub struct HttpCache<Svc, St = MemoryStore, C = Json, K = HttpKey, T = FixedTtl> {
    pub(super) inner: Svc,
    pub(super) shared: Arc<Settings<St, C, K, T>>,
}

impl<Svc, St, C, K, T> HttpCache<Svc, St, C, K, T> {
    /// The inner service.
    ///
    /// ```
    /// use tower_caching::{http::{CachedResponse, HttpCacheLayer}, Cache};
    /// use tower_layer::Layer;
    ///
    /// let handler = tower::service_fn(|_: http::Request<String>| async {
    ///     Ok::<_, std::convert::Infallible>(http::Response::new(String::new()))
    /// });
    /// let mut cached = HttpCacheLayer::new(Cache::<CachedResponse>::in_memory()).layer(handler);
    /// let _: &_ = cached.get_ref();
    /// let _: &mut _ = cached.get_mut();
    /// let handler = cached.into_inner();
    /// # let _ = handler;
    /// ```
    pub fn get_ref(&self) -> &Svc {
        &self.inner
    }

    /// The inner service, mutably. See [`get_ref`](Self::get_ref) for an example.
    pub fn get_mut(&mut self) -> &mut Svc {
        &mut self.inner
    }

    /// The inner service, consuming this one. See [`get_ref`](Self::get_ref) for an example.
    pub fn into_inner(self) -> Svc {
        self.inner
    }
}

impl<Svc: Clone, St, C, K, T> Clone for HttpCache<Svc, St, C, K, T> {
    fn clone(&self) -> Self {
        HttpCache {
            inner: self.inner.clone(),
            shared: self.shared.clone(),
        }
    }
}

impl<Svc: fmt::Debug, St, C, K, T> fmt::Debug for HttpCache<Svc, St, C, K, T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HttpCache")
            .field("inner", &self.inner)
            .finish_non_exhaustive()
    }
}

/// The response future of [`HttpCache`]. Boxed: an HTTP hit builds a response with its
/// headers, next to which the box is noise.
pub type ResponseFuture<B, E> =
    Pin<Box<dyn Future<Output = Result<Response<CacheBody<B>>, E>> + Send>>;

impl<Svc, ReqBody, ResBody, St, C, K, T> Service<Request<ReqBody>> for HttpCache<Svc, St, C, K, T>
where
    Svc: Service<Request<ReqBody>, Response = Response<ResBody>> + Clone + Send + 'static,
    Svc::Future: Send + 'static,
    Svc::Error: Send + Sync + 'static,
    ReqBody: Send + 'static,
    ResBody: Body<Data = Bytes> + Unpin + Send + 'static,
    ResBody::Error: Into<BoxError>,
    St: Store,
    C: Codec<CachedResponse>,
    K: RequestKey<ReqBody> + Send + Sync + 'static,
    T: TtlPolicy<CachedResponse> + Send + Sync + 'static,
{
    type Response = Response<CacheBody<ResBody>>;
    type Error = Svc::Error;
    type Future = ResponseFuture<ResBody, Svc::Error>;

    #[inline]
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: Request<ReqBody>) -> Self::Future {
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let settings = &self.shared;
        if settings.shared.is_some() {
            return Box::pin(super::shared::serve(self.shared.clone(), inner, request));
        }
        let credentials = [header::AUTHORIZATION, header::COOKIE]
            .iter()
            .any(|name| request.headers().contains_key(name) && !settings.key.covers_header(name));
        let eligible = matches!(*request.method(), Method::GET | Method::HEAD)
            && !credentials
            && !cache_control_has(request.headers(), &["no-store"])
            && !settings.cache.is_closed();
        let key = if eligible {
            key_as_get(&settings.key, &mut request)
        } else {
            None
        };
        let Some(key) = key else {
            return passthrough(inner.call(request));
        };
        // Only what the key covers reaches the inner service: the path and query it was
        // built from (never an absolute-form authority), and the query only if covered.
        let uri = request.uri();
        let withheld_query = uri.query().is_some() && !settings.key.covers_query();
        if uri.authority().is_some() || uri.scheme().is_some() || withheld_query {
            let origin_form = match uri.path_and_query() {
                Some(pq) if !withheld_query => pq.as_str().to_owned(),
                _ => uri.path().to_owned(),
            };
            if let Ok(uri) = origin_form.parse() {
                *request.uri_mut() = uri;
            }
        }
        if request.method() == Method::HEAD {
            // Answered from the GET's entry when it is fresh; a HEAD's own response (no
            // body) is never stored.
            let settings = self.shared.clone();
            return Box::pin(async move {
                if let Ok(Some(hit)) = settings.cache.lookup(&key).await
                    && !hit.header.is_stale(now_ms())
                {
                    let age = now_ms().saturating_sub(hit.header.stored_at_ms) / 1000;
                    let (parts, _) = settings
                        .respond::<ResBody>(hit.value, "HIT", Some(age))
                        .into_parts();
                    return Ok(Response::from_parts(parts, CacheBody::full(Bytes::new())));
                }
                Ok(inner.call(request).await?.map(CacheBody::stream))
            });
        }
        let lookup = !cache_control_has(request.headers(), &["no-cache"]);
        Box::pin(serve(self.shared.clone(), inner, request, key, lookup))
    }
}

/// `request` with only the headers its key covers or the layer forwards: on the cached
/// path, all the inner service sees. Filtered when the inner service is called, so that a
/// hit does not rebuild headers nobody reads.
fn covered_only<ReqBody, St, C, K: RequestKey<ReqBody>, T>(
    settings: &Settings<St, C, K, T>,
    mut request: Request<ReqBody>,
) -> Request<ReqBody> {
    let headers = std::mem::take(request.headers_mut());
    let mut name = None;
    for (header_name, value) in headers {
        if let Some(header_name) = header_name {
            name = Some(header_name);
        }
        let Some(name) = &name else { continue };
        if settings.key.covers_header(name) || settings.forward_headers.contains(name) {
            request.headers_mut().append(name.clone(), value);
        }
    }
    request
}

impl<St, C, K, T> ReadContext for Arc<Settings<St, C, K, T>>
where
    St: Store,
    C: Codec<CachedResponse>,
    K: Send + Sync + 'static,
    T: Send + Sync + 'static,
{
    type Value = CachedResponse;
    type Store = St;
    type Codec = C;

    fn cache(&self) -> &Cache<CachedResponse, St, C> {
        &self.cache
    }

    fn policy(&self) -> &ReadPolicy {
        &self.policy
    }
}

/// The HTTP layer's load: the inner service called with the request. A response that is
/// stored is shared with every request that waited; any other — and an error — is the
/// leader's alone.
struct HttpLoad<Svc, ReqBody> {
    inner: Svc,
    request: Request<ReqBody>,
}

/// The leader's own answer, when it is not shared.
pub(super) type Own<ResBody, E> = Result<Response<CacheBody<ResBody>>, E>;

/// An empty `500`: the answer to a request whose handler panicked.
pub(super) fn internal_error<B>() -> Response<CacheBody<B>> {
    let mut response = Response::new(CacheBody::full(Bytes::new()));
    *response.status_mut() = StatusCode::INTERNAL_SERVER_ERROR;
    response
}

impl<Svc, ReqBody, ResBody, St, C, K, T> Load<Arc<Settings<St, C, K, T>>> for HttpLoad<Svc, ReqBody>
where
    Svc: Service<Request<ReqBody>, Response = Response<ResBody>> + Send + 'static,
    Svc::Future: Send + 'static,
    Svc::Error: Send + Sync + 'static,
    ReqBody: Send + 'static,
    ResBody: Body<Data = Bytes> + Unpin + Send + 'static,
    ResBody::Error: Into<BoxError>,
    St: Store,
    C: Codec<CachedResponse>,
    K: RequestKey<ReqBody> + Send + Sync + 'static,
    T: TtlPolicy<CachedResponse> + Send + Sync + 'static,
{
    type Private = Own<ResBody, Svc::Error>;
    type Error = std::convert::Infallible;

    fn load(
        self,
        settings: Arc<Settings<St, C, K, T>>,
        key: Key,
    ) -> impl Future<Output = Result<Loaded<CachedResponse, Self::Private>, Self::Error>> + Send + 'static
    {
        let HttpLoad { mut inner, request } = self;
        async move {
            let request = covered_only(&settings, request);
            let response = match inner.call(request).await {
                Ok(response) => response,
                Err(error) => {
                    return Ok(Loaded::Private {
                        private: Err(error),
                        failed: true,
                    });
                }
            };
            Ok(load(&settings, &key, response).await)
        }
    }
}

async fn serve<Svc, ReqBody, ResBody, St, C, K, T>(
    settings: Arc<Settings<St, C, K, T>>,
    inner: Svc,
    request: Request<ReqBody>,
    key: Key,
    lookup: bool,
) -> Result<Response<CacheBody<ResBody>>, Svc::Error>
where
    Svc: Service<Request<ReqBody>, Response = Response<ResBody>> + Send + 'static,
    Svc::Future: Send + 'static,
    Svc::Error: Send + Sync + 'static,
    ReqBody: Send + 'static,
    ResBody: Body<Data = Bytes> + Unpin + Send + 'static,
    ResBody::Error: Into<BoxError>,
    St: Store,
    C: Codec<CachedResponse>,
    K: RequestKey<ReqBody> + Send + Sync + 'static,
    T: TtlPolicy<CachedResponse> + Send + Sync + 'static,
{
    let load = HttpLoad { inner, request };
    let read = if lookup {
        ReadFuture::new(settings.clone(), key, load)
    } else {
        // `Cache-Control: no-cache`: not served from the cache, but refreshed (coalesced).
        ReadFuture::reload(settings.clone(), key, load)
    };
    let age = |header: &crate::frame::Header| now_ms().saturating_sub(header.stored_at_ms) / 1000;
    Ok(match read.await {
        Outcome::Hit(hit) => {
            let age = age(&hit.header);
            settings.respond(hit.value, "HIT", Some(age))
        }
        Outcome::Pending(cached) => settings.respond(cached, "HIT", None),
        Outcome::Loaded(cached) => settings.respond(cached, "MISS", None),
        Outcome::Stale(hit) => {
            let age = age(&hit.header);
            settings.respond(hit.value, "STALE", Some(age))
        }
        Outcome::Private(own) => own?,
        // Another request's private response is not ours to serve: ask the inner service.
        Outcome::Unshared(HttpLoad { mut inner, request }) => {
            let request = covered_only(&settings, request);
            inner.call(request).await?.map(CacheBody::stream)
        }
        Outcome::Failed(never) => match *never {},
        Outcome::Panicked => internal_error(),
    })
}

/// Stores and shares the response when it may be, or hands it to the request that caused it.
async fn load<ResBody, E, St, C, K, T, ReqBody>(
    settings: &Settings<St, C, K, T>,
    key: &Key,
    response: Response<ResBody>,
) -> Loaded<CachedResponse, Own<ResBody, E>>
where
    ResBody: Body<Data = Bytes> + Unpin,
    St: Store,
    C: Codec<CachedResponse>,
    K: RequestKey<ReqBody>,
    T: TtlPolicy<CachedResponse>,
{
    let (parts, body) = response.into_parts();
    let failed = parts.status.is_server_error();
    let Some(ttl_cap) = settings.admits::<ReqBody>(&parts, &settings.key) else {
        return Loaded::Private {
            private: Ok(Response::from_parts(parts, CacheBody::stream(body))),
            failed,
        };
    };
    match read_limited(body, settings.max_body_size).await {
        Read::Complete(bytes) => {
            let cached = CachedResponse::new(&parts, bytes);
            let ttl = ttl_cap.or_else(|| settings.ttl.ttl(key, &cached));
            Loaded::Shared {
                value: cached,
                admission: Some(ttl),
            }
        }
        Read::Partial(frames, rest) => {
            settings.cache.observer().error(Operation::Set, "too_large");
            Loaded::Private {
                private: Ok(Response::from_parts(parts, CacheBody::resume(frames, rest))),
                failed,
            }
        }
    }
}

pub(super) enum Read<B> {
    /// The whole body, within the limit and without trailers.
    Complete(Bytes),
    /// What was read before the limit, trailers or an error; then the rest, if any.
    Partial(VecDeque<Frame<Bytes>>, Option<B>),
}

pub(super) async fn read_limited<B: Body<Data = Bytes> + Unpin>(
    mut body: B,
    limit: usize,
) -> Read<B> {
    let mut frames = VecDeque::new();
    let mut size = 0;
    loop {
        match body.frame().await {
            None => break,
            Some(Ok(frame)) => {
                let is_data = frame.is_data();
                if let Some(data) = frame.data_ref() {
                    size += data.len();
                }
                frames.push_back(frame);
                if !is_data || size > limit {
                    return Read::Partial(frames, Some(body));
                }
            }
            Some(Err(_)) => {
                tracing::warn!("response body failed while being cached; passed on truncated");
                return Read::Partial(frames, None);
            }
        }
    }
    let mut bytes = BytesMut::with_capacity(size);
    for frame in frames {
        if let Ok(data) = frame.into_data() {
            bytes.extend_from_slice(&data);
        }
    }
    Read::Complete(bytes.freeze())
}
