//! How to reach Redis: [`RedisConfig`], from code or from the environment.

use std::fmt;
use std::time::Duration;

use redis::aio::ConnectionManagerConfig;
use redis::{Client, IntoConnectionInfo, RedisError};

use crate::store::StoreError;

/// How to reach Redis. Mirrors the original service's settings, less the connection-pool
/// ones a multiplexed connection has no use for (see [`RedisConfig::from_env`]).
///
/// `Debug` never shows the password.
///
/// ```
/// use std::time::Duration;
/// use tower_caching::store::RedisConfig;
///
/// let config = RedisConfig::new("127.0.0.1:6379")
///     .username("cache")
///     .password("s3cret")
///     .db(2)
///     .command_timeout(Duration::from_millis(50));
/// assert!(!format!("{config:?}").contains("s3cret"));
/// ```
#[derive(Clone)]
pub struct RedisConfig {
    pub(super) url: String,
    pub(super) username: Option<String>,
    pub(super) password: Option<String>,
    pub(super) db: Option<i64>,
    pub(super) connect_timeout: Duration,
    pub(super) command_timeout: Duration,
    pub(super) retries: usize,
    #[cfg(feature = "tls")]
    pub(super) tls_root_certificate: Option<Vec<u8>>,
}

impl fmt::Debug for RedisConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisConfig")
            .field("url", &redact_url(&self.url))
            .field("username", &self.username)
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .field("db", &self.db)
            .field("connect_timeout", &self.connect_timeout)
            .field("command_timeout", &self.command_timeout)
            .field("retries", &self.retries)
            .finish()
    }
}

/// Hides the password of a `redis://user:password@host` URL.
pub(super) fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    match rest.rsplit_once('@') {
        Some((credentials, host)) => {
            let user = credentials.split_once(':').map_or(credentials, |(u, _)| u);
            format!("{scheme}://{user}:<redacted>@{host}")
        }
        None => url.to_owned(),
    }
}

impl RedisConfig {
    /// Connects to `address`: `host:port`, or a URL (`redis://`, `rediss://` with the `tls`
    /// feature, `redis+unix://`).
    ///
    /// ```
    /// # use tower_caching::store::RedisConfig;
    /// assert_eq!(RedisConfig::new("cache:6379").url(), "redis://cache:6379");
    /// assert_eq!(RedisConfig::new("redis://cache:6379/2").url(), "redis://cache:6379/2");
    /// ```
    pub fn new(address: impl Into<String>) -> Self {
        RedisConfig {
            url: as_url(address.into()),
            username: None,
            password: None,
            db: None,
            connect_timeout: Duration::from_secs(1),
            command_timeout: Duration::from_millis(50),
            retries: 6,
            #[cfg(feature = "tls")]
            tls_root_certificate: None,
        }
    }

    /// Reads the original service's environment variables:
    ///
    /// | variable | meaning | default |
    /// |---|---|---|
    /// | `REDIS_URL` | full URL; wins over `REDIS_ADDR` | — |
    /// | `REDIS_ADDR` | `host:port` | `127.0.0.1:6379` |
    /// | `REDIS_USERNAME` | ACL user | none |
    /// | `REDIS_PASSWORD` | password (empty means none) | none |
    /// | `REDIS_DB` | database number | `0` |
    /// | `REDIS_CONNECT_TIMEOUT` | e.g. `500ms`, `1s` | `1s` |
    /// | `REDIS_COMMAND_TIMEOUT` | e.g. `100ms` | `50ms` |
    /// | `REDIS_MAX_RETRIES` | reconnection attempts per outage | `6` |
    /// | `REDIS_POOL_SIZE`, `REDIS_MIN_IDLE_CONNS` | validated, then unused | — |
    ///
    /// About the pool variables: the Go original kept a pool of up to `REDIS_POOL_SIZE`
    /// connections, at least `REDIS_MIN_IDLE_CONNS` of them open. This store sends every
    /// command over **one** multiplexed connection, pipelining concurrent commands, which
    /// is what a pool of 100 connections was for; there are no idle connections to keep.
    /// The two variables are still parsed, so a typo fails at start-up like any other, and
    /// otherwise have no effect.
    ///
    /// ```
    /// use tower_caching::store::RedisConfig;
    /// // With none of the variables set, this is 127.0.0.1:6379, database 0.
    /// let config = RedisConfig::from_env()?;
    /// # let _ = config;
    /// # Ok::<(), tower_caching::store::ConfigError>(())
    /// ```
    pub fn from_env() -> Result<Self, ConfigError> {
        Self::from_lookup(|name| std::env::var(name).ok())
    }

