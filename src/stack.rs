//! The recommended composition: every layer in its place, wired once.
//!
//! [`InferenceStack`] assembles the layers in the order that works for a GPU-backed model,
//! whatever order they are configured in:
//!
//! ```text
//! request ─▶ metrics("edge") ─▶ fallback ─▶ degrade ─▶ retry ─▶ breaker ─▶ metrics("backend") ─▶ timeout ─▶ model
//! ```
//!
//! - **One sink.** Every layer reports its [`Event`]s to the same sinks: the
//!   [`ErrorMetrics`] given to [`metrics`](InferenceStack::metrics) and any given to
//!   [`event_sink`](InferenceStack::event_sink). A sink set on a layer's own builder is
//!   replaced, so no layer can be left out of the metrics by mistake.
//! - **One name.** The primary tier is named once ([`InferenceStack::new`]); the fallback layer
//!   labels its answers with it (with no fallback layer, the backend metrics stage does, on
//!   answers that name no tier of their own), both metrics stages count them under it, and
//!   the breaker takes it as its name unless its builder named it. A stack with neither
//!   layer leaves answers as the model made them.
//! - **Any subset.** A layer is in the stack when it is configured, and left out otherwise
//!   (at no cost: a left-out layer is tower's `Identity`). Each layer is configured through its
//!   own builder, with every option it has alone.
//!
//! Why this order: the edge stage sees what callers saw and the backend stage what the model
//! did, attempt by attempt; fallback sits above degrade and retry so a tier is tried only once
//! the primary's retries are spent; degrade scales the request once, before every attempt;
//! retry sits above the breaker, so an open breaker's fast failure is not retried
//! (`circuit_open` is not retryable) and each attempt is counted by the breaker; the timeout
//! bounds each attempt, not the whole call.
//!
//! The timeout is tower's own [`TimeoutLayer`]; with it, the
//! stack's error type is [`tower::BoxError`]. Without it, the stack keeps the model's error
//! type (e.g. [`InferenceError`](crate::InferenceError)).
//!
//! # Example
//!
//! ```
//! # #[cfg(feature = "mock")]
//! # #[tokio::main(flavor = "current_thread", start_paused = true)]
//! # async fn main() {
//! use std::time::Duration;
//! use tower::{ServiceBuilder, ServiceExt};
//! use tower_inference::breaker::BreakerLayer;
//! use tower_inference::fallback::{FallbackLayer, MemoryStore};
//! use tower_inference::metrics::ErrorMetrics;
//! use tower_inference::mock::{Completion, InferenceRequest, MockGpu};
//! use tower_inference::retry::RetryLayer;
//! use tower_inference::stack::InferenceStack;
//! use tower_inference::Quality;
//!
//! let primary = MockGpu::builder().name("llama-70b").build();
//! let light = MockGpu::builder().name("llama-8b").build();
//! let gpu = primary.handle();
//! let metrics = ErrorMetrics::new();
//!
//! let stack = InferenceStack::new("llama-70b")
//!     .metrics(&metrics)
//!     .fallback(
//!         FallbackLayer::builder()
//!             .tier("llama-8b", Quality::Reduced, light)
//!             .cache(MemoryStore::new(1_000), |r: &InferenceRequest| r.prompt.clone(), Duration::from_secs(300)),
//!     )
//!     .retry(RetryLayer::builder().max_attempts(3))
//!     .breaker(BreakerLayer::builder().count_window(20).minimum_calls(5))
//!     .timeout(Duration::from_secs(2))
//!     .build();
//! let svc = ServiceBuilder::new().layer(stack).service(primary);
//!
//! let answer = svc.clone().oneshot(InferenceRequest::new("hello").max_tokens(4)).await.unwrap();
//! assert_eq!(answer.provenance.tier, "llama-70b");
//!
//! gpu.kill();
//! let answer: Completion = svc.oneshot(InferenceRequest::new("hello").max_tokens(4)).await.unwrap();
//! assert_eq!(answer.provenance.tier, "llama-8b");
//! assert_eq!(answer.provenance.attempts, 4); // three on the primary, one on the lighter model
//! assert_eq!(answer.provenance.failed_tiers()[0].tier, "llama-70b");
//! assert!(metrics.render_prometheus().contains(r#"stage="backend",tier="llama-70b""#));
//! # }
//! # #[cfg(not(feature = "mock"))]
//! # fn main() {}
//! ```
//!
//! The same stack with plain `ServiceBuilder` is below; it is what [`InferenceStack::build`]
//! makes, with the sink and names repeated by hand:
//!
//! ```
//! # #[cfg(feature = "mock")]
//! # fn main() {
//! use std::time::Duration;
//! use tower::ServiceBuilder;
//! use tower_inference::breaker::BreakerLayer;
//! use tower_inference::degrade::DegradeLayer;
//! use tower_inference::fallback::FallbackLayer;
//! use tower_inference::metrics::{ErrorMetrics, MetricsLayer};
//! use tower_inference::mock::{InferenceRequest, MockGpu};
//! use tower_inference::retry::RetryLayer;
//! use tower_inference::Quality;
//!
//! let metrics = ErrorMetrics::new();
//! let light = MockGpu::builder().name("llama-8b").build();
//! let svc = ServiceBuilder::new()
//!     .layer(MetricsLayer::new(&metrics, "edge").primary_tier("llama-70b"))
//!     .layer(
//!         FallbackLayer::builder()
//!             .primary("llama-70b")
//!             .tier("llama-8b", Quality::Reduced, light)
//!             .event_sink(metrics.clone())
//!             .build(),
//!     )
//!     .layer(DegradeLayer::builder().event_sink(metrics.clone()).build())
//!     .layer(RetryLayer::builder().event_sink(metrics.clone()).build())
//!     .layer(BreakerLayer::builder().name("llama-70b").event_sink(metrics.clone()).build())
//!     .layer(MetricsLayer::new(&metrics, "backend").primary_tier("llama-70b"))
//!     .timeout(Duration::from_secs(2))
//!     .service(MockGpu::builder().name("llama-70b").build());
//! # let _ = svc;
//! # }
//! # #[cfg(not(feature = "mock"))]
//! # fn main() {}
//! ```

