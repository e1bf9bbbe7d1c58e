use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, ready};

use futures_util::future::{FutureExt, Shared};
use pin_project::pin_project;
use tokio::sync::{OwnedSemaphorePermit, oneshot};
use tokio::task::JoinHandle;
use tokio_util::sync::PollSemaphore;
use tower_layer::Layer;
use tower_service::Service;
use tracing::Instrument;

use super::queue::Queue;
use super::{
    Acknowledge, DeadLetterHook, Enqueue, InMemoryQueue, RequestToValue, Unqueued, WriteBehind,
    WriteQueue, WriterMode,
};
use crate::BoxError;
use crate::cache::{Cacheable, PendingWrites};
use crate::codec::Codec;
use crate::key::Key;
use crate::key::KeyExtractor;
use crate::layer::CacheLayer;
use crate::metrics::{KeyDigest, Strategy};
use crate::store::Store;
use crate::task::{Completion, run_to_completion};
use crate::ttl::TtlPolicy;

/// The service of [`WriteBehind`] around the writer `Svc`. Its clones share one queue,
/// which belongs to them: its worker starts with the first request (or
/// [`start`](Self::start)), and once the last clone is dropped it writes what is left and
/// ends.
pub struct WriteBehindService<Svc, Req, S, K, T> {
    inner: Svc,
    layer: Arc<CacheLayer<S, K, T>>,
    queue: Arc<Producers<Req>>,
    room: PollSemaphore,
    permit: Option<OwnedSemaphorePermit>,
}

/// The services' shared hold on their queue.
pub(super) struct Producers<Req> {
    queue: Arc<dyn WriteQueue<Req>>,
    started: AtomicBool,
    order: Arc<KeyOrder>,
}

impl<Req> Producers<Req> {
    pub(super) fn new(queue: Arc<dyn WriteQueue<Req>>) -> Arc<Self> {
        Arc::new(Producers {
            queue,
            started: AtomicBool::new(false),
            order: Arc::default(),
        })
    }
}

/// Orders the cache steps of one key's writes as the writes were queued: each waits for the
/// previous one's, so two writes of a key reach the cache in queue order, whatever order
/// their round trips would land in.
#[derive(Default)]
struct KeyOrder {
    last: Mutex<HashMap<Key, (u64, Shared<oneshot::Receiver<()>>)>>,
    next: AtomicU64,
}

impl KeyOrder {
    /// Takes the next turn of `key`; taken in `call`, so in queue order.
    fn enter(self: &Arc<Self>, key: &Key) -> Turn {
        let (done, finished) = oneshot::channel();
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        let previous = self
            .last
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(key.clone(), (id, finished.shared()))
            .map(|(_, previous)| previous);
        Turn {
            order: self.clone(),
            key: key.clone(),
            id,
            previous,
            _done: done,
        }
    }
}

/// One write's turn at its key's cache entry; dropping it (done, or panicked) hands the
/// turn on.
struct Turn {
    order: Arc<KeyOrder>,
    key: Key,
    id: u64,
    previous: Option<Shared<oneshot::Receiver<()>>>,
    _done: oneshot::Sender<()>,
}

impl Turn {
    /// Caches the write's value (or invalidates the key) once the key's previous write has
    /// been cached, then hands the turn on.
    async fn cache<V: Cacheable, St: Store, C: Codec<V>>(
        mut self,
        cache: &crate::cache::Cache<V, St, C>,
        key: &Key,
        value: Option<&V>,
        ttl: Option<std::time::Duration>,
    ) {
        if let Some(previous) = self.previous.take() {
            let _ = previous.await;
        }
        cache
            .store_or_invalidate(Strategy::WriteBehind, key, value, ttl)
            .await;
    }
}

impl Drop for Turn {
    fn drop(&mut self) {
        let mut last = self.order.last.lock().unwrap_or_else(|e| e.into_inner());
        if last.get(&self.key).is_some_and(|(id, _)| *id == self.id) {
            last.remove(&self.key);
        }
    }
}

