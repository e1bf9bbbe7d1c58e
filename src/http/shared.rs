//! [`HttpCache`](super::HttpCache) as a shared HTTP cache (RFC 9111): freshness from the
//! response, `Age`, conditional requests, revalidation, `Vary` variants, stale responses
//! where the response allows them, and invalidation by unsafe methods.
//!
//! Every request header reaches the inner service (the origin declares with `Vary` what
//! its answer depends on); a request's conditional headers are replaced by the cache's
//! own validators, so what is stored is always a whole response.

use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use http_body::Body;
use tower_service::Service;

use super::CachedResponse;
use super::body::CacheBody;
use super::freshness::{self, Directives, Exchange, Freshness, Refusal, Use};
use super::key::{RequestKey, key_as_get};
use super::layer::Settings;
use super::service::{Own, Read, internal_error, read_limited};
use crate::BoxError;
use crate::codec::Codec;
use crate::engine::{Load, Loaded, Outcome, ReadFuture};
use crate::frame::now_ms;
use crate::key::{Key, Pattern};
use crate::metrics::Operation;
use crate::store::Store;
use crate::ttl::TtlPolicy;

/// How a layer in shared-cache mode treats responses.
#[derive(Clone, Debug)]
pub(crate) struct SharedMode {
    pub(crate) targets: freshness::Targets,
    /// Whether the layer's TTL is the freshness of a response that states none.
    pub(crate) default_from_ttl: bool,
    /// The longest freshness given to any response.
    pub(crate) ceiling: Option<Duration>,
    /// How long a stale response is kept for revalidation.
    pub(crate) keep: Duration,
}

impl Default for SharedMode {
    fn default() -> Self {
        SharedMode {
            targets: freshness::Targets { cdn: true },
            default_from_ttl: false,
            ceiling: None,
            keep: Duration::from_secs(3600),
        }
    }
}

/// The request, shared by the attempts of one read: its head stays readable for the hit
/// path, and a load takes its body (with a copy of the head) when it runs.
struct Pending<B> {
    parts: http::request::Parts,
    body: Mutex<Option<B>>,
}

type Slot<B> = Arc<Pending<B>>;

fn take<B>(slot: &Slot<B>) -> Option<Request<B>> {
    let body = slot.body.lock().unwrap_or_else(|p| p.into_inner()).take()?;
    Some(Request::from_parts(slot.parts.clone(), body))
}

/// The key of the variant of `primary` that a request with `headers` selects.
fn variant_key(
    primary: &Key,
    vary: &[(String, Option<String>)],
    headers: &HeaderMap,
) -> Option<Key> {
    let mut material = String::new();
    for (name, _) in vary {
        let value = HeaderName::from_bytes(name.as_bytes())
            .ok()
            .and_then(|name| freshness::normalised(headers, &name));
        match value {
            Some(value) => {
                material.push_str(&format!("{}:{name}={}:{value}|", name.len(), value.len()))
            }
            None => material.push_str(&format!("{}:{name}-|", name.len())),
        }
    }
    let digest = crate::key::builder::digest(material.as_bytes());
    Key::new(format!("{primary}#v{digest}")).ok()
}

/// The load of a shared-cache read: the inner service called with the request (without
/// its conditional fields, with the stored validators when revalidating).
struct OriginLoad<Svc, B> {
    inner: Svc,
    slot: Slot<B>,
    stale: Option<CachedResponse>,
}

