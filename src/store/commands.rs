//! The commands both Redis stores send, over any redis-rs connection, each bounded by the
//! command timeout.

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use bytes::Bytes;
use redis::aio::ConnectionLike;
use redis::RedisError;

use super::{StoreError, StoreValue};
use crate::key::Key;

/// How many keys one `SCAN` step asks for, and so how many one `UNLINK` removes at most.
pub(super) const SCAN_BATCH: usize = 1000;

/// The future of a Redis `GET`: redis-rs's futures are unnameable, and the box costs a few
/// tens of nanoseconds against a network round trip (see benches/store.rs).
pub(super) type GetFuture =
    Pin<Box<dyn Future<Output = Result<Option<StoreValue>, StoreError>> + Send + 'static>>;

/// A connection and the timeout every command through it gets.
#[derive(Clone)]
pub(super) struct Commands<C> {
    pub(super) connection: C,
    pub(super) timeout: Duration,
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
        Ok(Err(e)) => Err(StoreError::Backend {
            operation,
            source: Box::new(e),
        }),
        Err(_) => Err(StoreError::Timeout { operation, timeout }),
    }
}

/// `SET key value [PX ttl]`.
pub(super) fn set_command(key: &Key, value: &StoreValue, ttl: Option<Duration>) -> redis::Cmd {
    let mut command = redis::cmd("SET");
    command.arg(key.as_str()).arg(value.bytes().as_ref());
    if let Some(ttl) = ttl {
        let millis = u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX).max(1);
        command.arg("PX").arg(millis);
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
    pub(super) async fn run<T: redis::FromRedisValue>(
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

    pub(super) async fn run_pipeline<T: redis::FromRedisValue>(
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
        let commands = self.clone();
        let mut command = redis::cmd("GET");
        command.arg(key.as_str());
        Box::pin(async move {
            let value: Option<Vec<u8>> = commands.run("get", &command).await?;
            Ok(value.map(|bytes| StoreValue::new(Bytes::from(bytes))))
        })
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

    pub(super) async fn delete(&self, key: &Key) -> Result<bool, StoreError> {
        Ok(self
            .run::<u64>("delete", &multi_key("UNLINK", std::slice::from_ref(key)))
            .await?
            > 0)
    }

    pub(super) async fn delete_many(&self, keys: &[Key]) -> Result<u64, StoreError> {
        if keys.is_empty() {
            return Ok(0);
        }
        self.run("delete_many", &multi_key("UNLINK", keys)).await
    }

    pub(super) async fn exists(&self, key: &Key) -> Result<bool, StoreError> {
        Ok(self
            .run::<u64>("exists", &multi_key("EXISTS", std::slice::from_ref(key)))
            .await?
            > 0)
    }
}
