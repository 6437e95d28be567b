//! The fallback chain: the drill, caller faults, context-length tiers, exhaustion, the cache.
#![cfg(feature = "mock")]

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;
use tower::{ServiceBuilder, ServiceExt, service_fn};
use tower_inference::fallback::{
    BoxFuture, CacheError, CacheStore, CacheWrite, Cached, FallbackLayer, MemoryStore, Tier,
};
use tower_inference::mock::{ChaosLayer, Completion, InferenceRequest, MockGpu, MockGpuHandle};
use tower_inference::{
    Annotate, ErrorKind, Event, InferenceError, ModelFailure, Quality, TierFailure,
};

const SEC: Duration = Duration::from_secs(1);

fn gpu(name: &'static str) -> MockGpu {
    MockGpu::builder()
        .name(name)
        .zero_latency()
        .max_context(16)
        .build()
}

fn static_answer(req: &InferenceRequest) -> Completion {
    Completion {
        model: "static".into(),
        text: format!("Sorry, we cannot answer \"{}\" right now.", req.prompt),
        tokens: 0,
        provenance: Default::default(),
    }
}

/// Answers only the questions it has a rule for.
fn rules()
-> impl tower::Service<InferenceRequest, Response = Completion, Error = InferenceError, Future: Send>
+ Clone
+ Send
+ Sync {
    service_fn(|req: InferenceRequest| async move {
        if req.prompt == "opening hours?" {
            Ok(Completion {
                model: "rules".into(),
                text: "9 to 5".into(),
                tokens: 3,
                provenance: Default::default(),
            })
        } else {
            Err(InferenceError::ModelFailure {
                failure: ModelFailure::InvalidOutput,
            })
        }
    })
}

#[derive(Default, Clone)]
struct Served(Arc<Mutex<Vec<String>>>);

impl Served {
    fn sink(&self) -> impl Fn(&Event<'_>) + Send + Sync + 'static {
        let log = self.0.clone();
        move |e: &Event<'_>| match e {
            Event::TierServed { tier, .. } => log.lock().unwrap().push(format!("served {tier}")),
            Event::TierFailed { tier, kind } => {
                log.lock().unwrap().push(format!("failed {tier} {kind}"))
            }
            Event::CacheFailed { tier, operation } => log
                .lock()
                .unwrap()
                .push(format!("cache {tier} {operation}")),
            _ => {}
        }
    }

    fn take(&self) -> Vec<String> {
        std::mem::take(&mut *self.0.lock().unwrap())
    }
}

struct Drill {
    primary: MockGpuHandle,
    light: MockGpuHandle,
    svc: tower_inference::fallback::Fallback<
        MockGpu,
        InferenceRequest,
        tower_inference::DefaultClassifier,
    >,
    events: Served,
}

fn drill() -> Drill {
    let (primary, light) = (gpu("llama-70b"), gpu("llama-8b"));
    let events = Served::default();
    let layer = FallbackLayer::builder()
        .primary("llama-70b")
        .tier("llama-8b", Quality::Reduced, light.clone())
        .tier("rules", Quality::Generic, rules())
        .cache(
            MemoryStore::new(100),
            |r: &InferenceRequest| r.prompt.clone(),
            60 * SEC,
        )
        .static_default(static_answer)
        .event_sink(events.sink())
        .build();
    Drill {
        primary: primary.handle(),
        light: light.handle(),
        svc: ServiceBuilder::new().layer(layer).service(primary),
        events,
    }
}

impl Drill {
    async fn ask(&self, prompt: &str) -> Completion {
        self.svc
            .clone()
            .oneshot(InferenceRequest::new(prompt).max_tokens(3))
            .await
            .unwrap()
    }
}

#[tokio::test(start_paused = true)]
async fn drill_healthy_primary_answers_at_full_quality() {
    let d = drill();
    let answer = d.ask("what is a breaker?").await;
    let p = answer.provenance().unwrap();
    assert_eq!(
        (&*answer.model, &*p.tier, &p.quality, p.fallback),
        ("llama-70b", "llama-70b", &Quality::Full, false)
    );
    assert_eq!(d.events.take(), ["served llama-70b"]);
}

#[tokio::test(start_paused = true)]
async fn drill_primary_down_the_lighter_model_answers() {
    let d = drill();
    d.primary.kill();
    let answer = d.ask("what is a breaker?").await;
    assert_eq!(&*answer.model, "llama-8b");
    assert_eq!(
        (&*answer.provenance.tier, &answer.provenance.quality),
        ("llama-8b", &Quality::Reduced)
    );
    assert!(answer.provenance.fallback);
    assert_eq!(
        d.events.take(),
        ["failed llama-70b infrastructure", "served llama-8b"]
    );
}