    /// [`RedisConfig::from_env`] over any source of variables (tests, config files).
    ///
    /// ```
    /// use tower_caching::store::RedisConfig;
    /// let config = RedisConfig::from_lookup(|name| match name {
    ///     "REDIS_ADDR" => Some("10.0.0.5:6380".into()),
    ///     "REDIS_DB" => Some("3".into()),
    ///     _ => None,
    /// })?;
    /// assert_eq!(config.url(), "redis://10.0.0.5:6380");
    /// assert!(RedisConfig::from_lookup(|n| (n == "REDIS_DB").then(|| "x".into())).is_err());
    /// # Ok::<(), tower_caching::store::ConfigError>(())
    /// ```
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        let var = |name: &'static str| lookup(name).filter(|v| !v.trim().is_empty());
        let mut config = match (var("REDIS_URL"), var("REDIS_ADDR")) {
            (Some(url), _) => RedisConfig::new(url),
            (None, Some(addr)) => RedisConfig::new(addr),
            (None, None) => RedisConfig::new("127.0.0.1:6379"),
        };
        config.username = var("REDIS_USERNAME");
        config.password = var("REDIS_PASSWORD");
        if let Some(db) = var("REDIS_DB") {
            config.db = Some(parse_var("REDIS_DB", &db, |v| v.parse::<i64>().ok())?);
        }
        if let Some(timeout) = var("REDIS_CONNECT_TIMEOUT") {
            config.connect_timeout =
                parse_var("REDIS_CONNECT_TIMEOUT", &timeout, crate::parse_duration)?;
        }
        if let Some(timeout) = var("REDIS_COMMAND_TIMEOUT") {
            config.command_timeout =
                parse_var("REDIS_COMMAND_TIMEOUT", &timeout, crate::parse_duration)?;
        }
        if let Some(retries) = var("REDIS_MAX_RETRIES") {
            config.retries = parse_var("REDIS_MAX_RETRIES", &retries, |v| v.parse().ok())?;
        }
        for name in ["REDIS_POOL_SIZE", "REDIS_MIN_IDLE_CONNS"] {
            if let Some(value) = var(name) {
                parse_var(name, &value, |v| v.parse::<u32>().ok())?;
            }
        }
        Ok(config)
    }

    /// The ACL user name. See [`RedisConfig`] for an example.
    pub fn username(mut self, username: impl Into<String>) -> Self {
        self.username = Some(username.into());
        self
    }

    /// The password (with or without a user name). See [`RedisConfig`] for an example.
    pub fn password(mut self, password: impl Into<String>) -> Self {
        self.password = Some(password.into());
        self
    }

    /// The database number. See [`RedisConfig`] for an example.
    pub fn db(mut self, db: i64) -> Self {
        self.db = Some(db);
        self
    }

    /// Bounds [`RedisStore::connect`](super::RedisStore::connect) as a whole and each reconnection attempt. Default 1 s.
    ///
    /// ```
    /// use std::time::Duration;
    /// use tower_caching::store::RedisConfig;
    ///
    /// let config = RedisConfig::new("redis://cache:6379")
    ///     .connect_timeout(Duration::from_millis(500))
    ///     .command_timeout(Duration::from_millis(20))
    ///     .retries(3);
    /// # let _ = config;
    /// ```
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// Bounds every command, including the wait for a connection. Default 50 ms: a cache in
    /// a request path should give up long before the request does. See
    /// [`connect_timeout`](RedisConfig::connect_timeout) for an example.
    pub fn command_timeout(mut self, timeout: Duration) -> Self {
        self.command_timeout = timeout;
        self
    }

    /// How many times one reconnection is attempted, with exponential backoff, before
    /// commands fail until the next try. Default 6. See
    /// [`connect_timeout`](RedisConfig::connect_timeout) for an example.
    pub fn retries(mut self, retries: usize) -> Self {
        self.retries = retries;
        self
    }

    /// Trusts the CA certificate `pem` (PEM) for `rediss://` instead of the public roots: for
    /// servers with a private CA.
    ///
    /// ```no_run
    /// use tower_caching::store::RedisConfig;
    ///
    /// let config = RedisConfig::new("rediss://cache.internal:6380")
    ///     .tls_root_certificate(std::fs::read("ca.pem")?);
    /// # let _ = config;
    /// # Ok::<(), std::io::Error>(())
    /// ```
    #[cfg(feature = "tls")]
    #[cfg_attr(docsrs, doc(cfg(feature = "tls")))]
    pub fn tls_root_certificate(mut self, pem: impl Into<Vec<u8>>) -> Self {
        self.tls_root_certificate = Some(pem.into());
        self
    }

    /// The URL (which may carry credentials; `Debug` redacts them).
    ///
    /// ```
    /// # use tower_caching::store::RedisConfig;
    /// assert_eq!(RedisConfig::new("127.0.0.1:6379").url(), "redis://127.0.0.1:6379");
    /// ```
    pub fn url(&self) -> &str {
        &self.url
    }

    pub(crate) fn client(&self) -> Result<Client, StoreError> {
        // rustls needs a process-wide crypto provider; a process that installed its own keeps
        // it (the call then fails, harmlessly).
        #[cfg(feature = "tls")]
        let _ = rustls::crypto::ring::default_provider().install_default();
        let invalid = |e: RedisError| StoreError::Connect {
            message: format!("invalid redis address {}", redact_url(&self.url)),
            source: Some(Box::new(e)),
        };
        let mut info = self.url.as_str().into_connection_info().map_err(invalid)?;
        let mut settings = info.redis_settings().clone();
        if let Some(username) = &self.username {
            settings = settings.set_username(username);
        }
        if let Some(password) = &self.password {
            settings = settings.set_password(password);
        }
        if let Some(db) = self.db {
            settings = settings.set_db(db);
        }
        info = info.set_redis_settings(settings);
        #[cfg(feature = "tls")]
        if let Some(root) = &self.tls_root_certificate {
            let certificates = redis::TlsCertificates {
                client_tls: None,
                root_cert: Some(root.clone()),
            };
            return Client::build_with_tls(info, certificates).map_err(invalid);
        }
        Client::open(info).map_err(invalid)
    }

    pub(crate) fn manager_config(&self) -> ConnectionManagerConfig {
        // No response timeout inside redis-rs: every command is bounded by the command
        // timeout already, and a second timer per command costs throughput at depth.
        ConnectionManagerConfig::new()
            .set_connection_timeout(Some(self.connect_timeout))
            .set_response_timeout(None)
            .set_number_of_retries(self.retries)
            .set_max_delay(Duration::from_secs(2))
    }
}

