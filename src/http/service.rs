use std::collections::VecDeque;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http::header::{self, HeaderName, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use http_body::{Body, Frame};
use http_body_util::BodyExt;
use tower_layer::Layer;
use tower_service::Service;

use super::body::{passthrough, CacheBody};
use super::key::{HttpKey, RequestKey};
use super::CachedResponse;
use crate::cache::Cache;
use crate::codec::{Codec, Json};
use crate::engine::{FailSafe, Load, Loaded, Outcome, ReadContext, ReadFuture, ReadPolicy};
use crate::frame::now_ms;
use crate::key::Key;
use crate::metrics::{Operation, Strategy};
use crate::store::{MemoryStore, Store};
use crate::ttl::{FixedTtl, TtlPolicy};
use crate::BoxError;

/// Caches whole HTTP responses (status, headers, body) in front of an HTTP service — an axum
/// route or router, a hyper service: cache-aside for `http::Request` → `http::Response`.
///
/// # Safe by default
///
/// - Only `GET` and `HEAD` requests are cached (and keyed apart); other methods, requests
///   with `Cache-Control: no-store`, and requests carrying `Authorization` or `Cookie` that
///   the key does not cover go straight to the inner service.
/// - On the cached path the inner service sees **only the request headers the key covers**
///   (plus those listed with [`forward_header`](HttpCacheLayer::forward_header)): a header
///   that is not part of the key cannot change the response that other clients are served.
/// - Only responses with a status in the cacheable set (default: 200) are stored, and never
///   one that sets a cookie, says `Cache-Control: no-store`, `private` or `no-cache`, or
///   `Vary`s on a header the key does not cover.
/// - A body larger than [`max_body_size`](HttpCacheLayer::max_body_size) (default 1 MiB) is
///   streamed through, not cached (counted as a `too_large` error).
/// - `Cache-Control: no-cache` on a request skips the lookup and refreshes the entry.
///
/// Responses carry `x-cache: HIT`, `MISS` or (with [`fail_safe`](HttpCacheLayer::fail_safe))
/// `STALE` (name configurable, or off) and, on hits, an `Age` in seconds. Concurrent misses of one key make one inner call; its response is
/// shared only if it is stored — a response that is not (it may be private) is never handed
/// to another request, which calls the inner service itself.
///
/// ```
/// use axum::{routing::get, Router};
/// use tower_caching::http::{CachedResponse, HttpCacheLayer, PathKey};
/// use tower_caching::Cache;
///
/// let cache: Cache<CachedResponse> = Cache::in_memory();
/// let app: Router = Router::new().route(
///     "/entries/{id}",
///     get(|| async { "entry" })
///         .layer(HttpCacheLayer::new(cache).key(PathKey::new("/entries/{id}", "entry:{id}"))),
/// );
/// # let _ = app;
/// ```
pub struct HttpCacheLayer<St = MemoryStore, C = Json, K = HttpKey, T = FixedTtl> {
    settings: Arc<Settings<St, C, K, T>>,
}

struct Settings<St, C, K, T> {
    cache: Cache<CachedResponse, St, C>,
    key: K,
    ttl: T,
    statuses: Vec<StatusCode>,
    negative_ttl: Option<Duration>,
    max_body_size: usize,
    cache_header: Option<HeaderName>,
    forward_headers: Vec<HeaderName>,
    policy: ReadPolicy,
}

impl<St, C, K, T> Clone for HttpCacheLayer<St, C, K, T> {
    fn clone(&self) -> Self {
        HttpCacheLayer {
            settings: self.settings.clone(),
        }
    }
}

impl<St, C, K: Clone, T: Clone> Clone for Settings<St, C, K, T> {
    fn clone(&self) -> Self {
        let s = self;
        {
            Settings {
                cache: s.cache.clone(),
                key: s.key.clone(),
                ttl: s.ttl.clone(),
                statuses: s.statuses.clone(),
                negative_ttl: s.negative_ttl,
                max_body_size: s.max_body_size,
                cache_header: s.cache_header.clone(),
                forward_headers: s.forward_headers.clone(),
                policy: s.policy,
            }
        }
    }
}

impl<St: fmt::Debug, C: fmt::Debug, K: fmt::Debug, T> fmt::Debug for HttpCacheLayer<St, C, K, T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HttpCacheLayer")
            .field("cache", &self.settings.cache)
            .field("key", &self.settings.key)
            .field("statuses", &self.settings.statuses)
            .field("max_body_size", &self.settings.max_body_size)
            .finish_non_exhaustive()
    }
}