use std::borrow::Cow;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use tower::layer::util::{Identity, Stack};
use tower::timeout::TimeoutLayer;
use tower_layer::Layer;

use crate::breaker::{BreakerBuilder, BreakerHandle, BreakerLayer};
use crate::degrade::{DegradeBuilder, DegradeHandle, DegradeLayer};
use crate::event::{Emitter, Event, EventSink};
use crate::fallback::{FallbackBuilder, FallbackLayer};
use crate::metrics::{ErrorMetrics, MetricsLayer};
use crate::retry::{RetryBudget, RetryBuilder, RetryLayer};

/// The stage label of the outermost metrics layer: what callers saw.
pub const EDGE_STAGE: &str = "edge";
/// The stage label of the innermost metrics layer: what the model did, attempt by attempt.
pub const BACKEND_STAGE: &str = "backend";

/// Configures the recommended stack; [`build`](InferenceStack::build) makes its layer.
///
/// Type parameters track which layers are in (each is tower's `Identity` when left out):
/// `M` metrics, `F` fallback, `D` degrade, `R` retry, `B` breaker, `T` timeout. See the
/// [module docs](crate::stack).
pub struct InferenceStack<
    M = Identity,
    F = Identity,
    D = Identity,
    R = Identity,
    B = Identity,
    T = Identity,
> {
    primary: Cow<'static, str>,
    sinks: Vec<Arc<dyn EventSink>>,
    metrics: M,
    fallback: F,
    degrade: D,
    retry: R,
    breaker: B,
    timeout: T,
}

