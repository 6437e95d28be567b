//! The OpenAI-compatible types: what they keep, how they degrade, what they refuse, and the
//! whole stack serving them over HTTP, spawned on a multi-thread runtime.
#![cfg(feature = "openai")]

use serde_json::{Value, json};
use tower_inference::openai::{
    ChatCompletionRequest, ChatCompletionResponse, ChatMessage, CompletionRequest,
    DEFAULT_DEGRADE_BUDGET, MIN_DEGRADED_TOKENS, MessageContent, Prompt,
};
use tower_inference::{Annotate, Degrade, ErrorKind, Quality, Scale};

fn chat(body: Value) -> ChatCompletionRequest {
    serde_json::from_value(body).unwrap()
}

#[test]
fn unknown_fields_are_kept_at_every_level() {
    let body = json!({
        "model": "llama-70b",
        "messages": [
            {"role": "system", "content": "Be brief.", "name": "policy"},
            {"role": "user", "content": [
                {"type": "text", "text": "What is in"},
                {"type": "image_url", "image_url": {"url": "https://example.com/cat.png"}},
                {"type": "text", "text": "this picture?"}
            ]},
            {"role": "assistant", "content": null, "tool_calls": [{"id": "call_1", "type": "function"}]}
        ],
        "max_completion_tokens": 300,
        "temperature": 0.2,
        "response_format": {"type": "json_object"},
        "x_vendor": [1, 2, 3]
    });
    let req = chat(body.clone());
    assert_eq!(req.extra["temperature"], 0.2);
    assert_eq!(req.messages[0].extra["name"], "policy");
    assert!(req.messages[2].content.is_none());
    assert_eq!(req.messages[1].text(), "What is in\nthis picture?");
    assert_eq!(req.token_budget(), Some(300));
    // Nothing is lost on the way back out.
    assert_eq!(serde_json::to_value(&req).unwrap(), body);

    let res: ChatCompletionResponse = serde_json::from_value(json!({
        "id": "chatcmpl-1", "object": "chat.completion", "created": 1, "model": "m",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "hi"},
                     "finish_reason": "stop", "logprobs": null}],
        "system_fingerprint": "fp_1"
    }))
    .unwrap();
    assert_eq!(res.extra["system_fingerprint"], "fp_1");
    assert!(res.choices[0].extra.contains_key("logprobs"));
    assert!(res.usage.is_none());
}

#[test]
fn provenance_travels_with_a_response_but_is_not_serialized() {
    let mut res = ChatCompletionResponse::from_text("llama-8b", "hi");
    res.provenance_mut().set_tier("llama-8b", Quality::Reduced);
    let json = serde_json::to_value(&res).unwrap();
    assert!(json.get("provenance").is_none());
    assert_eq!(json["choices"][0]["message"]["content"], "hi");
    assert_eq!(res.provenance().unwrap().tier, "llama-8b");
    let other = ChatCompletionResponse::from_text("m", "x");
    assert_ne!(res.id, other.id, "ids are unique");
}

#[test]
fn degrading_scales_budgets_and_n_within_floors() {
    let mut both = chat(json!({"model": "m", "messages": [], "max_tokens": 1000,
                               "max_completion_tokens": 800, "n": 6}));
    both.degrade(Scale::new(0.5, 3.0));
    assert_eq!(both.max_tokens, Some(500));
    assert_eq!(both.max_completion_tokens, Some(400));
    assert_eq!(both.n, Some(2));

    // No budget: degradation gives one, from the documented default.
    let mut open = chat(json!({"model": "m", "messages": []}));
    open.degrade(Scale::new(0.25, 1.0));
    assert_eq!(open.max_tokens, Some(DEFAULT_DEGRADE_BUDGET / 4));
    assert_eq!(open.max_completion_tokens, None);
    assert_eq!(open.n, None);

    // Floors: never below 16 tokens or one choice, never above what was asked.
    let mut small = chat(json!({"model": "m", "messages": [], "max_tokens": 100, "n": 2}));
    small.degrade(Scale::new(0.01, 1000.0));
    assert_eq!(small.max_tokens, Some(MIN_DEGRADED_TOKENS));
    assert_eq!(small.n, Some(1));
    let mut tiny = chat(json!({"model": "m", "messages": [], "max_tokens": 5}));
    tiny.degrade(Scale::new(0.5, 1.0));
    assert_eq!(tiny.max_tokens, Some(5));

    // Full scale changes nothing, not even an absent budget.
    let mut full = chat(json!({"model": "m", "messages": []}));
    full.degrade(Scale::FULL);
    assert_eq!(full.max_tokens, None);

    let mut text: CompletionRequest =
        serde_json::from_value(json!({"model": "m", "prompt": "p", "max_tokens": 64, "n": 4}))
            .unwrap();
    text.degrade(Scale::new(0.5, 2.0));
    assert_eq!((text.max_tokens, text.n), (Some(32), Some(2)));
}

