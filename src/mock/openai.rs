//! The mock GPU serving OpenAI-compatible requests (features `mock` and `openai`).

use std::fmt;
use std::future::Future;
use std::marker::PhantomData;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use pin_project_lite::pin_project;
use tower_service::Service;

use super::gpu::{MockGpu, MockGpuFuture};
use super::handle::MockGpuHandle;
use super::stream::MockGpuStream;
use super::types::{Completion, InferenceRequest};
use crate::error::InferenceError;
use crate::openai::{
    ChatChoice, ChatCompletionRequest, ChatCompletionResponse, ChatMessage, CompletionChoice,
    CompletionRequest, CompletionResponse, MAX_N, Usage,
};
use crate::params::GenerationParams;
use crate::stream::TokenStream;

/// The budget the mock generates when a request sets none.
const DEFAULT_BUDGET: u32 = 256;

/// What the answer needs from the request.
#[derive(Debug, Clone, Copy)]
struct Reply {
    n: u32,
    prompt_tokens: u32,
    budget: u32,
}

impl Reply {
    fn finish_reason(&self, tokens: u32) -> String {
        if tokens >= self.budget {
            "length"
        } else {
            "stop"
        }
        .to_owned()
    }

    fn usage(&self, tokens: u32) -> Usage {
        Usage::new(self.prompt_tokens, tokens.saturating_mul(self.n))
    }
}

/// The mock's request for `prompt`: the budget as `max_tokens`, `n` as the batch size.
fn request(prompt: String, budget: Option<u32>, n: Option<u32>) -> (InferenceRequest, Reply) {
    let budget = budget.unwrap_or(DEFAULT_BUDGET);
    let n = n.unwrap_or(1).clamp(1, MAX_N);
    let req = InferenceRequest::new(prompt).params(GenerationParams::new(budget).batch_size(n));
    let prompt_tokens = u32::try_from(req.prompt_tokens()).unwrap_or(u32::MAX);
    let reply = Reply {
        n,
        prompt_tokens,
        budget,
    };
    (req, reply)
}

fn chat(done: Completion, reply: Reply) -> ChatCompletionResponse {
    let mut res = ChatCompletionResponse::from_text(done.model.as_ref(), "");
    res.choices = (0..reply.n)
        .map(|index| ChatChoice {
            index,
            message: ChatMessage::assistant(done.text.clone()),
            finish_reason: Some(reply.finish_reason(done.tokens)),
            extra: Default::default(),
        })
        .collect();
    res.usage = Some(reply.usage(done.tokens));
    res.provenance = done.provenance;
    res
}

fn text(done: Completion, reply: Reply) -> CompletionResponse {
    let mut res = CompletionResponse::from_text(done.model.as_ref(), "");
    res.choices = (0..reply.n)
        .map(|index| CompletionChoice {
            index,
            text: done.text.clone(),
            finish_reason: Some(reply.finish_reason(done.tokens)),
            logprobs: None,
            extra: Default::default(),
        })
        .collect();
    res.usage = Some(reply.usage(done.tokens));
    res.provenance = done.provenance;
    res
}

impl MockGpu {
    /// This GPU serving `POST /v1/chat/completions` requests (feature `openai`).
    ///
    /// It answers a chat request as it answers an [`InferenceRequest`] of the messages' text
    /// (one token per word), with the budget (`max_completion_tokens`, else `max_tokens`, else
    /// 256) as `max_tokens` and `n` as the batch size; each of the `n` choices holds the
    /// generated text. Clones share the GPU (its slots, memory, faults and handle).
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread", start_paused = true)]
    /// # async fn main() {
    /// use tower::ServiceExt;
    /// use tower_inference::mock::MockGpu;
    /// use tower_inference::openai::{ChatCompletionRequest, ChatMessage};
    ///
    /// let gpu = MockGpu::builder().name("llama-70b").build();
    /// let mut req = ChatCompletionRequest::new("llama-70b", [ChatMessage::user("Say hi")]);
    /// req.max_tokens = Some(3);
    /// let res = gpu.chat().oneshot(req).await.unwrap();
    /// assert_eq!(res.model, "llama-70b");
    /// assert_eq!(res.choices[0].message.text().split(' ').count(), 3);
    /// assert_eq!(res.usage.unwrap().total_tokens, 2 + 3);
    /// # }
    /// ```
    pub fn chat(&self) -> OpenAiGpu<ChatCompletionRequest> {
        OpenAiGpu {
            gpu: self.clone(),
            _req: PhantomData,
        }
    }

    /// This GPU serving `POST /v1/completions` requests (feature `openai`): each is answered
    /// as an [`InferenceRequest`] of the prompt's text, with `max_tokens` (else 256) and `n`
    /// as the batch size.
    pub fn completions(&self) -> OpenAiGpu<CompletionRequest> {
        OpenAiGpu {
            gpu: self.clone(),
            _req: PhantomData,
        }
    }
}

