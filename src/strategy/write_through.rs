//! Write-through: call the writer; when it succeeds, store the written value in the cache.
//!
//! # Guarantees
//!
//! - **Writer fails** → the error is returned and the cache is untouched.
//! - **Writer succeeds** → the value (from the request or from the writer's response) is
//!   stored under the request's key before the response is returned, so a read that follows
//!   the write sees it.
//! - **Writer succeeds but the cache write fails** (store down, value too large, no value
//!   could be taken from the response) → the request still succeeds, and the key is
//!   **deleted** so the previous value is not served. If the delete fails too (the store is
//!   unreachable), the previous value can be served until its TTL ends; both failures are
//!   logged.
//! - The layered service's error is the writer's error.
//!
//! Consistency is strong for writes that go through the layer, eventual for writes that do
//! not (bound by the TTL).
//!
//! # Example
//!
//! ```
//! use std::convert::Infallible;
//! use tower::{service_fn, ServiceExt};
//! use tower_caching::{key::{Key, KeyBuilder}, Cache, CacheLayer};
//! use tower_layer::Layer;
//!
//! #[derive(Clone)]
//! struct CreateEntry { id: String, owner: String }
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! let cache: Cache<String> = Cache::in_memory();
//! let keys = KeyBuilder::new();
//! let layer = CacheLayer::write_through(cache.clone())
//!     .key(move |req: &CreateEntry| keys.entry(&req.id))
//!     .value_from_request(|req: &CreateEntry| Some(req.owner.clone()));
//! let writer = layer.layer(service_fn(|_: CreateEntry| async { Ok::<_, Infallible>(()) }));
//!
//! writer.oneshot(CreateEntry { id: "e1".into(), owner: "Ana".into() }).await.unwrap();
//! let key = Key::new("entry:e1").unwrap();
//! assert_eq!(cache.get(&key).await.unwrap(), Some("Ana".to_string()));
//! # }
//! ```

use crate::task::{Completion, run_to_completion};
use std::fmt;
use std::future::Future;
use std::marker::PhantomData;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use pin_project::pin_project;
use tower_layer::Layer;
use tower_service::Service;
use tracing::Instrument;

use crate::cache::{Cache, Cacheable};
use crate::codec::{Codec, Json};
use crate::key::{Key, KeyExtractor};
use crate::layer::CacheLayer;
use crate::metrics::{KeyDigest, Strategy};
use crate::store::{MemoryStore, Store};
use crate::ttl::TtlPolicy;

/// The write-through strategy. See the [module docs](self).
pub struct WriteThrough<V, St = MemoryStore, C = Json, F = ResponseValue> {
    cache: Cache<V, St, C>,
    value: F,
}

impl<V, St, C, F: Clone> Clone for WriteThrough<V, St, C, F> {
    fn clone(&self) -> Self {
        WriteThrough {
            cache: self.cache.clone(),
            value: self.value.clone(),
        }
    }
}

impl<V, St: fmt::Debug, C: fmt::Debug, F> fmt::Debug for WriteThrough<V, St, C, F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WriteThrough")
            .field("cache", &self.cache)
            .field("value", &std::any::type_name::<F>())
            .finish()
    }
}

impl<V, St, C> CacheLayer<WriteThrough<V, St, C>> {
    /// Write-through around a writer service. By default the writer's response is the value
    /// to cache; see [`value_from_request`](CacheLayer::value_from_request) and
    /// [`value_from_response`](CacheLayer::value_from_response).
    ///
    /// ```
    /// use tower::{service_fn, ServiceExt};
    /// use tower_caching::{key::Key, Cache, CacheLayer};
    /// use tower_layer::Layer;
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// let cache: Cache<String> = Cache::in_memory();
    /// let save = CacheLayer::write_through(cache.clone())
    ///     .key(|name: &String| Key::new(format!("name:{name}")).ok())
    ///     .layer(service_fn(|name: String| async move { Ok::<_, std::convert::Infallible>(name.to_uppercase()) }));
    /// save.oneshot("ana".to_string()).await.unwrap();
    /// assert_eq!(cache.get(&Key::new("name:ana").unwrap()).await.unwrap().as_deref(), Some("ANA"));
    /// # }
    /// ```
    pub fn write_through(cache: Cache<V, St, C>) -> Self {
        CacheLayer::with_strategy(WriteThrough {
            cache,
            value: ResponseValue,
        })
    }
}

