//! Health checks: is the process up (live), is the model loaded and its dependencies sound
//! (ready), and does it really answer (inference, a deep canary).
//!
//! A [`Health`] registry holds named async checks, each critical or not and each with a
//! timeout (a check that times out, or panics, has failed). Checks run concurrently, so a
//! readiness answer takes at most the longest timeout, however many checks hang (a check's
//! timeout bounds the future it returns: keep the closure that makes it quick). The overall
//! status is **healthy** when every check passes, **degraded** when only non-critical checks
//! fail, and **critical** when a critical one fails; a [`Report`] lists the failed checks and
//! maps to HTTP 200 or 503.
//!
//! Built-in checks: a breaker's state (open means degraded by default, since a fallback
//! usually stands behind it; critical if you say so), a probe under a threshold (e.g. GPU
//! memory under 95 %), and a **deep inference canary** that sends a known request through a
//! service, validates the answer with a closure and checks its latency; the canary runs at
//! most once per interval and serves its cached result in between, so a busy health endpoint
//! never becomes load on the model. A failure's message names its kind, never the backend's
//! error text; the detail goes to `tracing`. With [`HealthBuilder::metrics`], every result
//! is also the `health_check_up` gauge of an [`ErrorMetrics`] collector.
//!
//! Three answers: [`Health::live`] (the process is up), [`Health::ready`] (the checks) and
//! [`Health::inference`] (the canary). With the `http` feature, [`HealthService`] serves
//! them as JSON on `GET /health/live`, `/health/ready` and `/health/inference`.
//!
//! ```
//! # #[tokio::main(flavor = "current_thread", start_paused = true)]
//! # async fn main() {
//! use std::time::Duration;
//! use tower_inference::health::{Health, Status};
//!
//! let health = Health::builder()
//!     .threshold("gpu_memory", true, 0.95, || 0.5)
//!     .check("feature_store", false, Duration::from_millis(100), || async {
//!         Err("unreachable".to_string())
//!     })
//!     .build();
//! let report = health.ready().await;
//! assert_eq!(report.status, Status::Degraded);
//! assert_eq!(report.failed(), ["feature_store"]);
//! assert_eq!(report.http_status(), 200);
//! # }
//! ```

use std::borrow::Cow;
use std::fmt;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use serde::Serialize;
use tokio::time::Instant;
use tower::ServiceExt;
use tower::util::BoxCloneSyncService;

use crate::breaker::BreakerHandle;
use crate::classify::ClassifyError;
use crate::event::CircuitState;
use crate::metrics::ErrorMetrics;
use crate::setting;

type CheckFuture = Pin<Box<dyn Future<Output = Result<(), String>> + Send>>;
type CheckFn = Arc<dyn Fn() -> CheckFuture + Send + Sync>;

/// Overall health.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    /// Every check passed.
    Healthy,
    /// Only non-critical checks failed: still serving, at reduced quality.
    Degraded,
    /// A critical check failed: do not send traffic.
    Critical,
}

/// The result of one check.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CheckResult {
    /// The check's name.
    pub name: String,
    /// Whether it passed.
    pub passed: bool,
    /// Whether its failure makes the service critical.
    pub critical: bool,
    /// Why it failed, when it did.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// How long it took, in milliseconds.
    pub duration_ms: u64,
}

/// A health answer: the overall status and every check's result.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Report {
    /// The overall status.
    pub status: Status,
    /// Each check's result, in registration order.
    pub checks: Vec<CheckResult>,
}

impl Report {
    fn of(checks: Vec<CheckResult>) -> Self {
        let failed = |critical: bool| checks.iter().any(|c| !c.passed && c.critical == critical);
        let status = if failed(true) {
            Status::Critical
        } else if failed(false) {
            Status::Degraded
        } else {
            Status::Healthy
        };
        Report { status, checks }
    }

    /// The names of the checks that failed.
    pub fn failed(&self) -> Vec<&str> {
        self.checks
            .iter()
            .filter(|c| !c.passed)
            .map(|c| c.name.as_str())
            .collect()
    }

    /// 200 unless critical, then 503.
    pub fn http_status(&self) -> u16 {
        if self.status == Status::Critical {
            503
        } else {
            200
        }
    }

