//! Load drills on paused time: a ten-second run of every scenario (`benches/drill/mod.rs`)
//! through this crate's stack, asserting the service levels the stack exists for.
//!
//! Each run is deterministic (a seeded Poisson process on a paused clock) and takes a fraction
//! of a second. The real-time runs with every contestant are `cargo bench --bench drills`; the
//! table is in `BENCHMARKS.md`. The Redis drill needs real time and runs only there.
#![cfg(feature = "mock")]

#[path = "../benches/drill/mod.rs"]
mod drill;

use std::time::Duration;

use drill::{Contestant, Figures, Options, Report, Scenario, Tier};

const RUN: Duration = Duration::from_secs(10);

fn scenario(name: &str) -> Scenario {
    Scenario::all(RUN)
        .into_iter()
        .find(|s| s.name == name)
        .expect("a scenario of that name")
}

/// The named drill through our stack.
async fn drill(name: &str, options: Options) -> (Scenario, Report) {
    let scenario = scenario(name);
    let report = drill::run(scenario, Contestant::Ours, options).await;
    (scenario, report)
}

fn show(scenario: &Scenario, f: &Figures) -> String {
    format!("{}: {f:?}", scenario.name)
}

#[tokio::test(start_paused = true)]
async fn every_scenario_answers_every_request_mostly_from_the_models() {
    for scenario in Scenario::all(RUN) {
        let report = drill::run(scenario, Contestant::Ours, Options::default()).await;
        let f = report.figures();
        let why = show(&scenario, &f);
        assert!(f.requests > 1_500, "{why}");
        assert_eq!(f.answered, 1.0, "availability: {why}");
        assert!(f.tier12 >= 0.95, "tier 1 + 2 share: {why}");
        assert!(
            f.primary_per_request <= scenario.attempts_bound(f.requests),
            "retries beyond the budget ({} allowed): {why}",
            scenario.attempts_bound(f.requests)
        );
        assert_eq!(report.primary_left_busy, 0, "a GPU place leaked: {why}");
    }
}

#[tokio::test(start_paused = true)]
async fn tier1_serves_90_percent_under_150_ms_where_capacity_allows() {
    for name in ["steady 0.5x", "steady 1x", "steady 2x", "memory pressure"] {
        let (scenario, report) = drill(name, Options::default()).await;
        let f = report.figures();
        let why = show(&scenario, &f);
        assert!(f.tier1 >= 0.9, "tier-1 share: {why}");
        assert!(
            f.tier1_p99.expect("tier-1 answers") < Duration::from_millis(150),
            "tier-1 p99: {why}"
        );
    }
}

/// Degrading trades answer length for capacity, so it happens only when capacity runs
/// short: at half load every answer is full size, at full load the primary's answers keep
/// most of their length.
#[tokio::test(start_paused = true)]
async fn answers_are_as_long_as_capacity_allows() {
    let (scenario, report) = drill("steady 0.5x", Options::default()).await;
    let f = report.figures();
    assert_eq!(f.degraded, 0.0, "{}", show(&scenario, &f));
    assert_eq!(f.tier1_length, 1.0, "{}", show(&scenario, &f));

    let (scenario, report) = drill("steady 1x", Options::default()).await;
    let f = report.figures();
    assert!(f.tier1_length >= 0.85, "{}", show(&scenario, &f));
}

/// Without the degrade layer stepping down, twice the primary's capacity leaves it half the
/// answers; with it, nine in ten.
#[tokio::test(start_paused = true)]
async fn the_drills_catch_a_stack_without_degrade() {
    let full_size = Options {
        degrade: false,
        ..Options::default()
    };
    let (scenario, report) = drill("steady 2x", full_size).await;
    let f = report.figures();
    let why = show(&scenario, &f);
    assert_eq!(f.degraded, 0.0, "{why}");
    assert_eq!(f.tier1_length, 1.0, "{why}");
    assert!(f.tier1 < 0.6, "{why}");
}

