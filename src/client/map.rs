//! From a server's error answer to an [`InferenceError`].

use std::borrow::Cow;
use std::fmt;
use std::time::Duration;

use http::{HeaderMap, StatusCode};
use serde_json::Value;

use crate::error::{ErrorBody, ErrorKind, InferenceError, ModelFailure};
use crate::server::SHOULD_RETRY;
use crate::server::shorten;

/// The longest upstream message kept (in bytes, cut at a character boundary).
const MAX_MESSAGE: usize = 300;

/// A server's error answer, as a [`MapError`] sees it: a status other than 2xx, the
/// headers and the body (read whole, up to the backend's `max_response_bytes`).
#[derive(Debug, Clone, Copy)]
#[non_exhaustive]
pub struct UpstreamError<'a> {
    /// The status.
    pub status: StatusCode,
    /// The headers.
    pub headers: &'a HeaderMap,
    /// The body (empty if it could not be read whole).
    pub body: &'a [u8],
    /// From sending the request to the end of the body.
    pub elapsed: Duration,
}

impl<'a> UpstreamError<'a> {
    /// An error answer to map (for tests of a [`MapError`] of your own).
    pub fn new(status: StatusCode, headers: &'a HeaderMap, body: &'a [u8]) -> Self {
        UpstreamError {
            status,
            headers,
            body,
            elapsed: Duration::ZERO,
        }
    }

    /// When to retry, as the server says: `retry-after-ms` first (OpenAI's), then
    /// `Retry-After` in seconds or as an HTTP date (a date in the past is zero), read as
    /// OpenAI's SDKs read them; at most a day.
    pub fn retry_after(&self) -> Option<Duration> {
        crate::classify::retry_after(self.headers)
    }

    /// The server's `x-should-retry` (`true` or `false`), which OpenAI's SDKs obey over their
    /// own rules; `None` when absent or anything else.
    pub fn should_retry(&self) -> Option<bool> {
        match self.headers.get(SHOULD_RETRY)?.as_bytes() {
            b"true" => Some(true),
            b"false" => Some(false),
            _ => None,
        }
    }

    /// What the body says, from whichever known shape it has (see [`ErrorFields`]).
    pub fn fields(&self) -> ErrorFields {
        ErrorFields::parse(self.body)
    }
}

/// The parts of an error body the mapping reads, from any of the shapes servers use:
///
/// | shape | who |
/// |---|---|
/// | `{"error":{"message","type","param","code"}}` | OpenAI, vLLM (recent), Ollama's `/v1`, a gateway built with this crate |
/// | `{"object":"error","message","type","param","code"}` | vLLM (older releases) |
/// | `{"error":"…","error_type":"…"}` | TGI |
/// | `{"error":"…"}` | Ollama's native API, Triton's native HTTP API |
/// | `{"detail":"…"}` or `{"detail":[{"msg":"…"}]}` | FastAPI servers (Triton's OpenAI frontend) |
/// | [`ErrorBody`]: `{"message","code","retryable","details",…}` | a server built with this crate |
/// | anything else | the first line of a text body is the message |
#[derive(Debug, Clone, Default, PartialEq)]
#[non_exhaustive]
pub struct ErrorFields {
    /// The message, cut to 300 bytes (with `…` when cut), control characters replaced by
    /// spaces.
    pub message: Option<String>,
    /// `type` or `error_type`.
    pub error_type: Option<String>,
    /// `code`, as text (a number is written out).
    pub code: Option<String>,
    /// The whole body, when it is this crate's [`ErrorBody`].
    pub body: Option<ErrorBody>,
}

