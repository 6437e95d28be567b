//! The error taxonomy: every kind's code, status, retryability and fault; error bodies.

use std::error::Error as _;
use std::time::Duration;

mod support;

use support::one_of_each;
use tower_inference::{ErrorBody, ErrorKind, InferenceError};

#[test]
fn taxonomy_table() {
    // kind, code, status, retryable, caller fault
    let table = [
        (ErrorKind::InvalidInput, "invalid_input", 400, false, true),
        (
            ErrorKind::ContextLengthExceeded,
            "context_length_exceeded",
            400,
            false,
            true,
        ),
        (
            ErrorKind::ModelNotReady,
            "model_not_ready",
            503,
            true,
            false,
        ),
        (ErrorKind::Timeout, "timeout", 504, true, false),
        (ErrorKind::OutOfMemory, "out_of_memory", 507, false, false),
        (ErrorKind::ModelFailure, "model_failure", 500, false, false),
        (
            ErrorKind::Infrastructure,
            "infrastructure",
            503,
            true,
            false,
        ),
        (ErrorKind::Overloaded, "overloaded", 429, true, false),
        (ErrorKind::CircuitOpen, "circuit_open", 503, false, false),
        (ErrorKind::Exhausted, "exhausted", 503, false, false),
    ];
    assert_eq!(table.len(), ErrorKind::ALL.len());
    for (kind, code, status, retryable, caller) in table {
        assert_eq!(kind.code(), code, "{kind:?}");
        assert_eq!(kind.to_string(), code);
        assert_eq!(kind.http_status(), status, "{kind:?}");
        assert_eq!(kind.is_retryable(), retryable, "{kind:?}");
        assert_eq!(kind.is_caller_fault(), caller, "{kind:?}");
        assert!(!(kind.is_retryable() && kind.is_caller_fault()), "{kind:?}");
        let json = serde_json::to_string(&kind).unwrap();
        assert_eq!(json, format!("\"{code}\""));
        assert_eq!(serde_json::from_str::<ErrorKind>(&json).unwrap(), kind);
    }
}

#[test]
fn every_variant_has_its_kind() {
    let kinds: Vec<_> = one_of_each().iter().map(InferenceError::kind).collect();
    assert_eq!(kinds, ErrorKind::ALL.to_vec());
}

#[test]
fn messages_are_actionable() {
    let messages: Vec<_> = one_of_each().iter().map(ToString::to_string).collect();
    assert_eq!(
        messages,
        [
            "invalid request: the prompt must not be empty",
            "the input is 5000 tokens long, more than the model's context of 4096 tokens; shorten the input",
            "the model is still loading; retry shortly",
            "the model did not answer within 30s; retry, or ask for fewer tokens",
            "the model ran out of memory (512 MiB free); retry with a smaller request (fewer tokens, smaller batch or resolution)",
            "the model failed to produce a valid answer: its output contained invalid numbers",
            "the inference backend is unavailable; retry later",
            "the model is overloaded (12 requests waiting); retry later",
            "the model is temporarily unavailable; retry in 30s",
            "the service is degraded and could not answer; retry later",
        ]
    );
}

#[test]
fn infrastructure_source_is_kept_for_logs_but_never_shown() {
    let cause = std::io::Error::other("connect to 10.0.0.7:8000 refused (/srv/model/weights.bin)");
    let err = InferenceError::infrastructure_with_source(cause);
    assert_eq!(
        err.to_string(),
        "the inference backend is unavailable; retry later"
    );
    let body = serde_json::to_string(&err.to_body()).unwrap();
    assert!(!body.contains("10.0.0.7"), "{body}");
    assert!(!body.contains("/srv"), "{body}");
    let source = err.source().expect("source kept for logs");
    assert!(source.to_string().contains("refused"));
}

#[test]
fn error_body_json() {
    let err = InferenceError::Overloaded {
        queue_depth: 12,
        retry_after: Some(Duration::from_millis(1200)),
    };
    let body = err.to_body().with_correlation_id("req-7");
    let json = serde_json::to_value(&body).unwrap();
    assert_eq!(
        json,
        serde_json::json!({
            "message": "the model is overloaded (12 requests waiting); retry later",
            "code": "overloaded",
            "retryable": true,
            "details": { "queue_depth": 12 },
            "correlation_id": "req-7",
            "retry_after_secs": 2
        })
    );
    let back: ErrorBody = serde_json::from_value(json).unwrap();
    assert_eq!(back, body);
}

#[test]
fn error_body_omits_what_is_unset() {
    let json = serde_json::to_value(InferenceError::infrastructure().to_body()).unwrap();
    assert_eq!(
        json,
        serde_json::json!({
            "message": "the inference backend is unavailable; retry later",
            "code": "infrastructure",
            "retryable": true
        })
    );
}

#[test]
fn error_body_details_per_variant() {
    let details: Vec<_> = one_of_each()
        .iter()
        .map(|e| serde_json::to_value(ErrorBody::from(e)).unwrap()["details"].clone())
        .collect();
    assert_eq!(
        details[1],
        serde_json::json!({ "input_tokens": 5000, "max_tokens": 4096 })
    );
    assert_eq!(details[3], serde_json::json!({ "timeout_ms": 30000 }));
    assert_eq!(
        details[4],
        serde_json::json!({ "used_mib": 23000, "available_mib": 512 })
    );
    assert_eq!(details[5], serde_json::json!({ "failure": "nan_output" }));
    assert_eq!(
        details[9],
        serde_json::json!({ "tiers": [
            { "tier": "primary", "kind": "timeout" },
            { "tier": "light", "kind": "circuit_open" }
        ] })
    );
}

#[test]
fn retry_after_rounds_up_and_comes_from_the_right_variants() {
    let secs: Vec<_> = one_of_each()
        .iter()
        .map(|e| e.to_body().retry_after_secs)
        .collect();
    assert_eq!(
        secs,
        [
            None,
            None,
            Some(2),
            None,
            None,
            None,
            None,
            Some(2),
            Some(30),
            None
        ]
    );
    assert_eq!(
        InferenceError::CircuitOpen {
            retry_in: Duration::from_millis(250)
        }
        .to_string(),
        "the model is temporarily unavailable; retry in 250ms"
    );
}

#[test]
fn errors_convert_into_box_error() {
    let boxed: tower::BoxError = InferenceError::timeout(Duration::from_secs(1)).into();
    assert_eq!(
        boxed
            .downcast_ref::<InferenceError>()
            .map(InferenceError::kind),
        Some(ErrorKind::Timeout)
    );
}

#[test]
fn a_huge_retry_after_saturates_instead_of_saying_retry_now() {
    for err in [
        InferenceError::Overloaded {
            queue_depth: 3,
            retry_after: Some(Duration::MAX),
        },
        InferenceError::ModelNotReady {
            retry_after: Some(Duration::MAX),
        },
        InferenceError::CircuitOpen {
            retry_in: Duration::MAX,
        },
    ] {
        let body = err.to_body();
        assert_eq!(body.retry_after_secs, Some(u64::MAX), "{err:?}");
        // The message and details render without overflowing either.
        assert!(!body.message.is_empty());
    }
}
