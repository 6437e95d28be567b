//! The error taxonomy every layer speaks: [`InferenceError`] and its stable [`ErrorKind`].
//!
//! Inference backends fail in ways ordinary services do not: a GPU runs out of memory, a
//! context is too long, weights are still loading. Each failure is one variant of
//! [`InferenceError`], carrying the data a caller needs to act on it, and each variant has an
//! [`ErrorKind`] that fixes its wire code, HTTP status, retryability and whose fault it is.
//!
//! Messages are written for the caller: they say what happened and what to do, and never
//! include internal detail (paths, hosts, debug dumps). An underlying cause attached with
//! [`InferenceError::infrastructure_with_source`] is kept for logs through
//! [`std::error::Error::source`] and never reaches the message or the [`ErrorBody`].
//!
//! ```
//! use std::time::Duration;
//! use tower_inference::{ErrorKind, InferenceError};
//!
//! let err = InferenceError::OutOfMemory { used_mib: 23_000, available_mib: 1_024 };
//! assert_eq!(err.kind(), ErrorKind::OutOfMemory);
//! assert_eq!(err.kind().http_status(), 507);
//! assert!(!err.kind().is_retryable());
//!
//! let body = err.to_body().with_correlation_id("req-42");
//! let json = serde_json::to_value(&body).unwrap();
//! assert_eq!(json["code"], "out_of_memory");
//! assert_eq!(json["details"]["available_mib"], 1024);
//! ```

use std::borrow::Cow;
use std::error::Error as StdError;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// Which wait of a call ran out, in an [`InferenceError::Timeout`].
///
/// A call that answers at once has one wait ([`Call`](Self::Call)). A token stream has two
/// more: the wait for its first token, and the wait between two tokens once it has started
/// (see [`stream`](crate::stream)).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
#[non_exhaustive]
pub enum TimeoutPhase {
    /// The whole call (tower's `timeout`, a client's deadline, a remote 504).
    #[default]
    Call,
    /// A stream's first token did not come in time.
    FirstToken,
    /// A started stream stalled: its next token did not come in time.
    Stall,
}

impl TimeoutPhase {
    /// Every phase, in declaration order.
    pub const ALL: [TimeoutPhase; 3] = [
        TimeoutPhase::Call,
        TimeoutPhase::FirstToken,
        TimeoutPhase::Stall,
    ];

    /// A stable snake_case name: `call`, `first_token` or `stall`.
    pub const fn as_str(self) -> &'static str {
        match self {
            TimeoutPhase::Call => "call",
            TimeoutPhase::FirstToken => "first_token",
            TimeoutPhase::Stall => "stall",
        }
    }

    /// The phase whose [`as_str`](Self::as_str) is `name`, if any.
    pub fn from_name(name: &str) -> Option<TimeoutPhase> {
        Self::ALL.into_iter().find(|p| p.as_str() == name)
    }
}

impl fmt::Display for TimeoutPhase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(self.as_str())
    }
}

fn timeout_message(phase: TimeoutPhase, after: Duration) -> String {
    let after = fmt_duration(after);
    match phase {
        TimeoutPhase::Call => {
            format!("the model did not answer within {after}; retry, or ask for fewer tokens")
        }
        TimeoutPhase::FirstToken => {
            format!("the model sent no first token within {after}; retry shortly")
        }
        TimeoutPhase::Stall => {
            format!("the model stopped sending tokens for {after}; the answer is incomplete, retry")
        }
    }
}

/// Why a model produced no usable output.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ModelFailure {
    /// The output contained NaN or infinite values.
    NanOutput,
    /// The output tensor did not have the expected shape.
    ShapeMismatch,
    /// The output failed a validity check of the application's, or a remote model's answer
    /// was not the expected JSON.
    InvalidOutput,
    /// Generation started and failed partway (a remote server's "error during generation").
    Generation,
}

impl ModelFailure {
    /// Every failure, in declaration order.
    pub const ALL: [ModelFailure; 4] = [
        ModelFailure::NanOutput,
        ModelFailure::ShapeMismatch,
        ModelFailure::InvalidOutput,
        ModelFailure::Generation,
    ];

