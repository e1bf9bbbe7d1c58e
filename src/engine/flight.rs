//! The loads in flight, one per key, and their leases.
//!
//! - **One load per key.** A miss joins the load of its key in flight, or starts it. The load
//!   runs on its own Tokio task, so a waiter that is cancelled never stalls the others, and
//!   no waiter depends on another caller's future being polled (moka#240 is that bug).
//! - **Supervised.** A load is removed from the table by a guard that lives on its task, so a
//!   load that panics, or whose task is aborted, is forgotten all the same: its waiters get
//!   [`Landed::Panicked`] and the next miss starts a new load. A panic never wedges a key.
//! - **Leases** (memcache's, Nishtala et al., NSDI 2013). Every load holds a [`Lease`]; a write
//!   or invalidation of its key — or of many keys at once — voids it, and a load whose lease
//!   is void does not store its value (it still answers its waiters). So a load that read the
//!   old row never overwrites the value a write stored after it.
//! - **Airtight coalescing.** Every load that ends bumps [`Flights::landed`], and stays
//!   joinable for a while among the recently landed ones. A lookup reads the count before
//!   asking the store; when its miss finds no load in flight but the count moved, a load may
//!   have finished in between: the caller takes that load's result if it is among the
//!   recent ones (whether or not the store kept its value: it may be failing or slow), or
//!   looks again instead of loading a second time.

use std::any::Any;
use std::collections::HashMap;
use std::future::Future;
use std::marker::PhantomData;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use futures_util::future::{FutureExt, Shared};

use crate::key::Key;

/// What a load gives everyone who waited for it.
pub(crate) enum Landed<V, E> {
    /// A value every waiter may be given.
    Value(V),
    /// A result only its leader may see (an HTTP response that was not stored); `failed`: it
    /// is a failure, for which a stale value may stand in.
    Private { failed: bool },
    /// A batch load that did not return this key.
    Missing,
    /// The loader's error, shared.
    Failed(Arc<E>),
    /// The load panicked or its task was aborted.
    Panicked,
}

impl<V: Clone, E> Clone for Landed<V, E> {
    fn clone(&self) -> Self {
        match self {
            Landed::Value(value) => Landed::Value(value.clone()),
            Landed::Private { failed } => Landed::Private { failed: *failed },
            Landed::Missing => Landed::Missing,
            Landed::Failed(error) => Landed::Failed(error.clone()),
            Landed::Panicked => Landed::Panicked,
        }
    }
}

/// A load in flight, as its waiters poll it.
pub(crate) type SharedLoad<V, E> = Shared<Pin<Box<dyn Future<Output = Landed<V, E>> + Send>>>;

/// The entry of a load in the table: its shared future, typed by value, error and the kind
/// of private result, so that only loads of one kind join each other.
struct Typed<V, E, P>(SharedLoad<V, E>, PhantomData<fn() -> P>);

struct Flight {
    id: u64,
    lease: Arc<AtomicBool>,
    /// Until when (ms since the epoch) the load's value, which the store did not keep, may
    /// answer later misses of the key; 0 when the store kept it.
    unkept_until: Arc<AtomicU64>,
    load: Arc<dyn Any + Send + Sync>,
}

impl Flight {
    /// Whether misses that began after the load ended may still take its value: the store
    /// failed to keep it (timed out, refused), so looking again would find nothing.
    fn answers_later_misses(&self) -> bool {
        self.unkept_until.load(Ordering::Acquire) > crate::frame::now_ms()
    }
}

/// A load's right to store its value: void once its key was written or invalidated since
/// the load began.
#[derive(Clone, Debug)]
pub(crate) struct Lease {
    void: Arc<AtomicBool>,
    unkept_until: Arc<AtomicU64>,
    epoch: u64,
    inner: Arc<Inner>,
}

impl Lease {
    /// Whether no write or invalidation of the key happened since the load began.
    pub(crate) fn is_current(&self) -> bool {
        !self.void.load(Ordering::Acquire) && self.inner.epoch.load(Ordering::Acquire) == self.epoch
    }

