//! Reproducible randomness without a lock: one generator per draw, seeded from a counter.

use std::hash::{BuildHasher, Hasher};

use rand::{SeedableRng, rngs::SmallRng};

/// A reproducible generator for draw number `n` of a component seeded with `seed`.
///
/// Each draw gets its own generator from one atomic counter, so drawing takes no lock and a
/// run that makes the same draws in the same order sees the same numbers.
pub(crate) fn draw_rng(seed: u64, n: u64) -> SmallRng {
    SmallRng::seed_from_u64(seed ^ n.wrapping_mul(0x9E37_79B9_7F4A_7C15))
}

/// A seed that differs from process to process (from the standard library's random hash keys).
pub(crate) fn random_seed() -> u64 {
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u64(0x5EED);
    hasher.finish()
}

/// A probability clamped to `[0, 1]` (NaN is 0).
#[cfg_attr(not(feature = "mock"), allow(dead_code))]
pub(crate) fn clamp_probability(p: f64) -> f64 {
    if p.is_nan() { 0.0 } else { p.clamp(0.0, 1.0) }
}
