//! [`FallbackLayer`] and its builder.

use std::borrow::Cow;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use tower_layer::Layer;
use tower_service::Service;

use super::cache::CacheStore;
use super::guard::{DEFAULT_GUARD, StoreGuard};
use super::service::Fallback;
use super::tier::{CacheConfig, Tier, TierKind, TierSpec};
use crate::classify::DefaultClassifier;
use crate::event::{Emitter, EventSink};
use crate::provenance::{PRIMARY_TIER, Quality};
use crate::setting;

/// The longest a cached answer may be kept.
const MAX_TTL: Duration = Duration::from_secs(365 * 24 * 3600);

/// What every service of one fallback layer shares.
pub(crate) struct Shared<Req, Res, E, C> {
    pub(crate) primary: Cow<'static, str>,
    pub(crate) primary_cacheable: bool,
    pub(crate) tiers: Vec<TierSpec<Req, Res, E>>,
    pub(crate) cache: Option<CacheConfig<Req, Res>>,
    pub(crate) classifier: C,
    pub(crate) emitter: Emitter,
}

impl<Req, Res, E, C> fmt::Debug for Shared<Req, Res, E, C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let tiers: Vec<_> = std::iter::once(&self.primary)
            .chain(self.tiers.iter().map(|t| &t.name))
            .collect();
        f.debug_struct("FallbackChain")
            .field("tiers", &tiers)
            .finish()
    }
}

/// Answers from the next tier when one fails. See the [module docs](crate::fallback).
pub struct FallbackLayer<Req, Res, E, C = DefaultClassifier> {
    shared: Arc<Shared<Req, Res, E, C>>,
}

impl<Req, Res, E, C> Clone for FallbackLayer<Req, Res, E, C> {
    fn clone(&self) -> Self {
        FallbackLayer {
            shared: self.shared.clone(),
        }
    }
}

impl<Req, Res, E, C> fmt::Debug for FallbackLayer<Req, Res, E, C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FallbackLayer")
            .field("chain", &self.shared)
            .finish()
    }
}

impl<Req, Res, E> FallbackLayer<Req, Res, E> {
    /// A builder whose chain is just the wrapped service, named [`PRIMARY_TIER`].
    pub fn builder() -> FallbackBuilder<Req, Res, E> {
        FallbackBuilder {
            primary: Cow::Borrowed(PRIMARY_TIER),
            primary_cacheable: true,
            tiers: Vec::new(),
            cache: None,
            fallback_default: None,
            classifier: DefaultClassifier,
            emitter: Emitter::noop(),
        }
    }
}

impl<S, Req, Res, E, C> Layer<S> for FallbackLayer<Req, Res, E, C>
where
    S: Service<Req, Response = Res, Error = E>,
{
    type Service = Fallback<S, Req, C>;

    fn layer(&self, inner: S) -> Self::Service {
        Fallback::new(inner, self.shared.clone())
    }
}

/// Configures a [`FallbackLayer`]: tiers in the order they are tried after the wrapped one.
pub struct FallbackBuilder<Req, Res, E, C = DefaultClassifier> {
    primary: Cow<'static, str>,
    primary_cacheable: bool,
    tiers: Vec<TierSpec<Req, Res, E>>,
    cache: Option<CacheConfig<Req, Res>>,
    fallback_default: Option<TierSpec<Req, Res, E>>,
    classifier: C,
    emitter: Emitter,
}

impl<Req, Res, E, C> fmt::Debug for FallbackBuilder<Req, Res, E, C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FallbackBuilder")
            .field("primary", &self.primary)
            .field(
                "tiers",
                &self.tiers.iter().map(|t| &t.name).collect::<Vec<_>>(),
            )
            .finish_non_exhaustive()
    }
}

impl<Req, Res, E, C> FallbackBuilder<Req, Res, E, C> {
    /// Names the wrapped service's tier (default [`PRIMARY_TIER`]).
    ///
    /// The name is copied into every answer's provenance; an owned `String` is kept once for
    /// the life of the process, so that copy never allocates.
    pub fn primary(mut self, name: impl Into<Cow<'static, str>>) -> Self {
        self.primary = crate::name::intern(name.into());
        self
    }

    /// Whether the wrapped service's answers are cached (default yes).
    pub fn primary_cacheable(mut self, cacheable: bool) -> Self {
        self.primary_cacheable = cacheable;
        self
    }

