//! Load drills: open-loop traffic into a GPU-backed service through load, outage, brownout,
//! memory pressure and flaky failures, for four contestants.
//!
//! Shared by the real-time benchmark (`benches/drills.rs`, which publishes the table in
//! `BENCHMARKS.md`) and the paused-time SLA tests (`tests/drills.rs`). Everything here reads
//! `tokio::time`, so the same drill runs on either clock.
//!
//! - **Fleet**: a primary `MockGpu` ("llama-70b": 16 slots, 32 queue places, 10 ms + 0.5 ms per
//!   token, 4 GiB of device memory free for requests, weights reloaded on revive) and a
//!   lighter one ("llama-8b": 16 slots, 64 places, 4 ms + 0.1 ms per token, 20 GiB free).
//!   A request asks for 64 tokens, so the primary serves about 381 requests a second at full
//!   size ([`primary_capacity`]) and the light model about 1 538.
//! - **Traffic**: Poisson arrivals at a multiple of the primary's capacity, from a fixed seed;
//!   prompts are one of 200 questions, so a cache of last good answers can help. In the
//!   memory-pressure drill, one request in ten asks for a 3072 × 3072 image, which needs
//!   4.6 GiB on the primary at full size and so never fits there.
//! - **Contestants**: the bare service behind tower's timeout; this crate's `InferenceStack`
//!   (metrics, fallback to the light model, the cache and a static answer, degrade, retry
//!   with a budget, breaker, timeout); the same stack with its degrade layer held at full
//!   size (so it sends what the peer sends); and the strongest composition of
//!   `tower-resilience` 0.13 (fallback to the light model then a static answer, retry with a token-bucket budget,
//!   circuit breaker, tower's timeout), given this crate's classification to decide what to
//!   retry and what the breaker counts.
#![allow(dead_code)]

use std::sync::Arc;
use std::time::Duration;

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use tokio::task::JoinSet;
use tokio::time::Instant;
use tower::Layer;
use tower::util::BoxCloneSyncService;
use tower::{BoxError, ServiceBuilder, ServiceExt};
use tower_inference::breaker::BreakerLayer;
use tower_inference::classify::ClassifyError;
use tower_inference::degrade::{DegradeLayer, Level};
use tower_inference::fallback::{CacheStore, FallbackLayer, MemoryStore};
use tower_inference::metrics::ErrorMetrics;
use tower_inference::mock::{
    ChaosHandle, ChaosLayer, Completion, InferenceRequest, MockGpu, MockGpuHandle,
};
use tower_inference::retry::{Backoff, RetryBudget, RetryLayer};
use tower_inference::stack::InferenceStack;
use tower_inference::{ErrorKind, GenerationParams, InferenceError, Quality};

/// Tokens every request asks for.
pub const MAX_TOKENS: u32 = 64;
/// Distinct prompts in the traffic.
pub const QUESTIONS: u64 = 200;
/// The timeout of every backend attempt, for every contestant.
pub const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(1);
/// The retry budget's share of requests that may be retried.
pub const BUDGET_PERCENT: f64 = 0.1;
/// Retries the budget allows a second whatever the traffic.
pub const BUDGET_MIN_PER_SEC: u32 = 5;
/// The retry budget's window.
pub const BUDGET_TTL: Duration = Duration::from_secs(2);

/// A served request's source, best first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Tier {
    /// The primary model.
    Primary,
    /// The lighter model.
    Light,
    /// The last good answer from the cache.
    Cache,
    /// The static default.
    Static,
}

impl Tier {
    pub const ALL: [Tier; 4] = [Tier::Primary, Tier::Light, Tier::Cache, Tier::Static];

    pub fn label(self) -> &'static str {
        match self {
            Tier::Primary => "tier 1 (llama-70b)",
            Tier::Light => "tier 2 (llama-8b)",
            Tier::Cache => "cache",
            Tier::Static => "static",
        }
    }

    fn of(name: &str) -> Option<Tier> {
        match name {
            "llama-70b" => Some(Tier::Primary),
            "llama-8b" => Some(Tier::Light),
            "cache" => Some(Tier::Cache),
            "static" => Some(Tier::Static),
            _ => None,
        }
    }
}

