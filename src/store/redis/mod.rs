use std::fmt;
use std::time::Duration;

use redis::aio::ConnectionManager;

mod batch;
mod config;
mod connection;
mod landings;
mod sentinel;

use self::config::redact_url;
pub use self::config::{ConfigError, RedisConfig};
#[cfg(feature = "cluster")]
pub(super) use self::config::{Variables, as_url};
pub use self::connection::RedisConnection;
use self::landings::{CHANNEL, Landings, Source};
pub use self::sentinel::SentinelConfig;
use self::sentinel::SentinelConnection;
use super::commands::{
    Commands, GetFuture, SCAN_BATCH, lease_acquire_command, lease_key, lease_put_command,
    lease_release_command, lease_renew_command, set_command, tagged_set_command,
};
use super::lease::{Acquired, LeaseBackend, LeaseFuture, SharedLeases, Watch};
use super::{Store, StoreError, StoreValue};
use crate::key::{Key, Pattern, Tag};

/// The Redis store: one auto-reconnecting multiplexed connection (redis-rs
/// [`ConnectionManager`]) shared by every clone, on which concurrent commands are pipelined.
///
/// Every command is bounded by the [command timeout](RedisConfig::command_timeout): a hung or
/// unreachable Redis yields [`StoreError::Timeout`], never a hung caller. After a lost
/// connection the next command reconnects in the background, with exponential backoff.
///
/// Pattern deletes walk the keyspace with `SCAN` and remove each batch with one `UNLINK`,
/// pipelined with the next `SCAN` step (never `KEYS`, which blocks the server).
///
/// ```no_run
/// use tower_caching::store::{RedisConfig, RedisStore};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let store = RedisStore::connect(RedisConfig::from_env()?).await?;
/// # let _ = store;
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct RedisStore {
    commands: Commands<RedisConnection>,
    /// Sends concurrent lookups together, when asked to ([`RedisStore::batch_lookups`]).
    batcher: Option<std::sync::Arc<self::batch::Batcher>>,
    /// Wakes this instance's waiters for keys whose lease another instance holds.
    landings: std::sync::Arc<self::landings::Landings>,
}

/// How many lookup commands (`GET` or `MGET`) a [`RedisStore::batch_lookups`] store has out
/// at once before further lookups wait to leave together.
const LOOKUPS_OUT: usize = 4;

/// The most keys one batched `MGET` asks for ([`RedisStore::batch_lookups`]).
const LOOKUP_BATCH: usize = 512;

impl fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisStore")
            .field("connection", &self.commands.connection)
            .field("command_timeout", &self.commands.timeout)
            .finish_non_exhaustive()
    }
}

impl RedisStore {
    /// Connects, waiting at most the connect timeout for the first connection. A dead
    /// address is a [`StoreError::Connect`] within that time.
    ///
    /// ```
    /// use std::time::Duration;
    /// use tower_caching::store::{RedisConfig, RedisStore, StoreError};
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// // Port 1 on loopback: nothing listens there.
    /// let config = RedisConfig::new("127.0.0.1:1").connect_timeout(Duration::from_millis(200));
    /// let error = RedisStore::connect(config).await.unwrap_err();
    /// assert!(matches!(error, StoreError::Connect { .. }));
    /// # }
    /// ```
    pub async fn connect(config: RedisConfig) -> Result<Self, StoreError> {
        let client = config.client()?;
        let client_for_landings = client.clone();
        let connect = ConnectionManager::new_with_config(client, config.manager_config());
        let connection = match tokio::time::timeout(config.connect_timeout, connect).await {
            Ok(Ok(connection)) => connection,
            Ok(Err(e)) => {
                return Err(StoreError::Connect {
                    message: format!("redis at {} refused", redact_url(&config.url)),
                    source: Some(Box::new(e)),
                });
            }
            Err(_) => {
                return Err(StoreError::Connect {
                    message: format!(
                        "no connection to redis at {} within {:?}",
                        redact_url(&config.url),
                        config.connect_timeout
                    ),
                    source: None,
                });
            }
        };
        Ok(RedisStore {
            commands: Commands::new(RedisConnection::direct(connection), config.command_timeout),
            batcher: None,
            landings: Landings::new(Source::Fixed(Box::new(client_for_landings))),
        })
    }

