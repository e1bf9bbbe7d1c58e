//! The pub/sub backplane: every write made through this crate publishes what it changed,
//! and every instance on the channel drops it from its L1.

use std::time::Duration;

use futures_util::StreamExt;

use super::{HEARTBEAT, SILENCE, Shared, Subscriber};
use crate::key::{Key, Pattern};
use crate::store::Store;

/// An invalidation on the backplane: `{instance} k {key}`, `{instance} K {key}\n{key}…`
/// (keys hold no control characters), `{instance} p {pattern}`, or an instance's own
/// heartbeat `{instance} h `.
pub(super) fn message(id: &str, kind: char, target: &str) -> String {
    format!("{id} {kind} {target}")
}

impl Subscriber {
    /// Subscribes to `channel` and applies other instances' invalidations until the
    /// subscription ends or goes silent; `false` if it could not subscribe.
    pub(super) async fn backplane(&self, client: redis::Client, channel: &str) -> bool {
        let subscribed = async {
            let mut pubsub = client.get_async_pubsub().await?;
            pubsub.subscribe(channel).await?;
            Ok::<_, redis::RedisError>(pubsub)
        };
        let Ok(Ok(pubsub)) = tokio::time::timeout(Duration::from_secs(2), subscribed).await else {
            return false;
        };
        if !self.coherent() {
            return true;
        }
        let mut messages = pubsub.into_on_message();
        let mut heartbeat = tokio::time::interval(HEARTBEAT);
        let mut heard = tokio::time::Instant::now();
        loop {
            tokio::select! {
                message = messages.next() => {
                    let Some(message) = message else { return true };
                    let Some(shared) = self.shared.upgrade() else { return true };
                    let Ok(text) = message.get_payload::<String>() else {
                        continue;
                    };
                    if self.apply(&shared, &text).await {
                        heard = tokio::time::Instant::now();
                    }
                }
                _ = heartbeat.tick() => {
                    if heard.elapsed() > SILENCE {
                        tracing::warn!("cache backplane silent: renewing the subscription");
                        return true;
                    }
                    let Some(shared) = self.shared.upgrade() else { return true };
                    let beat = message(&shared.id, 'h', "");
                    // A failure shows as silence.
                    let _ = self.l2.publish(channel, &beat).await;
                }
            }
        }
    }

    /// Applies one message; whether it was this instance's own heartbeat.
    async fn apply(&self, shared: &Shared, text: &str) -> bool {
        let mut parts = text.splitn(3, ' ');
        let (Some(from), Some(kind), Some(target)) = (parts.next(), parts.next(), parts.next())
        else {
            return false;
        };
        if from == shared.id {
            return kind == "h";
        }
        let l1 = &self.l1;
        match kind {
            "k" => {
                shared.invalidations.key(target);
                if let Ok(key) = Key::new(target) {
                    let _ = l1.delete(&key).await;
                }
            }
            "K" => {
                target
                    .split('\n')
                    .for_each(|key| shared.invalidations.key(key));
                let keys: Vec<Key> = target
                    .split('\n')
                    .filter_map(|key| Key::new(key).ok())
                    .collect();
                let _ = l1.delete_many(&keys).await;
            }
            "p" => {
                shared.invalidations.everything();
                let _ = l1.delete_pattern(&Pattern::glob(target)).await;
            }
            _ => {}
        }
        false
    }
}
