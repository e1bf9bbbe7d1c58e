//! Concurrent lookups on one connection, sent as one `MGET` ([`RedisStore::batch_lookups`]).
//!
//! A lookup goes out at once as a `GET` while fewer than [`Batching::in_flight`] commands of
//! the store's lookups are out; past that it joins the next batch, which a task sends as
//! one `MGET` as soon as the runtime gets to it — after the task that made the lookup
//! yields, so every lookup made in the same turn (a server's requests polled together, a
//! `join_all`) leaves in it. So one lookup at a time costs what it did (a `GET`, no task, no
//! wait), and many at once cost the client and the server one command per batch instead of
//! one per lookup, for the latency of a task switch.
//!
//! [`RedisStore::batch_lookups`]: super::RedisStore::batch_lookups

use std::sync::{Arc, Mutex, MutexGuard};

use bytes::Bytes;
use tokio::sync::oneshot;

use crate::key::Key;
use crate::store::commands::{Commands, GetFuture, bounded};
use crate::store::{RedisConnection, StoreError, StoreValue};

/// How a store batches its lookups: see [`RedisStore::batch_lookups`](super::RedisStore::batch_lookups).
#[derive(Debug, Clone, Copy)]
pub(super) struct Batching {
    /// How many lookup commands (`GET` or `MGET`) may be out at once.
    pub(super) in_flight: usize,
    /// The most keys one `MGET` asks for.
    pub(super) max_keys: usize,
}

/// The lookups of one store (shared by its clones).
pub(super) struct Batcher {
    batching: Batching,
    commands: Commands<RedisConnection>,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    /// Lookup commands out now.
    out: usize,
    /// Lookups waiting for the next batch, oldest first.
    waiting: Vec<Waiting>,
    /// Whether a task is on its way to send the next batch.
    sending: bool,
}

struct Waiting {
    key: Key,
    reply: oneshot::Sender<Result<Option<StoreValue>, StoreError>>,
}

/// One of the store's lookup commands, out: dropped when its reply came (or its future was
/// dropped), it frees its place.
struct Out(Arc<Batcher>);

impl Drop for Out {
    fn drop(&mut self) {
        self.0.state().out -= 1;
    }
}

impl Batcher {
    pub(super) fn new(batching: Batching, commands: Commands<RedisConnection>) -> Arc<Self> {
        Arc::new(Batcher {
            batching,
            commands,
            state: Mutex::new(State::default()),
        })
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Looks `key` up: a `GET` now if there is room, else a place in the next `MGET`.
    pub(super) fn get(self: &Arc<Self>, key: &Key) -> GetFuture {
        let commands = &self.commands;
        if let Some(rejected) = commands.reject_inspected(key) {
            return Box::pin(std::future::ready(Err(rejected)));
        }
        let runtime = tokio::runtime::Handle::try_current();
        let mut state = self.state();
        // Without a runtime to send a batch on, a lookup goes alone.
        if state.out < self.batching.in_flight || runtime.is_err() {
            state.out += 1;
            drop(state);
            return commands.get_holding(key, Out(self.clone()));
        }
        let (reply, answer) = oneshot::channel();
        state.waiting.push(Waiting {
            key: key.clone(),
            reply,
        });
        if !state.sending {
            state.sending = true;
            if let Ok(runtime) = runtime {
                runtime.spawn(Sending(Some(self.clone())).send_next());
            }
        }
        drop(state);
        // The wait is bounded by the command timeout as a lookup of its own would be: the
        // commands out are bounded by it, and so is the `MGET` this one joins.
        let timeout = commands.timeout;
        Box::pin(async move {
            match tokio::time::timeout(timeout, answer).await {
                Ok(Ok(result)) => result,
                Ok(Err(_)) => Err(StoreError::Backend {
                    operation: "get",
                    source: "the batched lookup was dropped before it was sent (the runtime is shutting down)".into(),
                }),
                Err(_) => Err(StoreError::Timeout {
                    operation: "get",
                    timeout,
                }),
            }
        })
    }
}

/// The task on its way to send the next batch. Dropped before it ran (its runtime shut
/// down), it says so, and the next lookup to wait schedules another.
struct Sending(Option<Arc<Batcher>>);

impl Drop for Sending {
    fn drop(&mut self) {
        if let Some(batcher) = self.0.take() {
            batcher.state().sending = false;
        }
    }
}

impl Sending {
    /// Sends what waits: one `MGET`, or one for each [`Batching::max_keys`] of it, at once.
    async fn send_next(mut self) {
        let Some(batcher) = self.0.take() else {
            return;
        };
        let batches: Vec<Batch> = {
            let mut state = batcher.state();
            state.sending = false;
            // Lookups given up meanwhile (timed out, cancelled) are not fetched.
            let mut waiting = std::mem::take(&mut state.waiting);
            waiting.retain(|waiting| !waiting.reply.is_closed());
            let mut batches = Vec::new();
            while !waiting.is_empty() {
                let rest = waiting.split_off(waiting.len().min(batcher.batching.max_keys));
                batches.push(Batch { waiting });
                waiting = rest;
            }
            state.out += batches.len();
            batches
        };
        futures_util::future::join_all(
            batches
                .into_iter()
                .map(|batch| batch.send(Out(batcher.clone()))),
        )
        .await;
    }
}

/// Lookups that leave together.
struct Batch {
    waiting: Vec<Waiting>,
}

impl Batch {
    async fn send(self, out: Out) {
        let commands = &out.0.commands;
        let mut mget = redis::cmd("MGET");
        for waiting in &self.waiting {
            mget.arg(waiting.key.as_str());
        }
        let mut connection = commands.connection.clone();
        let reply: Result<Vec<Option<Vec<u8>>>, StoreError> =
            bounded("get", commands.timeout, mget.query_async(&mut connection)).await;
        // The place is free for the next batch before these replies are handed out.
        let batcher = out.0.clone();
        drop(out);
        let commands = &batcher.commands;
        match reply {
            Ok(values) if values.len() == self.waiting.len() => {
                for (waiting, value) in self.waiting.into_iter().zip(values) {
                    let value = value.map(|bytes| StoreValue::new(Bytes::from(bytes)));
                    let _ = waiting.reply.send(Ok(value));
                }
            }
            Ok(values) => {
                let message = format!(
                    "MGET of {} keys answered with {} values",
                    self.waiting.len(),
                    values.len()
                );
                for waiting in self.waiting {
                    let _ = waiting.reply.send(Err(StoreError::Backend {
                        operation: "get",
                        source: message.clone().into(),
                    }));
                }
            }
            Err(error) => {
                let timed_out = matches!(error, StoreError::Timeout { .. });
                let message = error.to_string();
                for waiting in self.waiting {
                    if timed_out {
                        // Any of them may hold what stalled the reply.
                        commands.inspect_after_timeout(waiting.key.as_str().as_bytes());
                    }
                    let _ = waiting.reply.send(Err(match &error {
                        StoreError::Timeout { operation, timeout } => StoreError::Timeout {
                            operation,
                            timeout: *timeout,
                        },
                        StoreError::Rejected { .. } => StoreError::Rejected {
                            operation: "get",
                            source: message.clone().into(),
                        },
                        _ => StoreError::Backend {
                            operation: "get",
                            source: message.clone().into(),
                        },
                    }));
                }
            }
        }
    }
}
