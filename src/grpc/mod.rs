//! Caching of unary gRPC calls, for tonic (or any gRPC-over-HTTP/2 server): a layer for
//! `tonic::transport::Server::builder().layer(..)`, keyed by the method path and the
//! request message.
//!
//! The request message is read (unary requests are small; past
//! [`max_request_size`](GrpcCacheLayer::max_request_size) the call passes through), the key
//! is built from the method path and the encoded message — or by a typed extractor that
//! decodes it — and a response whose `grpc-status` is `0` (OK) is stored with its body and
//! trailers.
//!
//! Streams pass through untouched, whether or not [`methods`](GrpcCacheLayer::methods)
//! lists the unary methods: the request is read up to its first message and never waited on
//! past it (a bidirectional client may wait for an answer before it sends more); a request
//! that carries a second message is a client stream, whose answer is never stored; and a
//! response whose end is not at hand as soon as its first message is (a server stream) is
//! passed on as it comes, never held back and never stored. A hit replays them: the client cannot tell it from the server's answer, but for
//! the `x-cache: HIT` header. A call that carries `authorization` or `cookie` metadata is
//! passed through unless the key covers it ([`GrpcCacheLayer::key_metadata`]).
//!
//! ```
//! use tower_caching::grpc::{GrpcCacheLayer, GrpcKey};
//! use tower_caching::http::CachedResponse;
//! use tower_caching::Cache;
//!
//! let cache: Cache<CachedResponse> = Cache::in_memory();
//! // Only `GetEntry` is cached; the key is the method path and a hash of the message.
//! let layer = GrpcCacheLayer::new(cache).methods(["/directory.Directory/GetEntry"]);
//! # let _ = layer;
//! // A typed key: decode the message (with prost, say) and key on its id.
//! let typed = GrpcKey::typed(|method: &str, message: &[u8]| {
//!     let id = std::str::from_utf8(message).ok()?; // your_proto::GetEntry::decode(message)
//!     Some(tower_caching::key::KeyBuilder::new().entry(id))
//! });
//! # let _ = typed;
//! ```

use std::collections::VecDeque;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http::header::{HeaderName, HeaderValue};
use http::{HeaderMap, Method, Request, Response};
use http_body::{Body, Frame};
use http_body_util::BodyExt;
use tower_layer::Layer;
use tower_service::Service;

use crate::BoxError;
use crate::cache::Cache;
use crate::codec::{Codec, Json};
use crate::engine::{Load, Loaded, Outcome, ReadContext, ReadFuture, ReadPolicy};
use crate::frame::now_ms;
use crate::http::body::passthrough;
use crate::http::{CacheBody, CachedResponse};
use crate::key::Key;
use crate::metrics::Strategy;
use crate::store::{MemoryStore, Store};

mod key;

pub use self::key::GrpcKey;

/// Caches unary gRPC calls. See the [module docs](self).
pub struct GrpcCacheLayer<St = MemoryStore, C = Json> {
    settings: Arc<GrpcSettings<St, C>>,
}

struct GrpcSettings<St, C> {
    cache: Cache<CachedResponse, St, C>,
    key: GrpcKey,
    methods: Option<Vec<String>>,
    ttl: Duration,
    max_request_size: usize,
    max_response_size: usize,
    /// Request metadata whose values are part of the key.
    keyed_metadata: Vec<HeaderName>,
}

/// Request metadata that says who is calling: a call that carries any of it is never
/// answered from (or into) the shared cache, unless the key covers it
/// ([`GrpcCacheLayer::key_metadata`]) — one caller's answer is never served to another.
const CREDENTIALS: [&str; 2] = ["authorization", "cookie"];

impl<St, C> Clone for GrpcCacheLayer<St, C> {
    fn clone(&self) -> Self {
        GrpcCacheLayer {
            settings: self.settings.clone(),
        }
    }
}

impl<St: fmt::Debug, C: fmt::Debug> fmt::Debug for GrpcCacheLayer<St, C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GrpcCacheLayer")
            .field("cache", &self.settings.cache)
            .field("key", &self.settings.key)
            .field("methods", &self.settings.methods)
            .field("ttl", &self.settings.ttl)
            .finish_non_exhaustive()
    }
}