/// Who serves the traffic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Contestant {
    /// The primary behind tower's timeout, nothing else.
    Bare,
    /// This crate's `InferenceStack`.
    Ours,
    /// The same stack with its degrade layer held at full size (one level, `full`): every
    /// request goes out as asked, as the peer sends them, for a like-for-like comparison.
    OursNoDegrade,
    /// tower-resilience 0.13: fallback, retry with a budget, circuit breaker, tower's timeout.
    Peer,
}

impl Contestant {
    pub const ALL: [Contestant; 4] = [
        Contestant::Bare,
        Contestant::Ours,
        Contestant::OursNoDegrade,
        Contestant::Peer,
    ];

    /// Whether it is this crate's stack, which names the answering tier in the provenance.
    pub fn is_ours(self) -> bool {
        matches!(self, Contestant::Ours | Contestant::OursNoDegrade)
    }

    pub fn label(self) -> &'static str {
        match self {
            Contestant::Bare => "bare + timeout",
            Contestant::Ours => "tower-inference",
            Contestant::OursNoDegrade => "tower-inference, no degrade",
            Contestant::Peer => "tower-resilience",
        }
    }
}

/// What goes wrong during a drill.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Fault {
    /// Nothing: steady load.
    None,
    /// The primary dies at 20 % of the run and is revived at 50 % (30 % of the run down); it
    /// then reloads its weights for a twentieth of the run.
    Outage,
    /// The primary computes five times slower from 20 % to 60 % of the run.
    Brownout,
    /// One request in ten asks for an image too large for the primary's free memory.
    MemoryPressure,
    /// From 10 % of the run on, one primary call in five fails at once with `Infrastructure`
    /// (a connection reset: the kind of failure worth retrying), from a `ChaosLayer` in front
    /// of the GPU.
    Flaky,
    /// Both models die at 20 % of the run and are revived at 50 %, with the cache in a real
    /// Redis that is killed at 35 %: the cache answers, then the static default.
    RedisOutage,
}

/// One drill: a load, a fault, a length and a seed.
#[derive(Debug, Clone, Copy)]
pub struct Scenario {
    pub name: &'static str,
    /// Arrival rate as a multiple of [`primary_capacity`].
    pub load: f64,
    pub fault: Fault,
    pub duration: Duration,
    pub seed: u64,
}

impl Scenario {
    /// Every scenario but the Redis one, each `duration` long.
    pub fn all(duration: Duration) -> Vec<Scenario> {
        let s = |name, load, fault| Scenario {
            name,
            load,
            fault,
            duration,
            seed: 0xD811,
        };
        vec![
            s("steady 0.5x", 0.5, Fault::None),
            s("steady 1x", 1.0, Fault::None),
            s("steady 2x", 2.0, Fault::None),
            s("steady 4x", 4.0, Fault::None),
            s("outage 30%", 1.0, Fault::Outage),
            s("brownout 5x slower", 1.0, Fault::Brownout),
            s("memory pressure", 1.0, Fault::MemoryPressure),
            s("flaky 20%", 1.0, Fault::Flaky),
        ]
    }

    /// The outage with the cache in a real Redis, killed mid-outage. It runs on real time
    /// only: a paused clock jumps ahead while a Redis reply is on its way.
    pub fn redis(duration: Duration) -> Scenario {
        Scenario {
            name: "outage, Redis cache killed",
            load: 1.0,
            fault: Fault::RedisOutage,
            duration,
            seed: 0xD811,
        }
    }

    /// How long the primary loads its weights, at start and after a revive.
    pub fn load_time(&self) -> Duration {
        self.duration / 20
    }

    /// The most primary attempts per request the retry budget allows: every request once,
    /// plus `BUDGET_PERCENT` of them, plus `BUDGET_MIN_PER_SEC` for every second of the run
    /// and one window more (the reserve the budget starts with).
    pub fn attempts_bound(&self, requests: usize) -> f64 {
        let reserve = f64::from(BUDGET_MIN_PER_SEC) * (self.duration + BUDGET_TTL).as_secs_f64();
        1.0 + BUDGET_PERCENT + reserve / requests.max(1) as f64
    }

    /// When the primary is revived, for the outage drills.
    pub fn revive_at(&self) -> Option<Duration> {
        matches!(self.fault, Fault::Outage | Fault::RedisOutage).then(|| self.at(0.5))
    }

    fn at(&self, share: f64) -> Duration {
        self.duration.mul_f64(share)
    }
}

