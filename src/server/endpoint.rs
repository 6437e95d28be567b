//! A typed service (the stack) served over HTTP with JSON bodies.

use std::fmt;
use std::future::Future;
use std::marker::PhantomData;
use std::pin::Pin;
use std::task::{Context, Poll};

use http::header::{CONTENT_LENGTH, CONTENT_TYPE, HeaderValue};
use http::{HeaderMap, Request, Response, StatusCode};
use http_body::Body;
use http_body_util::{BodyExt, LengthLimitError, Limited};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tower::{BoxError, ServiceExt};
use tower_service::Service;

use super::headers::write_provenance;
use crate::error::InferenceError;
use crate::provenance::Annotate;
use crate::setting;

/// The default largest request body a [`JsonEndpoint`] reads: 1 MiB.
pub const DEFAULT_BODY_LIMIT: usize = 1 << 20;

/// What is wrong with an HTTP request that never reached the model: no such route, a
/// method the route does not serve, a body too large, not JSON, or not the JSON the route
/// takes.
///
/// [`error_response`](super::error_response) (and so
/// [`ErrorResponseLayer`](super::ErrorResponseLayer)) answers it with its
/// [`status`](RequestError::status), a JSON body in either shape with its
/// [`code`](RequestError::code) and message, and `Allow` for a wrong method.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RequestError {
    /// No route has this path (404).
    #[error("there is no such route; see the API's documentation for its paths")]
    NotFound,
    /// The route does not serve this method (405).
    #[error("this route does not serve this method; use {allow}")]
    MethodNotAllowed {
        /// The methods it serves, as the `Allow` header lists them (e.g. `POST`).
        allow: &'static str,
    },
    /// The body is larger than the route reads (413).
    #[error("the request body is larger than {limit} bytes; send a smaller one")]
    PayloadTooLarge {
        /// The largest body read, in bytes.
        limit: usize,
    },
    /// The body is not declared as JSON (400).
    #[error("the request body must be JSON; set the header `Content-Type: application/json`")]
    NotJson,
    /// The body is not JSON of the route's shape (400).
    #[error("the request body is not valid JSON for this route: {reason}")]
    MalformedJson {
        /// What the JSON parser found (what it expected, and where), at most 200 bytes of it.
        reason: String,
    },
    /// The body could not be read (the client stopped sending it) (400).
    #[error("the request body could not be read")]
    BodyUnreadable,
}

impl RequestError {
    /// The HTTP status it is answered with.
    pub const fn status(&self) -> StatusCode {
        match self {
            RequestError::NotFound => StatusCode::NOT_FOUND,
            RequestError::MethodNotAllowed { .. } => StatusCode::METHOD_NOT_ALLOWED,
            RequestError::PayloadTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            RequestError::NotJson
            | RequestError::MalformedJson { .. }
            | RequestError::BodyUnreadable => StatusCode::BAD_REQUEST,
        }
    }

    /// A stable, snake_case code for the body.
    pub const fn code(&self) -> &'static str {
        match self {
            RequestError::NotFound => "not_found",
            RequestError::MethodNotAllowed { .. } => "method_not_allowed",
            RequestError::PayloadTooLarge { .. } => "payload_too_large",
            RequestError::NotJson => "not_json",
            RequestError::MalformedJson { .. } => "malformed_json",
            RequestError::BodyUnreadable => "body_unreadable",
        }
    }
}

/// A check of a request before it is served.
type Check<Req> = fn(&Req) -> Result<(), InferenceError>;

/// Serves a typed service, such as the stack over an OpenAI-style handler, as a service of
/// `http::Request`s: it reads the body as JSON (at most [`body_limit`](Self::body_limit)
/// bytes), optionally [`check`](Self::check)s the request, calls the service, and answers
/// `200` with the response as JSON and its [`Provenance`](crate::Provenance) as headers
/// ([`write_provenance`]) and in the response's extensions.
///
/// It fails with a [`RequestError`] when the body is too large (checked first against
/// `Content-Length`, then while reading), is declared as anything but JSON (a request with no
/// `Content-Type` is read as JSON) or does not parse; with the check's error; or with the
/// service's error. Put an [`ErrorResponseLayer`](super::ErrorResponseLayer) above it to
/// answer each with its status and JSON body.
///
/// The body limit is read with `http_body_util::Limited` rather than tower-http's
/// `RequestBodyLimitLayer`, whose 413 has a plain-text body; here a too-large body is an
/// error like any other, so it gets the same JSON body and correlation id.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// use tower::{ServiceBuilder, ServiceExt, service_fn};
/// use tower_inference::server::{ErrorResponseLayer, ErrorShape, JsonEndpoint};
/// use tower_inference::{InferenceError, Served};
///
/// #[derive(serde::Deserialize)]
/// struct Ask { question: String }
///
/// let model = service_fn(|ask: Ask| async move {
///     Ok::<_, InferenceError>(Served::new(format!("you asked: {}", ask.question)))
/// });
/// let app = ServiceBuilder::new()
///     .layer(ErrorResponseLayer::new(ErrorShape::Native))
///     .service(JsonEndpoint::new(model).body_limit(1_024));
///
/// let ok = http::Request::post("/ask").body(r#"{"question":"why"}"#.to_owned()).unwrap();
/// let res = app.clone().oneshot(ok).await.unwrap();
/// assert_eq!(res.status(), 200);
/// assert!(res.body().contains("you asked: why"));
/// assert_eq!(res.headers()["x-inference-tier"], "primary");
///
/// let bad = http::Request::post("/ask").body(r#"{"q":"why"}"#.to_owned()).unwrap();
/// let res = app.oneshot(bad).await.unwrap();
/// assert_eq!(res.status(), 400);
/// assert!(res.body().contains("missing field `question`"));
/// # }
/// ```
pub struct JsonEndpoint<S, Req> {
    inner: S,
    limit: usize,
    check: Option<Check<Req>>,
    _req: PhantomData<fn(Req)>,
}

