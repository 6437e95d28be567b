//! The default classifiers, including real tower timeout and load-shed errors.

use std::time::Duration;

use tower::{BoxError, Service, ServiceBuilder, ServiceExt, service_fn};
use tower_inference::{
    Classify, ClassifyError, DefaultClassifier, ErrorKind, InferenceError, Outcome,
};

fn classify_box(err: &BoxError) -> Outcome {
    Classify::<(), BoxError>::classify(&DefaultClassifier, Err(err))
}

#[test]
fn ok_is_success() {
    let outcome = Classify::<u32, InferenceError>::classify(&DefaultClassifier, Ok(&7));
    assert_eq!(outcome, Outcome::Success);
    assert!(!outcome.is_retryable() && !outcome.is_caller_fault() && !outcome.is_backend_fault());
}

#[test]
fn inference_error_classifies_as_its_kind_with_retry_after() {
    let err = InferenceError::Overloaded {
        queue_depth: 3,
        retry_after: Some(Duration::from_secs(4)),
    };
    let outcome = Classify::<(), _>::classify(&DefaultClassifier, Err(&err));
    assert_eq!(
        outcome,
        Outcome::Failure {
            kind: ErrorKind::Overloaded,
            retry_after: Some(Duration::from_secs(4))
        }
    );
    assert!(outcome.is_retryable() && outcome.is_backend_fault());

    let caller = InferenceError::ContextLengthExceeded { input: 9, max: 8 };
    let outcome = Classify::<(), _>::classify(&DefaultClassifier, Err(&caller));
    assert!(outcome.is_caller_fault() && !outcome.is_backend_fault() && !outcome.is_retryable());
}

#[tokio::test(start_paused = true)]
async fn real_tower_timeout_is_a_timeout() {
    let svc = ServiceBuilder::new()
        .timeout(Duration::from_millis(100))
        .service(service_fn(|_: ()| async {
            tokio::time::sleep(Duration::from_secs(1)).await;
            Ok::<_, BoxError>(())
        }));
    let err = svc.oneshot(()).await.unwrap_err();
    assert!(err.is::<tower::timeout::error::Elapsed>());
    assert_eq!(classify_box(&err).kind(), Some(ErrorKind::Timeout));
}

#[tokio::test(start_paused = true)]
async fn real_load_shed_rejection_is_overloaded() {
    let svc = ServiceBuilder::new()
        .load_shed()
        .concurrency_limit(1)
        .service(service_fn(|_: ()| async {
            tokio::time::sleep(Duration::from_secs(1)).await;
            Ok::<_, BoxError>(())
        }));
    let mut first = svc.clone();
    let pending = first.ready().await.unwrap().call(());
    let err = svc.oneshot(()).await.unwrap_err();
    assert!(err.is::<tower::load_shed::error::Overloaded>());
    assert_eq!(classify_box(&err).kind(), Some(ErrorKind::Overloaded));
    pending.await.unwrap();
}

#[test]
fn boxed_inference_error_is_itself() {
    let err: BoxError = InferenceError::OutOfMemory {
        used_mib: 1,
        available_mib: 0,
    }
    .into();
    assert_eq!(classify_box(&err).kind(), Some(ErrorKind::OutOfMemory));
}

#[test]
fn tokio_elapsed_and_io_timeouts_are_timeouts() {
    let io: BoxError = std::io::Error::new(std::io::ErrorKind::TimedOut, "read timed out").into();
    assert_eq!(classify_box(&io).kind(), Some(ErrorKind::Timeout));
}

