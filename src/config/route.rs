//! Validation of a route's settings, and what it compiles to.

use std::time::Duration;

use http::{Method, Request, Response};

use crate::cache::Cache;
use crate::codec::Codec;
use crate::http::{
    CachedResponse, HttpCacheLayer, HttpKey, PathInvalidation, PathKey, RequestKey, is_success,
};
use crate::key::{Key, KeyExtractor};
use crate::layer::CacheLayer;
use crate::store::Store;
use crate::ttl::{FixedTtl, Jitter};

use super::service::Action;
use super::{ConfigError, RouteConfig, invalid};

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

pub(super) struct CompiledRoute {
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
        /// `freshness = "response"`: RFC 9111, with this ceiling, and whether `ttl` (when
        /// set) is the freshness of silent responses.
        from_response: Option<(Option<Duration>, bool)>,
    },
    Invalidate(PathInvalidation),
}

impl RouteConfig {
    pub(super) fn compile(
        &self,
        name: &str,
        prefix: Option<&str>,
    ) -> Result<CompiledRoute, ConfigError> {
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
                            return Err(invalid(
                                name,
                                "vary",
                                "vary applies to the default key; add the header to the key instead",
                            ));
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
                        ));
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
                let from_response = match self.freshness.as_deref() {
                    None | Some("route") => {
                        if self.max_ttl.is_some() {
                            return Err(invalid(
                                name,
                                "max_ttl",
                                "max_ttl caps what responses say: set freshness = \"response\"",
                            ));
                        }
                        None
                    }
                    Some("response") => Some((
                        self.max_ttl
                            .as_deref()
                            .map(|text| duration(name, "max_ttl", text))
                            .transpose()?,
                        self.ttl.is_some(),
                    )),
                    Some(other) => {
                        return Err(invalid(
                            name,
                            "freshness",
                            format!("{other:?} is neither \"route\" nor \"response\""),
                        ));
                    }
                };
                Planned::Read {
                    from_response,
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
                ));
            }
            other => {
                return Err(invalid(
                    name,
                    "strategy",
                    format!("{other:?} is not one of cache_aside, read_through, write_around"),
                ));
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
    pub(super) fn into_action<St: Store, C: Codec<CachedResponse>>(
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
                from_response,
            } => {
                let mut layer = HttpCacheLayer::new(cache.clone())
                    .key(key)
                    .ttl(ttl)
                    .statuses(statuses);
                if let Some((ceiling, lend_ttl)) = from_response {
                    layer = layer.rfc9111();
                    if lend_ttl {
                        layer = layer.ttl_when_unstated();
                    }
                    if let Some(ceiling) = ceiling {
                        layer = layer.max_ttl(ceiling);
                    }
                }
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

impl<B> KeyExtractor<Request<B>> for RouteKey {
    fn key(&self, request: &Request<B>) -> Option<Key> {
        match self {
            RouteKey::Http(key) => key.key(request),
            RouteKey::Path(key) => key.key(request),
        }
    }
}

impl<B> RequestKey<B> for RouteKey {
    fn covers_header(&self, name: &http::HeaderName) -> bool {
        match self {
            RouteKey::Http(key) => RequestKey::<B>::covers_header(key, name),
            RouteKey::Path(_) => false,
        }
    }

    fn covers_query(&self) -> bool {
        match self {
            RouteKey::Http(key) => RequestKey::<B>::covers_query(key),
            RouteKey::Path(key) => RequestKey::<B>::covers_query(key),
        }
    }

    fn key_for_uri(&self, uri: &http::Uri) -> Option<crate::key::Key> {
        match self {
            RouteKey::Http(key) => RequestKey::<B>::key_for_uri(key, uri),
            RouteKey::Path(key) => RequestKey::<B>::key_for_uri(key, uri),
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