/// A [`MockGpu`] serving OpenAI-compatible requests of type `Req`: made by [`MockGpu::chat`]
/// and [`MockGpu::completions`].
pub struct OpenAiGpu<Req> {
    gpu: MockGpu,
    _req: PhantomData<fn(Req)>,
}

impl<Req> OpenAiGpu<Req> {
    /// The GPU's handle.
    pub fn handle(&self) -> MockGpuHandle {
        self.gpu.handle()
    }
}

impl<Req> Clone for OpenAiGpu<Req> {
    fn clone(&self) -> Self {
        OpenAiGpu {
            gpu: self.gpu.clone(),
            _req: PhantomData,
        }
    }
}

impl<Req> fmt::Debug for OpenAiGpu<Req> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("OpenAiGpu").field(&self.gpu).finish()
    }
}

impl Service<ChatCompletionRequest> for OpenAiGpu<ChatCompletionRequest> {
    type Response = ChatCompletionResponse;
    type Error = InferenceError;
    type Future = MockOpenAiFuture<ChatCompletionResponse>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.gpu.poll_ready(cx)
    }

    fn call(&mut self, req: ChatCompletionRequest) -> Self::Future {
        let (inner, reply) = request(req.prompt_text(), req.token_budget(), req.n);
        MockOpenAiFuture {
            inner: self.gpu.call(inner),
            reply,
            finish: chat,
        }
    }
}

impl Service<CompletionRequest> for OpenAiGpu<CompletionRequest> {
    type Response = CompletionResponse;
    type Error = InferenceError;
    type Future = MockOpenAiFuture<CompletionResponse>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.gpu.poll_ready(cx)
    }

    fn call(&mut self, req: CompletionRequest) -> Self::Future {
        let (inner, reply) = request(req.prompt.text().into_owned(), req.max_tokens, req.n);
        MockOpenAiFuture {
            inner: self.gpu.call(inner),
            reply,
            finish: text,
        }
    }
}

pin_project! {
    /// The response future of [`MockGpu`] serving an OpenAI-compatible request.
    pub struct MockOpenAiFuture<T> {
        #[pin]
        inner: MockGpuFuture,
        reply: Reply,
        finish: fn(Completion, Reply) -> T,
    }
}

impl<T> fmt::Debug for MockOpenAiFuture<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MockOpenAiFuture")
            .field("inner", &self.inner)
            .finish_non_exhaustive()
    }
}

impl<T> Future for MockOpenAiFuture<T> {
    type Output = Result<T, InferenceError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let done = ready!(this.inner.poll(cx))?;
        Poll::Ready(Ok((this.finish)(done, *this.reply)))
    }
}

impl MockGpu {
    /// This GPU streaming chat completions (features `mock` and `openai`): each request is
    /// answered as [`MockGpu::chat`] would, as a [`TokenStream`] from
    /// [`MockGpu::streaming`].
    pub fn chat_stream(&self) -> OpenAiGpuStream<ChatCompletionRequest> {
        OpenAiGpuStream {
            gpu: self.streaming(),
            _req: PhantomData,
        }
    }

    /// This GPU streaming text completions, as [`MockGpu::chat_stream`] does chat.
    pub fn completions_stream(&self) -> OpenAiGpuStream<CompletionRequest> {
        OpenAiGpuStream {
            gpu: self.streaming(),
            _req: PhantomData,
        }
    }
}

/// A [`MockGpu`] streaming answers to OpenAI-compatible requests of type `Req`: made by
/// [`MockGpu::chat_stream`] and [`MockGpu::completions_stream`].
pub struct OpenAiGpuStream<Req> {
    gpu: MockGpuStream,
    _req: PhantomData<fn(Req)>,
}

impl<Req> Clone for OpenAiGpuStream<Req> {
    fn clone(&self) -> Self {
        OpenAiGpuStream {
            gpu: self.gpu.clone(),
            _req: PhantomData,
        }
    }
}

impl<Req> fmt::Debug for OpenAiGpuStream<Req> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("OpenAiGpuStream").field(&self.gpu).finish()
    }
}

impl Service<ChatCompletionRequest> for OpenAiGpuStream<ChatCompletionRequest> {
    type Response = TokenStream;
    type Error = InferenceError;
    type Future = <MockGpuStream as Service<InferenceRequest>>::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.gpu.poll_ready(cx)
    }

    fn call(&mut self, req: ChatCompletionRequest) -> Self::Future {
        let (inner, _) = request(req.prompt_text(), req.token_budget(), Some(1));
        self.gpu.call(inner)
    }
}

impl Service<CompletionRequest> for OpenAiGpuStream<CompletionRequest> {
    type Response = TokenStream;
    type Error = InferenceError;
    type Future = <MockGpuStream as Service<InferenceRequest>>::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.gpu.poll_ready(cx)
    }

    fn call(&mut self, req: CompletionRequest) -> Self::Future {
        let (inner, _) = request(req.prompt.text().into_owned(), req.max_tokens, Some(1));
        self.gpu.call(inner)
    }
}