/// Switches to take a layer out of our stack, to show the drills catch its absence.
#[derive(Debug, Clone, Copy)]
pub struct Options {
    pub fallback: bool,
    pub budget: bool,
    pub degrade: bool,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            fallback: true,
            budget: true,
            degrade: true,
        }
    }
}

/// The primary as the contestants see it: the GPU behind a fault injector.
type Primary = BoxCloneSyncService<InferenceRequest, Completion, InferenceError>;

/// The two GPUs.
pub struct Fleet {
    pub primary: Primary,
    pub gpu: MockGpuHandle,
    pub chaos: ChaosHandle,
    pub light: MockGpu,
}

impl Fleet {
    fn new(seed: u64, load_time: Duration) -> Fleet {
        let gpu = primary_builder().seed(seed).load_time(load_time).build();
        let chaos = ChaosLayer::builder().seed(seed ^ 0xC4).build();
        Fleet {
            gpu: gpu.handle(),
            chaos: chaos.handle(),
            primary: BoxCloneSyncService::new(chaos.layer(gpu)),
            light: MockGpu::builder()
                .name("llama-8b")
                .slots(16)
                .queue_capacity(64)
                .base_latency(Duration::from_millis(4))
                .per_token_latency(Duration::from_micros(100))
                .memory_capacity_mib(24_576)
                .model_memory_mib(4_096)
                .seed(seed ^ 0x8B)
                .build(),
        }
    }
}

/// The primary's slots (requests computed at once).
pub const PRIMARY_SLOTS: usize = 16;
/// The primary's places in all: its slots and its queue.
pub const PRIMARY_PLACES: usize = PRIMARY_SLOTS + 32;

fn primary_builder() -> tower_inference::mock::MockGpuBuilder {
    MockGpu::builder()
        .name("llama-70b")
        .slots(PRIMARY_SLOTS)
        .queue_capacity(PRIMARY_PLACES - PRIMARY_SLOTS)
        .base_latency(Duration::from_millis(10))
        .per_token_latency(Duration::from_micros(500))
        .memory_capacity_mib(24_576)
        .model_memory_mib(20_480)
        .overload_retry_after(Duration::from_millis(10))
}

/// Requests a second the primary serves at full size: slots / latency of a request.
pub fn primary_capacity() -> f64 {
    let probe = primary_builder().build();
    let latency = probe.latency(&InferenceRequest::new("question 1").max_tokens(MAX_TOKENS));
    PRIMARY_SLOTS as f64 / latency.as_secs_f64()
}

/// What happened to one request.
#[derive(Debug, Clone)]
pub struct Record {
    /// When it arrived, from the start of the run.
    pub arrival: Duration,
    /// How long it took to answer or fail.
    pub latency: Duration,
    /// Who answered, or `None` if it failed.
    pub tier: Option<Tier>,
    /// The failure's kind, if it failed.
    pub error: Option<ErrorKind>,
    /// The quality the answer reports (our stack only; others answer at full quality or say
    /// nothing).
    pub quality: Quality,
    /// The degrade level applied, if any (our stack only).
    pub degraded: Option<String>,
    /// Backend attempts the answer reports (our stack only).
    pub attempts: Option<u32>,
    /// Tokens in the answer (the request asks for `MAX_TOKENS`; degrading asks for fewer).
    pub tokens: u32,
    /// Whether it asked for an image (the memory-pressure drill's oversized requests).
    pub image: bool,
}

/// A drill's records and the GPUs' counters.
pub struct Report {
    pub scenario: Scenario,
    pub contestant: Contestant,
    pub records: Vec<Record>,
    pub primary_calls: u64,
    pub light_calls: u64,
    pub out_of_memory: u64,
    /// The primary's busy slots and queue once the run drained: both must be 0.
    pub primary_left_busy: usize,
}

/// The figures of one report.
#[derive(Debug, Clone)]
pub struct Figures {
    pub requests: usize,
    pub answered: f64,
    pub tier1: f64,
    pub tier12: f64,
    pub cache: f64,
    pub static_default: f64,
    pub goodput: f64,
    pub tier1_p50: Option<Duration>,
    pub tier1_p99: Option<Duration>,
    /// GPU calls (both models) per answered request.
    pub amplification: f64,
    /// Primary calls per request: 1 + the retries the budget allowed.
    pub primary_per_request: f64,
    pub out_of_memory: u64,
    /// From revive to the first tier-1 answer.
    pub first_tier1: Option<Duration>,
    /// From revive to the start of the first twentieth of the run, after it, with a tier-1
    /// share of 90 % or more.
    pub tier1_back: Option<Duration>,
    /// The share of requests served at a degrade level below full (our stack only).
    pub degraded: f64,
    /// Tokens in the tier-1 answers, as a share of the tokens asked for.
    pub tier1_length: f64,
}

