//! Wakes the instances waiting for a key whose lease another instance holds, as soon as
//! its value lands (or its lease is given up): the lease scripts publish the key on
//! [`CHANNEL`], and one subscriber per store, started at the first wait, tells the waiter
//! of that key. Waiters look at the store every few tens of milliseconds anyway, so a
//! missed or late message (no subscriber yet, a reconnection) costs a little latency,
//! never a wrong answer.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use futures_util::StreamExt;
use tokio::sync::Notify;

use super::connection::RedisConnection;

/// Where the lease scripts announce a key whose lease ended.
pub(in crate::store) const CHANNEL: &str = "tower-caching:landed";

/// Where the subscriber connects.
pub(super) enum Source {
    /// The store's own address.
    Fixed(Box<redis::Client>),
    /// The primary the store follows (Sentinel).
    Primary,
    /// A store made from a connection: no address to subscribe at; waiters only poll.
    None,
}

/// The keys waited for, and the subscriber.
pub(super) struct Landings {
    source: Source,
    waiting: Mutex<HashMap<String, (Arc<Notify>, usize)>>,
    subscriber: Mutex<Option<tokio::task::AbortHandle>>,
}

impl Drop for Landings {
    fn drop(&mut self) {
        if let Some(task) = lock(&self.subscriber).take() {
            task.abort();
        }
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// A waiter's interest in one key, until dropped.
pub(super) struct Interest {
    landings: Arc<Landings>,
    key: String,
    notify: Arc<Notify>,
}

impl crate::store::lease::Watch for Interest {
    fn wait(
        &self,
        pause: Duration,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send + '_>> {
        Box::pin(async move {
            let _ = tokio::time::timeout(pause, self.notify.notified()).await;
        })
    }
}

impl Drop for Interest {
    fn drop(&mut self) {
        let mut waiting = lock(&self.landings.waiting);
        if let Some((_, count)) = waiting.get_mut(&self.key) {
            *count -= 1;
            if *count == 0 {
                waiting.remove(&self.key);
            }
        }
    }
}

impl Landings {
    pub(super) fn new(source: Source) -> Arc<Self> {
        Arc::new(Landings {
            source,
            waiting: Mutex::new(HashMap::new()),
            subscriber: Mutex::new(None),
        })
    }

    /// Registers a wait for `key`, starting the subscriber if it is not running.
    pub(super) fn interest(self: &Arc<Self>, key: &str, connection: &RedisConnection) -> Interest {
        let notify = {
            let mut waiting = lock(&self.waiting);
            let (notify, count) = waiting
                .entry(key.to_owned())
                .or_insert_with(|| (Arc::new(Notify::new()), 0));
            *count += 1;
            notify.clone()
        };
        self.start(connection);
        Interest {
            landings: self.clone(),
            key: key.to_owned(),
            notify,
        }
    }

    fn start(self: &Arc<Self>, connection: &RedisConnection) {
        if matches!(self.source, Source::None) {
            return;
        }
        let mut subscriber = lock(&self.subscriber);
        if subscriber.as_ref().is_some_and(|task| !task.is_finished()) {
            return;
        }
        let (landings, connection) = (Arc::downgrade(self), connection.clone());
        *subscriber = Some(tokio::spawn(subscribe(landings, connection)).abort_handle());
    }

    fn landed(&self, key: &str) {
        if let Some((notify, _)) = lock(&self.waiting).get(key) {
            notify.notify_one();
        }
    }
}

/// Subscribes and wakes waiters until the store is gone, reconnecting with backoff.
async fn subscribe(landings: Weak<Landings>, connection: RedisConnection) {
    let mut backoff = Duration::from_millis(50);
    loop {
        let client = match landings.upgrade().as_deref().map(|l| &l.source) {
            None => return,
            Some(Source::Fixed(client)) => Some(client.as_ref().clone()),
            Some(Source::Primary) => connection.primary_client(),
            Some(Source::None) => return,
        };
        let subscribed = async {
            let client = client.ok_or_else(|| {
                redis::RedisError::from((redis::ErrorKind::Io, "no Redis primary known yet"))
            })?;
            let mut pubsub = client.get_async_pubsub().await?;
            pubsub.subscribe(CHANNEL).await?;
            Ok::<_, redis::RedisError>(pubsub)
        };
        if let Ok(Ok(pubsub)) = tokio::time::timeout(Duration::from_secs(2), subscribed).await {
            backoff = Duration::from_millis(50);
            let mut messages = pubsub.into_on_message();
            while let Some(message) = messages.next().await {
                let Some(landings) = landings.upgrade() else {
                    return;
                };
                if let Ok(key) = message.get_payload::<String>() {
                    landings.landed(&key);
                }
            }
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(2));
    }
}
