//! Following the primary that a set of Redis Sentinels names.

use std::fmt;
use std::sync::{Arc, OnceLock, RwLock, Weak};
use std::time::Duration;

use futures_util::StreamExt;
use redis::aio::{ConnectionLike, MultiplexedConnection, PubSubStream};
use redis::{
    AsyncConnectionConfig, Client, Cmd, ConnectionAddr, ConnectionInfo, IntoConnectionInfo,
    Pipeline, RedisConnectionInfo, RedisError, RedisFuture, Value,
};
use tokio::sync::Notify;

use super::ConfigError;
use super::config::{Variables, as_url, redact_url};
use crate::store::StoreError;

/// How to reach a Redis primary that Sentinels manage: the sentinels' addresses, the name
/// they monitor it under, and the credentials of the data nodes (and of the sentinels, when
/// they have their own). `Debug` never shows a password.
///
/// TLS is not supported on this path yet: sentinels and nodes are reached over plain TCP.
///
/// ```
/// use std::time::Duration;
/// use tower_caching::store::SentinelConfig;
///
/// let config = SentinelConfig::new(["10.0.0.1:26379", "10.0.0.2:26379"], "cache")
///     .password("s3cret")
///     .sentinel_password("sentinel-s3cret")
///     .db(1)
///     .command_timeout(Duration::from_millis(50))
///     .check_interval(Duration::from_secs(1));
/// assert_eq!(config.sentinels(), ["redis://10.0.0.1:26379", "redis://10.0.0.2:26379"]);
/// assert_eq!(config.master(), "cache");
/// assert!(!format!("{config:?}").contains("s3cret"));
/// ```
#[derive(Clone)]
pub struct SentinelConfig {
    sentinels: Vec<String>,
    master: String,
    username: Option<String>,
    password: Option<String>,
    sentinel_username: Option<String>,
    sentinel_password: Option<String>,
    db: Option<i64>,
    pub(super) connect_timeout: Duration,
    pub(super) command_timeout: Duration,
    check_interval: Duration,
}

impl fmt::Debug for SentinelConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let redacted = |password: &Option<String>| password.as_ref().map(|_| "<redacted>");
        f.debug_struct("SentinelConfig")
            .field(
                "sentinels",
                &self
                    .sentinels
                    .iter()
                    .map(|s| redact_url(s))
                    .collect::<Vec<_>>(),
            )
            .field("master", &self.master)
            .field("username", &self.username)
            .field("password", &redacted(&self.password))
            .field("sentinel_username", &self.sentinel_username)
            .field("sentinel_password", &redacted(&self.sentinel_password))
            .field("db", &self.db)
            .field("connect_timeout", &self.connect_timeout)
            .field("command_timeout", &self.command_timeout)
            .field("check_interval", &self.check_interval)
            .finish()
    }
}

impl SentinelConfig {
    /// The sentinels (`host:port` or `redis://` URLs; any one that answers will do) and the
    /// name of the primary they monitor (`sentinel monitor <name> …`).
    ///
    /// ```
    /// # use tower_caching::store::SentinelConfig;
    /// let config = SentinelConfig::new(["127.0.0.1:26379"], "mymaster");
    /// assert_eq!(config.sentinels(), ["redis://127.0.0.1:26379"]);
    /// ```
    pub fn new<I: IntoIterator<Item = N>, N: Into<String>>(
        sentinels: I,
        master: impl Into<String>,
    ) -> Self {
        SentinelConfig {
            sentinels: sentinels
                .into_iter()
                .map(|node| as_url(node.into()))
                .collect(),
            master: master.into(),
            username: None,
            password: None,
            sentinel_username: None,
            sentinel_password: None,
            db: None,
            connect_timeout: Duration::from_secs(1),
            command_timeout: Duration::from_millis(50),
            check_interval: Duration::from_secs(1),
        }
    }

