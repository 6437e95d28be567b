//! OpenAI-compatible request and response types (feature `openai`), for
//! `/v1/chat/completions` and `/v1/completions`.
//!
//! The types hold the fields the stack acts on (`model`, the messages or prompt, the token
//! budgets, `n`, `stream`) and keep every other field in `extra`, so a request or response
//! passes through unchanged whatever the client or server adds (`temperature`, `tools`,
//! `logprobs`, a vendor's own fields).
//!
//! The requests implement [`Degrade`]: under load the degrade layer scales `max_tokens` and
//! `max_completion_tokens` by the quality factor (never below [`MIN_DEGRADED_TOKENS`], never
//! above what was asked) and divides `n` by the speed factor (never below 1). The responses
//! implement [`Annotate`]: their [`Provenance`] travels with them (it is not serialized; the
//! server module writes it as headers).
//!
//! ```
//! use tower_inference::openai::{ChatCompletionRequest, ChatMessage};
//! use tower_inference::{Degrade, Scale};
//!
//! let body = r#"{"model":"llama-70b","messages":[{"role":"user","content":"Hi"}],
//!                "max_tokens":512,"n":4,"temperature":0.2}"#;
//! let mut req: ChatCompletionRequest = serde_json::from_str(body).unwrap();
//! assert_eq!(req.messages, vec![ChatMessage::user("Hi")]);
//! assert_eq!(req.extra["temperature"], 0.2); // unknown fields are kept
//!
//! req.degrade(Scale::new(0.5, 2.0));
//! assert_eq!((req.max_tokens, req.n), (Some(256), Some(2)));
//! assert!(serde_json::to_string(&req).unwrap().contains(r#""temperature":0.2"#));
//! ```

use std::borrow::Cow;
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::error::InferenceError;
use crate::params::{Degrade, Scale, shrink};
use crate::provenance::{Annotate, Provenance};
use crate::rng::random_seed;

/// The smallest token budget degradation leaves a request (unless it asked for fewer).
pub const MIN_DEGRADED_TOKENS: u32 = 16;

/// The budget degradation assumes for a request that set none: a degraded request without
/// `max_tokens` or `max_completion_tokens` gets `max_tokens = quality × 1024`.
pub const DEFAULT_DEGRADE_BUDGET: u32 = 1_024;

/// The most completions one request may ask for (`n`).
pub const MAX_N: u32 = 128;

/// The body of `POST /v1/chat/completions`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChatCompletionRequest {
    /// The model asked for.
    pub model: String,
    /// The conversation so far.
    pub messages: Vec<ChatMessage>,
    /// The most tokens to generate (the older name of the budget).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_tokens: Option<u32>,
    /// The most tokens to generate, reasoning included (the newer name of the budget).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_completion_tokens: Option<u32>,
    /// How many completions to generate.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub n: Option<u32>,
    /// Whether the answer is streamed as server-sent events.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stream: Option<bool>,
    /// Every other field, kept as it came.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

impl ChatCompletionRequest {
    /// A request to `model` with `messages` and no other field set.
    pub fn new(model: impl Into<String>, messages: impl IntoIterator<Item = ChatMessage>) -> Self {
        ChatCompletionRequest {
            model: model.into(),
            messages: messages.into_iter().collect(),
            max_tokens: None,
            max_completion_tokens: None,
            n: None,
            stream: None,
            extra: Map::new(),
        }
    }

    /// The token budget: `max_completion_tokens`, else `max_tokens`, if either is set.
    pub fn token_budget(&self) -> Option<u32> {
        self.max_completion_tokens.or(self.max_tokens)
    }

    /// The text of every message, one per line (what a text model is prompted with).
    pub fn prompt_text(&self) -> String {
        let mut text = String::new();
        for (i, message) in self.messages.iter().enumerate() {
            if i > 0 {
                text.push('\n');
            }
            if let Some(content) = &message.content {
                text.push_str(&content.text());
            }
        }
        text
    }

