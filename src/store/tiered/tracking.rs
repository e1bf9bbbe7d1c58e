//! Coherence from Redis itself: a RESP3 connection in `CLIENT TRACKING ON BCAST` mode, on
//! which Redis pushes the name of every key changed under the tracked prefixes, by any
//! client, and which this instance drops from its L1 as the push arrives.

use std::sync::{Arc, Weak};
use std::time::Duration;

use redis::{AsyncConnectionConfig, Client, ProtocolVersion, PushInfo, PushKind, Value};
use tokio::sync::Notify;

use super::{HEARTBEAT, SILENCE, Shared, Subscriber};
use crate::key::Key;
use crate::store::{MemoryStore, StoreError};

/// Which keys Redis reports changes of to a [`TieredStore`](super::TieredStore) kept
/// coherent by tracking ([`Coherence::Tracking`](super::Coherence::Tracking)): every key
/// ([`Tracking::all_keys`]), or those under some prefixes. Only those keys enter L1.
///
/// Redis sends one invalidation per change under the prefixes, whether or not this instance
/// holds the key, so narrow prefixes (the cache's own key space) cost the least. Prefixes
/// may not overlap (Redis refuses `a` next to `ab`).
///
/// ```
/// use tower_caching::store::Tracking;
///
/// let tracking = Tracking::prefix("entry:").and_prefix("participant:");
/// assert_eq!(tracking.prefixes(), ["entry:", "participant:"]);
/// assert!(Tracking::all_keys().prefixes().is_empty());
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Tracking {
    prefixes: Vec<String>,
}

impl Tracking {
    /// Every key of the database: any change anywhere drops the key from L1.
    ///
    /// ```
    /// use tower_caching::store::{Coherence, Tracking};
    /// let coherence: Coherence = Tracking::all_keys().into();
    /// # let _ = coherence;
    /// ```
    pub fn all_keys() -> Self {
        Tracking {
            prefixes: Vec::new(),
        }
    }

    /// The keys starting with `prefix`; an empty prefix is every key.
    ///
    /// ```
    /// use tower_caching::store::Tracking;
    /// assert_eq!(Tracking::prefix("entry:").prefixes(), ["entry:"]);
    /// assert_eq!(Tracking::prefix(""), Tracking::all_keys());
    /// ```
    pub fn prefix(prefix: impl Into<String>) -> Self {
        Tracking::all_keys().and_prefix(prefix)
    }

    /// These keys and those starting with `prefix` too.
    ///
    /// ```
    /// use tower_caching::store::Tracking;
    /// let both = Tracking::prefix("entry:").and_prefix("participant:");
    /// assert_eq!(both.prefixes().len(), 2);
    /// ```
    pub fn and_prefix(mut self, prefix: impl Into<String>) -> Self {
        let prefix = prefix.into();
        if !prefix.is_empty() || !self.prefixes.is_empty() {
            self.prefixes.push(prefix);
        }
        self
    }

    /// The tracked prefixes; empty when every key is tracked.
    ///
    /// ```
    /// use tower_caching::store::Tracking;
    /// assert_eq!(Tracking::prefix("a:").prefixes(), ["a:"]);
    /// ```
    pub fn prefixes(&self) -> &[String] {
        &self.prefixes
    }

    /// Whether a change to `key` is reported.
    pub(super) fn covers(&self, key: &str) -> bool {
        self.prefixes.is_empty() || self.prefixes.iter().any(|p| key.starts_with(p.as_str()))
    }

    /// Refuses what Redis would refuse: overlapping prefixes.
    pub(super) fn check(&self) -> Result<(), StoreError> {
        for (i, a) in self.prefixes.iter().enumerate() {
            for b in &self.prefixes[i + 1..] {
                if a.starts_with(b.as_str()) || b.starts_with(a.as_str()) {
                    return Err(StoreError::Connect {
                        message: format!("tracking prefixes {a:?} and {b:?} overlap"),
                        source: None,
                    });
                }
            }
        }
        Ok(())
    }
}

