//! Request coalescing: concurrent loads of one key share one load.
//!
//! The load runs on its own Tokio task, so it finishes (and fills the cache) even when every
//! caller that waits for it is cancelled, and no waiter depends on another caller's future
//! being polled (moka#240 is that bug).

use std::any::Any;
use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};

use futures_util::future::{FutureExt, Shared};

use crate::key::Key;

/// A load's outcome as every waiter sees it; `Err(Panicked)` when the load panicked.
pub(crate) type Outcome<V, E> = Result<Result<V, E>, Panicked>;

pub(crate) type SharedLoad<V, E> = Shared<Pin<Box<dyn Future<Output = Outcome<V, E>> + Send>>>;

/// The load of a coalesced key panicked; every waiter re-raises it.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Panicked;

/// A load in flight: its id, and its `SharedLoad<V, E>` (one key) or `BatchLoad<V, E>` (one
/// key of a batch) behind `Any`, since `E` is chosen per call.
type Flight = (u64, Arc<dyn Any + Send + Sync>);

/// The loads in flight, by key.
#[derive(Default)]
pub(crate) struct Flights {
    loads: Mutex<HashMap<Key, Flight>>,
    next_id: std::sync::atomic::AtomicU64,
}

impl Flights {
    /// Joins the load of `key` in flight, or starts `start()` as the load and registers it;
    /// `true` when it started it. The started future must call [`Flights::finish`] with the
    /// id it is given once its value is in the cache.
    pub(crate) fn join_or_start<V, E, F>(
        &self,
        key: &Key,
        start: impl FnOnce(u64) -> F,
    ) -> (SharedLoad<V, E>, bool)
    where
        V: Clone + Send + Sync + 'static,
        E: Clone + Send + Sync + 'static,
        F: Future<Output = Result<V, E>> + Send + 'static,
    {
        let (load, unused) = self.join_or_start_with(key, (), |id, ()| start(id));
        (load, unused.is_none())
    }

    /// [`Flights::join_or_start`], handing `payload` to `start` — or back to the caller when
    /// it joins a load in flight instead.
    pub(crate) fn join_or_start_with<V, E, P, F>(
        &self,
        key: &Key,
        payload: P,
        start: impl FnOnce(u64, P) -> F,
    ) -> (SharedLoad<V, E>, Option<P>)
    where
        V: Clone + Send + Sync + 'static,
        E: Clone + Send + Sync + 'static,
        F: Future<Output = Result<V, E>> + Send + 'static,
    {
        let mut loads = self.loads.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((_, load)) = loads.get(key) {
            if let Some(load) = load.downcast_ref::<SharedLoad<V, E>>() {
                return (load.clone(), Some(payload));
            }
        }
        let id = self
            .next_id
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let task = tokio::spawn(start(id, payload));
        let load: Pin<Box<dyn Future<Output = Outcome<V, E>> + Send>> =
            Box::pin(task.map(|joined| joined.map_err(|_| Panicked)));
        let load = load.shared();
        loads.insert(key.clone(), (id, Arc::new(load.clone())));
        (load, None)
    }

    /// Forgets the load `id` of `key`, so that the next miss starts a new one.
    pub(crate) fn finish(&self, key: &Key, id: u64) {
        let mut loads = self.loads.lock().unwrap_or_else(|e| e.into_inner());
        if loads.get(key).is_some_and(|(current, _)| *current == id) {
            loads.remove(key);
        }
    }
}

/// One key's share of a batch load: `None` when the loader did not return the key.
pub(crate) type BatchLoad<V, E> = SharedLoad<Option<V>, E>;

/// How a key of a batch is waited for.
pub(crate) enum Joined<V, E> {
    /// A single-key load that was already in flight.
    Single(SharedLoad<V, E>),
    /// A batch load, this call's or an earlier one's.
    Batch(BatchLoad<V, E>),
}

impl Flights {
    /// The batch load in flight for `key`, if there is one.
    pub(crate) fn join_batch<V, E>(&self, key: &Key) -> Option<BatchLoad<V, E>>
    where
        V: Clone + Send + Sync + 'static,
        E: Clone + Send + Sync + 'static,
    {
        let loads = self.loads.lock().unwrap_or_else(|e| e.into_inner());
        loads
            .get(key)
            .and_then(|(_, load)| load.downcast_ref::<BatchLoad<V, E>>())
            .cloned()
    }

    /// For each key, joins the load in flight (single or batch), and starts **one** load of
    /// all the others with `start(keys, id)`. The started future must call
    /// [`Flights::finish`] for each of its keys once their values are in the cache.
    pub(crate) fn join_or_start_many<V, E, F>(
        &self,
        keys: &[Key],
        start: impl FnOnce(Vec<Key>, u64) -> F,
    ) -> Vec<Joined<V, E>>
    where
        V: Clone + Send + Sync + 'static,
        E: Clone + Send + Sync + 'static,
        F: Future<Output = Result<Arc<HashMap<Key, V>>, E>> + Send + 'static,
    {
        let mut loads = self.loads.lock().unwrap_or_else(|e| e.into_inner());
        let mut joined: Vec<Option<Joined<V, E>>> = keys
            .iter()
            .map(|key| {
                let (_, load) = loads.get(key)?;
                if let Some(single) = load.downcast_ref::<SharedLoad<V, E>>() {
                    return Some(Joined::Single(single.clone()));
                }
                load.downcast_ref::<BatchLoad<V, E>>()
                    .map(|batch| Joined::Batch(batch.clone()))
            })
            .collect();
        let missing: Vec<Key> = keys
            .iter()
            .zip(&joined)
            .filter(|(_, joined)| joined.is_none())
            .map(|(key, _)| key.clone())
            .collect();
        if !missing.is_empty() {
            let id = self
                .next_id
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let task = tokio::spawn(start(missing, id));
            let batch: Pin<Box<dyn Future<Output = Outcome<Arc<HashMap<Key, V>>, E>> + Send>> =
                Box::pin(task.map(|joined| joined.map_err(|_| Panicked)));
            let batch = batch.shared();
            for (key, slot) in keys.iter().zip(joined.iter_mut()) {
                if slot.is_some() {
                    continue;
                }
                let own_key = key.clone();
                let share: Pin<Box<dyn Future<Output = Outcome<Option<V>, E>> + Send>> =
                    Box::pin(batch.clone().map(move |outcome| {
                        outcome.map(|result| result.map(|values| values.get(&own_key).cloned()))
                    }));
                let share = share.shared();
                loads.insert(key.clone(), (id, Arc::new(share.clone())));
                *slot = Some(Joined::Batch(share));
            }
        }
        joined
            .into_iter()
            .map(|joined| joined.expect("every key joined or started"))
            .collect()
    }
}

/// Re-raises a coalesced load's panic in a waiter.
pub(crate) fn unwrap_outcome<V, E>(outcome: Outcome<V, E>) -> Result<V, E> {
    match outcome {
        Ok(result) => result,
        Err(Panicked) => panic!("the coalesced load of a cache key panicked"),
    }
}
