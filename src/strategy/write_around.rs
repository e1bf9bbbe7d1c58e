//! Write-around: call the writer; when it succeeds, invalidate the affected keys and
//! patterns. Nothing is written to the cache: the next read repopulates it.
//!
//! # Guarantees
//!
//! - **Writer fails** → the error is returned and nothing is invalidated.
//! - **Writer succeeds** → every key, pattern and tag of the request's [`Invalidation`] is
//!   deleted before the response is returned. If the store fails, the response still
//!   succeeds and the failure is logged; the stale values then live until their TTL ends.
//! - Bulk writes do not pollute the cache with values nobody may read.
//! - The layered service's error is the writer's error.
//!
//! # Example
//!
//! ```
//! use std::convert::Infallible;
//! use tower::{service_fn, ServiceExt};
//! use tower_caching::{key::KeyBuilder, strategy::Invalidation, Cache, CacheLayer};
//! use tower_layer::Layer;
//!
//! struct Vsync { id: String, entry_ids: Vec<String> }
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! let cache: Cache<String> = Cache::in_memory();
//! let keys = KeyBuilder::new();
//! cache.set(&keys.entry("e1"), &"stale".to_string(), None).await.unwrap();
//!
//! let layer = CacheLayer::write_around(cache.clone()).invalidate(move |req: &Vsync| {
//!     Invalidation::new()
//!         .keys(req.entry_ids.iter().map(|id| keys.entry(id)))
//!         .pattern(keys.pattern("vsync"))
//! });
//! let writer = layer.layer(service_fn(|_: Vsync| async { Ok::<_, Infallible>(()) }));
//! writer.oneshot(Vsync { id: "v1".into(), entry_ids: vec!["e1".into()] }).await.unwrap();
//! assert_eq!(cache.get(&KeyBuilder::new().entry("e1")).await.unwrap(), None);
//! # }
//! ```

use crate::task::{Completion, run_to_completion};
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use pin_project::pin_project;
use tower_layer::Layer;
use tower_service::Service;
use tracing::Instrument;

use crate::cache::{Cache, Cacheable};
use crate::codec::{Codec, Json};
use crate::key::{Key, KeyExtractor, Pattern, Tag};
use crate::layer::CacheLayer;
use crate::metrics::Strategy;
use crate::store::{MemoryStore, Store};
use crate::strategy::{Always, Predicate};

/// The keys, patterns and tags a write makes stale.
///
/// Prefer keys and [tags](crate::Cache::tag_with) to patterns: a pattern costs a scan of
/// the keyspace, a tag only the entries filed under it.
///
/// ```
/// use tower_caching::{key::{KeyBuilder, Tag}, strategy::Invalidation};
/// let keys = KeyBuilder::new();
/// let invalidation = Invalidation::new()
///     .key(keys.entry("1"))
///     .pattern(keys.pattern("vsync"))
///     .tag(Tag::new("ispb:12345678")?);
/// assert_eq!(invalidation.key_list().len(), 1);
/// assert_eq!(invalidation.pattern_list().len(), 1);
/// assert_eq!(invalidation.tag_list().len(), 1);
/// # Ok::<(), tower_caching::key::KeyError>(())
/// ```
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Invalidation {
    keys: Vec<Key>,
    patterns: Vec<Pattern>,
    tags: Vec<Tag>,
}

impl Invalidation {
    /// Nothing to invalidate.
    ///
    /// ```
    /// # use tower_caching::strategy::Invalidation;
    /// assert!(Invalidation::new().key_list().is_empty());
    /// ```
    pub fn new() -> Self {
        Invalidation::default()
    }

    /// Adds a key.
    ///
    /// ```
    /// # use tower_caching::{key::KeyBuilder, strategy::Invalidation};
    /// let i = Invalidation::new().key(KeyBuilder::new().entry("e1"));
    /// assert_eq!(i.key_list()[0].as_str(), "entry:e1");
    /// ```
    pub fn key(mut self, key: Key) -> Self {
        self.keys.push(key);
        self
    }

    /// Adds keys.
    ///
    /// ```
    /// # use tower_caching::{key::KeyBuilder, strategy::Invalidation};
    /// let keys = KeyBuilder::new();
    /// let i = Invalidation::new().keys(["e1", "e2"].map(|id| keys.entry(id)));
    /// assert_eq!(i.key_list().len(), 2);
    /// ```
    pub fn keys(mut self, keys: impl IntoIterator<Item = Key>) -> Self {
        self.keys.extend(keys);
        self
    }

