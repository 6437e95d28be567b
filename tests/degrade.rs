//! Graceful degradation: thresholds, scaling, hysteresis, sampling, forcing; on paused time.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::SeqCst};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tower::{ServiceBuilder, ServiceExt, service_fn};
use tower_inference::degrade::{
    DEGRADED_WARNING, DegradeBuilder, DegradeHandle, DegradeLayer, Level,
};
use tower_inference::{Event, GenerationParams, InferenceError, Served};

const SEC: Duration = Duration::from_secs(1);
const MS: Duration = Duration::from_millis(1);

/// A load the test sets, read by a probe.
#[derive(Clone, Default)]
struct Dial(Arc<AtomicU64>);

impl Dial {
    fn set(&self, load: f64) {
        self.0.store(load.to_bits(), SeqCst);
    }
    fn probe(&self) -> impl Fn() -> f64 + Send + Sync + 'static {
        let dial = self.0.clone();
        move || f64::from_bits(dial.load(SeqCst))
    }
}

type Echo = tower_inference::degrade::Degrade<
    tower::util::BoxCloneService<GenerationParams, Served<GenerationParams>, InferenceError>,
>;

fn echo(builder: DegradeBuilder) -> (Echo, DegradeHandle, Arc<Mutex<Vec<String>>>) {
    let changes = Arc::new(Mutex::new(Vec::new()));
    let sink = changes.clone();
    let layer = builder
        .event_sink(move |e: &Event<'_>| {
            if let Event::LevelChanged { from, to, .. } = e {
                sink.lock().unwrap().push(format!("{from}->{to}"));
            }
        })
        .build();
    let handle = layer.handle();
    let inner = tower::util::BoxCloneService::new(service_fn(|p: GenerationParams| async move {
        Ok::<_, InferenceError>(Served::new(p))
    }));
    (
        ServiceBuilder::new().layer(layer).service(inner),
        handle,
        changes,
    )
}

fn dialed(dial: &Dial) -> DegradeBuilder {
    DegradeLayer::builder()
        .probe(Duration::ZERO, dial.probe())
        .hysteresis(0.1, 10 * SEC)
}

async fn send(svc: &Echo, params: GenerationParams) -> Served<GenerationParams> {
    svc.clone().oneshot(params).await.unwrap()
}

#[tokio::test(start_paused = true)]
async fn each_threshold_steps_up_at_once() {
    let dial = Dial::default();
    let (svc, handle, changes) = echo(dialed(&dial));
    for (load, level) in [
        (0.0, "full"),
        (0.69, "full"),
        (0.7, "reduced"),
        (0.89, "reduced"),
        (0.9, "minimal"),
        (1.0, "minimal"),
    ] {
        dial.set(load);
        let answer = send(&svc, GenerationParams::new(100)).await;
        assert_eq!(
            answer.provenance.degraded.as_deref(),
            Some(level),
            "load {load}"
        );
        assert_eq!(handle.level(), level);
        assert_eq!(handle.load(), load);
    }
    assert_eq!(
        *changes.lock().unwrap(),
        ["full->reduced", "reduced->minimal"]
    );
}

#[tokio::test(start_paused = true)]
async fn each_level_scales_the_parameters_down_to_their_floors() {
    let dial = Dial::default();
    let (svc, _, _) = echo(dialed(&dial));
    let big = GenerationParams::new(1000)
        .steps(50)
        .batch_size(6)
        .resolution(1024, 1024);
    let tiny = GenerationParams::new(1)
        .steps(1)
        .batch_size(1)
        .resolution(128, 128);
    // load, params in -> (max_tokens, steps, batch, resolution) out
    let table = [
        (0.0, big.clone(), (1000, 50, 6, (1024, 1024))),
        (0.75, big.clone(), (700, 35, 4, (717, 717))),
        (0.95, big.clone(), (400, 20, 2, (410, 410))),
        (0.95, tiny.clone(), (1, 1, 1, (128, 128))),
    ];
    for (load, params, (tokens, steps, batch, resolution)) in table {
        dial.set(load);
        let p = send(&svc, params).await.value;
        assert_eq!(
            (p.max_tokens, p.steps, p.batch_size, p.resolution),
            (tokens, Some(steps), batch, Some(resolution)),
            "load {load}"
        );
    }
}

#[tokio::test(start_paused = true)]
async fn degraded_answers_carry_a_warning() {
    let dial = Dial::default();
    let (svc, _, _) = echo(dialed(&dial));
    assert!(
        send(&svc, GenerationParams::new(8))
            .await
            .provenance
            .warnings()
            .is_empty()
    );
    dial.set(0.8);
    assert_eq!(
        send(&svc, GenerationParams::new(8))
            .await
            .provenance
            .warnings(),
        [DEGRADED_WARNING]
    );
}

