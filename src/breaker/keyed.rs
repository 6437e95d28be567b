//! Keyed breakers: one breaker per model or backend behind one service.

use std::collections::HashMap;
use std::fmt;
use std::hash::Hash;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use tower_layer::Layer;
use tower_service::Service;

use super::config::{BreakerBuilder, BreakerConfig};
use super::future::ResponseFuture;
use super::layer::BreakerHandle;
use super::service::{Local, Shares};
use super::state::Shared;
use crate::classify::{Classify, DefaultClassifier};
use crate::error::InferenceError;
use crate::event::Emitter;
use crate::stripe::Homed;

/// The breakers of a keyed layer, created on first use, at most `max_keys` of them.
struct Registry<K> {
    template: BreakerConfig,
    emitter: Emitter,
    max_keys: usize,
    breakers: Mutex<HashMap<K, Arc<Shared>>>,
    overflow: Arc<Shared>,
}

impl<K: Hash + Eq + Clone + fmt::Display> Registry<K> {
    /// The key's breaker, and whether it is the key's own (not the overflow one).
    fn get(&self, key: &K) -> (Arc<Shared>, bool) {
        let mut breakers = self.breakers.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(shared) = breakers.get(key) {
            return (shared.clone(), true);
        }
        if breakers.len() >= self.max_keys {
            return (self.overflow.clone(), false);
        }
        let mut config = self.template.clone();
        config.name = format!("{}/{key}", self.template.name).into();
        let shared = Arc::new(Shared::new(config, self.emitter.clone()));
        breakers.insert(key.clone(), shared.clone());
        (shared, true)
    }
}

impl<K> fmt::Debug for Registry<K> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Registry")
            .field("name", &self.template.name)
            .field("max_keys", &self.max_keys)
            .finish_non_exhaustive()
    }
}

/// One circuit breaker per key, for a service that fronts many models.
///
/// `key_fn` takes the key (a model or backend name) from each request; the first call for a
/// key creates its breaker, named `"{name}/{key}"`, with the layer's configuration. At most
/// [`max_keys`](BreakerBuilder::max_keys) keys get a breaker of their own; calls for further
/// keys share one overflow breaker, so memory stays bounded whatever keys callers send.
///
/// The key is only known at `call`, so `poll_ready` always drives the inner service and a
/// refused call fails in `call` without reaching it.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// use tower::{service_fn, ServiceBuilder, ServiceExt};
/// use tower_inference::breaker::BreakerLayer;
/// use tower_inference::{CircuitState, InferenceError};
///
/// let layer = BreakerLayer::keyed(|req: &(String, bool)| req.0.clone());
/// let svc = ServiceBuilder::new().layer(layer.clone()).service(service_fn(
///     |(_, fail): (String, bool)| async move {
///         if fail { Err(InferenceError::infrastructure()) } else { Ok(()) }
///     },
/// ));
/// svc.clone().oneshot(("llama".into(), false)).await.unwrap();
/// let handle = layer.handle(&"llama".to_string()).unwrap();
/// assert_eq!(handle.name(), "breaker/llama");
/// handle.force_open();
/// assert!(svc.clone().oneshot(("llama".into(), false)).await.is_err());
/// assert!(svc.oneshot(("mistral".into(), false)).await.is_ok());
/// # }
/// ```
pub struct KeyedBreakerLayer<K, F, C = DefaultClassifier> {
    registry: Arc<Registry<K>>,
    key_fn: F,
    classifier: C,
}

impl<K, F: Clone, C: Clone> Clone for KeyedBreakerLayer<K, F, C> {
    fn clone(&self) -> Self {
        KeyedBreakerLayer {
            registry: self.registry.clone(),
            key_fn: self.key_fn.clone(),
            classifier: self.classifier.clone(),
        }
    }
}

impl<K, F, C> fmt::Debug for KeyedBreakerLayer<K, F, C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyedBreakerLayer")
            .field("registry", &self.registry)
            .finish_non_exhaustive()
    }
}