    /// `REDIS_SENTINELS` (`host:port,host:port,…`) and `REDIS_SENTINEL_MASTER` (default
    /// `mymaster`), with `REDIS_SENTINEL_PASSWORD`, `REDIS_USERNAME`, `REDIS_PASSWORD`,
    /// `REDIS_DB`, `REDIS_CONNECT_TIMEOUT` and `REDIS_COMMAND_TIMEOUT`; `None` when
    /// `REDIS_SENTINELS` is not set. See [`from_lookup`](SentinelConfig::from_lookup).
    pub fn from_env() -> Result<Option<Self>, ConfigError> {
        Self::from_lookup(|name| std::env::var(name).ok())
    }

    /// [`SentinelConfig::from_env`] over any source of variables.
    ///
    /// ```
    /// use tower_caching::store::SentinelConfig;
    ///
    /// let env = |name: &str| match name {
    ///     "REDIS_SENTINELS" => Some("10.0.0.1:26379, 10.0.0.2:26379".to_string()),
    ///     "REDIS_SENTINEL_MASTER" => Some("cache".to_string()),
    ///     "REDIS_DB" => Some("2".to_string()),
    ///     _ => None,
    /// };
    /// let config = SentinelConfig::from_lookup(env)?.expect("REDIS_SENTINELS is set");
    /// assert_eq!(config.sentinels().len(), 2);
    /// assert_eq!(config.master(), "cache");
    /// assert!(SentinelConfig::from_lookup(|_| None)?.is_none());
    /// let typo = |name: &str| match name {
    ///     "REDIS_SENTINELS" => Some("10.0.0.1:26379".to_string()),
    ///     "REDIS_DB" => Some("two".to_string()),
    ///     _ => None,
    /// };
    /// assert!(SentinelConfig::from_lookup(typo).is_err());
    /// # Ok::<(), tower_caching::store::ConfigError>(())
    /// ```
    pub fn from_lookup(
        lookup: impl Fn(&str) -> Option<String>,
    ) -> Result<Option<Self>, ConfigError> {
        let env = Variables(lookup);
        let Some(sentinels) = env.addresses("REDIS_SENTINELS") else {
            return Ok(None);
        };
        let master = env
            .text("REDIS_SENTINEL_MASTER")
            .unwrap_or_else(|| "mymaster".into());
        let mut config = SentinelConfig::new(sentinels, master.trim());
        config.username = env.text("REDIS_USERNAME");
        config.password = env.text("REDIS_PASSWORD");
        config.sentinel_password = env.text("REDIS_SENTINEL_PASSWORD");
        config.db = env.parsed("REDIS_DB", |db| db.parse().ok())?;
        if let Some(timeout) = env.duration("REDIS_CONNECT_TIMEOUT")? {
            config.connect_timeout = timeout;
        }
        if let Some(timeout) = env.duration("REDIS_COMMAND_TIMEOUT")? {
            config.command_timeout = timeout;
        }
        Ok(Some(config))
    }

    /// The sentinels, as URLs. See [`new`](SentinelConfig::new).
    pub fn sentinels(&self) -> &[String] {
        &self.sentinels
    }

    /// The name the sentinels monitor the primary under. See [`new`](SentinelConfig::new).
    pub fn master(&self) -> &str {
        &self.master
    }

    /// The ACL user on the data nodes. See [`SentinelConfig`] for an example.
    pub fn username(mut self, username: impl Into<String>) -> Self {
        self.username = Some(username.into());
        self
    }

    /// The password of the data nodes. See [`SentinelConfig`] for an example.
    pub fn password(mut self, password: impl Into<String>) -> Self {
        self.password = Some(password.into());
        self
    }

    /// The ACL user on the sentinels, when they have their own. See [`SentinelConfig`].
    pub fn sentinel_username(mut self, username: impl Into<String>) -> Self {
        self.sentinel_username = Some(username.into());
        self
    }

