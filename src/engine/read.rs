//! The read future every read path drives: `Lookup → (Wait) → Done`.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::{Duration, Instant};

use pin_project::pin_project;
use tokio::sync::oneshot;
use tracing::Instrument;

use super::across;
use super::flight::{Joined, Landed, Landing, Lease, SharedLoad};
use super::{Load, Loaded, ReadContext, ReadPolicy};
use crate::cache::{CacheError, Hit, Lookup};
use crate::frame::{Header, now_ms};
use crate::key::Key;
use crate::metrics::{KeyDigest, Operation};
use crate::store::Store;

/// How many times a miss looks again because a load landed meanwhile, before it loads
/// itself: each look needs another load of some key to land in between, so this is only
/// reached under a storm of distinct keys, and costs one extra load, never a wrong value.
const MAX_LOOKS: u8 = 4;

/// What a read came to.
pub(crate) enum Outcome<V, L, P, E> {
    /// Found fresh in the cache.
    Hit(Hit<V>),
    /// A write-behind write of the key still queued: its value.
    Pending(V),
    /// Loaded, by this request or by the one it waited for.
    Loaded(V),
    /// The load failed or timed out softly, and fail-safe serves the stale value.
    Stale(Hit<V>),
    /// This request's own load, whose result only it may see.
    Private(P),
    /// The load it waited for had a private result: the request must be served on its own,
    /// with its loader.
    Unshared(L),
    /// The loader's error, shared.
    Failed(Arc<E>),
    /// The load panicked.
    Panicked,
}

/// The output of a [`ReadFuture`] with loader `L`.
pub(crate) type ReadOutcome<X, L> =
    Outcome<<X as ReadContext>::Value, L, <L as Load<X>>::Private, <L as Load<X>>::Error>;

/// Reads `key`: looks it up and, on a miss, joins or starts its one load.
#[pin_project]
pub(crate) struct ReadFuture<X: ReadContext, L: Load<X>> {
    #[pin]
    state: State<X, L>,
    context: X,
    key: Key,
    span: tracing::Span,
}

#[pin_project(project = StateProj)]
enum State<X: ReadContext, L: Load<X>> {
    Lookup {
        #[pin]
        lookup: Lookup<X::Value, X::Store, X::Codec>,
        loader: Option<L>,
        seen: u64,
        looks: u8,
        started: Option<Instant>,
    },
    // Boxed: a miss allocates anyway (its load's task), and a hit then carries a future
    // half the size, moved a few times between `call` and the first poll.
    Wait {
        wait: Pin<Box<Wait<X, L>>>,
    },
    Done,
}

/// A miss waiting for the key's load.
#[pin_project(project = WaitProj)]
struct Wait<X: ReadContext, L: Load<X>> {
    #[pin]
    load: SharedLoad<X::Value, L::Error>,
    /// The leader's channel for a private result.
    private: Option<oneshot::Receiver<L::Private>>,
    /// A waiter's own loader, for when the load it joined cannot serve it.
    loader: Option<L>,
    stale: Option<Hit<X::Value>>,
    #[pin]
    soft_timeout: Option<tokio::time::Sleep>,
}

impl<X: ReadContext, L: Load<X>> State<X, L> {
    fn wait(
        load: SharedLoad<X::Value, L::Error>,
        private: Option<oneshot::Receiver<L::Private>>,
        loader: Option<L>,
        stale: Option<Hit<X::Value>>,
        soft_timeout: Option<tokio::time::Sleep>,
    ) -> Self {
        State::Wait {
            wait: Box::pin(Wait {
                load,
                private,
                loader,
                stale,
                soft_timeout,
            }),
        }
    }
}

impl<X: ReadContext, L: Load<X>> ReadFuture<X, L> {
    /// Reads `key` in `context`, loading it with `loader` on a miss.
    pub(crate) fn new(context: X, key: Key, loader: L) -> Self {
        if let Some(hot) = context.cache().hot() {
            hot.tracker.record(&key);
        }
        Self::start(context, key, loader, true)
    }

    /// [`ReadFuture::new`] for a warm-up: not counted as a read of a hot key (it would
    /// keep the last snapshot's keys hot forever).
    pub(crate) fn warming(context: X, key: Key, loader: L) -> Self {
        Self::start(context, key, loader, true)
    }

    fn start(context: X, key: Key, loader: L, look_up: bool) -> Self {
        let span = tracing::debug_span!(
            "cache",
            strategy = context.policy().strategy.name(),
            operation = "read",
            key = %KeyDigest(&key),
            outcome = tracing::field::Empty,
        );
        let cache = context.cache();
        let seen = cache.flights().landed();
        ReadFuture {
            state: State::Lookup {
                started: cache.observer().start(),
                lookup: if look_up {
                    cache.lookup(&key)
                } else {
                    Lookup::skipped(cache.codec().clone())
                },
                loader: Some(loader),
                seen,
                // A reload never looks (again): it must not answer from the cache.
                looks: if look_up { 0 } else { MAX_LOOKS },
            },
            context,
            key,
            span,
        }
    }
}