    /// A key for a cache of last good answers: the model and each message's role and text,
    /// as JSON (so no two conversations share a key, whatever their text holds).
    pub fn cache_key(&self) -> String {
        let messages: Vec<(&str, Cow<'_, str>)> = self
            .messages
            .iter()
            .map(|m| (m.role.as_str(), m.text()))
            .collect();
        serde_json::to_string(&(&self.model, messages)).unwrap_or_default()
    }

    /// Checks what a server can check before calling a model: at least one message, budgets
    /// of at least 1, `n` in `1..=128`, and no streaming (not served by this type's
    /// endpoint). The error says what to change.
    pub fn validate(&self) -> Result<(), InferenceError> {
        if self.messages.is_empty() {
            return Err(InferenceError::invalid_input(
                "`messages` is empty; send at least one message",
            ));
        }
        check_common(
            self.max_tokens,
            self.max_completion_tokens,
            self.n,
            self.stream,
        )
    }

    /// Whether the caller asked for a streamed answer (`"stream": true`).
    pub fn is_stream(&self) -> bool {
        self.stream == Some(true)
    }

    /// Checks a request to be answered as a stream of server-sent events: as
    /// [`validate`](Self::validate), with streaming allowed and one choice (`n` of 1).
    pub fn validate_streamed(&self) -> Result<(), InferenceError> {
        if self.messages.is_empty() {
            return Err(InferenceError::invalid_input(
                "`messages` is empty; send at least one message",
            ));
        }
        check_common(self.max_tokens, self.max_completion_tokens, self.n, None)?;
        one_choice(self.n)
    }
}

/// Streams answer one choice.
fn one_choice(n: Option<u32>) -> Result<(), InferenceError> {
    if n.is_some_and(|n| n != 1) {
        return Err(InferenceError::invalid_input(
            "a streamed answer has one choice; set `n` to 1 or `stream` to false",
        ));
    }
    Ok(())
}

fn check_common(
    max_tokens: Option<u32>,
    max_completion_tokens: Option<u32>,
    n: Option<u32>,
    stream: Option<bool>,
) -> Result<(), InferenceError> {
    if max_tokens == Some(0) {
        return Err(InferenceError::invalid_input(
            "`max_tokens` must be at least 1",
        ));
    }
    if max_completion_tokens == Some(0) {
        return Err(InferenceError::invalid_input(
            "`max_completion_tokens` must be at least 1",
        ));
    }
    if n.is_some_and(|n| n == 0 || n > MAX_N) {
        return Err(InferenceError::invalid_input(
            "`n` must be between 1 and 128",
        ));
    }
    refuse_stream(stream)
}

/// Refuses `"stream": true`, which neither the endpoint nor the client serves.
pub(crate) fn refuse_stream(stream: Option<bool>) -> Result<(), InferenceError> {
    if stream == Some(true) {
        return Err(InferenceError::invalid_input(
            "streaming is not supported here; set `stream` to false",
        ));
    }
    Ok(())
}

impl Degrade for ChatCompletionRequest {
    fn degrade(&mut self, scale: Scale) {
        if scale.is_full() {
            return;
        }
        if self.max_tokens.is_none() && self.max_completion_tokens.is_none() {
            self.max_tokens = Some(DEFAULT_DEGRADE_BUDGET);
        }
        let q = scale.quality();
        self.max_tokens = self.max_tokens.map(|t| shrink(t, q, MIN_DEGRADED_TOKENS));
        self.max_completion_tokens = self
            .max_completion_tokens
            .map(|t| shrink(t, q, MIN_DEGRADED_TOKENS));
        self.n = self.n.map(|n| shrink(n, 1.0 / scale.speed(), 1));
    }
}

/// One message of a conversation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChatMessage {
    /// `system`, `user`, `assistant`, `tool`, …
    pub role: String,
    /// The message's content; none for an assistant message that only calls tools.
    #[serde(default)]
    pub content: Option<MessageContent>,
    /// Every other field (`name`, `tool_calls`, …), kept as it came.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

impl ChatMessage {
    /// A message of `role` with text `content`.
    pub fn new(role: impl Into<String>, content: impl Into<String>) -> Self {
        ChatMessage {
            role: role.into(),
            content: Some(MessageContent::Text(content.into())),
            extra: Map::new(),
        }
    }

    /// A `system` message.
    pub fn system(content: impl Into<String>) -> Self {
        ChatMessage::new("system", content)
    }

    /// A `user` message.
    pub fn user(content: impl Into<String>) -> Self {
        ChatMessage::new("user", content)
    }

    /// An `assistant` message.
    pub fn assistant(content: impl Into<String>) -> Self {
        ChatMessage::new("assistant", content)
    }

    /// The content's text (empty when there is none).
    pub fn text(&self) -> Cow<'_, str> {
        self.content
            .as_ref()
            .map_or(Cow::Borrowed(""), MessageContent::text)
    }
}

/// A message's content: a string, or a list of parts (text, images, …).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum MessageContent {
    /// Plain text.
    Text(String),
    /// Content parts, such as `{"type":"text","text":"…"}` or `{"type":"image_url",…}`.
    Parts(Vec<Value>),
}

