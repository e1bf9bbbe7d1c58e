//! Declarative per-route caching (feature `config`): routes → strategy, TTL, key template,
//! negative TTL, refresh-ahead, in TOML or YAML, with environment overrides, applied to a
//! whole axum `Router` (or any HTTP service) by one layer — so operations can change caching
//! without a rebuild.
//!
//! ```toml
//! prefix = "svc"
//!
//! [routes.entry]
//! path = "/entries/{id}"
//! strategy = "cache_aside"
//! key = "entry:{id}"
//! ttl = "5m"
//! negative_ttl = "30s"
//!
//! [routes.config]
//! path = "/config/{name}"
//! strategy = "read_through"
//! key = "config:{name}"
//! ttl = "1h"
//! refresh_ahead = 0.1
//!
//! [routes.vsync]
//! path = "/vsync"
//! method = "POST"
//! strategy = "write_around"
//! invalidate = ["vsync:*"]
//! ```
//!
//! Strategies: `cache_aside` and `read_through` cache `GET` responses ([`HttpCacheLayer`]'s
//! rules), `write_around` invalidates keys and patterns after a 2xx. Write-through and
//! write-behind need a typed value, so they are layered on typed services in code.
//!
//! An environment variable `{PREFIX}_{ROUTE}_{FIELD}` (upper case: `CACHE_ENTRY_TTL=10m`)
//! overrides a field of a route; see [`CacheConfig::with_env_overrides`].
//!
//! # Example
//!
//! ```
//! use axum::{routing::get, Router};
//! use tower_caching::http::config::CacheConfig;
//! use tower_caching::Cache;
//!
//! let config = CacheConfig::from_toml(r#"
//!     [routes.entry]
//!     path = "/entries/{id}"
//!     strategy = "cache_aside"
//!     key = "entry:{id}"
//!     ttl = "5m"
//! "#)?;
//! let app: Router = Router::new()
//!     .route("/entries/{id}", get(|| async { "entry" }))
//!     .layer(config.layer(Cache::in_memory())?);
//! # let _ = app;
//!
//! let broken = CacheConfig::from_toml(r#"
//!     [routes.entry]
//!     path = "/entries/{id}"
//!     strategy = "cache_aside"
//!     ttl = "5 fortnights"
//! "#)?;
//! let error = broken.validate().unwrap_err().to_string();
//! assert!(error.contains("route `entry`") && error.contains("ttl"), "{error}");
//! # Ok::<(), tower_caching::http::config::ConfigError>(())
//! ```

use std::collections::BTreeMap;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, Response};
use http_body::Body;
use serde::Deserialize;
use tower_layer::Layer;
use tower_service::Service;

use super::body::passthrough;
use super::{
    is_success, CacheBody, CachedResponse, HttpCacheLayer, HttpKey, PathInvalidation, PathKey,
    RequestKey,
};
use crate::cache::Cache;
use crate::codec::Codec;
use crate::key::Key;
use crate::layer::CacheLayer;
use crate::store::Store;
use crate::ttl::{FixedTtl, Jitter};
use crate::BoxError;

/// The caching of an HTTP service's routes, by route name.
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct CacheConfig {
    /// A key prefix for every route.
    #[serde(default)]
    pub prefix: Option<String>,
    /// The routes, by name.
    #[serde(default)]
    pub routes: BTreeMap<String, RouteConfig>,
}

/// How one route is cached.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RouteConfig {
    /// The path template, axum's syntax: `/entries/{id}`.
    pub path: String,
    /// The method (default `GET`; `POST`, `PUT`, `PATCH` or `DELETE` for `write_around`).
    #[serde(default)]
    pub method: Option<String>,
    /// `cache_aside`, `read_through` or `write_around`.
    pub strategy: String,
    /// A key template (`entry:{id}`); default: method, path and sorted query.
    #[serde(default)]
    pub key: Option<String>,
    /// How long a response stays fresh (`"5m"`, `"1h"`); default five minutes.
    #[serde(default)]
    pub ttl: Option<String>,
    /// Spread of TTLs, a fraction (`0.1` is ±10 %); default 0.1.
    #[serde(default)]
    pub ttl_jitter: Option<f64>,
    /// How long a 404 stays cached; default: 404s are not cached.
    #[serde(default)]
    pub negative_ttl: Option<String>,
    /// `read_through` only: refresh hits in this last fraction of their TTL.
    #[serde(default)]
    pub refresh_ahead: Option<f64>,
    /// Cacheable statuses; default `[200]`.
    #[serde(default)]
    pub statuses: Option<Vec<u16>>,
    /// Request headers that are part of the key (only without a `key` template).
    #[serde(default)]
    pub vary: Vec<String>,
    /// The largest body cached, in bytes; default 1 MiB.
    #[serde(default)]
    pub max_body_size: Option<usize>,
    /// `write_around` only: key templates and patterns (ending in `*`) to invalidate.
    #[serde(default)]
    pub invalidate: Vec<String>,
}