impl Report {
    pub fn figures(&self) -> Figures {
        let n = self.records.len().max(1) as f64;
        let count = |f: &dyn Fn(&Record) -> bool| self.records.iter().filter(|r| f(r)).count();
        let answered = count(&|r| r.tier.is_some());
        let tier1 = count(&|r| r.tier == Some(Tier::Primary));
        let tier12 = count(&|r| matches!(r.tier, Some(Tier::Primary | Tier::Light)));
        let mut latencies: Vec<Duration> = self
            .records
            .iter()
            .filter(|r| r.tier == Some(Tier::Primary))
            .map(|r| r.latency)
            .collect();
        latencies.sort();
        let pct = |p: f64| {
            (!latencies.is_empty())
                .then(|| latencies[((latencies.len() as f64 * p).ceil() as usize).max(1) - 1])
        };
        let (first_tier1, tier1_back) = match self.scenario.revive_at() {
            None => (None, None),
            Some(revive) => (
                self.first_tier1_after(revive),
                self.tier1_back_after(revive),
            ),
        };
        Figures {
            requests: self.records.len(),
            answered: answered as f64 / n,
            tier1: tier1 as f64 / n,
            tier12: tier12 as f64 / n,
            cache: count(&|r| r.tier == Some(Tier::Cache)) as f64 / n,
            static_default: count(&|r| r.tier == Some(Tier::Static)) as f64 / n,
            goodput: answered as f64 / self.scenario.duration.as_secs_f64(),
            tier1_p50: pct(0.50),
            tier1_p99: pct(0.99),
            amplification: (self.primary_calls + self.light_calls) as f64 / answered.max(1) as f64,
            primary_per_request: self.primary_calls as f64 / n,
            out_of_memory: self.out_of_memory,
            first_tier1,
            tier1_back,
            degraded: count(&|r| r.degraded.is_some()) as f64 / n,
            tier1_length: {
                let (answers, tokens) = self
                    .records
                    .iter()
                    .filter(|r| r.tier == Some(Tier::Primary))
                    .fold((0u64, 0u64), |(n, t), r| (n + 1, t + u64::from(r.tokens)));
                tokens as f64 / (answers.max(1) * u64::from(MAX_TOKENS)) as f64
            },
        }
    }

    fn first_tier1_after(&self, revive: Duration) -> Option<Duration> {
        self.records
            .iter()
            .filter(|r| r.tier == Some(Tier::Primary))
            .map(|r| r.arrival + r.latency)
            .filter(|&done| done >= revive)
            .min()
            .map(|done| done - revive)
    }

    fn tier1_back_after(&self, revive: Duration) -> Option<Duration> {
        let bucket = self.scenario.duration / 20;
        let mut start = revive;
        while start + bucket <= self.scenario.duration {
            let window: Vec<_> = self
                .records
                .iter()
                .filter(|r| r.arrival >= start && r.arrival < start + bucket)
                .collect();
            let tier1 = window
                .iter()
                .filter(|r| r.tier == Some(Tier::Primary))
                .count();
            if !window.is_empty() && tier1 as f64 >= 0.9 * window.len() as f64 {
                return Some(start - revive);
            }
            start += bucket;
        }
        None
    }

    /// Answers a second by tier (and failures, last), by completion time, in `buckets`
    /// buckets over the run; requests that end after the run are left out.
    pub fn timeline(&self, buckets: usize) -> Vec<[f64; 5]> {
        let width = self.scenario.duration.as_secs_f64() / buckets as f64;
        let mut rows = vec![[0.0; 5]; buckets];
        for r in &self.records {
            let done = (r.arrival + r.latency).as_secs_f64();
            if let Some(row) = rows.get_mut((done / width) as usize) {
                row[r.tier.map_or(4, |t| t as usize)] += 1.0 / width;
            }
        }
        rows
    }
}

type Svc = BoxCloneSyncService<InferenceRequest, Completion, BoxError>;

fn static_answer() -> Completion {
    Completion {
        model: "static".into(),
        text: "The assistant is busy; please try again in a minute.".into(),
        tokens: 0,
        provenance: Default::default(),
    }
}