impl MessageContent {
    /// The text: the string, or the text parts joined by newlines (other parts left out).
    pub fn text(&self) -> Cow<'_, str> {
        match self {
            MessageContent::Text(text) => Cow::Borrowed(text),
            MessageContent::Parts(parts) => {
                let texts: Vec<&str> = parts
                    .iter()
                    .filter(|p| p.get("type").and_then(Value::as_str) == Some("text"))
                    .filter_map(|p| p.get("text").and_then(Value::as_str))
                    .collect();
                Cow::Owned(texts.join("\n"))
            }
        }
    }
}

/// The body of a completion answer, generic over its choices: [`ChatCompletionResponse`]
/// (`POST /v1/chat/completions`) and [`CompletionResponse`] (`POST /v1/completions`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OpenAiResponse<C> {
    /// A unique id: `chatcmpl-…` or `cmpl-…`.
    pub id: String,
    /// `chat.completion` or `text_completion`.
    pub object: String,
    /// When it was made, in seconds since the Unix epoch.
    pub created: u64,
    /// The model that answered.
    pub model: String,
    /// The completions.
    pub choices: Vec<C>,
    /// Tokens used, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub usage: Option<Usage>,
    /// Every other field, kept as it came.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
    /// Where the answer came from (not serialized: see the module docs).
    #[serde(skip)]
    pub provenance: Provenance,
}

impl<C> OpenAiResponse<C> {
    /// An answer from `model` with one choice, with a new id of `prefix` and 32 hex digits.
    fn new(prefix: &str, object: &str, model: String, choice: C) -> Self {
        OpenAiResponse {
            id: new_id(prefix),
            object: object.to_owned(),
            created: now_secs(),
            model,
            choices: vec![choice],
            usage: None,
            extra: Map::new(),
            provenance: Provenance::default(),
        }
    }
}

impl<C> Annotate for OpenAiResponse<C> {
    fn provenance(&self) -> Option<&Provenance> {
        Some(&self.provenance)
    }

    fn provenance_mut(&mut self) -> &mut Provenance {
        &mut self.provenance
    }
}

/// The body answering `POST /v1/chat/completions`.
pub type ChatCompletionResponse = OpenAiResponse<ChatChoice>;

impl ChatCompletionResponse {
    /// An answer from `model` of one assistant message, `text`, finished with `stop`.
    ///
    /// ```
    /// use tower_inference::openai::ChatCompletionResponse;
    ///
    /// let res = ChatCompletionResponse::from_text("static", "Busy; try again shortly.");
    /// assert!(res.id.starts_with("chatcmpl-"));
    /// assert_eq!(res.choices[0].message.text(), "Busy; try again shortly.");
    /// ```
    pub fn from_text(model: impl Into<String>, text: impl Into<String>) -> Self {
        let choice = ChatChoice {
            index: 0,
            message: ChatMessage::assistant(text),
            finish_reason: Some("stop".to_owned()),
            extra: Map::new(),
        };
        OpenAiResponse::new("chatcmpl-", "chat.completion", model.into(), choice)
    }
}

/// One completion of a chat answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChatChoice {
    /// Its position among the choices.
    pub index: u32,
    /// The generated message.
    pub message: ChatMessage,
    /// Why generation stopped (`stop`, `length`, …).
    pub finish_reason: Option<String>,
    /// Every other field (`logprobs`, …), kept as it came.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// Tokens used by a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Usage {
    /// Tokens in the prompt.
    pub prompt_tokens: u32,
    /// Tokens generated.
    pub completion_tokens: u32,
    /// Their sum.
    pub total_tokens: u32,
}

impl Usage {
    /// Usage of `prompt` and `completion` tokens.
    pub const fn new(prompt: u32, completion: u32) -> Self {
        Usage {
            prompt_tokens: prompt,
            completion_tokens: completion,
            total_tokens: prompt.saturating_add(completion),
        }
    }
}

/// The body of `POST /v1/completions` (the legacy text-completion endpoint).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CompletionRequest {
    /// The model asked for.
    pub model: String,
    /// The prompt.
    pub prompt: Prompt,
    /// The most tokens to generate.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_tokens: Option<u32>,
    /// How many completions to generate.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub n: Option<u32>,
    /// Whether the answer is streamed as server-sent events.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stream: Option<bool>,
    /// Every other field, kept as it came.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

impl CompletionRequest {
    /// A request to `model` for `prompt` and no other field set.
    pub fn new(model: impl Into<String>, prompt: impl Into<String>) -> Self {
        CompletionRequest {
            model: model.into(),
            prompt: Prompt::Text(prompt.into()),
            max_tokens: None,
            n: None,
            stream: None,
            extra: Map::new(),
        }
    }

    /// A key for a cache of last good answers: the model and the prompt, as JSON.
    pub fn cache_key(&self) -> String {
        serde_json::to_string(&(&self.model, &self.prompt)).unwrap_or_default()
    }