/// A configuration that does not parse or does not make sense, naming the route and field.
///
/// ```
/// use tower_caching::http::config::{CacheConfig, ConfigError};
///
/// let error = CacheConfig::from_toml("routes = 3").unwrap_err();
/// assert!(matches!(error, ConfigError::Parse(_)));
/// ```
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// The text is not valid TOML or YAML for a [`CacheConfig`].
    #[error("cache configuration does not parse: {0}")]
    Parse(String),
    /// A field of a route is invalid.
    #[error("cache configuration, route `{route}`, field `{field}`: {problem}")]
    Invalid {
        /// The route's name.
        route: String,
        /// The field.
        field: &'static str,
        /// What is wrong.
        problem: String,
    },
    /// The file cannot be read.
    #[error("cannot read cache configuration {path}: {message}")]
    Io {
        /// The path.
        path: String,
        /// The I/O error.
        message: String,
    },
}

fn invalid(route: &str, field: &'static str, problem: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        route: route.to_owned(),
        field,
        problem: problem.into(),
    }
}

impl CacheConfig {
    /// Parses TOML.
    ///
    /// ```
    /// use tower_caching::http::config::CacheConfig;
    ///
    /// let config = CacheConfig::from_toml(r#"
    ///     prefix = "payments"
    ///     [routes.vsync]
    ///     path = "/vsync/{id}"
    ///     method = "POST"
    ///     strategy = "write_around"
    ///     key = "vsync:{id}"
    /// "#)?;
    /// assert_eq!(config.routes["vsync"].strategy, "write_around");
    /// # Ok::<(), tower_caching::http::config::ConfigError>(())
    /// ```
    pub fn from_toml(text: &str) -> Result<Self, ConfigError> {
        toml::from_str(text).map_err(|e| ConfigError::Parse(e.to_string()))
    }

    /// Parses YAML.
    ///
    /// ```
    /// use tower_caching::http::config::CacheConfig;
    /// let config = CacheConfig::from_yaml("
    /// routes:
    ///   entry:
    ///     path: /entries/{id}
    ///     strategy: cache_aside
    ///     key: entry:{id}
    ///     ttl: 5m
    /// ")?;
    /// assert_eq!(config.routes["entry"].ttl.as_deref(), Some("5m"));
    /// # Ok::<(), tower_caching::http::config::ConfigError>(())
    /// ```
    pub fn from_yaml(text: &str) -> Result<Self, ConfigError> {
        serde_norway::from_str(text).map_err(|e| ConfigError::Parse(e.to_string()))
    }

