//! The connection pool and settings every route's client shares.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::header::{AUTHORIZATION, HeaderName, USER_AGENT};
use http::{HeaderMap, HeaderValue, Uri};
use http_body_util::Full;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use tokio::sync::Semaphore;

use super::map::DefaultMapper;
use super::route::Route;
use super::service::OpenAiClient;

/// The connector: plain TCP, or TCP and TLS with the `client-rustls` feature.
#[cfg(not(feature = "client-rustls"))]
pub(crate) type Connector = HttpConnector;
/// The connector: plain TCP, or TCP and TLS with the `client-rustls` feature.
#[cfg(feature = "client-rustls")]
pub(crate) type Connector = hyper_rustls::HttpsConnector<HttpConnector>;

/// How long to wait for a TCP (and TLS) connection, by default.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long to wait for the response's headers, by default. A server that does not stream
/// sends them when the whole answer is generated, so this bounds generation too.
pub const DEFAULT_RESPONSE_TIMEOUT: Duration = Duration::from_secs(60);
/// How long to wait for the rest of the body once the headers came, by default.
pub const DEFAULT_BODY_TIMEOUT: Duration = Duration::from_secs(30);
/// The most requests in flight at once, by default, across every route of a [`Backend`].
pub const DEFAULT_MAX_IN_FLIGHT: usize = 256;
/// The largest response body read, by default (16 MiB).
pub const DEFAULT_MAX_RESPONSE_BYTES: usize = 16 << 20;

/// What every route's client of one server shares: the pooled hyper-util client, the base
/// URL, the headers sent with every request, the timeouts and the in-flight limit.
///
/// Cheap to clone (one `Arc`). [`Backend::chat`], [`Backend::completions`] and
/// [`Backend::route`] make the [`OpenAiClient`] services, which share its connections and
/// its in-flight limit.
#[derive(Clone)]
pub struct Backend {
    pub(crate) shared: Arc<Shared>,
}

pub(crate) struct Shared {
    pub(crate) http: Client<Connector, Full<Bytes>>,
    /// The base URL's path, without its trailing `/`.
    base: Uri,
    pub(crate) headers: HeaderMap,
    pub(crate) response_timeout: Duration,
    pub(crate) body_timeout: Duration,
    pub(crate) max_response_bytes: usize,
    pub(crate) in_flight: Arc<Semaphore>,
}

impl Backend {
    /// A builder for a server at `base_url`, as OpenAI's SDKs take it: the scheme, host,
    /// port and the path the routes hang from, usually `/v1` (`http://localhost:8000/v1`
    /// for vLLM, `http://localhost:11434/v1` for Ollama).
    pub fn builder(base_url: impl Into<String>) -> BackendBuilder {
        BackendBuilder {
            base_url: base_url.into(),
            api_key: None,
            headers: Vec::new(),
            connect_timeout: Some(DEFAULT_CONNECT_TIMEOUT),
            response_timeout: DEFAULT_RESPONSE_TIMEOUT,
            body_timeout: DEFAULT_BODY_TIMEOUT,
            max_in_flight: DEFAULT_MAX_IN_FLIGHT,
            max_response_bytes: DEFAULT_MAX_RESPONSE_BYTES,
            pool_idle_timeout: Some(Duration::from_secs(90)),
            pool_max_idle_per_host: 64,
            http2_prior_knowledge: false,
        }
    }

    /// The client for `POST {base}/chat/completions`.
    pub fn chat(&self) -> OpenAiClient<crate::openai::ChatCompletionRequest> {
        self.route()
    }

    /// The client for `POST {base}/completions`.
    pub fn completions(&self) -> OpenAiClient<crate::openai::CompletionRequest> {
        self.route()
    }

    /// The client for any [`Route`]: a request type of your own (embeddings, a custom
    /// endpoint) with its path and response type.
    pub fn route<Req: Route>(&self) -> OpenAiClient<Req> {
        OpenAiClient::new(self.clone(), self.uri_for(Req::PATH), DefaultMapper)
    }

