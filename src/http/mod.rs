//! HTTP (feature `http`): whole-response caching for axum routes and hyper services, keys
//! from requests, and invalidation after successful writes.
//!
//! - [`HttpCacheLayer`]: cache-aside over `http::Request` → `http::Response`, with safe
//!   defaults (see its docs) and `x-cache` / `Age` headers; or, with
//!   [`rfc9111`](HttpCacheLayer::rfc9111), a shared HTTP cache as RFC 9111 describes one
//!   (freshness from the response, validation, `Vary`, `stale-*`, `Cache-Status`), as
//!   `examples/caching_proxy` uses it.
//! - Keys: [`HttpKey`] (method, path, sorted query, chosen headers), [`PathKey`] (path
//!   parameters into a key template such as `entry:{id}`), or any closure over the request.
//! - gRPC: [`GrpcCacheLayer`](crate::grpc::GrpcCacheLayer) (feature `grpc`) caches unary
//!   calls for tonic servers, on the same [`CachedResponse`] values.
//! - Writes: [`CacheLayer::write_around`](crate::CacheLayer::write_around) with
//!   [`PathInvalidation`] and [`is_success`] invalidates keys and patterns built from a
//!   mutating route's path parameters after a 2xx.
//!
//! # Example
//!
//! ```
//! use axum::{body::Body, http::{Request, StatusCode}, routing::{get, put}, Router};
//! use tower::ServiceExt;
//! use tower_caching::http::{is_success, CachedResponse, HttpCacheLayer, PathInvalidation, PathKey};
//! use tower_caching::{Cache, CacheLayer};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! let cache: Cache<CachedResponse> = Cache::in_memory();
//! let app = Router::new()
//!     .route(
//!         "/entries/{id}",
//!         get(|| async { "Ana" })
//!             .layer(HttpCacheLayer::new(cache.clone()).key(PathKey::new("/entries/{id}", "entry:{id}")))
//!             .put(|| async { StatusCode::NO_CONTENT })
//!             .layer(
//!                 CacheLayer::write_around(cache.clone())
//!                     .invalidate(PathInvalidation::new("/entries/{id}").key("entry:{id}"))
//!                     .succeeded_if(is_success),
//!             ),
//!     );
//!
//! let get = || Request::get("/entries/e1").body(Body::empty()).unwrap();
//! let first = app.clone().oneshot(get()).await.unwrap();
//! assert_eq!(first.headers()["x-cache"], "MISS");
//! let second = app.clone().oneshot(get()).await.unwrap();
//! assert_eq!(second.headers()["x-cache"], "HIT");
//! app.clone().oneshot(Request::put("/entries/e1").body(Body::empty()).unwrap()).await.unwrap();
//! let third = app.oneshot(get()).await.unwrap();
//! assert_eq!(third.headers()["x-cache"], "MISS");
//! # }
//! ```

use std::sync::Arc;

use base64::Engine;
use bytes::Bytes;
use http::header::{self, HeaderName, HeaderValue};
use http::{Response, StatusCode};
use serde::{Deserialize, Serialize};

use crate::key::Pattern;
use crate::strategy::Invalidation;

pub(crate) mod body;
mod freshness;
mod key;
mod layer;
mod service;
mod shared;

pub use self::body::CacheBody;
pub use self::key::{HttpKey, PathKey, RequestKey};
pub use self::layer::HttpCacheLayer;
pub use self::service::{HttpCache, ResponseFuture};

/// A response as the cache keeps it: status, end-to-end headers, body.
///
/// Serialized with the body as text when it is UTF-8 and as base64 otherwise, so JSON stays
/// compact and readable.
///
/// ```
/// use tower_caching::http::CachedResponse;
/// let cached = CachedResponse::from_parts(200, vec![("content-type".into(), "text/plain".into())], "hi");
/// let response = cached.into_response();
/// assert_eq!(response.status(), 200);
/// assert_eq!(response.body().as_ref(), b"hi");
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CachedResponse {
    /// What is stored, shared by every clone: a hit clones a `CachedResponse` out of the
    /// store, and then answers from this without copying it.
    stored: Arc<Stored>,
    /// What a shared-cache (RFC 9111) layer computed when it stored the response.
    pub(crate) freshness: Option<freshness::Freshness>,
    /// Whether this value came from a `304` just now (it is told apart from a whole new
    /// response in `x-cache`; never stored).
    pub(crate) revalidated: bool,
}