impl<St, C> GrpcCacheLayer<St, C> {
    /// Caches every unary call's OK responses in `cache` for five minutes, keyed by
    /// [`GrpcKey::encoded`]. Limit it with [`methods`](GrpcCacheLayer::methods).
    ///
    /// ```
    /// use std::time::Duration;
    /// use tower_caching::{grpc::{GrpcCacheLayer, GrpcKey}, http::CachedResponse};
    /// use tower_caching::Cache;
    ///
    /// let layer = GrpcCacheLayer::new(Cache::<CachedResponse>::in_memory())
    ///     .key(GrpcKey::encoded_with_prefix("directory"))
    ///     .methods(["/directory.v1.Directory/GetEntry"])
    ///     .ttl(Duration::from_secs(300))
    ///     .max_request_size(16 * 1024)
    ///     .max_response_size(256 * 1024);
    /// // tonic::transport::Server::builder().layer(layer)…
    /// # let _ = layer;
    /// ```
    pub fn new(cache: Cache<CachedResponse, St, C>) -> Self {
        GrpcCacheLayer {
            settings: Arc::new(GrpcSettings {
                // Frames say they hold responses: a typed cache on one of these keys
                // sees a clash, not a value it might decode.
                cache: cache.storing(crate::frame::Kind::Response),
                key: GrpcKey::encoded(),
                methods: None,
                ttl: crate::ttl::ENTRY,
                max_request_size: 64 * 1024,
                max_response_size: 1 << 20,
                keyed_metadata: Vec::new(),
            }),
        }
    }

    fn update(self, f: impl FnOnce(&mut GrpcSettings<St, C>)) -> Self {
        let mut settings = Arc::try_unwrap(self.settings).unwrap_or_else(|shared| GrpcSettings {
            cache: shared.cache.clone(),
            key: shared.key.clone(),
            methods: shared.methods.clone(),
            ttl: shared.ttl,
            max_request_size: shared.max_request_size,
            max_response_size: shared.max_response_size,
            keyed_metadata: shared.keyed_metadata.clone(),
        });
        f(&mut settings);
        GrpcCacheLayer {
            settings: Arc::new(settings),
        }
    }

    /// Keys calls with `key`. See [`new`](GrpcCacheLayer::new) for an example.
    pub fn key(self, key: GrpcKey) -> Self {
        self.update(|s| s.key = key)
    }

    /// Caches only these methods (`/package.Service/Method`); the others pass through.
    /// See [`new`](GrpcCacheLayer::new) for an example.
    pub fn methods<I: IntoIterator<Item = M>, M: Into<String>>(self, methods: I) -> Self {
        let methods = methods.into_iter().map(Into::into).collect();
        self.update(|s| s.methods = Some(methods))
    }

    /// How long a response stays fresh (default five minutes). See [`new`](GrpcCacheLayer::new) for an example.
    pub fn ttl(self, ttl: Duration) -> Self {
        self.update(|s| s.ttl = ttl)
    }

    /// The largest request read to build a key (default 64 KiB); larger calls pass through.
    /// See [`new`](GrpcCacheLayer::new) for an example.
    pub fn max_request_size(self, bytes: usize) -> Self {
        self.update(|s| s.max_request_size = bytes)
    }

    /// The largest response stored (default 1 MiB). See [`new`](GrpcCacheLayer::new) for an example.
    pub fn max_response_size(self, bytes: usize) -> Self {
        self.update(|s| s.max_response_size = bytes)
    }

    /// Makes request metadata `name` part of the key: calls that differ in it are cached
    /// apart. Calls carrying `authorization` or `cookie` bypass the cache unless it is keyed
    /// on them this way (then each caller gets its own entries).
    ///
    /// ```
    /// use tower_caching::grpc::GrpcCacheLayer;
    /// use tower_caching::http::CachedResponse;
    /// use tower_caching::Cache;
    ///
    /// // Per-caller caching of a method whose answer depends on who asks.
    /// let layer = GrpcCacheLayer::new(Cache::<CachedResponse>::in_memory())
    ///     .key_metadata(http::HeaderName::from_static("authorization"));
    /// # let _ = layer;
    /// ```
    pub fn key_metadata(self, name: HeaderName) -> Self {
        self.update(|s| s.keyed_metadata.push(name))
    }
}

impl<Svc, St, C> Layer<Svc> for GrpcCacheLayer<St, C> {
    type Service = GrpcCache<Svc, St, C>;

    fn layer(&self, inner: Svc) -> Self::Service {
        GrpcCache {
            inner,
            settings: self.settings.clone(),
        }
    }
}