    /// The base URL's path joined with `path`.
    fn uri_for(&self, path: &str) -> Uri {
        let base = &self.shared.base;
        let mut parts = base.clone().into_parts();
        let joined = format!(
            "{}/{}",
            base.path().trim_end_matches('/'),
            path.trim_start_matches('/')
        );
        parts.path_and_query = joined.parse().ok();
        // Every part came from a valid URI and the path from a valid path and a route's
        // constant; a route's invalid path falls back to the base itself.
        Uri::from_parts(parts).unwrap_or_else(|_| base.clone())
    }

    /// The base URL.
    pub fn base_url(&self) -> &Uri {
        &self.shared.base
    }

    /// Requests that may start now: the in-flight limit less those in flight.
    pub fn available_permits(&self) -> usize {
        self.shared.in_flight.available_permits()
    }
}

impl fmt::Debug for Backend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The headers are not shown: they hold the API key.
        f.debug_struct("Backend")
            .field("base_url", &self.shared.base)
            .field("response_timeout", &self.shared.response_timeout)
            .field("body_timeout", &self.shared.body_timeout)
            .field("max_response_bytes", &self.shared.max_response_bytes)
            .finish_non_exhaustive()
    }
}

/// Settings of a [`Backend`]; see [`Backend::builder`].
#[derive(Clone)]
pub struct BackendBuilder {
    base_url: String,
    api_key: Option<String>,
    headers: Vec<(String, String)>,
    connect_timeout: Option<Duration>,
    response_timeout: Duration,
    body_timeout: Duration,
    max_in_flight: usize,
    max_response_bytes: usize,
    pool_idle_timeout: Option<Duration>,
    pool_max_idle_per_host: usize,
    http2_prior_knowledge: bool,
}

impl BackendBuilder {
    /// Sends `Authorization: Bearer {key}` with every request (default: none).
    pub fn api_key(mut self, key: impl Into<String>) -> Self {
        self.api_key = Some(key.into());
        self
    }

    /// Sends this header with every request (e.g. an organisation or routing header).
    pub fn header(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.headers.push((name.into(), value.into()));
        self
    }

    /// How long to wait for a connection; `None` waits as long as the OS does (default
    /// [`DEFAULT_CONNECT_TIMEOUT`]). A connection that cannot be made is
    /// `InferenceError::Infrastructure`.
    pub fn connect_timeout(mut self, timeout: Option<Duration>) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// How long to wait for the response's headers once the request is sent (default
    /// [`DEFAULT_RESPONSE_TIMEOUT`]); past it the call fails with `InferenceError::Timeout`.
    pub fn response_timeout(mut self, timeout: Duration) -> Self {
        self.response_timeout = timeout;
        self
    }

    /// How long to wait for the rest of the body once the headers came (default
    /// [`DEFAULT_BODY_TIMEOUT`]); past it the call fails with `InferenceError::Timeout`.
    pub fn body_timeout(mut self, timeout: Duration) -> Self {
        self.body_timeout = timeout;
        self
    }

    /// The most requests in flight at once across every route of this backend (default
    /// [`DEFAULT_MAX_IN_FLIGHT`], at least 1). Past it, `poll_ready` waits: backpressure the
    /// layers above (degrade's in-flight signal, a load shedder) see.
    pub fn max_in_flight(mut self, max: usize) -> Self {
        self.max_in_flight = max.max(1);
        self
    }

    /// The largest response body read (default [`DEFAULT_MAX_RESPONSE_BYTES`]); a longer
    /// answer is `ModelFailure { InvalidOutput }`.
    pub fn max_response_bytes(mut self, max: usize) -> Self {
        self.max_response_bytes = max;
        self
    }

    /// How long an idle pooled connection is kept (default 90 s; `None` keeps it).
    pub fn pool_idle_timeout(mut self, timeout: Option<Duration>) -> Self {
        self.pool_idle_timeout = timeout;
        self
    }

    /// The most idle connections kept per host (default 64).
    pub fn pool_max_idle_per_host(mut self, max: usize) -> Self {
        self.pool_max_idle_per_host = max;
        self
    }

    /// Speaks HTTP/2 without negotiating it (h2c, "prior knowledge"), for servers that take
    /// it on a plain connection (default `false`: HTTP/1.1, or HTTP/2 when TLS negotiates
    /// it with the `client-rustls` feature).
    pub fn http2_prior_knowledge(mut self, enabled: bool) -> Self {
        self.http2_prior_knowledge = enabled;
        self
    }