impl<S, Req> JsonEndpoint<S, Req> {
    /// Serves `inner`, reading bodies of at most [`DEFAULT_BODY_LIMIT`] bytes.
    pub fn new(inner: S) -> Self {
        JsonEndpoint {
            inner,
            limit: DEFAULT_BODY_LIMIT,
            check: None,
            _req: PhantomData,
        }
    }

    /// Reads bodies of at most `bytes` bytes (at least 1; default 1 MiB); a larger one is
    /// [`RequestError::PayloadTooLarge`].
    pub fn body_limit(mut self, bytes: usize) -> Self {
        self.limit = setting::at_least("json endpoint body limit", bytes, 1);
        self
    }

    /// Checks each request before calling the service (such as
    /// [`ChatCompletionRequest::validate`](crate::openai::ChatCompletionRequest::validate));
    /// a request that fails is answered with the check's error and never reaches the stack.
    pub fn check(mut self, check: fn(&Req) -> Result<(), InferenceError>) -> Self {
        self.check = Some(check);
        self
    }

    /// The service served.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }
}

impl<S: Clone, Req> Clone for JsonEndpoint<S, Req> {
    fn clone(&self) -> Self {
        JsonEndpoint {
            inner: self.inner.clone(),
            limit: self.limit,
            check: self.check,
            _req: PhantomData,
        }
    }
}

impl<S: fmt::Debug, Req> fmt::Debug for JsonEndpoint<S, Req> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JsonEndpoint")
            .field("inner", &self.inner)
            .field("limit", &self.limit)
            .field("check", &self.check.is_some())
            .finish()
    }
}

/// The response future of [`JsonEndpoint`]: boxed, since it reads the body before it calls
/// the service (one allocation per HTTP request, next to hyper's own).
pub type JsonEndpointFuture =
    Pin<Box<dyn Future<Output = Result<Response<String>, BoxError>> + Send + 'static>>;

impl<S, Req, B> Service<Request<B>> for JsonEndpoint<S, Req>
where
    S: Service<Req> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Into<BoxError>,
    S::Response: Serialize + Annotate,
    Req: DeserializeOwned + Send + 'static,
    B: Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<BoxError>,
{
    type Response = Response<String>;
    type Error = BoxError;
    type Future = JsonEndpointFuture;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        // The service is made ready in the call's future, once the body has been read.
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        let clone = self.inner.clone();
        let inner = std::mem::replace(&mut self.inner, clone);
        let (limit, check) = (self.limit, self.check);
        Box::pin(async move {
            let req: Req = read_json(req, limit).await?;
            if let Some(check) = check {
                check(&req)?;
            }
            let answer = inner.oneshot(req).await.map_err(Into::into)?;
            json_response(answer)
        })
    }
}

/// The request's body as a `T`, or the [`RequestError`] saying why not.
async fn read_json<T, B>(req: Request<B>, limit: usize) -> Result<T, RequestError>
where
    T: DeserializeOwned,
    B: Body,
    B::Error: Into<BoxError>,
{
    let (parts, body) = req.into_parts();
    if !is_json(&parts.headers) {
        return Err(RequestError::NotJson);
    }
    let declared = parts
        .headers
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|len| len > limit as u64) {
        return Err(RequestError::PayloadTooLarge { limit });
    }
    let bytes = match Limited::new(body, limit).collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(err) if err.is::<LengthLimitError>() => {
            return Err(RequestError::PayloadTooLarge { limit });
        }
        Err(_) => return Err(RequestError::BodyUnreadable),
    };
    serde_json::from_slice(&bytes).map_err(|err| RequestError::MalformedJson {
        reason: shorten(err.to_string(), MAX_REASON),
    })
}

/// The longest parser message quoted back (it may quote the body, which may be large).
const MAX_REASON: usize = 200;

/// `text`, cut to at most `max` bytes on a character boundary, with `…` when cut.
pub(crate) fn shorten(mut text: String, max: usize) -> String {
    if text.len() > max {
        let mut end = max;
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        text.truncate(end);
        text.push('…');
    }
    text
}

/// Whether the request says its body is JSON (`application/json`, with or without
/// parameters, or any `+json` type), or says nothing.
fn is_json(headers: &HeaderMap) -> bool {
    let Some(value) = headers.get(CONTENT_TYPE) else {
        return true;
    };
    let Ok(value) = value.to_str() else {
        return false;
    };
    let essence = value.split(';').next().unwrap_or("").trim();
    let suffix = essence.get(essence.len().saturating_sub(5)..);
    essence.eq_ignore_ascii_case("application/json")
        || (essence.len() > 5 && suffix.is_some_and(|s| s.eq_ignore_ascii_case("+json")))
}

/// `answer` as a `200` JSON response with its provenance as headers and in the extensions
/// (moved there once the body is written, not copied).
fn json_response<T: Serialize + Annotate>(mut answer: T) -> Result<Response<String>, BoxError> {
    let body =
        serde_json::to_string(&answer).map_err(InferenceError::infrastructure_with_source)?;
    let mut res = Response::new(body);
    *res.status_mut() = StatusCode::OK;
    res.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    if answer.provenance().is_some() {
        let provenance = std::mem::take(answer.provenance_mut());
        write_provenance(&provenance, res.headers_mut());
        res.extensions_mut().insert(provenance);
    }
    Ok(res)
}