    /// A store on the primary that Redis Sentinels manage, following it through failovers:
    /// asks the sentinels for the primary (the first that answers; the node must confirm
    /// with `ROLE`), connects within the connect timeout, then keeps following it from a
    /// background task that stops when the last clone of the store is dropped.
    ///
    /// The store moves to the new primary when a sentinel announces `+switch-master`, when
    /// a command finds the connection gone or the node demoted (`READONLY`), and at each
    /// [check interval](SentinelConfig::check_interval). Meanwhile commands fail at once
    /// with [`StoreError::Backend`], which the layers answer from their loader (behind a
    /// [`CircuitBreaker`](crate::store::CircuitBreaker), without even trying). Everything
    /// else is as on a single node: one multiplexed connection, every command bounded by
    /// the command timeout.
    ///
    /// ```no_run
    /// use tower_caching::store::{RedisStore, SentinelConfig};
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let config = SentinelConfig::new(["10.0.0.1:26379", "10.0.0.2:26379"], "cache");
    /// let store = RedisStore::connect_sentinel(config).await?;
    /// # let _ = store;
    /// # Ok(())
    /// # }
    /// ```
    ///
    /// No sentinel answering within the connect timeout is a [`StoreError::Connect`]:
    ///
    /// ```
    /// use std::time::Duration;
    /// use tower_caching::store::{RedisStore, SentinelConfig, StoreError};
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// let config = SentinelConfig::new(["127.0.0.1:1"], "cache")
    ///     .connect_timeout(Duration::from_millis(200));
    /// let error = RedisStore::connect_sentinel(config).await.unwrap_err();
    /// assert!(matches!(error, StoreError::Connect { .. }));
    /// # }
    /// ```
    pub async fn connect_sentinel(config: SentinelConfig) -> Result<Self, StoreError> {
        let command_timeout = config.command_timeout;
        let connection = SentinelConnection::connect(config).await?;
        Ok(RedisStore {
            commands: Commands::new(RedisConnection::sentinel(connection), command_timeout),
            batcher: None,
            landings: Landings::new(Source::Primary),
        })
    }

    /// [`RedisStore::connect_sentinel`] without waiting, so a service can start while the
    /// sentinels or the primary are down: the store looks for the primary in the
    /// background, and until it has one every command fails at once. Only an empty list of
    /// sentinels is an error here. Must be called within a Tokio runtime.
    ///
    /// ```
    /// use std::time::Duration;
    /// use tower_caching::store::{RedisStore, SentinelConfig, Store};
    /// use tower_caching::Key;
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// // Nothing listens on port 1: the store starts anyway.
    /// let store = RedisStore::connect_sentinel_lazy(SentinelConfig::new(["127.0.0.1:1"], "cache"))?;
    /// assert!(store.get(&Key::new("k")?).await.is_err()); // a typed error, at once
    /// # Ok(())
    /// # }
    /// ```
    pub fn connect_sentinel_lazy(config: SentinelConfig) -> Result<Self, StoreError> {
        let command_timeout = config.command_timeout;
        let connection = SentinelConnection::connect_lazy(config)?;
        Ok(RedisStore {
            commands: Commands::new(RedisConnection::sentinel(connection), command_timeout),
            batcher: None,
            landings: Landings::new(Source::Primary),
        })
    }

    /// A store on a connection the application already has (a `ConnectionManager` shared
    /// with its own Redis code): every command of the store runs under `command_timeout`
    /// (the store's own default is 50 ms). The connection's own settings — retries,
    /// response timeout, TLS, credentials — are the caller's.
    ///
    /// ```no_run
    /// use std::time::Duration;
    /// use tower_caching::store::RedisStore;
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let client = redis::Client::open("redis://127.0.0.1:6379")?;
    /// let connection = redis::aio::ConnectionManager::new(client).await?;
    /// let store = RedisStore::with_connection(connection.clone(), Duration::from_millis(50));
    /// # let _ = store;
    /// # Ok(())
    /// # }
    /// ```
    pub fn with_connection(connection: ConnectionManager, command_timeout: Duration) -> Self {
        RedisStore {
            commands: Commands::new(RedisConnection::direct(connection), command_timeout),
            batcher: None,
            landings: Landings::new(Source::None),
        }
    }

