//! `RedisStore` against a real `redis-server`, started on a free loopback port for each test
//! and stopped when it ends.
//!
//! Where `redis-server` is missing these tests say they were skipped, unless
//! `TOWER_INFERENCE_REQUIRE_REDIS` is set (CI sets it), in which case they fail.
#![cfg(all(feature = "redis", feature = "mock"))]

use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use tower::{ServiceBuilder, ServiceExt};
use tower_inference::fallback::{CacheStore, CacheWrite, FallbackLayer, RedisStore};
use tower_inference::mock::{Completion, InferenceRequest, MockGpu};
use tower_inference::{Quality, Served};

/// A `redis-server` of this test's own; killed when dropped.
struct Redis {
    _child: Child,
    url: String,
}

async fn redis() -> Option<Redis> {
    let required = std::env::var_os("TOWER_INFERENCE_REQUIRE_REDIS").is_some();
    let port = {
        let probe = std::net::TcpListener::bind("127.0.0.1:0").expect("a free loopback port");
        probe.local_addr().unwrap().port()
    };
    let spawned = Command::new("redis-server")
        .args([
            "--port",
            &port.to_string(),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
        ])
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn();
    let mut child = match spawned {
        Ok(child) => child,
        Err(e) if !required => {
            eprintln!(
                "skipped: redis-server not found ({e}); set TOWER_INFERENCE_REQUIRE_REDIS to make this a failure"
            );
            return None;
        }
        Err(e) => panic!(
            "redis-server is required (TOWER_INFERENCE_REQUIRE_REDIS is set) but could not start: {e}"
        ),
    };
    // Wait for the server to say it is ready (a guard against a hung start, not a sleep).
    let mut lines = BufReader::new(child.stdout.take().expect("piped stdout")).lines();
    let ready = tokio::time::timeout(Duration::from_secs(30), async {
        while let Some(line) = lines.next_line().await.expect("redis-server output") {
            if line.contains("Ready to accept connections") {
                return true;
            }
        }
        false
    })
    .await;
    assert_eq!(ready, Ok(true), "redis-server did not start");
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    Some(Redis {
        _child: child,
        url: format!("redis://127.0.0.1:{port}/"),
    })
}

async fn eventually_stored(store: &RedisStore<Completion>, key: &str) {
    // The layer writes on a task of its own; wait for it by asking Redis, without sleeping.
    for _ in 0..100_000 {
        if store.get(key).await.unwrap().is_some() {
            return;
        }
        tokio::task::yield_now().await;
    }
    panic!("the answer was never stored");
}

#[tokio::test]
async fn round_trip_with_age_and_expiry_set_in_redis() {
    let Some(server) = redis().await else { return };
    let store: RedisStore<Served<String>> =
        RedisStore::connect(&server.url, "test:").await.unwrap();
    assert!(store.get("missing").await.unwrap().is_none());
    let CacheWrite::Pending(write) = store.put(
        "k".into(),
        Served::new("v".to_string()),
        Duration::from_secs(90),
    ) else {
        panic!("a network write runs later");
    };
    write.await.unwrap();
    let hit = store.get("k").await.unwrap().unwrap();
    assert_eq!(hit.value.value, "v");
    assert!(hit.age < Duration::from_secs(5));

    let client = redis::Client::open(server.url.as_str()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let ttl_ms: i64 = redis::cmd("PTTL")
        .arg("test:k")
        .query_async(&mut conn)
        .await
        .unwrap();
    assert!(
        ttl_ms > 80_000 && ttl_ms <= 90_000,
        "expiry set by Redis: {ttl_ms} ms"
    );
}

#[tokio::test]
async fn replica_b_serves_the_answer_replica_a_cached() {
    let Some(server) = redis().await else { return };
    let replica = |store: RedisStore<Completion>, gpu: MockGpu| {
        let layer = FallbackLayer::builder()
            .cache(
                store,
                |r: &InferenceRequest| r.prompt.clone(),
                Duration::from_secs(300),
            )
            .build();
        ServiceBuilder::new().layer(layer).service(gpu)
    };
    let store_a = RedisStore::connect(&server.url, "answers:").await.unwrap();
    let store_b = RedisStore::connect(&server.url, "answers:").await.unwrap();
    let gpu_a = MockGpu::builder()
        .name("replica-a-gpu")
        .zero_latency()
        .build();
    let gpu_b = MockGpu::builder()
        .name("replica-b-gpu")
        .zero_latency()
        .build();
    gpu_b.handle().kill();
    let a = replica(store_a.clone(), gpu_a);
    let b = replica(store_b, gpu_b);

    let question = InferenceRequest::new("what is a circuit breaker?").max_tokens(5);
    let fresh = a.oneshot(question.clone()).await.unwrap();
    assert_eq!(&*fresh.provenance.tier, "primary");
    eventually_stored(&store_a, &question.prompt).await;

    let stale = b.oneshot(question).await.unwrap();
    assert_eq!(&*stale.model, "replica-a-gpu", "replica A's answer");
    assert_eq!(stale.text, fresh.text);
    assert_eq!(
        (&*stale.provenance.tier, &stale.provenance.quality),
        ("cache", &Quality::Stale)
    );
    assert!(stale.provenance.cache_age().is_some());
}

#[tokio::test]
async fn an_unreachable_redis_is_a_clear_error() {
    let port = {
        let probe = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        probe.local_addr().unwrap().port()
    };
    let err = RedisStore::<Served<String>>::connect(&format!("redis://127.0.0.1:{port}/"), "x:")
        .await
        .unwrap_err();
    assert!(err.to_string().starts_with("cache store error:"), "{err}");
}
