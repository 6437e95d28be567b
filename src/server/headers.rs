//! Provenance as response headers.

use std::fmt::Write as _;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use http::{HeaderMap, HeaderValue, Response};
use pin_project_lite::pin_project;
use tower_layer::Layer;
use tower_service::Service;

use crate::provenance::Provenance;

/// `x-inference-tier`: the tier that answered (`primary`, a tier's name, `cache`, `static`).
pub const TIER: &str = "x-inference-tier";
/// `x-inference-quality`: the answer's [`Quality`](crate::Quality) (`full`, `reduced`, …).
pub const QUALITY: &str = "x-inference-quality";
/// `x-inference-fallback`: `true` when a tier other than the primary answered.
pub const FALLBACK: &str = "x-inference-fallback";
/// `x-inference-fallback-reasons`: each tier that failed before the one that answered, in
/// order, as `tier=kind` separated by `, ` (e.g. `primary=infrastructure, small=timeout`).
pub const FALLBACK_REASONS: &str = "x-inference-fallback-reasons";
/// `x-inference-degraded`: the degradation level the request was served at, when a degrade
/// layer served it (its lowest level, `full` by default, when it did not degrade it).
pub const DEGRADED: &str = "x-inference-degraded";
/// `x-inference-attempts`: backend calls made for the answer, across every tier.
pub const ATTEMPTS: &str = "x-inference-attempts";
/// `x-inference-cache-age-ms`: the age of a cached answer, in milliseconds.
pub const CACHE_AGE_MS: &str = "x-inference-cache-age-ms";

/// Writes `provenance` into `headers` under the names above (a header whose value would not
/// be a valid header value, such as a tier name with a newline, is left out).
///
/// ```
/// use tower_inference::{Provenance, Quality};
/// use tower_inference::server::write_provenance;
///
/// let mut provenance = Provenance::default();
/// provenance.set_tier("llama-8b", Quality::Reduced);
/// let mut headers = http::HeaderMap::new();
/// write_provenance(&provenance, &mut headers);
/// assert_eq!(headers["x-inference-tier"], "llama-8b");
/// assert_eq!(headers["x-inference-quality"], "reduced");
/// assert_eq!(headers["x-inference-fallback"], "true");
/// ```
pub fn write_provenance(provenance: &Provenance, headers: &mut HeaderMap) {
    let mut put = |name: &'static str, value: &str| {
        if let Ok(value) = HeaderValue::from_str(value) {
            headers.insert(name, value);
        }
    };
    put(TIER, &provenance.tier);
    put(QUALITY, provenance.quality.as_str());
    put(FALLBACK, if provenance.fallback { "true" } else { "false" });
    put(ATTEMPTS, &provenance.attempts.to_string());
    if let Some(level) = &provenance.degraded {
        put(DEGRADED, level);
    }
    if let Some(age) = provenance.cache_age {
        put(CACHE_AGE_MS, &age.as_millis().to_string());
    }
    if !provenance.failed_tiers.is_empty() {
        let mut reasons = String::new();
        for (i, failure) in provenance.failed_tiers.iter().enumerate() {
            let sep = if i == 0 { "" } else { ", " };
            let _ = write!(reasons, "{sep}{}={}", failure.tier, failure.kind.code());
        }
        put(FALLBACK_REASONS, &reasons);
    }
}

/// Writes the [`Provenance`] a response carries in its extensions (see
/// [`Annotate`](crate::Annotate) for `http::Response`) into its headers, with
/// [`write_provenance`]. A response without provenance is left as it is.
#[derive(Debug, Clone, Copy, Default)]
pub struct ProvenanceHeadersLayer {
    _private: (),
}

impl ProvenanceHeadersLayer {
    /// The layer.
    pub fn new() -> Self {
        ProvenanceHeadersLayer::default()
    }
}

impl<S> Layer<S> for ProvenanceHeadersLayer {
    type Service = ProvenanceHeaders<S>;

    fn layer(&self, inner: S) -> Self::Service {
        ProvenanceHeaders { inner }
    }
}

/// The service a [`ProvenanceHeadersLayer`] makes.
#[derive(Debug, Clone)]
pub struct ProvenanceHeaders<S> {
    inner: S,
}

impl<S, Req, ResB> Service<Req> for ProvenanceHeaders<S>
where
    S: Service<Req, Response = Response<ResB>>,
{
    type Response = Response<ResB>;
    type Error = S::Error;
    type Future = ProvenanceHeadersFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Req) -> Self::Future {
        ProvenanceHeadersFuture {
            fut: self.inner.call(req),
        }
    }
}

pin_project! {
    /// The response future of [`ProvenanceHeaders`].
    #[derive(Debug)]
    pub struct ProvenanceHeadersFuture<F> {
        #[pin]
        fut: F,
    }
}

impl<F, ResB, E> Future for ProvenanceHeadersFuture<F>
where
    F: Future<Output = Result<Response<ResB>, E>>,
{
    type Output = Result<Response<ResB>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let res = ready!(self.project().fut.poll(cx))?;
        if res.extensions().get::<Provenance>().is_none() {
            return Poll::Ready(Ok(res));
        }
        let (mut parts, body) = res.into_parts();
        if let Some(provenance) = parts.extensions.get::<Provenance>() {
            write_provenance(provenance, &mut parts.headers);
        }
        Poll::Ready(Ok(Response::from_parts(parts, body)))
    }
}