impl<X: ReadContext, L: Load<X>> ReadFuture<X, L> {
    /// Loads `key` without looking it up first (a client asked for a fresh answer): joins
    /// the load in flight, or starts one whose value replaces the cached one.
    #[cfg(feature = "http")]
    pub(crate) fn reload(context: X, key: Key, loader: L) -> Self {
        Self::start(context, key, loader, false)
    }
}

impl ReadPolicy {
    /// Whether a hit stored with `header` should be reloaded in the background now: in its
    /// refresh-ahead window, or chosen by XFetch.
    fn refresh_due(&self, header: &Header, now: u64) -> bool {
        let Some(until) = header.fresh_until_ms else {
            return false;
        };
        if let Some(fraction) = self.refresh_ahead {
            let whole = until.saturating_sub(header.stored_at_ms) as f64;
            if until.saturating_sub(now) as f64 <= whole * fraction {
                return true;
            }
        }
        if let Some(beta) = self.early_expiration {
            // now − δ·β·ln(rand) ≥ expiry, with δ the last load's duration.
            let delta = f64::from(header.load_ms.max(1));
            let draw = fastrand::f64().max(f64::MIN_POSITIVE);
            return now as f64 - delta * beta * draw.ln() >= until as f64;
        }
        false
    }
}

/// What the lookup before a load found out about the store.
#[derive(Clone, Copy)]
struct Looked {
    /// The store answered (or only rejected this key): the load's value is stored.
    store_healthy: bool,
    /// The lookup failed: the key's value is unknown.
    failed: bool,
    /// The store answered that the key holds nothing (no stale value either): the load may
    /// be shared with other instances.
    cold: bool,
}

impl Looked {
    /// No lookup went wrong (a refresh, or a waiter's own load).
    const FRESH: Looked = Looked {
        store_healthy: true,
        failed: false,
        cold: false,
    };
}

/// Joins the load of `key` in flight or starts it; the leader also gets the channel of its
/// private result.
fn begin<X: ReadContext, L: Load<X>>(
    context: &X,
    key: &Key,
    loader: L,
    stale: Option<&Hit<X::Value>>,
    seen: Option<u64>,
    lookup: Looked,
    span: &tracing::Span,
) -> (
    Joined<X::Value, L::Error, L>,
    Option<oneshot::Receiver<L::Private>>,
) {
    let (private, receiver) = oneshot::channel();
    let stale = stale.map(|hit| hit.value.clone());
    let joined = context
        .cache()
        .flights()
        .join_or_start::<X::Value, L::Error, L::Private, L, _>(
            key,
            seen,
            lookup.failed,
            loader,
            |loader, lease, landing| {
                let flight = Flight {
                    context: context.clone(),
                    key: key.clone(),
                    lease,
                    _landing: landing,
                    stale,
                    store_healthy: lookup.store_healthy,
                    cold: lookup.cold,
                };
                flight.run(loader, private).instrument(span.clone())
            },
        );
    let receiver = matches!(joined, Joined::Started(_)).then_some(receiver);
    (joined, receiver)
}

/// One load, on its own task.
struct Flight<X: ReadContext> {
    context: X,
    key: Key,
    lease: Lease,
    /// Leaves the table when the load ends, its value stored (dropped with the flight).
    _landing: Landing,
    /// The stale value fail-safe keeps serving when the load fails.
    stale: Option<X::Value>,
    /// The lookup met a failing store: no second timeout for the write.
    store_healthy: bool,
    /// The lookup found nothing at all: the load may be shared across instances.
    cold: bool,
}

