//! Where an answer came from: which tier, at what quality, how degraded, after how many tries.
//!
//! A response type opts in by implementing [`Annotate`]. It is implemented for
//! [`Served<T>`], a plain wrapper around any value, and (feature `http`) for
//! `http::Response<B>`, which keeps its [`Provenance`] in the response's extensions. Layers
//! that annotate (fallback, degrade, retry) require `Annotate`; the others do not.
//!
//! ```
//! use tower_inference::{Annotate, Provenance, Quality, Served};
//!
//! let mut answer = Served::new("a haiku about GPUs");
//! answer.provenance_mut().set_tier("rules", Quality::Generic);
//! answer.provenance_mut().warn("answered by rules: the model is unavailable");
//!
//! assert_eq!(answer.provenance.tier, "rules");
//! assert!(answer.provenance.fallback);
//! ```

use std::borrow::Cow;
use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::error::TierFailure;

/// How good an answer is, as a label a client can show or act on.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Quality {
    /// The full model answered at full settings.
    #[default]
    Full,
    /// A lighter model, or the full one with degraded settings.
    Reduced,
    /// A rules-based or template answer.
    Generic,
    /// A cached earlier answer.
    Stale,
    /// A static last-resort default.
    Minimal,
    /// An application-defined label.
    Custom(Cow<'static, str>),
}

impl Quality {
    /// The quality a label names: one of the labels above, or a [`Quality::Custom`] one.
    ///
    /// ```
    /// use tower_inference::Quality;
    ///
    /// assert_eq!(Quality::from_label("stale"), Quality::Stale);
    /// assert_eq!(Quality::from_label("draft").as_str(), "draft");
    /// ```
    pub fn from_label(label: &str) -> Quality {
        match label {
            "full" => Quality::Full,
            "reduced" => Quality::Reduced,
            "generic" => Quality::Generic,
            "stale" => Quality::Stale,
            "minimal" => Quality::Minimal,
            other => Quality::Custom(Cow::Owned(other.to_owned())),
        }
    }

    /// The label: `full`, `reduced`, `generic`, `stale`, `minimal` or the custom one.
    pub fn as_str(&self) -> &str {
        match self {
            Quality::Full => "full",
            Quality::Reduced => "reduced",
            Quality::Generic => "generic",
            Quality::Stale => "stale",
            Quality::Minimal => "minimal",
            Quality::Custom(label) => label,
        }
    }
}

impl fmt::Display for Quality {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(self.as_str())
    }
}

/// The tier name of an answer no fallback layer re-labelled.
pub const PRIMARY_TIER: &str = "primary";

/// Where an answer came from and what was done to get it.
///
/// The default describes an answer from the primary model at full quality on the first
/// attempt. The fields every answer sets are public to read; the rarer facts (a cached
/// answer's age, warnings, the tiers that failed, the upstream server's own provenance) are
/// read through methods ([`cache_age`](Provenance::cache_age),
/// [`warnings`](Provenance::warnings), [`failed_tiers`](Provenance::failed_tiers),
/// [`upstream`](Provenance::upstream)). Layers change it through the setters, and new fields
/// may be added (the struct is `#[non_exhaustive]`).
///
/// It is kept small (88 bytes on 64-bit targets) because every layer moves the response it
/// wraps: the rare facts live in one box, allocated only when one of them is set, so an
/// answer served by the first tier at the first attempt never allocates for its provenance.
/// Its JSON form has every field at the top level, as
/// `{"tier", "quality", "fallback", "degraded", "attempts", "cache_age", "warnings",
/// "failed_tiers"?, "upstream"?}`.
///
/// ```
/// use std::time::Duration;
/// use tower_inference::{ErrorKind, Provenance, Quality, TierFailure};
///
/// let mut p = Provenance::default();
/// assert!(p.warnings().is_empty() && p.failed_tiers().is_empty());
/// p.set_tier("cache", Quality::Stale)
///     .set_cache_age(Duration::from_secs(90))
///     .set_failed_tiers(vec![TierFailure::new("llama-70b", ErrorKind::Timeout)])
///     .warn("answered from the cache");
/// assert_eq!(p.cache_age(), Some(Duration::from_secs(90)));
/// assert_eq!(p.failed_tiers()[0].tier, "llama-70b");
/// assert_eq!(p.warnings(), ["answered from the cache"]);
/// ```
#[derive(Debug, Clone, Deserialize)]
#[serde(from = "Wire")]
#[non_exhaustive]
pub struct Provenance {
    /// The name of the tier that answered (default [`PRIMARY_TIER`]).
    pub tier: Cow<'static, str>,
    /// The answer's quality.
    pub quality: Quality,
    /// Whether a fallback tier answered instead of the primary one.
    pub fallback: bool,
    /// The degradation level the request was served at, when a degrade layer served it (its
    /// lowest level, `full` by default, when it was not degraded).
    pub degraded: Option<Cow<'static, str>>,
    /// Calls made to the backend for this answer, the first one included (at least 1).
    pub attempts: u32,
    /// The rarer facts, boxed so the common answer stays small; `None` until one is set.
    notes: Option<Box<Notes>>,
}