#[tokio::test(start_paused = true)]
async fn drill_both_models_down_rules_then_warm_cache_then_static() {
    let d = drill();
    // Warm the cache while the primary is up.
    d.ask("what is a breaker?").await;
    tokio::time::advance(30 * SEC).await;
    d.primary.kill();
    d.light.kill();
    d.events.take();

    let rules = d.ask("opening hours?").await;
    assert_eq!(
        (&*rules.provenance.tier, &rules.provenance.quality),
        ("rules", &Quality::Generic)
    );

    let cached = d.ask("what is a breaker?").await;
    assert_eq!(&*cached.model, "llama-70b", "the stored answer");
    assert_eq!(
        (&*cached.provenance.tier, &cached.provenance.quality),
        ("cache", &Quality::Stale)
    );
    assert_eq!(cached.provenance.cache_age(), Some(30 * SEC));
    assert!(cached.provenance.fallback);

    let fallback = d.ask("never asked before").await;
    assert_eq!(
        (&*fallback.provenance.tier, &fallback.provenance.quality),
        ("static", &Quality::Minimal)
    );
    assert!(fallback.text.contains("never asked before"));
    let events = d.events.take();
    assert_eq!(
        events[events.len() - 5..],
        [
            "failed llama-70b infrastructure",
            "failed llama-8b infrastructure",
            "failed rules model_failure",
            "failed cache exhausted",
            "served static"
        ]
    );
}

#[tokio::test(start_paused = true)]
async fn cached_answers_expire_after_their_ttl() {
    let d = drill();
    d.ask("what is a breaker?").await;
    d.primary.kill();
    d.light.kill();
    tokio::time::advance(60 * SEC - Duration::from_millis(1)).await;
    assert_eq!(&*d.ask("what is a breaker?").await.provenance.tier, "cache");
    tokio::time::advance(Duration::from_millis(1)).await;
    assert_eq!(
        &*d.ask("what is a breaker?").await.provenance.tier,
        "static",
        "expired at its ttl"
    );
}

#[tokio::test(start_paused = true)]
async fn the_second_tier_is_cacheable_and_later_tiers_are_not() {
    let d = drill();
    d.primary.kill();
    d.ask("cache me").await; // answered by llama-8b: cached
    d.ask("opening hours?").await; // llama-8b too
    d.light.kill();
    assert_eq!(&*d.ask("cache me").await.provenance.tier, "cache");
}

#[tokio::test(start_paused = true)]
async fn caller_faults_pass_through() {
    let d = drill();
    let long = vec!["word"; 20].join(" ");
    let err = d
        .svc
        .clone()
        .oneshot(InferenceRequest::new(long))
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            InferenceError::ContextLengthExceeded { input: 20, max: 16 }
        ),
        "{err:?}"
    );
    assert_eq!(d.light.stats().calls, 0, "no other tier was asked");
    let err = d
        .svc
        .clone()
        .oneshot(InferenceRequest::new(""))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidInput);
}

#[tokio::test(start_paused = true)]
async fn a_larger_context_tier_takes_context_length_errors() {
    let long_ctx = MockGpu::builder()
        .name("long-context")
        .zero_latency()
        .max_context(128)
        .build();
    let light = gpu("llama-8b");
    let layer = FallbackLayer::builder()
        .tier("llama-8b", Quality::Reduced, light.clone())
        .tier_with(
            Tier::new("long-context", Quality::Full, long_ctx)
                .accepts(ErrorKind::ContextLengthExceeded),
        )
        .build();
    let svc = ServiceBuilder::new().layer(layer).service(gpu("llama-70b"));
    let long = vec!["word"; 20].join(" ");
    let answer = svc
        .clone()
        .oneshot(InferenceRequest::new(long).max_tokens(2))
        .await
        .unwrap();
    assert_eq!(&*answer.provenance.tier, "long-context");
    assert_eq!(
        light.handle().stats().calls,
        0,
        "tiers that do not take it are skipped"
    );
}

#[tokio::test(start_paused = true)]
async fn exhausted_lists_every_tier_and_its_failure() {
    let light = gpu("llama-8b");
    light.handle().kill();
    let layer = FallbackLayer::builder()
        .tier("llama-8b", Quality::Reduced, light)
        .tier("rules", Quality::Generic, rules())
        .cache(
            MemoryStore::new(10),
            |r: &InferenceRequest| r.prompt.clone(),
            SEC,
        )
        .build();
    let primary = MockGpu::builder()
        .zero_latency()
        .load_time(60 * SEC)
        .build();
    let svc = ServiceBuilder::new().layer(layer).service(primary);
    let err = svc
        .oneshot(InferenceRequest::new("hello"))
        .await
        .unwrap_err();
    let InferenceError::Exhausted { tiers } = &err else {
        panic!("{err:?}")
    };
    assert_eq!(
        *tiers,
        [
            TierFailure::new("primary", ErrorKind::ModelNotReady),
            TierFailure::new("llama-8b", ErrorKind::Infrastructure),
            TierFailure::new("rules", ErrorKind::ModelFailure),
            TierFailure::new("cache", ErrorKind::Exhausted),
        ]
    );
    assert_eq!(err.kind().http_status(), 503);
    assert_eq!(
        err.to_string(),
        "the service is degraded and could not answer; retry later"
    );
}