impl<Svc, ReqBody, ResBody, St, C, K, T> Load<Arc<Settings<St, C, K, T>>>
    for OriginLoad<Svc, ReqBody>
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
        let OriginLoad {
            mut inner,
            slot,
            stale,
        } = self;
        async move {
            let Some(mut request) = take(&slot) else {
                return Ok(Loaded::Private {
                    private: Ok(internal_error()),
                    failed: true,
                });
            };
            for name in &freshness::CONDITIONALS {
                request.headers_mut().remove(name);
            }
            let stale_response = stale.map(CachedResponse::into_response);
            if let Some(stale) = &stale_response {
                freshness::add_validators(request.headers_mut(), stale.headers());
            }
            let request_headers = request.headers().clone();
            let request_time_ms = now_ms();
            let response = match inner.call(request).await {
                Ok(response) => response,
                Err(error) => {
                    return Ok(Loaded::Private {
                        private: Err(error),
                        failed: true,
                    });
                }
            };
            let exchange = Exchange {
                request_headers: &request_headers,
                request_time_ms,
                response_time_ms: now_ms(),
            };
            let (mut parts, body) = response.into_parts();
            for name in freshness::connection_listed(&parts.headers) {
                parts.headers.remove(name);
            }
            if let (StatusCode::NOT_MODIFIED, Some(stale)) = (parts.status, stale_response) {
                let (mut stored, body) = stale.into_parts();
                freshness::merge_not_modified(&mut stored.headers, &parts.headers);
                let mut admitted = admit(&settings, &key, &stored, body, &exchange);
                if let Loaded::Shared { value, .. } = &mut admitted {
                    value.revalidated = true;
                }
                return Ok(admitted);
            }
            let failed = parts.status.is_server_error();
            let mode = settings.shared.as_ref().expect("shared mode");
            let verdict = mode.freshness(&parts, &exchange, None);
            let needs_default = verdict == Err(Refusal::NoFreshness) && mode.default_from_ttl;
            if verdict.is_err() && !needs_default {
                return Ok(Loaded::Private {
                    private: Ok(Response::from_parts(parts, CacheBody::stream(body))),
                    failed,
                });
            }
            match read_limited(body, settings.max_body_size).await {
                Read::Complete(bytes) => Ok(admit(&settings, &key, &parts, bytes, &exchange)),
                Read::Partial(frames, rest) => {
                    settings.cache.observer().error(Operation::Set, "too_large");
                    Ok(Loaded::Private {
                        private: Ok(Response::from_parts(parts, CacheBody::resume(frames, rest))),
                        failed,
                    })
                }
            }
        }
    }
}

impl SharedMode {
    fn freshness(
        &self,
        parts: &http::response::Parts,
        exchange: &Exchange<'_>,
        default: Option<Duration>,
    ) -> Result<Freshness, Refusal> {
        Freshness::of(
            parts.status,
            &parts.headers,
            exchange,
            &self.targets,
            default,
            self.ceiling,
        )
    }
}

/// The stored form of a response, shared with waiters, or the response alone when it may
/// not be stored.
fn admit<St, C, K, T, P, B>(
    settings: &Settings<St, C, K, T>,
    key: &Key,
    parts: &http::response::Parts,
    body: Bytes,
    exchange: &Exchange<'_>,
) -> Loaded<CachedResponse, Own<B, P>>
where
    T: TtlPolicy<CachedResponse>,
{
    let mode = settings.shared.as_ref().expect("shared mode");
    let mut cached = CachedResponse::stored(parts, body.clone(), true);
    let verdict = match mode.freshness(parts, exchange, None) {
        Err(Refusal::NoFreshness) if mode.default_from_ttl => {
            match settings.ttl.ttl(key, &cached) {
                Some(default) => mode.freshness(parts, exchange, Some(default)),
                None => Err(Refusal::NoFreshness),
            }
        }
        verdict => verdict,
    };
    match verdict {
        Ok(fresh) => {
            let retention = fresh.retention(now_ms(), mode.keep);
            cached.freshness = Some(fresh);
            Loaded::Shared {
                value: cached,
                admission: Some(Some(retention)),
            }
        }
        Err(_) => Loaded::Private {
            private: Ok(Response::from_parts(parts.clone(), CacheBody::full(body))),
            failed: parts.status.is_server_error(),
        },
    }
}

