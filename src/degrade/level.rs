//! Degradation levels and the hysteresis that moves between them.

use std::borrow::Cow;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::*};
use std::time::Duration;

use crate::params::Scale;
use crate::setting;

/// A degradation level: from which load it applies, and how much it scales requests down.
#[derive(Debug, Clone, PartialEq)]
pub struct Level {
    /// The level's name, in provenance, events and metrics.
    pub name: Cow<'static, str>,
    /// The load (in `0..=1`) from which this level applies.
    pub threshold: f64,
    /// How requests are scaled at this level.
    pub scale: Scale,
}

impl Level {
    /// A level named `name` from load `threshold` (0 to 1; NaN is taken as 1), scaling
    /// requests by `quality` and `speed` (see [`Scale::new`]).
    pub fn new(
        name: impl Into<Cow<'static, str>>,
        threshold: f64,
        quality: f64,
        speed: f64,
    ) -> Self {
        Level {
            name: crate::name::intern(name.into()),
            threshold: setting::share("degrade level threshold", threshold, 1.0),
            scale: Scale::new(quality, speed),
        }
    }

    /// The default levels: `full` below 0.7, `reduced` from 0.7 (quality 0.7, speed 1.5),
    /// `minimal` from 0.9 (quality 0.4, speed 3.0).
    pub fn defaults() -> Vec<Level> {
        vec![
            Level::new("full", 0.0, 1.0, 1.0),
            Level::new("reduced", 0.7, 0.7, 1.5),
            Level::new("minimal", 0.9, 0.4, 3.0),
        ]
    }
}

/// Index value meaning "no level forced".
const NOT_FORCED: usize = usize::MAX;

/// Which level is current, and since when the load has been low enough to step down.
#[derive(Debug)]
pub(crate) struct Levels {
    pub(crate) levels: Vec<Level>,
    margin: f64,
    dwell_nanos: u64,
    current: AtomicUsize,
    forced: AtomicUsize,
    /// Nanoseconds (plus one; zero is "not below") since the load went below the current
    /// level's threshold minus the margin.
    below_since: AtomicU64,
    /// Nanoseconds (plus one; zero is "never") when a call last found the load within the
    /// current (degraded) level's band, or raised the level.
    busy_at: AtomicU64,
}

/// A level change to report.
pub(crate) struct Change {
    pub(crate) from: usize,
    pub(crate) to: usize,
}

impl Levels {
    /// Levels sorted by threshold; the first always applies from load 0.
    pub(crate) fn new(mut levels: Vec<Level>, margin: f64, dwell: Duration) -> Self {
        if levels.is_empty() {
            levels = Level::defaults();
        }
        levels.sort_by(|a, b| a.threshold.total_cmp(&b.threshold));
        levels[0].threshold = 0.0;
        Levels {
            levels,
            margin: if margin.is_nan() {
                0.0
            } else {
                margin.clamp(0.0, 1.0)
            },
            dwell_nanos: u64::try_from(dwell.as_nanos()).unwrap_or(u64::MAX),
            current: AtomicUsize::new(0),
            forced: AtomicUsize::new(NOT_FORCED),
            below_since: AtomicU64::new(0),
            busy_at: AtomicU64::new(0),
        }
    }

    pub(crate) fn current(&self) -> usize {
        match self.forced.load(Relaxed) {
            NOT_FORCED => self.current.load(Relaxed),
            forced => forced,
        }
    }

    pub(crate) fn force(&self, level: Option<usize>) {
        self.forced.store(level.unwrap_or(NOT_FORCED), Relaxed);
    }

    /// The highest level whose threshold, lowered by `margin`, the load reaches.
    fn level_for(&self, load: f64, margin: f64) -> usize {
        self.levels
            .iter()
            .rposition(|l| load >= l.threshold - margin)
            .unwrap_or(0)
    }

    /// Moves to the level `load` calls for: up at once, down only after the load has stayed
    /// below the current level's threshold minus the margin for the dwell time. A quiet spell
    /// counts as that time: when no call found the level busy for a dwell, the first call that
    /// finds the load low steps down at once. `now` reads the clock; it is called when the
    /// level rises, when stepping down is in question, and on every call while degraded (never
    /// at the lowest level with the load in its band, the healthy path).
    pub(crate) fn update(&self, load: f64, now: impl Fn() -> u64) -> (usize, Option<Change>) {
        let current = self.current.load(Relaxed);
        let up = self.level_for(load, 0.0);
        let next = if up > current {
            self.below_since.store(0, Relaxed);
            self.busy_at.store(now().saturating_add(1), Relaxed);
            up
        } else if up == current || load >= self.levels[current].threshold - self.margin {
            // Within the current level's band, or inside the margin below it.
            if self.below_since.load(Relaxed) != 0 {
                self.below_since.store(0, Relaxed);
            }
            if current > 0 {
                // Degraded: a clock reading per call is cheap next to what is being shed.
                self.busy_at.store(now().saturating_add(1), Relaxed);
            }
            current
        } else {
            let now = now().saturating_add(1);
            let since = self.below_since.load(Relaxed);
            let idle = now.saturating_sub(self.busy_at.load(Relaxed)) >= self.dwell_nanos;
            if since == 0 && !idle {
                let _ = self.below_since.compare_exchange(0, now, Relaxed, Relaxed);
                current
            } else if idle || now.saturating_sub(since) >= self.dwell_nanos {
                self.below_since.store(now, Relaxed);
                self.busy_at.store(now, Relaxed);
                self.level_for(load, self.margin).min(current)
            } else {
                current
            }
        };
        if next != current
            && self
                .current
                .compare_exchange(current, next, Relaxed, Relaxed)
                .is_ok()
        {
            return (
                self.current(),
                Some(Change {
                    from: current,
                    to: next,
                }),
            );
        }
        (self.current(), None)
    }
}