/// The facts most answers do not have.
#[derive(Debug, Clone, Default, PartialEq)]
struct Notes {
    cache_age: Option<Duration>,
    warnings: Vec<Cow<'static, str>>,
    failed_tiers: Vec<TierFailure>,
    upstream: Option<Provenance>,
}

/// The most failed tiers a [`Provenance`] lists; a longer chain's later failures are counted
/// in [`Provenance::attempts`] but not listed.
pub const MAX_FAILED_TIERS: usize = 8;

impl Default for Provenance {
    fn default() -> Self {
        Provenance {
            tier: Cow::Borrowed(PRIMARY_TIER),
            quality: Quality::Full,
            fallback: false,
            degraded: None,
            attempts: 1,
            notes: None,
        }
    }
}

impl PartialEq for Provenance {
    fn eq(&self, other: &Self) -> bool {
        self.tier == other.tier
            && self.quality == other.quality
            && self.fallback == other.fallback
            && self.degraded == other.degraded
            && self.attempts == other.attempts
            && self.cache_age() == other.cache_age()
            && self.warnings() == other.warnings()
            && self.failed_tiers() == other.failed_tiers()
            && self.upstream() == other.upstream()
    }
}

impl Provenance {
    /// The age of a cached answer, when one was served.
    pub fn cache_age(&self) -> Option<Duration> {
        self.notes.as_ref().and_then(|n| n.cache_age)
    }

    /// Notes for the caller, e.g. "reduced max_tokens due to memory constraints".
    pub fn warnings(&self) -> &[Cow<'static, str>] {
        self.notes.as_ref().map_or(&[], |n| &n.warnings)
    }

    /// Why the answer is a fallback: each tier that failed before the one that answered, in
    /// the order tried, with the kind it failed with. Empty when the first tier answered; at
    /// most [`MAX_FAILED_TIERS`] entries.
    pub fn failed_tiers(&self) -> &[TierFailure] {
        self.notes.as_ref().map_or(&[], |n| &n.failed_tiers)
    }

    /// What the server behind this one said of the answer, when the answer came over HTTP
    /// from another server that reports provenance (such as a gateway built with this crate;
    /// the `client` feature reads it from the `x-inference-*` headers). The other fields
    /// describe this hop; this one the hop behind it (one level: its own `upstream` is not
    /// kept).
    pub fn upstream(&self) -> Option<&Provenance> {
        self.notes.as_ref().and_then(|n| n.upstream.as_ref())
    }

    /// The rarer facts, boxed on first use.
    fn notes_mut(&mut self) -> &mut Notes {
        self.notes.get_or_insert_with(Box::default)
    }

    /// Records that `tier` answered at `quality`; any tier other than [`PRIMARY_TIER`] marks
    /// the answer as a fallback.
    pub fn set_tier(&mut self, tier: impl Into<Cow<'static, str>>, quality: Quality) -> &mut Self {
        self.tier = tier.into();
        self.fallback = self.tier != PRIMARY_TIER;
        self.quality = quality;
        self
    }

    /// Sets whether the answer came from a fallback tier (a chain may name its first tier
    /// something other than [`PRIMARY_TIER`]).
    pub fn set_fallback(&mut self, fallback: bool) -> &mut Self {
        self.fallback = fallback;
        self
    }

    /// Records the degradation level the request was served at.
    pub fn set_degraded(&mut self, level: impl Into<Cow<'static, str>>) -> &mut Self {
        self.degraded = Some(level.into());
        self
    }

    /// Records how many backend calls the answer took (at least 1).
    pub fn set_attempts(&mut self, attempts: u32) -> &mut Self {
        self.attempts = attempts.max(1);
        self
    }

    /// Records the age of a cached answer.
    pub fn set_cache_age(&mut self, age: Duration) -> &mut Self {
        self.notes_mut().cache_age = Some(age);
        self
    }

    /// Records the tiers that failed before the one that answered, in the order tried (kept
    /// up to [`MAX_FAILED_TIERS`]).
    pub fn set_failed_tiers(&mut self, mut failed: Vec<TierFailure>) -> &mut Self {
        failed.truncate(MAX_FAILED_TIERS);
        if !failed.is_empty() || self.notes.is_some() {
            self.notes_mut().failed_tiers = failed;
        }
        self
    }

    /// Records what the server behind this one said of the answer (its own `upstream` is
    /// dropped, so the chain stays one level deep).
    pub fn set_upstream(&mut self, upstream: Provenance) -> &mut Self {
        self.notes_mut().upstream = Some(upstream.without_upstream());
        self
    }

    /// This hop alone, its own `upstream` dropped.
    fn without_upstream(mut self) -> Self {
        if let Some(notes) = &mut self.notes {
            notes.upstream = None;
        }
        self
    }

    /// Adds a caller-facing warning, once: the same text is not repeated.
    pub fn warn(&mut self, warning: impl Into<Cow<'static, str>>) -> &mut Self {
        let warning = warning.into();
        let warnings = &mut self.notes_mut().warnings;
        if !warnings.contains(&warning) {
            warnings.push(warning);
        }
        self
    }
}