    /// Adds a pattern (a keyspace scan: prefer keys or tags when you can).
    ///
    /// ```
    /// # use tower_caching::{key::KeyBuilder, strategy::Invalidation};
    /// let i = Invalidation::new().pattern(KeyBuilder::new().pattern("vsync"));
    /// assert_eq!(i.pattern_list()[0].as_str(), "vsync:*");
    /// ```
    pub fn pattern(mut self, pattern: Pattern) -> Self {
        self.patterns.push(pattern);
        self
    }

    /// Adds a tag: every entry filed under it (see [`Cache::tag_with`]).
    ///
    /// ```
    /// # use tower_caching::{key::Tag, strategy::Invalidation};
    /// let i = Invalidation::new().tag(Tag::new("ispb:12345678")?);
    /// assert_eq!(i.tag_list()[0].as_str(), "ispb:12345678");
    /// # Ok::<(), tower_caching::key::KeyError>(())
    /// ```
    pub fn tag(mut self, tag: Tag) -> Self {
        self.tags.push(tag);
        self
    }

    /// The keys. See [`key`](Invalidation::key) for an example.
    pub fn key_list(&self) -> &[Key] {
        &self.keys
    }

    /// The patterns. See [`pattern`](Invalidation::pattern) for an example.
    pub fn pattern_list(&self) -> &[Pattern] {
        &self.patterns
    }

    /// The tags. See [`tag`](Invalidation::tag) for an example.
    pub fn tag_list(&self) -> &[Tag] {
        &self.tags
    }

    fn is_empty(&self) -> bool {
        self.keys.is_empty() && self.patterns.is_empty() && self.tags.is_empty()
    }
}

/// Decides what a request invalidates, given the layer's key extractor `K`.
///
/// Implemented by [`KeyOnly`] (the default: the one key of the layer's key extractor) and by
/// closures `Fn(&Req) -> Invalidation`.
///
/// ```
/// use tower_caching::key::{Key, KeyBuilder};
/// use tower_caching::strategy::{Invalidation, InvalidationPolicy, KeyOnly};
///
/// let by_id = |id: &u32| Key::new(format!("entry:{id}")).ok();
/// assert_eq!(KeyOnly.invalidation(&by_id, &7).key_list()[0].as_str(), "entry:7");
///
/// let wider = |id: &u32| Invalidation::new()
///     .key(KeyBuilder::new().entry(&id.to_string()))
///     .pattern(KeyBuilder::new().pattern("vsync"));
/// assert_eq!(InvalidationPolicy::<u32, ()>::invalidation(&wider, &(), &7).pattern_list().len(), 1);
/// ```
pub trait InvalidationPolicy<Req, K> {
    /// What `request` invalidates once the write succeeds.
    fn invalidation(&self, key: &K, request: &Req) -> Invalidation;
}

/// The default invalidation: the request's key, from the layer's key extractor. See
/// [`InvalidationPolicy`] for an example.
#[derive(Clone, Copy, Debug, Default)]
pub struct KeyOnly;

impl<Req, K: KeyExtractor<Req>> InvalidationPolicy<Req, K> for KeyOnly {
    fn invalidation(&self, key: &K, request: &Req) -> Invalidation {
        Invalidation {
            keys: key.key(request).into_iter().collect(),
            ..Invalidation::default()
        }
    }
}

impl<Req, K, F: Fn(&Req) -> Invalidation> InvalidationPolicy<Req, K> for F {
    fn invalidation(&self, _: &K, request: &Req) -> Invalidation {
        self(request)
    }
}

/// The write-around strategy. See the [module docs](self).
pub struct WriteAround<V, St = MemoryStore, C = Json, I = KeyOnly, O = Always> {
    cache: Cache<V, St, C>,
    invalidate: I,
    succeeded: Arc<O>,
}

impl<V, St, C, I: Clone, O> Clone for WriteAround<V, St, C, I, O> {
    fn clone(&self) -> Self {
        WriteAround {
            cache: self.cache.clone(),
            invalidate: self.invalidate.clone(),
            succeeded: self.succeeded.clone(),
        }
    }
}

impl<V, St: fmt::Debug, C: fmt::Debug, I, O> fmt::Debug for WriteAround<V, St, C, I, O> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WriteAround")
            .field("cache", &self.cache)
            .field("invalidate", &std::any::type_name::<I>())
            .finish()
    }
}