/// The service of [`GrpcCacheLayer`].
pub struct GrpcCache<Svc, St = MemoryStore, C = Json> {
    inner: Svc,
    settings: Arc<GrpcSettings<St, C>>,
}

impl<Svc: Clone, St, C> Clone for GrpcCache<Svc, St, C> {
    fn clone(&self) -> Self {
        GrpcCache {
            inner: self.inner.clone(),
            settings: self.settings.clone(),
        }
    }
}

impl<Svc: fmt::Debug, St, C> fmt::Debug for GrpcCache<Svc, St, C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GrpcCache")
            .field("inner", &self.inner)
            .finish_non_exhaustive()
    }
}

fn is_grpc<B>(request: &Request<B>) -> bool {
    request.method() == Method::POST
        && request
            .headers()
            .get(http::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.starts_with("application/grpc"))
}

fn grpc_ok(headers: &HeaderMap) -> bool {
    headers
        .get("grpc-status")
        .is_some_and(|status| status == "0")
}

fn pairs(headers: &HeaderMap) -> Vec<(String, String)> {
    headers
        .iter()
        .filter_map(|(name, value)| {
            Some((name.as_str().to_owned(), value.to_str().ok()?.to_owned()))
        })
        .collect()
}

fn header_map(pairs: &[(String, String)]) -> HeaderMap {
    let mut map = HeaderMap::new();
    for (name, value) in pairs {
        if let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(name.as_bytes()),
            HeaderValue::from_str(value),
        ) {
            map.append(name, value);
        }
    }
    map
}

impl<Svc, ReqBody, ResBody, St, C> Service<Request<ReqBody>> for GrpcCache<Svc, St, C>
where
    Svc:
        Service<Request<CacheBody<ReqBody>>, Response = Response<ResBody>> + Clone + Send + 'static,
    Svc::Future: Send + 'static,
    Svc::Error: Send + Sync + 'static,
    ReqBody: Body<Data = Bytes> + Unpin + Send + 'static,
    ReqBody::Error: Into<BoxError>,
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
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let settings = self.settings.clone();
        let method = request.uri().path().to_owned();
        let credentials = CREDENTIALS.iter().any(|name| {
            request.headers().contains_key(*name)
                && !settings.keyed_metadata.iter().any(|keyed| keyed == name)
        });
        let cached = is_grpc(&request)
            && !credentials
            && !settings.cache.is_closed()
            && settings
                .methods
                .as_ref()
                .is_none_or(|methods| methods.contains(&method));
        if !cached {
            return passthrough(inner.call(request.map(CacheBody::stream)));
        }
        Box::pin(async move {
            let (parts, body) = request.into_parts();
            let mut more = None;
            let (body, replay) = match read_first_message(body, settings.max_request_size).await {
                Request1::Whole(bytes) => (Some(bytes.clone()), CacheBody::full(bytes)),
                Request1::Open(bytes, frames, rest) => {
                    // Keyed by its first message; stored only if no second one follows.
                    let flag = Arc::new(std::sync::atomic::AtomicBool::new(false));
                    more = Some(flag.clone());
                    (Some(bytes), CacheBody::watched(frames, rest, flag))
                }
                Request1::Other(partial) => (None, partial),
            };
            let key = body
                .as_ref()
                .and_then(|body| settings.key.key(&method, body))
                .and_then(|key| keyed_by_metadata(key, &settings.keyed_metadata, &parts.headers));
            let request = Request::from_parts(parts, replay);
            let Some(key) = key else {
                return Ok(inner.call(request).await?.map(CacheBody::stream));
            };
            let load = GrpcLoad {
                inner,
                request,
                more,
            };
            Ok(match ReadFuture::new(settings.clone(), key, load).await {
                Outcome::Hit(hit) | Outcome::Stale(hit) => {
                    let age = now_ms().saturating_sub(hit.header.stored_at_ms) / 1000;
                    replay_response(hit.value, "HIT", Some(age))
                }
                Outcome::Pending(cached) => replay_response(cached, "HIT", None),
                Outcome::Loaded(cached) => replay_response(cached, "MISS", None),
                Outcome::Private(own) => own?,
                Outcome::Unshared(GrpcLoad {
                    mut inner, request, ..
                }) => inner.call(request).await?.map(CacheBody::stream),
                Outcome::Failed(never) => match *never {},
                Outcome::Panicked => panicked(),
            })
        })
    }
}