/// A store whose every operation fails, or whose writes never finish.
struct BrokenStore {
    writes_hang: bool,
}

impl CacheStore<Completion> for BrokenStore {
    fn get(&self, _: &str) -> BoxFuture<Result<Option<Cached<Completion>>, CacheError>> {
        Box::pin(async { Err(CacheError::new("connection refused")) })
    }

    fn put(&self, _: String, _: Completion, _: Duration) -> CacheWrite {
        if self.writes_hang {
            CacheWrite::Pending(Box::pin(std::future::pending()))
        } else {
            CacheWrite::Done(Err(CacheError::new("connection refused")))
        }
    }
}

#[tokio::test(start_paused = true)]
async fn cache_store_failures_do_not_affect_the_response() {
    for writes_hang in [false, true] {
        let events = Served::default();
        let primary = gpu("llama-70b");
        let layer = FallbackLayer::builder()
            .cache(
                BrokenStore { writes_hang },
                |r: &InferenceRequest| r.prompt.clone(),
                SEC,
            )
            .static_default(static_answer)
            .event_sink(events.sink())
            .build();
        let svc = ServiceBuilder::new().layer(layer).service(primary.clone());
        let start = Instant::now();
        let answer = svc
            .clone()
            .oneshot(InferenceRequest::new("hi").max_tokens(2))
            .await
            .unwrap();
        assert_eq!(
            start.elapsed(),
            Duration::ZERO,
            "the write did not hold the answer up"
        );
        assert_eq!(&*answer.provenance.tier, "primary");
        primary.handle().kill();
        let answer = svc.oneshot(InferenceRequest::new("hi")).await.unwrap();
        assert_eq!(&*answer.provenance.tier, "static", "a failed read moves on");
        let log = events.take();
        assert!(log.contains(&"cache cache read".to_owned()), "{log:?}");
        assert_eq!(
            log.contains(&"cache cache write".to_owned()),
            !writes_hang,
            "{log:?}"
        );
    }
}

#[tokio::test(start_paused = true)]
async fn a_primary_that_fails_poll_ready_falls_back() {
    let failing_ready = FailsReady;
    let layer = FallbackLayer::builder()
        .static_default(|_: &u32| tower_inference::Served::new(0u32))
        .build();
    let svc = ServiceBuilder::new().layer(layer).service(failing_ready);
    let answer = svc.oneshot(7).await.unwrap();
    assert_eq!(&*answer.provenance.tier, "static");
}

#[derive(Clone)]
struct FailsReady;

impl tower::Service<u32> for FailsReady {
    type Response = tower_inference::Served<u32>;
    type Error = InferenceError;
    type Future = std::future::Ready<Result<Self::Response, InferenceError>>;

    fn poll_ready(
        &mut self,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), InferenceError>> {
        std::task::Poll::Ready(Err(InferenceError::infrastructure()))
    }

    fn call(&mut self, n: u32) -> Self::Future {
        std::future::ready(Ok(tower_inference::Served::new(n)))
    }
}

#[tokio::test(start_paused = true)]
async fn no_request_is_lost_under_random_faults() {
    const REQUESTS: usize = 10_000;
    let counts: Arc<Mutex<BTreeMap<String, usize>>> = Arc::default();
    let sink = counts.clone();
    let chaos = |seed| {
        ChaosLayer::builder()
            .error_rate(0.4)
            .errors([
                InferenceError::infrastructure(),
                InferenceError::timeout(SEC),
                InferenceError::Overloaded {
                    queue_depth: 1,
                    retry_after: None,
                },
            ])
            .seed(seed)
            .build()
    };
    let light = ServiceBuilder::new()
        .layer(chaos(2))
        .service(gpu("llama-8b"));
    let layer = FallbackLayer::builder()
        .tier("llama-8b", Quality::Reduced, light)
        .static_default(static_answer)
        .event_sink(move |e: &Event<'_>| {
            if let Event::TierServed { tier, .. } = e {
                *sink.lock().unwrap().entry(tier.to_string()).or_default() += 1;
            }
        })
        .build();
    let svc = ServiceBuilder::new().layer(layer).layer(chaos(1)).service(
        MockGpu::builder()
            .zero_latency()
            .queue_capacity(2 * REQUESTS)
            .build(),
    );
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..REQUESTS {
        let svc = svc.clone();
        tasks.spawn(async move {
            svc.oneshot(InferenceRequest::new(format!("q{i}")).max_tokens(1))
                .await
        });
    }
    let mut answers = 0;
    while let Some(result) = tasks.join_next().await {
        result.unwrap().expect("every request gets an answer");
        answers += 1;
    }
    assert_eq!(answers, REQUESTS);
    let counts = counts.lock().unwrap().clone();
    assert_eq!(counts.values().sum::<usize>(), REQUESTS, "{counts:?}");
    for tier in ["primary", "llama-8b", "static"] {
        assert!(counts[tier] > 1_000, "{counts:?}");
    }
}

