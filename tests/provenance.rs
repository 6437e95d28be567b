//! Provenance on `Served<T>` and `http::Response`.

use std::time::Duration;

use tower_inference::{
    Annotate, ErrorKind, PRIMARY_TIER, Provenance, Quality, Served, TierFailure,
};

#[test]
fn default_is_primary_full_first_attempt() {
    let p = Provenance::default();
    assert_eq!(p.tier, PRIMARY_TIER);
    assert_eq!(p.quality, Quality::Full);
    assert!(!p.fallback);
    assert_eq!(p.attempts, 1);
    assert_eq!(p.degraded, None);
    assert_eq!(p.cache_age(), None);
    assert!(p.warnings().is_empty());
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
    assert_eq!(p.cache_age(), Some(Duration::from_secs(90)));
    assert_eq!(p.attempts, 3);
    assert_eq!(p.degraded.as_deref(), Some("reduced"));
    assert_eq!(
        p.warnings(),
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

/// The JSON form keeps every fact at the top level, whether it is set or not, and reads
/// back equal.
#[test]
fn provenance_json_has_every_fact_at_the_top_level() {
    let plain = serde_json::to_value(Provenance::default()).unwrap();
    assert_eq!(
        plain,
        serde_json::json!({
            "tier": "primary", "quality": "full", "fallback": false, "degraded": null,
            "attempts": 1, "cache_age": null, "warnings": [],
        })
    );

    let mut up = Provenance::default();
    up.set_tier("cache", Quality::Stale)
        .set_cache_age(Duration::from_millis(1_500));
    let mut p = Provenance::default();
    p.set_tier("llama-8b", Quality::Reduced)
        .set_attempts(4)
        .set_degraded("reduced")
        .set_failed_tiers(vec![TierFailure::new("llama-70b", ErrorKind::Timeout)])
        .warn("answered by a lighter model")
        .set_upstream(up.clone());
    let json = serde_json::to_value(&p).unwrap();
    assert_eq!(json["attempts"], 4);
    assert_eq!(json["degraded"], "reduced");
    assert_eq!(json["warnings"][0], "answered by a lighter model");
    assert_eq!(json["failed_tiers"][0]["tier"], "llama-70b");
    assert_eq!(json["failed_tiers"][0]["kind"], "timeout");
    assert_eq!(json["upstream"]["tier"], "cache");
    assert_eq!(
        json["upstream"]["cache_age"],
        serde_json::json!({"secs": 1, "nanos": 500_000_000})
    );
    let back: Provenance = serde_json::from_value(json).unwrap();
    assert_eq!(back, p);
    assert_eq!(back.upstream(), Some(&up));
}

/// Setting an empty list of failed tiers leaves the provenance as it was: equal to the
/// default, and serialized without the field.
#[test]
fn no_failed_tiers_is_the_default() {
    let mut p = Provenance::default();
    p.set_failed_tiers(Vec::new());
    assert_eq!(p, Provenance::default());
    assert!(
        serde_json::to_value(&p)
            .unwrap()
            .get("failed_tiers")
            .is_none()
    );
}

/// Every layer moves the response it wraps, so the provenance stays small: its rarer facts
/// live in one box.
#[test]
fn provenance_stays_small() {
    assert!(
        std::mem::size_of::<Provenance>() <= 88,
        "Provenance grew to {} bytes",
        std::mem::size_of::<Provenance>()
    );
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