    /// Reads a `.toml`, `.yaml` or `.yml` file.
    ///
    /// ```
    /// use tower_caching::http::config::CacheConfig;
    ///
    /// let error = CacheConfig::from_file("/nonexistent/cache.toml").unwrap_err();
    /// assert!(error.to_string().contains("cache.toml"));
    /// ```
    pub fn from_file(path: impl AsRef<std::path::Path>) -> Result<Self, ConfigError> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError::Io {
            path: path.display().to_string(),
            message: e.to_string(),
        })?;
        match path.extension().and_then(|e| e.to_str()) {
            Some("yaml" | "yml") => Self::from_yaml(&text),
            _ => Self::from_toml(&text),
        }
    }

    /// Applies `{prefix}_{ROUTE}_{FIELD}` environment variables: fields `PATH`, `METHOD`,
    /// `STRATEGY`, `KEY`, `TTL`, `TTL_JITTER`, `NEGATIVE_TTL`, `REFRESH_AHEAD`,
    /// `MAX_BODY_SIZE` (route names upper-cased, `-` as `_`). See
    /// [`with_overrides`](CacheConfig::with_overrides) for an example.
    pub fn with_env_overrides(self, prefix: &str) -> Result<Self, ConfigError> {
        self.with_overrides(prefix, |name| std::env::var(name).ok())
    }

    /// [`CacheConfig::with_env_overrides`] over any source of variables.
    ///
    /// ```
    /// use tower_caching::http::config::CacheConfig;
    /// let config = CacheConfig::from_toml(r#"
    ///     [routes.entry]
    ///     path = "/entries/{id}"
    ///     strategy = "cache_aside"
    ///     ttl = "5m"
    /// "#)?
    /// .with_overrides("CACHE", |name| (name == "CACHE_ENTRY_TTL").then(|| "10m".to_string()))?;
    /// assert_eq!(config.routes["entry"].ttl.as_deref(), Some("10m"));
    /// # Ok::<(), tower_caching::http::config::ConfigError>(())
    /// ```
    pub fn with_overrides(
        mut self,
        prefix: &str,
        lookup: impl Fn(&str) -> Option<String>,
    ) -> Result<Self, ConfigError> {
        for (name, route) in &mut self.routes {
            let var = |field: &str| {
                lookup(&format!(
                    "{prefix}_{}_{field}",
                    name.to_uppercase().replace('-', "_")
                ))
            };
            let number = |field: &'static str, text: String| {
                text.trim()
                    .parse::<f64>()
                    .map_err(|_| invalid(name, field, format!("{text:?} is not a number")))
            };
            if let Some(v) = var("PATH") {
                route.path = v;
            }
            if let Some(v) = var("METHOD") {
                route.method = Some(v);
            }
            if let Some(v) = var("STRATEGY") {
                route.strategy = v;
            }
            if let Some(v) = var("KEY") {
                route.key = Some(v);
            }
            if let Some(v) = var("TTL") {
                route.ttl = Some(v);
            }
            if let Some(v) = var("TTL_JITTER") {
                route.ttl_jitter = Some(number("ttl_jitter", v)?);
            }
            if let Some(v) = var("NEGATIVE_TTL") {
                route.negative_ttl = Some(v);
            }
            if let Some(v) = var("REFRESH_AHEAD") {
                route.refresh_ahead = Some(number("refresh_ahead", v)?);
            }
            if let Some(v) = var("MAX_BODY_SIZE") {
                route.max_body_size =
                    Some(v.trim().parse().map_err(|_| {
                        invalid(name, "max_body_size", format!("{v:?} is not a size"))
                    })?);
            }
        }
        Ok(self)
    }

    /// Checks every route, failing on the first problem with its route and field.
    ///
    /// ```
    /// use tower_caching::http::config::CacheConfig;
    ///
    /// let config = CacheConfig::from_toml(r#"
    ///     [routes.entry]
    ///     path = "/entries/{id}"
    ///     strategy = "cache_aside"
    ///     ttl = "soon"
    /// "#)?;
    /// let error = config.validate().unwrap_err().to_string();
    /// assert!(error.contains("entry") && error.contains("ttl"), "{error}");
    /// # Ok::<(), tower_caching::http::config::ConfigError>(())
    /// ```
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.compile().map(|_| ())
    }

    fn compile(&self) -> Result<Vec<CompiledRoute>, ConfigError> {
        self.routes
            .iter()
            .map(|(name, route)| route.compile(name, self.prefix.as_deref()))
            .collect()
    }

    /// A layer that caches the configured routes of the service it wraps, with `cache`.
    /// Requests to other routes pass through untouched.
    ///
    /// ```
    /// use tower_caching::http::{config::CacheConfig, CachedResponse};
    /// use tower_caching::Cache;
    ///
    /// let config = CacheConfig::from_toml(r#"
    ///     [routes.entry]
    ///     path = "/entries/{id}"
    ///     strategy = "cache_aside"
    ///     key = "entry:{id}"
    /// "#)?;
    /// let layer = config.layer(Cache::<CachedResponse>::in_memory())?;
    /// // axum::Router::new().route("/entries/{id}", get(handler)).layer(layer)
    /// # let _ = layer;
    /// # Ok::<(), tower_caching::http::config::ConfigError>(())
    /// ```
    pub fn layer<St: Store, C: Codec>(
        &self,
        cache: Cache<CachedResponse, St, C>,
    ) -> Result<ConfiguredCacheLayer<St, C>, ConfigError> {
        let mut routes: Vec<_> = self
            .compile()?
            .into_iter()
            .map(|route| route.into_action(&cache))
            .collect();
        // A literal route wins over a `{param}` route that also matches, whatever their
        // names (stable: equally specific routes keep their name order).
        routes.sort_by_key(|(_, matcher, _)| std::cmp::Reverse(matcher.specificity()));
        Ok(ConfiguredCacheLayer {
            routes: Arc::new(routes),
        })
    }
}

fn duration(route: &str, field: &'static str, text: &str) -> Result<Duration, ConfigError> {
    crate::parse_duration(text)
        .filter(|d| !d.is_zero())
        .ok_or_else(|| {
            invalid(
                route,
                field,
                format!("{text:?} is not a duration such as \"30s\", \"5m\" or \"1h\""),
            )
        })
}