    /// The report as JSON.
    pub fn to_json(&self) -> String {
        serde_json::to_string(self)
            .unwrap_or_else(|_| r#"{"status":"critical","checks":[]}"#.to_owned())
    }
}

struct Check {
    name: Cow<'static, str>,
    critical: bool,
    timeout: Duration,
    run: CheckFn,
}

impl Check {
    /// Runs the check within its timeout. A check that panics has failed, with the message
    /// "the check panicked" (the panic goes to the process's panic hook, as any panic does).
    async fn run(&self) -> CheckResult {
        let started = Instant::now();
        let outcome = match std::panic::catch_unwind(AssertUnwindSafe(|| (self.run)())) {
            Ok(check) => match tokio::time::timeout(self.timeout, CatchUnwind(check)).await {
                Ok(Some(outcome)) => outcome,
                Ok(None) => Err(PANICKED.to_owned()),
                Err(_) => Err(format!("timed out after {} ms", self.timeout.as_millis())),
            },
            Err(_) => Err(PANICKED.to_owned()),
        };
        if let Err(message) = &outcome {
            tracing::warn!(check = %self.name, critical = self.critical, %message, "health check failed");
        }
        CheckResult {
            name: self.name.to_string(),
            passed: outcome.is_ok(),
            critical: self.critical,
            message: outcome.err(),
            duration_ms: u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX),
        }
    }
}

const PANICKED: &str = "the check panicked";

/// A check's future, with a panic in it caught and turned into `None`.
struct CatchUnwind(CheckFuture);

impl Future for CatchUnwind {
    type Output = Option<Result<(), String>>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match std::panic::catch_unwind(AssertUnwindSafe(|| self.0.as_mut().poll(cx))) {
            Ok(Poll::Ready(outcome)) => Poll::Ready(Some(outcome)),
            Ok(Poll::Pending) => Poll::Pending,
            Err(_) => Poll::Ready(None),
        }
    }
}

/// Runs every check at once and returns their results in order: the time taken is the
/// slowest check's, bounded by the longest timeout.
async fn run_all(checks: &[Check]) -> Vec<CheckResult> {
    let mut running: Vec<_> = checks.iter().map(|c| Box::pin(c.run())).collect();
    let mut results: Vec<Option<CheckResult>> = vec![None; checks.len()];
    std::future::poll_fn(|cx| {
        let mut pending = false;
        for (check, result) in running.iter_mut().zip(results.iter_mut()) {
            if result.is_none() {
                match check.as_mut().poll(cx) {
                    Poll::Ready(r) => *result = Some(r),
                    Poll::Pending => pending = true,
                }
            }
        }
        if pending {
            Poll::Pending
        } else {
            Poll::Ready(())
        }
    })
    .await;
    results.into_iter().flatten().collect()
}

struct Canary {
    check: Check,
    interval: Duration,
    last: tokio::sync::Mutex<Option<(Instant, CheckResult)>>,
}

/// A registry of health checks. Cheap to clone (clones share checks and the canary's cache).
#[derive(Clone)]
pub struct Health {
    checks: Arc<Vec<Check>>,
    canary: Option<Arc<Canary>>,
    metrics: Option<ErrorMetrics>,
}

impl fmt::Debug for Health {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Health")
            .field(
                "checks",
                &self.checks.iter().map(|c| &c.name).collect::<Vec<_>>(),
            )
            .field("canary", &self.canary.as_ref().map(|c| &c.check.name))
            .finish()
    }
}

impl Health {
    /// A builder with no checks.
    pub fn builder() -> HealthBuilder {
        HealthBuilder {
            checks: Vec::new(),
            canary: None,
            metrics: None,
        }
    }

    /// The process is up: always healthy.
    pub async fn live(&self) -> Report {
        Report::of(Vec::new())
    }

    /// Runs every check at once, each within its timeout: the answer takes as long as the
    /// slowest check, at most the longest timeout. Results are in registration order.
    pub async fn ready(&self) -> Report {
        let results = run_all(&self.checks).await;
        self.report(&results);
        Report::of(results)
    }

    /// Reports results to the metrics collector, if one was given.
    fn report(&self, results: &[CheckResult]) {
        if let Some(metrics) = &self.metrics {
            for result in results {
                metrics.record_check(&result.name, result.passed);
            }
        }
    }

    /// The deep canary: run if its last result is older than its interval, cached otherwise.
    /// Without a canary, healthy.
    pub async fn inference(&self) -> Report {
        let Some(canary) = &self.canary else {
            return Report::of(Vec::new());
        };
        let mut last = canary.last.lock().await;
        if let Some((at, result)) = &*last
            && at.elapsed() < canary.interval
        {
            return Report::of(vec![result.clone()]);
        }
        let result = canary.check.run().await;
        *last = Some((Instant::now(), result.clone()));
        self.report(std::slice::from_ref(&result));
        Report::of(vec![result])
    }
}

