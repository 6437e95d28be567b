//! Every event is also a `tracing` event with structured fields.
//!
//! In a test binary of its own: tracing caches per-callsite interest process-wide, so a
//! scoped subscriber must not race other tests that hit the same callsites.

mod support;
use support::{Traced, all_events};
use tower_inference::{Emitter, Quality};

#[test]
fn every_event_is_traced_with_structured_fields() {
    let recorder = Traced::default();
    let quality = Quality::Stale;
    tracing::subscriber::with_default(recorder.clone(), || {
        for event in all_events(&quality) {
            Emitter::noop().emit(&event);
        }
    });
    let events = recorder.events();
    assert!(events.iter().all(|e| e.target == "tower_inference"));
    let lines: Vec<String> = events
        .iter()
        .map(|e| {
            let fields: Vec<String> = e.fields.iter().map(|(n, v)| format!("{n}={v}")).collect();
            fields.join(" ")
        })
        .collect();
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
