//! An event is traced whenever its level is on: the level check made before an event is
//! traced agrees with the level it is traced at, whatever the subscriber's maximum level.
//!
//! In a test binary of its own: tracing's maximum level and callsite interest are
//! process-wide.

mod support;

use support::{Traced, all_events};
use tower_inference::{Emitter, Event, Quality};
use tracing::level_filters::LevelFilter;

/// A [`Traced`] subscriber that says it wants nothing above `max`.
#[derive(Clone)]
struct Capped {
    traced: Traced,
    max: LevelFilter,
}

impl tracing::Subscriber for Capped {
    fn enabled(&self, metadata: &tracing::Metadata<'_>) -> bool {
        self.traced.enabled(metadata)
    }
    fn max_level_hint(&self) -> Option<LevelFilter> {
        Some(self.max)
    }
    fn new_span(&self, attributes: &tracing::span::Attributes<'_>) -> tracing::span::Id {
        self.traced.new_span(attributes)
    }
    fn record(&self, span: &tracing::span::Id, values: &tracing::span::Record<'_>) {
        self.traced.record(span, values)
    }
    fn record_follows_from(&self, span: &tracing::span::Id, follows: &tracing::span::Id) {
        self.traced.record_follows_from(span, follows)
    }
    fn event(&self, event: &tracing::Event<'_>) {
        self.traced.event(event)
    }
    fn enter(&self, span: &tracing::span::Id) {
        self.traced.enter(span)
    }
    fn exit(&self, span: &tracing::span::Id) {
        self.traced.exit(span)
    }
}

/// Every event, with the one a primary answer reports, emitted under a subscriber that wants
/// nothing above `max`; returns the events traced, as `(event name, level)`.
fn traced_under(max: LevelFilter) -> Vec<(String, tracing::Level)> {
    let quality = Quality::Full;
    let mut events = all_events(&quality);
    events.push(Event::TierServed {
        tier: "primary",
        quality: &quality,
        fallback: false,
    });
    let capped = Capped {
        traced: Traced::default(),
        max,
    };
    tracing::subscriber::with_default(capped.clone(), || {
        for event in &events {
            Emitter::noop().emit(event);
        }
    });
    capped
        .traced
        .events()
        .into_iter()
        .map(|e| (e.field("event").unwrap_or_default().to_owned(), e.level))
        .collect()
}

#[test]
fn no_event_is_lost_at_any_maximum_level() {
    let all = traced_under(LevelFilter::TRACE);
    assert_eq!(all.len(), 9, "every event is traced at TRACE: {all:?}");
    for max in [
        LevelFilter::OFF,
        LevelFilter::ERROR,
        LevelFilter::WARN,
        LevelFilter::INFO,
        LevelFilter::DEBUG,
    ] {
        let expected: Vec<_> = all
            .iter()
            .filter(|(_, level)| *level <= max)
            .cloned()
            .collect();
        assert_eq!(traced_under(max), expected, "at {max}");
    }
}