#[derive(Clone, Debug, PartialEq, Eq)]
struct Stored {
    status: u16,
    headers: Vec<(String, String)>,
    /// `headers` as a response carries them (those that parse), built once.
    header_map: http::HeaderMap,
    body: Bytes,
    /// gRPC responses end with trailers (`grpc-status`); HTTP ones kept here have none.
    trailers: Vec<(String, String)>,
}

impl Stored {
    fn new(status: u16, headers: Vec<(String, String)>, body: Bytes) -> Self {
        let mut header_map = http::HeaderMap::with_capacity(headers.len() + 2);
        for (name, value) in &headers {
            if let (Ok(name), Ok(value)) = (
                HeaderName::from_bytes(name.as_bytes()),
                HeaderValue::from_str(value),
            ) {
                header_map.append(name, value);
            }
        }
        Stored {
            status,
            headers,
            header_map,
            body,
            trailers: Vec::new(),
        }
    }
}

/// The stored form, as it was when `CachedResponse` was a plain struct: entries written
/// before read the same.
#[derive(Serialize)]
struct WireRef<'a> {
    status: u16,
    headers: &'a [(String, String)],
    body: StoredBodyRef<'a>,
    #[serde(skip_serializing_if = "<[_]>::is_empty")]
    trailers: &'a [(String, String)],
    #[serde(skip_serializing_if = "Option::is_none")]
    freshness: &'a Option<freshness::Freshness>,
}

#[derive(Deserialize)]
struct Wire {
    status: u16,
    headers: Vec<(String, String)>,
    body: StoredBody,
    #[serde(default)]
    trailers: Vec<(String, String)>,
    #[serde(default)]
    freshness: Option<freshness::Freshness>,
}

#[derive(Serialize)]
#[serde(rename_all = "lowercase")]
enum StoredBodyRef<'a> {
    Text(&'a str),
    Base64(String),
}

impl Serialize for CachedResponse {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let stored = &*self.stored;
        let body = match std::str::from_utf8(&stored.body) {
            Ok(text) => StoredBodyRef::Text(text),
            Err(_) => StoredBodyRef::Base64(
                base64::engine::general_purpose::STANDARD.encode(&stored.body),
            ),
        };
        WireRef {
            status: stored.status,
            headers: &stored.headers,
            body,
            trailers: &stored.trailers,
            freshness: &self.freshness,
        }
        .serialize(serializer)
    }
}

impl<'de> Deserialize<'de> for CachedResponse {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let wire = Wire::deserialize(deserializer)?;
        let body = match wire.body {
            StoredBody::Text(text) => Bytes::from(text),
            // A body that no longer decodes (the entry was tampered with) reads as empty.
            StoredBody::Base64(encoded) => base64::engine::general_purpose::STANDARD
                .decode(encoded)
                .map(Bytes::from)
                .unwrap_or_default(),
        };
        let mut stored = Stored::new(wire.status, wire.headers, body);
        stored.trailers = wire.trailers;
        Ok(CachedResponse {
            stored: Arc::new(stored),
            freshness: wire.freshness,
            revalidated: false,
        })
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
enum StoredBody {
    Text(String),
    Base64(String),
}

/// Headers that belong to one connection or one response, never to a stored one.
fn is_stored_header(name: &HeaderName) -> bool {
    name != header::SET_COOKIE && is_end_to_end(name)
}

/// Headers that belong to one connection (or to one response's age), never to a stored
/// response; `Set-Cookie` is end-to-end, and stored only by a shared-cache layer.
fn is_end_to_end(name: &HeaderName) -> bool {
    ![
        header::CONNECTION,
        header::TRANSFER_ENCODING,
        header::TE,
        header::TRAILER,
        header::UPGRADE,
        header::PROXY_AUTHENTICATE,
        header::PROXY_AUTHORIZATION,
        header::AGE,
    ]
    .contains(name)
        && name.as_str() != "keep-alive"
}

impl CachedResponse {
    /// A response from its parts (a body that is not UTF-8 is stored in base64).
    ///
    /// ```
    /// use tower_caching::http::CachedResponse;
    ///
    /// let cached = CachedResponse::from_parts(200, vec![("content-type".into(), "text/plain".into())], "hi");
    /// assert_eq!(cached.status(), 200);
    /// let response = cached.into_response();
    /// assert_eq!(response.headers()["content-type"], "text/plain");
    /// assert_eq!(response.body().as_ref(), b"hi");
    /// ```
    pub fn from_parts(status: u16, headers: Vec<(String, String)>, body: impl Into<Bytes>) -> Self {
        CachedResponse {
            stored: Arc::new(Stored::new(status, headers, body.into())),
            freshness: None,
            revalidated: false,
        }
    }

