use std::fmt;
use std::time::Duration;

use redis::cluster::{ClusterClient, ClusterClientBuilder};
use redis::cluster_async::ClusterConnection;
use redis::cluster_routing::{RoutingInfo, SingleNodeRoutingInfo};

use super::commands::{Commands, GetFuture, SCAN_BATCH, bounded, set_command};
use super::redis::{ConfigError, Variables, as_url};
use super::{Store, StoreError, StoreValue};
use crate::key::{Key, Pattern, Tag};

/// The Redis Cluster store (feature `cluster`): one multiplexed connection per node, managed
/// by redis-rs's `cluster-async` client, which follows `MOVED` and `ASK` redirections and
/// refreshes the slot map by itself.
///
/// - Single-key commands go to the key's slot; `get_many` (`MGET`) and `delete_many`
///   (`UNLINK`) are split by slot by the client, so no `CROSSSLOT` error reaches a caller;
///   `set_many` sends one `SET` per key, concurrently.
/// - `delete_pattern` runs `SCAN` + `UNLINK` on **every primary** (found with `CLUSTER
///   NODES` when it starts), counting each key once.
/// - Every command is bounded by the command timeout, as on [`RedisStore`](super::RedisStore).
///
/// Keys built with [`KeyBuilder`](crate::key::KeyBuilder) escape `{` and `}` in user input,
/// so no user can pick the slot of a key.
///
/// ```no_run
/// use tower_caching::store::{RedisClusterConfig, RedisClusterStore};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let config = RedisClusterConfig::new(["127.0.0.1:7000", "127.0.0.1:7001", "127.0.0.1:7002"]);
/// let store = RedisClusterStore::connect(config).await?;
/// # let _ = store;
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct RedisClusterStore {
    commands: Commands<ClusterConnection>,
}

impl fmt::Debug for RedisClusterStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisClusterStore")
            .field("command_timeout", &self.commands.timeout)
            .finish_non_exhaustive()
    }
}

/// How to reach a Redis Cluster: seed nodes and credentials. `Debug` hides the password.
///
/// ```
/// use tower_caching::store::RedisClusterConfig;
/// let config = RedisClusterConfig::from_lookup(|name| match name {
///     "REDIS_CLUSTER_NODES" => Some("10.0.0.1:7000,10.0.0.2:7000".into()),
///     "REDIS_PASSWORD" => Some("pw".into()),
///     _ => None,
/// })?
/// .expect("REDIS_CLUSTER_NODES is set");
/// assert_eq!(config.nodes().len(), 2);
/// assert!(!format!("{config:?}").contains("pw\""));
/// # Ok::<(), tower_caching::store::ConfigError>(())
/// ```
#[derive(Clone)]
pub struct RedisClusterConfig {
    nodes: Vec<String>,
    username: Option<String>,
    password: Option<String>,
    connect_timeout: Duration,
    command_timeout: Duration,
}

impl fmt::Debug for RedisClusterConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisClusterConfig")
            .field("nodes", &self.nodes)
            .field("username", &self.username)
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .field("connect_timeout", &self.connect_timeout)
            .field("command_timeout", &self.command_timeout)
            .finish()
    }
}

impl RedisClusterConfig {
    /// Seed nodes, `host:port` or URLs; the client discovers the rest.
    ///
    /// ```
    /// use std::time::Duration;
    /// use tower_caching::store::RedisClusterConfig;
    ///
    /// let config = RedisClusterConfig::new(["10.0.0.1:7000", "redis://10.0.0.2:7000"])
    ///     .username("cache")
    ///     .password("s3cret")
    ///     .connect_timeout(Duration::from_secs(1))
    ///     .command_timeout(Duration::from_millis(50));
    /// assert_eq!(config.nodes(), ["redis://10.0.0.1:7000", "redis://10.0.0.2:7000"]);
    /// ```
    pub fn new<I: IntoIterator<Item = N>, N: Into<String>>(nodes: I) -> Self {
        RedisClusterConfig {
            nodes: nodes.into_iter().map(|node| as_url(node.into())).collect(),
            username: None,
            password: None,
            connect_timeout: Duration::from_secs(1),
            command_timeout: Duration::from_millis(50),
        }
    }

    /// `REDIS_CLUSTER_NODES` (`host:port,host:port,…`) with `REDIS_USERNAME`,
    /// `REDIS_PASSWORD`, `REDIS_CONNECT_TIMEOUT` and `REDIS_COMMAND_TIMEOUT`; `None` when
    /// `REDIS_CLUSTER_NODES` is not set. See [`from_lookup`](RedisClusterConfig::from_lookup)
    /// for an example.
    pub fn from_env() -> Result<Option<Self>, ConfigError> {
        Self::from_lookup(|name| std::env::var(name).ok())
    }