/// The JSON form: every fact at the top level.
#[derive(Serialize)]
struct WireRef<'a> {
    tier: &'a Cow<'static, str>,
    quality: &'a Quality,
    fallback: bool,
    degraded: &'a Option<Cow<'static, str>>,
    attempts: u32,
    cache_age: Option<Duration>,
    warnings: &'a [Cow<'static, str>],
    #[serde(skip_serializing_if = "<[TierFailure]>::is_empty")]
    failed_tiers: &'a [TierFailure],
    #[serde(skip_serializing_if = "Option::is_none")]
    upstream: Option<&'a Provenance>,
}

impl Serialize for Provenance {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        WireRef {
            tier: &self.tier,
            quality: &self.quality,
            fallback: self.fallback,
            degraded: &self.degraded,
            attempts: self.attempts,
            cache_age: self.cache_age(),
            warnings: self.warnings(),
            failed_tiers: self.failed_tiers(),
            upstream: self.upstream(),
        }
        .serialize(serializer)
    }
}

/// The JSON form read back.
#[derive(Deserialize)]
#[serde(rename = "Provenance")]
struct Wire {
    tier: Cow<'static, str>,
    quality: Quality,
    fallback: bool,
    degraded: Option<Cow<'static, str>>,
    attempts: u32,
    cache_age: Option<Duration>,
    warnings: Vec<Cow<'static, str>>,
    #[serde(default)]
    failed_tiers: Vec<TierFailure>,
    #[serde(default)]
    upstream: Option<Box<Provenance>>,
}

impl From<Wire> for Provenance {
    fn from(wire: Wire) -> Self {
        let notes = Notes {
            cache_age: wire.cache_age,
            warnings: wire.warnings,
            failed_tiers: wire.failed_tiers,
            // The chain stays one level deep, as `set_upstream` keeps it.
            upstream: wire.upstream.map(|up| up.without_upstream()),
        };
        Provenance {
            tier: wire.tier,
            quality: wire.quality,
            fallback: wire.fallback,
            degraded: wire.degraded,
            attempts: wire.attempts,
            notes: (notes != Notes::default()).then(|| Box::new(notes)),
        }
    }
}

/// A response that can say where it came from.
///
/// Implement it for your own response type by storing a [`Provenance`] in it, or wrap the
/// response in [`Served<T>`].
pub trait Annotate {
    /// The response's provenance, if it has one yet.
    fn provenance(&self) -> Option<&Provenance>;

    /// The response's provenance, created with the defaults if it had none.
    fn provenance_mut(&mut self) -> &mut Provenance;
}

impl Annotate for Provenance {
    fn provenance(&self) -> Option<&Provenance> {
        Some(self)
    }

    fn provenance_mut(&mut self) -> &mut Provenance {
        self
    }
}

/// Any value together with its [`Provenance`].
///
/// ```
/// use tower_inference::{Annotate, Served};
///
/// let served = Served::new(42);
/// assert_eq!(*served, 42);
/// assert_eq!(served.provenance.attempts, 1);
/// assert_eq!(served.into_inner(), 42);
/// ```
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct Served<T> {
    /// The answer.
    pub value: T,
    /// Where it came from.
    pub provenance: Provenance,
}

impl<T> Served<T> {
    /// Wraps `value` with a default provenance.
    pub fn new(value: T) -> Self {
        Served {
            value,
            provenance: Provenance::default(),
        }
    }

    /// Unwraps the answer, dropping its provenance.
    pub fn into_inner(self) -> T {
        self.value
    }

    /// Maps the answer, keeping its provenance.
    pub fn map<U>(self, f: impl FnOnce(T) -> U) -> Served<U> {
        Served {
            value: f(self.value),
            provenance: self.provenance,
        }
    }
}

impl<T> std::ops::Deref for Served<T> {
    type Target = T;

    fn deref(&self) -> &T {
        &self.value
    }
}

impl<T> std::ops::DerefMut for Served<T> {
    fn deref_mut(&mut self) -> &mut T {
        &mut self.value
    }
}

impl<T> Annotate for Served<T> {
    fn provenance(&self) -> Option<&Provenance> {
        Some(&self.provenance)
    }

    fn provenance_mut(&mut self) -> &mut Provenance {
        &mut self.provenance
    }
}

/// Stored in the response's extensions; absent until a layer annotates the response.
///
/// ```
/// use tower_inference::{Annotate, Provenance, Quality};
///
/// let mut res = http::Response::new("cached answer");
/// assert!(res.provenance().is_none());
/// res.provenance_mut().set_tier("cache", Quality::Stale);
/// assert_eq!(res.extensions().get::<Provenance>().unwrap().quality, Quality::Stale);
/// ```
#[cfg(feature = "http")]
impl<B> Annotate for http::Response<B> {
    fn provenance(&self) -> Option<&Provenance> {
        self.extensions().get::<Provenance>()
    }

    fn provenance_mut(&mut self) -> &mut Provenance {
        self.extensions_mut().get_or_insert_default::<Provenance>()
    }
}
