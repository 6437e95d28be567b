//! Making a request cheaper: [`Degrade`], [`Scale`] and [`GenerationParams`].
//!
//! A request that can be made cheaper implements [`Degrade`]: it is scaled by a [`Scale`], a
//! quality factor (in `(0, 1]`, how much of the work to keep) and a speed factor (`>= 1`, how
//! much faster to go), never below sane floors. The degrade layer, the retry layer's
//! out-of-memory retry and the mock GPU all use this one trait.
//!
//! [`GenerationParams`] implements it for the usual knobs: `max_tokens` and `steps` are scaled
//! by quality, `batch_size` is divided by speed, and each side of the resolution is scaled by
//! quality, but never below `min_resolution` (nor raised if it was already smaller).
//!
//! ```
//! use tower_inference::{Degrade, GenerationParams, Scale};
//!
//! let mut params = GenerationParams::new(512).steps(50).batch_size(8).resolution(1024, 768);
//! params.degrade(Scale::new(0.5, 2.0));
//! assert_eq!(params.max_tokens, 256);
//! assert_eq!(params.steps, Some(25));
//! assert_eq!(params.batch_size, 4);
//! assert_eq!(params.resolution, Some((512, 384)));
//!
//! // Floors hold however hard a request is squeezed.
//! let mut tiny = GenerationParams::new(10).steps(10).batch_size(2).resolution(512, 384);
//! tiny.degrade(Scale::new(0.0001, 1000.0));
//! assert_eq!((tiny.max_tokens, tiny.steps, tiny.batch_size), (1, Some(1), 1));
//! assert_eq!(tiny.resolution, Some((256, 256)));
//! ```

use serde::{Deserialize, Serialize};

use crate::error::InferenceError;
use crate::setting;

/// How much to degrade a request: a quality factor and a speed factor.
///
/// `quality` is the share of work to keep, clamped to `[0.01, 1]`; `speed` is how many times
/// cheaper to make throughput-bound knobs (batch size), clamped to `[1, 1000]`. A NaN becomes
/// the neutral value, so a `Scale` is always safe to apply.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Scale {
    quality: f64,
    speed: f64,
}

impl Scale {
    /// No degradation: quality 1, speed 1.
    pub const FULL: Scale = Scale {
        quality: 1.0,
        speed: 1.0,
    };

    /// A scale with the given factors, clamped to their valid ranges.
    pub fn new(quality: f64, speed: f64) -> Self {
        let quality = setting::within("scale quality", quality, 0.01, 1.0, 1.0);
        let speed = setting::within("scale speed", speed, 1.0, 1000.0, 1.0);
        Scale { quality, speed }
    }

    /// The quality factor, in `[0.01, 1]`.
    pub const fn quality(self) -> f64 {
        self.quality
    }

    /// The speed factor, in `[1, 1000]`.
    pub const fn speed(self) -> f64 {
        self.speed
    }

    /// Whether this scale changes nothing.
    pub fn is_full(self) -> bool {
        self.quality >= 1.0 && self.speed <= 1.0
    }
}

impl Default for Scale {
    fn default() -> Self {
        Scale::FULL
    }
}

/// A request that can be made cheaper.
///
/// Implementations scale their costly knobs by `scale` and must never go below sane floors
/// (a zero token budget is not a cheaper answer, it is no answer).
pub trait Degrade {
    /// Makes the request cheaper by `scale`.
    fn degrade(&mut self, scale: Scale);
}

impl Degrade for GenerationParams {
    fn degrade(&mut self, scale: Scale) {
        if scale.is_full() {
            return;
        }
        let q = scale.quality();
        self.max_tokens = shrink(self.max_tokens, q, 1);
        self.steps = self.steps.map(|s| shrink(s, q, 1));
        self.batch_size = shrink(self.batch_size, 1.0 / scale.speed(), 1);
        let floor = self.min_resolution;
        self.resolution = self
            .resolution
            .map(|(w, h)| (shrink(w, q, floor), shrink(h, q, floor)));
    }
}

/// `value × factor`, rounded, but never below `floor` and never above `value`.
pub(crate) fn shrink(value: u32, factor: f64, floor: u32) -> u32 {
    let scaled = (f64::from(value) * factor).round() as u32;
    scaled.max(floor).min(value)
}

/// The knobs of a generation request that cost GPU time and memory.
///
/// Text models use `max_tokens` (and `batch_size`); diffusion models also use `steps` and
/// `resolution`. Build one with [`GenerationParams::new`] and the chained setters, or
/// deserialize it from a request body.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(default)]
pub struct GenerationParams {
    /// The most tokens to generate (default 256; at least 1).
    pub max_tokens: u32,
    /// Inference (denoising) steps, for models that have them (default none).
    pub steps: Option<u32>,
    /// Items generated together (default 1; at least 1).
    pub batch_size: u32,
    /// Output width and height in pixels, for image models (default none).
    pub resolution: Option<(u32, u32)>,
    /// The smallest side degradation may shrink the resolution to (default 256).
    pub min_resolution: u32,
}

impl Default for GenerationParams {
    fn default() -> Self {
        GenerationParams::new(256)
    }
}

impl GenerationParams {
    /// Text generation of at most `max_tokens` tokens, batch size 1.
    pub const fn new(max_tokens: u32) -> Self {
        GenerationParams {
            max_tokens,
            steps: None,
            batch_size: 1,
            resolution: None,
            min_resolution: 256,
        }
    }

    /// Sets the number of inference steps.
    pub const fn steps(mut self, steps: u32) -> Self {
        self.steps = Some(steps);
        self
    }

    /// Sets the batch size.
    pub const fn batch_size(mut self, batch_size: u32) -> Self {
        self.batch_size = batch_size;
        self
    }

    /// Sets the output resolution.
    pub const fn resolution(mut self, width: u32, height: u32) -> Self {
        self.resolution = Some((width, height));
        self
    }

    /// Sets the smallest side degradation may shrink the resolution to.
    pub const fn min_resolution(mut self, min_side: u32) -> Self {
        self.min_resolution = min_side;
        self
    }

    /// Checks the parameters a caller sent, with an actionable error for the first bad one.
    ///
    /// ```
    /// use tower_inference::{ErrorKind, GenerationParams};
    ///
    /// assert!(GenerationParams::new(64).validate().is_ok());
    /// let err = GenerationParams::new(0).validate().unwrap_err();
    /// assert_eq!(err.kind(), ErrorKind::InvalidInput);
    /// assert_eq!(err.to_string(), "invalid request: max_tokens must be at least 1");
    /// ```
    pub fn validate(&self) -> Result<(), InferenceError> {
        if self.max_tokens == 0 {
            return Err(InferenceError::invalid_input(
                "max_tokens must be at least 1",
            ));
        }
        if self.steps == Some(0) {
            return Err(InferenceError::invalid_input("steps must be at least 1"));
        }
        if self.batch_size == 0 {
            return Err(InferenceError::invalid_input(
                "batch_size must be at least 1",
            ));
        }
        if let Some((w, h)) = self.resolution
            && (w == 0 || h == 0)
        {
            return Err(InferenceError::invalid_input(
                "resolution width and height must be at least 1",
            ));
        }
        Ok(())
    }
}
