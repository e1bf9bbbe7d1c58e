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
//! Strategies: `cache_aside` and `read_through` cache `GET` responses ([`HttpCacheLayer`](crate::http::HttpCacheLayer)'s
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
//! use tower_caching::config::CacheConfig;
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
//! # Ok::<(), tower_caching::config::ConfigError>(())
//! ```

use std::collections::BTreeMap;
use std::sync::Arc;

use serde::Deserialize;

use crate::cache::Cache;
use crate::codec::Codec;
use crate::http::CachedResponse;
use crate::store::Store;

mod route;
mod service;

use self::route::CompiledRoute;
pub use self::route::{IsSuccess, RouteKey};
pub use self::service::{ConfiguredCache, ConfiguredCacheLayer};

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
    /// `"route"` (default): the route's `ttl`, whatever the response says, and only keyed
    /// request headers reach the handler. `"response"`: RFC 9111, freshness from the
    /// response's `Cache-Control` / `Expires`, with validation, `Vary` variants and every
    /// request header passed on (see
    /// [`HttpCacheLayer::rfc9111`](crate::http::HttpCacheLayer::rfc9111)); a `ttl`, when
    /// set, is then the freshness of a response that states none (otherwise it is not
    /// stored).
    #[serde(default)]
    pub freshness: Option<String>,
    /// `freshness = "response"` only: the longest a response stays fresh.
    #[serde(default)]
    pub max_ttl: Option<String>,
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
/// use tower_caching::config::{CacheConfig, ConfigError};
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
    /// use tower_caching::config::CacheConfig;
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
    /// # Ok::<(), tower_caching::config::ConfigError>(())
    /// ```
    pub fn from_toml(text: &str) -> Result<Self, ConfigError> {
        toml::from_str(text).map_err(|e| ConfigError::Parse(e.to_string()))
    }

    /// Parses YAML.
    ///
    /// ```
    /// use tower_caching::config::CacheConfig;
    /// let config = CacheConfig::from_yaml("
    /// routes:
    ///   entry:
    ///     path: /entries/{id}
    ///     strategy: cache_aside
    ///     key: entry:{id}
    ///     ttl: 5m
    /// ")?;
    /// assert_eq!(config.routes["entry"].ttl.as_deref(), Some("5m"));
    /// # Ok::<(), tower_caching::config::ConfigError>(())
    /// ```
    pub fn from_yaml(text: &str) -> Result<Self, ConfigError> {
        serde_norway::from_str(text).map_err(|e| ConfigError::Parse(e.to_string()))
    }

    /// Reads a `.toml`, `.yaml` or `.yml` file.
    ///
    /// ```
    /// use tower_caching::config::CacheConfig;
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
    /// use tower_caching::config::CacheConfig;
    /// let config = CacheConfig::from_toml(r#"
    ///     [routes.entry]
    ///     path = "/entries/{id}"
    ///     strategy = "cache_aside"
    ///     ttl = "5m"
    /// "#)?
    /// .with_overrides("CACHE", |name| (name == "CACHE_ENTRY_TTL").then(|| "10m".to_string()))?;
    /// assert_eq!(config.routes["entry"].ttl.as_deref(), Some("10m"));
    /// # Ok::<(), tower_caching::config::ConfigError>(())
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
            if let Some(v) = var("FRESHNESS") {
                route.freshness = Some(v);
            }
            if let Some(v) = var("MAX_TTL") {
                route.max_ttl = Some(v);
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
    /// use tower_caching::config::CacheConfig;
    ///
    /// let config = CacheConfig::from_toml(r#"
    ///     [routes.entry]
    ///     path = "/entries/{id}"
    ///     strategy = "cache_aside"
    ///     ttl = "soon"
    /// "#)?;
    /// let error = config.validate().unwrap_err().to_string();
    /// assert!(error.contains("entry") && error.contains("ttl"), "{error}");
    /// # Ok::<(), tower_caching::config::ConfigError>(())
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
    /// use tower_caching::{config::CacheConfig, http::CachedResponse};
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
    /// # Ok::<(), tower_caching::config::ConfigError>(())
    /// ```
    pub fn layer<St: Store, C: Codec<CachedResponse>>(
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
