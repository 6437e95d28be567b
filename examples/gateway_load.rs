//! A load check of the example gateway: concurrent requests over loopback while the primary
//! fails part of the time. Every request must get a well-formed answer; the check reports
//! requests per second, latency percentiles and which tier answered.
//!
//! ```text
//! cargo run --release --example gateway_load --features mock,http,openai -- [REQUESTS] [CONCURRENCY]
//! ```
//!
//! Two rounds, each with the chaos layer failing 30 % of the primary's calls (a lost backend
//! connection): with the fallback tiers (every answer is a 200), and with the primary alone
//! (answers are 200s or JSON errors with a code).

#[path = "gateway.rs"]
#[allow(dead_code)]
mod gateway;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use http::Request;
use http_body_util::BodyExt;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde_json::{Value, json};
use tokio::sync::Semaphore;

use gateway::{Config, Gateway};

#[tokio::main]
async fn main() {
    let mut args = std::env::args().skip(1);
    let requests: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(5_000);
    let concurrency: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(64);
    println!(
        "gateway load check: {requests} requests, {concurrency} at a time, 30 % of primary calls failing\n"
    );
    let mut ok = true;
    for fallback in [true, false] {
        ok &= round(fallback, requests, concurrency).await;
    }
    if !ok {
        std::process::exit(1);
    }
}

async fn round(fallback: bool, requests: usize, concurrency: usize) -> bool {
    let config = Config {
        fallback,
        load_time: Duration::ZERO,
        ..Config::default()
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let gateway = Gateway::new(&config);
    gateway.chaos.set_error_rate(0.3);
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(gateway::serve(listener, gateway.app(), async {
        let _ = stopped.await;
    }));

    let client = Client::builder(TokioExecutor::new())
        .pool_max_idle_per_host(concurrency)
        .build_http::<String>();
    let uri = format!("http://{addr}/v1/chat/completions");
    let places = Arc::new(Semaphore::new(concurrency));
    let started = Instant::now();
    let mut calls = Vec::with_capacity(requests);
    for i in 0..requests {
        let permit = places.clone().acquire_owned().await.unwrap();
        let (client, uri) = (client.clone(), uri.clone());
        calls.push(tokio::spawn(async move {
            let body = json!({
                "model": gateway::PRIMARY,
                // 200 distinct questions, so the cache has answers to give.
                "messages": [{"role": "user", "content": format!("question number {}", i % 200)}],
                "max_tokens": 16,
            });
            let req = Request::post(uri)
                .header("content-type", "application/json")
                .body(body.to_string())
                .unwrap();
            let sent = Instant::now();
            let res = client.request(req).await;
            let outcome = match res {
                Err(err) => Err(format!("transport error: {err}")),
                Ok(res) => {
                    let status = res.status().as_u16();
                    let tier = res
                        .headers()
                        .get("x-inference-tier")
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or("-")
                        .to_owned();
                    let body = res.into_body().collect().await.map(|b| b.to_bytes());
                    let took = sent.elapsed();
                    match body
                        .ok()
                        .and_then(|b| serde_json::from_slice::<Value>(&b).ok())
                    {
                        Some(v)
                            if status == 200
                                && v["choices"][0]["message"]["content"].is_string() =>
                        {
                            Ok((took, tier))
                        }
                        Some(v) if status >= 400 && v["error"]["code"].is_string() => Ok((
                            took,
                            format!("{status} {}", v["error"]["code"].as_str().unwrap_or("")),
                        )),
                        _ => Err(format!("malformed answer with status {status}")),
                    }
                }
            };
            drop(permit);
            outcome
        }));
    }
    let mut latency = Histogram::<u64>::new(3).unwrap();
    let mut answers: BTreeMap<String, usize> = BTreeMap::new();
    let mut malformed = Vec::new();
    for call in calls {
        match call.await.unwrap() {
            Ok((took, what)) => {
                latency.record(took.as_micros() as u64).unwrap();
                *answers.entry(what).or_default() += 1;
            }
            Err(why) => malformed.push(why),
        }
    }
    let elapsed = started.elapsed();
    let _ = stop.send(());
    server.await.unwrap();

    println!(
        "{}: {:.0} requests/s; latency p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
        if fallback {
            "with fallback tiers"
        } else {
            "primary alone     "
        },
        requests as f64 / elapsed.as_secs_f64(),
        latency.value_at_quantile(0.5) as f64 / 1e3,
        latency.value_at_quantile(0.99) as f64 / 1e3,
        latency.max() as f64 / 1e3,
    );
    for (what, count) in &answers {
        println!("    {count:>6}  {what}");
    }
    let text = gateway.metrics.render_prometheus();
    for line in text
        .lines()
        .filter(|l| l.starts_with("tower_inference_errors_total{stage=\"backend\""))
    {
        println!("    backend: {line}");
    }
    let well_formed = malformed.is_empty();
    let all_ok = !fallback
        || answers
            .keys()
            .all(|what| !what.starts_with(|c: char| c.is_ascii_digit()));
    if !well_formed {
        println!(
            "    {} malformed answers, e.g. {}",
            malformed.len(),
            malformed[0]
        );
    }
    if !all_ok {
        println!("    with fallback tiers, every answer should have been a 200");
    }
    println!();
    well_formed && all_ok
}
