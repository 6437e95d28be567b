//! Deciding what a call's result means: success, or a failure of some [`ErrorKind`].
//!
//! Layers never match on a concrete error type. They ask a [`Classify`] implementation, which
//! turns a call's `Result<&Res, &E>` into an [`Outcome`]. Three classifiers ship:
//!
//! - [`DefaultClassifier`]: every `Ok` is a success and every `Err` is classified by the
//!   error's own [`ClassifyError`] impl. That covers [`InferenceError`] and [`tower::BoxError`]
//!   (by downcasting: tower's timeout `Elapsed` is a timeout, `load_shed`'s `Overloaded` is
//!   overloaded, an `InferenceError` inside is itself, anything else is infrastructure).
//! - `HttpClassifier` (feature `http`): an `http::Response` is classified by its status
//!   (429 and 5xx are failures, other 4xx are the caller's fault), reading `Retry-After`.
//! - Any closure `Fn(Result<&Res, &E>) -> Outcome`.
//!
//! ```
//! use tower_inference::{Classify, DefaultClassifier, ErrorKind, InferenceError, Outcome};
//!
//! let err = InferenceError::timeout(std::time::Duration::from_secs(30));
//! let outcome = Classify::<(), _>::classify(&DefaultClassifier, Err(&err));
//! assert_eq!(outcome.kind(), Some(ErrorKind::Timeout));
//! assert!(outcome.is_retryable());
//!
//! // A closure is a classifier too: here an empty answer counts as a model failure.
//! let non_empty = |res: Result<&String, &InferenceError>| match res {
//!     Ok(text) if text.is_empty() => Outcome::failure(ErrorKind::ModelFailure),
//!     Ok(_) => Outcome::Success,
//!     Err(e) => Outcome::from(e),
//! };
//! assert!(!non_empty.classify(Ok(&String::new())).is_success());
//! ```

use std::error::Error as StdError;
use std::time::Duration;

use crate::error::{ErrorKind, InferenceError};

/// What a call's result means to the resilience layers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Outcome {
    /// The call succeeded.
    Success,
    /// The call failed.
    Failure {
        /// The kind of failure.
        kind: ErrorKind,
        /// When a retry may succeed, if the failure said.
        retry_after: Option<Duration>,
    },
}

impl Outcome {
    /// A failure of `kind` with no retry-after.
    pub const fn failure(kind: ErrorKind) -> Self {
        Outcome::Failure {
            kind,
            retry_after: None,
        }
    }

    /// Whether the call succeeded.
    pub const fn is_success(&self) -> bool {
        matches!(self, Outcome::Success)
    }

    /// The failure's kind, or `None` on success.
    pub const fn kind(&self) -> Option<ErrorKind> {
        match self {
            Outcome::Success => None,
            Outcome::Failure { kind, .. } => Some(*kind),
        }
    }

    /// The failure's retry-after, if any.
    pub const fn retry_after(&self) -> Option<Duration> {
        match self {
            Outcome::Success => None,
            Outcome::Failure { retry_after, .. } => *retry_after,
        }
    }

    /// Whether this is a failure that is worth retrying ([`ErrorKind::is_retryable`]).
    pub const fn is_retryable(&self) -> bool {
        match self {
            Outcome::Success => false,
            Outcome::Failure { kind, .. } => kind.is_retryable(),
        }
    }

    /// Whether this is a failure the caller caused ([`ErrorKind::is_caller_fault`]).
    pub const fn is_caller_fault(&self) -> bool {
        match self {
            Outcome::Success => false,
            Outcome::Failure { kind, .. } => kind.is_caller_fault(),
        }
    }

    /// Whether this is a failure of the backend: any failure that is not the caller's fault.
    ///
    /// Breakers count these and fallbacks move on for them.
    pub const fn is_backend_fault(&self) -> bool {
        match self {
            Outcome::Success => false,
            Outcome::Failure { kind, .. } => !kind.is_caller_fault(),
        }
    }
}

impl From<&InferenceError> for Outcome {
    fn from(err: &InferenceError) -> Self {
        Outcome::Failure {
            kind: err.kind(),
            retry_after: err.retry_after(),
        }
    }
}