fn fraction(route: &str, field: &'static str, value: f64) -> Result<f64, ConfigError> {
    if (0.0..=1.0).contains(&value) {
        Ok(value)
    } else {
        Err(invalid(
            route,
            field,
            format!("{value} is not a fraction between 0 and 1"),
        ))
    }
}

fn params(template: &str) -> Vec<&str> {
    template
        .split('{')
        .skip(1)
        .filter_map(|rest| rest.split_once('}').map(|(name, _)| name))
        .collect()
}

struct CompiledRoute {
    method: Method,
    matcher: PathKey,
    action: Planned,
}

enum Planned {
    Read {
        key: RouteKey,
        ttl: Jitter<FixedTtl>,
        negative_ttl: Option<Duration>,
        refresh_ahead: Option<f64>,
        statuses: Vec<http::StatusCode>,
        max_body_size: Option<usize>,
    },
    Invalidate(PathInvalidation),
}

impl RouteConfig {
    fn compile(&self, name: &str, prefix: Option<&str>) -> Result<CompiledRoute, ConfigError> {
        if !self.path.starts_with('/') {
            return Err(invalid(
                name,
                "path",
                format!("{:?} does not start with '/'", self.path),
            ));
        }
        let path_params = params(&self.path);
        let method = match &self.method {
            None => Method::GET,
            Some(method) => Method::from_bytes(method.to_uppercase().as_bytes()).map_err(|_| {
                invalid(name, "method", format!("{method:?} is not an HTTP method"))
            })?,
        };
        let with_prefix = |key: PathKey| match prefix {
            Some(prefix) => key.prefix(prefix),
            None => key,
        };
        let action = match self.strategy.as_str() {
            "cache_aside" | "read_through" => {
                if method != Method::GET {
                    return Err(invalid(
                        name,
                        "method",
                        "cached routes answer GET (and HEAD)",
                    ));
                }
                if !self.invalidate.is_empty() {
                    return Err(invalid(
                        name,
                        "invalidate",
                        "only write_around routes invalidate",
                    ));
                }
                let key = match &self.key {
                    Some(template) => {
                        if let Some(missing) = params(template)
                            .into_iter()
                            .find(|p| !path_params.contains(p))
                        {
                            return Err(invalid(
                                name,
                                "key",
                                format!("{{{missing}}} is not a parameter of path {:?}", self.path),
                            ));
                        }
                        if !self.vary.is_empty() {
                            return Err(invalid(name, "vary", "vary applies to the default key; add the header to the key instead"));
                        }
                        RouteKey::Path(with_prefix(PathKey::new(&self.path, template)))
                    }
                    None => {
                        let mut key = HttpKey::new();
                        if let Some(prefix) = prefix {
                            key = key.prefix(prefix);
                        }
                        for header in &self.vary {
                            if http::HeaderName::from_bytes(header.as_bytes()).is_err() {
                                return Err(invalid(
                                    name,
                                    "vary",
                                    format!("{header:?} is not a header name"),
                                ));
                            }
                            key = key.header(header);
                        }
                        RouteKey::Http(key)
                    }
                };
                let ttl = match &self.ttl {
                    Some(text) => duration(name, "ttl", text)?,
                    None => crate::ttl::ENTRY,
                };
                let jitter = fraction(name, "ttl_jitter", self.ttl_jitter.unwrap_or(0.1))?;
                let refresh_ahead = match (self.strategy.as_str(), self.refresh_ahead) {
                    ("read_through", Some(value)) => Some(fraction(name, "refresh_ahead", value)?),
                    ("cache_aside", Some(_)) => {
                        return Err(invalid(
                            name,
                            "refresh_ahead",
                            "refresh-ahead is read_through's; use strategy = \"read_through\"",
                        ))
                    }
                    _ => None,
                };
                let statuses = match &self.statuses {
                    Some(codes) => codes
                        .iter()
                        .map(|code| {
                            http::StatusCode::from_u16(*code).map_err(|_| {
                                invalid(name, "statuses", format!("{code} is not a status code"))
                            })
                        })
                        .collect::<Result<_, _>>()?,
                    None => vec![http::StatusCode::OK],
                };
                Planned::Read {
                    key,
                    ttl: Jitter::new(FixedTtl(ttl), jitter),
                    negative_ttl: self
                        .negative_ttl
                        .as_deref()
                        .map(|text| duration(name, "negative_ttl", text))
                        .transpose()?,
                    refresh_ahead,
                    statuses,
                    max_body_size: self.max_body_size,
                }
            }
            "write_around" => {
                if method.is_safe() {
                    return Err(invalid(
                        name,
                        "method",
                        "write_around routes change data: POST, PUT, PATCH or DELETE",
                    ));
                }
                if self.invalidate.is_empty() {
                    return Err(invalid(
                        name,
                        "invalidate",
                        "a write_around route needs keys or patterns to invalidate",
                    ));
                }
                let mut invalidation = PathInvalidation::new(&self.path);
                if let Some(prefix) = prefix {
                    invalidation = invalidation.prefix(prefix);
                }
                for template in &self.invalidate {
                    if let Some(missing) = params(template)
                        .into_iter()
                        .find(|p| !path_params.contains(p))
                    {
                        return Err(invalid(
                            name,
                            "invalidate",
                            format!("{{{missing}}} is not a parameter of path {:?}", self.path),
                        ));
                    }
                    invalidation = if template.ends_with('*') {
                        invalidation.pattern(template)
                    } else {
                        invalidation.key(template)
                    };
                }
                Planned::Invalidate(invalidation)
            }
            "write_through" | "write_behind" => {
                return Err(invalid(
                    name,
                    "strategy",
                    format!(
                        "{} needs a typed value: layer it on a typed service in code",
                        self.strategy
                    ),
                ))
            }
            other => {
                return Err(invalid(
                    name,
                    "strategy",
                    format!("{other:?} is not one of cache_aside, read_through, write_around"),
                ))
            }
        };
        Ok(CompiledRoute {
            method,
            matcher: PathKey::new(&self.path, ""),
            action,
        })
    }
}