impl<Req> std::ops::Deref for Producers<Req> {
    type Target = dyn WriteQueue<Req>;

    fn deref(&self) -> &Self::Target {
        &*self.queue
    }
}

impl<Req> Drop for Producers<Req> {
    fn drop(&mut self) {
        // The last service is gone: nothing more can be queued.
        self.queue.producers_gone();
    }
}

impl<Svc, Req, S, K, T> WriteBehindService<Svc, Req, S, K, T> {
    pub(super) fn new(
        inner: Svc,
        layer: CacheLayer<S, K, T>,
        queue: Arc<dyn WriteQueue<Req>>,
    ) -> Self {
        WriteBehindService {
            inner,
            layer: Arc::new(layer),
            room: PollSemaphore::new(queue.room()),
            queue: Producers::new(queue),
            permit: None,
        }
    }

    /// The inner writer. See [`queue_depth`](Self::queue_depth) for a service in use.
    pub fn get_ref(&self) -> &Svc {
        &self.inner
    }

    /// The inner writer, mutably. See [`get_ref`](Self::get_ref).
    pub fn get_mut(&mut self) -> &mut Svc {
        &mut self.inner
    }

    /// The inner writer, consuming the service. Queued writes stay with the queue's worker.
    /// See [`get_ref`](Self::get_ref).
    pub fn into_inner(self) -> Svc {
        self.inner
    }

    /// How many writes this process holds, waiting or running: the
    /// `write_behind_queue_size` gauge.
    ///
    /// ```
    /// use tower::ServiceExt;
    /// use tower_caching::{key::Key, Cache, CacheLayer};
    /// use tower_layer::Layer;
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// let cache: Cache<u64> = Cache::in_memory();
    /// let service = CacheLayer::write_behind(cache.clone())
    ///     .key(|n: &u64| Key::new(format!("n:{n}")).ok())
    ///     .layer(tower::service_fn(|_: u64| async { Ok::<_, std::convert::Infallible>(()) }));
    /// service.clone().oneshot(1).await.unwrap();
    /// assert_eq!(service.queue_depth(), 1);
    /// cache.flush_pending_writes().await.unwrap();
    /// assert_eq!(service.queue_depth(), 0);
    /// # }
    /// ```
    pub fn queue_depth(&self) -> usize {
        self.queue.depth()
    }
}

impl<Svc, Req, V, St, C, F, A, D, Q, W, K, T>
    WriteBehindService<Svc, Req, WriteBehind<Req, V, St, C, F, A, D, Q, W>, K, T>
where
    V: Cacheable,
    St: Store,
    C: Codec<V>,
    Req: 'static,
{
    /// Starts the queue's worker now, and lets the cache's
    /// [`flush_pending_writes`](crate::Cache::flush_pending_writes) and
    /// [`close`](crate::Cache::close) reach it; otherwise the first request does. With a
    /// durable queue, a new instance then writes what crashed instances left behind without
    /// waiting for a write of its own. Starting twice is harmless.
    ///
    /// ```
    /// use tower_caching::{key::Key, Cache, CacheLayer};
    /// use tower_layer::Layer;
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// let cache: Cache<u64> = Cache::in_memory();
    /// let service = CacheLayer::write_behind(cache.clone())
    ///     .key(|n: &u64| Key::new(format!("n:{n}")).ok())
    ///     .layer(tower::service_fn(|_: u64| async { Ok::<_, std::convert::Infallible>(()) }));
    /// service.start();
    /// assert_eq!(cache.flush_pending_writes().await.unwrap(), 0);
    /// # }
    /// ```
    pub fn start(&self) {
        if self.queue.started.swap(true, Ordering::AcqRel) {
            return;
        }
        let registered: Arc<dyn PendingWrites> = self.queue.queue.clone();
        self.layer
            .strategy
            .cache
            .register_pending(Arc::downgrade(&registered));
        self.queue.queue.clone().start();
    }
}