impl<V, St, C, F, K, T> CacheLayer<WriteThrough<V, St, C, F>, K, T> {
    /// Caches the value `f` takes from the request (before the writer consumes it).
    ///
    /// ```
    /// use tower_caching::{key::Key, Cache, CacheLayer};
    ///
    /// #[derive(Clone)]
    /// struct Rename { id: u32, name: String }
    ///
    /// let layer = CacheLayer::write_through(Cache::<String>::in_memory())
    ///     .key(|r: &Rename| Key::new(format!("name:{}", r.id)).ok())
    ///     .value_from_request(|r: &Rename| Some(r.name.clone()));
    /// # let _ = layer;
    /// ```
    pub fn value_from_request<G>(
        self,
        f: G,
    ) -> CacheLayer<WriteThrough<V, St, C, FromRequest<G>>, K, T> {
        self.map_strategy(|s| WriteThrough {
            cache: s.cache,
            value: FromRequest(f),
        })
    }

    /// Caches the value `f` takes from the writer's response (e.g. with a generated id).
    ///
    /// ```
    /// use tower_caching::{key::Key, Cache, CacheLayer};
    ///
    /// // The writer answers `(id, created_at)`; only the timestamp is cached.
    /// let layer = CacheLayer::write_through(Cache::<u64>::in_memory())
    ///     .key(|name: &String| Key::new(format!("created:{name}")).ok())
    ///     .value_from_response(|response: &(u32, u64)| Some(response.1));
    /// # let _ = layer;
    /// ```
    pub fn value_from_response<G>(
        self,
        f: G,
    ) -> CacheLayer<WriteThrough<V, St, C, FromResponse<G>>, K, T> {
        self.map_strategy(|s| WriteThrough {
            cache: s.cache,
            value: FromResponse(f),
        })
    }
}

/// Where write-through takes the value to cache from: [`ResponseValue`] (the default),
/// or [`FromRequest`] / [`FromResponse`] as set by
/// [`value_from_request`](crate::CacheLayer::value_from_request) and
/// [`value_from_response`](crate::CacheLayer::value_from_response), which show them in use.
pub trait WriteValue<Req, Resp, V> {
    /// The value taken from the request, before the writer runs.
    fn before_write(&self, request: &Req) -> Option<V>;
    /// The value to cache, given the writer's response and what
    /// [`before_write`](WriteValue::before_write) took.
    fn after_write(&self, response: &Resp, from_request: Option<V>) -> Option<V>;
}

/// The default value source: the writer's response is the value. See
/// [`CacheLayer::write_through`](crate::CacheLayer::write_through) for an example.
#[derive(Clone, Copy, Debug, Default)]
pub struct ResponseValue;

impl<Req, V: Clone> WriteValue<Req, V, V> for ResponseValue {
    fn before_write(&self, _: &Req) -> Option<V> {
        None
    }
    fn after_write(&self, response: &V, _: Option<V>) -> Option<V> {
        Some(response.clone())
    }
}

/// Takes the value from the request with a closure `Fn(&Req) -> Option<V>`. See
/// [`value_from_request`](crate::CacheLayer::value_from_request) for an example.
#[derive(Clone, Copy, Debug)]
pub struct FromRequest<F>(F);

impl<Req, Resp, V, F: Fn(&Req) -> Option<V>> WriteValue<Req, Resp, V> for FromRequest<F> {
    fn before_write(&self, request: &Req) -> Option<V> {
        (self.0)(request)
    }
    fn after_write(&self, _: &Resp, from_request: Option<V>) -> Option<V> {
        from_request
    }
}

/// Takes the value from the writer's response with a closure `Fn(&Resp) -> Option<V>`.
/// See [`value_from_response`](crate::CacheLayer::value_from_response) for an example.
#[derive(Clone, Copy, Debug)]
pub struct FromResponse<F>(F);

impl<Req, Resp, V, F: Fn(&Resp) -> Option<V>> WriteValue<Req, Resp, V> for FromResponse<F> {
    fn before_write(&self, _: &Req) -> Option<V> {
        None
    }
    fn after_write(&self, response: &Resp, _: Option<V>) -> Option<V> {
        (self.0)(response)
    }
}

crate::macros::strategy_service!(
    /// The service of [`WriteThrough`] around the writer `Svc`.
    WriteThroughService,
    "writer"
);

impl<Svc, V, St, C, F: Clone, K: Clone, T: Clone> Layer<Svc>
    for CacheLayer<WriteThrough<V, St, C, F>, K, T>
{
    type Service = WriteThroughService<Svc, WriteThrough<V, St, C, F>, K, T>;

    fn layer(&self, inner: Svc) -> Self::Service {
        WriteThroughService::new(inner, self.clone())
    }
}