/// `key`, extended with a digest of the values of the keyed metadata (length-prefixed, so
/// that no value can pose as another's).
fn keyed_by_metadata(key: Key, names: &[HeaderName], headers: &HeaderMap) -> Option<Key> {
    if names.is_empty() {
        return Some(key);
    }
    let mut keyed = Vec::new();
    for name in names {
        for value in headers.get_all(name) {
            keyed.extend_from_slice(format!("{}:{}:", name.as_str().len(), name).as_bytes());
            keyed.extend_from_slice(format!("{}:", value.len()).as_bytes());
            keyed.extend_from_slice(value.as_bytes());
        }
        keyed.push(b'|');
    }
    let digest = crate::key::builder::digest(&keyed);
    Key::new(format!("{key}#md:{digest}")).ok()
}

/// A `grpc-status: 13` (internal) answer, for a call whose handler panicked.
fn panicked<B>() -> Response<CacheBody<B>> {
    let mut response = Response::new(CacheBody::full(Bytes::new()));
    let headers = response.headers_mut();
    headers.insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("application/grpc"),
    );
    headers.insert("grpc-status", HeaderValue::from_static("13"));
    headers.insert(
        "grpc-message",
        HeaderValue::from_static("the%20handler%20panicked"),
    );
    response
}

impl<St: Store, C: Codec<CachedResponse>> ReadContext for Arc<GrpcSettings<St, C>> {
    type Value = CachedResponse;
    type Store = St;
    type Codec = C;

    fn cache(&self) -> &Cache<CachedResponse, St, C> {
        &self.cache
    }

    fn policy(&self) -> &ReadPolicy {
        const POLICY: ReadPolicy = ReadPolicy::plain(Strategy::CacheAside);
        &POLICY
    }
}

/// The gRPC layer's load: the inner service called with the request. A call whose status is
/// OK is stored and shared; any other answer, and an error, is the caller's alone.
struct GrpcLoad<Svc, B> {
    inner: Svc,
    request: Request<CacheBody<B>>,
    /// Set if the request, passed on open after its first message, carried more.
    more: Option<Arc<std::sync::atomic::AtomicBool>>,
}

impl<Svc, ReqBody, ResBody, St, C> Load<Arc<GrpcSettings<St, C>>> for GrpcLoad<Svc, ReqBody>
where
    Svc: Service<Request<CacheBody<ReqBody>>, Response = Response<ResBody>> + Send + 'static,
    Svc::Future: Send + 'static,
    Svc::Error: Send + Sync + 'static,
    ReqBody: Send + 'static,
    ResBody: Body<Data = Bytes> + Unpin + Send + 'static,
    St: Store,
    C: Codec<CachedResponse>,
{
    type Private = Result<Response<CacheBody<ResBody>>, Svc::Error>;
    type Error = std::convert::Infallible;

    fn load(
        self,
        settings: Arc<GrpcSettings<St, C>>,
        _: Key,
    ) -> impl Future<Output = Result<Loaded<CachedResponse, Self::Private>, Self::Error>> + Send + 'static
    {
        let GrpcLoad {
            mut inner,
            request,
            more,
        } = self;
        async move {
            let private = |response, failed| {
                Ok(Loaded::Private {
                    private: Ok(response),
                    failed,
                })
            };
            let (parts, body) = match inner.call(request).await {
                Ok(response) => response.into_parts(),
                Err(error) => {
                    return Ok(Loaded::Private {
                        private: Err(error),
                        failed: true,
                    });
                }
            };
            let mut frames = VecDeque::new();
            let mut data = BytesMut::new();
            let mut trailers = None;
            let mut body = body;
            loop {
                let whole = first_message_len(&data).is_some_and(|len| data.len() == len);
                let next = if whole {
                    // A unary answer's trailers are at hand once its message is; a stream's
                    // next message is not: it is passed on as it comes, never held back.
                    match frame_at_hand(&mut body).await {
                        Poll::Ready(next) => next,
                        Poll::Pending => {
                            let rest = CacheBody::resume(frames, Some(body));
                            return private(Response::from_parts(parts, rest), false);
                        }
                    }
                } else {
                    body.frame().await
                };
                match next {
                    None => break,
                    Some(Ok(frame)) => {
                        if let Some(chunk) = frame.data_ref() {
                            data.extend_from_slice(chunk);
                        } else if let Some(t) = frame.trailers_ref() {
                            trailers = Some(t.clone());
                        }
                        frames.push_back(frame);
                        let beyond = first_message_len(&data).is_some_and(|len| data.len() > len);
                        if data.len() > settings.max_response_size || beyond {
                            let rest = CacheBody::resume(frames, Some(body));
                            return private(Response::from_parts(parts, rest), false);
                        }
                    }
                    Some(Err(_)) => {
                        let rest = CacheBody::resume(frames, None);
                        return private(Response::from_parts(parts, rest), true);
                    }
                }
            }
            let streamed = more.is_some_and(|more| more.load(std::sync::atomic::Ordering::Acquire));
            if streamed {
                // A client stream: its answer depends on more than the keyed message.
                let rest = CacheBody::resume(frames, None);
                return private(Response::from_parts(parts, rest), false);
            }
            // A trailers-only response carries its status in the headers.
            let ok = trailers
                .as_ref()
                .map_or_else(|| grpc_ok(&parts.headers), grpc_ok);
            if !(ok && parts.status == http::StatusCode::OK) {
                let rest = CacheBody::resume(frames, None);
                return private(Response::from_parts(parts, rest), false);
            }
            let cached = CachedResponse::from_parts(200, pairs(&parts.headers), data.freeze())
                .with_trailers(trailers.as_ref().map(pairs).unwrap_or_default());
            Ok(Loaded::Shared {
                value: cached,
                admission: Some(Some(settings.ttl)),
            })
        }
    }
}