/// Configures a [`Health`] registry.
pub struct HealthBuilder {
    checks: Vec<Check>,
    canary: Option<Canary>,
    metrics: Option<ErrorMetrics>,
}

impl fmt::Debug for HealthBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HealthBuilder")
            .field(
                "checks",
                &self.checks.iter().map(|c| &c.name).collect::<Vec<_>>(),
            )
            .finish_non_exhaustive()
    }
}

impl HealthBuilder {
    /// A check: `run` resolves to `Ok(())` when healthy or `Err(reason)`; it fails too if it
    /// takes longer than `timeout` (a zero timeout is taken as 1 s). A `critical` check's
    /// failure makes the service critical.
    pub fn check<F, Fut>(
        mut self,
        name: impl Into<Cow<'static, str>>,
        critical: bool,
        timeout: Duration,
        run: F,
    ) -> Self
    where
        F: Fn() -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<(), String>> + Send + 'static,
    {
        self.checks.push(Check {
            name: name.into(),
            critical,
            timeout: setting::nonzero("health check timeout", timeout, Duration::from_secs(1)),
            run: Arc::new(move || Box::pin(run())),
        });
        self
    }

    /// A non-critical check that fails while the breaker is open (or forced open): the
    /// service is then **degraded**, not unready. This is the default because the usual
    /// stack has a fallback behind its breaker, which keeps answering while it is open; a
    /// load balancer should not pull a replica that answers. For a breaker with nothing
    /// behind it, use [`critical_breaker`](Self::critical_breaker).
    pub fn breaker(self, name: impl Into<Cow<'static, str>>, breaker: BreakerHandle) -> Self {
        self.breaker_check(name, false, breaker)
    }

    /// A critical check that fails while the breaker is open (or forced open): for a breaker
    /// with no fallback behind it, whose open state means requests fail.
    pub fn critical_breaker(
        self,
        name: impl Into<Cow<'static, str>>,
        breaker: BreakerHandle,
    ) -> Self {
        self.breaker_check(name, true, breaker)
    }

    fn breaker_check(
        self,
        name: impl Into<Cow<'static, str>>,
        critical: bool,
        breaker: BreakerHandle,
    ) -> Self {
        self.check(name, critical, Duration::from_secs(1), move || {
            let state = breaker.state();
            async move {
                match state {
                    CircuitState::Open | CircuitState::ForcedOpen => {
                        Err(format!("circuit breaker is {state}"))
                    }
                    _ => Ok(()),
                }
            }
        })
    }

    /// Reports every check's latest result to `metrics`, as the `health_check_up` gauge
    /// (the canary's under `inference_canary`).
    pub fn metrics(mut self, metrics: &ErrorMetrics) -> Self {
        self.metrics = Some(metrics.clone());
        self
    }

    /// A check that fails while `probe()` is above `limit` (e.g. GPU memory above 0.95).
    pub fn threshold<F>(
        self,
        name: impl Into<Cow<'static, str>>,
        critical: bool,
        limit: f64,
        probe: F,
    ) -> Self
    where
        F: Fn() -> f64 + Send + Sync + 'static,
    {
        self.check(name, critical, Duration::from_secs(1), move || {
            let value = probe();
            async move {
                if value <= limit {
                    Ok(())
                } else {
                    Err(format!("{value:.3} is above the limit of {limit:.3}"))
                }
            }
        })
    }