impl<Svc, Req, V, St, C, F, K, T> Service<Req>
    for WriteThroughService<Svc, WriteThrough<V, St, C, F>, K, T>
where
    Svc: Service<Req>,
    Svc::Response: Send + 'static,
    V: Cacheable,
    St: Store,
    C: Codec<V>,
    F: WriteValue<Req, Svc::Response, V>,
    K: KeyExtractor<Req>,
    T: TtlPolicy<V> + Send + Sync + 'static,
{
    type Response = Svc::Response;
    type Error = Svc::Error;
    type Future =
        WriteThroughFuture<Svc::Future, Req, Svc::Response, WriteThrough<V, St, C, F>, K, T>;

    #[inline]
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Req) -> Self::Future {
        let key = self.layer.key.key(&request);
        let from_request = key
            .as_ref()
            .and_then(|_| self.layer.strategy.value.before_write(&request));
        WriteThroughFuture {
            state: WriteState::Write {
                future: self.inner.call(request),
                pending: key.map(|key| (key, from_request, self.layer.clone())),
            },
            _request: PhantomData,
        }
    }
}

type Pending<S, K, T, V> = Option<(Key, Option<V>, Arc<CacheLayer<S, K, T>>)>;

/// The response future of [`WriteThroughService`]: the write, then the cache update.
#[pin_project]
pub struct WriteThroughFuture<Fut, Req, Resp, S: StrategyValue, K, T> {
    #[pin]
    state: WriteState<Fut, Resp, S, K, T>,
    _request: PhantomData<fn(Req)>,
}

#[pin_project(project = WriteStateProj)]
enum WriteState<Fut, Resp, S: StrategyValue, K, T> {
    Write {
        #[pin]
        future: Fut,
        pending: Pending<S, K, T, S::Value>,
    },
    Store {
        #[pin]
        store: Completion,
        response: Option<Resp>,
    },
}

/// The value type of a write strategy. Implemented by [`WriteThrough`]; sealed.
pub trait StrategyValue: sealed::Sealed {
    /// The cached value.
    type Value;
}

mod sealed {
    pub trait Sealed {}
    impl<V, St, C, F> Sealed for super::WriteThrough<V, St, C, F> {}
}

impl<V, St, C, F> StrategyValue for WriteThrough<V, St, C, F> {
    type Value = V;
}

impl<Fut, Req, Resp, E, V, St, C, F, K, T> Future
    for WriteThroughFuture<Fut, Req, Resp, WriteThrough<V, St, C, F>, K, T>
where
    Fut: Future<Output = Result<Resp, E>>,
    V: Cacheable,
    St: Store,
    C: Codec<V>,
    F: WriteValue<Req, Resp, V>,
    T: TtlPolicy<V>,
{
    type Output = Result<Resp, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        loop {
            match this.state.as_mut().project() {
                WriteStateProj::Write { future, pending } => {
                    let response = ready!(future.poll(cx))?;
                    let Some((key, from_request, layer)) = pending.take() else {
                        return Poll::Ready(Ok(response));
                    };
                    // User code (the value source, the TTL policy): a panic there
                    // invalidates the key instead of caching, and fails nothing else.
                    let (value, ttl) = std::panic::catch_unwind(AssertUnwindSafe(|| {
                        let value = layer.strategy.value.after_write(&response, from_request);
                        let ttl = value.as_ref().and_then(|v| layer.ttl.ttl(&key, v));
                        (value, ttl)
                    }))
                    .unwrap_or_else(|_| {
                        tracing::error!(key = %KeyDigest(&key), "the written value or its TTL panicked: invalidating the key");
                        (None, None)
                    });
                    let span = tracing::debug_span!(
                        "cache",
                        strategy = "write_through",
                        operation = "write",
                        key = %KeyDigest(&key),
                    );
                    let cache = layer.strategy.cache.clone();
                    let store = run_to_completion(
                        async move {
                            cache
                                .store_or_invalidate(
                                    Strategy::WriteThrough,
                                    &key,
                                    value.as_ref(),
                                    ttl,
                                )
                                .await
                        }
                        .instrument(span),
                    );
                    this.state.set(WriteState::Store {
                        store,
                        response: Some(response),
                    });
                }
                WriteStateProj::Store { store, response } => {
                    ready!(store.poll(cx));
                    return Poll::Ready(Ok(response.take().expect("polled after completion")));
                }
            }
        }
    }
}

impl<Fut, Req, Resp, S: StrategyValue, K, T> std::fmt::Debug
    for WriteThroughFuture<Fut, Req, Resp, S, K, T>
{
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WriteThroughFuture").finish_non_exhaustive()
    }
}
