//! Work that must finish once started: a cache step after a successful write.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use pin_project::pin_project;
use tokio::task::JoinHandle;

/// Runs `work` to completion on its own task, whatever happens to the caller that waits for
/// it: a response future that is dropped (a client gone, a timeout) no longer skips the
/// invalidation of a key whose row was just written. A panic in `work` is logged.
pub(crate) fn run_to_completion<F>(work: F) -> Completion
where
    F: Future<Output = ()> + Send + 'static,
{
    Completion {
        task: tokio::spawn(work),
    }
}

/// The end of a [`run_to_completion`] task.
#[pin_project]
#[derive(Debug)]
pub(crate) struct Completion {
    #[pin]
    task: JoinHandle<()>,
}

impl Future for Completion {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if let Err(error) = ready!(self.project().task.poll(cx)) {
            tracing::error!(%error, "a cache step after a write failed: the key may hold its previous value until it expires");
        }
        Poll::Ready(())
    }
}