    /// The deep inference canary (critical): sends `request` through `svc`, and passes when
    /// the call succeeds within `max_latency` and `validate` accepts the answer. It runs at most
    /// once every `interval`; in between, [`Health::inference`] returns the cached result.
    ///
    /// A failed call is reported by its [kind](crate::ErrorKind) only ("the canary failed:
    /// infrastructure"), since a health endpoint is often public and an error's text can hold
    /// addresses or credentials; the full error goes to `tracing` at `warn`.
    pub fn canary<Req, Res, E, S, V>(
        mut self,
        svc: S,
        request: Req,
        validate: V,
        max_latency: Duration,
        interval: Duration,
    ) -> Self
    where
        S: tower_service::Service<Req, Response = Res, Error = E> + Clone + Send + Sync + 'static,
        S::Future: Send + 'static,
        Req: Clone + Send + Sync + 'static,
        Res: 'static,
        E: ClassifyError + fmt::Display + 'static,
        V: Fn(&Res) -> bool + Send + Sync + 'static,
    {
        let svc = BoxCloneSyncService::new(svc);
        let validate = Arc::new(validate);
        let run: CheckFn = Arc::new(move || {
            let (svc, request, validate) = (svc.clone(), request.clone(), validate.clone());
            Box::pin(async move {
                let started = Instant::now();
                let answer = svc.oneshot(request).await.map_err(|e| {
                    let kind = e.outcome().kind();
                    let code = kind.map_or("unknown", |k| k.code());
                    tracing::warn!(kind = code, error = %e, "the inference canary failed");
                    format!("the canary failed: {code}")
                })?;
                let took = started.elapsed();
                if took > max_latency {
                    return Err(format!(
                        "the canary took {} ms, over the {} ms limit",
                        took.as_millis(),
                        max_latency.as_millis()
                    ));
                }
                if validate(&answer) {
                    Ok(())
                } else {
                    Err("the canary's answer failed validation".to_owned())
                }
            })
        });
        self.canary = Some(Canary {
            check: Check {
                name: Cow::Borrowed("inference_canary"),
                critical: true,
                // The canary's own latency limit decides; the timeout only stops a hung call.
                timeout: max_latency.saturating_mul(2).max(Duration::from_millis(1)),
                run,
            },
            interval,
            last: tokio::sync::Mutex::new(None),
        });
        self
    }

    /// Builds the registry.
    pub fn build(self) -> Health {
        Health {
            checks: Arc::new(self.checks),
            canary: self.canary.map(Arc::new),
            metrics: self.metrics,
        }
    }
}

#[cfg(feature = "http")]
pub use self::http_service::HealthService;

#[cfg(feature = "http")]
mod http_service {
    use std::convert::Infallible;
    use std::future::Future;
    use std::pin::Pin;
    use std::task::{Context, Poll};

    use http::{Method, Request, Response, StatusCode, header};

    use super::{Health, Report};

    /// Serves a [`Health`] registry over HTTP (feature `http`): `GET /health/live`,
    /// `/health/ready` and `/health/inference` answer 200 or 503 with the JSON [`Report`];
    /// any other path is 404, any other method 405.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// use tower::ServiceExt;
    /// use tower_inference::health::{Health, HealthService};
    ///
    /// let svc = HealthService::new(Health::builder().build());
    /// let res = svc.oneshot(http::Request::get("/health/live").body(()).unwrap()).await.unwrap();
    /// assert_eq!(res.status(), 200);
    /// assert_eq!(res.body(), r#"{"status":"healthy","checks":[]}"#);
    /// # }
    /// ```
    #[derive(Debug, Clone)]
    pub struct HealthService {
        health: Health,
    }

    impl HealthService {
        /// Serves `health`.
        pub fn new(health: Health) -> Self {
            HealthService { health }
        }
    }

    fn json(status: u16, body: String) -> Response<String> {
        let mut res = Response::new(body);
        *res.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::SERVICE_UNAVAILABLE);
        res.headers_mut().insert(
            header::CONTENT_TYPE,
            http::HeaderValue::from_static("application/json"),
        );
        res
    }

    fn report(report: Report) -> Response<String> {
        json(report.http_status(), report.to_json())
    }

    impl<B> tower_service::Service<Request<B>> for HealthService {
        type Response = Response<String>;
        type Error = Infallible;
        type Future = Pin<Box<dyn Future<Output = Result<Response<String>, Infallible>> + Send>>;

        fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
            Poll::Ready(Ok(()))
        }

        fn call(&mut self, req: Request<B>) -> Self::Future {
            let health = self.health.clone();
            let path = req.uri().path().to_owned();
            let get = req.method() == Method::GET;
            Box::pin(async move {
                Ok(match (get, path.as_str()) {
                    (true, "/health/live") => report(health.live().await),
                    (true, "/health/ready") => report(health.ready().await),
                    (true, "/health/inference") => report(health.inference().await),
                    (false, "/health/live" | "/health/ready" | "/health/inference") => {
                        json(405, r#"{"error":"use GET"}"#.to_owned())
                    }
                    _ => json(404, r#"{"error":"not found"}"#.to_owned()),
                })
            })
        }
    }
}
