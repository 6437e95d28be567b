//! The request and response the mock GPU serves.

use std::sync::Arc;

use rand::{Rng, rngs::SmallRng};
use serde::{Deserialize, Serialize};

use crate::params::{Degrade, GenerationParams, Scale};
use crate::provenance::{Annotate, Provenance};

/// A prompt and its generation parameters.
///
/// ```
/// use tower_inference::mock::InferenceRequest;
///
/// let req = InferenceRequest::new("Explain circuit breakers").max_tokens(64);
/// assert_eq!(req.prompt_tokens(), 3);
/// assert_eq!(req.params.max_tokens, 64);
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
pub struct InferenceRequest {
    /// The prompt.
    pub prompt: String,
    /// How much to generate.
    #[serde(default)]
    pub params: GenerationParams,
}

impl InferenceRequest {
    /// A request for `prompt` with default parameters (256 tokens).
    pub fn new(prompt: impl Into<String>) -> Self {
        InferenceRequest {
            prompt: prompt.into(),
            params: GenerationParams::default(),
        }
    }

    /// Sets the parameters.
    pub fn params(mut self, params: GenerationParams) -> Self {
        self.params = params;
        self
    }

    /// Sets `max_tokens`.
    pub fn max_tokens(mut self, max_tokens: u32) -> Self {
        self.params.max_tokens = max_tokens;
        self
    }

    /// The prompt's length in tokens; the mock counts one token per whitespace-separated word.
    pub fn prompt_tokens(&self) -> usize {
        self.prompt.split_whitespace().count()
    }
}

impl Degrade for InferenceRequest {
    fn degrade(&mut self, scale: Scale) {
        self.params.degrade(scale);
    }
}

/// What the mock GPU answers: generated text, its length in tokens, and its provenance.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Completion {
    /// The name of the model that generated it.
    pub model: Arc<str>,
    /// The generated text: `tokens` words.
    pub text: String,
    /// Tokens generated: `max_tokens`, or fewer where the context window ran out.
    pub tokens: u32,
    /// Where the answer came from.
    pub provenance: Provenance,
}

impl Annotate for Completion {
    fn provenance(&self) -> Option<&Provenance> {
        Some(&self.provenance)
    }

    fn provenance_mut(&mut self) -> &mut Provenance {
        &mut self.provenance
    }
}

const WORDS: [&str; 16] = [
    "the",
    "model",
    "answers",
    "with",
    "tokens",
    "from",
    "a",
    "warm",
    "cache",
    "of",
    "weights",
    "and",
    "careful",
    "gradients",
    "over",
    "time",
];

/// One word of the vocabulary, drawn with `rng`.
pub(crate) fn word(rng: &mut SmallRng) -> &'static str {
    WORDS[rng.random_range(0..WORDS.len())]
}

/// `tokens` words drawn from a small vocabulary with `rng`.
pub(crate) fn generate_text(tokens: u32, rng: &mut SmallRng) -> String {
    let mut text = String::with_capacity(tokens as usize * 6);
    for i in 0..tokens {
        if i > 0 {
            text.push(' ');
        }
        text.push_str(word(rng));
    }
    text
}