    /// The sentinels' own password (`requirepass` in `sentinel.conf`), when they have one.
    /// See [`SentinelConfig`] for an example.
    pub fn sentinel_password(mut self, password: impl Into<String>) -> Self {
        self.sentinel_password = Some(password.into());
        self
    }

    /// The database number on the primary. See [`SentinelConfig`] for an example.
    pub fn db(mut self, db: i64) -> Self {
        self.db = Some(db);
        self
    }

    /// Bounds the first connection ([`RedisStore::connect_sentinel`](super::RedisStore::connect_sentinel))
    /// and each later connection to a sentinel or a primary. Default 1 s. See
    /// [`SentinelConfig`].
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// Bounds every command. Default 50 ms. See [`SentinelConfig`] for an example.
    pub fn command_timeout(mut self, timeout: Duration) -> Self {
        self.command_timeout = timeout;
        self
    }

    /// How often a sentinel is asked which node is the primary, besides listening for its
    /// `+switch-master` announcements and looking again whenever the connection fails (a
    /// missed announcement costs at most this long). Default 1 s. See [`SentinelConfig`].
    pub fn check_interval(mut self, interval: Duration) -> Self {
        self.check_interval = interval.max(Duration::from_millis(10));
        self
    }

    fn sentinel_info(&self, url: &str) -> Result<ConnectionInfo, RedisError> {
        let info = url.into_connection_info()?;
        let mut settings = info.redis_settings().clone();
        if let Some(username) = &self.sentinel_username {
            settings = settings.set_username(username);
        }
        if let Some(password) = &self.sentinel_password {
            settings = settings.set_password(password);
        }
        Ok(info.set_redis_settings(settings))
    }

    fn primary_info(&self, address: &Address) -> Result<ConnectionInfo, RedisError> {
        let mut settings = RedisConnectionInfo::default();
        if let Some(username) = &self.username {
            settings = settings.set_username(username);
        }
        if let Some(password) = &self.password {
            settings = settings.set_password(password);
        }
        if let Some(db) = self.db {
            settings = settings.set_db(db);
        }
        Ok(ConnectionAddr::Tcp(address.0.clone(), address.1)
            .into_connection_info()?
            .set_redis_settings(settings))
    }

    fn connection_config(&self) -> AsyncConnectionConfig {
        // No response timeout of redis-rs's own: every command is bounded by the command
        // timeout already.
        AsyncConnectionConfig::new()
            .set_connection_timeout(Some(self.connect_timeout))
            .set_response_timeout(None)
    }
}

/// A node's address, as the sentinels give it.
type Address = (String, u16);

/// A connection to whichever node the sentinels last named primary and that said it is one.
/// While there is none (a failover in progress), every command fails at once with an I/O
/// error, which the layers answer from their loader.
#[derive(Clone)]
pub(crate) struct SentinelConnection {
    shared: Arc<Shared>,
    db: i64,
}

struct Shared {
    primary: RwLock<Option<Primary>>,
    /// Woken when a command finds the primary gone: the watcher looks for the new one.
    lost: Arc<Notify>,
    /// The watcher task, stopped when the last clone of the connection goes.
    watcher: OnceLock<tokio::task::AbortHandle>,
    master: String,
    /// How to reach the nodes (for a client of the primary's own, e.g. a subscriber).
    config: SentinelConfig,
}

impl Drop for Shared {
    fn drop(&mut self) {
        if let Some(watcher) = self.watcher.get() {
            watcher.abort();
        }
    }
}

#[derive(Clone)]
struct Primary {
    connection: MultiplexedConnection,
    address: Address,
    /// Which connection this is: a late error on an earlier one must not drop this one.
    generation: u64,
}

impl Shared {
    fn current(&self) -> Option<(MultiplexedConnection, u64)> {
        self.primary
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
            .map(|primary| (primary.connection.clone(), primary.generation))
    }

    fn address(&self) -> Option<Address> {
        self.primary
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
            .map(|primary| primary.address.clone())
    }

