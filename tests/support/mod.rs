//! Helpers shared by the integration tests.
#![allow(dead_code)]

use std::time::Duration;

use tower_inference::{CircuitState, ErrorKind, Event, Quality};

/// One event of each kind, in declaration order.
pub fn all_events(quality: &Quality) -> Vec<Event<'_>> {
    vec![
        Event::BreakerTransition {
            breaker: "b",
            from: CircuitState::Closed,
            to: CircuitState::Open,
        },
        Event::CallRejected {
            breaker: "b",
            retry_in: Duration::from_secs(3),
        },
        Event::RetryScheduled {
            attempt: 2,
            kind: ErrorKind::Timeout,
            delay: Duration::from_millis(50),
        },
        Event::BudgetExhausted {
            kind: ErrorKind::Overloaded,
        },
        Event::TierServed {
            tier: "cache",
            quality,
            fallback: true,
        },
        Event::TierFailed {
            tier: "primary",
            kind: ErrorKind::Infrastructure,
        },
        Event::CacheFailed {
            tier: "cache",
            operation: "write",
        },
        Event::LevelChanged {
            from: "full",
            to: "reduced",
            load: 0.75,
        },
    ]
}

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use tower::{Service, service_fn};
use tower_inference::InferenceError;

/// What a test backend does with one call.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Call {
    /// Succeed at once.
    Ok,
    /// Fail with an infrastructure error (a backend fault).
    Fail,
    /// Fail with a context-length error (the caller's fault).
    Caller,
    /// Succeed after a delay.
    Slow(Duration),
    /// Fail after a delay.
    SlowFail(Duration),
    /// Never answer.
    Hang,
}

/// A backend that does what each [`Call`] says and counts the calls that reach it.
pub fn backend(
    calls: Arc<AtomicUsize>,
) -> impl Service<Call, Response = &'static str, Error = InferenceError, Future: Send> + Clone + Send
{
    service_fn(move |call: Call| {
        calls.fetch_add(1, Ordering::SeqCst);
        async move {
            match call {
                Call::Ok => Ok("ok"),
                Call::Fail => Err(InferenceError::infrastructure()),
                Call::Caller => Err(InferenceError::ContextLengthExceeded { input: 9, max: 8 }),
                Call::Slow(d) => {
                    tokio::time::sleep(d).await;
                    Ok("slow")
                }
                Call::SlowFail(d) => {
                    tokio::time::sleep(d).await;
                    Err(InferenceError::infrastructure())
                }
                Call::Hang => std::future::pending().await,
            }
        }
    })
}

/// One `tracing` event as a [`Traced`] subscriber saw it.
#[derive(Debug, Clone)]
pub struct TracedEvent {
    pub level: tracing::Level,
    pub target: String,
    /// The fields, as `(name, value)`; strings as they are, other values in `Debug` form.
    pub fields: Vec<(String, String)>,
}

impl TracedEvent {
    /// The value of the field `name`, if the event has it.
    pub fn field(&self, name: &str) -> Option<&str> {
        self.fields
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// A tracing subscriber that records every event. Use it in a test binary of its own:
/// tracing caches per-callsite interest process-wide, so a scoped subscriber must not race
/// other tests that hit the same callsites.
#[derive(Default, Clone)]
pub struct Traced(pub Arc<std::sync::Mutex<Vec<TracedEvent>>>);

impl Traced {
    /// The events recorded so far.
    pub fn events(&self) -> Vec<TracedEvent> {
        self.0.lock().unwrap().clone()
    }
}

impl tracing::Subscriber for Traced {
    fn enabled(&self, _: &tracing::Metadata<'_>) -> bool {
        true
    }
    fn new_span(&self, _: &tracing::span::Attributes<'_>) -> tracing::span::Id {
        tracing::span::Id::from_u64(1)
    }
    fn record(&self, _: &tracing::span::Id, _: &tracing::span::Record<'_>) {}
    fn record_follows_from(&self, _: &tracing::span::Id, _: &tracing::span::Id) {}
    fn event(&self, event: &tracing::Event<'_>) {
        struct Visit(Vec<(String, String)>);
        impl tracing::field::Visit for Visit {
            fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
                self.0.push((field.name().to_owned(), format!("{value:?}")));
            }
            fn record_str(&mut self, field: &tracing::field::Field, value: &str) {
                self.0.push((field.name().to_owned(), value.to_owned()));
            }
        }
        let mut visit = Visit(Vec::new());
        event.record(&mut visit);
        self.0.lock().unwrap().push(TracedEvent {
            level: *event.metadata().level(),
            target: event.metadata().target().to_owned(),
            fields: visit.0,
        });
    }
    fn enter(&self, _: &tracing::span::Id) {}
    fn exit(&self, _: &tracing::span::Id) {}
}

/// One error of each kind, in `ErrorKind::ALL`'s order.
pub fn one_of_each() -> Vec<InferenceError> {
    vec![
        InferenceError::invalid_input("the prompt must not be empty"),
        InferenceError::ContextLengthExceeded {
            input: 5000,
            max: 4096,
        },
        InferenceError::ModelNotReady {
            retry_after: Some(Duration::from_millis(1500)),
        },
        InferenceError::timeout(Duration::from_secs(30)),
        InferenceError::OutOfMemory {
            used_mib: 23_000,
            available_mib: 512,
        },
        InferenceError::ModelFailure {
            failure: tower_inference::ModelFailure::NanOutput,
        },
        InferenceError::infrastructure(),
        InferenceError::Overloaded {
            queue_depth: 12,
            retry_after: Some(Duration::from_secs(2)),
        },
        InferenceError::CircuitOpen {
            retry_in: Duration::from_secs(30),
        },
        InferenceError::Exhausted {
            tiers: vec![
                tower_inference::TierFailure::new("primary", ErrorKind::Timeout),
                tower_inference::TierFailure::new("light", ErrorKind::CircuitOpen),
            ],
        },
    ]
}