/// What one answer from the cache says about itself, for `x-cache` and `Cache-Status`.
#[derive(Clone, Copy)]
enum Served {
    Hit,
    Miss,
    Revalidated,
    Stale,
}

impl Served {
    fn x_cache(self) -> &'static str {
        match self {
            Served::Hit => "HIT",
            Served::Revalidated => "REVALIDATED",
            Served::Miss => "MISS",
            Served::Stale => "STALE",
        }
    }

    fn cache_status(self) -> &'static str {
        match self {
            Served::Hit => "tower-caching; hit",
            Served::Miss => "tower-caching; fwd=miss; stored",
            Served::Revalidated => "tower-caching; fwd=stale; fwd-status=304; stored",
            Served::Stale => "tower-caching; hit; fwd=stale",
        }
    }
}

/// Serves a request in shared-cache mode.
pub(super) async fn serve<Svc, ReqBody, ResBody, St, C, K, T>(
    settings: Arc<Settings<St, C, K, T>>,
    mut inner: Svc,
    mut request: Request<ReqBody>,
) -> Result<Response<CacheBody<ResBody>>, Svc::Error>
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
    let method = request.method().clone();
    let key = key_as_get(&settings.key, &mut request);
    let Some(primary) = key.filter(|_| !settings.cache.is_closed()) else {
        return Ok(inner.call(request).await?.map(CacheBody::stream));
    };
    if !method.is_safe() {
        // §4.4: a non-error response to an unsafe method invalidates the target URI, and
        // the URIs its `Location` and `Content-Location` name on the same origin.
        let authority = request_authority(&request);
        let response = inner.call(request).await?;
        let status = response.status();
        if status.is_success() || status.is_redirection() {
            let mut keys = vec![primary];
            for name in [header::LOCATION, header::CONTENT_LOCATION] {
                let same_origin = response
                    .headers()
                    .get(&name)
                    .and_then(|value| value.to_str().ok())
                    .and_then(|value| value.parse::<http::Uri>().ok())
                    .filter(|uri| uri.path().starts_with('/'))
                    .filter(|uri| {
                        uri.authority()
                            .is_none_or(|a| Some(a.as_str()) == authority.as_deref())
                    });
                if let Some(key) = same_origin.and_then(|uri| settings.key.key_for_uri(&uri)) {
                    keys.push(key);
                }
            }
            // On its own task: a client that goes away now does not skip it.
            let settings = settings.clone();
            crate::task::run_to_completion(async move {
                for key in keys {
                    invalidate(&settings, &key).await;
                }
            })
            .await;
        }
        return Ok(response.map(CacheBody::stream));
    }
    let mut directives = Directives::parse(request.headers(), &header::CACHE_CONTROL);
    if !directives.present && pragma_no_cache(request.headers()) {
        directives.no_cache = true;
    }
    let uncacheable = !matches!(method, Method::GET | Method::HEAD)
        || directives.no_store
        || request.headers().contains_key(header::RANGE);
    if uncacheable {
        return Ok(inner.call(request).await?.map(CacheBody::stream));
    }
    let head = method == Method::HEAD;
    if head || directives.only_if_cached {
        // Never a load: a HEAD's own response (no body) is never stored, and
        // `only-if-cached` must not reach the origin.
        let found = fresh_entry(&settings, &primary, request.headers(), &directives).await;
        return Ok(match found {
            Some((entry, fresh)) => answer(
                &settings,
                entry,
                &fresh,
                Served::Hit,
                request.headers(),
                head,
            ),
            None if directives.only_if_cached => {
                let mut response = Response::new(CacheBody::full(Bytes::new()));
                *response.status_mut() = StatusCode::GATEWAY_TIMEOUT;
                response
            }
            None => inner.call(request).await?.map(CacheBody::stream),
        });
    }
    let (parts, body) = request.into_parts();
    let slot: Slot<ReqBody> = Arc::new(Pending {
        parts,
        body: Mutex::new(Some(body)),
    });
    let request_headers = &slot.parts.headers;

    let mut key = primary.clone();
    let mut stale: Option<CachedResponse> = None;
    let mut look = !directives.no_cache;
    for _ in 0..4 {
        let load = OriginLoad {
            inner: inner.clone(),
            slot: slot.clone(),
            stale: stale.clone(),
        };
        let read = if look {
            ReadFuture::new(settings.clone(), key.clone(), load)
        } else {
            ReadFuture::reload(settings.clone(), key.clone(), load)
        };
        let outcome = read.await;
        let (entry, served) = match outcome {
            Outcome::Hit(hit) => (hit.value, Served::Hit),
            Outcome::Pending(value) => (value, Served::Hit),
            Outcome::Loaded(value) if value.revalidated => (value, Served::Revalidated),
            Outcome::Loaded(value) => (value, Served::Miss),
            Outcome::Stale(hit) => (hit.value, Served::Stale),
            Outcome::Private(own) => {
                return Ok(stand_in(&settings, stale, own?, request_headers));
            }
            Outcome::Unshared(OriginLoad {
                mut inner, slot, ..
            }) => {
                let Some(request) = take(&slot) else {
                    return Ok(internal_error());
                };
                let response = inner.call(request).await?.map(CacheBody::stream);
                return Ok(stand_in(&settings, stale, response, request_headers));
            }
            Outcome::Failed(never) => match *never {},
            Outcome::Panicked => return Ok(internal_error()),
        };
        let mut entry = entry;
        let Some(fresh) = entry.freshness.take() else {
            // Stored by a layer in the other mode: not ours to judge; fetch anew.
            look = false;
            stale = None;
            continue;
        };
        if !fresh.selects(request_headers) {
            // Another variant: its own key (a waiter of another variant's load lands here too).
            match variant_key(&primary, &fresh.vary, request_headers) {
                Some(variant) if variant != key => key = variant,
                _ => look = false,
            }
            stale = None;
            continue;
        }
        if matches!(served, Served::Miss | Served::Revalidated) {
            return Ok(answer(
                &settings,
                entry,
                &fresh,
                served,
                request_headers,
                false,
            ));
        }
        match fresh.usable(now_ms(), &directives) {
            Use::Fresh => {
                return Ok(answer(
                    &settings,
                    entry,
                    &fresh,
                    served,
                    request_headers,
                    false,
                ));
            }
            Use::WhileRevalidating => {
                revalidate_in_background(&settings, &inner, &slot, &key, &entry);
                return Ok(answer(
                    &settings,
                    entry,
                    &fresh,
                    Served::Stale,
                    request_headers,
                    false,
                ));
            }
            Use::Revalidate => {
                look = false;
                entry.freshness = Some(fresh);
                stale = Some(entry);
            }
        }
    }
    // Four attempts without an answer (variants churning): the origin answers alone.
    let Some(request) = take(&slot) else {
        return Ok(internal_error());
    };
    Ok(inner.call(request).await?.map(CacheBody::stream))
}

