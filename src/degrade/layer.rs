//! [`DegradeLayer`], its builder and [`DegradeHandle`].

use std::sync::Arc;
use std::time::Duration;

use tower_layer::Layer;

use super::level::{Change, Level, Levels};
use super::service::Degrade;
use super::signal::{Probe, Signals};
use crate::error::InferenceError;
use crate::event::{Emitter, Event, EventSink};
use crate::setting;

/// What every service of one degrade layer shares.
#[derive(Debug)]
pub(crate) struct Shared {
    pub(crate) signals: Signals,
    pub(crate) levels: Levels,
    pub(crate) emitter: Emitter,
}

impl Shared {
    /// The level for a call now entering, with `in_flight` calls counted (this one included).
    #[inline]
    pub(crate) fn level(&self, in_flight: usize) -> usize {
        let load = self.signals.load(in_flight);
        let (level, change) = self.levels.update(load, || self.signals.nanos());
        if let Some(Change { from, to }) = change {
            self.emitter.emit(&Event::LevelChanged {
                from: &self.levels.levels[from].name,
                to: &self.levels.levels[to].name,
                load,
            });
        }
        level
    }
}

/// Makes requests cheaper as load rises. See the [module docs](crate::degrade).
#[derive(Debug, Clone)]
pub struct DegradeLayer {
    shared: Arc<Shared>,
}

impl DegradeLayer {
    /// A builder: no signal yet, the default levels, a 0.1 margin and a 10 s dwell.
    pub fn builder() -> DegradeBuilder {
        DegradeBuilder {
            capacity: None,
            latency: None,
            alpha: 0.2,
            probes: Vec::new(),
            levels: Level::defaults(),
            margin: 0.1,
            dwell: Duration::from_secs(10),
            emitter: Emitter::noop(),
        }
    }

    /// The handle shared by this layer and every service it makes.
    pub fn handle(&self) -> DegradeHandle {
        DegradeHandle {
            shared: self.shared.clone(),
        }
    }
}

impl<S> Layer<S> for DegradeLayer {
    type Service = Degrade<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Degrade::new(inner, self.shared.clone())
    }
}

/// Configures a [`DegradeLayer`]; every setting documents its default.
pub struct DegradeBuilder {
    capacity: Option<usize>,
    latency: Option<Duration>,
    alpha: f64,
    probes: Vec<Probe>,
    levels: Vec<Level>,
    margin: f64,
    dwell: Duration,
    emitter: Emitter,
}

impl std::fmt::Debug for DegradeBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DegradeBuilder")
            .field("capacity", &self.capacity)
            .field("latency", &self.latency)
            .field("probes", &self.probes.len())
            .field("levels", &self.levels)
            .field("margin", &self.margin)
            .field("dwell", &self.dwell)
            .finish()
    }
}

impl DegradeBuilder {
    /// Load from requests in flight through the layer: `in_flight / capacity` (default: off;
    /// a capacity of 0 is taken as 1).
    ///
    /// The count a call sees is within 1/16 of the capacity of the exact one (exact below a
    /// capacity of 16): threads count on their own cache lines and add to a shared total
    /// only when their count has moved by their share of that (see the
    /// [module docs](crate::degrade#cost)).
    pub fn in_flight_capacity(mut self, capacity: usize) -> Self {
        self.capacity = Some(setting::at_least("degrade.in_flight_capacity", capacity, 1));
        self
    }

    /// Load from latency: an exponentially weighted moving average of call latency against
    /// `target` (default: off; at least 1 ms). `alpha` in `(0, 1]` weighs the newest call
    /// (default 0.2; NaN is taken as the default).
    pub fn latency_target(mut self, target: Duration, alpha: f64) -> Self {
        self.latency = Some(setting::at_least(
            "degrade.latency_target",
            target,
            Duration::from_millis(1),
        ));
        self.alpha = setting::within(
            "degrade.latency_target alpha",
            alpha,
            f64::MIN_POSITIVE,
            1.0,
            0.2,
        );
        self
    }