impl<X: ReadContext> Flight<X> {
    async fn run<L: Load<X>>(
        mut self,
        loader: L,
        private: oneshot::Sender<L::Private>,
    ) -> Landed<X::Value, L::Error> {
        let began = Instant::now();
        let policy = *self.context.policy();
        let mut held = None;
        if let Some(ttl) = policy.shared_lease
            && self.cold
            && self.store_healthy
            && let Some(leases) = self.context.cache().store().shared_leases()
        {
            match across::take_or_wait(&self.context, leases, &self.key, ttl).await {
                across::Shared::Holder(lease) => held = Some(lease),
                across::Shared::Landed(value) => return Landed::Value(value),
                across::Shared::Alone => {}
            }
        }
        let load = loader.load(self.context.clone(), self.key.clone());
        let result = match &held {
            Some(lease) => {
                tokio::select! {
                    result = load => result,
                    () = lease.keep() => unreachable!("a lease is kept until the load ends"),
                }
            }
            None => load.await,
        };
        let landed = match result {
            Ok(Loaded::Shared { value, admission }) => {
                if let Some(fresh) = admission {
                    if self.store_healthy {
                        self.store(&policy, &value, fresh, began.elapsed(), held)
                            .await;
                    } else if self.lease.is_current() {
                        self.lease.not_kept(fresh);
                    }
                }
                return Landed::Value(value);
            }
            Ok(Loaded::Private {
                private: result,
                failed,
            }) => {
                // The leader may be gone: then nobody sees it.
                let _ = private.send(result);
                if !failed {
                    return Landed::Private { failed };
                }
                Landed::Private { failed }
            }
            Err(error) => Landed::Failed(Arc::new(error)),
        };
        // A failure: fail-safe keeps serving the stale value for its throttle.
        if let (Some(stale), Some(fail_safe), true) =
            (self.stale.take(), policy.fail_safe, self.store_healthy)
        {
            self.store(
                &policy,
                &stale,
                Some(fail_safe.throttle),
                Duration::ZERO,
                None,
            )
            .await;
        }
        landed
    }

    /// Caches `value` fresh for `fresh`, kept the policy's grace longer for fail-safe,
    /// recording how long its load took (for XFetch) — unless the lease is void: the key was
    /// written or invalidated since the load began. Under a lease `held` across instances,
    /// stores only if this instance still holds it and the key is still absent. Logs
    /// instead of failing.
    async fn store(
        &self,
        policy: &ReadPolicy,
        value: &X::Value,
        fresh: Option<Duration>,
        took: Duration,
        held: Option<across::Held>,
    ) {
        let cache = self.context.cache();
        let key = &self.key;
        if cache.is_closed() || !self.lease.is_current() {
            return;
        }
        let mut header = Header::new(fresh);
        header.load_ms = u32::try_from(took.as_millis()).unwrap_or(u32::MAX);
        let keep = fresh.map(|fresh| fresh.saturating_add(policy.grace()));
        let stored = cache
            .observed(Operation::Set, policy.strategy, async {
                let stored = cache.encode_with(value, header)?;
                let tags = cache.tags_of(key, value);
                match held {
                    // Left unstored when the lease was taken over or the key written
                    // meanwhile: what is there is newer, nothing to undo.
                    Some(lease) => lease.put(stored, keep, &tags).await.map(|_| ())?,
                    None => cache.put(key, stored, keep, &tags).await?,
                }
                Ok(())
            })
            .await;
        if let Err(error) = stored {
            crate::log::warn_summarised!(error.kind(), key = %KeyDigest(key), %error, "value not cached");
            self.lease.not_kept(fresh);
            return;
        }
        if !self.lease.is_current() {
            // A write of the key raced this store and may have landed before it: take the
            // value out again, so that the next read loads what the write wrote.
            let _ = cache.store().delete(key).await;
        }
    }
}