/// The stored response a request may be served as it is, if any (its variant included),
/// looked up without loading anything.
async fn fresh_entry<St: Store, C: Codec<CachedResponse>, K, T>(
    settings: &Settings<St, C, K, T>,
    primary: &Key,
    request: &HeaderMap,
    directives: &Directives,
) -> Option<(CachedResponse, Freshness)> {
    let mut key = primary.clone();
    for _ in 0..2 {
        let entry = settings.cache.lookup(&key).await.ok()??.value;
        let fresh = entry.freshness.clone()?;
        if !fresh.selects(request) {
            key = variant_key(primary, &fresh.vary, request)?;
            continue;
        }
        return (fresh.usable(now_ms(), directives) == Use::Fresh).then_some((entry, fresh));
    }
    None
}

/// The request's authority: its absolute-form target's, or its `Host`.
fn request_authority<B>(request: &Request<B>) -> Option<String> {
    request
        .uri()
        .authority()
        .map(|a| a.as_str().to_owned())
        .or_else(|| {
            Some(
                request
                    .headers()
                    .get(header::HOST)?
                    .to_str()
                    .ok()?
                    .to_owned(),
            )
        })
}

fn pragma_no_cache(headers: &HeaderMap) -> bool {
    headers.get_all(header::PRAGMA).iter().any(|v| {
        v.to_str()
            .is_ok_and(|v| v.to_ascii_lowercase().contains("no-cache"))
    })
}

