//! [`TokenStream`], [`Chunk`] and [`StreamEnd`]: the streamed response shape.

use std::any::Any;
use std::borrow::Cow;
use std::fmt;
use std::future::poll_fn;
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use futures_core::Stream;
use tokio::time::{Instant, Sleep};

use crate::error::{ErrorKind, InferenceError, TimeoutPhase};
use crate::provenance::{Annotate, Provenance};

/// One piece of a streamed answer: a text delta, usually one token.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Chunk {
    /// The text the chunk adds to the answer.
    pub text: Cow<'static, str>,
    /// How many tokens the chunk holds (1 by default; a server may batch several).
    pub tokens: u32,
}

impl Chunk {
    /// A chunk of one token with `text`.
    pub fn new(text: impl Into<Cow<'static, str>>) -> Self {
        Chunk {
            text: text.into(),
            tokens: 1,
        }
    }

    /// Sets how many tokens the chunk holds.
    pub fn tokens(mut self, tokens: u32) -> Self {
        self.tokens = tokens;
        self
    }
}

/// How a [`TokenStream`] ended, as the layers that watch it see it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum StreamEnd {
    /// The model finished the answer.
    Finished {
        /// Chunks handed on.
        chunks: u64,
    },
    /// The stream failed after it started: the model died mid-answer, or stalled past the
    /// stall timeout ([`TimeoutPhase::Stall`]).
    Failed {
        /// The failure's kind.
        kind: ErrorKind,
        /// Whether the failure was a stall.
        stalled: bool,
        /// Chunks handed on before the failure.
        chunks: u64,
    },
    /// The stream was dropped before it ended: the caller hung up. Neither a success nor a
    /// failure of the model.
    Cancelled {
        /// Chunks handed on before the drop.
        chunks: u64,
    },
}

/// What a layer attaches to a stream to learn of its chunks and its end.
pub(crate) trait Watch: Send {
    /// A chunk is being handed on.
    fn chunk(&mut self, chunk: &Chunk) {
        let _ = chunk;
    }

    /// The stream ended (called once).
    fn end(self: Box<Self>, end: StreamEnd);
}

/// A closure given to [`TokenStream::on_end`].
struct OnEnd<F>(F);

impl<F: FnOnce(StreamEnd) + Send> Watch for OnEnd<F> {
    fn end(self: Box<Self>, end: StreamEnd) {
        (self.0)(end)
    }
}

type Source = Pin<Box<dyn Stream<Item = Result<Chunk, InferenceError>> + Send>>;

/// The stall timeout of a started stream.
struct Stall {
    after: Duration,
    sleep: Pin<Box<Sleep>>,
    /// Whether `sleep` counts the current wait (it is re-armed once per wait, not per poll).
    armed: bool,
}

/// A streamed answer: [`Chunk`]s that end in success, a failure or a drop, with its
/// [`Provenance`] known from the start.
///
/// A service that streams answers with a `TokenStream`, and its response future should
/// resolve **once the first chunk is ready** (then retry, fallback and timeouts act on the
/// wait for it; see the [module docs](crate::stream)). [`TokenStream::started`] builds one
/// that way; a source that resolves earlier (at a server's response headers) gets its first
/// chunk pulled by the [`StreamTimeoutLayer`](super::StreamTimeoutLayer) above it.
///
/// Once it started, a failure is an `Err` item that ends it: nothing upstream retries it or
/// replaces it, since part of the answer has been handed on.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// use tower_inference::stream::{Chunk, TokenStream};
///
/// let mut answer = TokenStream::from_chunks(["Hello", ",", " world"].map(Chunk::new));
/// assert_eq!(answer.next().await.unwrap().unwrap().text, "Hello");
/// assert_eq!(answer.text().await.unwrap(), ", world");
/// # }
/// ```
pub struct TokenStream {
    provenance: Provenance,
    first: Option<Chunk>,
    source: Source,
    stall: Option<Stall>,
    watchers: Vec<Box<dyn Watch>>,
    chunks: u64,
    /// How it ended, once it did.
    ended: Option<StreamEnd>,
}