    /// After `error` on connection `generation`: if it says that connection no longer
    /// reaches a primary, forgets it and wakes the watcher.
    fn judge(&self, error: &RedisError, generation: u64) {
        let gone = error.is_io_error()
            || error.is_connection_dropped()
            || error.is_connection_refusal()
            || error.is_unrecoverable_error()
            // A demoted primary answers reads with stale data and refuses writes.
            || matches!(error.code(), Some("READONLY" | "MASTERDOWN"));
        if !gone {
            return;
        }
        let mut primary = self.primary.write().unwrap_or_else(|e| e.into_inner());
        // Only the first error on the current connection wakes the watcher; the others
        // come from a connection it already replaces.
        if primary.as_ref().is_some_and(|p| p.generation == generation) {
            *primary = None;
            drop(primary);
            self.lost.notify_one();
        }
    }
}

fn no_primary(master: &str) -> RedisError {
    RedisError::from((
        redis::ErrorKind::Io,
        "no Redis primary known: the sentinels are being asked",
        master.to_owned(),
    ))
}

impl fmt::Debug for SentinelConnection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SentinelConnection")
            .field("master", &self.shared.master)
            .field(
                "primary",
                &self
                    .shared
                    .address()
                    .map(|(host, port)| format!("{host}:{port}")),
            )
            .finish()
    }
}

impl SentinelConnection {
    /// Asks the sentinels for the primary and connects to it, within the connect timeout;
    /// then keeps following it from a background task.
    pub(super) async fn connect(config: SentinelConfig) -> Result<Self, StoreError> {
        let (shared, mut watcher) = Watcher::new(config)?;
        let connect_timeout = watcher.config.connect_timeout;
        match tokio::time::timeout(connect_timeout, watcher.discover()).await {
            Ok(Ok((address, connection))) => watcher.install(&shared, address, connection),
            Ok(Err(error)) => {
                return Err(StoreError::Connect {
                    message: format!("no primary {:?} from the sentinels", shared.master),
                    source: Some(error.into()),
                });
            }
            Err(_) => {
                return Err(StoreError::Connect {
                    message: format!(
                        "no primary {:?} from the sentinels within {connect_timeout:?}",
                        shared.master
                    ),
                    source: None,
                });
            }
        }
        Ok(Self::watched(shared, watcher))
    }

    /// [`SentinelConnection::connect`] without waiting: the watcher looks for the primary
    /// in the background, and until it finds one every command fails at once.
    pub(super) fn connect_lazy(config: SentinelConfig) -> Result<Self, StoreError> {
        let (shared, watcher) = Watcher::new(config)?;
        Ok(Self::watched(shared, watcher))
    }

    fn watched(shared: Arc<Shared>, watcher: Watcher) -> Self {
        let db = watcher.db;
        let task = tokio::spawn(watcher.watch());
        let _ = shared.watcher.set(task.abort_handle());
        SentinelConnection { shared, db }
    }
}

impl SentinelConnection {
    /// A client of the primary followed now, if there is one.
    pub(super) fn primary_client(&self) -> Option<Client> {
        let address = self.shared.address()?;
        let info = self.shared.config.primary_info(&address).ok()?;
        Client::open(info).ok()
    }
}

impl ConnectionLike for SentinelConnection {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        let current = self.shared.current();
        Box::pin(async move {
            let Some((mut connection, generation)) = current else {
                return Err(no_primary(&self.shared.master));
            };
            let result = connection.req_packed_command(cmd).await;
            if let Err(error) = &result {
                self.shared.judge(error, generation);
            }
            result
        })
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        cmd: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        let current = self.shared.current();
        Box::pin(async move {
            let Some((mut connection, generation)) = current else {
                return Err(no_primary(&self.shared.master));
            };
            let result = connection.req_packed_commands(cmd, offset, count).await;
            if let Err(error) = &result {
                self.shared.judge(error, generation);
            }
            result
        })
    }

    fn get_db(&self) -> i64 {
        self.db
    }
}