    /// A store on a `redis::Client` the application already has: connects (within
    /// `connect_timeout`) a connection manager of its own, whose commands run under
    /// `command_timeout`.
    ///
    /// ```no_run
    /// use std::time::Duration;
    /// use tower_caching::store::RedisStore;
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let client = redis::Client::open("redis://127.0.0.1:6379")?;
    /// let store =
    ///     RedisStore::from_client(client, Duration::from_secs(1), Duration::from_millis(50)).await?;
    /// # let _ = store;
    /// # Ok(())
    /// # }
    /// ```
    pub async fn from_client(
        client: redis::Client,
        connect_timeout: Duration,
        command_timeout: Duration,
    ) -> Result<Self, StoreError> {
        // As `connect` does: no response timeout of redis-rs's own (500 ms by default), which
        // would cut every command short of a longer `command_timeout`.
        let config = redis::aio::ConnectionManagerConfig::new()
            .set_connection_timeout(Some(connect_timeout))
            .set_response_timeout(None);
        let connect = ConnectionManager::new_with_config(client, config);
        match tokio::time::timeout(connect_timeout, connect).await {
            Ok(Ok(connection)) => Ok(Self::with_connection(connection, command_timeout)),
            Ok(Err(e)) => Err(StoreError::Connect {
                message: "redis refused the client's connection".into(),
                source: Some(Box::new(e)),
            }),
            Err(_) => Err(StoreError::Connect {
                message: format!("redis did not answer within {connect_timeout:?}"),
                source: None,
            }),
        }
    }

    /// A store that connects on first use, so a service can start while Redis is down:
    /// until Redis answers, every command fails within the command timeout. Only an invalid
    /// address is an error here. Must be called within a Tokio runtime.
    ///
    /// ```
    /// use std::time::Duration;
    /// use tower_caching::store::{RedisConfig, RedisStore, Store};
    /// use tower_caching::Key;
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let config = RedisConfig::new("127.0.0.1:1").command_timeout(Duration::from_millis(50));
    /// let store = RedisStore::connect_lazy(config)?; // starts although nothing listens
    /// assert!(store.get(&Key::new("k")?).await.is_err()); // a typed error, in time
    /// # Ok(())
    /// # }
    /// ```
    pub fn connect_lazy(config: RedisConfig) -> Result<Self, StoreError> {
        let client = config.client()?;
        let client_for_landings = client.clone();
        let connection = ConnectionManager::new_lazy_with_config(client, config.manager_config())
            .map_err(|e| StoreError::Connect {
            message: "cannot create the redis connection manager".into(),
            source: Some(Box::new(e)),
        })?;
        Ok(RedisStore {
            commands: Commands::new(RedisConnection::direct(connection), config.command_timeout),
            batcher: None,
            landings: Landings::new(Source::Fixed(Box::new(client_for_landings))),
        })
    }
}

