//! How queued writes reach the writer: one call per write, or one call per batch.

use std::fmt;
use std::sync::Arc;
use std::task::{Context, Poll};

use futures_util::stream::{self, BoxStream, FuturesUnordered, StreamExt};
use tower_service::Service;

use super::write_once;
use crate::BoxError;

/// How a write-behind layer calls its writer: [`PerWrite`] (the default) or [`PerBatch`]
/// ([`writes_batches`](crate::CacheLayer::writes_batches)). Sealed: only these two.
///
/// ```
/// use tower_caching::strategy::{PerBatch, PerWrite, WriterMode};
///
/// fn calls_per_batch<M: WriterMode<u64, S>, S>() {}
/// calls_per_batch::<PerWrite, tower::util::BoxCloneSyncService<u64, (), std::io::Error>>();
/// calls_per_batch::<PerBatch, tower::util::BoxCloneSyncService<Vec<u64>, (), std::io::Error>>();
/// ```
pub trait WriterMode<Req, Svc>: sealed::Sealed {
    /// The writer as a writer of one request: how a write that skips the queue (after
    /// [`Cache::close`](crate::Cache::close), or that a durable queue could not take) is
    /// written.
    type Direct: Service<Req> + Clone + Send + Sync + 'static;

    #[doc(hidden)]
    fn queue_writer(writer: &Svc) -> Arc<dyn sealed::Writer<Req>>;

    #[doc(hidden)]
    fn direct(writer: Svc) -> Self::Direct;
}

/// The writer takes one write per call: a `Service<Req>`, called once for each write of a
/// batch, all of a batch's calls at once. The default. See [`WriterMode`].
#[derive(Clone, Copy, Debug, Default)]
pub struct PerWrite;

/// The writer takes a whole batch per call: a `Service<Vec<Req>>`, called once per batch
/// with its writes in queue order (one per key: a key's writes are coalesced), so that many
/// distinct keys cost one database statement per batch, not one each. `Ok` means every
/// write of the batch is written, an error that none is: all of them are retried (then
/// dead-lettered) together, so a batch writer should write a batch in one transaction. Set
/// with [`writes_batches`](crate::CacheLayer::writes_batches).
#[derive(Clone, Copy, Debug, Default)]
pub struct PerBatch;

pub(crate) mod sealed {
    use super::*;

    pub trait Sealed {}
    impl Sealed for super::PerWrite {}
    impl Sealed for super::PerBatch {}

    /// The writer as the queue calls it: a batch of requests at a time, each one's outcome
    /// answered by its index as it ends.
    pub trait Writer<Req>: Send + Sync + 'static {
        fn write_all(
            &self,
            requests: Vec<Req>,
        ) -> BoxStream<'static, (usize, Result<(), BoxError>)>;
    }
}

impl<Req, Svc> WriterMode<Req, Svc> for PerWrite
where
    Svc: Service<Req> + Clone + Send + Sync + 'static,
    Svc::Future: Send,
    Svc::Error: Into<BoxError>,
    Req: Send + 'static,
{
    type Direct = Svc;

    fn queue_writer(writer: &Svc) -> Arc<dyn sealed::Writer<Req>> {
        Arc::new(EachWrite(writer.clone()))
    }

    fn direct(writer: Svc) -> Svc {
        writer
    }
}

impl<Req, Svc> WriterMode<Req, Svc> for PerBatch
where
    Svc: Service<Vec<Req>> + Clone + Send + Sync + 'static,
    Svc::Future: Send,
    Svc::Error: Into<BoxError>,
    Req: Send + 'static,
{
    type Direct = BatchOfOne<Svc>;

    fn queue_writer(writer: &Svc) -> Arc<dyn sealed::Writer<Req>> {
        Arc::new(WholeBatch(writer.clone()))
    }

    fn direct(writer: Svc) -> BatchOfOne<Svc> {
        BatchOfOne(writer)
    }
}

/// One call of the writer per write, all at once; each ends on its own.
struct EachWrite<Svc>(Svc);