/// Applies Redis's invalidation pushes to L1, on the connection's own task, in the order
/// Redis sent them: counted first, then dropped, like every invalidation.
struct Invalidator {
    l1: MemoryStore,
    shared: Weak<Shared>,
    /// Told when the connection ends.
    lost: Arc<Notify>,
}

impl Invalidator {
    fn apply(&self, push: PushInfo) {
        match push.kind {
            PushKind::Invalidate => {
                let Some(shared) = self.shared.upgrade() else {
                    return;
                };
                match push.data.first() {
                    Some(Value::Array(keys)) => keys.iter().for_each(|key| {
                        if let Some(key) = key_of(key) {
                            shared.invalidations.key(key);
                            if let Ok(key) = Key::new(key) {
                                self.l1.remove_now(&key);
                            }
                        }
                    }),
                    // `FLUSHALL`, `FLUSHDB`, or a shape this version does not know: everything.
                    _ => {
                        shared.invalidations.everything();
                        self.l1.clear();
                    }
                }
            }
            PushKind::Disconnection => self.lost.notify_one(),
            _ => {}
        }
    }
}

/// A key named in an invalidation; `None` for one that is no UTF-8 (never in L1).
fn key_of(value: &Value) -> Option<&str> {
    match value {
        Value::BulkString(bytes) => std::str::from_utf8(bytes).ok(),
        Value::SimpleString(text) => Some(text),
        _ => None,
    }
}

impl Subscriber {
    /// Opens a RESP3 connection with tracking on for `tracking`'s prefixes, and keeps it
    /// until it ends or stops answering `PING`; `false` if tracking could not be turned on.
    pub(super) async fn tracking(&self, client: Client, tracking: &Tracking) -> bool {
        let Some(id) = self.shared.upgrade().map(|shared| shared.id.clone()) else {
            return true;
        };
        let info = client.get_connection_info().clone();
        let resp3 = info
            .redis_settings()
            .clone()
            .set_protocol(ProtocolVersion::RESP3);
        let Ok(client) = Client::open(info.set_redis_settings(resp3)) else {
            return false;
        };
        let lost = Arc::new(Notify::new());
        let invalidator = Invalidator {
            l1: self.l1.clone(),
            shared: self.shared.clone(),
            lost: lost.clone(),
        };
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(Duration::from_secs(2)))
            .set_response_timeout(Some(SILENCE))
            .set_push_sender(move |push| {
                invalidator.apply(push);
                Ok::<(), std::convert::Infallible>(())
            });
        let connected = async {
            let mut connection = client
                .get_multiplexed_async_connection_with_config(&config)
                .await?;
            // Named, so that an operator (or a test) can tell it in `CLIENT LIST`.
            redis::cmd("CLIENT")
                .arg("SETNAME")
                .arg(format!("tower-caching:tracking:{id}"))
                .query_async::<()>(&mut connection)
                .await?;
            let mut on = redis::cmd("CLIENT");
            on.arg("TRACKING").arg("ON").arg("BCAST");
            for prefix in tracking.prefixes() {
                on.arg("PREFIX").arg(prefix);
            }
            on.query_async::<()>(&mut connection).await?;
            Ok::<_, redis::RedisError>(connection)
        };
        let mut connection = match tokio::time::timeout(Duration::from_secs(2), connected).await {
            Ok(Ok(connection)) => connection,
            Ok(Err(error)) => {
                tracing::warn!(%error, "cache L1 tracking not turned on: L1 bypassed");
                return false;
            }
            Err(_) => return false,
        };
        if !self.coherent() {
            return true;
        }
        let mut heartbeat = tokio::time::interval(HEARTBEAT);
        loop {
            tokio::select! {
                _ = lost.notified() => return true,
                _ = heartbeat.tick() => {
                    if self.shared.strong_count() == 0 {
                        return true;
                    }
                    // Pushes and replies share the connection: a reply proves that every
                    // invalidation sent before it has been applied.
                    let ping = redis::cmd("PING");
                    let answered = tokio::time::timeout(SILENCE, ping.query_async::<()>(&mut connection));
                    if !matches!(answered.await, Ok(Ok(()))) {
                        tracing::warn!("cache L1 tracking connection silent: renewing it");
                        return true;
                    }
                }
            }
        }
    }
}