/// Why the watcher looks for the primary.
enum Reason {
    /// A command found the connection gone.
    Lost,
    /// A sentinel announced a failover of this master, to this address.
    Switched(Option<Address>),
    /// The periodic check.
    Check,
}

/// The task that follows the primary: it listens for `+switch-master`, asks a sentinel
/// every check interval, and looks for the new primary whenever a command lost the old one.
struct Watcher {
    config: SentinelConfig,
    db: i64,
    /// A connection to each sentinel, made when first needed and dropped after an error.
    sentinels: Vec<Option<MultiplexedConnection>>,
    /// The sentinel that answered last, asked first.
    preferred: usize,
    generation: u64,
    shared: Weak<Shared>,
    lost: Arc<Notify>,
}

impl Watcher {
    fn new(config: SentinelConfig) -> Result<(Arc<Shared>, Watcher), StoreError> {
        if config.sentinels.is_empty() {
            return Err(StoreError::Connect {
                message: "no sentinel addresses given".into(),
                source: None,
            });
        }
        let shared = Arc::new(Shared {
            primary: RwLock::new(None),
            lost: Arc::new(Notify::new()),
            watcher: OnceLock::new(),
            master: config.master.clone(),
            config: config.clone(),
        });
        let watcher = Watcher {
            db: config.db.unwrap_or(0),
            sentinels: vec![None; config.sentinels.len()],
            preferred: 0,
            generation: 0,
            shared: Arc::downgrade(&shared),
            lost: shared.lost.clone(),
            config,
        };
        Ok((shared, watcher))
    }