#[test]
fn validation_refuses_what_no_model_can_serve_and_says_what_to_fix() {
    let cases = [
        (json!({"model": "m", "messages": []}), "`messages` is empty"),
        (
            json!({"model": "m", "messages": [{"role": "user", "content": "x"}], "max_tokens": 0}),
            "`max_tokens` must be at least 1",
        ),
        (
            json!({"model": "m", "messages": [{"role": "user", "content": "x"}], "max_completion_tokens": 0}),
            "`max_completion_tokens` must be at least 1",
        ),
        (
            json!({"model": "m", "messages": [{"role": "user", "content": "x"}], "n": 129}),
            "`n` must be between 1 and 128",
        ),
        (
            json!({"model": "m", "messages": [{"role": "user", "content": "x"}], "stream": true}),
            "set `stream` to false",
        ),
    ];
    for (body, says) in cases {
        let err = chat(body.clone()).validate().unwrap_err();
        assert_eq!(err.kind(), ErrorKind::InvalidInput, "{body}");
        assert!(err.to_string().contains(says), "{err} should say {says}");
    }
    let fine = chat(
        json!({"model": "m", "messages": [{"role": "user", "content": "x"}], "n": 128, "stream": false}),
    );
    assert!(fine.validate().is_ok());
}

#[test]
fn prompts_of_every_shape_parse_and_give_their_text() {
    let cases = [
        (json!("hello"), "hello"),
        (json!(["a", "b"]), "a\nb"),
        (json!([1, 2, 3]), "1 2 3"),
        (json!([[1, 2], [3]]), "1 2\n3"),
    ];
    for (prompt, text) in cases {
        let req: CompletionRequest =
            serde_json::from_value(json!({"model": "m", "prompt": prompt})).unwrap();
        assert_eq!(req.prompt.text(), text);
    }
    assert!(
        serde_json::from_value::<CompletionRequest>(json!({"model": "m", "prompt": {"x": 1}}))
            .is_err()
    );
    assert_eq!(
        CompletionRequest::new("m", "p").prompt,
        Prompt::Text("p".into())
    );
}

#[test]
fn cache_keys_tell_conversations_apart() {
    let a = ChatCompletionRequest::new("m", [ChatMessage::user("ab")]);
    let b = ChatCompletionRequest::new("m", [ChatMessage::user("a"), ChatMessage::user("b")]);
    let c = ChatCompletionRequest::new("m", [ChatMessage::system("ab")]);
    let d = ChatCompletionRequest::new("other", [ChatMessage::user("ab")]);
    // Text that looks like a separator does not make two conversations one.
    let e = ChatCompletionRequest::new("m", [ChatMessage::user("a\u{1f}user\u{1e}b")]);
    let keys = [
        a.cache_key(),
        b.cache_key(),
        c.cache_key(),
        d.cache_key(),
        e.cache_key(),
    ];
    for (i, x) in keys.iter().enumerate() {
        for y in &keys[i + 1..] {
            assert_ne!(x, y);
        }
    }
    // The same question asked with other sampling settings is the same question.
    let mut same = a.clone();
    same.extra.insert("temperature".into(), json!(0.9));
    assert_eq!(same.cache_key(), a.cache_key());
    let text = |prompt: Value| {
        serde_json::from_value::<CompletionRequest>(json!({"model": "m", "prompt": prompt}))
            .unwrap()
            .cache_key()
    };
    assert_ne!(text(json!("1 2")), text(json!([1, 2])));
    assert_eq!(
        MessageContent::Parts(vec![json!({"type": "text", "text": "ab"})]).text(),
        "ab"
    );
}