impl<V, St, C> CacheLayer<WriteAround<V, St, C>> {
    /// Write-around around a writer service: invalidates the request's key after a
    /// successful write; see [`invalidate`](CacheLayer::invalidate) for more keys and
    /// patterns.
    ///
    /// ```
    /// use tower::{service_fn, ServiceExt};
    /// use tower_caching::{key::Key, Cache, CacheLayer};
    /// use tower_layer::Layer;
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// let cache: Cache<String> = Cache::in_memory();
    /// let key = Key::new("name:ana").unwrap();
    /// cache.set(&key, &"old".to_string(), None).await.unwrap();
    /// let save = CacheLayer::write_around(cache.clone())
    ///     .key(|name: &String| Key::new(format!("name:{name}")).ok())
    ///     .layer(service_fn(|_: String| async { Ok::<_, std::convert::Infallible>(()) }));
    /// save.oneshot("ana".to_string()).await.unwrap();
    /// assert!(!cache.exists(&key).await.unwrap());
    /// # }
    /// ```
    pub fn write_around(cache: Cache<V, St, C>) -> Self {
        CacheLayer::with_strategy(WriteAround {
            cache,
            invalidate: KeyOnly,
            succeeded: Arc::new(Always),
        })
    }
}

impl<V, St, C, I, O, K, T> CacheLayer<WriteAround<V, St, C, I, O>, K, T> {
    /// Invalidates what `f` returns for each request, instead of the one key: a closure
    /// `Fn(&Req) -> Invalidation`, or an [`InvalidationPolicy`] such as
    /// `http::PathInvalidation` (feature `http`).
    ///
    /// ```
    /// use tower_caching::{key::{KeyBuilder, Tag}, strategy::Invalidation, Cache, CacheLayer};
    ///
    /// struct Vsync { ispb: String }
    /// let layer = CacheLayer::write_around(Cache::<String>::in_memory())
    ///     .invalidate(|req: &Vsync| {
    ///         Invalidation::new()
    ///             .pattern(KeyBuilder::new().pattern("vsync"))
    ///             .tag(Tag::new(format!("ispb:{}", req.ispb)).unwrap())
    ///     });
    /// # let _ = layer;
    /// ```
    pub fn invalidate<F>(self, f: F) -> CacheLayer<WriteAround<V, St, C, F, O>, K, T> {
        self.map_strategy(|s| WriteAround {
            cache: s.cache,
            invalidate: f,
            succeeded: s.succeeded,
        })
    }

    /// Invalidates only when `predicate` accepts the writer's response, not on every `Ok`
    /// (for HTTP, where a 4xx is an `Ok` response: `http::is_success`).
    ///
    /// ```
    /// use tower_caching::{Cache, CacheLayer};
    ///
    /// // The writer answers a status code: invalidate after 2xx only.
    /// let layer = CacheLayer::write_around(Cache::<String>::in_memory())
    ///     .succeeded_if(|status: &u16| (200..300).contains(status));
    /// # let _ = layer;
    /// ```
    pub fn succeeded_if<O2>(self, predicate: O2) -> CacheLayer<WriteAround<V, St, C, I, O2>, K, T> {
        self.map_strategy(|s| WriteAround {
            cache: s.cache,
            invalidate: s.invalidate,
            succeeded: Arc::new(predicate),
        })
    }
}

crate::macros::strategy_service!(
    /// The service of [`WriteAround`] around the writer `Svc`.
    WriteAroundService,
    "writer"
);

impl<Svc, V, St, C, I: Clone, O, K: Clone, T: Clone> Layer<Svc>
    for CacheLayer<WriteAround<V, St, C, I, O>, K, T>
{
    type Service = WriteAroundService<Svc, WriteAround<V, St, C, I, O>, K, T>;

    fn layer(&self, inner: Svc) -> Self::Service {
        WriteAroundService::new(inner, self.clone())
    }
}

impl<Svc, Req, V, St, C, I, O, K, T> Service<Req>
    for WriteAroundService<Svc, WriteAround<V, St, C, I, O>, K, T>
