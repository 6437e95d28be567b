//! The whole stack in front of a mock GPU, through an outage.
//!
//! Run with `cargo run --example stack --features mock`.
//!
//! A 70B-parameter model (the primary) behind metrics, fallback, degrade, retry, a circuit
//! breaker and a timeout; a lighter 8B model, a cache of last good answers and a static
//! default behind it. Four thousand requests arrive in waves of concurrent calls; the
//! primary is killed after the first thousand and revived after the second. Every request is
//! answered, and the program prints which tier answered, at what quality, why it fell back,
//! and the Prometheus text an operator would scrape.

use std::collections::BTreeMap;
use std::time::Duration;

use tower::{ServiceBuilder, ServiceExt};
use tower_inference::breaker::BreakerLayer;
use tower_inference::degrade::DegradeLayer;
use tower_inference::fallback::{FallbackLayer, MemoryStore};
use tower_inference::metrics::ErrorMetrics;
use tower_inference::mock::{Completion, InferenceRequest, MockGpu};
use tower_inference::retry::{Backoff, RetryLayer};
use tower_inference::stack::InferenceStack;
use tower_inference::{ErrorKind, Event, Quality};

const REQUESTS: usize = 4_000;
const WAVE: usize = 250;

#[tokio::main]
async fn main() {
    let primary = MockGpu::builder()
        .name("llama-70b")
        .slots(64)
        .queue_capacity(256)
        .base_latency(Duration::from_millis(8))
        .per_token_latency(Duration::from_micros(100))
        .load_time(Duration::from_millis(300))
        .build();
    let light = MockGpu::builder()
        .name("llama-8b")
        .slots(32)
        .queue_capacity(64)
        .base_latency(Duration::from_millis(3))
        .per_token_latency(Duration::from_micros(20))
        .build();
    let gpu = primary.handle();
    let metrics = ErrorMetrics::new();

    let layer = InferenceStack::new("llama-70b")
        .metrics(&metrics)
        .event_sink(|event: &Event<'_>| {
            if let Event::BreakerTransition { breaker, from, to } = event {
                println!("    [event] breaker {breaker}: {from} -> {to}");
            }
        })
        .fallback(
            FallbackLayer::builder()
                .tier("llama-8b", Quality::Reduced, light)
                .cache(
                    MemoryStore::new(10_000),
                    |r: &InferenceRequest| r.prompt.clone(),
                    Duration::from_secs(600),
                )
                .static_default(|_: &InferenceRequest| Completion {
                    model: "static".into(),
                    text: "The assistant is busy; please try again in a minute.".into(),
                    tokens: 0,
                    provenance: Default::default(),
                }),
        )
        .degrade(DegradeLayer::builder().in_flight_capacity(200))
        .retry(RetryLayer::builder().max_attempts(3).backoff(Backoff::new(
            Duration::from_millis(5),
            2.0,
            Duration::from_millis(50),
        )))
        .breaker(
            BreakerLayer::builder()
                .ignore(ErrorKind::Overloaded)
                .count_window(50)
                .minimum_calls(10)
                .failure_rate_threshold(0.5)
                .open_duration(Duration::from_millis(300))
                .half_open_probes(3),
        )
        .timeout(Duration::from_secs(2))
        .build();
    let breaker = layer.breaker().expect("the stack has a breaker").clone();
    let svc = ServiceBuilder::new().layer(layer).service(primary);

    println!("== tower-inference stack: {REQUESTS} requests, waves of {WAVE} ==\n");
    println!("  -- waiting for the primary to load its weights --");
    while !gpu.is_ready() {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut tiers: BTreeMap<String, (usize, String)> = BTreeMap::new();
    let mut reasons: BTreeMap<String, usize> = BTreeMap::new();
    let mut attempts: BTreeMap<u32, usize> = BTreeMap::new();
    let (mut answered, mut failed) = (0, 0);

    for wave in 0..REQUESTS / WAVE {
        let sent = wave * WAVE;
        if sent == 1_000 {
            println!("  -- the primary is killed after {sent} requests --");
            gpu.kill();
        }
        if sent == 2_000 {
            println!("  -- the primary is revived after {sent} requests (300 ms to load) --");
            gpu.revive();
        }
        let calls: Vec<_> = (0..WAVE)
            .map(|i| {
                // 40 distinct questions, so the cache has answers to give.
                let request =
                    InferenceRequest::new(format!("question {}", (sent + i) % 40)).max_tokens(16);
                tokio::spawn(svc.clone().oneshot(request))
            })
            .collect();
        let mut wave_tiers: BTreeMap<String, usize> = BTreeMap::new();
        for call in calls {
            match call.await.expect("a request task panicked") {
                Ok(done) => {
                    answered += 1;
                    let p = &done.provenance;
                    *wave_tiers.entry(p.tier.to_string()).or_default() += 1;
                    let entry = tiers.entry(p.tier.to_string()).or_default();
                    entry.0 += 1;
                    entry.1 = p.quality.to_string();
                    *attempts.entry(p.attempts).or_default() += 1;
                    if !p.failed_tiers().is_empty() {
                        let why: Vec<_> = p
                            .failed_tiers()
                            .iter()
                            .map(|f| format!("{} {}", f.tier, f.kind))
                            .collect();
                        *reasons.entry(why.join(", then ")).or_default() += 1;
                    }
                }
                Err(err) => {
                    failed += 1;
                    println!("    unanswered: {err}");
                }
            }
        }
        println!(
            "wave {:>2} (requests {:>4}..{:>4}): breaker {:<9} answers by tier {wave_tiers:?}",
            wave + 1,
            sent,
            sent + WAVE,
            breaker.state().to_string(),
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    println!("\n== {answered} of {REQUESTS} answered, {failed} unanswered ==\n");
    println!("answers by tier:");
    for (tier, (count, quality)) in &tiers {
        println!("  {tier:<10} {count:>5}  quality {quality}");
    }
    println!("\nwhy answers fell back:");
    for (why, count) in &reasons {
        println!("  {count:>5}  {why}");
    }
    println!("\nbackend calls per answer:");
    for (n, count) in &attempts {
        println!("  {n} call(s): {count:>5}");
    }
    let stats = gpu.stats();
    println!(
        "\nprimary GPU: {} calls, {} succeeded, {} failed",
        stats.calls, stats.succeeded, stats.failed
    );
    println!("\n== Prometheus text ==\n");
    print!("{}", metrics.render_prometheus());
    assert_eq!(answered, REQUESTS, "every request is answered");
}