/// The length of the first gRPC message in `data` (5-byte prefix: flag, big-endian length),
/// once the prefix is there.
fn first_message_len(data: &[u8]) -> Option<usize> {
    let prefix: [u8; 4] = data.get(1..5)?.try_into().ok()?;
    Some(5 + u32::from_be_bytes(prefix) as usize)
}

/// A request read up to its first message.
enum Request1<B> {
    /// One message, and the body ended.
    Whole(Bytes),
    /// One whole message, and the body still open: a unary call whose end is on its way,
    /// or a client stream. Its frames, and the rest.
    Open(Bytes, VecDeque<Frame<Bytes>>, B),
    /// Not one small message (larger than the limit, several, trailers, an error): passed
    /// on as it is.
    Other(CacheBody<B>),
}

/// Polls `body` once, without waiting: what it has at hand.
async fn frame_at_hand<B: Body<Data = Bytes> + Unpin>(
    body: &mut B,
) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
    std::future::poll_fn(|cx| Poll::Ready(Pin::new(&mut *body).poll_frame(cx))).await
}

/// Reads a request up to its first whole message (never waiting past it: a bidirectional
/// stream's client may wait for an answer before it sends more or ends).
async fn read_first_message<B>(mut body: B, limit: usize) -> Request1<B>
where
    B: Body<Data = Bytes> + Unpin,
{
    let mut frames = VecDeque::new();
    let mut data = BytesMut::new();
    loop {
        let whole = first_message_len(&data).is_some_and(|len| data.len() == len);
        let next = if whole {
            match frame_at_hand(&mut body).await {
                Poll::Ready(next) => next,
                Poll::Pending => return Request1::Open(data.freeze(), frames, body),
            }
        } else {
            body.frame().await
        };
        match next {
            None => return Request1::Whole(data.freeze()),
            Some(Ok(frame)) => {
                let is_data = frame.is_data();
                if let Some(chunk) = frame.data_ref() {
                    data.extend_from_slice(chunk);
                }
                frames.push_back(frame);
                let beyond = first_message_len(&data).is_some_and(|len| data.len() > len);
                if !is_data || data.len() > limit || beyond {
                    return Request1::Other(CacheBody::resume(frames, Some(body)));
                }
            }
            Some(Err(_)) => return Request1::Other(CacheBody::resume(frames, None)),
        }
    }
}

fn replay_response<B>(
    cached: CachedResponse,
    outcome: &'static str,
    age: Option<u64>,
) -> Response<CacheBody<B>> {
    let trailers = header_map(cached.trailers());
    let response = cached.into_response();
    let (mut parts, body) = response.into_parts();
    parts
        .headers
        .insert("x-cache", HeaderValue::from_static(outcome));
    if let Some(age) = age {
        parts
            .headers
            .insert(http::header::AGE, HeaderValue::from(age));
    }
    let mut frames = VecDeque::new();
    if !body.is_empty() {
        frames.push_back(Frame::data(body));
    }
    if !trailers.is_empty() {
        frames.push_back(Frame::trailers(trailers));
    }
    Response::from_parts(parts, CacheBody::resume(frames, None))
}