#[tokio::test(start_paused = true)]
async fn a_fallback_tiers_own_limit_moves_on_instead_of_blaming_the_caller() {
    // The primary is down; the lighter model's context is too small for this prompt, but the
    // primary's is not: the caller did nothing wrong, so the static tier answers.
    let small_context = service_fn(|_: String| async {
        Err::<tower_inference::Served<String>, _>(InferenceError::ContextLengthExceeded {
            input: 3_000,
            max: 2_048,
        })
    });
    let fallback = FallbackLayer::builder()
        .tier("small", Quality::Reduced, small_context)
        .static_default(|_: &String| tower_inference::Served::new("try again later".to_string()))
        .build();
    let primary_down = service_fn(|_: String| async {
        Err::<tower_inference::Served<String>, _>(InferenceError::infrastructure())
    });
    let svc = ServiceBuilder::new().layer(fallback).service(primary_down);
    let answer = svc.oneshot("a long prompt".to_string()).await.unwrap();
    assert_eq!(answer.provenance.tier, "static");
    let failed: Vec<_> = answer
        .provenance
        .failed_tiers()
        .iter()
        .map(|f| (f.tier.as_ref(), f.kind))
        .collect();
    assert_eq!(
        failed,
        [
            ("primary", ErrorKind::Infrastructure),
            ("small", ErrorKind::ContextLengthExceeded)
        ]
    );
}

/// A store that never answers, as a SIGSTOPped Redis.
#[derive(Clone, Default)]
struct HungStore {
    gets: Arc<std::sync::atomic::AtomicUsize>,
}

impl tower_inference::fallback::CacheStore<tower_inference::Served<String>> for HungStore {
    fn get(
        &self,
        _key: &str,
    ) -> tower_inference::fallback::BoxFuture<
        Result<
            Option<tower_inference::fallback::Cached<tower_inference::Served<String>>>,
            tower_inference::fallback::CacheError,
        >,
    > {
        self.gets.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        Box::pin(std::future::pending())
    }

    fn put(
        &self,
        _key: String,
        _value: tower_inference::Served<String>,
        _ttl: Duration,
    ) -> tower_inference::fallback::CacheWrite {
        tower_inference::fallback::CacheWrite::Pending(Box::pin(std::future::pending()))
    }
}

#[tokio::test(start_paused = true)]
async fn a_hung_cache_store_costs_a_short_timeout_then_nothing() {
    let store = HungStore::default();
    let fallback = FallbackLayer::builder()
        .cache(
            store.clone(),
            |q: &String| q.clone(),
            Duration::from_secs(60),
        )
        .static_default(|_: &String| tower_inference::Served::new("later".to_string()))
        .build();
    let primary_down = service_fn(|_: String| async {
        Err::<tower_inference::Served<String>, _>(InferenceError::infrastructure())
    });
    let svc = ServiceBuilder::new().layer(fallback).service(primary_down);
    let gets = || store.gets.load(std::sync::atomic::Ordering::SeqCst);

    for i in 1..=5 {
        let started = Instant::now();
        let answer = svc.clone().oneshot("q".to_string()).await.unwrap();
        assert_eq!(answer.provenance.tier, "static");
        assert_eq!(started.elapsed(), Duration::from_millis(50), "request {i}");
        assert_eq!(gets(), i);
    }
    // Five failures in a row: the store is left alone for 10 s.
    let started = Instant::now();
    let answer = svc.clone().oneshot("q".to_string()).await.unwrap();
    assert_eq!(answer.provenance.tier, "static");
    assert_eq!(started.elapsed(), Duration::ZERO);
    assert_eq!(gets(), 5);

    tokio::time::advance(Duration::from_secs(10)).await;
    let _ = svc.clone().oneshot("q".to_string()).await.unwrap();
    assert_eq!(gets(), 6, "asked again after the cooldown");
}
