//! The commands both Redis stores send, over any redis-rs connection, each bounded by the
//! command timeout.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use redis::RedisError;
use redis::aio::ConnectionLike;

use super::{StoreError, StoreValue};
use crate::frame::millis;
use crate::key::{Key, Tag};

/// A string this large that could not be read within the command timeout is removed (the
/// cache's default value limit: such a value can only come from other software).
pub(super) const OVERSIZED: usize = crate::cache::DEFAULT_MAX_VALUE_SIZE;

/// How many oversized-value inspections run at once, per store.
const INSPECTIONS: usize = 4;

/// The keys of one store whose `GET` timed out, being looked at
/// ([`Commands::inspect_after_timeout`]); reads of them are rejected meanwhile.
#[derive(Default)]
struct Inspections {
    keys: Mutex<Vec<Vec<u8>>>,
    /// How many: read by every `GET`, so that the hit path pays one load while there are
    /// none.
    count: AtomicUsize,
}

impl Inspections {
    fn start(self: &Arc<Self>, key: &[u8]) -> Option<Inspection> {
        let mut keys = self.keys.lock().unwrap_or_else(|e| e.into_inner());
        if keys.len() >= INSPECTIONS || keys.iter().any(|k| k == key) {
            return None;
        }
        keys.push(key.to_vec());
        self.count.store(keys.len(), Ordering::Release);
        Some(Inspection {
            inspections: self.clone(),
            key: key.to_vec(),
        })
    }

    /// Whether reads of `key` are rejected: its value is being looked at.
    fn cover(&self, key: &Key) -> bool {
        self.count.load(Ordering::Acquire) > 0
            && self
                .keys
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .iter()
                .any(|k| k == key.as_str().as_bytes())
    }
}

/// One key under inspection, registered while it lives.
struct Inspection {
    inspections: Arc<Inspections>,
    key: Vec<u8>,
}

impl Drop for Inspection {
    fn drop(&mut self) {
        let mut keys = self
            .inspections
            .keys
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        keys.retain(|k| *k != self.key);
        self.inspections.count.store(keys.len(), Ordering::Release);
    }
}

/// How many keys one `SCAN` step asks for, and so how many one `UNLINK` removes at most.
pub(super) const SCAN_BATCH: usize = 1000;

/// The future of a Redis `GET`: redis-rs's futures are unnameable, and the box costs a few
/// tens of nanoseconds against a network round trip (see benches/store.rs).
pub(super) type GetFuture =
    Pin<Box<dyn Future<Output = Result<Option<StoreValue>, StoreError>> + Send + 'static>>;

/// A connection and the timeout every command through it gets.
#[derive(Clone)]
pub(crate) struct Commands<C> {
    pub(crate) connection: C,
    pub(crate) timeout: Duration,
    /// The keys of this store whose `GET` timed out, being looked at.
    inspections: Arc<Inspections>,
}

impl<C> Commands<C> {
    pub(crate) fn new(connection: C, timeout: Duration) -> Self {
        Commands {
            connection,
            timeout,
            inspections: Arc::default(),
        }
    }
}

/// Runs `future`, turning a timeout or an error into a [`StoreError`].
pub(super) async fn bounded<T>(
    operation: &'static str,
    timeout: Duration,
    future: impl Future<Output = Result<T, RedisError>>,
) -> Result<T, StoreError> {
    match tokio::time::timeout(timeout, future).await {
        Ok(Ok(value)) => Ok(value),
        Ok(Err(e)) if e.is_timeout() => Err(StoreError::Timeout { operation, timeout }),
        Ok(Err(e)) if rejects_one_command(&e) => Err(StoreError::Rejected {
            operation,
            source: Box::new(e),
        }),
        Ok(Err(e)) => Err(StoreError::Backend {
            operation,
            source: Box::new(e),
        }),
        Err(_) => Err(StoreError::Timeout { operation, timeout }),
    }
}