    /// The failure whose [`as_str`](Self::as_str) is `name`, if any.
    pub fn from_name(name: &str) -> Option<ModelFailure> {
        Self::ALL.into_iter().find(|f| f.as_str() == name)
    }

    /// A stable snake_case name, used in error bodies and metrics.
    pub const fn as_str(self) -> &'static str {
        match self {
            ModelFailure::NanOutput => "nan_output",
            ModelFailure::ShapeMismatch => "shape_mismatch",
            ModelFailure::InvalidOutput => "invalid_output",
            ModelFailure::Generation => "generation",
        }
    }
}

impl fmt::Display for ModelFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ModelFailure::NanOutput => "its output contained invalid numbers",
            ModelFailure::ShapeMismatch => "its output had an unexpected shape",
            ModelFailure::InvalidOutput => "its output failed validation",
            ModelFailure::Generation => "generation failed partway",
        })
    }
}

/// One tier a fallback chain tried, and how it failed; listed by [`InferenceError::Exhausted`].
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct TierFailure {
    /// The tier's name, as configured.
    pub tier: Cow<'static, str>,
    /// The kind of failure the tier ended with.
    pub kind: ErrorKind,
}

impl TierFailure {
    /// A tier named `tier` that failed with `kind`.
    pub fn new(tier: impl Into<Cow<'static, str>>, kind: ErrorKind) -> Self {
        TierFailure {
            tier: tier.into(),
            kind,
        }
    }
}

/// A failure of an inference call, in terms a caller can act on.
///
/// `InferenceError` is `Clone` (an attached source is shared), so layers can record or replay it.
/// Every layer of this crate that must create an error asks for `E: From<InferenceError>`, which
/// both `InferenceError` and [`tower::BoxError`] satisfy.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum InferenceError {
    /// The request is malformed (an empty prompt, a zero `max_tokens`, an unknown model).
    ///
    /// `reason` is shown to the caller: keep it free of internal detail.
    #[error("invalid request: {reason}")]
    InvalidInput {
        /// What is wrong with the request and how to fix it.
        reason: Cow<'static, str>,
    },

    /// The prompt is longer than the model's context window.
    #[error(
        "the input is {input} tokens long, more than the model's context of {max} tokens; shorten the input"
    )]
    ContextLengthExceeded {
        /// Tokens in the input.
        input: usize,
        /// The model's context window, in tokens.
        max: usize,
    },

    /// The model is still loading its weights or warming up.
    #[error("the model is still loading; retry shortly")]
    ModelNotReady {
        /// How long until it is expected to be ready, if known.
        retry_after: Option<Duration>,
    },

    /// The model did not answer in time: a whole call, a stream's first token, or a stream's
    /// next token (see [`TimeoutPhase`]).
    #[error("{}", timeout_message(*phase, *after))]
    Timeout {
        /// How long the call, or the stream's phase, waited.
        after: Duration,
        /// Which wait ran out.
        phase: TimeoutPhase,
    },

    /// The device ran out of memory for this request.
    #[error(
        "the model ran out of memory{}; retry with a smaller request (fewer tokens, smaller batch or resolution)",
        mib_free(*used_mib, *available_mib)
    )]
    OutOfMemory {
        /// Device memory in use when the request was refused, in MiB (0 with
        /// `available_mib` 0 when unknown, e.g. reported by a remote server).
        used_mib: u64,
        /// Device memory that was free, in MiB.
        available_mib: u64,
    },

    /// The model ran but produced no usable output.
    #[error("the model failed to produce a valid answer: {failure}")]
    ModelFailure {
        /// What was wrong with the output.
        failure: ModelFailure,
    },

    /// The serving infrastructure failed (connection lost, process died, backend down).
    ///
    /// The message never names the internals; an attached source is available to logs through
    /// [`std::error::Error::source`].
    #[error("the inference backend is unavailable; retry later")]
    Infrastructure {
        /// The underlying cause, for logs only.
        #[source]
        source: Option<Arc<dyn StdError + Send + Sync>>,
    },

    /// Too many requests are waiting; the request was shed.
    #[error("the model is overloaded{}; retry later", waiting(*queue_depth))]
    Overloaded {
        /// Requests waiting when this one was refused (0 when unknown, e.g. reported by a
        /// remote server).
        queue_depth: usize,
        /// When the caller may retry, if known.
        retry_after: Option<Duration>,
    },

    /// A circuit breaker is open: the backend is failing and is given time to recover.
    #[error("the model is temporarily unavailable; retry in {}", fmt_duration(*retry_in))]
    CircuitOpen {
        /// Time until the breaker lets a probe through.
        retry_in: Duration,
    },

    /// Every tier of a fallback chain failed.
    ///
    /// The message says the service is degraded; which tiers failed is in `tiers` (and in the
    /// body's details, by tier name and failure kind), never their internal errors.
    #[error("the service is degraded and could not answer; retry later")]
    Exhausted {
        /// Each tier tried, in order, with the kind of its failure.
        tiers: Vec<TierFailure>,
    },
}