impl InferenceStack {
    /// An empty stack whose primary tier (the wrapped model) is named `primary`.
    ///
    /// Every answer carries the name in its [`Provenance`](crate::Provenance). A name read
    /// from configuration (a `String`) is kept once for the life of the process, so copying
    /// it into an answer never allocates.
    pub fn new(primary: impl Into<Cow<'static, str>>) -> Self {
        InferenceStack {
            primary: crate::name::intern(primary.into()),
            sinks: Vec::new(),
            metrics: Identity::new(),
            fallback: Identity::new(),
            degrade: Identity::new(),
            retry: Identity::new(),
            breaker: Identity::new(),
            timeout: Identity::new(),
        }
    }
}

impl<M, F, D, R, B, T> fmt::Debug for InferenceStack<M, F, D, R, B, T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("InferenceStack")
            .field("primary", &self.primary)
            .field("sinks", &self.sinks.len())
            .field("metrics", &std::any::type_name::<M>())
            .field("fallback", &std::any::type_name::<F>())
            .field("degrade", &std::any::type_name::<D>())
            .field("retry", &std::any::type_name::<R>())
            .field("breaker", &std::any::type_name::<B>())
            .field("timeout", &std::any::type_name::<T>())
            .finish()
    }
}

/// Rebuilds the stack with one part changed (the others listed, as they are).
macro_rules! with {
    ($self:ident, $field:ident = $value:expr; $($keep:ident),*) => {
        InferenceStack {
            primary: $self.primary,
            sinks: $self.sinks,
            $field: $value,
            $($keep: $self.$keep,)*
        }
    };
}

impl<M, F, D, R, B, T> InferenceStack<M, F, D, R, B, T> {
    /// Records every call into `metrics` at two stages, [`EDGE_STAGE`] (outermost) and
    /// [`BACKEND_STAGE`] (innermost, one record per attempt), makes `metrics` a sink of
    /// every layer's events, and has it watch the built layers: the breaker's state, the
    /// retry budget's balance and the degrade layer's level and load (both under the
    /// breaker's name, which is the primary tier's name unless the breaker's builder named
    /// it).
    pub fn metrics(mut self, metrics: &ErrorMetrics) -> InferenceStack<Metrics, F, D, R, B, T> {
        self.sinks.push(Arc::new(metrics.clone()));
        let parts = Metrics {
            collector: metrics.clone(),
            edge: MetricsLayer::new(metrics, EDGE_STAGE),
            backend: MetricsLayer::new(metrics, BACKEND_STAGE),
        };
        with!(self, metrics = parts; fallback, degrade, retry, breaker, timeout)
    }

    /// Adds a sink that every layer reports its events to (besides `tracing`, and besides the
    /// metrics collector if one is set). May be called more than once.
    pub fn event_sink(mut self, sink: impl EventSink) -> Self {
        self.sinks.push(Arc::new(sink));
        self
    }

    /// Falls back through the builder's tiers when the primary fails; the builder's primary
    /// name and sink are set by the stack.
    pub fn fallback<Req, Res, E, C>(
        self,
        fallback: FallbackBuilder<Req, Res, E, C>,
    ) -> InferenceStack<M, FallbackBuilder<Req, Res, E, C>, D, R, B, T> {
        with!(self, fallback = fallback; metrics, degrade, retry, breaker, timeout)
    }

    /// Scales requests down as load rises; the builder's sink is set by the stack.
    pub fn degrade(self, degrade: DegradeBuilder) -> InferenceStack<M, F, DegradeBuilder, R, B, T> {
        with!(self, degrade = degrade; metrics, fallback, retry, breaker, timeout)
    }

    /// Retries what is worth retrying; the builder's sink is set by the stack.
    pub fn retry<C, O>(
        self,
        retry: RetryBuilder<C, O>,
    ) -> InferenceStack<M, F, D, RetryBuilder<C, O>, B, T> {
        with!(self, retry = retry; metrics, fallback, degrade, breaker, timeout)
    }