/// Turns a call's result into an [`Outcome`].
///
/// Implemented by [`DefaultClassifier`], `HttpClassifier` (feature `http`) and every
/// `Fn(Result<&Res, &E>) -> Outcome`. Classifiers are cloned into every service a layer builds,
/// so keep them cheap to clone.
pub trait Classify<Res, E> {
    /// Classifies one call's result.
    fn classify(&self, result: Result<&Res, &E>) -> Outcome;
}

impl<F, Res, E> Classify<Res, E> for F
where
    F: Fn(Result<&Res, &E>) -> Outcome,
{
    fn classify(&self, result: Result<&Res, &E>) -> Outcome {
        self(result)
    }
}

/// How an error type classifies itself; used by [`DefaultClassifier`] and `HttpClassifier`.
///
/// Implemented for [`InferenceError`], [`tower::BoxError`], tower's timeout and load-shed
/// errors and tokio's timeout error. Implement it for your own error type to use the default
/// classifiers with it.
pub trait ClassifyError {
    /// The failure this error represents.
    fn outcome(&self) -> Outcome;
}

impl ClassifyError for InferenceError {
    fn outcome(&self) -> Outcome {
        Outcome::from(self)
    }
}

impl ClassifyError for tower::timeout::error::Elapsed {
    fn outcome(&self) -> Outcome {
        Outcome::failure(ErrorKind::Timeout)
    }
}

impl ClassifyError for tower::load_shed::error::Overloaded {
    fn outcome(&self) -> Outcome {
        Outcome::failure(ErrorKind::Overloaded)
    }
}

impl ClassifyError for tokio::time::error::Elapsed {
    fn outcome(&self) -> Outcome {
        Outcome::failure(ErrorKind::Timeout)
    }
}

impl ClassifyError for tower::BoxError {
    /// Downcasts the error and, failing that, each error in its `source()` chain:
    /// an [`InferenceError`] is itself, tower's or tokio's `Elapsed` is a timeout, tower's
    /// `Overloaded` is overloaded, an I/O `TimedOut` is a timeout. Anything else is
    /// [`ErrorKind::Infrastructure`].
    fn outcome(&self) -> Outcome {
        outcome_of(self.as_ref())
    }
}

/// The outcome of any error, by the rules of the `BoxError` impl: the first error of the
/// `source()` chain that is known decides; anything else is an infrastructure failure.
pub(crate) fn outcome_of(err: &(dyn StdError + 'static)) -> Outcome {
    let mut current = Some(err);
    while let Some(err) = current {
        if let Some(outcome) = known_outcome(err) {
            return outcome;
        }
        current = err.source();
    }
    Outcome::failure(ErrorKind::Infrastructure)
}

/// The first [`InferenceError`] in `err`'s `source()` chain, `err` included.
#[cfg_attr(not(feature = "http"), allow(dead_code))]
pub(crate) fn find_inference_error<'a>(
    err: &'a (dyn StdError + 'static),
) -> Option<&'a InferenceError> {
    find_in_chain(err)
}

/// The first `T` in `err`'s `source()` chain, `err` included.
pub(crate) fn find_in_chain<'a, T: StdError + 'static>(
    err: &'a (dyn StdError + 'static),
) -> Option<&'a T> {
    let mut current = Some(err);
    while let Some(err) = current {
        if let Some(found) = err.downcast_ref::<T>() {
            return Some(found);
        }
        current = err.source();
    }
    None
}