impl<K, F, C> KeyedBreakerLayer<K, F, C> {
    pub(crate) fn from_builder(builder: BreakerBuilder<C>, key_fn: F) -> Self {
        let mut overflow = builder.config.clone();
        overflow.name = format!("{}/overflow", builder.config.name).into();
        KeyedBreakerLayer {
            registry: Arc::new(Registry {
                overflow: Arc::new(Shared::new(overflow, builder.emitter.clone())),
                template: builder.config,
                emitter: builder.emitter,
                max_keys: builder.max_keys,
                breakers: Mutex::new(HashMap::new()),
            }),
            key_fn,
            classifier: builder.classifier,
        }
    }

    /// The breaker that keys past `max_keys` share.
    pub fn overflow_handle(&self) -> BreakerHandle {
        BreakerHandle {
            shared: self.registry.overflow.clone(),
        }
    }
}

impl<K: Hash + Eq + Clone, F, C> KeyedBreakerLayer<K, F, C> {
    /// The handle of `key`'s breaker, if a call for that key has created it.
    pub fn handle(&self, key: &K) -> Option<BreakerHandle> {
        let breakers = self
            .registry
            .breakers
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        breakers.get(key).map(|shared| BreakerHandle {
            shared: shared.clone(),
        })
    }

    /// Every key's breaker created so far, with its handle.
    pub fn handles(&self) -> Vec<(K, BreakerHandle)> {
        let breakers = self
            .registry
            .breakers
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        breakers
            .iter()
            .map(|(k, shared)| {
                (
                    k.clone(),
                    BreakerHandle {
                        shared: shared.clone(),
                    },
                )
            })
            .collect()
    }
}

impl<S, K, F: Clone, C: Clone> Layer<S> for KeyedBreakerLayer<K, F, C> {
    type Service = KeyedBreaker<S, K, F, C>;

    fn layer(&self, inner: S) -> Self::Service {
        KeyedBreaker {
            overflow: Arc::new(Homed::new(Shares {
                shared: self.registry.overflow.clone(),
                classifier: self.classifier.clone(),
            })),
            inner,
            registry: self.registry.clone(),
            key_fn: self.key_fn.clone(),
            classifier: self.classifier.clone(),
            locals: HashMap::new(),
        }
    }
}

/// The service a [`KeyedBreakerLayer`] makes.
pub struct KeyedBreaker<S, K, F, C> {
    inner: S,
    registry: Arc<Registry<K>>,
    key_fn: F,
    classifier: C,
    /// This clone's view of the keys' breakers (bounded by `max_keys`).
    locals: HashMap<K, Arc<Local<C>>>,
    overflow: Arc<Local<C>>,
}

impl<S: Clone, K, F: Clone, C: Clone> Clone for KeyedBreaker<S, K, F, C> {
    fn clone(&self) -> Self {
        KeyedBreaker {
            inner: self.inner.clone(),
            registry: self.registry.clone(),
            key_fn: self.key_fn.clone(),
            classifier: self.classifier.clone(),
            locals: HashMap::new(),
            overflow: Arc::new(Homed::new(Shares {
                shared: self.overflow.shared.clone(),
                classifier: self.classifier.clone(),
            })),
        }
    }
}

impl<S: fmt::Debug, K, F, C> fmt::Debug for KeyedBreaker<S, K, F, C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyedBreaker")
            .field("inner", &self.inner)
            .field("registry", &self.registry)
            .finish_non_exhaustive()
    }
}

impl<S, K, F, C: Clone> KeyedBreaker<S, K, F, C>
where
    K: Hash + Eq + Clone + fmt::Display,
{
    fn local(&mut self, key: K) -> Arc<Local<C>> {
        if let Some(local) = self.locals.get(&key) {
            return local.clone();
        }
        match self.registry.get(&key) {
            (shared, true) => {
                let local = Arc::new(Homed::new(Shares {
                    shared,
                    classifier: self.classifier.clone(),
                }));
                self.locals.insert(key, local.clone());
                local
            }
            (_, false) => self.overflow.clone(),
        }
    }
}

impl<S, K, F, C, Req> Service<Req> for KeyedBreaker<S, K, F, C>
where
    S: Service<Req>,
    S::Error: From<InferenceError>,
    K: Hash + Eq + Clone + fmt::Display,
    F: Fn(&Req) -> K,
    C: Classify<S::Response, S::Error> + Clone,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future, C>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Req) -> Self::Future {
        let local = self.local((self.key_fn)(&req));
        let inner = &mut self.inner;
        ResponseFuture::start(local.shared.admit(), &local, || inner.call(req))
    }
}
