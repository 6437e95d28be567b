//! Events reach sinks (closures, Arcs) and tracing.

use std::sync::{Arc, Mutex};

mod support;
use support::all_events;
use tower_inference::{Emitter, ErrorKind, Event, EventSink, NoopSink, Quality};

#[derive(Default)]
struct Recorder(Mutex<Vec<String>>);

impl EventSink for Recorder {
    fn on_event(&self, event: &Event<'_>) {
        self.0
            .lock()
            .unwrap()
            .push(format!("{}:{event:?}", event.name()));
    }
}

#[test]
fn a_shared_sink_sees_every_event_in_order() {
    let recorder = Arc::new(Recorder::default());
    let emitter = Emitter::new(recorder.clone());
    let quality = Quality::Stale;
    for event in all_events(&quality) {
        emitter.emit(&event);
    }
    let names: Vec<_> = recorder
        .0
        .lock()
        .unwrap()
        .iter()
        .map(|s| s.split(':').next().unwrap().to_owned())
        .collect();
    assert_eq!(
        names,
        [
            "breaker_transition",
            "call_rejected",
            "retry_scheduled",
            "budget_exhausted",
            "tier_served",
            "tier_failed",
            "cache_failed",
            "level_changed"
        ]
    );
}

#[test]
fn clones_of_an_emitter_share_the_sink() {
    let seen = Arc::new(Mutex::new(0));
    let counter = seen.clone();
    let emitter = Emitter::new(move |_: &Event<'_>| *counter.lock().unwrap() += 1);
    let clone = emitter.clone();
    emitter.emit(&Event::BudgetExhausted {
        kind: ErrorKind::Timeout,
    });
    clone.emit(&Event::BudgetExhausted {
        kind: ErrorKind::Timeout,
    });
    assert_eq!(*seen.lock().unwrap(), 2);
}

#[test]
fn noop_emitters_accept_every_event() {
    let quality = Quality::Full;
    for emitter in [Emitter::noop(), Emitter::default(), Emitter::new(NoopSink)] {
        for event in all_events(&quality) {
            emitter.emit(&event);
        }
    }
    assert_eq!(format!("{:?}", Emitter::noop()), "Emitter { sink: None }");
}