    /// [`RedisClusterConfig::from_env`] over any source of variables.
    ///
    /// ```
    /// use tower_caching::store::RedisClusterConfig;
    ///
    /// let env = |name: &str| (name == "REDIS_CLUSTER_NODES").then(|| "a:7000,b:7000".to_string());
    /// let config = RedisClusterConfig::from_lookup(env)?.expect("set");
    /// assert_eq!(config.nodes().len(), 2);
    /// assert!(RedisClusterConfig::from_lookup(|_| None)?.is_none());
    /// # Ok::<(), tower_caching::store::ConfigError>(())
    /// ```
    pub fn from_lookup(
        lookup: impl Fn(&str) -> Option<String>,
    ) -> Result<Option<Self>, ConfigError> {
        let env = Variables(lookup);
        let Some(nodes) = env.addresses("REDIS_CLUSTER_NODES") else {
            return Ok(None);
        };
        let mut config = RedisClusterConfig::new(nodes);
        config.username = env.text("REDIS_USERNAME");
        config.password = env.text("REDIS_PASSWORD");
        if let Some(timeout) = env.duration("REDIS_CONNECT_TIMEOUT")? {
            config.connect_timeout = timeout;
        }
        if let Some(timeout) = env.duration("REDIS_COMMAND_TIMEOUT")? {
            config.command_timeout = timeout;
        }
        Ok(Some(config))
    }

    /// The seed nodes, as URLs. See [`new`](RedisClusterConfig::new) for an example.
    pub fn nodes(&self) -> &[String] {
        &self.nodes
    }

    /// The ACL user name. See [`new`](RedisClusterConfig::new) for an example.
    pub fn username(mut self, username: impl Into<String>) -> Self {
        self.username = Some(username.into());
        self
    }

    /// The password. See [`new`](RedisClusterConfig::new) for an example.
    pub fn password(mut self, password: impl Into<String>) -> Self {
        self.password = Some(password.into());
        self
    }

    /// Bounds [`RedisClusterStore::connect`] and each node connection. Default 1 s. See
    /// [`new`](RedisClusterConfig::new) for an example.
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// Bounds every command. Default 50 ms. See [`new`](RedisClusterConfig::new) for an
    /// example.
    pub fn command_timeout(mut self, timeout: Duration) -> Self {
        self.command_timeout = timeout;
        self
    }

    fn client(&self) -> Result<ClusterClient, StoreError> {
        // redis-rs retries a failed cluster request up to 16 times, waiting up to minutes:
        // right for a database client, wrong for a cache that can ask the loader instead. A
        // short retry keeps MOVED/ASK and a failover's slot refresh working.
        let mut builder = ClusterClientBuilder::new(self.nodes.iter().map(String::as_str))
            .connection_timeout(self.connect_timeout)
            .response_timeout(self.command_timeout)
            .retries(2)
            .min_retry_wait(5)
            .max_retry_wait(100);
        if let Some(username) = &self.username {
            builder = builder.username(username);
        }
        if let Some(password) = &self.password {
            builder = builder.password(password);
        }
        builder.build().map_err(|e| StoreError::Connect {
            message: "invalid redis cluster configuration".into(),
            source: Some(Box::new(e)),
        })
    }
}

impl RedisClusterStore {
    /// A store on a cluster connection the application already has: every command of the
    /// store runs under `command_timeout`; the connection's own settings (retries, routing,
    /// credentials) are the caller's.
    ///
    /// ```no_run
    /// use std::time::Duration;
    /// use tower_caching::store::RedisClusterStore;
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let client = redis::cluster::ClusterClient::new(vec!["redis://127.0.0.1:7000"])?;
    /// let connection = client.get_async_connection().await?;
    /// let store = RedisClusterStore::with_connection(connection, Duration::from_millis(50));
    /// # let _ = store;
    /// # Ok(())
    /// # }
    /// ```
    pub fn with_connection(connection: ClusterConnection, command_timeout: Duration) -> Self {
        RedisClusterStore {
            commands: Commands::new(connection, command_timeout),
        }
    }

    /// Connects to the cluster, waiting at most the connect timeout.
    ///
    /// ```no_run
    /// use tower_caching::store::{RedisClusterConfig, RedisClusterStore};
    /// use tower_caching::Cache;
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let config = RedisClusterConfig::from_env()?.expect("REDIS_CLUSTER_NODES is set");
    /// let cache: Cache<String, _> = Cache::new(RedisClusterStore::connect(config).await?);
    /// # let _ = cache;
    /// # Ok(())
    /// # }
    /// ```
    pub async fn connect(config: RedisClusterConfig) -> Result<Self, StoreError> {
        let client = config.client()?;
        let connection =
            match tokio::time::timeout(config.connect_timeout, client.get_async_connection()).await
            {
                Ok(Ok(connection)) => connection,
                Ok(Err(e)) => {
                    return Err(StoreError::Connect {
                        message: "redis cluster refused".into(),
                        source: Some(Box::new(e)),
                    });
                }
                Err(_) => {
                    return Err(StoreError::Connect {
                        message: format!(
                            "no connection to the redis cluster within {:?}",
                            config.connect_timeout
                        ),
                        source: None,
                    });
                }
            };
        Ok(RedisClusterStore {
            commands: Commands::new(connection, config.command_timeout),
        })
    }