fn budget() -> Arc<RetryBudget> {
    Arc::new(RetryBudget::new(
        BUDGET_TTL,
        BUDGET_MIN_PER_SEC,
        BUDGET_PERCENT,
    ))
}

fn bare(fleet: &Fleet) -> Svc {
    BoxCloneSyncService::new(
        ServiceBuilder::new()
            .timeout(ATTEMPT_TIMEOUT)
            .service(fleet.primary.clone()),
    )
}

/// Our stack with the given cache store.
fn ours<St>(fleet: &Fleet, options: Options, store: St, scenario: &Scenario) -> Svc
where
    St: CacheStore<Completion> + Send + Sync + 'static,
{
    let (duration, seed) = (scenario.duration, scenario.seed);
    let gpu = fleet.gpu.clone();
    // The load is the share of the primary's places in use: its 16 slots and its 32 queue
    // places. The default levels then step down only once requests queue in earnest (from 34
    // places in use), and back up after half a second below the threshold.
    let degrade = DegradeLayer::builder()
        .probe(Duration::from_millis(20), move || {
            let s = gpu.stats();
            (s.in_flight + s.queued) as f64 / PRIMARY_PLACES as f64
        })
        .hysteresis(0.1, duration / 20);
    // Without degrading: one level, full, so every request goes out at full size.
    let degrade = if options.degrade {
        degrade
    } else {
        degrade.levels([Level::new("full", 0.0, 1.0, 1.0)])
    };
    let mut retry = RetryLayer::builder()
        .max_attempts(3)
        .backoff(
            Backoff::new(Duration::from_millis(10), 2.0, Duration::from_millis(100)).seed(seed),
        )
        .budget(budget());
    if !options.budget {
        retry = retry.without_budget();
    }
    let stack = InferenceStack::new("llama-70b")
        .metrics(&ErrorMetrics::new())
        .degrade(degrade)
        .retry(retry.oom_retry())
        .breaker(
            BreakerLayer::builder()
                .ignore(ErrorKind::Overloaded)
                .count_window(50)
                .minimum_calls(20)
                .failure_rate_threshold(0.5)
                .open_duration(duration / 20)
                .half_open_probes(3),
        )
        .timeout(ATTEMPT_TIMEOUT);
    let primary = fleet.primary.clone();
    if options.fallback {
        let layer = stack
            .fallback(
                FallbackLayer::builder()
                    .tier("llama-8b", Quality::Reduced, timed(fleet.light.clone()))
                    .cache(
                        store,
                        |r: &InferenceRequest| r.prompt.clone(),
                        Duration::from_secs(600),
                    )
                    .static_default(|_: &InferenceRequest| static_answer()),
            )
            .build();
        BoxCloneSyncService::new(ServiceBuilder::new().layer(layer).service(primary))
    } else {
        let layer = stack.build();
        BoxCloneSyncService::new(ServiceBuilder::new().layer(layer).service(primary))
    }
}

/// The light model behind the same per-attempt timeout, its errors boxed like the primary's.
fn timed(light: MockGpu) -> Svc {
    BoxCloneSyncService::new(
        ServiceBuilder::new()
            .timeout(ATTEMPT_TIMEOUT)
            .service(light),
    )
}

