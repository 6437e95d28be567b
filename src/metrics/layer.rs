//! [`MetricsLayer`]: records every call's outcome, latency and tier at one stage of a stack.

use std::borrow::Cow;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use pin_project_lite::pin_project;
use tokio::time::Instant;
use tower_layer::Layer;
use tower_service::Service;

use super::collector::{ErrorMetrics, Stage};
use super::stream::StreamStats;
use crate::classify::{Classify, DefaultClassifier};
use crate::provenance::{Annotate, PRIMARY_TIER, Provenance};
use crate::stripe::{Homed, PerThread};

/// Reads an answer's provenance for the metrics layer.
pub trait ReadProvenance<Res> {
    /// The answer's provenance, if it has one.
    fn read<'a>(&self, res: &'a Res) -> Option<&'a Provenance>;

    /// Writes `tier` as the answering tier on an answer whose provenance names none of its
    /// own (still [`PRIMARY_TIER`]). Used by an [`InferenceStack`](crate::stack::InferenceStack)
    /// without a fallback layer, so that answers carry the name its metrics count them under.
    /// Does nothing by default.
    #[allow(
        clippy::ptr_arg,
        reason = "the name is cloned as a `Cow`, so a `&'static str` name is never copied"
    )]
    fn name_tier(&self, res: &mut Res, tier: &Cow<'static, str>) {
        let _ = (res, tier);
    }
}

/// Reads provenance through [`Annotate`] (the default).
#[derive(Debug, Clone, Copy, Default)]
pub struct FromAnnotate;

impl<Res: Annotate> ReadProvenance<Res> for FromAnnotate {
    fn read<'a>(&self, res: &'a Res) -> Option<&'a Provenance> {
        res.provenance()
    }

    fn name_tier(&self, res: &mut Res, tier: &Cow<'static, str>) {
        let provenance = res.provenance_mut();
        if provenance.tier == PRIMARY_TIER {
            provenance.tier = tier.clone();
        }
    }
}

/// For answers without provenance: every answer counts as the primary tier's.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoProvenance;

impl<Res> ReadProvenance<Res> for NoProvenance {
    fn read<'a>(&self, _res: &'a Res) -> Option<&'a Provenance> {
        None
    }
}

/// Labels a request's operation, for the top error patterns.
pub trait OperationLabel<Req> {
    /// What a call keeps of its label until it completes: `()` for none, so that a stage
    /// without labels keeps nothing in its response futures.
    type Label: KeptLabel;

    /// The label of `req`'s operation.
    fn label(&self, req: &Req) -> Self::Label;
}

/// An operation label kept by a call in flight.
pub trait KeptLabel {
    /// The label, or `None` to use the stage's name.
    fn as_label(&self) -> Option<&str>;
}

impl KeptLabel for () {
    fn as_label(&self) -> Option<&str> {
        None
    }
}

impl KeptLabel for String {
    fn as_label(&self) -> Option<&str> {
        Some(self)
    }
}

impl KeptLabel for Option<String> {
    fn as_label(&self) -> Option<&str> {
        self.as_deref()
    }
}

/// No operation label: patterns are labelled with the stage's name.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoLabel;

impl<Req> OperationLabel<Req> for NoLabel {
    type Label = ();

    fn label(&self, _req: &Req) {}
}

/// Labels operations with a closure.
#[derive(Debug, Clone, Copy)]
pub struct LabelFn<F>(F);

impl<Req, F: Fn(&Req) -> String> OperationLabel<Req> for LabelFn<F> {
    type Label = String;

    fn label(&self, req: &Req) -> String {
        (self.0)(req)
    }
}

/// Records every call through it into an [`ErrorMetrics`] under a `stage` label: its outcome
/// kind, its latency and the tier that answered. Stand one outermost (what users saw) and one
/// innermost (what the backend did).
#[derive(Clone)]
pub struct MetricsLayer<C = DefaultClassifier, P = FromAnnotate, O = NoLabel> {
    stage: Arc<Stage>,
    primary: PrimaryTier,
    classifier: C,
    provenance: P,
    operation: O,
}

