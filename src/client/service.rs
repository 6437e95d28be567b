//! The client `Service`: one request type, sent to one path of a backend.

use std::fmt;
use std::future::Future;
use std::marker::PhantomData;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::header::{ACCEPT, CONTENT_TYPE};
use http::{HeaderValue, Request, Uri};
use http_body_util::{BodyExt, Full, LengthLimitError, Limited};
use tokio::time::{Instant, timeout};
use tower::limit::ConcurrencyLimit;
use tower_service::Service;

use super::backend::Backend;
use super::map::{DefaultMapper, MapError, UpstreamError};
use super::route::Route;
use crate::error::{InferenceError, ModelFailure};
use crate::provenance::Annotate;
use crate::server::read_provenance;

/// The boxed future of one call (network I/O dwarfs one allocation).
type CallFuture<Res> = Pin<Box<dyn Future<Output = Result<Res, InferenceError>> + Send>>;

/// The response future of [`OpenAiClient`]: tower's concurrency-limit future (which holds
/// the in-flight permit) around the call.
pub type OpenAiClientFuture<Res> =
    tower::limit::concurrency::future::ResponseFuture<CallFuture<Res>>;

/// A `Service` that sends `Req` as JSON to one path of a [`Backend`] and answers its typed
/// response, or an [`InferenceError`] mapped by `M` (the [module docs](super) list the
/// mapping).
///
/// Cheap to clone (an `Arc`, a URI and the mapper); every clone shares the backend's
/// connections and in-flight limit, which `poll_ready` waits on (tower's
/// [`ConcurrencyLimit`] is reused for it). Use it as the primary of a stack or as a
/// fallback tier.
pub struct OpenAiClient<Req, M = DefaultMapper> {
    inner: ConcurrencyLimit<Call<Req, M>>,
}

struct Call<Req, M> {
    backend: Backend,
    uri: Uri,
    mapper: M,
    _req: PhantomData<fn(Req)>,
}

impl<Req, M: Clone> Clone for Call<Req, M> {
    fn clone(&self) -> Self {
        Call {
            backend: self.backend.clone(),
            uri: self.uri.clone(),
            mapper: self.mapper.clone(),
            _req: PhantomData,
        }
    }
}

impl<Req, M: Clone> Clone for OpenAiClient<Req, M> {
    fn clone(&self) -> Self {
        OpenAiClient {
            inner: self.inner.clone(),
        }
    }
}

impl<Req, M: fmt::Debug> fmt::Debug for OpenAiClient<Req, M> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let call = self.inner.get_ref();
        f.debug_struct("OpenAiClient")
            .field("uri", &call.uri)
            .field("mapper", &call.mapper)
            .finish_non_exhaustive()
    }
}

impl<Req, M> OpenAiClient<Req, M> {
    pub(crate) fn new(backend: Backend, uri: Uri, mapper: M) -> Self {
        let semaphore = backend.shared.in_flight.clone();
        let call = Call {
            backend,
            uri,
            mapper,
            _req: PhantomData,
        };
        OpenAiClient {
            inner: ConcurrencyLimit::with_semaphore(call, semaphore),
        }
    }

    /// The URL requests are sent to.
    pub fn uri(&self) -> &Uri {
        &self.inner.get_ref().uri
    }

    /// The backend this client sends to.
    pub fn backend(&self) -> &Backend {
        &self.inner.get_ref().backend
    }

    /// The same client, with error answers mapped by `mapper` (see [`MapError`]).
    pub fn map_errors<M2: MapError>(self, mapper: M2) -> OpenAiClient<Req, M2> {
        let call = self.inner.into_inner();
        OpenAiClient::new(call.backend, call.uri, mapper)
    }
}

impl<Req: Route, M: MapError> Service<Req> for OpenAiClient<Req, M> {
    type Response = Req::Response;
    type Error = InferenceError;
    type Future = OpenAiClientFuture<Req::Response>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), InferenceError>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Req) -> Self::Future {
        self.inner.call(req)
    }
}

impl<Req: Route, M: MapError> Service<Req> for Call<Req, M> {
    type Response = Req::Response;
    type Error = InferenceError;
    type Future = CallFuture<Req::Response>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), InferenceError>> {
        // hyper-util's pool is always ready; the limit around this is the backpressure.
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Req) -> Self::Future {
        Box::pin(send(self.clone(), req))
    }
}

async fn send<Req: Route, M: MapError>(
    call: Call<Req, M>,
    req: Req,
) -> Result<Req::Response, InferenceError> {
    req.check()?;
    let shared = &call.backend.shared;
    let body = serde_json::to_vec(&req)
        .map_err(|_| InferenceError::invalid_input("the request could not be written as JSON"))?;
    let mut request = Request::new(Full::new(Bytes::from(body)));
    *request.method_mut() = http::Method::POST;
    *request.uri_mut() = call.uri.clone();
    let headers = request.headers_mut();
    headers.clone_from(&shared.headers);
    headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    headers.insert(ACCEPT, HeaderValue::from_static("application/json"));

    let started = Instant::now();
    let response = match timeout(shared.response_timeout, shared.http.request(request)).await {
        Ok(Ok(response)) => response,
        Ok(Err(err)) => {
            tracing::debug!(error = %err, uri = %call.uri, "the model server could not be reached");
            return Err(InferenceError::infrastructure_with_source(err));
        }
        Err(_) => {
            return Err(InferenceError::timeout(shared.response_timeout));
        }
    };
    let (parts, body) = response.into_parts();
    let success = parts.status.is_success();
    let limited = Limited::new(body, shared.max_response_bytes);
    let bytes = match timeout(shared.body_timeout, limited.collect()).await {
        Ok(Ok(collected)) => collected.to_bytes(),
        // An error answer too long to read is still mapped, by its status and headers.
        Ok(Err(err)) if !success && err.is::<LengthLimitError>() => Bytes::new(),
        Ok(Err(err)) if err.is::<LengthLimitError>() => {
            tracing::warn!(
                limit = shared.max_response_bytes,
                uri = %call.uri,
                "the model server's answer is longer than max_response_bytes"
            );
            return Err(invalid_output());
        }
        Ok(Err(err)) => {
            tracing::debug!(error = %err, uri = %call.uri, "the answer's body broke off");
            return Err(InferenceError::infrastructure_with_source(err));
        }
        Err(_) => {
            return Err(InferenceError::timeout(started.elapsed()));
        }
    };
    if !success {
        let upstream = UpstreamError {
            status: parts.status,
            headers: &parts.headers,
            body: &bytes,
            elapsed: started.elapsed(),
        };
        let err = call.mapper.map_error(&upstream);
        tracing::debug!(
            status = parts.status.as_u16(),
            kind = err.kind().code(),
            uri = %call.uri,
            "the model server answered an error"
        );
        return Err(err);
    }
    let mut answer: Req::Response = serde_json::from_slice(&bytes).map_err(|err| {
        // For logs only: the parser's message may quote part of the answer.
        tracing::warn!(error = %err, uri = %call.uri, "the model server's answer is not the expected JSON");
        invalid_output()
    })?;
    if let Some(upstream) = read_provenance(&parts.headers) {
        answer.provenance_mut().set_upstream(upstream);
    }
    Ok(answer)
}

const fn invalid_output() -> InferenceError {
    InferenceError::ModelFailure {
        failure: ModelFailure::InvalidOutput,
    }
}