/// Deletes the target's entry and every variant of it.
async fn invalidate<St: Store, C: Codec<CachedResponse>, K, T>(
    settings: &Settings<St, C, K, T>,
    key: &Key,
) {
    // Variants are keyed `{key}#v{digest}`: one prefix pattern finds them all.
    let cache = &settings.cache;
    if let Err(error) = cache.delete(key).await {
        tracing::warn!(%error, "invalidating after an unsafe method failed");
    }
    let variants = Pattern::prefix(&format!("{key}#v"));
    if let Err(error) = cache.delete_pattern(&variants).await {
        tracing::warn!(%error, "invalidating variants after an unsafe method failed");
    }
}

fn revalidate_in_background<Svc, ReqBody, ResBody, St, C, K, T>(
    settings: &Arc<Settings<St, C, K, T>>,
    inner: &Svc,
    slot: &Slot<ReqBody>,
    key: &Key,
    entry: &CachedResponse,
) where
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
    let load = OriginLoad {
        inner: inner.clone(),
        slot: slot.clone(),
        stale: Some(entry.clone()),
    };
    let read = ReadFuture::reload(settings.clone(), key.clone(), load);
    tokio::spawn(async move {
        let _ = read.await;
    });
}

/// An origin answer that was not stored: passed on, or replaced by the stale response
/// when it is an error and the stale one allows `stale-if-error`.
fn stand_in<St, C, K, T, B>(
    settings: &Settings<St, C, K, T>,
    stale: Option<CachedResponse>,
    response: Response<CacheBody<B>>,
    request_headers: &HeaderMap,
) -> Response<CacheBody<B>> {
    if response.status().is_server_error()
        && let Some(entry) = stale
        && let Some(fresh) = entry.freshness.clone()
        && fresh.serves_on_error(now_ms())
    {
        return answer(
            settings,
            entry,
            &fresh,
            Served::Stale,
            request_headers,
            false,
        );
    }
    response
}

/// A response from a stored one: a `304` when the client's conditional request is
/// satisfied, its current `Age`, and what the cache did.
fn answer<St, C, K, T, B>(
    settings: &Settings<St, C, K, T>,
    entry: CachedResponse,
    fresh: &Freshness,
    served: Served,
    request_headers: &HeaderMap,
    head: bool,
) -> Response<CacheBody<B>> {
    let mut response = entry.into_response();
    let age = fresh.age_ms(now_ms()) / 1000;
    let headers = response.headers_mut();
    headers.insert(header::AGE, HeaderValue::from(age));
    if let Some(name) = &settings.cache_header {
        headers.insert(name.clone(), HeaderValue::from_static(served.x_cache()));
    }
    headers.insert(
        HeaderName::from_static("cache-status"),
        HeaderValue::from_static(served.cache_status()),
    );
    if freshness::not_modified(request_headers, response.headers()) {
        let (mut parts, _) = response.into_parts();
        parts.status = StatusCode::NOT_MODIFIED;
        for name in [
            header::CONTENT_LENGTH,
            header::CONTENT_TYPE,
            header::CONTENT_ENCODING,
        ] {
            parts.headers.remove(name);
        }
        return Response::from_parts(parts, CacheBody::full(Bytes::new()));
    }
    if head {
        let (parts, _) = response.into_parts();
        return Response::from_parts(parts, CacheBody::full(Bytes::new()));
    }
    response.map(CacheBody::full)
}