impl ErrorFields {
    /// Reads `body`.
    pub fn parse(body: &[u8]) -> ErrorFields {
        let Ok(json) = serde_json::from_slice::<Value>(body) else {
            let text = String::from_utf8_lossy(body);
            let line = text.lines().map(str::trim).find(|l| !l.is_empty());
            return ErrorFields {
                message: line.map(clean),
                ..ErrorFields::default()
            };
        };
        if json.get("retryable").is_some()
            && let Ok(native) = serde_json::from_value::<ErrorBody>(json.clone())
        {
            return ErrorFields {
                message: Some(clean(&native.message)),
                error_type: None,
                code: Some(native.code.to_string()),
                body: Some(native),
            };
        }
        // `{"error": {...}}` holds the fields; otherwise they are at the top level.
        let fields = match json.get("error") {
            Some(inner @ Value::Object(_)) => inner,
            _ => &json,
        };
        let text = |key: &str| match fields.get(key)? {
            Value::String(s) => Some(s.clone()),
            Value::Number(n) => Some(n.to_string()),
            _ => None,
        };
        let message = text("message")
            .or_else(|| json.get("error").and_then(Value::as_str).map(str::to_owned))
            .or_else(|| match json.get("detail")? {
                Value::String(s) => Some(s.clone()),
                Value::Array(items) => items.first()?.get("msg")?.as_str().map(str::to_owned),
                _ => None,
            });
        ErrorFields {
            message: message.as_deref().map(clean),
            error_type: text("type").or_else(|| text("error_type")),
            code: text("code"),
            body: None,
        }
    }

    /// Whether the message, type or code says `needle` (lower case), case-insensitively.
    fn says(&self, needles: &[&str]) -> bool {
        [&self.message, &self.error_type, &self.code]
            .into_iter()
            .flatten()
            .any(|text| {
                let text = text.to_ascii_lowercase();
                needles.iter().any(|needle| text.contains(needle))
            })
    }
}

/// The message, cut to [`MAX_MESSAGE`] bytes (with `…` when cut), control characters as
/// spaces.
fn clean(message: &str) -> String {
    shorten(message.trim().to_owned(), MAX_MESSAGE)
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect::<String>()
        .trim()
        .to_owned()
}

/// Turns a server's error answer into an [`InferenceError`].
///
/// [`DefaultMapper`] knows OpenAI, vLLM, TGI, Ollama, Triton and this crate's own servers.
/// A mapper of your own can take the cases it knows and hand the rest on; any
/// `Fn(&UpstreamError<'_>) -> InferenceError` is one:
///
/// ```
/// use tower_inference::{ErrorKind, InferenceError};
/// use tower_inference::client::{DefaultMapper, MapError, UpstreamError};
///
/// // This server answers 418 while it swaps models.
/// let mapper = |up: &UpstreamError<'_>| {
///     if up.status == 418 {
///         InferenceError::ModelNotReady { retry_after: up.retry_after() }
///     } else {
///         DefaultMapper.map_error(up)
///     }
/// };
/// let headers = http::HeaderMap::new();
/// let teapot = UpstreamError::new(http::StatusCode::IM_A_TEAPOT, &headers, b"");
/// assert_eq!(mapper.map_error(&teapot).kind(), ErrorKind::ModelNotReady);
/// let busy = UpstreamError::new(http::StatusCode::TOO_MANY_REQUESTS, &headers, b"");
/// assert_eq!(mapper.map_error(&busy).kind(), ErrorKind::Overloaded);
/// ```
pub trait MapError: Clone + Send + Sync + 'static {
    /// The error for this answer.
    fn map_error(&self, upstream: &UpstreamError<'_>) -> InferenceError;
}