    /// Breaks the circuit to the primary; the builder's sink is set by the stack, and its
    /// name too unless the builder gave one.
    pub fn breaker<C>(
        self,
        breaker: BreakerBuilder<C>,
    ) -> InferenceStack<M, F, D, R, BreakerBuilder<C>, T> {
        with!(self, breaker = breaker; metrics, fallback, degrade, retry, timeout)
    }

    /// Bounds each attempt on the primary with tower's timeout (the stack's error type becomes
    /// [`tower::BoxError`]; at least 1 ms).
    pub fn timeout(self, timeout: Duration) -> InferenceStack<M, F, D, R, B, TimeoutLayer> {
        let timeout = crate::setting::at_least("stack.timeout", timeout, Duration::from_millis(1));
        with!(self, timeout = TimeoutLayer::new(timeout); metrics, fallback, degrade, retry, breaker)
    }
}

impl<M, F, D, R, B, T> InferenceStack<M, F, D, R, B, T>
where
    M: MetricsPart,
    F: Part,
    D: Part,
    R: Part,
    B: Part,
    T: Part,
{
    /// Wires the sinks and names into every layer and builds the stack's layer.
    pub fn build(self) -> InferenceStackLayer<M, F, D, R, B, T> {
        let wiring = Wiring {
            primary: self.primary,
            emitter: match self.sinks.len() {
                0 => None,
                1 => self.sinks.into_iter().next().map(Emitter::from_arc),
                _ => Some(Emitter::new(Fanout(self.sinks))),
            },
        };
        let collector = self.metrics.collector();
        let (edge, backend) = self.metrics.wire(&wiring, !F::NAMES_ANSWERS);
        let breaker = self.breaker.wire(&wiring);
        let retry = self.retry.wire(&wiring);
        let degrade = self.degrade.wire(&wiring);
        let mut handles = Handles::default();
        B::collect(&breaker, &mut handles);
        R::collect(&retry, &mut handles);
        D::collect(&degrade, &mut handles);
        if let Some(metrics) = collector {
            if let Some(breaker) = &handles.breaker {
                metrics.watch_breaker(breaker);
            }
            // Named as the breaker is, so that stacks sharing a collector and a primary name
            // but not a budget or a degrade layer (one per route) each keep theirs.
            let name = handles
                .breaker
                .as_ref()
                .map_or(&*wiring.primary, |b| b.name());
            if let Some(budget) = &handles.budget {
                metrics.watch_retry_budget(name, budget);
            }
            if let Some(degrade) = &handles.degrade {
                metrics.watch_degrade(name, degrade);
            }
        }
        let layers = Stack::new(
            self.timeout.wire(&wiring),
            Stack::new(
                backend,
                Stack::new(
                    breaker,
                    Stack::new(
                        retry,
                        Stack::new(degrade, Stack::new(self.fallback.wire(&wiring), edge)),
                    ),
                ),
            ),
        );
        InferenceStackLayer {
            primary: wiring.primary,
            handles,
            layers,
        }
    }
}

/// The layers of an [`InferenceStack`], innermost first (tower's `Stack` nesting).
pub type Layers<M, F, D, R, B, T> = Stack<
    <T as Part>::Layer,
    Stack<
        <M as MetricsPart>::Backend,
        Stack<
            <B as Part>::Layer,
            Stack<
                <R as Part>::Layer,
                Stack<<D as Part>::Layer, Stack<<F as Part>::Layer, <M as MetricsPart>::Edge>>,
            >,
        >,
    >,
>;

/// The layer an [`InferenceStack`] builds: cheap to clone, applied with `ServiceBuilder::layer`
/// or [`Layer::layer`].
pub struct InferenceStackLayer<M: MetricsPart, F: Part, D: Part, R: Part, B: Part, T: Part> {
    primary: Cow<'static, str>,
    handles: Handles,
    layers: Layers<M, F, D, R, B, T>,
}

