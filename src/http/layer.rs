use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use http::header::{self, HeaderName, HeaderValue};
use http::{Response, StatusCode};
use tower_layer::Layer;

use super::CachedResponse;
use super::body::CacheBody;
use super::key::{HttpKey, RequestKey};
use super::service::HttpCache;
use super::shared::SharedMode;
use crate::cache::Cache;
use crate::codec::Json;
use crate::engine::{FailSafe, ReadPolicy};
use crate::metrics::Strategy;
use crate::store::MemoryStore;
use crate::ttl::FixedTtl;

/// Caches whole HTTP responses (status, headers, body) in front of an HTTP service — an axum
/// route or router, a hyper service: cache-aside for `http::Request` → `http::Response`.
///
/// # Safe by default
///
/// - Only `GET` responses are stored; a `HEAD` is answered from a fresh `GET` entry
///   (without its body) and otherwise passed on, its own response never stored. Other
///   methods, requests with `Cache-Control: no-store`, and requests carrying
///   `Authorization` or `Cookie` that the key does not cover go straight to the inner
///   service.
/// - On the cached path the inner service sees **only what the key covers**: the request
///   headers it covers (plus those listed with
///   [`forward_header`](HttpCacheLayer::forward_header)), the target in origin form (an
///   absolute-form `http://evil.example/x` reaches it as `/x`), and the query only when the
///   key covers it ([`PathKey`](super::PathKey) does not). Nothing outside the key can
///   change the response that other clients are served.
/// - Only responses with a status in the cacheable set (default: 200) are stored, and never
///   one that sets a cookie, says `Cache-Control: no-store`, `private` or `no-cache`, or
///   `Vary`s on `*` or on a header forwarded to the inner service that the key does not
///   cover. A `Vary` on a withheld header is harmless: the inner service never saw it (so a
///   `CompressionLayer` inside the layer answers uncompressed, and is cached; key on
///   `accept-encoding` with [`HttpKey::header`](super::HttpKey::header) to cache each
///   encoding).
/// - A body larger than [`max_body_size`](HttpCacheLayer::max_body_size) (default 1 MiB) is
///   streamed through, not cached (counted as a `too_large` error).
/// - `Cache-Control: no-cache` on a request skips the lookup and refreshes the entry.
///
/// Responses carry `x-cache: HIT`, `MISS` or (with [`fail_safe`](HttpCacheLayer::fail_safe))
/// `STALE` (name configurable, or off) and, on hits, an `Age` in seconds.
///
/// That is the strict mode, for application routes. [`rfc9111`](HttpCacheLayer::rfc9111)
/// makes the layer a shared HTTP cache that follows what responses say (for a caching proxy,
/// or handlers that send correct `Cache-Control` and `Vary`). Concurrent misses of one key make one inner call; its response is
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
    pub(super) settings: Arc<Settings<St, C, K, T>>,
}

pub(super) struct Settings<St, C, K, T> {
    pub(super) cache: Cache<CachedResponse, St, C>,
    pub(super) key: K,
    pub(super) ttl: T,
    pub(super) statuses: Vec<StatusCode>,
    pub(super) negative_ttl: Option<Duration>,
    pub(super) max_body_size: usize,
    pub(super) cache_header: Option<HeaderName>,
    pub(super) forward_headers: Vec<HeaderName>,
    pub(super) policy: ReadPolicy,
    /// Shared-cache (RFC 9111) mode, when on.
    pub(super) shared: Option<SharedMode>,
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
                shared: s.shared.clone(),
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
                // Frames say they hold responses: a typed cache on one of these keys
                // sees a clash, not a value it might decode.
                cache: cache.storing(crate::frame::Kind::Response),
                key: HttpKey::new(),
                ttl: FixedTtl::default(),
                statuses: vec![StatusCode::OK],
                negative_ttl: None,
                max_body_size: 1 << 20,
                cache_header: Some(HeaderName::from_static("x-cache")),
                forward_headers: Vec::new(),
                policy: ReadPolicy::plain(Strategy::CacheAside),
                shared: None,
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
                shared: s.shared,
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
                shared: s.shared,
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