impl<F> MapError for F
where
    F: Fn(&UpstreamError<'_>) -> InferenceError + Clone + Send + Sync + 'static,
{
    fn map_error(&self, upstream: &UpstreamError<'_>) -> InferenceError {
        self(upstream)
    }
}

/// The mapping of the [module docs](super#how-failures-are-mapped) for OpenAI-compatible
/// servers.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DefaultMapper;

impl MapError for DefaultMapper {
    fn map_error(&self, up: &UpstreamError<'_>) -> InferenceError {
        let fields = up.fields();
        let retry_after = up.retry_after();
        if let Some(body) = &fields.body
            && let Some(err) = body.to_error()
        {
            // A server built with this crate: its own error, as it was.
            return with_retry_after(err, retry_after);
        }
        if let Some(kind) = fields.code.as_deref().and_then(ErrorKind::from_code) {
            // An OpenAI-shaped body whose code is one of this crate's kinds (a gateway built
            // with it, or OpenAI's own `context_length_exceeded`): the kind is named, so
            // `x-should-retry` (which such a gateway sets for its end callers) adds nothing.
            return of_kind(kind, up, &fields, retry_after);
        }
        let err = by_status(up, &fields, retry_after);
        obey_should_retry(err, up, &fields, retry_after)
    }
}

/// The error a kind read from a body stands for.
fn of_kind(
    kind: ErrorKind,
    up: &UpstreamError<'_>,
    fields: &ErrorFields,
    retry_after: Option<Duration>,
) -> InferenceError {
    match kind {
        ErrorKind::InvalidInput | ErrorKind::ContextLengthExceeded => caller_fault(up, fields),
        ErrorKind::ModelNotReady => InferenceError::ModelNotReady { retry_after },
        ErrorKind::Timeout => InferenceError::timeout(up.elapsed),
        ErrorKind::OutOfMemory => out_of_memory(),
        ErrorKind::ModelFailure => InferenceError::ModelFailure {
            failure: ModelFailure::InvalidOutput,
        },
        ErrorKind::Overloaded => overloaded(retry_after),
        ErrorKind::CircuitOpen => InferenceError::CircuitOpen {
            retry_in: retry_after.unwrap_or_default(),
        },
        ErrorKind::Exhausted => InferenceError::Exhausted { tiers: Vec::new() },
        ErrorKind::Infrastructure => infrastructure(up, fields),
    }
}

/// Words of a message that says the device ran out of memory.
const OUT_OF_MEMORY: &[&str] = &["out of memory", "outofmemory", "cuda oom"];
/// ... that the model is still loading.
const LOADING: &[&str] = &["loading", "not ready", "warming up", "starting up"];
/// ... that the server is full: vLLM "the engine is currently busy", "prefill token backlog
/// limit"; Triton "Exceeds maximum queue size"; Ollama "server busy … maximum pending
/// requests exceeded"; TGI "Model is overloaded".
const BUSY: &[&str] = &[
    "overloaded",
    "queue size",
    "queue is full",
    "busy",
    "too many requests",
    "maximum pending",
    "backlog",
];
/// ... that the prompt is longer than the context: vLLM "maximum context length is",
/// "longer than the maximum model length"; TGI "`inputs` tokens + `max_new_tokens` must be
/// <=", "`inputs` must have less than"; Ollama "longer than the context length"; OpenAI
/// `context_length_exceeded`, "exceeds the context window".
const CONTEXT: &[&str] = &[
    "context length",
    "context_length",
    "context window",
    "maximum context",
    "maximum model length",
    "`inputs` tokens + ",
    "`inputs` must have less than",
];

/// The error a status stands for, refined by what the body says.
fn by_status(
    up: &UpstreamError<'_>,
    fields: &ErrorFields,
    retry_after: Option<Duration>,
) -> InferenceError {
    match up.status.as_u16() {
        // Triton's native API answered a full queue with 400 before 24.01.
        400 if fields.says(&["maximum queue size"]) => overloaded(retry_after),
        400 | 413 | 422 => caller_fault(up, fields),
        404 if fields.says(&["model"]) => caller_fault(up, fields),
        408 => InferenceError::timeout(up.elapsed),
        424 if fields.says(OUT_OF_MEMORY) => out_of_memory(),
        424 => InferenceError::ModelFailure {
            failure: ModelFailure::Generation,
        },
        429 => overloaded(retry_after),
        // Credentials (ours, not the caller's), a route the server does not have, a
        // conflict, a request the server dropped: the backend's side.
        401 | 403 | 404 | 407 | 409 | 499 => infrastructure(up, fields),
        400..=499 => caller_fault(up, fields),
        504 => InferenceError::timeout(up.elapsed),
        507 => out_of_memory(),
        500..=599 if fields.says(OUT_OF_MEMORY) => out_of_memory(),
        500..=599 if fields.says(LOADING) => InferenceError::ModelNotReady { retry_after },
        500..=599 if fields.says(BUSY) => overloaded(retry_after),
        _ => infrastructure(up, fields),
    }
}

/// `x-should-retry` overrides the retryability of a kind read from the status: `false` on a retryable kind makes the
/// failure a `CircuitOpen` (the server says a retry will not help: not retried, counted by a
/// breaker, answered by a fallback); `true` on a kind that is not retryable (out of memory
/// aside, which the retry layer retries smaller) makes it `Infrastructure`.
fn obey_should_retry(
    err: InferenceError,
    up: &UpstreamError<'_>,
    fields: &ErrorFields,
    retry_after: Option<Duration>,
) -> InferenceError {
    let kind = err.kind();
    match up.should_retry() {
        Some(false) if kind.is_retryable() => InferenceError::CircuitOpen {
            retry_in: retry_after.unwrap_or_default(),
        },
        Some(true) if !kind.is_retryable() && kind != ErrorKind::OutOfMemory => {
            infrastructure(up, fields)
        }
        _ => err,
    }
}

/// A caller's fault: the context is too long when the body says so and the figures can be
/// read, otherwise invalid input with the server's message (it was written for the caller).
fn caller_fault(up: &UpstreamError<'_>, fields: &ErrorFields) -> InferenceError {
    if fields.says(CONTEXT)
        && let Some((input, max)) = fields.message.as_deref().and_then(token_counts)
    {
        return InferenceError::ContextLengthExceeded { input, max };
    }
    let reason: Cow<'static, str> = match &fields.message {
        Some(message) if !message.is_empty() => {
            let message = message.strip_prefix("invalid request: ").unwrap_or(message);
            Cow::Owned(message.to_owned())
        }
        _ => Cow::Owned(format!(
            "the model server refused the request ({})",
            up.status
        )),
    };
    InferenceError::InvalidInput { reason }
}