fn known_outcome(err: &(dyn StdError + 'static)) -> Option<Outcome> {
    if let Some(e) = err.downcast_ref::<InferenceError>() {
        return Some(e.outcome());
    }
    if err.is::<tower::timeout::error::Elapsed>() || err.is::<tokio::time::error::Elapsed>() {
        return Some(Outcome::failure(ErrorKind::Timeout));
    }
    if err.is::<tower::load_shed::error::Overloaded>() {
        return Some(Outcome::failure(ErrorKind::Overloaded));
    }
    match err.downcast_ref::<std::io::Error>() {
        Some(io) if io.kind() == std::io::ErrorKind::TimedOut => {
            Some(Outcome::failure(ErrorKind::Timeout))
        }
        _ => None,
    }
}

/// Every `Ok` is a success; every `Err` is classified by its [`ClassifyError`] impl.
///
/// The classifier every layer uses unless told otherwise.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DefaultClassifier;

impl<Res, E: ClassifyError> Classify<Res, E> for DefaultClassifier {
    #[inline]
    fn classify(&self, result: Result<&Res, &E>) -> Outcome {
        match result {
            Ok(_) => Outcome::Success,
            Err(e) => e.outcome(),
        }
    }
}

#[cfg(feature = "http")]
pub use self::http_classifier::HttpClassifier;
#[cfg(feature = "client")]
pub(crate) use self::http_classifier::retry_after;

#[cfg(feature = "http")]
mod http_classifier {
    use std::time::{Duration, SystemTime};

    use http::{HeaderMap, Response, StatusCode, header::RETRY_AFTER};

    use super::{Classify, ClassifyError, Outcome};
    use crate::error::ErrorKind;

    /// Classifies `http::Response`s by status; errors by their [`ClassifyError`] impl.
    ///
    /// | status | outcome |
    /// |---|---|
    /// | 1xx, 2xx, 3xx | success |
    /// | 413 | `ContextLengthExceeded` (caller's fault) |
    /// | 408 | `Timeout` |
    /// | 429 | `Overloaded` |
    /// | other 4xx | `InvalidInput` (caller's fault) |
    /// | 500 | `ModelFailure` |
    /// | 504 | `Timeout` |
    /// | 507 | `OutOfMemory` |
    /// | 502, 503 and other 5xx | `Infrastructure` |
    ///
    /// The retry hint is read on 429 and 5xx answers: `retry-after-ms` (OpenAI's) first, then
    /// `Retry-After` in seconds or as an HTTP date.
    ///
    /// ```
    /// use tower_inference::{Classify, ErrorKind, HttpClassifier, InferenceError};
    ///
    /// let res = http::Response::builder()
    ///     .status(429)
    ///     .header("retry-after", "3")
    ///     .body(())
    ///     .unwrap();
    /// let outcome = Classify::<_, InferenceError>::classify(&HttpClassifier, Ok(&res));
    /// assert_eq!(outcome.kind(), Some(ErrorKind::Overloaded));
    /// assert_eq!(outcome.retry_after(), Some(std::time::Duration::from_secs(3)));
    /// ```
    #[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
    pub struct HttpClassifier;

    impl<B, E: ClassifyError> Classify<Response<B>, E> for HttpClassifier {
        fn classify(&self, result: Result<&Response<B>, &E>) -> Outcome {
            match result {
                Ok(res) => classify_status(res.status(), res.headers()),
                Err(e) => e.outcome(),
            }
        }
    }

    fn classify_status(status: StatusCode, headers: &HeaderMap) -> Outcome {
        let kind = match status.as_u16() {
            0..=399 => return Outcome::Success,
            408 => ErrorKind::Timeout,
            413 => ErrorKind::ContextLengthExceeded,
            429 => ErrorKind::Overloaded,
            400..=499 => return Outcome::failure(ErrorKind::InvalidInput),
            500 => ErrorKind::ModelFailure,
            504 => ErrorKind::Timeout,
            507 => ErrorKind::OutOfMemory,
            _ => ErrorKind::Infrastructure,
        };
        Outcome::Failure {
            kind,
            retry_after: retry_after(headers),
        }
    }

    /// When to retry, as the headers say: `retry-after-ms` (OpenAI's, in milliseconds)
    /// first, then `Retry-After` as delay-seconds (fractions accepted, as OpenAI's SDKs do)
    /// or an HTTP date (RFC 9110 §10.2.3); a date in the past is a zero delay, a negative or
    /// unreadable value is ignored, and the delay is at most a day.
    pub(crate) fn retry_after(headers: &HeaderMap) -> Option<Duration> {
        const DAY: f64 = 86_400.0;
        let text = |name: &str| headers.get(name)?.to_str().ok().map(str::trim);
        let secs = |value: f64| {
            (value.is_finite() && value >= 0.0).then(|| Duration::from_secs_f64(value.min(DAY)))
        };
        if let Some(ms) = text("retry-after-ms").and_then(|v| v.parse::<f64>().ok()) {
            return secs(ms / 1_000.0);
        }
        let value = text(RETRY_AFTER.as_str())?;
        if let Ok(value) = value.parse::<f64>() {
            return secs(value);
        }
        let at = httpdate::parse_http_date(value).ok()?;
        let delay = at
            .duration_since(SystemTime::now())
            .unwrap_or(Duration::ZERO);
        Some(delay.min(Duration::from_secs_f64(DAY)))
    }
}