    /// Makes the layer a shared HTTP cache as RFC 9111 describes one — what a caching
    /// reverse proxy (nginx `proxy_cache`, Varnish) does — instead of an application
    /// cache with a fixed TTL:
    ///
    /// - Freshness comes from the response: `CDN-Cache-Control` (RFC 9213), `s-maxage`,
    ///   `max-age`, `Expires` − `Date`, or the RFC's heuristic (a tenth of the time since
    ///   `Last-Modified`, for the statuses it allows). A response that states none is not
    ///   stored, unless [`ttl_when_unstated`](Self::ttl_when_unstated) lends it the
    ///   layer's TTL; [`max_ttl`](Self::max_ttl) caps every lifetime.
    /// - `Age` is kept and advanced; a request's `max-age`, `min-fresh`, `max-stale`,
    ///   `no-cache`, `no-store`, `only-if-cached` and `Pragma: no-cache` are honoured.
    /// - Stale entries are kept (see [`keep_stale`](Self::keep_stale)) and revalidated
    ///   with their `ETag` / `Last-Modified`; a `304` updates the stored headers. A
    ///   client's `If-None-Match` / `If-Modified-Since` is answered from the cache (`304`).
    /// - `Vary`: each variant is stored under its own key, selected by the request's
    ///   normalised values of the named fields; `Vary: *` is never stored.
    /// - `stale-while-revalidate` serves the stale response and revalidates in the
    ///   background; `stale-if-error` serves it when the origin answers 5xx or fails —
    ///   never against `must-revalidate`, `proxy-revalidate` or `s-maxage`.
    /// - A 2xx/3xx answer to an unsafe method (`POST`, `PUT`, `DELETE`, …) invalidates the
    ///   target URI and its variants; `HEAD` is answered from a fresh `GET` response.
    /// - Responses carry `Cache-Status` (RFC 9211) beside the `x-cache` header.
    ///
    /// **Every request header reaches the inner service** (the origin says with `Vary`
    /// what its answer depends on), and responses that set cookies are stored when they
    /// are otherwise cacheable, as the RFC allows. Use this mode in front of an origin you
    /// trust to send correct `Cache-Control` and `Vary` — a proxy, or your own handlers
    /// that do. For application routes whose handlers say nothing about caching, keep the
    /// default (strict) mode: there a header the key does not cover never reaches the
    /// handler, so it cannot poison what other clients are served.
    ///
    /// ```
    /// use std::time::Duration;
    /// use tower_caching::{http::{CachedResponse, HttpCacheLayer}, Cache};
    ///
    /// let cache: Cache<CachedResponse> = Cache::in_memory();
    /// let layer = HttpCacheLayer::new(cache)
    ///     .rfc9111()
    ///     .max_ttl(Duration::from_secs(3600))
    ///     .keep_stale(Duration::from_secs(600));
    /// # let _ = layer;
    /// ```
    pub fn rfc9111(self) -> Self {
        self.update(|s| s.shared = Some(SharedMode::default()))
    }

    fn update_shared(self, f: impl FnOnce(&mut SharedMode)) -> Self {
        self.update(|s| f(s.shared.get_or_insert_with(SharedMode::default)))
    }

    /// In [`rfc9111`](Self::rfc9111) mode, gives a response that states no freshness the
    /// layer's [`ttl`](Self::ttl) (instead of not storing it).
    ///
    /// ```
    /// use std::time::Duration;
    /// use tower_caching::{http::{CachedResponse, HttpCacheLayer}, Cache};
    ///
    /// let cache: Cache<CachedResponse> = Cache::in_memory();
    /// let layer = HttpCacheLayer::new(cache)
    ///     .rfc9111()
    ///     .ttl(Duration::from_secs(60))
    ///     .ttl_when_unstated();
    /// # let _ = layer;
    /// ```
    pub fn ttl_when_unstated(self) -> Self {
        self.update_shared(|m| m.default_from_ttl = true)
    }

    /// In [`rfc9111`](Self::rfc9111) mode, the longest a response is fresh, whatever it
    /// says. See [`rfc9111`](Self::rfc9111) for an example.
    pub fn max_ttl(self, ceiling: Duration) -> Self {
        self.update_shared(|m| m.ceiling = Some(ceiling))
    }

    /// In [`rfc9111`](Self::rfc9111) mode, how long a response is kept once stale, to be
    /// revalidated rather than fetched again (default one hour; longer when its
    /// `stale-while-revalidate` or `stale-if-error` window is). See
    /// [`rfc9111`](Self::rfc9111) for an example.
    pub fn keep_stale(self, keep: Duration) -> Self {
        self.update_shared(|m| m.keep = keep)
    }

    /// In [`rfc9111`](Self::rfc9111) mode, whether `CDN-Cache-Control` (RFC 9213), when a
    /// response has it, governs this cache instead of `Cache-Control` (default: yes; turn
    /// it off when a CDN in front of this cache is the one it targets).
    ///
    /// ```
    /// use tower_caching::{http::{CachedResponse, HttpCacheLayer}, Cache};
    ///
    /// let cache: Cache<CachedResponse> = Cache::in_memory();
    /// let layer = HttpCacheLayer::new(cache).rfc9111().cdn_cache_control(false);
    /// # let _ = layer;
    /// ```
    pub fn cdn_cache_control(self, obey: bool) -> Self {
        self.update_shared(|m| m.targets.cdn = obey)
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

fn has_token(value: &HeaderValue, tokens: &[&str]) -> bool {
    value.to_str().is_ok_and(|value| {
        value.split(',').any(|directive| {
            let name = directive.trim().split('=').next().unwrap_or("").trim();
            tokens.iter().any(|token| name.eq_ignore_ascii_case(token))
        })
    })
}

pub(super) fn cache_control_has(headers: &http::HeaderMap, tokens: &[&str]) -> bool {
    headers
        .get_all(header::CACHE_CONTROL)
        .iter()
        .any(|value| has_token(value, tokens))
}

impl<St, C, K, T> Settings<St, C, K, T> {
    /// Whether the response may be stored, and for how long at most.
    pub(super) fn admits<B>(
        &self,
        parts: &http::response::Parts,
        key: &K,
    ) -> Option<Option<Duration>>
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
                // A header the key covers is in the key; one that never reached the inner
                // service (withheld) cannot have changed its answer; one forwarded unkeyed
                // could have.
                let Ok(name) = HeaderName::from_bytes(name.as_bytes()) else {
                    return None;
                };
                if name == "*" || !key.covers_header(&name) && self.forward_headers.contains(&name)
                {
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

    pub(super) fn respond<B>(
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