impl RedisStore {
    /// Sends lookups that run at once together: while 4 lookup commands of this store are
    /// out, further lookups join the next batch, which a task sends as one `MGET` (of up to
    /// 512 keys; more make more `MGET`s) as soon as the runtime gets to it — so every lookup
    /// made in the same turn of the runtime leaves in it. One lookup at a time is a `GET` as
    /// before, sent at once; hundreds at once cost the client and Redis a command per batch
    /// instead of one each (`benches/hit_path.rs`, `batched/N`). Clones share the batching;
    /// call it before cloning the store into layers.
    ///
    /// A waiting lookup is bounded by the command timeout like any other; one that is
    /// dropped or times out before its batch leaves is not sent. A batch that fails or times
    /// out fails each of its lookups (a miss for the layers), and after a timeout each of its
    /// keys is inspected for an oversized value as a timed-out `GET`'s is. A key holding
    /// something other than a string is rejected by a `GET` and absent to an `MGET`: a miss
    /// for the layers either way.
    ///
    /// ```no_run
    /// use tower_caching::store::{RedisConfig, RedisStore};
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let store = RedisStore::connect(RedisConfig::new("127.0.0.1:6379"))
    ///     .await?
    ///     .batch_lookups();
    /// # let _ = store;
    /// # Ok(())
    /// # }
    /// ```
    pub fn batch_lookups(mut self) -> Self {
        let batching = self::batch::Batching {
            in_flight: LOOKUPS_OUT,
            max_keys: LOOKUP_BATCH,
        };
        self.batcher = Some(self::batch::Batcher::new(batching, self.commands.clone()));
        self
    }

    /// The connection and its command timeout, for the durable write-behind queue.
    pub(crate) fn commands(&self) -> &Commands<RedisConnection> {
        &self.commands
    }

    /// [`Store::invalidate_tag`], also naming the keys it deleted (for the tiered store's
    /// backplane).
    pub(super) async fn invalidate_tag_keys(
        &self,
        tag: &Tag,
    ) -> (Vec<Key>, Result<u64, StoreError>) {
        self.commands.invalidate_tag_on_one_node(tag).await
    }

    /// A client of the primary a Sentinel-following store is on now (the tiered store's
    /// subscriber follows it too); `None` on a single node.
    pub(super) fn primary_client(&self) -> Option<redis::Client> {
        self.commands.connection.primary_client()
    }

    pub(super) fn follows_sentinels(&self) -> bool {
        self.commands.connection.follows_sentinels()
    }

    /// Publishes `message` on `channel` (the tiered store's backplane).
    pub(super) async fn publish(&self, channel: &str, message: &str) -> Result<(), StoreError> {
        let mut command = redis::cmd("PUBLISH");
        command.arg(channel).arg(message);
        self.commands
            .run::<u64>("publish", &command)
            .await
            .map(|_| ())
    }
}