    /// The connection and its command timeout, for the durable write-behind queue.
    pub(crate) fn commands(&self) -> &Commands<ClusterConnection> {
        &self.commands
    }

    /// The primaries' addresses, from `CLUSTER NODES`.
    async fn primaries(&self) -> Result<Vec<(String, u16)>, StoreError> {
        let nodes: String = self
            .commands
            .run(
                "delete_pattern",
                &redis::cmd("CLUSTER").arg("NODES").to_owned(),
            )
            .await?;
        Ok(nodes
            .lines()
            .filter_map(|line| {
                let fields: Vec<&str> = line.split_whitespace().collect();
                let flags = fields.get(2)?;
                if !flags.contains("master") || flags.contains("fail") {
                    return None;
                }
                let address = fields.get(1)?.split('@').next()?;
                let (host, port) = address.rsplit_once(':')?;
                Some((host.to_owned(), port.parse().ok()?))
            })
            .collect())
    }

    async fn scan_node(
        &self,
        host: &str,
        port: u16,
        cursor: u64,
        pattern: &Pattern,
    ) -> Result<(u64, Vec<Vec<u8>>), StoreError> {
        let mut scan = redis::cmd("SCAN");
        scan.arg(cursor)
            .arg("MATCH")
            .arg(pattern.as_str())
            .arg("COUNT")
            .arg(SCAN_BATCH);
        let routing = RoutingInfo::SingleNode(SingleNodeRoutingInfo::ByAddress {
            host: host.to_owned(),
            port,
        });
        let mut connection = self.commands.connection.clone();
        let reply = bounded(
            "delete_pattern",
            self.commands.timeout,
            connection.route_command(scan, routing),
        )
        .await?;
        redis::from_redis_value(reply).map_err(|e| StoreError::Backend {
            operation: "delete_pattern",
            source: Box::new(e),
        })
    }
}

impl Store for RedisClusterStore {
    type GetFuture = GetFuture;

    fn get(&self, key: &Key) -> Self::GetFuture {
        self.commands.get(key)
    }

    async fn get_many(&self, keys: &[Key]) -> Result<Vec<Option<StoreValue>>, StoreError> {
        // The client splits MGET by slot.
        self.commands.get_many(keys).await
    }

    async fn set(
        &self,
        key: &Key,
        value: StoreValue,
        ttl: Option<Duration>,
    ) -> Result<(), StoreError> {
        self.commands.set(key, value, ttl).await
    }

    async fn set_many(
        &self,
        entries: Vec<(Key, StoreValue, Option<Duration>)>,
    ) -> Result<(), StoreError> {
        // One SET per key: the connection pipelines them, each to its slot's node.
        let commands: Vec<redis::Cmd> = entries
            .iter()
            .map(|(key, value, ttl)| set_command(key, value, *ttl))
            .collect();
        let sets = commands
            .iter()
            .map(|command| self.commands.run::<()>("set_many", command));
        futures_util::future::join_all(sets)
            .await
            .into_iter()
            .collect()
    }

    async fn delete(&self, key: &Key) -> Result<bool, StoreError> {
        self.commands.delete(key).await
    }

    async fn delete_many(&self, keys: &[Key]) -> Result<u64, StoreError> {
        // The client splits UNLINK by slot.
        self.commands.delete_many(keys).await
    }

    async fn delete_pattern(&self, pattern: &Pattern) -> Result<u64, StoreError> {
        let mut deleted = 0;
        for (host, port) in self.primaries().await? {
            let mut cursor = 0;
            loop {
                let (next, keys) = self.scan_node(&host, port, cursor, pattern).await?;
                if !keys.is_empty() {
                    let mut unlink = redis::cmd("UNLINK");
                    for key in &keys {
                        unlink.arg(key.as_slice());
                    }
                    // UNLINK counts only keys it removed: a key met twice (a slot that
                    // moved during the scan) is counted once.
                    deleted += self.commands.run::<u64>("delete_pattern", &unlink).await?;
                }
                if next == 0 {
                    break;
                }
                cursor = next;
            }
        }
        Ok(deleted)
    }

    async fn exists(&self, key: &Key) -> Result<bool, StoreError> {
        self.commands.exists(key).await
    }

    async fn set_tagged(
        &self,
        key: &Key,
        value: StoreValue,
        ttl: Option<Duration>,
        tags: &[Tag],
    ) -> Result<(), StoreError> {
        self.commands.set_tagged(key, value, ttl, tags).await
    }

    async fn invalidate_tag(&self, tag: &Tag) -> Result<u64, StoreError> {
        self.commands.invalidate_tag(tag).await.1
    }
}
