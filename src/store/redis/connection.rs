//! The connection a [`RedisStore`](super::RedisStore) sends its commands on.

use redis::aio::{ConnectionLike, ConnectionManager};
use redis::{Cmd, Pipeline, RedisFuture, Value};

use super::sentinel::SentinelConnection;

/// The connection a [`RedisStore`](super::RedisStore) sends its commands on: a redis-rs
/// [`ConnectionManager`] to one address, or one that follows the primary its Redis Sentinels
/// name ([`RedisStore::connect_sentinel`](super::RedisStore::connect_sentinel)). Cheap to
/// clone; it is the connection type of a [`StreamQueue`](crate::strategy::StreamQueue) made
/// from a `RedisStore`, and the default one.
///
/// ```
/// use tower_caching::store::{RedisConfig, RedisConnection, RedisStore};
/// use tower_caching::strategy::StreamQueue;
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let store = RedisStore::connect_lazy(RedisConfig::new("127.0.0.1:6379"))?;
/// let queue: StreamQueue<RedisConnection> = StreamQueue::new(&store, "participant-metrics");
/// # let _ = queue;
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct RedisConnection(Route);

#[derive(Clone)]
enum Route {
    Direct(ConnectionManager),
    Sentinel(SentinelConnection),
}

impl RedisConnection {
    pub(super) fn direct(connection: ConnectionManager) -> Self {
        RedisConnection(Route::Direct(connection))
    }

    pub(super) fn sentinel(connection: SentinelConnection) -> Self {
        RedisConnection(Route::Sentinel(connection))
    }
}

impl RedisConnection {
    /// A client of the Sentinel-followed primary of now; `None` on a direct connection.
    pub(super) fn primary_client(&self) -> Option<redis::Client> {
        match &self.0 {
            Route::Direct(_) => None,
            Route::Sentinel(connection) => connection.primary_client(),
        }
    }

    pub(super) fn follows_sentinels(&self) -> bool {
        matches!(self.0, Route::Sentinel(_))
    }
}

impl std::fmt::Debug for RedisConnection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.0 {
            Route::Direct(_) => f.write_str("RedisConnection::Direct"),
            Route::Sentinel(connection) => connection.fmt(f),
        }
    }
}

impl ConnectionLike for RedisConnection {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match &mut self.0 {
            Route::Direct(connection) => connection.req_packed_command(cmd),
            Route::Sentinel(connection) => connection.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        cmd: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match &mut self.0 {
            Route::Direct(connection) => connection.req_packed_commands(cmd, offset, count),
            Route::Sentinel(connection) => connection.req_packed_commands(cmd, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match &self.0 {
            Route::Direct(connection) => connection.get_db(),
            Route::Sentinel(connection) => connection.get_db(),
        }
    }
}