    async fn watch(mut self) {
        let mut announcements: Option<PubSubStream> = None;
        let mut check = tokio::time::interval(self.config.check_interval);
        check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let resubscribed = announcements.is_none() && {
                announcements = self.subscribe().await;
                announcements.is_some()
            };
            // What was announced while there was no subscription is lost: look once now.
            let reason = if resubscribed {
                Reason::Check
            } else {
                tokio::select! {
                () = self.lost.notified() => Reason::Lost,
                message = next_message(&mut announcements) => match message {
                    Some(payload) if payload.split(' ').next() == Some(&self.config.master) => {
                        Reason::Switched(announced(&payload))
                    }
                    Some(_) => continue,
                    None => {
                        announcements = None;
                        continue;
                    }
                },
                _ = check.tick() => Reason::Check,
                }
            };
            let Some(shared) = self.shared.upgrade() else {
                return;
            };
            let known = shared.address();
            drop(shared);
            match reason {
                // The sentinels' majority: one that lags behind a failover could name the
                // demoted node, which says it is a primary until it is reconfigured.
                Reason::Check if known.is_some() => match self.ask_every_sentinel().await {
                    Some(named) if Some(&named) != known.as_ref() => {
                        self.follow_to(named, &mut announcements).await
                    }
                    _ => {}
                },
                Reason::Switched(address) => {
                    tracing::info!(master = %self.config.master, "sentinels announced a failover");
                    match address {
                        Some(address) => self.follow_to(address, &mut announcements).await,
                        None => self.follow(&mut announcements).await,
                    }
                }
                // A wake-up left over from the last outage: the primary is found already.
                Reason::Lost if known.is_some() => {}
                Reason::Lost | Reason::Check => self.follow(&mut announcements).await,
            }
        }
    }

    /// Moves to the primary at `address` if it confirms, else looks for it as
    /// [`Watcher::follow`] does. An announcement names the new primary itself: asking a
    /// sentinel instead could reach one that has not heard of the failover yet.
    async fn follow_to(&mut self, address: Address, announcements: &mut Option<PubSubStream>) {
        match self.confirm(&address).await {
            Ok(connection) => {
                if let Some(shared) = self.shared.upgrade() {
                    self.install(&shared, address, connection);
                }
            }
            Err(_) => self.follow(announcements).await,
        }
    }

    /// Looks for the primary until one answers as such, backing off between attempts; an
    /// announcement cuts the wait short.
    async fn follow(&mut self, announcements: &mut Option<PubSubStream>) {
        let mut backoff = Duration::from_millis(10);
        let mut attempts = 0u32;
        loop {
            if self.shared.strong_count() == 0 {
                return;
            }
            match self.discover().await {
                Ok((address, connection)) => {
                    let Some(shared) = self.shared.upgrade() else {
                        return;
                    };
                    self.install(&shared, address, connection);
                    return;
                }
                Err(error) => {
                    attempts += 1;
                    if attempts == 1 || attempts.is_multiple_of(50) {
                        tracing::warn!(
                            master = %self.config.master,
                            attempts,
                            %error,
                            "no Redis primary yet"
                        );
                    }
                }
            }
            tokio::select! {
                () = tokio::time::sleep(backoff) => {}
                message = next_message(announcements) => {
                    if message.is_none() {
                        *announcements = None;
                    }
                }
            }
            backoff = (backoff * 2).min(Duration::from_millis(200));
        }
    }

    fn install(&mut self, shared: &Shared, address: Address, connection: MultiplexedConnection) {
        self.generation += 1;
        let mut primary = shared.primary.write().unwrap_or_else(|e| e.into_inner());
        if primary.as_ref().map(|p| &p.address) != Some(&address) {
            tracing::info!(
                master = %self.config.master,
                primary = %format_args!("{}:{}", address.0, address.1),
                "following the Redis primary"
            );
        }
        *primary = Some(Primary {
            connection,
            address,
            generation: self.generation,
        });
    }

    /// The primary the sentinels name, connected and confirmed by its `ROLE`.
    async fn discover(&mut self) -> Result<(Address, MultiplexedConnection), RedisError> {
        let address = self.ask_sentinels().await?;
        match self.confirm(&address).await {
            Ok(connection) => Ok((address, connection)),
            Err(error) => {
                // Perhaps this sentinel is behind: ask the next one first next time.
                self.preferred = (self.preferred + 1) % self.sentinels.len();
                Err(error)
            }
        }
    }

    /// A connection to the node at `address`, if it says it is a primary.
    async fn confirm(&self, address: &Address) -> Result<MultiplexedConnection, RedisError> {
        let info = self.config.primary_info(address)?;
        let timeout = self.config.connect_timeout;
        let confirm = async {
            let mut connection = Client::open(info)?
                .get_multiplexed_async_connection_with_config(&self.config.connection_config())
                .await?;
            let role: Value = redis::cmd("ROLE").query_async(&mut connection).await?;
            match role {
                Value::Array(parts) if matches!(parts.first(), Some(Value::BulkString(r)) if r == b"master") => {
                    Ok(connection)
                }
                _ => Err(RedisError::from((
                    redis::ErrorKind::Client,
                    "the node the sentinels name is not a primary (yet)",
                ))),
            }
        };
        match tokio::time::timeout(timeout, confirm).await {
            Ok(result) => result,
            Err(_) => Err(timed_out("connect to the primary")),
        }
    }

    /// The primary most of the sentinels that answer name.
    async fn ask_every_sentinel(&mut self) -> Option<Address> {
        let mut named: Vec<(Address, usize)> = Vec::new();
        for at in 0..self.sentinels.len() {
            if let Ok(address) = self.ask_sentinel(at).await {
                match named.iter_mut().find(|(known, _)| *known == address) {
                    Some((_, votes)) => *votes += 1,
                    None => named.push((address, 1)),
                }
            }
        }
        named
            .into_iter()
            .max_by_key(|(_, votes)| *votes)
            .map(|(address, _)| address)
    }

    /// `SENTINEL get-master-addr-by-name` on the first sentinel that answers.
    async fn ask_sentinels(&mut self) -> Result<Address, RedisError> {
        let mut last = no_primary(&self.config.master);
        let count = self.sentinels.len();
        for turn in 0..count {
            let at = (self.preferred + turn) % count;
            match self.ask_sentinel(at).await {
                Ok(address) => {
                    self.preferred = at;
                    return Ok(address);
                }
                Err(error) => last = error,
            }
        }
        Err(last)
    }

    /// `SENTINEL get-master-addr-by-name` on sentinel `at`.
    async fn ask_sentinel(&mut self, at: usize) -> Result<Address, RedisError> {
        let mut ask = redis::cmd("SENTINEL");
        ask.arg("get-master-addr-by-name").arg(&self.config.master);
        let mut connection = self.sentinel(at).await?;
        let answer = tokio::time::timeout(
            self.config.connect_timeout,
            ask.query_async::<Option<Address>>(&mut connection),
        )
        .await
        .unwrap_or_else(|_| Err(timed_out("ask a sentinel")));
        match answer {
            Ok(Some(address)) => Ok(address),
            Ok(None) => Err(RedisError::from((
                redis::ErrorKind::MasterNameNotFoundBySentinel,
                "a sentinel does not monitor this master",
                self.config.master.clone(),
            ))),
            Err(error) => {
                self.sentinels[at] = None;
                Err(error)
            }
        }
    }

    async fn sentinel(&mut self, at: usize) -> Result<MultiplexedConnection, RedisError> {
        if let Some(connection) = &self.sentinels[at] {
            return Ok(connection.clone());
        }
        let info = self.config.sentinel_info(&self.config.sentinels[at])?;
        let client = Client::open(info)?;
        let config = self.config.connection_config();
        let connect = client.get_multiplexed_async_connection_with_config(&config);
        let connection = tokio::time::timeout(self.config.connect_timeout, connect)
            .await
            .map_err(|_| timed_out("connect to a sentinel"))??;
        self.sentinels[at] = Some(connection.clone());
        Ok(connection)
    }

    /// A subscription to `+switch-master` on the preferred sentinel (or the next that
    /// answers); `None` if none does, and the periodic check then does the work.
    async fn subscribe(&mut self) -> Option<PubSubStream> {
        let count = self.config.sentinels.len();
        for turn in 0..count {
            let at = (self.preferred + turn) % count;
            let Ok(info) = self.config.sentinel_info(&self.config.sentinels[at]) else {
                continue;
            };
            let subscribe = async {
                let mut pubsub = Client::open(info)?.get_async_pubsub().await?;
                pubsub.subscribe("+switch-master").await?;
                Ok::<_, RedisError>(pubsub.into_on_message())
            };
            if let Ok(Ok(stream)) =
                tokio::time::timeout(self.config.connect_timeout, subscribe).await
            {
                return Some(stream);
            }
        }
        None
    }
}

/// The new primary a `+switch-master` payload names:
/// `<master> <old ip> <old port> <new ip> <new port>`.
fn announced(payload: &str) -> Option<Address> {
    let parts: Vec<&str> = payload.split_whitespace().collect();
    match parts.as_slice() {
        [_, _, _, ip, port] => Some(((*ip).to_owned(), port.parse().ok()?)),
        _ => None,
    }
}

/// The next announcement's payload; pending forever without a subscription, `None` when
/// the subscription ended.
async fn next_message(announcements: &mut Option<PubSubStream>) -> Option<String> {
    match announcements {
        Some(stream) => stream
            .next()
            .await
            .map(|message| message.get_payload::<String>().unwrap_or_default()),
        None => std::future::pending().await,
    }
}

fn timed_out(what: &'static str) -> RedisError {
    RedisError::from(std::io::Error::new(std::io::ErrorKind::TimedOut, what))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_announcement_names_the_new_primary() {
        assert_eq!(
            announced("cache 127.0.0.1 6379 127.0.0.1 6380"),
            Some(("127.0.0.1".to_owned(), 6380))
        );
        assert_eq!(announced("cache 127.0.0.1 6379"), None);
        assert_eq!(announced("cache a b c not-a-port"), None);
    }
}