impl TokenStream {
    /// A stream whose first chunk is still to come: [`StreamTimeoutLayer`](super::StreamTimeoutLayer)
    /// (or [`TokenStream::first_chunk`]) waits for it.
    pub fn new(source: impl Stream<Item = Result<Chunk, InferenceError>> + Send + 'static) -> Self {
        TokenStream {
            provenance: Provenance::default(),
            first: None,
            source: Box::pin(source),
            stall: None,
            watchers: Vec::new(),
            chunks: 0,
            ended: None,
        }
    }

    /// A stream that has started: `first` is ready, the rest comes from `rest`.
    pub fn started(
        first: Chunk,
        rest: impl Stream<Item = Result<Chunk, InferenceError>> + Send + 'static,
    ) -> Self {
        let mut stream = TokenStream::new(rest);
        stream.first = Some(first);
        stream
    }

    /// A stream of the given chunks, all ready (e.g. a static or cached answer).
    pub fn from_chunks(chunks: impl IntoIterator<Item = Chunk>) -> Self {
        let chunks: Vec<Chunk> = chunks.into_iter().collect();
        TokenStream::new(Ready(chunks.into_iter()))
    }

    /// A stream of one chunk holding `text`.
    pub fn from_text(text: impl Into<Cow<'static, str>>) -> Self {
        TokenStream::from_chunks([Chunk::new(text)])
    }

    /// The next chunk; `None` once the stream ended (after a failure, too).
    pub async fn next(&mut self) -> Option<Result<Chunk, InferenceError>> {
        poll_fn(|cx| Pin::new(&mut *self).poll_next(cx)).await
    }

    /// The rest of the answer as one string, or the failure that ended the stream (the text
    /// before it is dropped: a truncated answer is not an answer).
    pub async fn text(mut self) -> Result<String, InferenceError> {
        let mut text = String::new();
        while let Some(chunk) = self.next().await {
            text.push_str(&chunk?.text);
        }
        Ok(text)
    }

    /// Waits for the first chunk, unless it is here already. `Err` when the stream failed
    /// before it; `Ok` also for a stream that ended empty.
    pub async fn first_chunk(&mut self) -> Result<(), InferenceError> {
        poll_fn(|cx| self.poll_first(cx)).await
    }

    /// Whether the first chunk is here (or was handed on).
    pub fn has_started(&self) -> bool {
        self.first.is_some() || self.chunks > 0
    }

    /// Chunks handed on so far.
    pub fn chunks(&self) -> u64 {
        self.chunks
    }

    /// Calls `f` once when the stream ends: finished, failed, or dropped before its end.
    pub fn on_end(&mut self, f: impl FnOnce(StreamEnd) + Send + 'static) {
        self.watch(Box::new(OnEnd(f)));
    }

    /// Cuts the stream with a [`TimeoutPhase::Stall`] timeout when its next chunk takes
    /// longer than `after` (counted from when the consumer asks for it).
    pub fn stall_timeout(&mut self, after: Duration) {
        self.stall = Some(Stall {
            after,
            sleep: Box::pin(tokio::time::sleep(after)),
            armed: false,
        });
    }

    /// Attaches a watcher; told at once if the stream already ended.
    pub(crate) fn watch(&mut self, watcher: Box<dyn Watch>) {
        match self.ended {
            Some(end) => watcher.end(end),
            None => self.watchers.push(watcher),
        }
    }

    /// Polls for the first chunk (see [`first_chunk`](Self::first_chunk)).
    pub(crate) fn poll_first(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), InferenceError>> {
        if self.has_started() || self.ended.is_some() {
            return Poll::Ready(Ok(()));
        }
        match ready!(self.source.as_mut().poll_next(cx)) {
            Some(Ok(chunk)) => self.first = Some(chunk),
            Some(Err(err)) => {
                // Not started: the failure is the call's, and the stream is spent.
                self.end(StreamEnd::Failed {
                    kind: err.kind(),
                    stalled: false,
                    chunks: 0,
                });
                return Poll::Ready(Err(err));
            }
            None => self.finish(),
        }
        Poll::Ready(Ok(()))
    }