    /// The backend. Fails on a base URL that is not an absolute `http` (or, with the
    /// `client-rustls` feature, `https`) URL, or a header that is not a valid header.
    /// Building needs no runtime; the clients are called inside a Tokio runtime.
    pub fn build(self) -> Result<Backend, BuildError> {
        let base: Uri = self
            .base_url
            .parse()
            .map_err(|_| BuildError::new(format!("{:?} is not a URL", self.base_url)))?;
        match base.scheme_str() {
            Some("http") => {}
            #[cfg(feature = "client-rustls")]
            Some("https") => {}
            #[cfg(not(feature = "client-rustls"))]
            Some("https") => {
                return Err(BuildError::new(
                    "https needs the `client-rustls` feature".to_owned(),
                ));
            }
            _ => {
                return Err(BuildError::new(format!(
                    "{:?} is not an http:// or https:// URL",
                    self.base_url
                )));
            }
        }
        if base.host().is_none() {
            return Err(BuildError::new(format!("{:?} has no host", self.base_url)));
        }
        let mut headers = HeaderMap::new();
        headers.insert(
            USER_AGENT,
            HeaderValue::from_static(concat!("tower-inference/", env!("CARGO_PKG_VERSION"))),
        );
        for (name, value) in &self.headers {
            let name = HeaderName::try_from(name.as_str())
                .map_err(|_| BuildError::new(format!("{name:?} is not a header name")))?;
            let value = HeaderValue::try_from(value.as_str())
                .map_err(|_| BuildError::new(format!("the value of {name} is not valid")))?;
            headers.insert(name, value);
        }
        if let Some(key) = &self.api_key {
            let mut value = HeaderValue::try_from(format!("Bearer {key}"))
                .map_err(|_| BuildError::new("the API key is not a valid header value".into()))?;
            value.set_sensitive(true);
            headers.insert(AUTHORIZATION, value);
        }

        let mut http = HttpConnector::new();
        http.set_connect_timeout(self.connect_timeout);
        http.set_nodelay(true);
        #[cfg(feature = "client-rustls")]
        let connector = {
            http.enforce_http(false);
            let provider = Arc::new(rustls::crypto::ring::default_provider());
            hyper_rustls::HttpsConnectorBuilder::new()
                .with_provider_and_webpki_roots(provider)
                .map_err(|err| BuildError::new(format!("TLS settings: {err}")))?
                .https_or_http()
                .enable_http1()
                .enable_http2()
                .wrap_connector(http)
        };
        #[cfg(not(feature = "client-rustls"))]
        let connector = http;
        let http = Client::builder(TokioExecutor::new())
            .timer(TokioTimer::new())
            .pool_timer(TokioTimer::new())
            .pool_idle_timeout(self.pool_idle_timeout)
            .pool_max_idle_per_host(self.pool_max_idle_per_host)
            .http2_only(self.http2_prior_knowledge)
            .build(connector);
        Ok(Backend {
            shared: Arc::new(Shared {
                http,
                base,
                headers,
                response_timeout: self.response_timeout,
                body_timeout: self.body_timeout,
                max_response_bytes: self.max_response_bytes,
                in_flight: Arc::new(Semaphore::new(self.max_in_flight)),
            }),
        })
    }
}

impl fmt::Debug for BackendBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BackendBuilder")
            .field("base_url", &self.base_url)
            .field("api_key", &self.api_key.as_ref().map(|_| "<set>"))
            .field("connect_timeout", &self.connect_timeout)
            .field("response_timeout", &self.response_timeout)
            .field("body_timeout", &self.body_timeout)
            .field("max_in_flight", &self.max_in_flight)
            .field("max_response_bytes", &self.max_response_bytes)
            .finish_non_exhaustive()
    }
}

/// Why a [`Backend`] could not be built.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid backend settings: {reason}")]
pub struct BuildError {
    reason: String,
}

impl BuildError {
    fn new(reason: String) -> Self {
        BuildError { reason }
    }
}
