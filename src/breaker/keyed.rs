//! Keyed breakers: one breaker per model or backend behind one service.

use std::collections::HashMap;
use std::fmt;
use std::hash::Hash;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use tokio::time::Instant;
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

/// A key's breaker in the registry, with when it was last used.
struct Slot {
    shared: Arc<Shared>,
    /// Milliseconds since the registry's origin at the last call, kept coarse: it is written
    /// only when it is at least `Registry::resolution` old, so a busy key's calls only read it.
    used: AtomicU64,
}

impl Slot {
    #[inline]
    fn touch(&self, now: u64, resolution: u64) {
        if now.saturating_sub(self.used.load(Relaxed)) >= resolution {
            self.used.store(now, Relaxed);
        }
    }
}

/// The keys' breakers and when idle ones were last looked for.
struct Keys<K> {
    slots: HashMap<K, Arc<Slot>>,
    last_sweep: Option<u64>,
}

/// The breakers of a keyed layer, created on first use, at most `max_keys` of them.
struct Registry<K> {
    template: BreakerConfig,
    emitter: Emitter,
    max_keys: usize,
    /// Idle time after which a key's breaker may give its place to a new key, in ms.
    idle: u64,
    /// How stale a slot's `used` may get, in ms (an eighth of `idle`, 1 ms to 1 s).
    resolution: u64,
    origin: Instant,
    keys: Mutex<Keys<K>>,
    /// Moves on whenever a key is dropped, so services drop the breakers they cached.
    generation: AtomicU64,
    overflow: Arc<Shared>,
}

impl<K> Registry<K> {
    fn now(&self) -> u64 {
        u64::try_from(self.origin.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Keys<K>> {
        self.keys.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl<K: Hash + Eq + Clone + fmt::Display> Registry<K> {
    /// The key's slot, or `None` when the key shares the overflow breaker.
    fn get(&self, key: &K) -> Option<Arc<Slot>> {
        let now = self.now();
        let mut keys = self.lock();
        if let Some(slot) = keys.slots.get(key) {
            slot.touch(now, self.resolution);
            return Some(slot.clone());
        }
        if keys.slots.len() >= self.max_keys {
            self.sweep(&mut keys, now);
            if keys.slots.len() >= self.max_keys {
                return None;
            }
        }
        let mut config = self.template.clone();
        config.name = format!("{}/{key}", self.template.name).into();
        let slot = Arc::new(Slot {
            shared: Arc::new(Shared::new(config, self.emitter.clone())),
            used: AtomicU64::new(now),
        });
        keys.slots.insert(key.clone(), slot.clone());
        Some(slot)
    }

    /// Drops the breakers idle for `idle` that may go; at most once per `resolution`, so a
    /// flood of new keys costs one pass over the map per `resolution`, not one per call.
    fn sweep(&self, keys: &mut Keys<K>, now: u64) {
        if keys
            .last_sweep
            .is_some_and(|last| now.saturating_sub(last) < self.resolution)
        {
            return;
        }
        keys.last_sweep = Some(now);
        let before = keys.slots.len();
        keys.slots.retain(|key, slot| {
            let idle = now.saturating_sub(slot.used.load(Relaxed)) >= self.idle;
            let drop = idle && slot.shared.evictable();
            if drop {
                tracing::debug!(breaker = %self.template.name, %key, "idle keyed breaker dropped");
            }
            !drop
        });
        if keys.slots.len() < before {
            self.generation.fetch_add(1, Relaxed);
        }
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
/// [`max_keys`](BreakerBuilder::max_keys) keys have a breaker of their own at a time, so
/// memory stays bounded whatever keys callers send. When every place is taken, a new key
/// takes the place of one unused for [`idle_timeout`](BreakerBuilder::idle_timeout) (a closed
/// breaker, or an open one whose open period is over); if no key is that idle, the new key's
/// calls share one overflow breaker until a place frees up.
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
        let idle = u64::try_from(builder.idle_timeout.as_millis()).unwrap_or(u64::MAX);
        KeyedBreakerLayer {
            registry: Arc::new(Registry {
                overflow: Arc::new(Shared::new(overflow, builder.emitter.clone())),
                template: builder.config,
                emitter: builder.emitter,
                max_keys: builder.max_keys,
                idle: idle.max(1),
                resolution: (idle / 8).clamp(1, 1_000),
                origin: Instant::now(),
                keys: Mutex::new(Keys {
                    slots: HashMap::new(),
                    last_sweep: None,
                }),
                generation: AtomicU64::new(0),
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
    /// The handle of `key`'s breaker, if a call for that key has created it and it has not
    /// been dropped as idle since. A handle outlives its breaker's place: once the key is
    /// dropped, the handle no longer acts on its calls.
    pub fn handle(&self, key: &K) -> Option<BreakerHandle> {
        self.registry
            .lock()
            .slots
            .get(key)
            .map(|slot| BreakerHandle {
                shared: slot.shared.clone(),
            })
    }

    /// Every key's breaker now in place, with its handle.
    pub fn handles(&self) -> Vec<(K, BreakerHandle)> {
        self.registry
            .lock()
            .slots
            .iter()
            .map(|(k, slot)| {
                (
                    k.clone(),
                    BreakerHandle {
                        shared: slot.shared.clone(),
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
            generation: self.registry.generation.load(Relaxed),
        }
    }
}

/// The service a [`KeyedBreakerLayer`] makes.
pub struct KeyedBreaker<S, K, F, C> {
    inner: S,
    registry: Arc<Registry<K>>,
    key_fn: F,
    classifier: C,
    /// This clone's view of the keys' breakers (bounded by `max_keys`), valid while the
    /// registry's generation is `generation`.
    locals: HashMap<K, Cached<C>>,
    generation: u64,
    overflow: Arc<Local<C>>,
}

/// A key's breaker as one service holds it.
struct Cached<C> {
    local: Arc<Local<C>>,
    slot: Arc<Slot>,
}

impl<S: Clone, K, F: Clone, C: Clone> Clone for KeyedBreaker<S, K, F, C> {
    fn clone(&self) -> Self {
        KeyedBreaker {
            inner: self.inner.clone(),
            registry: self.registry.clone(),
            key_fn: self.key_fn.clone(),
            classifier: self.classifier.clone(),
            locals: HashMap::new(),
            generation: self.registry.generation.load(Relaxed),
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
    /// The breaker for `key`: one read of the registry's generation and, for a key this
    /// service has seen, a map lookup, a clock read and (at most once per resolution) a write
    /// of when the key was used. The registry's lock is taken only for a key not seen yet.
    fn local(&mut self, key: K) -> Arc<Local<C>> {
        let registry = &self.registry;
        let generation = registry.generation.load(Relaxed);
        if generation != self.generation {
            self.locals.clear();
            self.generation = generation;
        }
        if let Some(cached) = self.locals.get(&key) {
            cached.slot.touch(registry.now(), registry.resolution);
            return cached.local.clone();
        }
        match registry.get(&key) {
            Some(slot) => {
                let local = Arc::new(Homed::new(Shares {
                    shared: slot.shared.clone(),
                    classifier: self.classifier.clone(),
                }));
                self.locals.insert(
                    key,
                    Cached {
                        local: local.clone(),
                        slot,
                    },
                );
                local
            }
            None => self.overflow.clone(),
        }
    }
}

impl<S, K, F, C, Req> Service<Req> for KeyedBreaker<S, K, F, C>
where
    S: Service<Req>,
    S::Response: 'static,
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