/// The input's and the context's token counts in a context-length message: the input is the
/// largest number, the context the first other number below it. vLLM's "maximum context
/// length is 4096 tokens. However, your prompt contains 5000 input tokens, …", TGI's "`inputs` tokens + `max_new_tokens` must be <= 4096. Given: 5000
/// `inputs` tokens and 100 `max_new_tokens`" and this crate's "the input is 5000 tokens
/// long, more than the model's context of 4096 tokens" all read as (5000, 4096).
fn token_counts(message: &str) -> Option<(usize, usize)> {
    let numbers: Vec<usize> = message
        .split(|c: char| !c.is_ascii_digit())
        .filter_map(|n| n.parse().ok())
        .collect();
    let input = *numbers.iter().max()?;
    let max = *numbers.iter().find(|&&n| n < input)?;
    Some((input, max))
}

const fn out_of_memory() -> InferenceError {
    InferenceError::OutOfMemory {
        used_mib: 0,
        available_mib: 0,
    }
}

const fn overloaded(retry_after: Option<Duration>) -> InferenceError {
    InferenceError::Overloaded {
        queue_depth: 0,
        retry_after,
    }
}

/// `Infrastructure`, keeping the status and the server's message for logs.
fn infrastructure(up: &UpstreamError<'_>, fields: &ErrorFields) -> InferenceError {
    InferenceError::infrastructure_with_source(UpstreamStatus {
        status: up.status,
        message: fields.message.clone(),
    })
}

/// The retry hint of the answer's headers, on an error rebuilt from a body (the headers
/// are finer: milliseconds rather than whole seconds).
fn with_retry_after(mut err: InferenceError, hint: Option<Duration>) -> InferenceError {
    if let Some(hint) = hint {
        match &mut err {
            InferenceError::Overloaded { retry_after, .. }
            | InferenceError::ModelNotReady { retry_after } => *retry_after = Some(hint),
            InferenceError::CircuitOpen { retry_in } => *retry_in = hint,
            _ => {}
        }
    }
    err
}

/// The source of an `Infrastructure` error mapped from an answer: the status and what the
/// server said, for logs (the message of the `InferenceError` never shows it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpstreamStatus {
    /// The status.
    pub status: StatusCode,
    /// The server's message, if it gave one (cut to 300 bytes).
    pub message: Option<String>,
}

impl fmt::Display for UpstreamStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "the model server answered {}", self.status)?;
        if let Some(message) = &self.message {
            write!(f, ": {message}")?;
        }
        Ok(())
    }
}

impl std::error::Error for UpstreamStatus {}