    /// Checks a budget of at least 1, `n` in `1..=128` and no streaming.
    pub fn validate(&self) -> Result<(), InferenceError> {
        check_common(self.max_tokens, None, self.n, self.stream)
    }

    /// Whether the caller asked for a streamed answer (`"stream": true`).
    pub fn is_stream(&self) -> bool {
        self.stream == Some(true)
    }

    /// Checks a request to be answered as a stream of server-sent events: a budget of at
    /// least 1 and one choice (`n` of 1).
    pub fn validate_streamed(&self) -> Result<(), InferenceError> {
        check_common(self.max_tokens, None, self.n, None)?;
        one_choice(self.n)
    }
}

impl Degrade for CompletionRequest {
    fn degrade(&mut self, scale: Scale) {
        if scale.is_full() {
            return;
        }
        let budget = self.max_tokens.unwrap_or(DEFAULT_DEGRADE_BUDGET);
        self.max_tokens = Some(shrink(budget, scale.quality(), MIN_DEGRADED_TOKENS));
        self.n = self.n.map(|n| shrink(n, 1.0 / scale.speed(), 1));
    }
}

/// A completion prompt: a string, strings, or token ids.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Prompt {
    /// One prompt.
    Text(String),
    /// Several prompts.
    Texts(Vec<String>),
    /// One prompt as token ids.
    Tokens(Vec<u32>),
    /// Several prompts as token ids.
    TokenBatches(Vec<Vec<u32>>),
}

impl Prompt {
    /// The prompt's text: the strings joined by newlines, token ids as numbers.
    pub fn text(&self) -> Cow<'_, str> {
        fn ids(tokens: &[u32]) -> String {
            tokens
                .iter()
                .map(u32::to_string)
                .collect::<Vec<_>>()
                .join(" ")
        }
        match self {
            Prompt::Text(text) => Cow::Borrowed(text),
            Prompt::Texts(texts) => Cow::Owned(texts.join("\n")),
            Prompt::Tokens(tokens) => Cow::Owned(ids(tokens)),
            Prompt::TokenBatches(batches) => Cow::Owned(
                batches
                    .iter()
                    .map(|t| ids(t))
                    .collect::<Vec<_>>()
                    .join("\n"),
            ),
        }
    }
}

/// The body answering `POST /v1/completions`.
pub type CompletionResponse = OpenAiResponse<CompletionChoice>;

impl CompletionResponse {
    /// An answer from `model` of one completion, `text`, finished with `stop`.
    pub fn from_text(model: impl Into<String>, text: impl Into<String>) -> Self {
        let choice = CompletionChoice {
            index: 0,
            text: text.into(),
            finish_reason: Some("stop".to_owned()),
            logprobs: None,
            extra: Map::new(),
        };
        OpenAiResponse::new("cmpl-", "text_completion", model.into(), choice)
    }
}

/// One completion of a text answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CompletionChoice {
    /// Its position among the choices.
    pub index: u32,
    /// The generated text.
    pub text: String,
    /// Why generation stopped (`stop`, `length`, …).
    pub finish_reason: Option<String>,
    /// Log probabilities, when asked for (kept as they came).
    #[serde(default)]
    pub logprobs: Option<Value>,
    /// Every other field, kept as it came.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// The body answering `GET /v1/models`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModelList {
    /// Always `list`.
    pub object: String,
    /// The models served.
    pub data: Vec<ModelInfo>,
}

impl ModelList {
    /// A list of `models`, each owned by `owned_by`.
    ///
    /// ```
    /// use tower_inference::openai::ModelList;
    ///
    /// let list = ModelList::new(["llama-70b", "llama-8b"], "tower-inference");
    /// assert_eq!(list.data[1].id, "llama-8b");
    /// ```
    pub fn new<I, M>(models: I, owned_by: &str) -> Self
    where
        I: IntoIterator<Item = M>,
        M: Into<String>,
    {
        let created = now_secs();
        ModelList {
            object: "list".to_owned(),
            data: models
                .into_iter()
                .map(|id| ModelInfo {
                    id: id.into(),
                    object: "model".to_owned(),
                    created,
                    owned_by: owned_by.to_owned(),
                })
                .collect(),
        }
    }
}

/// One model of a [`ModelList`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModelInfo {
    /// The model's id, as requests name it.
    pub id: String,
    /// Always `model`.
    pub object: String,
    /// When it was made available, in seconds since the Unix epoch.
    pub created: u64,
    /// Who serves it.
    pub owned_by: String,
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// `prefix` and 32 random hex digits.
fn new_id(prefix: &str) -> String {
    format!("{prefix}{:016x}{:016x}", random_seed(), random_seed())
}