    /// The store could not keep the value, fresh for `fresh`: until then (or until a write
    /// of the key, or until 1024 later loads push it out), the misses of this process whose
    /// lookup failed too share it rather than load again while the store is failing; once
    /// a lookup succeeds again, a miss loads and stores anew.
    pub(crate) fn not_kept(&self, fresh: Option<Duration>) {
        let until = match fresh {
            Some(fresh) => crate::frame::now_ms().saturating_add(crate::frame::millis(fresh)),
            None => u64::MAX,
        };
        self.unkept_until.store(until.max(1), Ordering::Release);
    }
}

#[derive(Debug, Default)]
struct Inner {
    loads: Mutex<Table>,
    next_id: AtomicU64,
    landed: AtomicU64,
    epoch: AtomicU64,
}

/// How many ended loads stay joinable, for the lookups that began before they ended: the
/// bound on the memory their values hold. Not a time: under a burst that makes the store
/// time out, lookups that began before a load ended may come back seconds later (50,000
/// of them next to two spinning threads took 31 s in all, and a 2 s bound let 50 to 176
/// loads of 25 keys through), and each may
/// still take that load's value instead of loading again.
const RECENT: usize = 1024;

#[derive(Debug, Default)]
struct Table {
    /// The loads in flight.
    flying: HashMap<Key, FlightEntry>,
    /// Loads that ended, with the [`Flights::landed`] count at their end.
    recent: HashMap<Key, (u64, FlightEntry)>,
    /// The order they ended in, to forget the oldest.
    ended: std::collections::VecDeque<(Key, u64)>,
}

impl Table {
    fn land(&mut self, key: &Key, id: u64, stamp: u64) {
        if self.flying.get(key).is_none_or(|entry| entry.0.id != id) {
            return;
        }
        let Some(entry) = self.flying.remove(key) else {
            return;
        };
        while self.ended.len() >= RECENT {
            let Some((oldest, at)) = self.ended.pop_front() else {
                break;
            };
            if self
                .recent
                .get(&oldest)
                .is_some_and(|(stamp, _)| *stamp == at)
            {
                self.recent.remove(&oldest);
            }
        }
        self.ended.push_back((key.clone(), stamp));
        self.recent.insert(key.clone(), (stamp, entry));
    }
}

struct FlightEntry(Flight);

impl std::fmt::Debug for FlightEntry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Flight").field("id", &self.0.id).finish()
    }
}

/// The table of loads in flight of one cache (and its typed views).
#[derive(Clone, Debug, Default)]
pub(crate) struct Flights {
    inner: Arc<Inner>,
}

/// Removes a load from the table when dropped: at the end of its task, or while the task
/// unwinds from a panic, or when the task is aborted.
pub(crate) struct Landing {
    inner: Arc<Inner>,
    keys: Vec<Key>,
    id: u64,
}

impl Drop for Landing {
    fn drop(&mut self) {
        let mut table = lock(&self.inner.loads);
        // Under the table's lock: whoever finds the load gone also sees the count moved.
        let stamp = self.inner.landed.fetch_add(1, Ordering::AcqRel) + 1;
        for key in &self.keys {
            table.land(key, self.id, stamp);
        }
    }
}