#[derive(Debug, thiserror::Error)]
#[error("upstream call failed")]
struct Wrapper(#[source] InferenceError);

#[test]
fn source_chain_is_searched() {
    let err: BoxError = Wrapper(InferenceError::ModelNotReady { retry_after: None }).into();
    assert_eq!(classify_box(&err).kind(), Some(ErrorKind::ModelNotReady));
}

#[test]
fn anything_else_is_infrastructure() {
    let err: BoxError = "connection reset".into();
    assert_eq!(
        classify_box(&err),
        Outcome::failure(ErrorKind::Infrastructure)
    );
    let io: BoxError = std::io::Error::other("broken pipe").into();
    assert_eq!(classify_box(&io).kind(), Some(ErrorKind::Infrastructure));
}

#[test]
fn closures_are_classifiers() {
    let empty_is_failure = |res: Result<&String, &InferenceError>| match res {
        Ok(s) if s.is_empty() => Outcome::failure(ErrorKind::ModelFailure),
        Ok(_) => Outcome::Success,
        Err(e) => e.outcome(),
    };
    assert_eq!(
        empty_is_failure.classify(Ok(&"hi".to_owned())),
        Outcome::Success
    );
    assert_eq!(
        empty_is_failure.classify(Ok(&String::new())).kind(),
        Some(ErrorKind::ModelFailure)
    );
}

#[cfg(feature = "http")]
mod http_responses {
    use std::time::{Duration, SystemTime};

    use tower_inference::{Classify, ErrorKind, HttpClassifier, InferenceError, Outcome};

    fn classify(status: u16, retry_after: Option<&str>) -> Outcome {
        let mut res = http::Response::builder().status(status);
        if let Some(v) = retry_after {
            res = res.header("retry-after", v);
        }
        let res = res.body(()).unwrap();
        Classify::<_, InferenceError>::classify(&HttpClassifier, Ok(&res))
    }

    #[test]
    fn statuses_map_to_kinds() {
        let table = [
            (200, None),
            (204, None),
            (302, None),
            (400, Some(ErrorKind::InvalidInput)),
            (404, Some(ErrorKind::InvalidInput)),
            (408, Some(ErrorKind::Timeout)),
            (413, Some(ErrorKind::ContextLengthExceeded)),
            (422, Some(ErrorKind::InvalidInput)),
            (429, Some(ErrorKind::Overloaded)),
            (500, Some(ErrorKind::ModelFailure)),
            (502, Some(ErrorKind::Infrastructure)),
            (503, Some(ErrorKind::Infrastructure)),
            (504, Some(ErrorKind::Timeout)),
            (507, Some(ErrorKind::OutOfMemory)),
            (599, Some(ErrorKind::Infrastructure)),
        ];
        for (status, kind) in table {
            assert_eq!(classify(status, None).kind(), kind, "status {status}");
        }
    }

    #[test]
    fn retry_after_ms_comes_first_and_fractions_and_garbage_are_handled() {
        let res = http::Response::builder()
            .status(429)
            .header("retry-after-ms", "1250")
            .header("retry-after", "9")
            .body(())
            .unwrap();
        let outcome = Classify::<_, InferenceError>::classify(&HttpClassifier, Ok(&res));
        assert_eq!(outcome.retry_after(), Some(Duration::from_millis(1_250)));
        assert_eq!(
            classify(503, Some("1.5")).retry_after(),
            Some(Duration::from_millis(1_500))
        );
        assert_eq!(classify(503, Some("-3")).retry_after(), None);
        assert_eq!(classify(503, Some("soon")).retry_after(), None);
        assert_eq!(
            classify(503, Some("99999999999")).retry_after(),
            Some(Duration::from_secs(86_400))
        );
    }

    #[test]
    fn four_hundreds_other_than_429_are_caller_faults() {
        for status in [400, 401, 403, 404, 413, 422] {
            assert!(classify(status, None).is_caller_fault(), "{status}");
        }
        assert!(!classify(429, None).is_caller_fault());
        assert!(classify(429, None).is_retryable());
        assert!(classify(503, None).is_retryable());
    }

    #[test]
    fn retry_after_in_seconds() {
        assert_eq!(
            classify(429, Some("7")).retry_after(),
            Some(Duration::from_secs(7))
        );
        assert_eq!(
            classify(503, Some(" 0 ")).retry_after(),
            Some(Duration::ZERO)
        );
        assert_eq!(classify(429, Some("soon")).retry_after(), None);
        assert_eq!(classify(429, Some("-3")).retry_after(), None);
        // Retry-After on a success means nothing here.
        assert_eq!(classify(200, Some("7")).retry_after(), None);
    }

    #[test]
    fn retry_after_as_http_date() {
        let at = SystemTime::now() + Duration::from_secs(120);
        let outcome = classify(503, Some(&httpdate::fmt_http_date(at)));
        let after = outcome.retry_after().unwrap();
        assert!(
            after <= Duration::from_secs(120) && after >= Duration::from_secs(110),
            "{after:?}"
        );

        let past = classify(503, Some("Sun, 06 Nov 1994 08:49:37 GMT"));
        assert_eq!(past.retry_after(), Some(Duration::ZERO));
    }

    #[test]
    fn transport_errors_use_the_error_classifier() {
        let err = InferenceError::timeout(Duration::from_secs(1));
        let outcome = Classify::<http::Response<()>, _>::classify(&HttpClassifier, Err(&err));
        assert_eq!(outcome.kind(), Some(ErrorKind::Timeout));
    }
}
