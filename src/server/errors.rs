//! Any error the stack produces, as an HTTP response.

use std::convert::Infallible;
use std::error::Error as StdError;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use http::header::{CONTENT_TYPE, HeaderValue, RETRY_AFTER};
use http::{Request, Response, StatusCode};
use pin_project_lite::pin_project;
use tower::BoxError;
use tower_layer::Layer;
use tower_service::Service;

use super::correlation::{CorrelationId, REQUEST_ID};
use crate::classify::{find_inference_error, outcome_of};
use crate::error::{ErrorBody, ErrorKind, InferenceError, ceil_secs};

/// `retry-after-ms`: the retry delay in milliseconds, which OpenAI's SDKs read before
/// `Retry-After`.
pub const RETRY_AFTER_MS: &str = "retry-after-ms";
/// `x-should-retry`: `true` or `false`, which OpenAI's SDKs obey over their own status rules.
pub const SHOULD_RETRY: &str = "x-should-retry";

/// The JSON shape of an error body.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum ErrorShape {
    /// [`ErrorBody`]: `{"message","code","retryable","details","correlation_id","retry_after_secs"}`.
    #[default]
    Native,
    /// OpenAI's: `{"error":{"message","type","param","code","correlation_id"}}`, so OpenAI
    /// SDKs raise their usual exceptions (`BadRequestError` for 400, `RateLimitError` for
    /// 429, `InternalServerError` for 5xx). `type` is `invalid_request_error` for the
    /// caller's faults, `rate_limit_error` for `overloaded` and `server_error` otherwise;
    /// `code` is the [`ErrorKind::code`].
    OpenAi,
}