    /// This response with `trailers` (a gRPC response's).
    #[cfg(any(feature = "grpc", test))]
    pub(crate) fn with_trailers(mut self, trailers: Vec<(String, String)>) -> Self {
        Arc::make_mut(&mut self.stored).trailers = trailers;
        self
    }

    /// The trailers (a gRPC response's; none for HTTP).
    #[cfg(any(feature = "grpc", test))]
    pub(crate) fn trailers(&self) -> &[(String, String)] {
        &self.stored.trailers
    }

    pub(crate) fn new(parts: &http::response::Parts, body: Bytes) -> Self {
        Self::stored(parts, body, false)
    }

    /// The stored form of a response; `cookies`: whether `Set-Cookie` is kept.
    pub(crate) fn stored(parts: &http::response::Parts, body: Bytes, cookies: bool) -> Self {
        let headers = parts
            .headers
            .iter()
            .filter(|(name, _)| {
                if cookies {
                    is_end_to_end(name) && *name != "proxy-connection"
                } else {
                    is_stored_header(name)
                }
            })
            .filter_map(|(name, value)| {
                Some((name.as_str().to_owned(), value.to_str().ok()?.to_owned()))
            })
            .collect();
        CachedResponse::from_parts(parts.status.as_u16(), headers, body)
    }

    /// The status code. See [`from_parts`](CachedResponse::from_parts) for an example.
    pub fn status(&self) -> u16 {
        self.stored.status
    }

    /// The response, with a body of bytes. Headers or a status that no longer parse (the
    /// entry was tampered with) are dropped or read as 500, never a panic.
    ///
    /// ```
    /// use tower_caching::http::CachedResponse;
    ///
    /// let tampered = CachedResponse::from_parts(1000, vec![("bad name".into(), "x".into())], "");
    /// let response = tampered.into_response();
    /// assert_eq!(response.status(), 500);
    /// assert!(response.headers().is_empty());
    /// ```
    pub fn into_response(self) -> Response<Bytes> {
        // Shared, not copied: the body's bytes and the header values are reference-counted.
        let mut response = Response::new(self.stored.body.clone());
        *response.status_mut() =
            StatusCode::from_u16(self.stored.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        *response.headers_mut() = self.stored.header_map.clone();
        response
    }
}

/// Whether a response is a success (2xx): the predicate for
/// [`succeeded_if`](crate::CacheLayer::succeeded_if) on HTTP write-around.
///
/// ```
/// use tower_caching::http::is_success;
/// assert!(is_success(&http::Response::new(())));
/// ```
pub fn is_success<B>(response: &Response<B>) -> bool {
    response.status().is_success()
}

/// What a mutating HTTP route invalidates: keys and patterns built from its path
/// parameters with templates such as `entry:{id}` and `vsync:*`. Safe methods (`GET`,
/// `HEAD`, …) invalidate nothing. For
/// [`CacheLayer::write_around`](crate::CacheLayer::write_around)'s
/// [`invalidate`](crate::CacheLayer::invalidate).
///
/// ```
/// use tower_caching::http::PathInvalidation;
/// use tower_caching::strategy::InvalidationPolicy;
///
/// let policy = PathInvalidation::new("/participants/{ispb}/entries/{id}")
///     .key("entry:{id}")
///     .pattern("participant:{ispb}*");
/// let request = http::Request::post("/participants/123/entries/9").body(()).unwrap();
/// let invalidation = InvalidationPolicy::<_, ()>::invalidation(&policy, &(), &request);
/// assert_eq!(invalidation.key_list()[0].as_str(), "entry:9");
/// assert_eq!(invalidation.pattern_list()[0].as_str(), "participant:123*");
/// ```
#[derive(Clone, Debug)]
pub struct PathInvalidation {
    path: String,
    keys: Vec<PathKey>,
    patterns: Vec<PathKey>,
    prefix: Option<String>,
}

impl PathInvalidation {
    /// For requests whose path matches `path` (axum's `{name}` syntax). See
    /// [`PathInvalidation`] for an example.
    pub fn new(path: &str) -> Self {
        PathInvalidation {
            path: path.to_owned(),
            keys: Vec::new(),
            patterns: Vec::new(),
            prefix: None,
        }
    }