impl InferenceError {
    /// An [`InferenceError::InvalidInput`] with a caller-facing reason.
    pub fn invalid_input(reason: impl Into<Cow<'static, str>>) -> Self {
        InferenceError::InvalidInput {
            reason: reason.into(),
        }
    }

    /// An [`InferenceError::Timeout`] of a whole call ([`TimeoutPhase::Call`]) after `after`.
    pub const fn timeout(after: Duration) -> Self {
        InferenceError::Timeout {
            after,
            phase: TimeoutPhase::Call,
        }
    }

    /// An [`InferenceError::Infrastructure`] with no recorded cause.
    pub const fn infrastructure() -> Self {
        InferenceError::Infrastructure { source: None }
    }

    /// An [`InferenceError::Infrastructure`] that keeps `source` for logs (never for callers).
    pub fn infrastructure_with_source(source: impl Into<Box<dyn StdError + Send + Sync>>) -> Self {
        InferenceError::Infrastructure {
            source: Some(Arc::from(source.into())),
        }
    }

    /// The stable kind of this error.
    pub const fn kind(&self) -> ErrorKind {
        match self {
            InferenceError::InvalidInput { .. } => ErrorKind::InvalidInput,
            InferenceError::ContextLengthExceeded { .. } => ErrorKind::ContextLengthExceeded,
            InferenceError::ModelNotReady { .. } => ErrorKind::ModelNotReady,
            InferenceError::Timeout { .. } => ErrorKind::Timeout,
            InferenceError::OutOfMemory { .. } => ErrorKind::OutOfMemory,
            InferenceError::ModelFailure { .. } => ErrorKind::ModelFailure,
            InferenceError::Infrastructure { .. } => ErrorKind::Infrastructure,
            InferenceError::Overloaded { .. } => ErrorKind::Overloaded,
            InferenceError::CircuitOpen { .. } => ErrorKind::CircuitOpen,
            InferenceError::Exhausted { .. } => ErrorKind::Exhausted,
        }
    }

    /// When the caller may usefully try again, if the error says.
    ///
    /// `Overloaded` and `ModelNotReady` carry it when known; `CircuitOpen` always does.
    pub const fn retry_after(&self) -> Option<Duration> {
        match self {
            InferenceError::Overloaded { retry_after, .. }
            | InferenceError::ModelNotReady { retry_after } => *retry_after,
            InferenceError::CircuitOpen { retry_in } => Some(*retry_in),
            _ => None,
        }
    }