/// The name a stage counts the primary tier's answers under, and whether it also writes that
/// name on them.
#[derive(Clone)]
pub(crate) struct PrimaryTier {
    name: Cow<'static, str>,
    names_answers: bool,
}

impl<C, P, O> std::fmt::Debug for MetricsLayer<C, P, O> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MetricsLayer")
            .field("stage", &self.stage.name)
            .finish()
    }
}

impl MetricsLayer {
    /// Records into `metrics` under the label `stage` (an empty name is taken as `unnamed`,
    /// since Prometheus reads an empty label as none).
    pub fn new(metrics: &ErrorMetrics, stage: &str) -> Self {
        MetricsLayer {
            stage: metrics.stage(stage),
            primary: PrimaryTier {
                name: Cow::Borrowed(PRIMARY_TIER),
                names_answers: false,
            },
            classifier: DefaultClassifier,
            provenance: FromAnnotate,
            operation: NoLabel,
        }
    }
}

impl<C, P, O> MetricsLayer<C, P, O> {
    /// The tier label for answers whose provenance names no tier of their own (still
    /// [`PRIMARY_TIER`]; default `"primary"`).
    ///
    /// A stage below a fallback layer sees the primary's answers before the fallback layer
    /// names them: give it the name the fallback layer gives its primary, and both stages
    /// count the same answers under the same tier (the [`stack`](crate::stack) does this).
    pub fn primary_tier(mut self, name: impl Into<Cow<'static, str>>) -> Self {
        self.primary.name = crate::name::intern(name.into());
        self
    }

    /// Also writes the primary tier's name on the answers that name no tier (for a stack
    /// with no fallback layer to do it).
    pub(crate) fn names_answers(mut self) -> Self {
        self.primary.names_answers = true;
        self
    }

    /// How results are classified (default [`DefaultClassifier`]).
    pub fn classifier<C2>(self, classifier: C2) -> MetricsLayer<C2, P, O> {
        MetricsLayer {
            stage: self.stage,
            primary: self.primary,
            classifier,
            provenance: self.provenance,
            operation: self.operation,
        }
    }

    /// For responses that do not implement [`Annotate`]: count every answer as the primary's.
    pub fn without_provenance(self) -> MetricsLayer<C, NoProvenance, O> {
        MetricsLayer {
            stage: self.stage,
            primary: self.primary,
            classifier: self.classifier,
            provenance: NoProvenance,
            operation: self.operation,
        }
    }

    /// Labels each request's operation (e.g. the model or route), for the top error patterns
    /// (default: the stage's name). Computed on every call; keep it cheap.
    pub fn operation<F>(self, label: F) -> MetricsLayer<C, P, LabelFn<F>> {
        MetricsLayer {
            stage: self.stage,
            primary: self.primary,
            classifier: self.classifier,
            provenance: self.provenance,
            operation: LabelFn(label),
        }
    }
}

impl<S, C: Clone, P: Clone, O: Clone> Layer<S> for MetricsLayer<C, P, O> {
    type Service = Metrics<S, C, P, O>;

    fn layer(&self, inner: S) -> Self::Service {
        Metrics::new(
            inner,
            self.stage.clone(),
            self.primary.clone(),
            self.classifier.clone(),
            self.provenance.clone(),
            self.operation.clone(),
        )
    }
}

/// What a metrics layer's response futures share.
#[derive(Clone)]
struct Shares<C, P> {
    stage: Arc<Stage>,
    primary: PrimaryTier,
    classifier: C,
    provenance: P,
}

/// [`Shares`] on its own cache lines, as response futures hold it.
type Local<C, P> = Homed<Shares<C, P>>;

/// The service a [`MetricsLayer`] makes.
pub struct Metrics<S, C, P, O> {
    inner: S,
    local: PerThread<Shares<C, P>>,
    operation: O,
}

