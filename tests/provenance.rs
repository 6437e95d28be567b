//! Provenance on `Served<T>` and `http::Response`.

use std::time::Duration;

use tower_inference::{Annotate, PRIMARY_TIER, Provenance, Quality, Served};

#[test]
fn default_is_primary_full_first_attempt() {
    let p = Provenance::default();
    assert_eq!(p.tier, PRIMARY_TIER);
    assert_eq!(p.quality, Quality::Full);
    assert!(!p.fallback);
    assert_eq!(p.attempts, 1);
    assert_eq!(p.degraded, None);
    assert_eq!(p.cache_age, None);
    assert!(p.warnings.is_empty());
}

#[test]
fn served_carries_and_updates_provenance() {
    let mut served = Served::new(String::from("answer"));
    served
        .provenance_mut()
        .set_tier("cache", Quality::Stale)
        .set_cache_age(Duration::from_secs(90))
        .set_attempts(3)
        .set_degraded("reduced")
        .warn("served from cache")
        .warn("served from cache");
    let p = served.provenance().unwrap();
    assert_eq!(p.tier, "cache");
    assert!(p.fallback);
    assert_eq!(p.quality, Quality::Stale);
    assert_eq!(p.cache_age, Some(Duration::from_secs(90)));
    assert_eq!(p.attempts, 3);
    assert_eq!(p.degraded.as_deref(), Some("reduced"));
    assert_eq!(
        p.warnings,
        ["served from cache"],
        "a warning is recorded once"
    );

    let mapped = served.map(|s| s.len());
    assert_eq!(*mapped, 6);
    assert_eq!(mapped.provenance.tier, "cache");
}

#[test]
fn attempts_never_below_one_and_primary_is_not_a_fallback() {
    let mut p = Provenance::default();
    p.set_attempts(0);
    assert_eq!(p.attempts, 1);
    p.set_tier("light", Quality::Reduced);
    assert!(p.fallback);
    p.set_tier(PRIMARY_TIER, Quality::Full);
    assert!(!p.fallback);
}

#[test]
fn quality_labels() {
    let labels: Vec<_> = [
        Quality::Full,
        Quality::Reduced,
        Quality::Generic,
        Quality::Stale,
        Quality::Minimal,
        Quality::Custom("sketch".into()),
    ]
    .iter()
    .map(|q| q.to_string())
    .collect();
    assert_eq!(
        labels,
        ["full", "reduced", "generic", "stale", "minimal", "sketch"]
    );
}

#[test]
fn provenance_serializes() {
    let mut p = Provenance::default();
    p.set_tier("rules", Quality::Generic);
    let json = serde_json::to_value(&p).unwrap();
    assert_eq!(json["tier"], "rules");
    assert_eq!(json["quality"], "generic");
    assert_eq!(json["fallback"], true);
    let back: Provenance = serde_json::from_value(json).unwrap();
    assert_eq!(back, p);
}

#[cfg(feature = "http")]
#[test]
fn http_response_keeps_provenance_in_extensions() {
    let mut res = http::Response::new("body");
    assert!(res.provenance().is_none());
    res.provenance_mut().set_tier("light", Quality::Reduced);
    res.provenance_mut().set_attempts(2);
    let stored = res.extensions().get::<Provenance>().unwrap();
    assert_eq!(stored.tier, "light");
    assert_eq!(stored.attempts, 2);
    assert_eq!(res.provenance().unwrap().quality, Quality::Reduced);
    // It survives a map of the body.
    let res = res.map(str::len);
    assert_eq!(res.provenance().unwrap().tier, "light");
}