    /// Prefixes keys and patterns with `prefix`.
    ///
    /// ```
    /// use tower_caching::{http::PathInvalidation, strategy::InvalidationPolicy};
    ///
    /// let policy = PathInvalidation::new("/entries/{id}").key("entry:{id}").prefix("payments");
    /// let request = http::Request::delete("/entries/9").body(()).unwrap();
    /// let invalidation = InvalidationPolicy::<_, ()>::invalidation(&policy, &(), &request);
    /// assert_eq!(invalidation.key_list()[0].as_str(), "payments:entry:9");
    /// ```
    pub fn prefix(mut self, prefix: &str) -> Self {
        self.prefix = Some(prefix.to_owned());
        let rebuild = |k: &PathKey| k.clone().prefix(prefix);
        self.keys = self.keys.iter().map(rebuild).collect();
        self.patterns = self.patterns.iter().map(rebuild).collect();
        self
    }

    fn path_key(&self, template: &str) -> PathKey {
        let key = PathKey::new(&self.path, template);
        match &self.prefix {
            Some(prefix) => key.prefix(prefix),
            None => key,
        }
    }

    /// Invalidates the key `template` filled with the path parameters. See
    /// [`PathInvalidation`] for an example.
    pub fn key(mut self, template: &str) -> Self {
        let key = self.path_key(template);
        self.keys.push(key);
        self
    }

    /// Invalidates every key matching `template`: parameters are filled in escaped, and a
    /// trailing `*` (the template's own) matches any suffix. See [`PathInvalidation`] for
    /// an example.
    pub fn pattern(mut self, template: &str) -> Self {
        let key = self.path_key(template.trim_end_matches('*'));
        self.patterns.push(key);
        self
    }
}

impl<B, K> crate::strategy::InvalidationPolicy<http::Request<B>, K> for PathInvalidation {
    fn invalidation(&self, _: &K, request: &http::Request<B>) -> Invalidation {
        if request.method().is_safe() {
            // GET, HEAD, OPTIONS, TRACE change nothing (and a layer on a whole method router
            // sees them too).
            return Invalidation::new();
        }
        let Some(params) = self
            .keys
            .first()
            .or(self.patterns.first())
            .and_then(|k| k.params(request.uri().path()))
        else {
            return Invalidation::new();
        };
        let mut invalidation = Invalidation::new();
        for key in &self.keys {
            if let Some(key) = key.fill(&params) {
                invalidation = invalidation.key(key);
            }
        }
        for pattern in &self.patterns {
            if let Some(prefix) = pattern.fill(&params) {
                invalidation = invalidation.pattern(Pattern::prefix(prefix.as_str()));
            }
        }
        invalidation
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The stored form is the one entries written before `CachedResponse` shared its parts
    /// have: they still read, and new ones are written the same.
    #[test]
    fn the_stored_form_is_unchanged() {
        let text = CachedResponse::from_parts(
            200,
            vec![("content-type".into(), "text/plain".into())],
            "hi",
        );
        let json =
            r#"{"status":200,"headers":[["content-type","text/plain"]],"body":{"text":"hi"}}"#;
        assert_eq!(serde_json::to_string(&text).unwrap(), json);
        assert_eq!(serde_json::from_str::<CachedResponse>(json).unwrap(), text);

        let binary = CachedResponse::from_parts(203, Vec::new(), vec![0xFFu8, 0, 1])
            .with_trailers(vec![("grpc-status".into(), "0".into())]);
        let json = r#"{"status":203,"headers":[],"body":{"base64":"/wAB"},"trailers":[["grpc-status","0"]]}"#;
        assert_eq!(serde_json::to_string(&binary).unwrap(), json);
        let read: CachedResponse = serde_json::from_str(json).unwrap();
        assert_eq!(read, binary);
        assert_eq!(
            read.trailers(),
            [("grpc-status".to_string(), "0".to_string())]
        );
        assert_eq!(read.into_response().body().as_ref(), [0xFF, 0, 1]);

        // A body that no longer decodes reads as empty, as before.
        let tampered = r#"{"status":200,"headers":[],"body":{"base64":"%%%"}}"#;
        let read: CachedResponse = serde_json::from_str(tampered).unwrap();
        assert!(read.into_response().body().is_empty());
    }

    #[test]
    fn clones_share_what_is_stored() {
        let cached = CachedResponse::from_parts(
            200,
            vec![
                ("etag".into(), "\"v1\"".into()),
                ("bad name".into(), "x".into()),
            ],
            "body",
        );
        let first = cached.clone().into_response();
        let second = cached.into_response();
        assert_eq!(
            first.body().as_ptr(),
            second.body().as_ptr(),
            "one body, shared"
        );
        assert_eq!(first.headers(), second.headers());
        assert_eq!(
            first.headers().len(),
            1,
            "a header that does not parse is dropped"
        );
    }
}
