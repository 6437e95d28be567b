//! [`MockGpuStream`]: the mock GPU in streaming mode, and the [`StreamFault`]s it can show.

use std::borrow::Cow;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::task::{Context, Poll};
use std::time::Duration;

use futures_core::Stream;
use rand::rngs::SmallRng;
use tokio::sync::OwnedSemaphorePermit;
use tokio::time::{Instant, Sleep};
use tower_service::Service;

use super::gpu::{Gauge, Held, MockGpu, occupy};
use super::handle::Shared;
use super::types::{InferenceRequest, word};
use crate::error::{InferenceError, ModelFailure};
use crate::stream::{Chunk, TokenStream};

/// A fault a stream meets, set with
/// [`MockGpuHandle::set_stream_fault`](super::MockGpuHandle::set_stream_fault).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum StreamFault {
    /// The first token never comes (the call holds its slot until dropped).
    NoFirstToken,
    /// The model dies after this many tokens: the stream ends with a `ModelFailure`
    /// (`generation`).
    DieAfter(u32),
    /// The model stops sending after this many tokens and never resumes.
    StallAfter(u32),
    /// The model pauses for the given time after this many tokens, then goes on.
    PauseAfter(u32, Duration),
}

/// The mock GPU in streaming mode: a `Service<InferenceRequest>` answering with a
/// [`TokenStream`]; made by [`MockGpu::streaming`].
///
/// It shares the device (slots, queue, memory, handle) with the [`MockGpu`] it came from and
/// is admitted the same way. Its response future resolves at the **first token**, after the
/// base latency (the prefill); each further token follows after the per-token latency
/// (times the batch size and the slowdown), so a whole stream takes as long as the same
/// call unstreamed. The stream holds its slot and memory until it ends or is dropped: a
/// caller that hangs up frees them at once. A model killed mid-stream ends the stream with
/// `Infrastructure`.
#[derive(Debug, Clone)]
pub struct MockGpuStream {
    gpu: MockGpu,
}

impl MockGpu {
    /// This device in streaming mode (see [`MockGpuStream`]).
    pub fn streaming(&self) -> MockGpuStream {
        MockGpuStream { gpu: self.clone() }
    }
}

impl MockGpuStream {
    /// The device, unstreamed.
    pub fn gpu(&self) -> &MockGpu {
        &self.gpu
    }
}

type Boxed = Pin<Box<dyn Future<Output = Result<TokenStream, InferenceError>> + Send>>;

impl Service<InferenceRequest> for MockGpuStream {
    type Response = TokenStream;
    type Error = InferenceError;
    type Future = Boxed;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.gpu.poll_ready(cx)
    }

    fn call(&mut self, req: InferenceRequest) -> Self::Future {
        let shared = self.gpu.handle().shared;
        let n = shared.calls.fetch_add(1, Relaxed);
        let (place, queued) = match self.gpu.admit(&req) {
            Ok(admitted) => admitted,
            Err(err) => {
                shared.failed.fetch_add(1, Relaxed);
                return Box::pin(std::future::ready(Err(err)));
            }
        };
        let tokens = self.gpu.generated_tokens(&req);
        let cost_mib = self.gpu.memory_cost_mib(&req);
        let slowdown = shared.slowdown();
        let scale = |d: Duration| {
            Duration::try_from_secs_f64(d.as_secs_f64() * slowdown).unwrap_or(Duration::MAX)
        };
        let first_latency = scale(shared.config.base_latency);
        let per_token = scale(
            shared
                .config
                .per_token_latency
                .saturating_mul(req.params.batch_size.max(1)),
        );
        let fault = *shared
            .stream_fault
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        Box::pin(async move {
            let result = start(Start {
                shared: shared.clone(),
                place,
                queued,
                tokens,
                cost_mib,
                first_latency,
                per_token,
                fault,
                n,
            })
            .await;
            if result.is_err() {
                shared.failed.fetch_add(1, Relaxed);
            }
            result
        })
    }
}