    /// The caller-facing body for this error: message, code, retryability and safe details.
    pub fn to_body(&self) -> ErrorBody {
        let mut details = Map::new();
        let mut put = |key: &str, value: Value| {
            details.insert(key.to_owned(), value);
        };
        match self {
            InferenceError::ContextLengthExceeded { input, max } => {
                put("input_tokens", (*input).into());
                put("max_tokens", (*max).into());
            }
            InferenceError::Timeout { after, phase } => {
                put("timeout_ms", duration_ms(*after).into());
                if *phase != TimeoutPhase::Call {
                    put("phase", phase.as_str().into());
                }
            }
            InferenceError::OutOfMemory {
                used_mib,
                available_mib,
            } => {
                put("used_mib", (*used_mib).into());
                put("available_mib", (*available_mib).into());
            }
            InferenceError::ModelFailure { failure } => put("failure", failure.as_str().into()),
            InferenceError::Overloaded { queue_depth, .. } => {
                put("queue_depth", (*queue_depth).into())
            }
            InferenceError::Exhausted { tiers } => {
                let tiers = tiers
                    .iter()
                    .map(|t| serde_json::json!({ "tier": t.tier, "kind": t.kind.code() }))
                    .collect();
                put("tiers", Value::Array(tiers));
            }
            InferenceError::InvalidInput { .. }
            | InferenceError::ModelNotReady { .. }
            | InferenceError::Infrastructure { .. }
            | InferenceError::CircuitOpen { .. } => {}
        }
        let kind = self.kind();
        ErrorBody {
            message: self.to_string(),
            code: Cow::Borrowed(kind.code()),
            retryable: kind.is_retryable(),
            details,
            correlation_id: None,
            retry_after_secs: self.retry_after().map(ceil_secs),
        }
    }
}

/// The stable kind of an [`InferenceError`]: its code, HTTP status, retryability and fault.
///
/// | kind | code | status | retryable | caller's fault |
/// |---|---|---|---|---|
/// | `InvalidInput` | `invalid_input` | 400 | no | yes |
/// | `ContextLengthExceeded` | `context_length_exceeded` | 400 | no | yes |
/// | `ModelNotReady` | `model_not_ready` | 503 | yes | no |
/// | `Timeout` | `timeout` | 504 | yes | no |
/// | `OutOfMemory` | `out_of_memory` | 507 | no (see the retry layer's OOM retry) | no |
/// | `ModelFailure` | `model_failure` | 500 | no | no |
/// | `Infrastructure` | `infrastructure` | 503 | yes | no |
/// | `Overloaded` | `overloaded` | 429 | yes | no |
/// | `CircuitOpen` | `circuit_open` | 503 | no (a fallback answers instead) | no |
/// | `Exhausted` | `exhausted` | 503 | no | no |
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum ErrorKind {
    /// See [`InferenceError::InvalidInput`].
    InvalidInput,
    /// See [`InferenceError::ContextLengthExceeded`].
    ContextLengthExceeded,
    /// See [`InferenceError::ModelNotReady`].
    ModelNotReady,
    /// See [`InferenceError::Timeout`].
    Timeout,
    /// See [`InferenceError::OutOfMemory`].
    OutOfMemory,
    /// See [`InferenceError::ModelFailure`].
    ModelFailure,
    /// See [`InferenceError::Infrastructure`].
    Infrastructure,
    /// See [`InferenceError::Overloaded`].
    Overloaded,
    /// See [`InferenceError::CircuitOpen`].
    CircuitOpen,
    /// See [`InferenceError::Exhausted`].
    Exhausted,
}

impl ErrorKind {
    /// Every kind, in declaration order (for tables, metrics and tests).
    pub const ALL: [ErrorKind; 10] = [
        ErrorKind::InvalidInput,
        ErrorKind::ContextLengthExceeded,
        ErrorKind::ModelNotReady,
        ErrorKind::Timeout,
        ErrorKind::OutOfMemory,
        ErrorKind::ModelFailure,
        ErrorKind::Infrastructure,
        ErrorKind::Overloaded,
        ErrorKind::CircuitOpen,
        ErrorKind::Exhausted,
    ];

    /// The kind whose [`code`](Self::code) is `code`, if any.
    ///
    /// ```
    /// use tower_inference::ErrorKind;
    ///
    /// assert_eq!(ErrorKind::from_code("overloaded"), Some(ErrorKind::Overloaded));
    /// assert_eq!(ErrorKind::from_code("teapot"), None);
    /// ```
    pub fn from_code(code: &str) -> Option<ErrorKind> {
        Self::ALL.into_iter().find(|k| k.code() == code)
    }