/// What [`Flights::join_or_start`] did.
pub(crate) enum Joined<V, E, L> {
    /// Joined the load in flight; the loader comes back unused.
    Waiting(SharedLoad<V, E>, L),
    /// Started the load with the loader.
    Started(SharedLoad<V, E>),
    /// No load in flight, but one landed since the lookup began: look again.
    LookAgain(L),
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Runs `load` on its own task; its panic or abort is [`Landed::Panicked`] for the waiters.
fn spawn_shared<V, E>(load: impl Future<Output = Landed<V, E>> + Send + 'static) -> SharedLoad<V, E>
where
    V: Clone + Send + Sync + 'static,
    E: Send + Sync + 'static,
{
    let task = tokio::spawn(load);
    let load: Pin<Box<dyn Future<Output = Landed<V, E>> + Send>> =
        Box::pin(task.map(|joined| joined.unwrap_or(Landed::Panicked)));
    load.shared()
}

impl Flights {
    /// How many loads ended so far; read it before a lookup.
    #[inline]
    pub(crate) fn landed(&self) -> u64 {
        self.inner.landed.load(Ordering::Acquire)
    }

    /// Voids the lease of the load of `key` in flight, if any: `key` was written or
    /// invalidated, so what that load read may be older.
    pub(crate) fn supersede(&self, key: &Key) {
        let mut table = lock(&self.inner.loads);
        if let Some(entry) = table.flying.get(key) {
            entry.0.lease.store(true, Ordering::Release);
        }
        // What an ended load read is older than this write: nobody may take it now.
        table.recent.remove(key);
    }

    /// Voids the leases of the keys `pattern` matches: a pattern delete must not void the
    /// loads of unrelated keys (each would then answer but store nothing).
    pub(crate) fn supersede_matching(&self, pattern: &crate::key::Pattern) {
        let mut table = lock(&self.inner.loads);
        for (key, entry) in &table.flying {
            if pattern.matches(key.as_str()) {
                entry.0.lease.store(true, Ordering::Release);
            }
        }
        table.recent.retain(|key, _| !pattern.matches(key.as_str()));
    }

    /// Voids every lease: many keys were invalidated at once (a tag).
    pub(crate) fn supersede_all(&self) {
        let mut table = lock(&self.inner.loads);
        self.inner.epoch.fetch_add(1, Ordering::AcqRel);
        table.recent.clear();
        table.ended.clear();
    }

    /// Joins the load of `key` in flight, or starts one with `start(loader, lease, landing)`
    /// on its own task. `seen`, the [`landed`](Flights::landed) count read before the
    /// caller's lookup: when no load is in flight but the count moved since, the caller is
    /// told to look again instead. `P` is the kind of private result the loader may have:
    /// loads of different kinds never join each other.
    pub(crate) fn join_or_start<V, E, P, L, F>(
        &self,
        key: &Key,
        seen: Option<u64>,
        lookup_failed: bool,
        loader: L,
        start: impl FnOnce(L, Lease, Landing) -> F,
    ) -> Joined<V, E, L>
    where
        V: Clone + Send + Sync + 'static,
        E: Send + Sync + 'static,
        P: 'static,
        F: Future<Output = Landed<V, E>> + Send + 'static,
    {
        let mut table = lock(&self.inner.loads);
        let registered = match table.flying.get(key) {
            Some(entry) => match entry.0.load.downcast_ref::<Typed<V, E, P>>() {
                Some(load) => return Joined::Waiting(load.0.clone(), loader),
                // Another kind of load (another view's type) has the key: this one runs
                // beside it, unregistered.
                None => false,
            },
            None => {
                // A load of the key that ended since the lookup began, or — when this
                // lookup failed too — one whose value the store did not keep (a reload,
                // `seen` none, takes neither).
                let moved = seen.filter(|seen| *seen != self.landed());
                let ended = seen
                    .and_then(|_| table.recent.get(key))
                    .filter(|(stamp, entry)| {
                        moved.is_some_and(|seen| *stamp > seen)
                            || lookup_failed && entry.0.answers_later_misses()
                    })
                    .and_then(|(_, entry)| entry.0.load.downcast_ref::<Typed<V, E, P>>());
                match (ended, moved) {
                    (Some(load), _) => return Joined::Waiting(load.0.clone(), loader),
                    (None, Some(_)) => return Joined::LookAgain(loader),
                    (None, None) => true,
                }
            }
        };
        let id = self.inner.next_id.fetch_add(1, Ordering::Relaxed);
        let void = Arc::new(AtomicBool::new(false));
        let unkept_until = Arc::new(AtomicU64::new(0));
        let lease = Lease {
            void: void.clone(),
            unkept_until: unkept_until.clone(),
            epoch: self.inner.epoch.load(Ordering::Acquire),
            inner: self.inner.clone(),
        };
        let landing = Landing {
            inner: self.inner.clone(),
            keys: if registered {
                vec![key.clone()]
            } else {
                Vec::new()
            },
            id,
        };
        let load = spawn_shared(start(loader, lease, landing));
        if registered {
            let typed: Typed<V, E, P> = Typed(load.clone(), PhantomData);
            table.recent.remove(key);
            table.flying.insert(
                key.clone(),
                FlightEntry(Flight {
                    id,
                    lease: void,
                    unkept_until,
                    load: Arc::new(typed),
                }),
            );
        }
        Joined::Started(load)
    }

    /// For each key, joins the load in flight of the same kind, and starts **one** load of
    /// all the others with `start(keys, leases, landing)` (one lease per key, in order),
    /// which yields each key's value.
    pub(crate) fn join_or_start_many<V, E, P, F>(
        &self,
        keys: &[Key],
        seen: u64,
        lookup_failed: bool,
        start: impl FnOnce(Vec<Key>, Vec<Lease>, Landing) -> F,
    ) -> Vec<SharedLoad<V, E>>
    where
        V: Clone + Send + Sync + 'static,
        E: Send + Sync + 'static,
        P: 'static,
        F: Future<Output = Result<Arc<HashMap<Key, V>>, Landed<V, E>>> + Send + 'static,
    {
        let mut table = lock(&self.inner.loads);
        let moved = seen != self.landed();
        let mut joined: Vec<Option<SharedLoad<V, E>>> = keys
            .iter()
            .map(|key| {
                // In flight, or (as for one key) ended since the lookup began, or unkept.
                let entry = table.flying.get(key).or_else(|| {
                    let (stamp, entry) = table.recent.get(key)?;
                    (moved && *stamp > seen || lookup_failed && entry.0.answers_later_misses())
                        .then_some(entry)
                })?;
                entry
                    .0
                    .load
                    .downcast_ref::<Typed<V, E, P>>()
                    .map(|load| load.0.clone())
            })
            .collect();
        // Keys held by another kind of load are loaded here too, unregistered.
        let unjoined: Vec<(Key, bool)> = keys
            .iter()
            .zip(&joined)
            .filter(|(_, joined)| joined.is_none())
            .map(|(key, _)| (key.clone(), !table.flying.contains_key(key)))
            .collect();
        if unjoined.is_empty() {
            return joined.into_iter().flatten().collect();
        }
        let id = self.inner.next_id.fetch_add(1, Ordering::Relaxed);
        let epoch = self.inner.epoch.load(Ordering::Acquire);
        let voids: Vec<(Arc<AtomicBool>, Arc<AtomicU64>)> = unjoined
            .iter()
            .map(|_| {
                (
                    Arc::new(AtomicBool::new(false)),
                    Arc::new(AtomicU64::new(0)),
                )
            })
            .collect();
        let leases = voids
            .iter()
            .map(|(void, unkept_until)| Lease {
                void: void.clone(),
                unkept_until: unkept_until.clone(),
                epoch,
                inner: self.inner.clone(),
            })
            .collect();
        let landing = Landing {
            inner: self.inner.clone(),
            keys: unjoined
                .iter()
                .filter(|(_, register)| *register)
                .map(|(key, _)| key.clone())
                .collect(),
            id,
        };
        let batch_keys = unjoined.iter().map(|(key, _)| key.clone()).collect();
        let task = tokio::spawn(start(batch_keys, leases, landing));
        let batch: Pin<
            Box<dyn Future<Output = Result<Arc<HashMap<Key, V>>, Landed<V, E>>> + Send>,
        > = Box::pin(task.map(|joined| joined.unwrap_or(Err(Landed::Panicked))));
        let batch = batch.shared();
        let mut unjoined = unjoined.into_iter().zip(voids);
        for slot in joined.iter_mut().filter(|slot| slot.is_none()) {
            let Some(((key, register), (void, unkept_until))) = unjoined.next() else {
                break;
            };
            let own_key = key.clone();
            let share: Pin<Box<dyn Future<Output = Landed<V, E>> + Send>> =
                Box::pin(batch.clone().map(move |outcome| {
                    match outcome {
                        Ok(values) => values
                            .get(&own_key)
                            .cloned()
                            .map_or(Landed::Missing, Landed::Value),
                        Err(failed) => failed,
                    }
                }));
            let share = share.shared();
            if register {
                let typed: Typed<V, E, P> = Typed(share.clone(), PhantomData);
                table.recent.remove(&key);
                table.flying.insert(
                    key,
                    FlightEntry(Flight {
                        id,
                        lease: void,
                        unkept_until,
                        load: Arc::new(typed),
                    }),
                );
            }
            *slot = Some(share);
        }
        joined.into_iter().flatten().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(name: &str) -> Key {
        Key::new(name).unwrap()
    }

    #[tokio::test]
    async fn a_panicking_load_is_forgotten_and_its_waiters_told() {
        let flights = Flights::default();
        let joined = flights.join_or_start::<u8, (), (), _, _>(
            &key("k"),
            None,
            false,
            (),
            |(), _, landing| async move {
                let _landing = landing;
                panic!("loader bug")
            },
        );
        let Joined::Started(load) = joined else {
            panic!("nothing was in flight")
        };
        assert!(matches!(load.await, Landed::Panicked));
        // The next miss starts a new load.
        let again = flights.join_or_start::<u8, (), (), _, _>(
            &key("k"),
            None,
            false,
            (),
            |(), _, landing| async move {
                let _landing = landing;
                Landed::Value(1)
            },
        );
        assert!(matches!(again, Joined::Started(_)));
    }

    #[tokio::test]
    async fn a_write_voids_the_lease_of_the_load_in_flight() {
        let flights = Flights::default();
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let joined = flights.join_or_start::<bool, (), (), _, _>(
            &key("k"),
            None,
            false,
            rx,
            |rx, lease, landing| async move {
                let _landing = landing;
                let _ = rx.await;
                Landed::Value(lease.is_current())
            },
        );
        let Joined::Started(load) = joined else {
            panic!("nothing was in flight")
        };
        flights.supersede(&key("k"));
        tx.send(()).unwrap();
        assert!(matches!(load.await, Landed::Value(false)));
    }

    #[tokio::test]
    async fn a_pattern_voids_only_the_leases_it_matches() {
        let flights = Flights::default();
        let mut loads = Vec::new();
        let mut senders = Vec::new();
        for name in ["user:1", "user:2", "order:1"] {
            let (tx, rx) = tokio::sync::oneshot::channel::<()>();
            senders.push(tx);
            let joined = flights.join_or_start::<bool, (), (), _, _>(
                &key(name),
                None,
                false,
                rx,
                |rx, lease, landing| async move {
                    let _landing = landing;
                    let _ = rx.await;
                    Landed::Value(lease.is_current())
                },
            );
            let Joined::Started(load) = joined else {
                panic!("nothing was in flight")
            };
            loads.push(load);
        }
        flights.supersede_matching(&crate::key::Pattern::prefix("user:"));
        for tx in senders {
            tx.send(()).unwrap();
        }
        let mut current = Vec::new();
        for load in loads {
            current.push(matches!(load.await, Landed::Value(true)));
        }
        assert_eq!(current, [false, false, true]);
    }

    #[tokio::test]
    async fn a_miss_that_began_before_a_load_ended_takes_its_value() {
        let flights = Flights::default();
        let start = |flights: &Flights, name: &str, seen: Option<u64>, value: u8| {
            flights.join_or_start::<u8, (), (), _, _>(
                &key(name),
                seen,
                false,
                (),
                move |(), _, landing| async move {
                    let _landing = landing;
                    Landed::Value(value)
                },
            )
        };
        let seen = flights.landed();
        let Joined::Started(load) = start(&flights, "k", Some(seen), 1) else {
            panic!("nothing was in flight")
        };
        load.await;
        // A lookup that began before the load ended, joining after it ended.
        let Joined::Waiting(ended, ()) = start(&flights, "k", Some(seen), 2) else {
            panic!("started a second load")
        };
        assert!(matches!(ended.await, Landed::Value(1)));
        // One that began after it ended is a miss of its own.
        assert!(matches!(
            start(&flights, "k", Some(flights.landed()), 2),
            Joined::Started(_)
        ));
        // After a write, nobody may take what an ended load read.
        let seen = flights.landed();
        let Joined::Started(load) = start(&flights, "w", Some(seen), 1) else {
            panic!("nothing was in flight")
        };
        load.await;
        flights.supersede(&key("w"));
        assert!(matches!(
            start(&flights, "w", Some(seen), 2),
            Joined::LookAgain(())
        ));
    }
}