#[tokio::test(start_paused = true)]
async fn an_oscillating_load_changes_level_at_most_once_per_dwell() {
    let dial = Dial::default();
    let (svc, handle, changes) = echo(dialed(&dial));
    // 60 s of a load swinging between 0.55 and 0.75 every second.
    for i in 0..60 {
        dial.set(if i % 2 == 0 { 0.75 } else { 0.55 });
        send(&svc, GenerationParams::new(8)).await;
        tokio::time::advance(SEC).await;
    }
    assert_eq!(
        *changes.lock().unwrap(),
        ["full->reduced"],
        "one change in 60 s, not 60"
    );
    assert_eq!(handle.level(), "reduced");
}

#[tokio::test(start_paused = true)]
async fn it_steps_down_only_after_the_dwell_below_the_margin() {
    let dial = Dial::default();
    let (svc, handle, changes) = echo(dialed(&dial));
    dial.set(0.95);
    send(&svc, GenerationParams::new(8)).await;
    assert_eq!(handle.level(), "minimal");

    dial.set(0.85); // below minimal's 0.9, but within the 0.1 margin: stays
    tokio::time::advance(60 * SEC).await;
    send(&svc, GenerationParams::new(8)).await;
    assert_eq!(handle.level(), "minimal");

    dial.set(0.5); // clearly below: the dwell starts now
    send(&svc, GenerationParams::new(8)).await;
    tokio::time::advance(10 * SEC - MS).await;
    send(&svc, GenerationParams::new(8)).await;
    assert_eq!(handle.level(), "minimal", "1 ms short of the dwell");
    tokio::time::advance(MS).await;
    send(&svc, GenerationParams::new(8)).await;
    assert_eq!(handle.level(), "full");
    assert_eq!(*changes.lock().unwrap(), ["full->minimal", "minimal->full"]);
}

#[tokio::test(start_paused = true)]
async fn probes_are_sampled_at_most_once_per_interval() {
    let reads = Arc::new(AtomicUsize::new(0));
    let counter = reads.clone();
    let (svc, _, _) = echo(DegradeLayer::builder().probe(SEC, move || {
        counter.fetch_add(1, SeqCst);
        0.1
    }));
    for _ in 0..100 {
        send(&svc, GenerationParams::new(8)).await;
    }
    assert_eq!(reads.load(SeqCst), 1);
    tokio::time::advance(SEC - MS).await;
    send(&svc, GenerationParams::new(8)).await;
    assert_eq!(reads.load(SeqCst), 1);
    tokio::time::advance(MS).await;
    for _ in 0..100 {
        send(&svc, GenerationParams::new(8)).await;
    }
    assert_eq!(reads.load(SeqCst), 2);
}

#[tokio::test(start_paused = true)]
async fn a_nan_probe_reads_as_no_load() {
    let (svc, handle, _) = echo(DegradeLayer::builder().probe(Duration::ZERO, || f64::NAN));
    send(&svc, GenerationParams::new(8)).await;
    assert_eq!((handle.level(), handle.load()), ("full", 0.0));
}

#[tokio::test(start_paused = true)]
async fn a_forced_level_holds_until_released() {
    let dial = Dial::default();
    let (svc, handle, _) = echo(dialed(&dial));
    handle.force("minimal").unwrap();
    assert_eq!(
        send(&svc, GenerationParams::new(100))
            .await
            .value
            .max_tokens,
        40
    );
    let err = handle.force("turbo").unwrap_err();
    assert_eq!(
        err.to_string(),
        "invalid request: there is no degradation level named \"turbo\""
    );
    handle.release();
    assert_eq!(
        send(&svc, GenerationParams::new(100))
            .await
            .value
            .max_tokens,
        100
    );
}

#[tokio::test(start_paused = true)]
async fn in_flight_requests_drive_the_level() {
    let layer = DegradeLayer::builder().in_flight_capacity(10).build();
    let handle = layer.handle();
    let slow = service_fn(|p: GenerationParams| async move {
        tokio::time::sleep(SEC).await;
        Ok::<_, InferenceError>(Served::new(p.max_tokens))
    });
    let svc = ServiceBuilder::new().layer(layer).service(slow);
    let calls: Vec<_> = (0..10)
        .map(|_| tokio::spawn(svc.clone().oneshot(GenerationParams::new(100))))
        .collect();
    tokio::time::sleep(MS).await;
    assert_eq!(handle.in_flight(), 10);
    let mut tokens = Vec::new();
    for call in calls {
        tokens.push(*call.await.unwrap().unwrap());
    }
    // The 7th and 8th concurrent requests see 70 % and 80 % load, the 9th and 10th 90 % and more.
    assert_eq!(tokens, [100, 100, 100, 100, 100, 100, 70, 70, 40, 40]);
    assert_eq!(handle.in_flight(), 0, "every call left");
}

#[tokio::test(start_paused = true)]
async fn slow_calls_drive_the_level_through_latency() {
    let layer = DegradeLayer::builder().latency_target(SEC, 1.0).build();
    let handle = layer.handle();
    let model = service_fn(|p: GenerationParams| async move {
        tokio::time::sleep(Duration::from_millis(u64::from(p.batch_size))).await;
        Ok::<_, InferenceError>(Served::new(p.max_tokens))
    });
    let svc = ServiceBuilder::new().layer(layer).service(model);
    svc.clone()
        .oneshot(GenerationParams::new(100).batch_size(950))
        .await
        .unwrap();
    assert_eq!(
        handle.load(),
        0.95,
        "the average latency is 95 % of the target"
    );
    assert_eq!(
        handle.level(),
        "full",
        "the level moves when the next call comes in"
    );
    let answer = svc
        .clone()
        .oneshot(GenerationParams::new(100))
        .await
        .unwrap();
    assert_eq!(*answer, 40, "the last call took 95 % of the target");
    assert_eq!(handle.level(), "minimal");
}