    fn hand_on(&mut self, chunk: Chunk) -> Poll<Option<Result<Chunk, InferenceError>>> {
        self.chunks += 1;
        if let Some(stall) = &mut self.stall {
            stall.armed = false;
        }
        for watcher in &mut self.watchers {
            watcher.chunk(&chunk);
        }
        Poll::Ready(Some(Ok(chunk)))
    }

    fn finish(&mut self) {
        self.end(StreamEnd::Finished {
            chunks: self.chunks,
        });
    }

    fn fail(&mut self, err: InferenceError) -> Poll<Option<Result<Chunk, InferenceError>>> {
        let stalled = matches!(
            err,
            InferenceError::Timeout {
                phase: TimeoutPhase::Stall,
                ..
            }
        );
        self.end(StreamEnd::Failed {
            kind: err.kind(),
            stalled,
            chunks: self.chunks,
        });
        Poll::Ready(Some(Err(err)))
    }

    fn end(&mut self, end: StreamEnd) {
        self.ended = Some(end);
        self.stall = None;
        for watcher in self.watchers.drain(..) {
            watcher.end(end);
        }
    }

    /// Whether the stall timer ran out while the source is pending.
    fn stalled(&mut self, cx: &mut Context<'_>) -> Option<Duration> {
        let stall = self.stall.as_mut()?;
        if !stall.armed {
            stall.armed = true;
            let deadline = Instant::now() + stall.after;
            stall.sleep.as_mut().reset(deadline);
        }
        stall
            .sleep
            .as_mut()
            .poll(cx)
            .is_ready()
            .then_some(stall.after)
    }
}

impl Stream for TokenStream {
    type Item = Result<Chunk, InferenceError>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        if this.ended.is_some() {
            return Poll::Ready(None);
        }
        if let Some(first) = this.first.take() {
            return this.hand_on(first);
        }
        match this.source.as_mut().poll_next(cx) {
            Poll::Ready(Some(Ok(chunk))) => this.hand_on(chunk),
            Poll::Ready(Some(Err(err))) => this.fail(err),
            Poll::Ready(None) => {
                this.finish();
                Poll::Ready(None)
            }
            Poll::Pending => match this.stalled(cx) {
                Some(after) => this.fail(InferenceError::Timeout {
                    after,
                    phase: TimeoutPhase::Stall,
                }),
                None => Poll::Pending,
            },
        }
    }
}

impl Drop for TokenStream {
    fn drop(&mut self) {
        if self.ended.is_none() && !self.watchers.is_empty() {
            self.end(StreamEnd::Cancelled {
                chunks: self.chunks,
            });
        }
    }
}

impl Annotate for TokenStream {
    fn provenance(&self) -> Option<&Provenance> {
        Some(&self.provenance)
    }

    fn provenance_mut(&mut self) -> &mut Provenance {
        &mut self.provenance
    }
}

impl fmt::Debug for TokenStream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TokenStream")
            .field("provenance", &self.provenance)
            .field("started", &self.has_started())
            .field("chunks", &self.chunks)
            .field("ended", &self.ended)
            .finish_non_exhaustive()
    }
}

/// The [`TokenStream`] a response is, if it is one: how the breaker and the metrics layer
/// recognise a stream without a bound on every response type (the check is on the type, so
/// it costs nothing for any other response).
pub(crate) fn as_stream<T: 'static>(res: &mut T) -> Option<&mut TokenStream> {
    (res as &mut dyn Any).downcast_mut::<TokenStream>()
}

/// Chunks that are all ready.
struct Ready(std::vec::IntoIter<Chunk>);

impl Stream for Ready {
    type Item = Result<Chunk, InferenceError>;

    fn poll_next(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        Poll::Ready(self.get_mut().0.next().map(Ok))
    }
}