impl<St, C> HttpCacheLayer<St, C> {
    /// Caches responses in `cache`, keyed by [`HttpKey`], for five minutes.
    ///
    /// ```
    /// use std::time::Duration;
    /// use tower_caching::{http::{CachedResponse, HttpCacheLayer}, Cache};
    ///
    /// let cache: Cache<CachedResponse> = Cache::in_memory();
    /// let layer = HttpCacheLayer::new(cache); // router.layer(layer)
    /// # let _ = (layer, Duration::ZERO);
    /// ```
    pub fn new(cache: Cache<CachedResponse, St, C>) -> Self {
        HttpCacheLayer {
            settings: Arc::new(Settings {
                cache,
                key: HttpKey::new(),
                ttl: FixedTtl::default(),
                statuses: vec![StatusCode::OK],
                negative_ttl: None,
                max_body_size: 1 << 20,
                cache_header: Some(HeaderName::from_static("x-cache")),
                forward_headers: Vec::new(),
                policy: ReadPolicy::plain(Strategy::CacheAside),
            }),
        }
    }
}

impl<St, C, K: Clone, T: Clone> HttpCacheLayer<St, C, K, T> {
    fn settings(self) -> Settings<St, C, K, T> {
        Arc::try_unwrap(self.settings).unwrap_or_else(|shared| (*shared).clone())
    }

    /// Keys requests with `key` ([`HttpKey`], [`PathKey`](super::PathKey), a closure).
    ///
    /// ```
    /// use std::time::Duration;
    /// use tower_caching::{http::{CachedResponse, HttpCacheLayer}, Cache};
    ///
    /// let cache: Cache<CachedResponse> = Cache::in_memory();
    /// use tower_caching::http::HttpKey;
    /// let layer = HttpCacheLayer::new(cache)
    ///     .key(HttpKey::new().prefix("api").header("accept-language"));
    /// # let _ = (layer, Duration::ZERO);
    /// ```
    pub fn key<K2>(self, key: K2) -> HttpCacheLayer<St, C, K2, T> {
        let s = self.settings();
        HttpCacheLayer {
            settings: Arc::new(Settings {
                cache: s.cache,
                key,
                ttl: s.ttl,
                statuses: s.statuses,
                negative_ttl: s.negative_ttl,
                max_body_size: s.max_body_size,
                cache_header: s.cache_header,
                forward_headers: s.forward_headers,
                policy: s.policy,
            }),
        }
    }

    /// Keeps responses fresh for `ttl` (a `Duration`, [`Jitter`](crate::ttl::Jitter), a
    /// closure over the key and the response).
    ///
    /// ```
    /// use std::time::Duration;
    /// use tower_caching::{http::{CachedResponse, HttpCacheLayer}, Cache};
    ///
    /// let cache: Cache<CachedResponse> = Cache::in_memory();
    /// let layer = HttpCacheLayer::new(cache).ttl(Duration::from_secs(60));
    /// # let _ = layer;
    /// ```
    pub fn ttl<T2>(self, ttl: T2) -> HttpCacheLayer<St, C, K, T2> {
        let s = self.settings();
        HttpCacheLayer {
            settings: Arc::new(Settings {
                cache: s.cache,
                key: s.key,
                ttl,
                statuses: s.statuses,
                negative_ttl: s.negative_ttl,
                max_body_size: s.max_body_size,
                cache_header: s.cache_header,
                forward_headers: s.forward_headers,
                policy: s.policy,
            }),
        }
    }

    fn update(mut self, f: impl FnOnce(&mut Settings<St, C, K, T>)) -> Self {
        f(Arc::make_mut(&mut self.settings));
        self
    }

    /// The statuses whose responses are stored (default: 200 only).
    ///
    /// ```
    /// use std::time::Duration;
    /// use tower_caching::{http::{CachedResponse, HttpCacheLayer}, Cache};
    ///
    /// let cache: Cache<CachedResponse> = Cache::in_memory();
    /// use http::StatusCode;
    /// let layer = HttpCacheLayer::new(cache)
    ///     .statuses([StatusCode::OK, StatusCode::MOVED_PERMANENTLY])
    ///     .negative_ttl(Duration::from_secs(30)) // 404s, briefly
    ///     .max_body_size(256 * 1024)
    ///     .cache_header(http::HeaderName::from_static("x-cache-status"));
    /// # let _ = layer;
    /// ```
    pub fn statuses(self, statuses: impl IntoIterator<Item = StatusCode>) -> Self {
        let statuses = statuses.into_iter().collect();
        self.update(|s| s.statuses = statuses)
    }

    /// Stores `404 Not Found` responses too, for `ttl`. See
    /// [`statuses`](HttpCacheLayer::statuses) for an example.
    pub fn negative_ttl(self, ttl: Duration) -> Self {
        self.update(|s| s.negative_ttl = Some(ttl))
    }

