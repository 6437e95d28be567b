//! [`BreakerLayer`] and [`BreakerHandle`].

use std::sync::Arc;

use tower_layer::Layer;

use super::config::BreakerBuilder;
use super::keyed::KeyedBreakerLayer;
use super::service::Breaker;
use super::state::{BreakerSnapshot, Shared};
use crate::classify::DefaultClassifier;
use crate::event::CircuitState;

/// Wraps a service in a circuit breaker. See the [module docs](crate::breaker).
///
/// Every service the layer makes (and every clone of those) shares one breaker, which
/// [`BreakerLayer::handle`] reads and controls.
#[derive(Debug, Clone)]
pub struct BreakerLayer<C = DefaultClassifier> {
    shared: Arc<Shared>,
    classifier: C,
}

impl BreakerLayer {
    /// A breaker with the defaults (see [`BreakerBuilder`]).
    pub fn new() -> Self {
        BreakerLayer::builder().build()
    }

    /// A builder, starting from the defaults.
    pub fn builder() -> BreakerBuilder {
        BreakerBuilder::default()
    }

    /// One breaker per key, with the defaults; the key is taken from each request by
    /// `key_fn`. See [`KeyedBreakerLayer`]; configure one with [`BreakerBuilder::build_keyed`].
    pub fn keyed<K, F>(key_fn: F) -> KeyedBreakerLayer<K, F> {
        BreakerLayer::builder().build_keyed(key_fn)
    }
}

impl Default for BreakerLayer {
    fn default() -> Self {
        BreakerLayer::new()
    }
}

impl<C> BreakerLayer<C> {
    pub(crate) fn from_builder(builder: BreakerBuilder<C>) -> Self {
        BreakerLayer {
            shared: Arc::new(Shared::new(builder.config, builder.emitter)),
            classifier: builder.classifier,
        }
    }

    /// The handle to the breaker this layer's services share.
    pub fn handle(&self) -> BreakerHandle {
        BreakerHandle {
            shared: self.shared.clone(),
        }
    }
}

impl<S, C: Clone> Layer<S> for BreakerLayer<C> {
    type Service = Breaker<S, C>;

    fn layer(&self, inner: S) -> Self::Service {
        Breaker::new(inner, self.shared.clone(), self.classifier.clone())
    }
}

/// Reads and controls a breaker shared by every clone of its services: for health checks,
/// admin endpoints and drills.
///
/// ```
/// use tower_inference::breaker::BreakerLayer;
/// use tower_inference::CircuitState;
///
/// let layer = BreakerLayer::new();
/// let handle = layer.handle();
/// assert_eq!(handle.state(), CircuitState::Closed);
///
/// handle.force_open();
/// assert_eq!(handle.state(), CircuitState::ForcedOpen);
/// handle.reset();
/// assert_eq!(handle.snapshot().calls, 0);
/// ```
#[derive(Debug, Clone)]
pub struct BreakerHandle {
    pub(crate) shared: Arc<Shared>,
}

impl BreakerHandle {
    /// The breaker's name.
    pub fn name(&self) -> &str {
        &self.shared.config.name
    }

    /// The current state. An open breaker whose open duration has passed still reads
    /// `Open` until the next call moves it to half-open.
    pub fn state(&self) -> CircuitState {
        self.shared.state()
    }

    /// The state and the window's figures.
    pub fn snapshot(&self) -> BreakerSnapshot {
        self.shared.snapshot()
    }

    /// Holds the breaker open (every call fails fast) until [`reset`](Self::reset).
    pub fn force_open(&self) {
        self.shared.force(CircuitState::ForcedOpen);
    }

    /// Holds the breaker closed and stops recording (every call passes) until
    /// [`reset`](Self::reset).
    pub fn force_closed(&self) {
        self.shared.force(CircuitState::Disabled);
    }

    /// Closes the breaker with an empty window and the open duration back at its base.
    pub fn reset(&self) {
        self.shared.force(CircuitState::Closed);
    }
}