#[tokio::test(start_paused = true)]
async fn under_load_requests_are_degraded_and_the_primary_stays_busy() {
    let (scenario, report) = drill("steady 4x", Options::default()).await;
    let f = report.figures();
    let why = show(&scenario, &f);
    // The primary serves more than its full-size capacity (a quarter of 4x) because degraded
    // requests are cheaper, and it is never idled by the breaker.
    assert!(f.tier1 > 0.3, "{why}");
    assert!(f.degraded >= f.tier1 * 0.9, "{why}");
    let full_size = report
        .records
        .iter()
        .filter(|r| r.tier == Some(Tier::Primary) && r.degraded.is_none())
        .count();
    assert!(full_size < report.records.len() / 20, "{why}");
}

#[tokio::test(start_paused = true)]
async fn the_outage_is_survived_and_the_primary_is_back_soon_after_its_revival() {
    let (scenario, report) = drill("outage 30%", Options::default()).await;
    let f = report.figures();
    let why = show(&scenario, &f);
    assert_eq!(f.answered, 1.0, "{why}");
    // While the primary is down (20 % to 50 % of the run), the lighter model answers.
    let down: Vec<_> = report
        .records
        .iter()
        .filter(|r| r.arrival >= RUN.mul_f64(0.25) && r.arrival < RUN.mul_f64(0.5))
        .collect();
    assert!(down.iter().all(|r| r.tier == Some(Tier::Light)), "{why}");
    // It reloads its weights (a twentieth of the run) and the breaker's open time (as long)
    // passes before a probe reaches it.
    let reload = scenario.load_time();
    let first = f.first_tier1.expect("a tier-1 answer after the revival");
    assert!(
        first >= reload && first <= reload * 2 + Duration::from_millis(100),
        "{why}"
    );
    assert!(
        f.tier1_back.expect("tier-1 share back above 90 %") <= reload * 3,
        "{why}"
    );
}

#[tokio::test(start_paused = true)]
async fn oversized_requests_are_shrunk_to_fit_rather_than_failed() {
    let (scenario, report) = drill("memory pressure", Options::default()).await;
    let f = report.figures();
    let why = show(&scenario, &f);
    let images: Vec<_> = report.records.iter().filter(|r| r.image).collect();
    assert!(images.len() > 300, "{why}");
    // Each image needs 4.6 GiB at full size and the primary has 4 GiB free: the retry layer's
    // OOM retry halves it, so most are answered by the primary at a lower resolution.
    let by_primary = images
        .iter()
        .filter(|r| r.tier == Some(Tier::Primary))
        .count();
    assert!(
        by_primary * 10 >= images.len() * 8,
        "{by_primary} of {}: {why}",
        images.len()
    );
}

#[tokio::test(start_paused = true)]
async fn the_drills_catch_a_stack_without_fallback() {
    let (scenario, report) = drill(
        "outage 30%",
        Options {
            fallback: false,
            ..Options::default()
        },
    )
    .await;
    let f = report.figures();
    assert!(f.answered < 0.75, "{}", show(&scenario, &f));
}

#[tokio::test(start_paused = true)]
async fn the_drills_catch_a_stack_without_retry_budget() {
    for name in ["steady 4x", "flaky 20%"] {
        let (scenario, report) = drill(
            name,
            Options {
                budget: false,
                ..Options::default()
            },
        )
        .await;
        let f = report.figures();
        assert!(
            f.primary_per_request > scenario.attempts_bound(f.requests),
            "{}",
            show(&scenario, &f)
        );
    }
}

#[tokio::test(start_paused = true)]
async fn the_bare_service_fails_where_the_stack_answers() {
    for name in [
        "steady 2x",
        "outage 30%",
        "brownout 5x slower",
        "memory pressure",
        "flaky 20%",
    ] {
        let scenario = scenario(name);
        let f = drill::run(scenario, Contestant::Bare, Options::default())
            .await
            .figures();
        assert!(f.answered < 0.95, "{}", show(&scenario, &f));
    }
}

/// Runs the flaky drill on a thread and paused runtime of its own, as a test process does.
fn fresh_run() -> (String, u64) {
    std::thread::spawn(|| {
        tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .start_paused(true)
            .build()
            .unwrap()
            .block_on(async {
                let (_, report) = drill("flaky 20%", Options::default()).await;
                (format!("{:?}", report.figures()), report.primary_calls)
            })
    })
    .join()
    .unwrap()
}

#[test]
fn a_drill_on_paused_time_is_deterministic() {
    assert_eq!(fresh_run(), fresh_run());
}