impl<S, C, P, O> Metrics<S, C, P, O> {
    fn new(
        inner: S,
        stage: Arc<Stage>,
        primary: PrimaryTier,
        classifier: C,
        provenance: P,
        operation: O,
    ) -> Self {
        Metrics {
            inner,
            local: PerThread::new(Shares {
                stage,
                primary,
                classifier,
                provenance,
            }),
            operation,
        }
    }
}

impl<S: Clone, C: Clone, P: Clone, O: Clone> Clone for Metrics<S, C, P, O> {
    fn clone(&self) -> Self {
        Metrics {
            inner: self.inner.clone(),
            local: self.local.clone(),
            operation: self.operation.clone(),
        }
    }
}

impl<S: std::fmt::Debug, C, P, O> std::fmt::Debug for Metrics<S, C, P, O> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics")
            .field("inner", &self.inner)
            .field("stage", &self.local.stage.name)
            .finish()
    }
}

impl<S, C, P, O, Req> Service<Req> for Metrics<S, C, P, O>
where
    S: Service<Req>,
    S::Response: 'static,
    C: Classify<S::Response, S::Error> + Clone,
    P: ReadProvenance<S::Response> + Clone,
    O: OperationLabel<Req>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future, C, P, O::Label>;

    #[inline(always)]
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    #[inline(always)]
    fn call(&mut self, req: Req) -> Self::Future {
        let operation = self.operation.label(&req);
        // Built in place (fields are evaluated in the order written), so the inner future is
        // not moved once more.
        ResponseFuture {
            fut: {
                crate::clock::calling();
                self.inner.call(req)
            },
            // Counted once the inner call returned: a `call` that panics leaves nothing in
            // flight.
            local: {
                let local = self.local.here().clone();
                local.stage.start();
                local
            },
            operation,
            started: crate::clock::called(),
            done: false,
        }
    }
}

pin_project! {
    /// The response future of [`Metrics`]; `L` is what the call keeps of its operation label.
    pub struct ResponseFuture<F, C, P, L = ()> {
        #[pin]
        fut: F,
        local: Arc<Local<C, P>>,
        operation: L,
        started: Instant,
        done: bool,
    }

    impl<F, C, P, L> PinnedDrop for ResponseFuture<F, C, P, L> {
        fn drop(this: Pin<&mut Self>) {
            // Dropped before it completed: the caller hung up (or a timeout cut it).
            if !this.done {
                this.local.stage.cancel();
            }
        }
    }
}

impl<F, C, P, L> std::fmt::Debug for ResponseFuture<F, C, P, L> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ResponseFuture")
            .field("stage", &self.local.stage.name)
            .finish()
    }
}

impl<F, C, P, L, T, E> Future for ResponseFuture<F, C, P, L>
where
    L: KeptLabel,
    F: Future<Output = Result<T, E>>,
    T: 'static,
    C: Classify<T, E>,
    P: ReadProvenance<T>,
{
    type Output = Result<T, E>;

    #[inline(always)]
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        crate::clock::polling();
        let mut result = ready!(this.fut.poll(cx));
        let finished = crate::clock::polled();
        let local = &**this.local;
        let kind = local.classifier.classify(result.as_ref()).kind();
        let provenance = result
            .as_ref()
            .ok()
            .and_then(|res| local.provenance.read(res));
        let latency = finished.saturating_duration_since(*this.started);
        local.stage.record(
            kind,
            latency,
            provenance,
            this.operation.as_label(),
            &local.primary.name,
        );
        // A stream that started: its wait was the time to first token; its chunks and its
        // end are watched.
        if kind.is_none()
            && let Ok(res) = &mut result
            && let Some(stream) = crate::stream::as_stream(res)
        {
            let watch = StreamStats::started(&local.stage, latency, finished);
            stream.watch(Box::new(watch));
        }
        // Only now: a classifier or provenance reader that panics counts as a cancel.
        *this.done = true;
        if local.primary.names_answers
            && let Ok(res) = &mut result
        {
            local.provenance.name_tier(res, &local.primary.name);
        }
        Poll::Ready(result)
    }
}
