//! A [`TokenStream`] as server-sent events: [`sse_response`], [`EndpointBody`], [`SseFormat`].

use std::convert::Infallible;
use std::fmt;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use futures_core::Stream;
use http::header::{CACHE_CONTROL, CONTENT_TYPE};
use http::{HeaderValue, Response, StatusCode};
use http_body::{Body, Frame, SizeHint};

use super::errors::{ErrorShape, error_json};
use super::headers::write_provenance;
use crate::error::InferenceError;
use crate::provenance::Annotate;
use crate::stream::{Chunk, TokenStream};

/// How a stream's chunks, its end and its failure read as server-sent events' `data`.
pub trait SseFormat: Send + 'static {
    /// The JSON of one chunk's event.
    fn chunk(&mut self, chunk: &Chunk) -> String;

    /// The JSON of an event sent once the stream finished, before `[DONE]` (e.g. one that
    /// carries the finish reason); none by default.
    fn finish(&mut self) -> Option<String> {
        None
    }

    /// The JSON of the event that reports a failure after the stream started (by default
    /// the error body in OpenAI's shape, which OpenAI's clients raise as an error).
    fn error(&mut self, err: &InferenceError) -> String {
        error_json(err, ErrorShape::OpenAi, None)
    }
}

/// A response body: a whole answer (JSON, an error, any text) or a stream of server-sent
/// events ([`sse_response`]).
///
/// It converts from `String`, so the [`ErrorResponseLayer`](super::ErrorResponseLayer)
/// answers errors with it, and a route that serves both shapes has one body type.
pub struct EndpointBody {
    kind: Kind,
}

enum Kind {
    Full(Option<Bytes>),
    Events(Box<Events>),
}

struct Events {
    stream: TokenStream,
    format: Box<dyn SseFormat>,
    done: bool,
}

impl From<String> for EndpointBody {
    fn from(text: String) -> Self {
        EndpointBody {
            kind: Kind::Full((!text.is_empty()).then(|| Bytes::from(text))),
        }
    }
}

impl fmt::Debug for EndpointBody {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.kind {
            Kind::Full(bytes) => f.debug_tuple("Full").field(bytes).finish(),
            Kind::Events(events) => f.debug_tuple("Events").field(&events.stream).finish(),
        }
    }
}

/// Appends one event holding `data` to `text`.
fn push_event(text: &mut String, data: &str) {
    text.push_str("data: ");
    text.push_str(data);
    text.push_str("\n\n");
}

fn event(data: &str) -> Frame<Bytes> {
    let mut text = String::with_capacity(data.len() + 8);
    push_event(&mut text, data);
    Frame::data(Bytes::from(text))
}

impl Body for EndpointBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        let events = match &mut self.get_mut().kind {
            Kind::Full(bytes) => return Poll::Ready(bytes.take().map(|b| Ok(Frame::data(b)))),
            Kind::Events(events) => events,
        };
        if events.done {
            return Poll::Ready(None);
        }
        let frame = match Pin::new(&mut events.stream).poll_next(cx) {
            Poll::Pending => return Poll::Pending,
            Poll::Ready(Some(Ok(chunk))) => event(&events.format.chunk(&chunk)),
            Poll::Ready(Some(Err(err))) => {
                // No `[DONE]`: the answer is incomplete, and the client must say so.
                events.done = true;
                event(&events.format.error(&err))
            }
            Poll::Ready(None) => {
                events.done = true;
                let mut text = String::new();
                if let Some(json) = events.format.finish() {
                    push_event(&mut text, &json);
                }
                push_event(&mut text, "[DONE]");
                Frame::data(Bytes::from(text))
            }
        };
        Poll::Ready(Some(Ok(frame)))
    }

    fn is_end_stream(&self) -> bool {
        match &self.kind {
            Kind::Full(bytes) => bytes.is_none(),
            Kind::Events(events) => events.done,
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.kind {
            Kind::Full(Some(bytes)) => SizeHint::with_exact(bytes.len() as u64),
            Kind::Full(None) => SizeHint::with_exact(0),
            Kind::Events(_) => SizeHint::default(),
        }
    }
}