impl<Svc: Clone, Req, S, K, T> Clone for WriteBehindService<Svc, Req, S, K, T> {
    fn clone(&self) -> Self {
        WriteBehindService {
            inner: self.inner.clone(),
            layer: self.layer.clone(),
            queue: self.queue.clone(),
            room: self.room.clone(),
            // A permit is this service's room in the queue, not its clone's.
            permit: None,
        }
    }
}

impl<Svc: fmt::Debug, Req, S: fmt::Debug, K, T> fmt::Debug
    for WriteBehindService<Svc, Req, S, K, T>
{
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WriteBehindService")
            .field("inner", &self.inner)
            .field("layer", &self.layer)
            .finish_non_exhaustive()
    }
}

impl<Svc, Req, V, St, C, F, A, D, W, K, T> Layer<Svc>
    for CacheLayer<WriteBehind<Req, V, St, C, F, A, D, InMemoryQueue, W>, K, T>
where
    W: WriterMode<Req, Svc>,
    Req: Clone + Send + Sync + 'static,
    V: Cacheable,
    St: Store,
    C: Codec<V>,
    F: Clone,
    A: Clone,
    D: DeadLetterHook<Req>,
    K: Clone,
    T: Clone,
{
    type Service = WriteBehindService<
        W::Direct,
        Req,
        WriteBehind<Req, V, St, C, F, A, D, InMemoryQueue, W>,
        K,
        T,
    >;

    /// Makes the service and its queue, shared by the service's clones; nothing runs until
    /// the first request. The queue is flushed by
    /// [`Cache::flush_pending_writes`](crate::Cache::flush_pending_writes) and
    /// [`Cache::close`](crate::Cache::close) once it holds a write.
    fn layer(&self, inner: Svc) -> Self::Service {
        let queue = Queue::new(
            W::queue_writer(&inner),
            self.strategy.dead_letter.clone(),
            self.strategy.settings,
            self.strategy.cache.observer().clone(),
        );
        WriteBehindService::new(W::direct(inner), self.clone(), queue)
    }
}

impl<Svc, Req, V, St, C, F, A, D, Q, W, K, T> Service<Req>
    for WriteBehindService<Svc, Req, WriteBehind<Req, V, St, C, F, A, D, Q, W>, K, T>
