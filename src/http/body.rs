use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use pin_project::pin_project;

use crate::BoxError;

/// The body of a response from [`HttpCache`](super::HttpCache): frames the cache already
/// holds (a cached body, or the part of a response it read before deciding not to cache it),
/// then whatever the inner body still has to stream.
#[pin_project]
pub struct CacheBody<B> {
    buffered: VecDeque<Frame<Bytes>>,
    #[pin]
    rest: Option<B>,
    /// Set when `rest` yields data: a request read up to its first message, then
    /// passed on open, turned out to carry more (a client stream).
    more: Option<Arc<AtomicBool>>,
}

impl<B> CacheBody<B> {
    /// A body of `bytes`.
    pub(crate) fn full(bytes: Bytes) -> Self {
        let mut buffered = VecDeque::new();
        if !bytes.is_empty() {
            buffered.push_back(Frame::data(bytes));
        }
        CacheBody {
            buffered,
            rest: None,
            more: None,
        }
    }

    /// The inner body, untouched.
    pub(crate) fn stream(body: B) -> Self {
        CacheBody {
            buffered: VecDeque::new(),
            rest: Some(body),
            more: None,
        }
    }

    /// `frames` already read from `rest`, then `rest`.
    pub(crate) fn resume(frames: VecDeque<Frame<Bytes>>, rest: Option<B>) -> Self {
        CacheBody {
            buffered: frames,
            rest,
            more: None,
        }
    }

    /// Like [`resume`](Self::resume), and sets `more` if `rest` yields any data.
    #[cfg(feature = "grpc")]
    pub(crate) fn watched(frames: VecDeque<Frame<Bytes>>, rest: B, more: Arc<AtomicBool>) -> Self {
        CacheBody {
            buffered: frames,
            rest: Some(rest),
            more: Some(more),
        }
    }
}

impl<B> std::fmt::Debug for CacheBody<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CacheBody")
            .field("buffered_frames", &self.buffered.len())
            .field("streaming", &self.rest.is_some())
            .finish()
    }
}

impl<B> Body for CacheBody<B>
where
    B: Body<Data = Bytes>,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.project();
        if let Some(frame) = this.buffered.pop_front() {
            return Poll::Ready(Some(Ok(frame)));
        }
        match this.rest.as_pin_mut() {
            Some(rest) => {
                let polled = rest.poll_frame(cx).map_err(Into::into);
                if let (Some(more), Poll::Ready(Some(Ok(frame)))) = (this.more.as_ref(), &polled)
                    && frame.data_ref().is_some_and(|data| !data.is_empty())
                {
                    more.store(true, Ordering::Release);
                }
                polled
            }
            None => Poll::Ready(None),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.buffered.is_empty() && self.rest.as_ref().is_none_or(Body::is_end_stream)
    }

    fn size_hint(&self) -> SizeHint {
        let buffered: u64 = self
            .buffered
            .iter()
            .filter_map(|frame| frame.data_ref().map(|d| d.len() as u64))
            .sum();
        match &self.rest {
            None => SizeHint::with_exact(buffered),
            Some(rest) => {
                let rest = rest.size_hint();
                let mut hint = SizeHint::new();
                hint.set_lower(rest.lower() + buffered);
                if let Some(upper) = rest.upper() {
                    hint.set_upper(upper + buffered);
                }
                hint
            }
        }
    }
}

/// The response future of a call the cache leaves alone: the inner future, its body
/// wrapped as a streaming [`CacheBody`].
pub(crate) fn passthrough<Fut, B, E>(
    future: Fut,
) -> std::pin::Pin<
    Box<dyn std::future::Future<Output = Result<http::Response<CacheBody<B>>, E>> + Send>,
>
where
    Fut: std::future::Future<Output = Result<http::Response<B>, E>> + Send + 'static,
{
    Box::pin(async move { Ok(future.await?.map(CacheBody::stream)) })
}