    /// A stable snake_case code, for error bodies, logs and metric labels.
    pub const fn code(self) -> &'static str {
        match self {
            ErrorKind::InvalidInput => "invalid_input",
            ErrorKind::ContextLengthExceeded => "context_length_exceeded",
            ErrorKind::ModelNotReady => "model_not_ready",
            ErrorKind::Timeout => "timeout",
            ErrorKind::OutOfMemory => "out_of_memory",
            ErrorKind::ModelFailure => "model_failure",
            ErrorKind::Infrastructure => "infrastructure",
            ErrorKind::Overloaded => "overloaded",
            ErrorKind::CircuitOpen => "circuit_open",
            ErrorKind::Exhausted => "exhausted",
        }
    }

    /// The HTTP status a server should answer with.
    pub const fn http_status(self) -> u16 {
        match self {
            ErrorKind::InvalidInput | ErrorKind::ContextLengthExceeded => 400,
            ErrorKind::ModelNotReady
            | ErrorKind::Infrastructure
            | ErrorKind::CircuitOpen
            | ErrorKind::Exhausted => 503,
            ErrorKind::Timeout => 504,
            ErrorKind::OutOfMemory => 507,
            ErrorKind::ModelFailure => 500,
            ErrorKind::Overloaded => 429,
        }
    }

    /// Whether the same request may succeed if sent again later.
    ///
    /// True for timeouts, overload, a model still loading and infrastructure failures; never for
    /// a caller's fault. Out-of-memory is not retryable as is (the retry layer can retry it once
    /// with a smaller request), and an open circuit is answered by a fallback, not a retry.
    pub const fn is_retryable(self) -> bool {
        matches!(
            self,
            ErrorKind::Timeout
                | ErrorKind::Overloaded
                | ErrorKind::ModelNotReady
                | ErrorKind::Infrastructure
        )
    }

    /// Whether the caller caused the failure (bad input), as opposed to the backend.
    ///
    /// Caller faults are never retried, never trip a breaker and do not fall back unless a
    /// tier says it takes them.
    pub const fn is_caller_fault(self) -> bool {
        matches!(
            self,
            ErrorKind::InvalidInput | ErrorKind::ContextLengthExceeded
        )
    }
}

impl fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(self.code())
    }
}

/// The JSON body a server sends for an [`InferenceError`].
///
/// ```json
/// {"message":"the model is overloaded (12 requests waiting); retry later","code":"overloaded",
///  "retryable":true,"details":{"queue_depth":12},"correlation_id":"req-7","retry_after_secs":2}
/// ```
///
/// `details` holds only safe, structured facts (token counts, memory figures, tier names);
/// `correlation_id` and `retry_after_secs` are omitted when unset.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ErrorBody {
    /// The caller-facing message.
    pub message: String,
    /// The [`ErrorKind::code`].
    pub code: Cow<'static, str>,
    /// Whether retrying the same request may succeed.
    pub retryable: bool,
    /// Structured, safe details (may be empty).
    #[serde(default, skip_serializing_if = "Map::is_empty")]
    pub details: Map<String, Value>,
    /// An id the caller can quote to support, if the server set one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub correlation_id: Option<String>,
    /// Seconds after which a retry may succeed (rounded up), if known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_after_secs: Option<u64>,
}

impl ErrorBody {
    /// Sets the correlation id.
    pub fn with_correlation_id(mut self, id: impl Into<String>) -> Self {
        self.correlation_id = Some(id.into());
        self
    }
}