fn peer(fleet: &Fleet, rate: f64, duration: Duration) -> Svc {
    use tower_resilience::circuitbreaker::{CircuitBreakerError, CircuitBreakerLayer};
    use tower_resilience::fallback::{FallbackError, FallbackLayer as PeerFallback};
    use tower_resilience::retry::{RetryBudgetBuilder, RetryLayer as PeerRetry};

    type BreakerError = CircuitBreakerError<BoxError>;
    let tokens = (rate * BUDGET_PERCENT).max(1.0);
    let budget = RetryBudgetBuilder::new()
        .token_bucket()
        .tokens_per_second(tokens + f64::from(BUDGET_MIN_PER_SEC))
        .max_tokens((tokens * BUDGET_TTL.as_secs_f64()) as usize + 1)
        .build()
        .expect("a valid token bucket");
    let retry = PeerRetry::<InferenceRequest, Completion, BreakerError>::builder()
        .max_attempts(3)
        .exponential_backoff(Duration::from_millis(10))
        .retry_on(|e: &BreakerError| match e {
            CircuitBreakerError::OpenCircuit => false,
            CircuitBreakerError::Inner(e) => e.outcome().is_retryable(),
        })
        .budget(budget)
        .build();
    let breaker = CircuitBreakerLayer::builder()
        .sliding_window_size(50)
        .minimum_number_of_calls(20)
        .failure_rate_threshold(0.5)
        .wait_duration_in_open(duration / 20)
        .permitted_calls_in_half_open(3)
        // Its classifier has no "ignore": `Overloaded` is not a failure, as for ours.
        .failure_classifier(|result: &Result<Completion, BoxError>| match result {
            Ok(_) => false,
            Err(e) => {
                let outcome = e.outcome();
                outcome.is_backend_fault() && outcome.kind() != Some(ErrorKind::Overloaded)
            }
        })
        .build()
        .expect("a valid tower-resilience breaker");
    let guarded = ServiceBuilder::new()
        .map_err(|e: BreakerError| -> BoxError {
            match e {
                CircuitBreakerError::OpenCircuit => Box::new(InferenceError::CircuitOpen {
                    retry_in: Duration::ZERO,
                }),
                CircuitBreakerError::Inner(e) => e,
            }
        })
        .layer(retry)
        .layer(breaker)
        .timeout(ATTEMPT_TIMEOUT)
        .service(fleet.primary.clone());
    let with_light = ServiceBuilder::new()
        .map_err(|e: FallbackError<BoxError, BoxError>| -> BoxError {
            match e {
                FallbackError::Inner(e) => e,
                FallbackError::FallbackFailed(e) => e,
            }
        })
        .layer(
            PeerFallback::<InferenceRequest, Completion, BoxError>::tower_service(timed(
                fleet.light.clone(),
            )),
        )
        .service(guarded);
    BoxCloneSyncService::new(
        ServiceBuilder::new()
            .map_err(|e: FallbackError<BoxError>| -> BoxError { e.to_string().into() })
            .layer(PeerFallback::<InferenceRequest, Completion, BoxError>::value(static_answer()))
            .service(with_light),
    )
}

/// Request `i` of a drill.
fn request(fault: Fault, rng: &mut SmallRng) -> InferenceRequest {
    let question = rng.random_range(0..QUESTIONS);
    let mut params = GenerationParams::new(MAX_TOKENS);
    if fault == Fault::MemoryPressure && rng.random_bool(0.1) {
        params.resolution = Some((3072, 3072));
    }
    InferenceRequest::new(format!("question {question}")).params(params)
}

/// Runs one drill to the end (every request answered or failed) and reports it.
pub async fn run(scenario: Scenario, contestant: Contestant, options: Options) -> Report {
    let load_time = scenario.load_time();
    let fleet = Fleet::new(scenario.seed, load_time);
    let rate = scenario.load * primary_capacity();
    #[cfg(feature = "redis")]
    let mut redis = None;
    let svc = match contestant {
        Contestant::Bare => bare(&fleet),
        Contestant::Peer => peer(&fleet, rate, scenario.duration),
        Contestant::Ours | Contestant::OursNoDegrade => {
            let options = Options {
                degrade: options.degrade && contestant == Contestant::Ours,
                ..options
            };
            match scenario.fault {
                #[cfg(feature = "redis")]
                Fault::RedisOutage => {
                    let server = redis::Server::start().await;
                    let store =
                        tower_inference::fallback::RedisStore::connect(&server.url, "drill")
                            .await
                            .expect("a connection to the drill's redis-server");
                    redis = Some(server);
                    ours(&fleet, options, store, &scenario)
                }
                _ => ours(&fleet, options, MemoryStore::new(10_000), &scenario),
            }
        }
    };
    // The primary loads its weights before traffic starts.
    tokio::time::sleep(load_time).await;

    let start = Instant::now();
    let gpu = fleet.gpu.clone();
    let faults = tokio::spawn(inject(
        scenario,
        gpu.clone(),
        fleet.light.handle(),
        fleet.chaos.clone(),
        start,
        #[cfg(feature = "redis")]
        redis,
    ));

    let mut rng = SmallRng::seed_from_u64(scenario.seed);
    let mut calls = JoinSet::new();
    let mut at = 0.0;
    loop {
        // Exponential gaps: a Poisson process of `rate` arrivals a second.
        at += -(1.0 - rng.random::<f64>()).ln() / rate;
        let arrival = Duration::from_secs_f64(at);
        if arrival >= scenario.duration {
            break;
        }
        tokio::time::sleep_until(start + arrival).await;
        let req = request(scenario.fault, &mut rng);
        let image = req.params.resolution.is_some();
        let svc = svc.clone();
        calls.spawn(async move {
            let arrival = start.elapsed();
            let result = svc.oneshot(req).await;
            let latency = start.elapsed() - arrival;
            Record {
                image,
                ..record(arrival, latency, contestant, result)
            }
        });
    }
    let records = calls.join_all().await;
    faults.await.expect("the fault injector");
    let primary = gpu.stats();
    let light = fleet.light.handle().stats();
    Report {
        scenario,
        contestant,
        records,
        primary_calls: primary.calls + fleet.chaos.injected_errors(),
        light_calls: light.calls,
        out_of_memory: primary.out_of_memory + light.out_of_memory,
        primary_left_busy: primary.in_flight + primary.queued,
    }
}