    /// The largest body stored (default 1 MiB); larger ones stream through uncached. See
    /// [`statuses`](HttpCacheLayer::statuses) for an example.
    pub fn max_body_size(self, bytes: usize) -> Self {
        self.update(|s| s.max_body_size = bytes)
    }

    /// Names the response header that says `HIT` or `MISS` (default `x-cache`). See
    /// [`statuses`](HttpCacheLayer::statuses) for an example.
    pub fn cache_header(self, name: HeaderName) -> Self {
        self.update(|s| s.cache_header = Some(name))
    }

    /// Read-through's refresh-ahead: a hit in the last `fraction` of its TTL is served and
    /// reloaded in the background (once per key), with the request it arrived with. Counted
    /// under the strategy `read_through`.
    ///
    /// ```
    /// use std::time::Duration;
    /// use tower_caching::{http::{CachedResponse, HttpCacheLayer}, Cache};
    ///
    /// let cache: Cache<CachedResponse> = Cache::in_memory();
    /// let layer = HttpCacheLayer::new(cache)
    ///     .refresh_ahead(0.2)
    ///     .fail_safe(Duration::from_secs(3600), Duration::from_secs(30));
    /// # let _ = layer;
    /// ```
    pub fn refresh_ahead(self, fraction: f64) -> Self {
        let fraction = if fraction.is_finite() {
            fraction.clamp(0.0, 1.0)
        } else {
            0.0
        };
        self.update(|s| {
            s.policy.refresh_ahead = Some(fraction);
            s.policy.strategy = Strategy::ReadThrough;
        })
    }

    /// Fail-safe: responses are kept `grace` past their TTL, and when the reload of a stale
    /// one fails — the inner service answers 5xx or errs — the stale response is served
    /// with `x-cache: STALE` (counted as `stale_served`) and served again for `throttle`
    /// before the inner service is asked again. See
    /// [`refresh_ahead`](HttpCacheLayer::refresh_ahead) for an example.
    pub fn fail_safe(self, grace: Duration, throttle: Duration) -> Self {
        self.update(|s| s.policy.fail_safe = Some(FailSafe { grace, throttle }))
    }

    /// Leaves out the `HIT`/`MISS` header.
    ///
    /// ```
    /// use std::time::Duration;
    /// use tower_caching::{http::{CachedResponse, HttpCacheLayer}, Cache};
    ///
    /// let cache: Cache<CachedResponse> = Cache::in_memory();
    /// let layer = HttpCacheLayer::new(cache).no_cache_header();
    /// # let _ = (layer, Duration::ZERO);
    /// ```
    pub fn no_cache_header(self) -> Self {
        self.update(|s| s.cache_header = None)
    }

    /// Forwards request header `name` to the inner service on the cached path although the
    /// key does not cover it — for headers that cannot change the response (a trace id).
    ///
    /// ```
    /// use std::time::Duration;
    /// use tower_caching::{http::{CachedResponse, HttpCacheLayer}, Cache};
    ///
    /// let cache: Cache<CachedResponse> = Cache::in_memory();
    /// let layer = HttpCacheLayer::new(cache)
    ///     .forward_header(http::HeaderName::from_static("traceparent"));
    /// # let _ = (layer, Duration::ZERO);
    /// ```
    pub fn forward_header(self, name: HeaderName) -> Self {
        self.update(|s| s.forward_headers.push(name))
    }
}

impl<Svc, St, C, K, T> Layer<Svc> for HttpCacheLayer<St, C, K, T> {
    type Service = HttpCache<Svc, St, C, K, T>;

    fn layer(&self, inner: Svc) -> Self::Service {
        HttpCache {
            inner,
            shared: self.settings.clone(),
        }
    }
}