impl CompiledRoute {
    fn into_action<St: Store, C: Codec>(
        self,
        cache: &Cache<CachedResponse, St, C>,
    ) -> (Method, PathKey, Action<St, C>) {
        let action = match self.action {
            Planned::Read {
                key,
                ttl,
                negative_ttl,
                refresh_ahead,
                statuses,
                max_body_size,
            } => {
                let mut layer = HttpCacheLayer::new(cache.clone())
                    .key(key)
                    .ttl(ttl)
                    .statuses(statuses);
                if let Some(ttl) = negative_ttl {
                    layer = layer.negative_ttl(ttl);
                }
                if let Some(fraction) = refresh_ahead {
                    layer = layer.refresh_ahead(fraction);
                }
                if let Some(bytes) = max_body_size {
                    layer = layer.max_body_size(bytes);
                }
                Action::Read(layer)
            }
            Planned::Invalidate(invalidation) => Action::Invalidate(
                CacheLayer::write_around(cache.clone())
                    .invalidate(invalidation)
                    .succeeded_if(IsSuccess),
            ),
        };
        (self.method, self.matcher, action)
    }
}

/// A key chosen by configuration.
#[derive(Clone, Debug)]
pub enum RouteKey {
    /// Method, path, sorted query, chosen headers.
    Http(HttpKey),
    /// A template over path parameters.
    Path(PathKey),
}

impl<B> RequestKey<B> for RouteKey {
    fn key(&self, request: &Request<B>) -> Option<Key> {
        match self {
            RouteKey::Http(key) => key.key(request),
            RouteKey::Path(key) => key.key(request),
        }
    }

    fn covers_header(&self, name: &http::HeaderName) -> bool {
        match self {
            RouteKey::Http(key) => RequestKey::<B>::covers_header(key, name),
            RouteKey::Path(_) => false,
        }
    }
}

/// [`is_success`] for any body type, as a nameable predicate.
#[derive(Clone, Copy, Debug, Default)]
pub struct IsSuccess;

impl<B> crate::strategy::Predicate<Response<B>> for IsSuccess {
    fn test(&self, response: &Response<B>) -> bool {
        is_success(response)
    }
}

type InvalidateLayer<St, C> =
    CacheLayer<crate::strategy::WriteAround<CachedResponse, St, C, PathInvalidation, IsSuccess>>;

enum Action<St, C> {
    Read(HttpCacheLayer<St, C, RouteKey, Jitter<FixedTtl>>),
    Invalidate(InvalidateLayer<St, C>),
}

/// The layer [`CacheConfig::layer`] builds.
pub struct ConfiguredCacheLayer<St, C> {
    routes: Arc<Vec<(Method, PathKey, Action<St, C>)>>,
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
    Svc::Error: Clone + Send + Sync + 'static,
    ReqBody: Send + 'static,
    ResBody: Body<Data = Bytes> + Unpin + Send + 'static,
    ResBody::Error: Into<BoxError>,
    St: Store,
    C: Codec,
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
