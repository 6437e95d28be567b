//! Any error the stack produces, as an HTTP response.

use std::convert::Infallible;
use std::error::Error as StdError;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use http::header::{ALLOW, CONTENT_TYPE, HeaderValue, RETRY_AFTER};
use http::{Request, Response, StatusCode};
use pin_project_lite::pin_project;
use tower::BoxError;
use tower_layer::Layer;
use tower_service::Service;

use super::correlation::{CorrelationId, REQUEST_ID};
use super::endpoint::RequestError;
use crate::classify::{find_in_chain, find_inference_error, outcome_of};
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
/// ([`InferenceError::to_body`]), and so does a [`RequestError`]; otherwise the error is
/// classified as the [`DefaultClassifier`](crate::DefaultClassifier) does (tower's `Elapsed`
/// is a timeout, tower's `Overloaded` is overloaded, anything else infrastructure) and the
/// body holds only that kind's generic message. The text of any other error never reaches
/// the body.
pub fn error_body(err: &(dyn StdError + 'static)) -> ErrorBody {
    Found::of(err).body()
}

/// What an error is, as far as its answer goes.
enum Found<'a> {
    /// A request the route could not take.
    Request(&'a RequestError),
    /// An inference error in the chain.
    Inference(&'a InferenceError),
    /// Anything else, classified.
    Other(ErrorKind),
}

impl<'a> Found<'a> {
    fn of(err: &'a (dyn StdError + 'static)) -> Self {
        if let Some(found) = find_in_chain::<RequestError>(err) {
            return Found::Request(found);
        }
        match find_inference_error(err) {
            Some(found) => Found::Inference(found),
            None => Found::Other(outcome_of(err).kind().unwrap_or(ErrorKind::Infrastructure)),
        }
    }

    fn body(&self) -> ErrorBody {
        let (message, code, retryable) = match self {
            Found::Inference(err) => return err.to_body(),
            Found::Request(err) => {
                let mut body = ErrorBody {
                    message: err.to_string(),
                    code: err.code().into(),
                    retryable: false,
                    details: Default::default(),
                    correlation_id: None,
                    retry_after_secs: None,
                };
                if let RequestError::PayloadTooLarge { limit } = err {
                    body.details
                        .insert("limit_bytes".to_owned(), (*limit).into());
                }
                return body;
            }
            Found::Other(kind) => (
                match kind {
                    ErrorKind::Timeout => {
                        "the model did not answer in time; retry, or ask for fewer tokens"
                    }
                    ErrorKind::Overloaded => "the model is overloaded; retry later",
                    _ => "the inference backend is unavailable; retry later",
                },
                kind.code(),
                kind.is_retryable(),
            ),
        };
        ErrorBody {
            message: message.to_owned(),
            code: code.into(),
            retryable,
            details: Default::default(),
            correlation_id: None,
            retry_after_secs: None,
        }
    }

    fn status(&self) -> StatusCode {
        let code = match self {
            Found::Request(err) => return err.status(),
            Found::Inference(err) => err.kind().http_status(),
            Found::Other(kind) => kind.http_status(),
        };
        StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
    }

    fn retry_after(&self) -> Option<Duration> {
        match self {
            Found::Inference(err) => err.retry_after(),
            _ => None,
        }
    }

    fn should_retry(&self) -> bool {
        match self {
            Found::Request(_) => false,
            Found::Inference(err) => err.kind().is_retryable() || err.retry_after().is_some(),
            Found::Other(kind) => kind.is_retryable(),
        }
    }

    /// Whether the caller is at fault (a bad request, not a failing service).
    fn is_caller_fault(&self) -> bool {
        match self {
            Found::Request(_) => true,
            Found::Inference(err) => err.kind().is_caller_fault(),
            Found::Other(kind) => kind.is_caller_fault(),
        }
    }

    /// OpenAI's error `type`.
    fn openai_type(&self) -> &'static str {
        let kind = match self {
            Found::Request(_) => return "invalid_request_error",
            Found::Inference(err) => err.kind(),
            Found::Other(kind) => *kind,
        };
        if kind.is_caller_fault() {
            "invalid_request_error"
        } else if kind == ErrorKind::Overloaded {
            "rate_limit_error"
        } else {
            "server_error"
        }
    }
}

/// Any error the stack produces as a response: the kind's status, a JSON body of `shape`
/// holding `correlation_id`, `Retry-After` (seconds) and `retry-after-ms` (both rounded up) when
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
    Found::of(err).respond(shape, correlation_id)
}

/// The JSON body [`error_response`] gives `err` (for an error sent inside a stream, where
/// the status was already sent).
pub(crate) fn error_json(
    err: &(dyn StdError + 'static),
    shape: ErrorShape,
    correlation_id: Option<&str>,
) -> String {
    Found::of(err).json(shape, correlation_id)
}

impl Found<'_> {
    /// The body for this error, in `shape`.
    fn json(&self, shape: ErrorShape, correlation_id: Option<&str>) -> String {
        let mut body = self.body();
        body.correlation_id = correlation_id.map(str::to_owned);
        match shape {
            ErrorShape::Native => serde_json::to_string(&body),
            ErrorShape::OpenAi => serde_json::to_string(&serde_json::json!({
                "error": {
                    "message": body.message,
                    "type": self.openai_type(),
                    "param": null,
                    "code": body.code,
                    "correlation_id": body.correlation_id,
                }
            })),
        }
        // Serializing strings, numbers and maps of them cannot fail.
        .unwrap_or_default()
    }

    /// The response for this error: see [`error_response`].
    fn respond<B: From<String>>(
        &self,
        shape: ErrorShape,
        correlation_id: Option<&str>,
    ) -> Response<B> {
        let retry_after = self.retry_after();
        let json = self.json(shape, correlation_id);
        let mut res = Response::new(B::from(json));
        *res.status_mut() = self.status();
        let headers = res.headers_mut();
        headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        if let Some(after) = retry_after {
            headers.insert(RETRY_AFTER, HeaderValue::from(ceil_secs(after)));
            // Rounded up, like the seconds: a client that waits what it is told is never early.
            let ms = u64::try_from(after.as_nanos().div_ceil(1_000_000)).unwrap_or(u64::MAX);
            headers.insert(RETRY_AFTER_MS, HeaderValue::from(ms));
        }
        if let Found::Request(RequestError::MethodNotAllowed { allow }) = *self {
            headers.insert(ALLOW, HeaderValue::from_static(allow));
        }
        headers.insert(
            SHOULD_RETRY,
            HeaderValue::from_static(if self.should_retry() { "true" } else { "false" }),
        );
        if let Some(value) = correlation_id.and_then(|id| HeaderValue::from_str(id).ok()) {
            headers.insert(REQUEST_ID, value);
        }
        res
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
        let found = Found::of(err.as_ref());
        // The caller's mistakes (a scanner's 404s, a too-long prompt) are not the service's
        // trouble: they are logged below warning level.
        if found.is_caller_fault() {
            tracing::info!(
                error = %Chain(err.as_ref()),
                correlation_id = id.unwrap_or(""),
                "request refused"
            );
        } else {
            tracing::warn!(
                error = %Chain(err.as_ref()),
                correlation_id = id.unwrap_or(""),
                "request failed"
            );
        }
        Poll::Ready(Ok(found.respond(*this.shape, id)))
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