/// One `SCAN` step that unlinks what it found, on a single node (the keys are found inside
/// the script; a cluster scans each node itself). `ARGV[1]` cursor, `ARGV[2]` pattern,
/// `ARGV[3]` count. Replies `{next cursor, unlinked}`. `UNLINK`s in chunks, as Lua's
/// `unpack` takes a bounded number of values and a step may find more than its count.
const SCAN_UNLINK: &str = r#"
local step = redis.call('SCAN', ARGV[1], 'MATCH', ARGV[2], 'COUNT', ARGV[3])
local found, unlinked = step[2], 0
for i = 1, #found, 1000 do
  unlinked = unlinked + redis.call('UNLINK', unpack(found, i, math.min(i + 999, #found)))
end
return {step[1], unlinked}
"#;

impl Store for RedisStore {
    type GetFuture = GetFuture;

    fn get(&self, key: &Key) -> Self::GetFuture {
        match &self.batcher {
            Some(batcher) => batcher.get(key),
            None => self.commands.get(key),
        }
    }

    async fn get_many(&self, keys: &[Key]) -> Result<Vec<Option<StoreValue>>, StoreError> {
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
        if entries.is_empty() {
            return Ok(());
        }
        let mut pipeline = redis::pipe();
        for (key, value, ttl) in &entries {
            pipeline.add_command(set_command(key, value, *ttl)).ignore();
        }
        self.commands
            .run_pipeline::<()>("set_many", &pipeline)
            .await
    }

    // A delete voids the keys' shared leases too, in the same round trip: a load on another
    // instance that read the old value (before the write this delete follows) must not
    // store it.
    async fn delete(&self, key: &Key) -> Result<bool, StoreError> {
        self.delete_many(std::slice::from_ref(key))
            .await
            .map(|deleted| deleted > 0)
    }

    async fn delete_many(&self, keys: &[Key]) -> Result<u64, StoreError> {
        if keys.is_empty() {
            return Ok(0);
        }
        let mut unlink = redis::pipe();
        unlink.cmd("UNLINK");
        for key in keys {
            unlink.arg(key.as_str());
        }
        unlink.cmd("UNLINK").ignore();
        for key in keys {
            unlink.arg(lease_key(key));
        }
        let (deleted,): (u64,) = self.commands.run_pipeline("delete", &unlink).await?;
        Ok(deleted)
    }

    async fn delete_pattern(&self, pattern: &Pattern) -> Result<u64, StoreError> {
        // One round trip per SCAN step, which unlinks what the step found: a keyspace that
        // one step covers costs one round trip.
        let mut step = redis::cmd("EVAL");
        step.arg(SCAN_UNLINK)
            .arg(0)
            .arg(0)
            .arg(pattern.as_str())
            .arg(SCAN_BATCH);
        let mut deleted = 0;
        // Bounded, like every loop over the keyspace; SCAN ends in as many steps as it has
        // buckets to visit, far fewer than this.
        for _ in 0..10_000_000u64 {
            let (cursor, unlinked): (String, u64) =
                self.commands.run("delete_pattern", &step).await?;
            deleted += unlinked;
            if cursor == "0" {
                break;
            }
            step = redis::cmd("EVAL");
            step.arg(SCAN_UNLINK)
                .arg(0)
                .arg(cursor)
                .arg(pattern.as_str())
                .arg(SCAN_BATCH);
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
        // One script, one round trip: the filings, then the value.
        self.commands
            .run::<()>("set_tagged", &tagged_set_command(key, &value, ttl, tags))
            .await
    }

    async fn invalidate_tag(&self, tag: &Tag) -> Result<u64, StoreError> {
        self.commands.invalidate_tag_on_one_node(tag).await.1
    }

    fn shared_leases(&self) -> Option<SharedLeases> {
        Some(SharedLeases(std::sync::Arc::new(self.clone())))
    }
}

impl LeaseBackend for RedisStore {
    fn watch(&self, key: &Key) -> Box<dyn Watch> {
        Box::new(
            self.landings
                .interest(key.as_str(), &self.commands.connection),
        )
    }

    fn acquire<'a>(
        &'a self,
        key: &'a Key,
        token: &'a str,
        ttl: Duration,
    ) -> LeaseFuture<'a, Acquired> {
        Box::pin(async move {
            let reply: u8 = self
                .commands
                .run("lease", &lease_acquire_command(key, token, ttl))
                .await?;
            Ok(match reply {
                1 => Acquired::Held,
                2 => Acquired::Landed,
                _ => Acquired::Busy,
            })
        })
    }

    fn renew<'a>(&'a self, key: &'a Key, token: &'a str, ttl: Duration) -> LeaseFuture<'a, bool> {
        Box::pin(async move {
            let held: u64 = self
                .commands
                .run("lease", &lease_renew_command(key, token, ttl))
                .await?;
            Ok(held == 1)
        })
    }

    fn release<'a>(&'a self, key: &'a Key, token: &'a str) -> LeaseFuture<'a, ()> {
        Box::pin(async move {
            self.commands
                .run("lease", &lease_release_command(key, token, CHANNEL))
                .await
        })
    }

    fn put_fenced<'a>(
        &'a self,
        key: &'a Key,
        token: &'a str,
        value: StoreValue,
        ttl: Option<Duration>,
        tags: &'a [Tag],
    ) -> LeaseFuture<'a, bool> {
        Box::pin(async move {
            let stored: u64 = self
                .commands
                .run(
                    "set",
                    &lease_put_command(key, token, &value, ttl, tags, CHANNEL),
                )
                .await?;
            Ok(stored == 1)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_are_redacted() {
        assert_eq!(
            redact_url("redis://user:pw@host:1/0"),
            "redis://user:<redacted>@host:1/0"
        );
        assert_eq!(
            redact_url("redis://:pw@host:1"),
            "redis://:<redacted>@host:1"
        );
        assert_eq!(redact_url("redis://host:1"), "redis://host:1");
    }
}