/// The service of [`HttpCacheLayer`].
pub struct HttpCache<Svc, St = MemoryStore, C = Json, K = HttpKey, T = FixedTtl> {
    inner: Svc,
    shared: Arc<Settings<St, C, K, T>>,
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

fn has_token(value: &HeaderValue, tokens: &[&str]) -> bool {
    value.to_str().is_ok_and(|value| {
        value.split(',').any(|directive| {
            let name = directive.trim().split('=').next().unwrap_or("").trim();
            tokens.iter().any(|token| name.eq_ignore_ascii_case(token))
        })
    })
}

fn cache_control_has(headers: &http::HeaderMap, tokens: &[&str]) -> bool {
    headers
        .get_all(header::CACHE_CONTROL)
        .iter()
        .any(|value| has_token(value, tokens))
}

impl<St, C, K, T> Settings<St, C, K, T> {
    /// Whether the response may be stored, and for how long at most.
    fn admits<B>(&self, parts: &http::response::Parts, key: &K) -> Option<Option<Duration>>
    where
        K: RequestKey<B>,
    {
        let negative = parts.status == StatusCode::NOT_FOUND && self.negative_ttl.is_some();
        if !self.statuses.contains(&parts.status) && !negative {
            return None;
        }
        if parts.headers.contains_key(header::SET_COOKIE)
            || cache_control_has(&parts.headers, &["no-store", "private", "no-cache"])
        {
            return None;
        }
        for vary in parts.headers.get_all(header::VARY) {
            let Ok(vary) = vary.to_str() else {
                return None;
            };
            for name in vary.split(',').map(str::trim).filter(|n| !n.is_empty()) {
                let covered = HeaderName::from_bytes(name.as_bytes())
                    .is_ok_and(|name| key.covers_header(&name));
                if name == "*" || !covered {
                    return None;
                }
            }
        }
        Some(if negative && !self.statuses.contains(&parts.status) {
            self.negative_ttl
        } else {
            None
        })
    }

    fn respond<B>(
        &self,
        cached: CachedResponse,
        outcome: &'static str,
        age: Option<u64>,
    ) -> Response<CacheBody<B>> {
        let mut response = cached.into_response();
        if let Some(name) = &self.cache_header {
            response
                .headers_mut()
                .insert(name.clone(), HeaderValue::from_static(outcome));
        }
        if let Some(age) = age {
            response
                .headers_mut()
                .insert(header::AGE, HeaderValue::from(age));
        }
        response.map(CacheBody::full)
    }
}

impl<Svc, ReqBody, ResBody, St, C, K, T> Service<Request<ReqBody>> for HttpCache<Svc, St, C, K, T>
where
    Svc: Service<Request<ReqBody>, Response = Response<ResBody>> + Clone + Send + 'static,
    Svc::Future: Send + 'static,
    Svc::Error: Send + Sync + 'static,
    ReqBody: Send + 'static,
    ResBody: Body<Data = Bytes> + Unpin + Send + 'static,
    ResBody::Error: Into<BoxError>,
    St: Store,
    C: Codec,
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
        let credentials = [header::AUTHORIZATION, header::COOKIE]
            .iter()
            .any(|name| request.headers().contains_key(name) && !settings.key.covers_header(name));
        let eligible = matches!(*request.method(), Method::GET | Method::HEAD)
            && !credentials
            && !cache_control_has(request.headers(), &["no-store"])
            && !settings.cache.is_closed();
        let key = if eligible {
            settings.key.key(&request)
        } else {
            None
        };
        let Some(key) = key else {
            return passthrough(inner.call(request));
        };
        let lookup = !cache_control_has(request.headers(), &["no-cache"]);
        // Only what the key covers reaches the inner service on the cached path.
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
        Box::pin(serve(self.shared.clone(), inner, request, key, lookup))
    }
}

impl<St, C, K, T> ReadContext for Arc<Settings<St, C, K, T>>
where
    St: Store,
    C: Codec,
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
type Own<ResBody, E> = Result<Response<CacheBody<ResBody>>, E>;

impl<Svc, ReqBody, ResBody, St, C, K, T> Load<Arc<Settings<St, C, K, T>>> for HttpLoad<Svc, ReqBody>
where
    Svc: Service<Request<ReqBody>, Response = Response<ResBody>> + Send + 'static,
    Svc::Future: Send + 'static,
    Svc::Error: Send + Sync + 'static,
    ReqBody: Send + 'static,
    ResBody: Body<Data = Bytes> + Unpin + Send + 'static,
    ResBody::Error: Into<BoxError>,
    St: Store,
    C: Codec,
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
            let response = match inner.call(request).await {
                Ok(response) => response,
                Err(error) => {
                    return Ok(Loaded::Private {
                        private: Err(error),
                        failed: true,
                    })
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
    C: Codec,
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
            inner.call(request).await?.map(CacheBody::stream)
        }
        Outcome::Failed(never) => match *never {},
        Outcome::Panicked => {
            let mut response = Response::new(CacheBody::full(Bytes::new()));
            *response.status_mut() = StatusCode::INTERNAL_SERVER_ERROR;
            response
        }
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
    C: Codec,
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

enum Read<B> {
    /// The whole body, within the limit and without trailers.
    Complete(Bytes),
    /// What was read before the limit, trailers or an error; then the rest, if any.
    Partial(VecDeque<Frame<Bytes>>, Option<B>),
}

async fn read_limited<B: Body<Data = Bytes> + Unpin>(mut body: B, limit: usize) -> Read<B> {
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
