//! One load of a cold key across every instance sharing a store: the instance whose miss
//! takes the key's shared lease loads it; the others wait for the value to land in the
//! store, and take the lease over if its holder gives it up or dies (its lease expires).
//!
//! Within an instance, the [`flight`](super::flight) table already makes one load per key;
//! this runs inside that load, so one instance contends for the lease once per key.

use std::time::{Duration, Instant};

use super::ReadContext;
use crate::frame::now_ms;
use crate::key::{Key, Tag};
use crate::store::lease::Acquired;
use crate::store::{SharedLeases, StoreError, StoreValue};

/// How long a waiter waits between looks at the store, unless told sooner that the lease
/// ended: doubling from the first, up to the last, so that a fast load is seen at once even
/// without the message, and a slow one costs few round trips.
const FIRST_PAUSE: Duration = Duration::from_millis(2);
const LAST_PAUSE: Duration = Duration::from_millis(50);

/// What the shared lease of a cold key came to.
pub(super) enum Shared<V> {
    /// This instance holds the lease: it loads.
    Holder(Held),
    /// Another instance loaded it: its value.
    Landed(V),
    /// The store failed, or the wait outlasted its bound: load here, as without a lease.
    Alone,
}

/// A lease this instance holds; given up when dropped (the load failed, panicked, or its
/// value was not cached), so that another instance's waiters take over at once instead of
/// waiting for it to expire.
pub(super) struct Held {
    leases: SharedLeases,
    key: Key,
    token: String,
    ttl: Duration,
    given_up: bool,
}

impl Held {
    /// Keeps the lease while the load runs: renewed every third of its TTL. Never ends.
    pub(super) async fn keep(&self) {
        loop {
            tokio::time::sleep(self.ttl / 3).await;
            // A lost lease (expired under a stall, taken over) is found at the fenced put.
            let _ = self.leases.0.renew(&self.key, &self.token, self.ttl).await;
        }
    }

    /// Stores the loaded value if this instance still holds the lease and the key is still
    /// absent, and gives the lease up. Whether it stored.
    pub(super) async fn put(
        mut self,
        value: StoreValue,
        ttl: Option<Duration>,
        tags: &[Tag],
    ) -> Result<bool, StoreError> {
        self.given_up = true;
        self.leases
            .0
            .put_fenced(&self.key, &self.token, value, ttl, tags)
            .await
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        if self.given_up {
            return;
        }
        let (leases, key, token) = (self.leases.clone(), self.key.clone(), self.token.clone());
        // Dropped on a panic's unwinding or an aborted task too: the release runs on its own.
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(async move {
                let _ = leases.0.release(&key, &token).await;
            });
        }
    }
}

/// Takes the lease of `key`, or waits for the value its holder loads. Waits at most
/// `4 × ttl` in all: a holder that keeps renewing but never lands is not waited for forever.
pub(super) async fn take_or_wait<X: ReadContext>(
    context: &X,
    leases: SharedLeases,
    key: &Key,
    ttl: Duration,
) -> Shared<X::Value> {
    let token = format!("{:016x}{:016x}", fastrand::u64(..), fastrand::u64(..));
    let deadline = Instant::now() + ttl.saturating_mul(4);
    let mut pause = FIRST_PAUSE;
    // Watched before the first attempt: a lease that ends after it ends the pause at once.
    let watch = leases.0.watch(key);
    loop {
        let landed = match leases.0.acquire(key, &token, ttl).await {
            Ok(Acquired::Held) => {
                return Shared::Holder(Held {
                    leases,
                    key: key.clone(),
                    token,
                    ttl,
                    given_up: false,
                });
            }
            Ok(Acquired::Landed) => true,
            Ok(Acquired::Busy) => false,
            Err(_) => return Shared::Alone,
        };
        if !landed {
            watch.wait(pause).await;
            pause = (pause * 2).min(LAST_PAUSE);
        }
        match context.cache().lookup(key).await {
            Ok(Some(hit))
                if hit
                    .header
                    .fresh_until_ms
                    .is_none_or(|until| until > now_ms()) =>
            {
                return Shared::Landed(hit.value);
            }
            // The key holds something, but no fresh value (a stale one, or it was deleted
            // since): nothing to share, load as without a lease.
            Ok(_) if landed => return Shared::Alone,
            Ok(_) => {}
            Err(_) => return Shared::Alone,
        }
        if Instant::now() >= deadline {
            return Shared::Alone;
        }
    }
}