/// One admitted stream, with its costs worked out.
struct Start {
    shared: Arc<Shared>,
    place: OwnedSemaphorePermit,
    queued: Gauge,
    tokens: u32,
    cost_mib: u64,
    first_latency: Duration,
    per_token: Duration,
    fault: Option<StreamFault>,
    n: u64,
}

/// Waits for a slot and memory, computes the first token and hands the rest to a stream.
async fn start(job: Start) -> Result<TokenStream, InferenceError> {
    let shared = job.shared;
    let hang = job.fault == Some(StreamFault::NoFirstToken);
    let (held, mut rng) = occupy(
        &shared,
        job.queued,
        job.cost_mib,
        job.first_latency,
        job.n,
        hang,
    )
    .await?;
    if job.tokens == 0 {
        shared.succeeded.fetch_add(1, Relaxed);
        return Ok(TokenStream::from_chunks([]));
    }
    let first = Chunk::new(word(&mut rng));
    let rest = Tokens {
        shared,
        rng,
        sent: 1,
        tokens: job.tokens,
        per_token: job.per_token,
        sleep: Box::pin(tokio::time::sleep(job.per_token)),
        fault: job.fault,
        paused: false,
        done: false,
        held: Some((job.place, held)),
    };
    Ok(TokenStream::started(first, rest))
}

/// The tokens after the first.
struct Tokens {
    shared: Arc<Shared>,
    rng: SmallRng,
    /// Tokens sent so far.
    sent: u32,
    tokens: u32,
    per_token: Duration,
    sleep: Pin<Box<Sleep>>,
    fault: Option<StreamFault>,
    /// Whether a pause is under way.
    paused: bool,
    done: bool,
    /// The queue place, slot, in-flight count and memory, freed when the stream ends or goes.
    held: Option<(OwnedSemaphorePermit, Held)>,
}

impl Tokens {
    fn end(
        &mut self,
        result: Result<(), InferenceError>,
    ) -> Poll<Option<Result<Chunk, InferenceError>>> {
        self.done = true;
        self.held = None;
        match result {
            Ok(()) => {
                self.shared.succeeded.fetch_add(1, Relaxed);
                Poll::Ready(None)
            }
            Err(err) => {
                self.shared.failed.fetch_add(1, Relaxed);
                Poll::Ready(Some(Err(err)))
            }
        }
    }
}

impl Stream for Tokens {
    type Item = Result<Chunk, InferenceError>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        if this.done {
            return Poll::Ready(None);
        }
        if this.sent >= this.tokens {
            return this.end(Ok(()));
        }
        match this.fault {
            Some(StreamFault::DieAfter(k)) if this.sent >= k => {
                return this.end(Err(InferenceError::ModelFailure {
                    failure: ModelFailure::Generation,
                }));
            }
            // Never wakes: a stall timeout above, or the caller, ends it.
            Some(StreamFault::StallAfter(k)) if this.sent >= k => return Poll::Pending,
            Some(StreamFault::PauseAfter(k, pause)) if this.sent == k => {
                let at = Instant::now() + pause + this.per_token;
                this.sleep.as_mut().reset(at);
                this.fault = None;
                this.paused = true;
            }
            _ => {}
        }
        // A zero per-token latency sends at once (a timer would still wait for its tick).
        if (this.paused || !this.per_token.is_zero()) && this.sleep.as_mut().poll(cx).is_pending() {
            return Poll::Pending;
        }
        this.paused = false;
        if !this.shared.is_alive() {
            return this.end(Err(InferenceError::infrastructure()));
        }
        this.sent += 1;
        let next = Instant::now() + this.per_token;
        this.sleep.as_mut().reset(next);
        let text = format!(" {}", word(&mut this.rng));
        Poll::Ready(Some(Ok(Chunk::new(Cow::Owned(text)))))
    }
}