where
    Svc: Service<Req> + Clone + Send + Sync + 'static,
    Svc::Future: Send,
    Svc::Response: Send + 'static,
    Svc::Error: Into<BoxError> + Send + 'static,
    Req: Clone + Send + Sync + 'static,
    V: Cacheable,
    St: Store,
    C: Codec<V>,
    F: RequestToValue<Req, V>,
    A: Acknowledge<Req, Svc::Response>,
    D: DeadLetterHook<Req>,
    K: KeyExtractor<Req>,
    T: TtlPolicy<V>,
{
    type Response = Svc::Response;
    type Error = Svc::Error;
    type Future = WriteBehindFuture<Svc::Future, Svc::Response, Svc::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.start();
        let closed = self.queue.is_closed() || self.layer.strategy.cache.is_closed();
        if self.permit.is_none() && !closed {
            // The semaphore is never closed, so `None` cannot happen; if it did, writes
            // would go straight to the writer, which is still correct.
            self.permit = ready!(self.room.poll_acquire(cx));
        }
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Req) -> Self::Future {
        self.start();
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let permit = self.permit.take();
        if self.layer.strategy.cache.is_closed() {
            // After `Cache::close`, writes go straight to the writer, queue or no queue.
            return WriteBehindFuture::direct(inner.call(request));
        }
        let (Some(key), Some(permit)) = (self.layer.key.key(&request), permit) else {
            return WriteBehindFuture::direct(inner.call(request));
        };
        let strategy = &self.layer.strategy;
        let value = strategy.value.value(&request);
        let response = strategy.ack.acknowledge(&request);
        let ttl = value.as_ref().and_then(|v| self.layer.ttl.ttl(&key, v));
        // A queue that keeps values serves reads before the writer runs.
        let queued = if self.queue.keeps_values() {
            value
                .as_ref()
                .and_then(|v| strategy.cache.encode(v, ttl).ok())
        } else {
            None
        };
        let cache = strategy.cache.clone();
        let span = tracing::debug_span!(
            "cache",
            strategy = "write_behind",
            operation = "enqueue",
            key = %KeyDigest(&key),
        );
        let turn = self.queue.order.enter(&key);
        match self
            .queue
            .queue
            .clone()
            .enqueue(key.clone(), request, queued, permit)
        {
            // Reads see the queued value before the writer runs. The cache step is the
            // queue's: it runs to the end, in queue order, whatever becomes of the caller.
            Enqueue::Queued => WriteBehindFuture {
                state: State::Cache {
                    store: run_to_completion(
                        async move { turn.cache(&cache, &key, value.as_ref(), ttl).await }
                            .instrument(span),
                    ),
                    response: Some(response),
                },
            },
            Enqueue::Pending(queued) => WriteBehindFuture {
                state: State::Queueing {
                    future: tokio::spawn(
                        async move {
                            // The cache step and the `XADD` at once: one round trip of
                            // latency, not two.
                            let cached = turn.cache(&cache, &key, value.as_ref(), ttl);
                            let (queued, ()) = futures_util::future::join(queued, cached).await;
                            match queued {
                                Ok(()) => Ok(response),
                                // Not queued: written now, so it is never lost.
                                Err(Unqueued {
                                    request,
                                    mut ticket,
                                }) => {
                                    // After the queue's own writes of the key in flight.
                                    ticket.ready().await;
                                    let written = inner.call(request).await;
                                    if written.is_ok() {
                                        ticket.written();
                                    } else {
                                        // Neither queued nor written: the value just cached
                                        // must not stay.
                                        let _ = cache.delete_as(Strategy::WriteBehind, &key).await;
                                    }
                                    written
                                }
                            }
                        }
                        .instrument(span),
                    ),
                },
            },
            Enqueue::Direct(request) => WriteBehindFuture::direct(inner.call(request)),
        }
    }
}

/// The response future of [`WriteBehindService`]: the cache update then the
/// acknowledgement, or the writer's own future when the write bypasses the queue.
#[pin_project]
pub struct WriteBehindFuture<Fut, Resp, E> {
    #[pin]
    state: State<Fut, Resp, E>,
}

#[pin_project(project = StateProj)]
enum State<Fut, Resp, E> {
    Cache {
        #[pin]
        store: Completion,
        response: Option<Resp>,
    },
    /// A write being queued in a durable queue (a round trip), then cached, on its own task.
    Queueing {
        #[pin]
        future: JoinHandle<Result<Resp, E>>,
    },
    Direct {
        #[pin]
        future: Fut,
    },
}

impl<Fut, Resp, E> WriteBehindFuture<Fut, Resp, E> {
    fn direct(future: Fut) -> Self {
        WriteBehindFuture {
            state: State::Direct { future },
        }
    }
}

impl<Fut, Resp, E> Future for WriteBehindFuture<Fut, Resp, E>
where
    Fut: Future<Output = Result<Resp, E>>,
{
    type Output = Result<Resp, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project().state.project() {
            StateProj::Cache { store, response } => {
                ready!(store.poll(cx));
                Poll::Ready(Ok(response.take().expect("polled after completion")))
            }
            StateProj::Queueing { future } => match ready!(future.poll(cx)) {
                Ok(result) => Poll::Ready(result),
                // The direct write panicked: so does the request that depended on it.
                Err(error) if error.is_panic() => std::panic::resume_unwind(error.into_panic()),
                Err(_) => {
                    panic!("the write-behind task was cancelled: the runtime is shutting down")
                }
            },
            StateProj::Direct { future } => future.poll(cx),
        }
    }
}

impl<Fut, Resp, E> std::fmt::Debug for WriteBehindFuture<Fut, Resp, E> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WriteBehindFuture").finish_non_exhaustive()
    }
}