/// Whether Redis answered but refused this command only: a value of another type at the
/// key, a full server, or a reply this crate cannot read as what it asked for.
pub(super) fn rejects_one_command(error: &RedisError) -> bool {
    matches!(error.code(), Some("WRONGTYPE" | "OOM"))
        || error.kind() == redis::ErrorKind::UnexpectedReturnType
}

/// A Lua function that files a key in a tag's index, a sorted set scored by each member's
/// expiry (ms since the epoch, `+inf` for none). Members already expired are pruned first,
/// and the index expires a second after its last member: the bookkeeping never outlives its
/// entries.
macro_rules! file_function {
    () => {
        r#"
local function file(index, member, ttl)
  local now = redis.call('TIME')
  local now_ms = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000)
  redis.call('ZREMRANGEBYSCORE', index, '-inf', now_ms)
  if ttl == '' then
    redis.call('ZADD', index, '+inf', member)
  else
    redis.call('ZADD', index, now_ms + tonumber(ttl), member)
  end
  local last = redis.call('ZRANGE', index, -1, -1, 'WITHSCORES')
  if last[2] == 'inf' then
    redis.call('PERSIST', index)
  else
    redis.call('PEXPIREAT', index, math.ceil(tonumber(last[2])) + 1000)
  end
end
"#
    };
}

/// Files a key under one tag. `KEYS[1]` index, `ARGV[1]` member, `ARGV[2]` TTL in ms or
/// empty.
#[cfg(feature = "cluster")]
const TAG_ADD: &str = concat!(file_function!(), "file(KEYS[1], ARGV[1], ARGV[2])");

/// Files a key under every tag, then stores it — in one round trip, and never stored when
/// a filing failed. `KEYS[1]` the key, `KEYS[2..]` indexes; `ARGV[1]` value, `ARGV[2]` TTL
/// in ms or empty. For a single node: the keys may lie in different slots.
const TAG_SET: &str = concat!(
    file_function!(),
    r#"
for i = 2, #KEYS do
  file(KEYS[i], KEYS[1], ARGV[2])
end
if ARGV[2] == '' then
  redis.call('SET', KEYS[1], ARGV[1])
else
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
end
"#
);

/// Removes the given members from a tag's index, each only if its score (expiry) is still
/// the one read: a key filed again meanwhile stays filed. `KEYS[1]` index, `ARGV` pairs of
/// member and score.
#[cfg(feature = "cluster")]
const TAG_UNFILE: &str = r#"
for i = 1, #ARGV, 2 do
  local score = redis.call('ZSCORE', KEYS[1], ARGV[i])
  if score and score == ARGV[i + 1] then
    redis.call('ZREM', KEYS[1], ARGV[i])
  end
end
"#;

/// Removes one batch of the keys filed under a tag, on a single node: reads the first
/// `ARGV[1]` members of the index, deletes their keys and unfiles them, at once — so a
/// failure leaves the batch both stored and filed, and nothing can be filed in between.
/// The keys' shared leases are voided with them (a load that read the old value must not
/// store it). `KEYS[1]` index, `ARGV[1]` batch size, `ARGV[2]` the lease keys' prefix.
/// Replies `{deleted, left, members}`. The keys it deletes are not
/// declared (they are only known inside the script): a single node allows that; a cluster,
/// where they may live on other nodes, does not, and uses [`Commands::invalidate_tag`].
const TAG_INVALIDATE: &str = r#"
local batch = redis.call('ZRANGE', KEYS[1], 0, tonumber(ARGV[1]) - 1)
if #batch == 0 then
  return {0, 0, {}}
end
local deleted = redis.call('UNLINK', unpack(batch))
local leases = {}
for i = 1, #batch do
  leases[i] = ARGV[2] .. batch[i]