/// The caller-facing body of any error the stack produces, without a correlation id.
///
/// An [`InferenceError`] anywhere in the error's `source()` chain gives its own body
/// ([`InferenceError::to_body`]); otherwise the error is classified as the
/// [`DefaultClassifier`](crate::DefaultClassifier) does (tower's `Elapsed` is a timeout,
/// tower's `Overloaded` is overloaded, anything else infrastructure) and the body holds only
/// that kind's generic message. The text of an error that is not an `InferenceError` never
/// reaches the body.
pub fn error_body(err: &(dyn StdError + 'static)) -> ErrorBody {
    body_of(classified(err))
}

/// The [`InferenceError`] in `err`'s chain, if any, and the error's kind.
fn classified<'a>(err: &'a (dyn StdError + 'static)) -> (Option<&'a InferenceError>, ErrorKind) {
    match find_inference_error(err) {
        Some(found) => (Some(found), found.kind()),
        None => (
            None,
            outcome_of(err).kind().unwrap_or(ErrorKind::Infrastructure),
        ),
    }
}

fn body_of((found, kind): (Option<&InferenceError>, ErrorKind)) -> ErrorBody {
    if let Some(err) = found {
        return err.to_body();
    }
    let message = match kind {
        ErrorKind::Timeout => "the model did not answer in time; retry, or ask for fewer tokens",
        ErrorKind::Overloaded => "the model is overloaded; retry later",
        _ => "the inference backend is unavailable; retry later",
    };
    ErrorBody {
        message: message.to_owned(),
        code: kind.code().into(),
        retryable: kind.is_retryable(),
        details: Default::default(),
        correlation_id: None,
        retry_after_secs: None,
    }
}

/// Any error the stack produces as a response: the kind's status, a JSON body of `shape`
/// holding `correlation_id`, `Retry-After` (seconds, rounded up) and `retry-after-ms` when
/// the error says when to retry, `x-should-retry`, and `x-request-id`.
///
/// The body never holds the text of a source error (see [`error_body`]); log `err` for that.
///
/// ```
/// use tower_inference::InferenceError;
/// use tower_inference::server::{ErrorShape, error_response};
///
/// let err = InferenceError::ContextLengthExceeded { input: 9_000, max: 8_192 };
/// let res: http::Response<String> = error_response(&err, ErrorShape::OpenAi, Some("req-7"));
/// assert_eq!(res.status(), 400);
/// assert_eq!(res.headers()["x-request-id"], "req-7");
/// let body: serde_json::Value = serde_json::from_str(res.body()).unwrap();
/// assert_eq!(body["error"]["code"], "context_length_exceeded");
/// assert_eq!(body["error"]["type"], "invalid_request_error");
/// ```
pub fn error_response<B: From<String>>(
    err: &(dyn StdError + 'static),
    shape: ErrorShape,
    correlation_id: Option<&str>,
) -> Response<B> {
    let (found, kind) = classified(err);
    let retry_after = found.and_then(InferenceError::retry_after);
    let mut body = body_of((found, kind));
    body.correlation_id = correlation_id.map(str::to_owned);
    let json = match shape {
        ErrorShape::Native => serde_json::to_string(&body),
        ErrorShape::OpenAi => serde_json::to_string(&serde_json::json!({
            "error": {
                "message": body.message,
                "type": openai_type(kind),
                "param": null,
                "code": body.code,
                "correlation_id": body.correlation_id,
            }
        })),
    }
    // Serializing strings, numbers and maps of them cannot fail.
    .unwrap_or_default();
    let mut res = Response::new(B::from(json));
    *res.status_mut() =
        StatusCode::from_u16(kind.http_status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let headers = res.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    if let Some(after) = retry_after {
        headers.insert(RETRY_AFTER, HeaderValue::from(ceil_secs(after)));
        let ms = u64::try_from(after.as_millis()).unwrap_or(u64::MAX);
        headers.insert(RETRY_AFTER_MS, HeaderValue::from(ms));
    }
    let should_retry = kind.is_retryable() || retry_after.is_some();
    headers.insert(
        SHOULD_RETRY,
        HeaderValue::from_static(if should_retry { "true" } else { "false" }),
    );
    if let Some(value) = correlation_id.and_then(|id| HeaderValue::from_str(id).ok()) {
        headers.insert(REQUEST_ID, value);
    }
    res
}

fn openai_type(kind: ErrorKind) -> &'static str {
    if kind.is_caller_fault() {
        "invalid_request_error"
    } else if kind == ErrorKind::Overloaded {
        "rate_limit_error"
    } else {
        "server_error"
    }
}

/// Turns every error of the service below into a response ([`error_response`]), with the
/// request's [`CorrelationId`] when a [`CorrelationLayer`](super::CorrelationLayer) above
/// set one. The service it makes never fails (`Error = Infallible`), as hyper wants.
///
/// Each error is logged with `tracing` (its whole `source()` chain, which the body never
/// holds) under the correlation id.
#[derive(Debug, Clone, Copy, Default)]
pub struct ErrorResponseLayer {
    shape: ErrorShape,
}

impl ErrorResponseLayer {
    /// Error bodies of `shape`.
    pub fn new(shape: ErrorShape) -> Self {
        ErrorResponseLayer { shape }
    }
}

impl<S> Layer<S> for ErrorResponseLayer {
    type Service = ErrorResponse<S>;

    fn layer(&self, inner: S) -> Self::Service {
        ErrorResponse {
            inner,
            shape: self.shape,
            not_ready: None,
        }
    }
}

/// The service an [`ErrorResponseLayer`] makes.
#[derive(Debug)]
pub struct ErrorResponse<S> {
    inner: S,
    shape: ErrorShape,
    /// The error the inner service's `poll_ready` ended with, answered on the next call.
    not_ready: Option<BoxError>,
}

impl<S: Clone> Clone for ErrorResponse<S> {
    fn clone(&self) -> Self {
        ErrorResponse {
            inner: self.inner.clone(),
            shape: self.shape,
            not_ready: None,
        }
    }
}

impl<S, ReqB, ResB> Service<Request<ReqB>> for ErrorResponse<S>
where
    S: Service<Request<ReqB>, Response = Response<ResB>>,
    S::Error: Into<BoxError>,
    ResB: From<String>,
{
    type Response = Response<ResB>;
    type Error = Infallible;
    type Future = ErrorResponseFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        if self.not_ready.is_some() {
            return Poll::Ready(Ok(()));
        }
        // A service that fails to get ready is answered with its error on the next call.
        if let Err(e) = ready!(self.inner.poll_ready(cx)) {
            self.not_ready = Some(e.into());
        }
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<ReqB>) -> Self::Future {
        let id = req.extensions().get::<CorrelationId>().cloned();
        let state = match self.not_ready.take() {
            Some(err) => State::NotReady { err: Some(err) },
            None => State::Called {
                fut: self.inner.call(req),
            },
        };
        ErrorResponseFuture {
            state,
            id,
            shape: self.shape,
        }
    }
}

pin_project! {
    /// The response future of [`ErrorResponse`].
    pub struct ErrorResponseFuture<F> {
        #[pin]
        state: State<F>,
        id: Option<CorrelationId>,
        shape: ErrorShape,
    }
}

pin_project! {
    #[project = StateProj]
    enum State<F> {
        Called { #[pin] fut: F },
        NotReady { err: Option<BoxError> },
    }
}

impl<F> fmt::Debug for ErrorResponseFuture<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ErrorResponseFuture")
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

impl<F, ResB, E> Future for ErrorResponseFuture<F>
where
    F: Future<Output = Result<Response<ResB>, E>>,
    E: Into<BoxError>,
    ResB: From<String>,
{
    type Output = Result<Response<ResB>, Infallible>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let err: BoxError = match this.state.project() {
            StateProj::Called { fut } => match ready!(fut.poll(cx)) {
                Ok(res) => return Poll::Ready(Ok(res)),
                Err(err) => err.into(),
            },
            StateProj::NotReady { err } => err
                .take()
                .unwrap_or_else(|| InferenceError::infrastructure().into()),
        };
        let id = this.id.as_ref().map(CorrelationId::as_str);
        tracing::warn!(
            error = %Chain(err.as_ref()),
            correlation_id = id.unwrap_or(""),
            "request failed"
        );
        Poll::Ready(Ok(error_response(err.as_ref(), *this.shape, id)))
    }
}

/// An error and its sources, `: `-separated, for logs.
struct Chain<'a>(&'a (dyn StdError + 'static));

impl fmt::Display for Chain<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)?;
        let mut source = self.0.source();
        while let Some(err) = source {
            write!(f, ": {err}")?;
            source = err.source();
        }
        Ok(())
    }
}
