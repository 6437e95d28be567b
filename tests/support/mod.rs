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
        Event::LevelChanged {
            from: "full",
            to: "reduced",
            load: 0.75,
        },
    ]
}
