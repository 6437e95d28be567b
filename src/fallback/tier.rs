//! The tiers of a fallback chain.

use std::borrow::Cow;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use tower::util::BoxCloneSyncService;
use tower_service::Service;

use super::cache::{BoxFuture, CacheError, CacheStore, CacheWrite, Cached};
use super::guard::{DEFAULT_GUARD, StoreGuard};
use crate::error::ErrorKind;
use crate::provenance::Quality;

/// One fallback tier: a name, the quality of its answers and a service that answers.
///
/// Any tier can carry its own breaker or timeout by being a stack itself. A tier moves on to
/// the next on a backend failure; a caller's fault (e.g. a context too long) skips ahead to
/// the first tier that [`accepts`](Tier::accepts) that kind, such as a larger-context model.
pub struct Tier<Req, Res, E> {
    pub(crate) name: Cow<'static, str>,
    pub(crate) quality: Quality,
    pub(crate) svc: BoxCloneSyncService<Req, Res, E>,
    pub(crate) cacheable: Option<bool>,
    pub(crate) accepts: Vec<ErrorKind>,
}

impl<Req, Res, E> Tier<Req, Res, E> {
    /// A tier named `name` whose answers have `quality`, served by `svc`.
    ///
    /// The tier must answer with the chain's response type; its error only has to convert
    /// into the chain's (`S::Error: Into<E>`), so an [`InferenceError`](crate::InferenceError)
    /// tier fits a chain over tower's timeout (`tower::BoxError`). A tier that fits neither
    /// way fails to compile here, at the call that adds it, with the mismatched types named.
    pub fn new<S>(name: impl Into<Cow<'static, str>>, quality: Quality, svc: S) -> Self
    where
        S: Service<Req, Response = Res> + Clone + Send + Sync + 'static,
        S::Error: Into<E>,
        S::Future: Send + 'static,
        Req: 'static,
        Res: 'static,
        E: 'static,
    {
        Tier {
            name: crate::name::intern(name.into()),
            quality,
            svc: BoxCloneSyncService::new(tower::ServiceExt::map_err(svc, Into::into)),
            cacheable: None,
            accepts: Vec::new(),
        }
    }

    /// Sends this tier requests that earlier tiers refused as the caller's fault of `kind`
    /// (e.g. [`ErrorKind::ContextLengthExceeded`] for a larger-context model).
    pub fn accepts(mut self, kind: ErrorKind) -> Self {
        self.accepts.push(kind);
        self
    }

    /// Whether this tier's answers are stored in the cache (default: yes for the first tier
    /// added after the primary, no for later ones).
    pub fn cacheable(mut self, cacheable: bool) -> Self {
        self.cacheable = Some(cacheable);
        self
    }
}

impl<Req, Res, E> fmt::Debug for Tier<Req, Res, E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Tier")
            .field("name", &self.name)
            .field("quality", &self.quality)
            .field("cacheable", &self.cacheable)
            .field("accepts", &self.accepts)
            .finish()
    }
}

pub(crate) type KeyFn<Req> = Arc<dyn Fn(&Req) -> String + Send + Sync>;
type ReadFn<Res> =
    Arc<dyn Fn(&str) -> BoxFuture<Result<Option<Cached<Res>>, CacheError>> + Send + Sync>;
type WriteFn<Res> = Arc<dyn Fn(String, &Res) -> CacheWrite + Send + Sync>;

/// The cache of last-good answers: how to key a request, read and write the store.
pub(crate) struct CacheConfig<Req, Res> {
    pub(crate) name: Cow<'static, str>,
    pub(crate) guard: Arc<StoreGuard>,
    pub(crate) key: KeyFn<Req>,
    pub(crate) read: ReadFn<Res>,
    pub(crate) write: WriteFn<Res>,
}

impl<Req, Res: Clone + 'static> CacheConfig<Req, Res> {
    pub(crate) fn new<St>(
        name: Cow<'static, str>,
        store: St,
        key: KeyFn<Req>,
        ttl: Duration,
    ) -> Self
    where
        St: CacheStore<Res>,
    {
        let store = Arc::new(store);
        let reader = store.clone();
        let (timeout, failures, cooldown) = DEFAULT_GUARD;
        CacheConfig {
            name,
            guard: Arc::new(StoreGuard::new(timeout, failures, cooldown)),
            key,
            read: Arc::new(move |key| reader.get(key)),
            write: Arc::new(move |key, res: &Res| store.put(key, res.clone(), ttl)),
        }
    }
}

/// What a tier after the primary is.
pub(crate) enum TierKind<Req, Res, E> {
    Service(BoxCloneSyncService<Req, Res, E>),
    Cache,
    Static(Arc<dyn Fn(&Req) -> Res + Send + Sync>),
}

/// A tier after the primary, as the chain walks it.
pub(crate) struct TierSpec<Req, Res, E> {
    pub(crate) name: Cow<'static, str>,
    pub(crate) quality: Quality,
    pub(crate) kind: TierKind<Req, Res, E>,
    pub(crate) cacheable: bool,
    pub(crate) accepts: Vec<ErrorKind>,
}