#[cfg(all(feature = "mock", feature = "http"))]
mod over_http {
    use std::time::Duration;

    use http::{Request, Response};
    use serde_json::{Value, json};
    use tower::{BoxError, ServiceBuilder, ServiceExt};
    use tower_inference::degrade::DegradeLayer;
    use tower_inference::fallback::FallbackLayer;
    use tower_inference::mock::MockGpu;
    use tower_inference::openai::{ChatCompletionRequest, ChatCompletionResponse};
    use tower_inference::retry::RetryLayer;
    use tower_inference::server::{CorrelationLayer, ErrorResponseLayer, ErrorShape, JsonEndpoint};
    use tower_inference::stack::InferenceStack;

    fn post(body: Value) -> Request<String> {
        Request::post("/v1/chat/completions")
            .header("content-type", "application/json")
            .body(body.to_string())
            .unwrap()
    }

    fn json_of(res: &Response<String>) -> Value {
        serde_json::from_str(res.body()).unwrap()
    }

    /// The whole stack (over tower's timeout, so `BoxError`) serving chat requests to a mock
    /// GPU, spawned; a degrade layer held at `reduced` scales the budget.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_stack_degrades_an_openai_request_and_says_so() {
        let gpu = MockGpu::builder().name("llama-70b").zero_latency().build();
        let degrade = DegradeLayer::builder();
        let layer = InferenceStack::new("llama-70b")
            .fallback(
                FallbackLayer::builder().static_default(|_: &ChatCompletionRequest| {
                    ChatCompletionResponse::from_text("static", "later")
                }),
            )
            .degrade(degrade)
            .retry(RetryLayer::builder().max_attempts(2))
            .timeout(Duration::from_secs(5))
            .build();
        layer.degrade().unwrap().force("reduced").unwrap();
        let stack = ServiceBuilder::new().layer(layer).service(gpu.chat());
        let app = ServiceBuilder::new()
            .layer(CorrelationLayer::new())
            .layer(ErrorResponseLayer::new(ErrorShape::OpenAi))
            .service(JsonEndpoint::new(stack).check(ChatCompletionRequest::validate));

        let body = json!({"model": "llama-70b", "max_tokens": 100,
                          "messages": [{"role": "user", "content": "hello"}]});
        let res = tokio::spawn(app.clone().oneshot(post(body)))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(res.status(), 200, "{}", res.body());
        assert_eq!(res.headers()["x-inference-degraded"], "reduced");
        // `reduced` keeps 70 % of the work.
        assert_eq!(json_of(&res)["usage"]["completion_tokens"], 70);

        // The check refuses before the stack: the GPU never sees it.
        let calls = gpu.handle().stats().calls;
        let bad = json!({"model": "llama-70b", "messages": []});
        let res = tokio::spawn(app.oneshot(post(bad))).await.unwrap().unwrap();
        assert_eq!(res.status(), 400);
        assert_eq!(json_of(&res)["error"]["code"], "invalid_input");
        assert_eq!(gpu.handle().stats().calls, calls);
    }

    /// The endpoint over a plain `InferenceError` service (no timeout), spawned.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_endpoint_serves_a_stack_with_inference_errors() {
        let gpu = MockGpu::builder().name("gpu").zero_latency().build();
        let stack = ServiceBuilder::new()
            .layer(
                InferenceStack::new("gpu")
                    .retry(RetryLayer::builder())
                    .build(),
            )
            .service(gpu.chat());
        let endpoint = JsonEndpoint::new(stack);
        let body = json!({"model": "gpu", "max_tokens": 3,
                          "messages": [{"role": "user", "content": "hi"}]});
        let res: Result<Response<String>, BoxError> =
            tokio::spawn(endpoint.oneshot(post(body))).await.unwrap();
        let res = res.unwrap();
        assert_eq!(res.status(), 200);
        assert_eq!(res.headers()["x-inference-attempts"], "1");
        assert_eq!(json_of(&res)["usage"]["completion_tokens"], 3);
    }
}