#[tokio::test(start_paused = true)]
async fn custom_levels_are_sorted_and_the_lowest_applies_from_zero() {
    let dial = Dial::default();
    let (svc, handle, _) = echo(dialed(&dial).levels([
        Level::new("lean", 0.5, 0.5, 2.0),
        Level::new("normal", 0.3, 1.0, 1.0),
    ]));
    dial.set(0.1);
    send(&svc, GenerationParams::new(10)).await;
    assert_eq!(handle.level(), "normal");
    dial.set(0.5);
    assert_eq!(
        send(&svc, GenerationParams::new(10)).await.value.max_tokens,
        5
    );
}

#[cfg(feature = "mock")]
#[tokio::test(start_paused = true)]
async fn degrading_a_burst_prevents_out_of_memory() {
    use tower_inference::mock::{InferenceRequest, MockGpu};
    use tower_inference::{Annotate, ErrorKind};

    // 1 MiB a token: a full request (1 prompt + 100 generated tokens) holds 101 MiB, and the
    // device has 1000 MiB free: 9 full requests fit at once, 16 do not.
    let gpu = || {
        MockGpu::builder()
            .base_latency(100 * MS)
            .per_token_latency(Duration::ZERO)
            .slots(16)
            .model_memory_mib(0)
            .request_memory_mib(0)
            .kib_per_token(1024)
            .memory_capacity_mib(1000)
            .build()
    };
    async fn burst<S>(svc: S) -> (usize, Vec<Option<String>>)
    where
        S: tower::Service<
                InferenceRequest,
                Response = tower_inference::mock::Completion,
                Error = InferenceError,
            > + Clone
            + Send
            + 'static,
        S::Future: Send,
    {
        let calls: Vec<_> = (0..16)
            .map(|_| {
                tokio::spawn(
                    svc.clone()
                        .oneshot(InferenceRequest::new("q").max_tokens(100)),
                )
            })
            .collect();
        let (mut oom, mut levels) = (0, Vec::new());
        for call in calls {
            match call.await.unwrap() {
                Ok(done) => levels.push(
                    done.provenance()
                        .unwrap()
                        .degraded
                        .clone()
                        .map(|l| l.to_string()),
                ),
                Err(e) => {
                    assert_eq!(e.kind(), ErrorKind::OutOfMemory);
                    oom += 1;
                }
            }
        }
        (oom, levels)
    }

    let (without, _) = burst(gpu()).await;
    assert_eq!(without, 7, "16 full requests on a device that fits 9");

    let layer = DegradeLayer::builder().in_flight_capacity(6).build();
    let (with, levels) = burst(ServiceBuilder::new().layer(layer).service(gpu())).await;
    assert_eq!(with, 0, "no out-of-memory with the layer");
    assert_eq!(levels.len(), 16);
    assert!(
        levels.iter().all(Option::is_some),
        "every answer says its level"
    );
    assert!(levels.iter().any(|l| l.as_deref() == Some("minimal")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn in_flight_counts_balance_across_threads() {
    let layer = DegradeLayer::builder().in_flight_capacity(1_000).build();
    let handle = layer.handle();
    let model = service_fn(|p: GenerationParams| async move {
        tokio::task::yield_now().await; // may resume on another thread
        Ok::<_, InferenceError>(Served::new(p.max_tokens))
    });
    let svc = ServiceBuilder::new().layer(layer).service(model);
    let tasks: Vec<_> = (0..8)
        .map(|_| {
            let svc = svc.clone();
            tokio::spawn(async move {
                for _ in 0..2_000 {
                    svc.clone()
                        .oneshot(GenerationParams::new(10))
                        .await
                        .unwrap();
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.unwrap();
    }
    assert_eq!(
        handle.in_flight(),
        0,
        "every call that entered on one stripe left"
    );
    assert_eq!(handle.level(), "full");
}

#[tokio::test(start_paused = true)]
async fn the_first_call_after_a_quiet_spell_is_served_at_the_level_the_load_warrants() {
    let dial = Dial::default();
    let (svc, handle, changes) = echo(dialed(&dial));
    dial.set(0.95);
    send(&svc, GenerationParams::new(100)).await;
    assert_eq!(handle.level(), "minimal");

    // An hour with no calls; the load is gone.
    dial.set(0.0);
    tokio::time::advance(3_600 * SEC).await;
    let answer = send(&svc, GenerationParams::new(100)).await;
    assert_eq!(answer.value.max_tokens, 100, "served at full level");
    assert_eq!(handle.level(), "full");
    assert_eq!(*changes.lock().unwrap(), ["full->minimal", "minimal->full"]);
}