impl<Req, Svc> sealed::Writer<Req> for EachWrite<Svc>
where
    Svc: Service<Req> + Clone + Send + Sync + 'static,
    Svc::Future: Send,
    Svc::Error: Into<BoxError>,
    Req: Send + 'static,
{
    fn write_all(&self, requests: Vec<Req>) -> BoxStream<'static, (usize, Result<(), BoxError>)> {
        requests
            .into_iter()
            .enumerate()
            .map(|(index, request)| {
                let writer = self.0.clone();
                async move { (index, write_once(writer, request).await.map(drop)) }
            })
            .collect::<FuturesUnordered<_>>()
            .boxed()
    }
}

/// One call of the writer for the whole batch; its outcome is every write's.
struct WholeBatch<Svc>(Svc);

impl<Req, Svc> sealed::Writer<Req> for WholeBatch<Svc>
where
    Svc: Service<Vec<Req>> + Clone + Send + Sync + 'static,
    Svc::Future: Send,
    Svc::Error: Into<BoxError>,
    Req: Send + 'static,
{
    fn write_all(&self, requests: Vec<Req>) -> BoxStream<'static, (usize, Result<(), BoxError>)> {
        let writes = requests.len();
        if writes == 0 {
            // Never a call with nothing to write.
            return stream::empty().boxed();
        }
        let writer = self.0.clone();
        stream::once(async move { write_once(writer, requests).await.map(drop) })
            .flat_map(move |result| {
                let failure = result
                    .err()
                    .map(|error| Arc::new(BatchFailed { writes, error }));
                stream::iter((0..writes).map(move |index| {
                    (
                        index,
                        match &failure {
                            None => Ok(()),
                            Some(failure) => Err(BoxError::from(SharedFailure(failure.clone()))),
                        },
                    )
                }))
            })
            .boxed()
    }
}

/// Why one write of a failed batch failed: the batch's error.
#[derive(Debug)]
struct BatchFailed {
    writes: usize,
    error: BoxError,
}

/// A [`BatchFailed`] as each of its writes' error.
#[derive(Debug, Clone)]
struct SharedFailure(Arc<BatchFailed>);

impl fmt::Display for SharedFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let plural = if self.0.writes == 1 { "" } else { "s" };
        write!(
            f,
            "the batch of {} write{plural} failed: {}",
            self.0.writes, self.0.error
        )
    }
}

impl std::error::Error for SharedFailure {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&*self.0.error)
    }
}

/// A batch writer (`Service<Vec<Req>>`) as a writer of one request: each call is a batch of
/// one. What a [`PerBatch`] write-behind service writes directly with, when a write skips
/// the queue; usable on its own too.
///
/// ```
/// use tower::ServiceExt;
/// use tower_caching::strategy::BatchOfOne;
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let batch_writer = tower::service_fn(|rows: Vec<u64>| async move {
///     Ok::<_, std::convert::Infallible>(rows.len())
/// });
/// assert_eq!(BatchOfOne::new(batch_writer).oneshot(7).await, Ok(1));
/// # }
/// ```
#[derive(Clone, Debug)]
pub struct BatchOfOne<Svc>(Svc);

impl<Svc> BatchOfOne<Svc> {
    /// Wraps the batch writer `writer`. See [`BatchOfOne`] for an example.
    pub fn new(writer: Svc) -> Self {
        BatchOfOne(writer)
    }

    /// The batch writer. See [`BatchOfOne`].
    ///
    /// ```
    /// # use tower_caching::strategy::BatchOfOne;
    /// assert_eq!(*BatchOfOne::new(5).get_ref(), 5);
    /// ```
    pub fn get_ref(&self) -> &Svc {
        &self.0
    }
}

impl<Req, Svc: Service<Vec<Req>>> Service<Req> for BatchOfOne<Svc> {
    type Response = Svc::Response;
    type Error = Svc::Error;
    type Future = Svc::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.0.poll_ready(cx)
    }

    fn call(&mut self, request: Req) -> Self::Future {
        self.0.call(vec![request])
    }
}