    /// Load from an external probe returning `0..=1`, such as GPU memory or utilisation,
    /// read at most once every `interval` (not on every call).
    pub fn probe<F>(mut self, interval: Duration, probe: F) -> Self
    where
        F: Fn() -> f64 + Send + Sync + 'static,
    {
        self.probes.push(Probe::new(interval, Arc::new(probe)));
        self
    }

    /// The levels (default [`Level::defaults`]). They are sorted by threshold and the lowest
    /// applies from load 0; an empty list keeps the defaults.
    pub fn levels(mut self, levels: impl IntoIterator<Item = Level>) -> Self {
        self.levels = levels.into_iter().collect();
        self
    }

    /// Hysteresis: the load must fall this far below a level's threshold (default 0.1; 0 to
    /// 1, NaN taken as the default) for `dwell` (default 10 s) before the layer steps down; it
    /// steps up at once.
    pub fn hysteresis(mut self, margin: f64, dwell: Duration) -> Self {
        self.margin = setting::share("degrade.hysteresis margin", margin, 0.1);
        self.dwell = dwell;
        self
    }

    /// Where level changes are reported (default: `tracing` only).
    pub fn event_sink(mut self, sink: impl EventSink) -> Self {
        self.emitter = Emitter::new(sink);
        self
    }

    /// The stack's emitter, shared as it is (no extra indirection per event).
    pub(crate) fn emitter(mut self, emitter: Emitter) -> Self {
        self.emitter = emitter;
        self
    }

    /// Builds the layer.
    pub fn build(self) -> DegradeLayer {
        DegradeLayer {
            shared: Arc::new(Shared {
                signals: Signals::new(self.capacity, self.latency, self.alpha, self.probes),
                levels: Levels::new(self.levels, self.margin, self.dwell),
                emitter: self.emitter,
            }),
        }
    }
}

/// Reads and drives a degrade layer: the current level and load; force a level for a drill.
///
/// ```
/// use tower_inference::degrade::DegradeLayer;
///
/// let layer = DegradeLayer::builder().in_flight_capacity(32).build();
/// let handle = layer.handle();
/// assert_eq!(handle.level(), "full");
/// handle.force("minimal").unwrap();
/// assert_eq!(handle.level(), "minimal");
/// assert!(handle.force("nonexistent").is_err());
/// handle.release();
/// assert_eq!(handle.level(), "full");
/// ```
#[derive(Debug, Clone)]
pub struct DegradeHandle {
    shared: Arc<Shared>,
}

impl DegradeHandle {
    /// The current level's name.
    pub fn level(&self) -> &str {
        let levels = &self.shared.levels;
        &levels.levels[levels.current()].name
    }

    /// The load now, in `0..=1`, from every signal (probes as last sampled).
    pub fn load(&self) -> f64 {
        let signals = &self.shared.signals;
        signals.load(signals.in_flight())
    }

    /// Requests in flight through the layer now.
    pub fn in_flight(&self) -> usize {
        self.shared.signals.in_flight()
    }

    /// Holds the layer at the level named `level` until [`release`](Self::release).
    pub fn force(&self, level: &str) -> Result<(), InferenceError> {
        let levels = &self.shared.levels;
        let index = levels
            .levels
            .iter()
            .position(|l| l.name == level)
            .ok_or_else(|| {
                InferenceError::invalid_input(format!(
                    "there is no degradation level named {level:?}"
                ))
            })?;
        self.forcing(Some(index));
        Ok(())
    }

    /// Lets the load decide the level again.
    pub fn release(&self) {
        self.forcing(None);
    }

    /// Forces (or releases) a level, reporting the change as a `LevelChanged` event.
    fn forcing(&self, level: Option<usize>) {
        let levels = &self.shared.levels;
        let from = levels.current();
        levels.force(level);
        let to = levels.current();
        if from != to {
            self.shared.emitter.emit(&Event::LevelChanged {
                from: &levels.levels[from].name,
                to: &levels.levels[to].name,
                load: self.load(),
            });
        }
    }
}
