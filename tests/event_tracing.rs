//! Every event is also a `tracing` event with structured fields.
//!
//! In a test binary of its own: tracing caches per-callsite interest process-wide, so a
//! scoped subscriber must not race other tests that hit the same callsites.

use std::sync::{Arc, Mutex};

mod support;
use support::all_events;
use tower_inference::{Emitter, Quality};

/// A tracing subscriber that records each event's `event` field.
#[derive(Default, Clone)]
struct FieldRecorder(Arc<Mutex<Vec<String>>>);

impl tracing::Subscriber for FieldRecorder {
    fn enabled(&self, _: &tracing::Metadata<'_>) -> bool {
        true
    }
    fn new_span(&self, _: &tracing::span::Attributes<'_>) -> tracing::span::Id {
        tracing::span::Id::from_u64(1)
    }
    fn record(&self, _: &tracing::span::Id, _: &tracing::span::Record<'_>) {}
    fn record_follows_from(&self, _: &tracing::span::Id, _: &tracing::span::Id) {}
    fn event(&self, event: &tracing::Event<'_>) {
        struct Visit(Vec<String>);
        impl tracing::field::Visit for Visit {
            fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
                self.0.push(format!("{}={value:?}", field.name()));
            }
            fn record_str(&mut self, field: &tracing::field::Field, value: &str) {
                self.0.push(format!("{}={value}", field.name()));
            }
        }
        let mut visit = Visit(Vec::new());
        event.record(&mut visit);
        assert_eq!(event.metadata().target(), "tower_inference");
        self.0.lock().unwrap().push(visit.0.join(" "));
    }
    fn enter(&self, _: &tracing::span::Id) {}
    fn exit(&self, _: &tracing::span::Id) {}
}

#[test]
fn every_event_is_traced_with_structured_fields() {
    let recorder = FieldRecorder::default();
    let quality = Quality::Stale;
    tracing::subscriber::with_default(recorder.clone(), || {
        for event in all_events(&quality) {
            Emitter::noop().emit(&event);
        }
    });
    let lines = recorder.0.lock().unwrap().clone();
    assert_eq!(lines.len(), 8, "{lines:#?}");
    assert!(
        lines[0].contains("event=breaker_transition")
            && lines[0].contains("from=closed")
            && lines[0].contains("to=open"),
        "{}",
        lines[0]
    );
    assert!(
        lines[2].contains("attempt=2")
            && lines[2].contains("kind=timeout")
            && lines[2].contains("delay_ms=50"),
        "{}",
        lines[2]
    );
    assert!(
        lines[4].contains("tier=cache") && lines[4].contains("quality=stale"),
        "{}",
        lines[4]
    );
    assert!(lines[6].contains("operation=write"), "{}", lines[6]);
    assert!(lines[7].contains("load=0.75"), "{}", lines[7]);
}
