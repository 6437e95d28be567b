//! Degrading generation parameters: scaling, floors, validation.

use tower_inference::{Degrade, ErrorKind, GenerationParams, Scale};

#[test]
fn scale_clamps_to_valid_ranges() {
    assert_eq!(Scale::new(2.0, 0.5), Scale::FULL);
    assert_eq!(Scale::new(f64::NAN, f64::NAN), Scale::FULL);
    let s = Scale::new(-1.0, f64::INFINITY);
    assert_eq!((s.quality(), s.speed()), (0.01, 1000.0));
    assert!(Scale::default().is_full());
    assert!(!Scale::new(0.7, 1.5).is_full());
}

#[test]
fn degrade_table() {
    let base = GenerationParams::new(1000)
        .steps(50)
        .batch_size(8)
        .resolution(1024, 768);
    // quality, speed -> max_tokens, steps, batch, resolution
    let table = [
        (1.0, 1.0, 1000, 50, 8, (1024, 768)),
        (0.7, 1.5, 700, 35, 5, (717, 538)),
        (0.4, 3.0, 400, 20, 3, (410, 307)),
        (0.5, 2.0, 500, 25, 4, (512, 384)),
        (0.1, 8.0, 100, 5, 1, (256, 256)),
        (0.01, 1000.0, 10, 1, 1, (256, 256)),
    ];
    for (q, speed, tokens, steps, batch, res) in table {
        let mut p = base.clone();
        p.degrade(Scale::new(q, speed));
        assert_eq!(
            (p.max_tokens, p.steps, p.batch_size, p.resolution),
            (tokens, Some(steps), batch, Some(res)),
            "quality {q}, speed {speed}"
        );
    }
}

#[test]
fn floors_hold_and_nothing_grows() {
    let mut p = GenerationParams::new(1)
        .steps(1)
        .batch_size(1)
        .resolution(100, 50);
    p.degrade(Scale::new(0.01, 1000.0));
    assert_eq!((p.max_tokens, p.steps, p.batch_size), (1, Some(1), 1));
    assert_eq!(
        p.resolution,
        Some((100, 50)),
        "already under the floor: left alone"
    );

    let mut p = GenerationParams::new(64)
        .min_resolution(512)
        .resolution(1024, 300);
    p.degrade(Scale::new(0.25, 1.0));
    assert_eq!(p.resolution, Some((512, 300)));
}

#[test]
fn repeated_degrading_converges_on_floors() {
    let mut p = GenerationParams::new(u32::MAX)
        .steps(u32::MAX)
        .batch_size(u32::MAX)
        .resolution(u32::MAX, u32::MAX);
    for _ in 0..20 {
        p.degrade(Scale::new(0.5, 2.0));
    }
    for _ in 0..20 {
        p.degrade(Scale::new(0.01, 1000.0));
    }
    assert_eq!((p.max_tokens, p.steps, p.batch_size), (1, Some(1), 1));
    assert_eq!(p.resolution, Some((256, 256)));
}

#[test]
fn full_scale_is_a_no_op() {
    let mut p = GenerationParams::new(333)
        .steps(7)
        .batch_size(3)
        .resolution(640, 480);
    let before = p.clone();
    p.degrade(Scale::FULL);
    assert_eq!(p, before);
}

#[test]
fn validation_names_the_bad_field() {
    let cases = [
        (GenerationParams::new(0), "max_tokens must be at least 1"),
        (
            GenerationParams::new(5).steps(0),
            "steps must be at least 1",
        ),
        (
            GenerationParams::new(5).batch_size(0),
            "batch_size must be at least 1",
        ),
        (
            GenerationParams::new(5).resolution(0, 10),
            "resolution width and height must be at least 1",
        ),
    ];
    for (params, reason) in cases {
        let err = params.validate().unwrap_err();
        assert_eq!(err.kind(), ErrorKind::InvalidInput);
        assert_eq!(err.to_string(), format!("invalid request: {reason}"));
    }
    assert!(GenerationParams::default().validate().is_ok());
}

#[test]
fn params_deserialize_with_defaults() {
    let p: GenerationParams = serde_json::from_str(r#"{"max_tokens": 32}"#).unwrap();
    assert_eq!(p, GenerationParams::new(32));
    let p: GenerationParams =
        serde_json::from_str(r#"{"steps": 20, "resolution": [512, 512]}"#).unwrap();
    assert_eq!(
        p,
        GenerationParams::default().steps(20).resolution(512, 512)
    );
}