impl<M: MetricsPart, F: Part, D: Part, R: Part, B: Part, T: Part>
    InferenceStackLayer<M, F, D, R, B, T>
{
    /// The primary tier's name, as every layer labels it.
    pub fn primary(&self) -> &str {
        &self.primary
    }

    /// The breaker's handle (to read or force its state, e.g. for a health check), if the
    /// stack has a breaker.
    pub fn breaker(&self) -> Option<&BreakerHandle> {
        self.handles.breaker.as_ref()
    }

    /// The degrade layer's handle (its level and load; force or release a level), if the
    /// stack degrades.
    pub fn degrade(&self) -> Option<&DegradeHandle> {
        self.handles.degrade.as_ref()
    }

    /// The retry budget every clone shares, if the stack retries with one.
    pub fn retry_budget(&self) -> Option<&Arc<RetryBudget>> {
        self.handles.budget.as_ref()
    }
}

/// The handles of a built stack's layers.
#[derive(Debug, Clone, Default)]
pub struct Handles {
    breaker: Option<BreakerHandle>,
    degrade: Option<DegradeHandle>,
    budget: Option<Arc<RetryBudget>>,
}

impl<M: MetricsPart, F: Part, D: Part, R: Part, B: Part, T: Part> Clone
    for InferenceStackLayer<M, F, D, R, B, T>
where
    Layers<M, F, D, R, B, T>: Clone,
{
    fn clone(&self) -> Self {
        InferenceStackLayer {
            primary: self.primary.clone(),
            handles: self.handles.clone(),
            layers: self.layers.clone(),
        }
    }
}

impl<M: MetricsPart, F: Part, D: Part, R: Part, B: Part, T: Part> fmt::Debug
    for InferenceStackLayer<M, F, D, R, B, T>
{
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("InferenceStackLayer")
            .field("primary", &self.primary)
            .finish_non_exhaustive()
    }
}

impl<S, M: MetricsPart, F: Part, D: Part, R: Part, B: Part, T: Part> Layer<S>
    for InferenceStackLayer<M, F, D, R, B, T>
where
    Layers<M, F, D, R, B, T>: Layer<S>,
{
    type Service = <Layers<M, F, D, R, B, T> as Layer<S>>::Service;

    fn layer(&self, inner: S) -> Self::Service {
        self.layers.layer(inner)
    }
}

/// What the stack wires into every layer.
#[derive(Clone)]
pub struct Wiring {
    primary: Cow<'static, str>,
    /// The stack's sinks; `None` leaves each builder's own.
    emitter: Option<Emitter>,
}

impl Wiring {
    /// The primary tier's name.
    pub fn primary(&self) -> &str {
        &self.primary
    }

    /// `builder` with the stack's emitter set through `set`, if the stack has sinks.
    fn emitter_into<Bd>(&self, builder: Bd, set: fn(Bd, Emitter) -> Bd) -> Bd {
        match &self.emitter {
            Some(emitter) => set(builder, emitter.clone()),
            None => builder,
        }
    }
}

impl fmt::Debug for Wiring {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Wiring")
            .field("primary", &self.primary)
            .field("sink", &self.emitter.is_some())
            .finish()
    }
}

/// The metrics part of a stack: the edge and backend stages of one collector.
#[derive(Debug, Clone)]
pub struct Metrics {
    collector: ErrorMetrics,
    edge: MetricsLayer,
    backend: MetricsLayer,
}

mod sealed {
    pub trait Sealed {}
}

/// A part of an [`InferenceStack`]: a layer's builder, or tower's `Identity` for a layer left
/// out. Implemented by this crate only.
pub trait Part: sealed::Sealed {
    /// The layer this part becomes.
    type Layer;
    /// Builds the layer with the stack's sink and names.
    fn wire(self, wiring: &Wiring) -> Self::Layer;
    /// Whether the built layer writes the primary tier's name on the primary's answers (the
    /// fallback layer does; when it is left out, the backend metrics stage does).
    const NAMES_ANSWERS: bool = false;
    /// Keeps the built layer's handle, if it has one.
    fn collect(_layer: &Self::Layer, _handles: &mut Handles) {}
}