    /// Adds a service tier.
    ///
    /// The tier must answer with the chain's response type, and its error must convert into
    /// the chain's (see [`Tier::new`]).
    pub fn tier<S>(self, name: impl Into<Cow<'static, str>>, quality: Quality, svc: S) -> Self
    where
        S: Service<Req, Response = Res> + Clone + Send + Sync + 'static,
        S::Error: Into<E>,
        S::Future: Send + 'static,
        Req: 'static,
        Res: 'static,
        E: 'static,
    {
        self.tier_with(Tier::new(name, quality, svc))
    }

    /// Adds a service tier configured with [`Tier`]'s options.
    pub fn tier_with(mut self, tier: Tier<Req, Res, E>) -> Self {
        let first_service = !self
            .tiers
            .iter()
            .any(|t| matches!(t.kind, TierKind::Service(_)));
        self.tiers.push(TierSpec {
            cacheable: tier.cacheable.unwrap_or(first_service),
            name: tier.name,
            quality: tier.quality,
            kind: TierKind::Service(tier.svc),
            accepts: tier.accepts,
        });
        self
    }

    /// Adds the cache tier, named `"cache"`: cacheable tiers' answers are stored under
    /// `key(&request)` for `ttl`, and this tier serves the stored answer (quality
    /// [`Quality::Stale`], with its age) when the tiers before it have failed. Store writes
    /// never delay or fail a response. `ttl` is 1 ms to 365 days.
    pub fn cache<St, K>(mut self, store: St, key: K, ttl: Duration) -> Self
    where
        St: CacheStore<Res>,
        K: Fn(&Req) -> String + Send + Sync + 'static,
        Res: Clone + 'static,
    {
        let ttl = setting::clamp("fallback.cache ttl", ttl, Duration::from_millis(1), MAX_TTL);
        let name = Cow::Borrowed("cache");
        self.cache = Some(CacheConfig::new(name.clone(), store, Arc::new(key), ttl));
        self.tiers.push(TierSpec {
            name,
            quality: Quality::Stale,
            kind: TierKind::Cache,
            cacheable: false,
            accepts: Vec::new(),
        });
        self
    }

    /// Bounds what a failing cache store costs (defaults: 50 ms, 5 failures, 10 s): each read
    /// and write of the store gets `timeout`, and after `failures` failures in a row the store
    /// is not asked for `cooldown`, so the cache tier fails at once and the chain moves on (a
    /// Redis outage then costs a request at most `timeout`, and nothing while skipped).
    /// Call it after [`cache`](Self::cache). A zero timeout is taken as the default; failures
    /// are at least 1.
    pub fn cache_guard(mut self, timeout: Duration, failures: u32, cooldown: Duration) -> Self {
        let timeout = setting::nonzero("fallback.cache_guard timeout", timeout, DEFAULT_GUARD.0);
        let failures = setting::at_least("fallback.cache_guard failures", failures, 1);
        if let Some(cache) = &mut self.cache {
            cache.guard = Arc::new(StoreGuard::new(timeout, failures, cooldown));
        }
        self
    }

    /// The last resort, named `"static"`: builds an answer (quality [`Quality::Minimal`])
    /// from the request when every other tier has failed. Always tried last.
    pub fn static_default<F>(mut self, answer: F) -> Self
    where
        F: Fn(&Req) -> Res + Send + Sync + 'static,
    {
        self.fallback_default = Some(TierSpec {
            name: Cow::Borrowed("static"),
            quality: Quality::Minimal,
            kind: TierKind::Static(Arc::new(answer)),
            cacheable: false,
            accepts: Vec::new(),
        });
        self
    }

    /// Where served and failed tiers are reported (default: `tracing` only).
    pub fn event_sink(mut self, sink: impl EventSink) -> Self {
        self.emitter = Emitter::new(sink);
        self
    }

    /// The stack's emitter, shared as it is (no extra indirection per event).
    pub(crate) fn emitter(mut self, emitter: Emitter) -> Self {
        self.emitter = emitter;
        self
    }

    /// How results are classified (default [`DefaultClassifier`]).
    pub fn classifier<C2>(self, classifier: C2) -> FallbackBuilder<Req, Res, E, C2> {
        FallbackBuilder {
            primary: self.primary,
            primary_cacheable: self.primary_cacheable,
            tiers: self.tiers,
            cache: self.cache,
            fallback_default: self.fallback_default,
            classifier,
            emitter: self.emitter,
        }
    }

    /// Builds the layer.
    pub fn build(mut self) -> FallbackLayer<Req, Res, E, C> {
        self.tiers.extend(self.fallback_default);
        FallbackLayer {
            shared: Arc::new(Shared {
                primary: self.primary,
                primary_cacheable: self.primary_cacheable,
                tiers: self.tiers,
                cache: self.cache,
                classifier: self.classifier,
                emitter: self.emitter,
            }),
        }
    }
}