impl ErrorBody {
    /// The error this body describes, rebuilt from its code, details and retry hint: the
    /// inverse of [`InferenceError::to_body`], for a client of a server that answers in this
    /// shape. `None` when the code is not one of [`ErrorKind`]'s.
    ///
    /// Figures missing from `details` are 0 (see the variants' docs); an `Infrastructure`
    /// error has no source, and `InvalidInput` keeps the message as its reason.
    ///
    /// ```
    /// use tower_inference::{ErrorBody, InferenceError};
    ///
    /// let err = InferenceError::ContextLengthExceeded { input: 9_000, max: 8_192 };
    /// let rebuilt = err.to_body().to_error().unwrap();
    /// assert!(matches!(rebuilt, InferenceError::ContextLengthExceeded { input: 9_000, max: 8_192 }));
    /// ```
    pub fn to_error(&self) -> Option<InferenceError> {
        let kind = ErrorKind::from_code(&self.code)?;
        let number = |key: &str| self.details.get(key).and_then(Value::as_u64).unwrap_or(0);
        let size = |key: &str| usize::try_from(number(key)).unwrap_or(usize::MAX);
        let retry_after = self.retry_after_secs.map(Duration::from_secs);
        Some(match kind {
            ErrorKind::InvalidInput => {
                let reason = self.message.strip_prefix("invalid request: ");
                InferenceError::invalid_input(reason.unwrap_or(&self.message).to_owned())
            }
            ErrorKind::ContextLengthExceeded => InferenceError::ContextLengthExceeded {
                input: size("input_tokens"),
                max: size("max_tokens"),
            },
            ErrorKind::ModelNotReady => InferenceError::ModelNotReady { retry_after },
            ErrorKind::Timeout => InferenceError::Timeout {
                after: Duration::from_millis(number("timeout_ms")),
                phase: self
                    .details
                    .get("phase")
                    .and_then(Value::as_str)
                    .and_then(TimeoutPhase::from_name)
                    .unwrap_or(TimeoutPhase::Call),
            },
            ErrorKind::OutOfMemory => InferenceError::OutOfMemory {
                used_mib: number("used_mib"),
                available_mib: number("available_mib"),
            },
            ErrorKind::ModelFailure => InferenceError::ModelFailure {
                failure: self
                    .details
                    .get("failure")
                    .and_then(Value::as_str)
                    .and_then(ModelFailure::from_name)
                    .unwrap_or(ModelFailure::InvalidOutput),
            },
            ErrorKind::Infrastructure => InferenceError::infrastructure(),
            ErrorKind::Overloaded => InferenceError::Overloaded {
                queue_depth: size("queue_depth"),
                retry_after,
            },
            ErrorKind::CircuitOpen => InferenceError::CircuitOpen {
                retry_in: retry_after.unwrap_or_default(),
            },
            ErrorKind::Exhausted => InferenceError::Exhausted {
                tiers: self
                    .details
                    .get("tiers")
                    .and_then(Value::as_array)
                    .map(|tiers| {
                        let listed = tiers.iter().filter_map(tier_failure);
                        listed.take(crate::provenance::MAX_FAILED_TIERS).collect()
                    })
                    .unwrap_or_default(),
            },
        })
    }
}

/// A `{"tier","kind"}` entry of an `exhausted` body's details.
fn tier_failure(entry: &Value) -> Option<TierFailure> {
    let tier = entry.get("tier")?.as_str()?;
    let kind = ErrorKind::from_code(entry.get("kind")?.as_str()?)?;
    Some(TierFailure::new(tier.to_owned(), kind))
}

impl From<&InferenceError> for ErrorBody {
    fn from(err: &InferenceError) -> Self {
        err.to_body()
    }
}

fn duration_ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// Whole seconds, rounded up, so a client never retries early (saturating: a duration past
/// `u64::MAX` seconds says `u64::MAX`, never "retry now").
pub(crate) fn ceil_secs(d: Duration) -> u64 {
    d.as_secs().saturating_add(u64::from(d.subsec_nanos() > 0))
}

/// ` (N requests waiting)`, or nothing when the depth is not known (0).
fn waiting(queue_depth: usize) -> String {
    if queue_depth == 0 {
        String::new()
    } else {
        format!(" ({queue_depth} requests waiting)")
    }
}

/// ` (N MiB free)`, or nothing when the figures are not known (both 0).
fn mib_free(used_mib: u64, available_mib: u64) -> String {
    if used_mib == 0 && available_mib == 0 {
        String::new()
    } else {
        format!(" ({available_mib} MiB free)")
    }
}

/// A short human duration: `250ms`, `3s`, `1.5s`.
fn fmt_duration(d: Duration) -> String {
    let ms = duration_ms(d);
    if ms < 1_000 {
        format!("{ms}ms")
    } else if ms.is_multiple_of(1_000) {
        format!("{}s", ms / 1_000)
    } else {
        format!("{:.1}s", d.as_secs_f64())
    }
}
