//! The crate's one rule for configuration values out of range.
//!
//! Builders never fail and never panic, at build time or later at call time. A value outside
//! a setting's documented range is clamped into it; a value that means nothing for the
//! setting (NaN, a zero timeout) is replaced by the setting's default. Every such adjustment
//! is logged once, when the setting is given, by `tracing::warn!` with the setting's name, the
//! value given and the value used, so a typo in a config file shows in the logs instead of
//! silently changing behaviour.

use std::fmt::Debug;
use std::time::Duration;

/// Logs that `setting` was given `given` and uses `used` instead.
#[cold]
pub(crate) fn warn(setting: &'static str, given: &dyn Debug, used: &dyn Debug) {
    tracing::warn!(
        setting,
        given = ?given,
        used = ?used,
        "configuration value out of range: adjusted"
    );
}

/// `value` clamped to `lo..=hi`, logged when it was outside.
pub(crate) fn clamp<T: PartialOrd + Copy + Debug>(
    setting: &'static str,
    value: T,
    lo: T,
    hi: T,
) -> T {
    let used = if value < lo {
        lo
    } else if value > hi {
        hi
    } else {
        value
    };
    if used != value {
        warn(setting, &value, &used);
    }
    used
}

/// `value` raised to `lo` if below it, logged when it was.
pub(crate) fn at_least<T: PartialOrd + Copy + Debug>(setting: &'static str, value: T, lo: T) -> T {
    if value < lo {
        warn(setting, &value, &lo);
        lo
    } else {
        value
    }
}

/// A number in `lo..=hi`: clamped, and NaN taken as `default`; logged when adjusted.
pub(crate) fn within(setting: &'static str, value: f64, lo: f64, hi: f64, default: f64) -> f64 {
    if value.is_nan() {
        warn(setting, &value, &default);
        return default;
    }
    clamp(setting, value, lo, hi)
}

/// A share in `[0, 1]`: clamped, and NaN taken as `default`; logged when adjusted.
pub(crate) fn share(setting: &'static str, value: f64, default: f64) -> f64 {
    within(setting, value, 0.0, 1.0, default)
}

/// A finite factor of at least `lo`: NaN and infinities taken as `default`, smaller values
/// raised to `lo`; logged when adjusted.
pub(crate) fn factor(setting: &'static str, value: f64, lo: f64, default: f64) -> f64 {
    if !value.is_finite() {
        warn(setting, &value, &default);
        return default;
    }
    at_least(setting, value, lo)
}

/// A duration that must not be zero: zero is taken as `default`, logged.
pub(crate) fn nonzero(setting: &'static str, value: Duration, default: Duration) -> Duration {
    if value.is_zero() {
        warn(setting, &value, &default);
        default
    } else {
        value
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn adjusts_only_values_out_of_range() {
        assert_eq!(clamp("x", 5u32, 1, 10), 5);
        assert_eq!(clamp("x", 0u32, 1, 10), 1);
        assert_eq!(clamp("x", 11u32, 1, 10), 10);
        assert_eq!(at_least("x", 0usize, 1), 1);
        assert_eq!(share("x", f64::NAN, 0.5), 0.5);
        assert_eq!(share("x", -1.0, 0.5), 0.0);
        assert_eq!(share("x", 2.0, 0.5), 1.0);
        assert_eq!(factor("x", f64::INFINITY, 1.0, 2.0), 2.0);
        assert_eq!(factor("x", 0.5, 1.0, 2.0), 1.0);
        assert_eq!(factor("x", 3.0, 1.0, 2.0), 3.0);
        let d = Duration::from_secs(3);
        assert_eq!(nonzero("x", Duration::ZERO, d), d);
        assert_eq!(
            nonzero("x", Duration::from_millis(1), d),
            Duration::from_millis(1)
        );
    }
}
