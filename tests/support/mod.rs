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