/// `address` as a URL: `host:port` becomes `redis://host:port`; a URL stays as it is.
pub(in crate::store) fn as_url(address: String) -> String {
    if address.contains("://") {
        address
    } else {
        format!("redis://{address}")
    }
}

/// Variables read the way every `from_lookup` reads them: one set to blanks is unset, and
/// one that does not parse is a [`ConfigError`] naming it.
pub(in crate::store) struct Variables<F>(pub(in crate::store) F);

impl<F: Fn(&str) -> Option<String>> Variables<F> {
    pub(in crate::store) fn text(&self, name: &str) -> Option<String> {
        (self.0)(name).filter(|value| !value.trim().is_empty())
    }

    pub(in crate::store) fn parsed<T>(
        &self,
        name: &'static str,
        parse: impl Fn(&str) -> Option<T>,
    ) -> Result<Option<T>, ConfigError> {
        self.text(name)
            .map(|value| parse_var(name, &value, parse))
            .transpose()
    }

    pub(in crate::store) fn duration(
        &self,
        name: &'static str,
    ) -> Result<Option<Duration>, ConfigError> {
        self.parsed(name, crate::parse_duration)
    }

    /// A comma-separated list of addresses, as URLs.
    pub(in crate::store) fn addresses(&self, name: &str) -> Option<Vec<String>> {
        self.text(name).map(|list| {
            list.split(',')
                .map(str::trim)
                .filter(|address| !address.is_empty())
                .map(|address| as_url(address.to_owned()))
                .collect()
        })
    }
}

fn parse_var<T>(
    name: &'static str,
    value: &str,
    parse: impl Fn(&str) -> Option<T>,
) -> Result<T, ConfigError> {
    parse(value.trim()).ok_or_else(|| ConfigError {
        variable: name,
        value: value.to_owned(),
    })
}

/// An environment variable holds a value that does not parse.
///
/// ```
/// use tower_caching::store::RedisConfig;
///
/// let env = |name: &str| match name {
///     "REDIS_ADDR" => Some("127.0.0.1:6379".to_string()),
///     "REDIS_DB" => Some("two".to_string()),
///     _ => None,
/// };
/// let error = RedisConfig::from_lookup(env).unwrap_err();
/// assert!(error.to_string().contains("REDIS_DB"));
/// ```
#[derive(Debug, Clone, thiserror::Error)]
#[error("environment variable {variable} has an invalid value {value:?}")]
pub struct ConfigError {
    pub(crate) variable: &'static str,
    pub(crate) value: String,
}