end
redis.call('UNLINK', unpack(leases))
redis.call('ZREMRANGEBYRANK', KEYS[1], 0, #batch - 1)
return {deleted, redis.call('ZCARD', KEYS[1]), batch}
"#;

/// What the key of a lease shared between instances starts with.
const LEASE_PREFIX: &str = "tower-caching:lease:";

/// The key of `key`'s lease shared between instances.
pub(super) fn lease_key(key: &Key) -> String {
    format!("{LEASE_PREFIX}{}", key.as_str())
}

/// Extends a lease its holder still holds. `KEYS[1]` lease, `ARGV[1]` token, `ARGV[2]` TTL
/// in ms.
const LEASE_RENEW: &str = r#"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
"#;

/// Gives a lease up if its holder still holds it, and tells the waiters. `KEYS[1]` lease,
/// `ARGV[1]` token, `ARGV[2]` the key, `ARGV[3]` the waiters' channel.
const LEASE_RELEASE: &str = r#"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('DEL', KEYS[1])
  redis.call('PUBLISH', ARGV[3], ARGV[2])
end
"#;

/// Stores a loaded value and gives its lease up, only if the lease is still the holder's
/// and the key still absent (a write landed meanwhile is newer), and tells the waiters.
/// `KEYS[1]` lease, `KEYS[2]` the key, `KEYS[3..]` tag indexes; `ARGV[1]` token, `ARGV[2]`
/// value, `ARGV[3]` TTL in ms or empty, `ARGV[4]` the waiters' channel. Replies 1 if stored.
const LEASE_PUT: &str = concat!(
    file_function!(),
    r#"
if redis.call('GET', KEYS[1]) ~= ARGV[1] then
  return 0
end
redis.call('DEL', KEYS[1])
local stored = 0
if redis.call('EXISTS', KEYS[2]) == 0 then
  for i = 3, #KEYS do
    file(KEYS[i], KEYS[2], ARGV[3])
  end
  if ARGV[3] == '' then
    redis.call('SET', KEYS[2], ARGV[2])
  else
    redis.call('SET', KEYS[2], ARGV[2], 'PX', ARGV[3])
  end
  stored = 1
end
redis.call('PUBLISH', ARGV[4], KEYS[2])
return stored
"#
);

/// Takes a lease, unless another holder has it (replies 0) or the key holds a value by now
/// (replies 2: a holder stored it since the caller's miss, and loading again would be a
/// second load). `KEYS[1]` lease, `KEYS[2]` the key; `ARGV[1]` token, `ARGV[2]` TTL in ms.
const LEASE_ACQUIRE: &str = r#"
if redis.call('EXISTS', KEYS[2]) == 1 then
  return 2
end
if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then
  return 1
end
return 0
"#;

/// The lease commands, for a single node.
pub(super) fn lease_acquire_command(key: &Key, token: &str, ttl: Duration) -> redis::Cmd {
    let mut command = redis::cmd("EVAL");
    command
        .arg(LEASE_ACQUIRE)
        .arg(2)
        .arg(lease_key(key))
        .arg(key.as_str())
        .arg(token)
        .arg(ttl_millis(ttl));
    command
}

pub(super) fn lease_renew_command(key: &Key, token: &str, ttl: Duration) -> redis::Cmd {
    let mut command = redis::cmd("EVAL");
    command
        .arg(LEASE_RENEW)
        .arg(1)
        .arg(lease_key(key))
        .arg(token)
        .arg(ttl_millis(ttl));
    command
}

pub(super) fn lease_release_command(key: &Key, token: &str, channel: &str) -> redis::Cmd {
    let mut command = redis::cmd("EVAL");
    command
        .arg(LEASE_RELEASE)
        .arg(1)
        .arg(lease_key(key))
        .arg(token)
        .arg(key.as_str())
        .arg(channel);
    command
}

pub(super) fn lease_put_command(
    key: &Key,
    token: &str,
    value: &StoreValue,
    ttl: Option<Duration>,
    tags: &[Tag],
    channel: &str,
) -> redis::Cmd {
    let mut command = redis::cmd("EVAL");
    command
        .arg(LEASE_PUT)
        .arg(2 + tags.len())
        .arg(lease_key(key))
        .arg(key.as_str());
    for tag in tags {
        command.arg(tag.index_key().as_str());
    }
    command
        .arg(token)
        .arg(value.bytes().as_ref())
        .arg(script_ttl(ttl))
        .arg(channel);
    command
}

/// A TTL in milliseconds as Redis takes it: at least one (`PX 0` is an error).
fn ttl_millis(ttl: Duration) -> u64 {
    millis(crate::frame::clamp_ttl(ttl)).max(1)
}

/// A TTL as the tag scripts take it: milliseconds, or empty for none.
fn script_ttl(ttl: Option<Duration>) -> String {
    ttl.map_or(String::new(), |ttl| ttl_millis(ttl).to_string())
}

/// The script that files `key` under every tag of `tags` and stores `value`, for a single
/// node.
pub(super) fn tagged_set_command(
    key: &Key,
    value: &StoreValue,
    ttl: Option<Duration>,
    tags: &[Tag],
) -> redis::Cmd {
    let mut command = redis::cmd("EVAL");
    command.arg(TAG_SET).arg(1 + tags.len()).arg(key.as_str());
    for tag in tags {
        command.arg(tag.index_key().as_str());
    }
    command.arg(value.bytes().as_ref()).arg(script_ttl(ttl));
    command
}

/// `SET key value [PX ttl]`.
pub(super) fn set_command(key: &Key, value: &StoreValue, ttl: Option<Duration>) -> redis::Cmd {
    let mut command = redis::cmd("SET");
    command.arg(key.as_str()).arg(value.bytes().as_ref());
    if let Some(ttl) = ttl {
        command.arg("PX").arg(ttl_millis(ttl));
    }
    command
}

/// One command naming every key of `keys`.
fn multi_key(name: &str, keys: &[Key]) -> redis::Cmd {
    let mut command = redis::cmd(name);
    for key in keys {
        command.arg(key.as_str());
    }
    command
}

impl<C: ConnectionLike + Clone + Send + Sync + 'static> Commands<C> {
    pub(crate) async fn run<T: redis::FromRedisValue>(
        &self,
        operation: &'static str,
        command: &redis::Cmd,
    ) -> Result<T, StoreError> {
        let mut connection = self.connection.clone();
        bounded(
            operation,
            self.timeout,
            command.query_async(&mut connection),
        )
        .await
    }

    pub(crate) async fn run_pipeline<T: redis::FromRedisValue>(
        &self,
        operation: &'static str,
        pipeline: &redis::Pipeline,
    ) -> Result<T, StoreError> {
        let mut connection = self.connection.clone();
        bounded(
            operation,
            self.timeout,
            pipeline.query_async(&mut connection),
        )
        .await
    }

    pub(super) fn get(&self, key: &Key) -> GetFuture {
        self.get_holding(key, ())
    }

    /// `GET key`, holding `held` until the reply (or the future's drop): how a batching
    /// store knows when a command of its own is done.
    pub(super) fn get_holding<H: Send + 'static>(&self, key: &Key, held: H) -> GetFuture {
        if let Some(rejected) = self.reject_inspected(key) {
            return Box::pin(std::future::ready(Err(rejected)));
        }
        // One clone of the connection, moved into the future (`run` would clone it again).
        let mut commands = self.clone();
        let mut command = redis::cmd("GET");
        command.arg(key.as_str());
        Box::pin(async move {
            let timeout = commands.timeout;
            let reply = bounded(
                "get",
                timeout,
                command.query_async(&mut commands.connection),
            )
            .await;
            drop(held);
            let value: Option<Vec<u8>> = match reply {
                Ok(value) => value,
                Err(error) => {
                    if let StoreError::Timeout { .. } = error
                        && let Some(redis::Arg::Simple(key)) = command.args_iter().nth(1)
                    {
                        commands.inspect_after_timeout(key);
                    }
                    return Err(error);
                }
            };
            Ok(value.map(|bytes| StoreValue::new(Bytes::from(bytes))))
        })
    }

    /// The error a read of `key` gets while the value under it is inspected: not sent, as
    /// its value may be what stalled the last read of it. Rejected, not a failure of the
    /// store: a read loads, and its set replaces the value.
    pub(super) fn reject_inspected(&self, key: &Key) -> Option<StoreError> {
        self.inspections.cover(key).then(|| StoreError::Rejected {
            operation: "get",
            source: "the last read of this key timed out; its value is being inspected".into(),
        })
    }

    /// After a `GET` timed out: whether its value was what took so long. A string over
    /// [`OVERSIZED`] bytes is removed, so that the next read misses and its load replaces
    /// it, instead of every read pulling it until the timeout (and stalling the connection
    /// for everyone meanwhile); until the look is done, reads of the key are rejected
    /// without asking (a miss for the layers). At most [`INSPECTIONS`] run at once.
    pub(super) fn inspect_after_timeout(&self, key: &[u8]) {
        if tokio::runtime::Handle::try_current().is_err() {
            return;
        }
        let Some(inspection) = self.inspections.start(key) else {
            return;
        };
        let commands = Commands {
            connection: self.connection.clone(),
            // Behind the slow reply on the connection: give it time to arrive.
            timeout: (self.timeout * 20).max(Duration::from_secs(1)),
            inspections: self.inspections.clone(),
        };
        tokio::spawn(async move {
            let key = inspection.key.clone();
            let mut strlen = redis::cmd("STRLEN");
            strlen.arg(key.as_slice());
            if let Ok(len) = commands.run::<u64>("get", &strlen).await
                && len > OVERSIZED as u64
            {
                let mut unlink = redis::cmd("UNLINK");
                unlink.arg(key.as_slice());
                if commands.run::<u64>("delete", &unlink).await.is_ok() {
                    tracing::warn!(
                        bytes = len,
                        "a value too large to read within the command timeout was removed"
                    );
                }
            }
            drop(inspection);
        });
    }

    pub(super) async fn get_many(
        &self,
        keys: &[Key],
    ) -> Result<Vec<Option<StoreValue>>, StoreError> {
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        let values: Vec<Option<Vec<u8>>> = self.run("get_many", &multi_key("MGET", keys)).await?;
        Ok(values
            .into_iter()
            .map(|value| value.map(|bytes| StoreValue::new(Bytes::from(bytes))))
            .collect())
    }

    pub(super) async fn set(
        &self,
        key: &Key,
        value: StoreValue,
        ttl: Option<Duration>,
    ) -> Result<(), StoreError> {
        self.run::<()>("set", &set_command(key, &value, ttl)).await
    }

    /// `UNLINK key`, where no lease lives beside it (a cluster).
    #[cfg(feature = "cluster")]
    pub(super) async fn delete(&self, key: &Key) -> Result<bool, StoreError> {
        Ok(self
            .run::<u64>("delete", &multi_key("UNLINK", std::slice::from_ref(key)))
            .await?
            > 0)
    }

    #[cfg(feature = "cluster")]
    pub(super) async fn delete_many(&self, keys: &[Key]) -> Result<u64, StoreError> {
        if keys.is_empty() {
            return Ok(0);
        }
        self.run("delete_many", &multi_key("UNLINK", keys)).await
    }

    /// Files `key` under every tag of `tags` (one script per tag: each index is one key,
    /// so this works on a cluster), then stores it.
    #[cfg(feature = "cluster")]
    pub(super) async fn set_tagged(
        &self,
        key: &Key,
        value: StoreValue,
        ttl: Option<Duration>,
        tags: &[Tag],
    ) -> Result<(), StoreError> {
        let ttl_ms = script_ttl(ttl);
        let filings: Vec<redis::Cmd> = tags
            .iter()
            .map(|tag| {
                let mut command = redis::cmd("EVAL");
                command
                    .arg(TAG_ADD)
                    .arg(1)
                    .arg(tag.index_key().as_str())
                    .arg(key.as_str())
                    .arg(&ttl_ms);
                command
            })
            .collect();
        futures_util::future::try_join_all(
            filings
                .iter()
                .map(|command| self.run::<()>("set_tagged", command)),
        )
        .await?;
        self.run::<()>("set_tagged", &set_command(key, &value, ttl))
            .await
    }

    /// Removes the keys filed under `tag` on a single node: one script per batch of
    /// [`SCAN_BATCH`] keys, each batch read, deleted and unfiled at once, so a tag of up to
    /// that many keys takes one round trip. A failure leaves the rest filed, for the next
    /// call. Returns the keys deleted (even when a later batch failed) and how many existed.
    pub(super) async fn invalidate_tag_on_one_node(
        &self,
        tag: &Tag,
    ) -> (Vec<Key>, Result<u64, StoreError>) {
        let index = tag.index_key();
        let mut removed = Vec::new();
        let mut deleted = 0;
        let mut batch = redis::cmd("EVAL");
        batch
            .arg(TAG_INVALIDATE)
            .arg(1)
            .arg(index.as_str())
            .arg(SCAN_BATCH)
            .arg(LEASE_PREFIX);
        // Bounded, in case writers file keys faster than this removes them.
        for _ in 0..10_000 {
            let (gone, left, members): (u64, u64, Vec<String>) =
                match self.run("invalidate_tag", &batch).await {
                    Ok(reply) => reply,
                    Err(error) => return (removed, Err(error)),
                };
            deleted += gone;
            removed.extend(
                members
                    .iter()
                    .filter_map(|member| Key::new(member.as_str()).ok()),
            );
            if left == 0 {
                break;
            }
        }
        (removed, Ok(deleted))
    }

    /// Removes the keys filed under `tag`, where its keys may lie on other nodes than its
    /// index (a cluster): each batch is read, deleted, then unfiled — so a failure leaves the
    /// rest filed, for the next call. A batch shorter than [`SCAN_BATCH`] was the last.
    /// Returns the keys deleted (even when a later batch failed) and how many existed.
    #[cfg(feature = "cluster")]
    pub(super) async fn invalidate_tag(&self, tag: &Tag) -> (Vec<Key>, Result<u64, StoreError>) {
        let index = tag.index_key();
        let mut removed = Vec::new();
        let mut deleted = 0;
        // Bounded, in case writers file keys faster than this removes them.
        for _ in 0..10_000 {
            let mut range = redis::cmd("ZRANGE");
            range
                .arg(index.as_str())
                .arg(0)
                .arg(SCAN_BATCH - 1)
                .arg("WITHSCORES");
            let batch: Vec<(String, String)> = match self.run("invalidate_tag", &range).await {
                Ok(batch) => batch,
                Err(error) => return (removed, Err(error)),
            };
            if batch.is_empty() {
                break;
            }
            let keys: Vec<Key> = batch
                .iter()
                .filter_map(|(member, _)| Key::new(member.as_str()).ok())
                .collect();
            if !keys.is_empty() {
                match self
                    .run::<u64>("invalidate_tag", &multi_key("UNLINK", &keys))
                    .await
                {
                    Ok(n) => deleted += n,
                    Err(error) => return (removed, Err(error)),
                }
            }
            removed.extend(keys);
            let mut unfile = redis::cmd("EVAL");
            unfile.arg(TAG_UNFILE).arg(1).arg(index.as_str());
            for (member, score) in &batch {
                unfile.arg(member).arg(score);
            }
            if let Err(error) = self.run::<()>("invalidate_tag", &unfile).await {
                return (removed, Err(error));
            }
            if batch.len() < SCAN_BATCH {
                break;
            }
        }
        (removed, Ok(deleted))
    }

    pub(super) async fn exists(&self, key: &Key) -> Result<bool, StoreError> {
        Ok(self
            .run::<u64>("exists", &multi_key("EXISTS", std::slice::from_ref(key)))
            .await?
            > 0)
    }
}
