//! Which path a request type is sent to, and what it answers.

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::error::InferenceError;
use crate::openai::{
    ChatCompletionRequest, ChatCompletionResponse, CompletionRequest, CompletionResponse,
    refuse_stream,
};
use crate::provenance::Annotate;

/// A request type an [`OpenAiClient`](super::OpenAiClient) can send: its path under the base
/// URL and its response type.
///
/// Implemented for the chat and text completion requests of the `openai` module; implement
/// it for a request of your own to reach another endpoint with the same pool, timeouts and
/// error mapping.
///
/// The response keeps its [`Provenance`](crate::Provenance) in a field serde skips, as the
/// `openai` types do:
///
/// ```
/// use serde::{Deserialize, Serialize};
/// use tower_inference::{Annotate, Provenance};
/// use tower_inference::client::{Backend, Route};
///
/// #[derive(Serialize)]
/// struct EmbeddingRequest { model: String, input: Vec<String> }
///
/// #[derive(Deserialize)]
/// struct EmbeddingResponse {
///     data: Vec<serde_json::Value>,
///     #[serde(skip)]
///     provenance: Provenance,
/// }
///
/// impl Annotate for EmbeddingResponse {
///     fn provenance(&self) -> Option<&Provenance> { Some(&self.provenance) }
///     fn provenance_mut(&mut self) -> &mut Provenance { &mut self.provenance }
/// }
///
/// impl Route for EmbeddingRequest {
///     type Response = EmbeddingResponse;
///     const PATH: &'static str = "embeddings";
/// }
///
/// let backend = Backend::builder("http://localhost:8000/v1").build().unwrap();
/// let embeddings = backend.route::<EmbeddingRequest>();
/// assert_eq!(embeddings.uri(), "http://localhost:8000/v1/embeddings");
/// ```
pub trait Route: Serialize + Send + 'static {
    /// What the server answers (parsed from its JSON body), with the provenance the client
    /// fills in.
    type Response: DeserializeOwned + Annotate + Send + 'static;

    /// The path under the base URL (`chat/completions`).
    const PATH: &'static str;

    /// Refuses a request this client cannot send, before anything is sent (by default,
    /// none). The completion requests refuse `"stream": true`, which this client does not
    /// read.
    fn check(&self) -> Result<(), InferenceError> {
        Ok(())
    }
}

impl Route for ChatCompletionRequest {
    type Response = ChatCompletionResponse;
    const PATH: &'static str = "chat/completions";

    fn check(&self) -> Result<(), InferenceError> {
        refuse_stream(self.stream)
    }
}

impl Route for CompletionRequest {
    type Response = CompletionResponse;
    const PATH: &'static str = "completions";

    fn check(&self) -> Result<(), InferenceError> {
        refuse_stream(self.stream)
    }
}
