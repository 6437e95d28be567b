//! Correlation ids: one per request, from the caller or made here, everywhere the request goes.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use http::{HeaderValue, Request, Response};
use pin_project_lite::pin_project;
use tower_layer::Layer;
use tower_service::Service;
use tracing::Span;

use crate::rng::random_seed;

/// `x-request-id`: the header a correlation id is read from first, and written to.
pub const REQUEST_ID: &str = "x-request-id";
/// `x-correlation-id`: the header a correlation id is read from when `x-request-id` is absent.
pub const CORRELATION_ID: &str = "x-correlation-id";

/// The longest correlation id taken from a caller; a longer one is replaced.
const MAX_LEN: usize = 128;

/// A request's correlation id, in the request's extensions once a [`CorrelationLayer`] has
/// seen it. Cheap to clone.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct CorrelationId(Arc<str>);

impl CorrelationId {
    /// A new random id: 32 hex digits (128 bits; unique, not secret).
    pub fn random() -> Self {
        CorrelationId(format!("{:016x}{:016x}", random_seed(), random_seed()).into())
    }

    /// `id` if it is usable as a correlation id: 1 to 128 visible ASCII characters (no
    /// spaces or controls, so it is safe in a header and in logs).
    pub fn parse(id: &str) -> Option<Self> {
        let ok = !id.is_empty() && id.len() <= MAX_LEN && id.bytes().all(|b| b.is_ascii_graphic());
        ok.then(|| CorrelationId(id.into()))
    }

    /// The id.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for CorrelationId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Gives every request a correlation id: the caller's `x-request-id` (or `x-correlation-id`)
/// when it is usable ([`CorrelationId::parse`]), else a new random one.
///
/// The id goes into the request's extensions (as [`CorrelationId`], where
/// [`ErrorResponseLayer`](super::ErrorResponseLayer) finds it for error bodies) and its
/// `x-request-id` header, into a `tracing` span `request` (fields `correlation_id`, `method`,
/// `path`) around the whole call, and onto the response's `x-request-id` header.
///
/// tower-http's `SetRequestIdLayer` and `PropagateRequestIdLayer` do the header part for one
/// header name; this layer reads either name, refuses ids unsafe to log or echo, and makes the
/// id the error bodies and the span carry. It writes the same `x-request-id` header, so the
/// two interoperate.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// use tower::{ServiceBuilder, ServiceExt, service_fn};
/// use tower_inference::server::{CorrelationId, CorrelationLayer};
///
/// let svc = ServiceBuilder::new().layer(CorrelationLayer::new()).service(service_fn(
///     |req: http::Request<String>| async move {
///         let id = req.extensions().get::<CorrelationId>().unwrap().clone();
///         Ok::<_, std::convert::Infallible>(http::Response::new(id.to_string()))
///     },
/// ));
/// let req = http::Request::builder().header("x-correlation-id", "abc-1").body(String::new()).unwrap();
/// let res = svc.oneshot(req).await.unwrap();
/// assert_eq!(res.headers()["x-request-id"], "abc-1");
/// assert_eq!(res.body(), "abc-1");
/// # }
/// ```
#[derive(Debug, Clone, Copy, Default)]
pub struct CorrelationLayer {
    _private: (),
}

impl CorrelationLayer {
    /// The layer.
    pub fn new() -> Self {
        CorrelationLayer::default()
    }
}

impl<S> Layer<S> for CorrelationLayer {
    type Service = Correlation<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Correlation { inner }
    }
}

/// The service a [`CorrelationLayer`] makes.
#[derive(Debug, Clone)]
pub struct Correlation<S> {
    inner: S,
}

fn caller_id<B>(req: &Request<B>) -> Option<CorrelationId> {
    [REQUEST_ID, CORRELATION_ID]
        .into_iter()
        .filter_map(|name| req.headers().get(name))
        .find_map(|value| value.to_str().ok().and_then(CorrelationId::parse))
}

impl<S, ReqB, ResB> Service<Request<ReqB>> for Correlation<S>
where
    S: Service<Request<ReqB>, Response = Response<ResB>>,
{
    type Response = Response<ResB>;
    type Error = S::Error;
    type Future = CorrelationFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<ReqB>) -> Self::Future {
        let id = caller_id(&req).unwrap_or_else(CorrelationId::random);
        let span = tracing::info_span!(
            "request",
            correlation_id = id.as_str(),
            method = %req.method(),
            path = req.uri().path(),
        );
        // A parsed id is visible ASCII, so always a valid header value.
        let header = HeaderValue::from_str(id.as_str()).ok();
        if let Some(value) = &header {
            req.headers_mut().insert(REQUEST_ID, value.clone());
        }
        req.extensions_mut().insert(id);
        let fut = span.in_scope(|| self.inner.call(req));
        CorrelationFuture { fut, span, header }
    }
}

pin_project! {
    /// The response future of [`Correlation`].
    pub struct CorrelationFuture<F> {
        #[pin]
        fut: F,
        span: Span,
        header: Option<HeaderValue>,
    }
}

impl<F> fmt::Debug for CorrelationFuture<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CorrelationFuture")
            .field("header", &self.header)
            .finish_non_exhaustive()
    }
}

impl<F, ResB, E> Future for CorrelationFuture<F>
where
    F: Future<Output = Result<Response<ResB>, E>>,
{
    type Output = Result<Response<ResB>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let _entered = this.span.enter();
        let mut res = ready!(this.fut.poll(cx))?;
        if let Some(value) = this.header.take() {
            res.headers_mut().insert(REQUEST_ID, value);
        }
        Poll::Ready(Ok(res))
    }
}