/// A `200` response that streams `stream` as server-sent events (`text/event-stream`), one
/// `data:` event per chunk as `format` writes it, `data: [DONE]` at the end, or an error
/// event (and no `[DONE]`) when the stream fails after it started. The stream's provenance
/// goes in the `x-inference-*` headers, sent before the first chunk, and in the extensions.
///
/// A client that disconnects drops the body, and with it the stream: the model's work is
/// cancelled and the layers count the stream as cancelled.
pub fn sse_response(mut stream: TokenStream, format: impl SseFormat) -> Response<EndpointBody> {
    let provenance = std::mem::take(stream.provenance_mut());
    let mut res = Response::new(EndpointBody {
        kind: Kind::Events(Box::new(Events {
            stream,
            format: Box::new(format),
            done: false,
        })),
    });
    *res.status_mut() = StatusCode::OK;
    let headers = res.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static("text/event-stream"));
    headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    write_provenance(&provenance, headers);
    res.extensions_mut().insert(provenance);
    res
}

/// OpenAI's streamed chunks: `chat.completion.chunk` objects with a `delta`, or
/// `text_completion` objects with a `text`, then a last chunk with the finish reason
/// (`stop`, or `length` when the token budget was spent).
#[cfg(feature = "openai")]
#[derive(Debug, Clone)]
pub struct OpenAiSse {
    id: String,
    model: String,
    created: u64,
    chat: bool,
    budget: Option<u32>,
    tokens: u64,
    chunks: u64,
}

#[cfg(feature = "openai")]
impl OpenAiSse {
    /// Chunks of a chat completion: the first delta carries the `assistant` role.
    pub fn chat(id: impl Into<String>, model: impl Into<String>, budget: Option<u32>) -> Self {
        OpenAiSse::new(id.into(), model.into(), true, budget)
    }

    /// Chunks of a text completion.
    pub fn completion(
        id: impl Into<String>,
        model: impl Into<String>,
        budget: Option<u32>,
    ) -> Self {
        OpenAiSse::new(id.into(), model.into(), false, budget)
    }

    fn new(id: String, model: String, chat: bool, budget: Option<u32>) -> Self {
        let created = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        OpenAiSse {
            id,
            model,
            created,
            chat,
            budget,
            tokens: 0,
            chunks: 0,
        }
    }

    fn object(&self, text: Option<&str>, finish: Option<&str>) -> String {
        let choice = if self.chat {
            let mut delta = serde_json::Map::new();
            if text.is_some() && self.chunks == 1 {
                delta.insert("role".into(), "assistant".into());
            }
            if let Some(text) = text {
                delta.insert("content".into(), text.into());
            }
            serde_json::json!({ "index": 0, "delta": delta, "finish_reason": finish })
        } else {
            serde_json::json!({ "index": 0, "text": text.unwrap_or(""), "finish_reason": finish })
        };
        serde_json::json!({
            "id": self.id,
            "object": if self.chat { "chat.completion.chunk" } else { "text_completion" },
            "created": self.created,
            "model": self.model,
            "choices": [choice],
        })
        .to_string()
    }
}

#[cfg(feature = "openai")]
impl SseFormat for OpenAiSse {
    fn chunk(&mut self, chunk: &Chunk) -> String {
        self.tokens += u64::from(chunk.tokens);
        self.chunks += 1;
        self.object(Some(&chunk.text), None)
    }

    fn finish(&mut self) -> Option<String> {
        let spent = self
            .budget
            .is_some_and(|budget| self.tokens >= u64::from(budget));
        let reason = if spent { "length" } else { "stop" };
        Some(self.object(None, Some(reason)))
    }
}
