//! Provenance as response headers.

use std::fmt::Write as _;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use http::{HeaderMap, HeaderValue, Response};
use pin_project_lite::pin_project;
use tower_layer::Layer;
use tower_service::Service;

use crate::error::{ErrorKind, TierFailure};
use crate::provenance::{MAX_FAILED_TIERS, Provenance, Quality};

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
/// The prefix of the headers that carry [`Provenance::upstream`]: the same names as above
/// with `x-inference-upstream-` in place of `x-inference-` (`x-inference-upstream-tier`, …).
pub const UPSTREAM_PREFIX: &str = "x-inference-upstream-";

/// The header names of one hop's provenance.
struct Names {
    tier: &'static str,
    quality: &'static str,
    fallback: &'static str,
    fallback_reasons: &'static str,
    degraded: &'static str,
    attempts: &'static str,
    cache_age_ms: &'static str,
}

const HOP: Names = Names {
    tier: TIER,
    quality: QUALITY,
    fallback: FALLBACK,
    fallback_reasons: FALLBACK_REASONS,
    degraded: DEGRADED,
    attempts: ATTEMPTS,
    cache_age_ms: CACHE_AGE_MS,
};

const UPSTREAM: Names = Names {
    tier: "x-inference-upstream-tier",
    quality: "x-inference-upstream-quality",
    fallback: "x-inference-upstream-fallback",
    fallback_reasons: "x-inference-upstream-fallback-reasons",
    degraded: "x-inference-upstream-degraded",
    attempts: "x-inference-upstream-attempts",
    cache_age_ms: "x-inference-upstream-cache-age-ms",
};

/// Writes `provenance` into `headers` under the names above, and its
/// [`upstream`](Provenance::upstream), if any, under the [`UPSTREAM_PREFIX`] names (a header
/// whose value would not be a valid header value, such as a tier name with a newline, is
/// left out).
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
    write_hop(provenance, &HOP, headers);
    if let Some(upstream) = provenance.upstream() {
        write_hop(upstream, &UPSTREAM, headers);
    }
}

fn write_hop(provenance: &Provenance, names: &Names, headers: &mut HeaderMap) {
    let mut put = |name: &'static str, value: &str| {
        if let Ok(value) = HeaderValue::from_str(value) {
            headers.insert(name, value);
        }
    };
    put(names.tier, &provenance.tier);
    put(names.quality, provenance.quality.as_str());
    put(
        names.fallback,
        if provenance.fallback { "true" } else { "false" },
    );
    put(names.attempts, &provenance.attempts.to_string());
    if let Some(level) = &provenance.degraded {
        put(names.degraded, level);
    }
    if let Some(age) = provenance.cache_age() {
        put(names.cache_age_ms, &age.as_millis().to_string());
    }
    if !provenance.failed_tiers().is_empty() {
        let mut reasons = String::new();
        for (i, failure) in provenance.failed_tiers().iter().enumerate() {
            let sep = if i == 0 { "" } else { ", " };
            let _ = write!(reasons, "{sep}{}={}", failure.tier, failure.kind.code());
        }
        put(names.fallback_reasons, &reasons);
    }
}

/// Reads the provenance another server wrote with [`write_provenance`]: `None` when
/// `headers` has no `x-inference-tier`. Values that cannot be read are left at their
/// defaults (an unknown failure kind drops that reason; at most
/// [`MAX_FAILED_TIERS`](crate::provenance::MAX_FAILED_TIERS) reasons are kept). The
/// upstream's own upstream headers are not read (see [`Provenance::upstream`]).
///
/// ```
/// use tower_inference::Quality;
/// use tower_inference::server::read_provenance;
///
/// let mut headers = http::HeaderMap::new();
/// headers.insert("x-inference-tier", "cache".parse().unwrap());
/// headers.insert("x-inference-quality", "stale".parse().unwrap());
/// headers.insert("x-inference-attempts", "4".parse().unwrap());
/// headers.insert("x-inference-fallback-reasons", "llama-70b=timeout".parse().unwrap());
/// let provenance = read_provenance(&headers).unwrap();
/// assert_eq!(provenance.tier, "cache");
/// assert_eq!(provenance.quality, Quality::Stale);
/// assert_eq!(provenance.attempts, 4);
/// assert_eq!(provenance.failed_tiers()[0].tier, "llama-70b");
/// ```
pub fn read_provenance(headers: &HeaderMap) -> Option<Provenance> {
    let text = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    let tier = text(TIER)?;
    let mut provenance = Provenance::default();
    let quality = text(QUALITY).map_or(Quality::Full, Quality::from_label);
    provenance.set_tier(tier.to_owned(), quality);
    if let Some(fallback) = text(FALLBACK).and_then(|v| v.parse().ok()) {
        provenance.set_fallback(fallback);
    }
    if let Some(attempts) = text(ATTEMPTS).and_then(|v| v.parse().ok()) {
        provenance.set_attempts(attempts);
    }
    if let Some(level) = text(DEGRADED) {
        provenance.set_degraded(level.to_owned());
    }
    if let Some(ms) = text(CACHE_AGE_MS).and_then(|v| v.parse().ok()) {
        provenance.set_cache_age(Duration::from_millis(ms));
    }
    if let Some(reasons) = text(FALLBACK_REASONS) {
        let failed = reasons
            .split(", ")
            .filter_map(|reason| {
                let (tier, kind) = reason.rsplit_once('=')?;
                Some(TierFailure::new(
                    tier.to_owned(),
                    ErrorKind::from_code(kind)?,
                ))
            })
            .take(MAX_FAILED_TIERS)
            .collect();
        provenance.set_failed_tiers(failed);
    }
    Some(provenance)
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