impl<X: ReadContext, L: Load<X>> Future for ReadFuture<X, L> {
    type Output = ReadOutcome<X, L>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        let _entered = this.span.enter();
        let context = &*this.context;
        let key = &*this.key;
        let cache = context.cache();
        let policy = context.policy();
        let strategy = policy.strategy;
        let observer = cache.observer();
        loop {
            match this.state.as_mut().project() {
                StateProj::Lookup {
                    lookup,
                    loader,
                    seen,
                    looks,
                    started,
                } => {
                    let result = ready!(lookup.poll(cx));
                    observer.finish(Operation::Get, strategy, *started);
                    // Any error leaves the key's value unknown (a value the store could not
                    // keep answers such misses); only a failing store skips storing the load.
                    let lookup_failed = result.is_err();
                    let store_healthy = !result.as_ref().is_err_and(CacheError::is_store_failure);
                    let cold = matches!(result, Ok(None));
                    let found = match result {
                        Ok(found) => found,
                        Err(error) => {
                            observer.error(Operation::Get, error.kind());
                            crate::log::warn_summarised!(error.kind(), key = %KeyDigest(key), %error, "cache lookup failed, loading");
                            None
                        }
                    };
                    let timed = policy.timed();
                    let now = if timed { now_ms() } else { 0 };
                    let stale = match found {
                        Some(hit) if !(policy.fail_safe.is_some() && hit.header.is_stale(now)) => {
                            observer.hit(strategy);
                            if context.is_negative(&hit.value) {
                                observer.negative_hit(strategy);
                            }
                            this.span.record("outcome", "hit");
                            if timed
                                && policy.refresh_due(&hit.header, now)
                                && let Some(loader) = loader.take()
                            {
                                // Not awaited: the reload runs on its own task, once per key.
                                let (joined, _) = begin(
                                    context,
                                    key,
                                    loader,
                                    None,
                                    None,
                                    Looked::FRESH,
                                    this.span,
                                );
                                if matches!(joined, Joined::Started(_)) {
                                    observer.refresh(strategy);
                                }
                            }
                            this.state.set(State::Done);
                            return Poll::Ready(Outcome::Hit(hit));
                        }
                        found => found,
                    };
                    if let Some(value) = cache.pending_value(key) {
                        observer.hit(strategy);
                        this.span.record("outcome", "pending");
                        this.state.set(State::Done);
                        return Poll::Ready(Outcome::Pending(value));
                    }
                    let loader = loader.take().expect("a lookup ends once");
                    let seen = (*looks < MAX_LOOKS).then_some(*seen);
                    let (joined, private) = begin(
                        context,
                        key,
                        loader,
                        stale.as_ref(),
                        seen,
                        Looked {
                            store_healthy,
                            failed: lookup_failed,
                            cold,
                        },
                        this.span,
                    );
                    let (load, loader) = match joined {
                        Joined::LookAgain(loader) => {
                            let looks = *looks + 1;
                            let seen = cache.flights().landed();
                            this.state.set(State::Lookup {
                                started: observer.start(),
                                lookup: cache.lookup(key),
                                loader: Some(loader),
                                seen,
                                looks,
                            });
                            continue;
                        }
                        Joined::Waiting(load, loader) => {
                            observer.miss(strategy);
                            observer.coalesced(strategy);
                            this.span.record("outcome", "coalesced");
                            (load, Some(loader))
                        }
                        Joined::Started(load) => {
                            observer.miss(strategy);
                            this.span.record("outcome", "miss");
                            (load, None)
                        }
                    };
                    let soft_timeout = policy
                        .soft_timeout
                        .filter(|_| stale.is_some())
                        .map(tokio::time::sleep);
                    this.state
                        .set(State::wait(load, private, loader, stale, soft_timeout));
                }
                StateProj::Wait { wait } => {
                    let WaitProj {
                        load,
                        private,
                        loader,
                        stale,
                        soft_timeout,
                    } = wait.as_mut().project();
                    if let Poll::Ready(landed) = load.poll(cx) {
                        let mut serve_stale = || {
                            let stale = stale.take()?;
                            observer.stale_served(strategy);
                            this.span.record("outcome", "stale");
                            Some(Outcome::Stale(stale))
                        };
                        let outcome = match landed {
                            Landed::Value(value) => Outcome::Loaded(value),
                            Landed::Failed(error) => {
                                serve_stale().unwrap_or(Outcome::Failed(error))
                            }
                            Landed::Panicked => serve_stale().unwrap_or(Outcome::Panicked),
                            Landed::Private { failed } => {
                                match (
                                    failed.then(serve_stale).flatten(),
                                    private.take(),
                                    loader.take(),
                                ) {
                                    (Some(stale), _, _) => stale,
                                    (None, Some(mut private), _) => match private.try_recv() {
                                        Ok(result) => Outcome::Private(result),
                                        Err(_) => Outcome::Panicked,
                                    },
                                    (None, None, Some(loader)) => Outcome::Unshared(loader),
                                    (None, None, None) => Outcome::Panicked,
                                }
                            }
                            Landed::Missing => {
                                // A batch did not find the key: load it on its own.
                                let Some(own) = loader.take() else {
                                    this.state.set(State::Done);
                                    return Poll::Ready(Outcome::Panicked);
                                };
                                let stale = stale.take();
                                let (joined, private) = begin(
                                    context,
                                    key,
                                    own,
                                    stale.as_ref(),
                                    None,
                                    Looked::FRESH,
                                    this.span,
                                );
                                let (load, loader) = match joined {
                                    Joined::Waiting(load, loader) => (load, Some(loader)),
                                    Joined::Started(load) => (load, None),
                                    Joined::LookAgain(_) => {
                                        unreachable!("begun without a lookup count")
                                    }
                                };
                                this.state
                                    .set(State::wait(load, private, loader, stale, None));
                                continue;
                            }
                        };
                        this.state.set(State::Done);
                        return Poll::Ready(outcome);
                    }
                    if let Some(timer) = soft_timeout.as_pin_mut()
                        && timer.poll(cx).is_ready()
                        && let Some(value) = stale.take()
                    {
                        observer.stale_served(strategy);
                        this.span.record("outcome", "stale");
                        this.state.set(State::Done);
                        return Poll::Ready(Outcome::Stale(value));
                    }
                    return Poll::Pending;
                }
                StateProj::Done => panic!("ReadFuture polled after completion"),
            }
        }
    }
}

impl<X: ReadContext, L: Load<X>> std::fmt::Debug for ReadFuture<X, L> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReadFuture")
            .field("key", &KeyDigest(&self.key))
            .finish_non_exhaustive()
    }
}