fn record(
    arrival: Duration,
    latency: Duration,
    contestant: Contestant,
    result: Result<Completion, BoxError>,
) -> Record {
    match result {
        Ok(done) => {
            let p = &done.provenance;
            // Our stack names the tier in the provenance; the others only say which model
            // made the answer.
            let tier = if contestant.is_ours() {
                Tier::of(&p.tier)
            } else {
                Tier::of(&done.model)
            };
            Record {
                arrival,
                latency,
                tier,
                error: None,
                quality: p.quality.clone(),
                degraded: p
                    .degraded
                    .as_deref()
                    .filter(|&l| l != "full")
                    .map(str::to_owned),
                attempts: contestant.is_ours().then_some(p.attempts),
                tokens: done.tokens,
                image: false,
            }
        }
        Err(e) => Record {
            arrival,
            latency,
            tier: None,
            error: e.outcome().kind(),
            quality: Quality::Minimal,
            degraded: None,
            attempts: None,
            tokens: 0,
            image: false,
        },
    }
}

/// Applies the scenario's fault at its times.
async fn inject(
    scenario: Scenario,
    gpu: MockGpuHandle,
    light: MockGpuHandle,
    chaos: ChaosHandle,
    start: Instant,
    #[cfg(feature = "redis")] mut redis: Option<redis::Server>,
) {
    let at = |share: f64| tokio::time::sleep_until(start + scenario.at(share));
    match scenario.fault {
        Fault::None | Fault::MemoryPressure => {}
        Fault::Flaky => {
            at(0.1).await;
            chaos.set_error_rate(0.2);
        }
        Fault::Brownout => {
            at(0.2).await;
            gpu.set_slowdown(5.0);
            at(0.6).await;
            gpu.set_slowdown(1.0);
        }
        Fault::Outage => {
            at(0.2).await;
            gpu.kill();
            at(0.5).await;
            gpu.revive();
        }
        Fault::RedisOutage => {
            at(0.2).await;
            gpu.kill();
            light.kill();
            at(0.35).await;
            #[cfg(feature = "redis")]
            drop(redis.take());
            at(0.5).await;
            gpu.revive();
            light.revive();
        }
    }
}

#[cfg(feature = "redis")]
mod redis {
    //! A `redis-server` of the drill's own on a free loopback port, killed when dropped.

    use std::process::Stdio;
    use std::time::Duration;

    use tokio::io::{AsyncBufReadExt, BufReader};
    use tokio::process::{Child, Command};

    pub struct Server {
        _child: Child,
        pub url: String,
    }

    impl Server {
        pub async fn start() -> Server {
            let port = std::net::TcpListener::bind("127.0.0.1:0")
                .and_then(|probe| probe.local_addr())
                .expect("a free loopback port")
                .port();
            let mut child = Command::new("redis-server")
                .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
                .args(["--save", "", "--appendonly", "no"])
                .stdout(Stdio::piped())
                .kill_on_drop(true)
                .spawn()
                .expect("redis-server (apt install redis-server) for the Redis drill");
            let mut lines = BufReader::new(child.stdout.take().expect("piped stdout")).lines();
            tokio::time::timeout(Duration::from_secs(30), async {
                while let Some(line) = lines.next_line().await.expect("redis-server output") {
                    if line.contains("Ready to accept connections") {
                        return;
                    }
                }
                panic!("redis-server exited before it was ready");
            })
            .await
            .expect("redis-server ready within 30 s");
            Server {
                _child: child,
                url: format!("redis://127.0.0.1:{port}/"),
            }
        }
    }
}