/// The metrics part of an [`InferenceStack`]: [`Metrics`], or tower's `Identity` when left
/// out. Implemented by this crate only.
pub trait MetricsPart: sealed::Sealed {
    /// The outermost stage's layer.
    type Edge;
    /// The innermost stage's layer.
    type Backend;
    /// Builds both stages with the stack's primary tier name; with `names_answers`, the
    /// backend stage also writes that name on the answers that name no tier.
    fn wire(self, wiring: &Wiring, names_answers: bool) -> (Self::Edge, Self::Backend);
    /// The collector, which watches the built layers' handles (breaker state, retry budget
    /// balance, degradation level).
    fn collector(&self) -> Option<ErrorMetrics> {
        None
    }
}

macro_rules! simple_part {
    ($(impl[$($g:tt)*] $ty:ty => $layer:ty, |$this:ident, $w:ident| $body:expr $(, collect |$l:ident, $h:ident| $collect:expr)?;)*) => {$(
        impl<$($g)*> sealed::Sealed for $ty {}
        impl<$($g)*> Part for $ty {
            type Layer = $layer;
            fn wire(self, wiring: &Wiring) -> $layer {
                let ($this, $w) = (self, wiring);
                $body
            }
            $(fn collect($l: &$layer, $h: &mut Handles) {
                $collect
            })?
        }
    )*};
}

simple_part! {
    impl[] Identity => Identity, |this, _w| this;
    impl[] TimeoutLayer => TimeoutLayer, |this, _w| this;
    impl[] DegradeBuilder => DegradeLayer, |this, w| w.emitter_into(this, DegradeBuilder::emitter).build(),
        collect |layer, handles| handles.degrade = Some(layer.handle());
    impl[C, O] RetryBuilder<C, O> => RetryLayer<C, O>,
        |this, w| w.emitter_into(this, RetryBuilder::emitter).build(),
        collect |layer, handles| handles.budget = layer.budget().cloned();
    impl[C] BreakerBuilder<C> => BreakerLayer<C>, |this, w| {
        let mut this = this;
        if this.config.name == crate::breaker::DEFAULT_NAME {
            this = this.name(w.primary.clone());
        }
        w.emitter_into(this, BreakerBuilder::emitter).build()
    }, collect |layer, handles| handles.breaker = Some(layer.handle());
}

impl<Req, Res, E, C> sealed::Sealed for FallbackBuilder<Req, Res, E, C> {}
impl<Req, Res, E, C> Part for FallbackBuilder<Req, Res, E, C> {
    type Layer = FallbackLayer<Req, Res, E, C>;
    const NAMES_ANSWERS: bool = true;

    fn wire(self, wiring: &Wiring) -> Self::Layer {
        let this = self.primary(wiring.primary.clone());
        wiring.emitter_into(this, FallbackBuilder::emitter).build()
    }
}

impl MetricsPart for Identity {
    type Edge = Identity;
    type Backend = Identity;

    fn wire(self, _wiring: &Wiring, _names_answers: bool) -> (Identity, Identity) {
        (Identity::new(), Identity::new())
    }
}

impl sealed::Sealed for Metrics {}
impl MetricsPart for Metrics {
    type Edge = MetricsLayer;
    type Backend = MetricsLayer;

    fn collector(&self) -> Option<ErrorMetrics> {
        Some(self.collector.clone())
    }

    fn wire(self, wiring: &Wiring, names_answers: bool) -> (MetricsLayer, MetricsLayer) {
        let backend = self.backend.primary_tier(wiring.primary.clone());
        (
            self.edge.primary_tier(wiring.primary.clone()),
            if names_answers {
                backend.names_answers()
            } else {
                backend
            },
        )
    }
}

/// Sends each event to several sinks, in order.
struct Fanout(Vec<Arc<dyn EventSink>>);

impl EventSink for Fanout {
    fn on_event(&self, event: &Event<'_>) {
        for sink in &self.0 {
            sink.on_event(event);
        }
    }
}