where
    Svc: Service<Req>,
    Svc::Response: Send + 'static,
    V: Cacheable,
    St: Store,
    C: Codec<V>,
    I: InvalidationPolicy<Req, K>,
    O: Predicate<Svc::Response>,
{
    type Response = Svc::Response;
    type Error = Svc::Error;
    type Future = WriteAroundFuture<Svc::Future, Svc::Response, O>;

    #[inline]
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Req) -> Self::Future {
        let invalidation = self
            .layer
            .strategy
            .invalidate
            .invalidation(&self.layer.key, &request);
        // Built now, run only once the write succeeds.
        let pending = (!invalidation.is_empty()).then(|| {
            let span = tracing::debug_span!(
                "cache",
                strategy = "write_around",
                operation = "invalidate",
                keys = invalidation.keys.len(),
                patterns = invalidation.patterns.len(),
                tags = invalidation.tags.len(),
            );
            let cache = self.layer.strategy.cache.clone();
            Box::pin(invalidate(cache, invalidation).instrument(span)) as BoxedInvalidate
        });
        WriteAroundFuture {
            state: AroundState::Write {
                future: self.inner.call(request),
                pending,
                succeeded: self.layer.strategy.succeeded.clone(),
            },
        }
    }
}

type BoxedInvalidate = Pin<Box<dyn Future<Output = ()> + Send>>;

async fn invalidate<V: Cacheable, St: Store, C: Codec<V>>(
    cache: Cache<V, St, C>,
    invalidation: Invalidation,
) {
    // Concurrently: a failing store costs the response one timeout, not one per command.
    let keys = async {
        if invalidation.keys.is_empty() {
            return;
        }
        if let Err(error) = cache
            .delete_many_as(Strategy::WriteAround, &invalidation.keys)
            .await
        {
            tracing::error!(keys = invalidation.keys.len(), %error, "write-around could not invalidate keys: stale values may be served until they expire");
        }
    };
    let patterns = futures_util::future::join_all(invalidation.patterns.iter().map(|pattern| {
        let cache = &cache;
        async move {
            if let Err(error) = cache
                .delete_pattern_as(Strategy::WriteAround, pattern)
                .await
            {
                tracing::error!(%pattern, %error, "write-around could not invalidate a pattern: stale values may be served until they expire");
            }
        }
    }));
    let tags = futures_util::future::join_all(invalidation.tags.iter().map(|tag| {
        let cache = &cache;
        async move {
            if let Err(error) = cache.invalidate_tag_as(Strategy::WriteAround, tag).await {
                tracing::error!(%tag, %error, "write-around could not invalidate a tag: stale values may be served until they expire");
            }
        }
    }));
    futures_util::future::join3(keys, patterns, tags).await;
}

/// The response future of [`WriteAroundService`]: the write, then the invalidation, which
/// runs on its own task once the write succeeded (dropping this future does not skip it).
#[pin_project]
pub struct WriteAroundFuture<Fut, Resp, O> {
    #[pin]
    state: AroundState<Fut, Resp, O>,
}

#[pin_project(project = AroundStateProj)]
enum AroundState<Fut, Resp, O> {
    Write {
        #[pin]
        future: Fut,
        pending: Option<BoxedInvalidate>,
        succeeded: Arc<O>,
    },
    Invalidate {
        #[pin]
        invalidate: Completion,
        response: Option<Resp>,
    },
}

impl<Fut, Resp, E, O> Future for WriteAroundFuture<Fut, Resp, O>
where
    Fut: Future<Output = Result<Resp, E>>,
    O: Predicate<Resp>,
{
    type Output = Result<Resp, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        loop {
            match this.state.as_mut().project() {
                AroundStateProj::Write {
                    future,
                    pending,
                    succeeded,
                } => {
                    let response = ready!(future.poll(cx))?;
                    let Some(invalidate) = pending.take().filter(|_| succeeded.test(&response))
                    else {
                        return Poll::Ready(Ok(response));
                    };
                    // Owned by its own task from here: it runs to the end even if this
                    // future is dropped.
                    this.state.set(AroundState::Invalidate {
                        invalidate: run_to_completion(invalidate),
                        response: Some(response),
                    });
                }
                AroundStateProj::Invalidate {
                    invalidate,
                    response,
                } => {
                    ready!(invalidate.poll(cx));
                    return Poll::Ready(Ok(response.take().expect("polled after completion")));
                }
            }
        }
    }
}

impl<Fut, Resp, O> std::fmt::Debug for WriteAroundFuture<Fut, Resp, O> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WriteAroundFuture").finish_non_exhaustive()
    }
}
