"""The official openai Python client against the example gateway.

Run by tests/python/run.sh, which starts the gateway with `--no-fallback --load-time-ms 1500`
and passes its address in GATEWAY_URL.
"""

import json
import os
import sys
import time
import urllib.error
import urllib.request

import openai

BASE = os.environ["GATEWAY_URL"]
MODEL = "llama-70b"

statuses = []


def record(response):
    statuses.append(response.status_code)


client = openai.OpenAI(
    base_url=BASE + "/v1",
    api_key="not-checked",
    max_retries=2,
    http_client=openai.DefaultHttpxClient(event_hooks={"response": [record]}),
)


def check(condition, message):
    if not condition:
        print("FAIL:", message, file=sys.stderr)
        sys.exit(1)
    print("ok:", message)


def wait_ready():
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(BASE + "/health/ready") as res:
                if res.status == 200:
                    return
        except urllib.error.HTTPError:
            pass
        time.sleep(0.1)
    check(False, "the gateway became ready within 30 s")


def chat(content):
    return client.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": content}],
        max_tokens=8,
    )


wait_ready()

# A chat completion succeeds, and says who answered.
raw = client.chat.completions.with_raw_response.create(
    model=MODEL, messages=[{"role": "user", "content": "Hello there"}], max_tokens=8
)
completion = raw.parse()
check(completion.object == "chat.completion", "a chat completion")
check(len(completion.choices[0].message.content.split()) == 8, "of max_tokens words")
check(completion.usage.completion_tokens == 8, "with its usage")
check(raw.headers["x-inference-tier"] == MODEL, "answered by the primary")

# A prompt longer than the context window is the caller's fault: BadRequestError.
statuses.clear()
try:
    chat("word " * 5000)
    check(False, "a too-long prompt raises")
except openai.BadRequestError as err:
    check(err.status_code == 400, "a too-long prompt is a 400")
    check(err.code == "context_length_exceeded", "with code context_length_exceeded")
    check(err.type == "invalid_request_error", "of type invalid_request_error")
    check(statuses == [400], "and is not retried")

# The model restarts (1.5 s to load its weights): the gateway answers 503 with Retry-After at
# once, the client waits as told and retries, and the retry succeeds.
urllib.request.urlopen(urllib.request.Request(BASE + "/admin/primary/restart", method="POST"))
statuses.clear()
started = time.monotonic()
completion = chat("Are you back?")
took = time.monotonic() - started
check(completion.choices[0].message.content, "the retried request succeeds")
check(statuses == [503, 200], f"after one 503 (responses: {statuses})")
check(1.0 <= took < 10, f"having waited as Retry-After said ({took:.2f} s)")

def admin(action):
    urllib.request.urlopen(
        urllib.request.Request(BASE + "/admin/primary/" + action, method="POST")
    )


def stream(content, max_tokens):
    return client.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": content}],
        max_tokens=max_tokens,
        stream=True,
    )


# A streamed chat completion: chunks as they come, who answers in the headers before them.
answer = stream("Stream to me", 8)
check(answer.response.headers["x-inference-tier"] == MODEL, "a stream says who answers")
chunks = list(answer)
text = "".join(c.choices[0].delta.content or "" for c in chunks)
check(len(text.split()) == 8, f"a stream of max_tokens words ({text!r})")
check(chunks[-1].choices[0].finish_reason == "length", "ending with its finish reason")

# A stream whose model dies after 3 tokens raises in the client: no silently short answer.
admin("break-streams")
received = []
try:
    for chunk in stream("Stream to me", 20):
        received.append(chunk.choices[0].delta.content or "")
    check(False, "a stream that dies midway raises")
except openai.APIError as err:
    check("failed" in str(err.message), f"a mid-stream failure raises APIError ({err.message})")
    check(len("".join(received).split()) == 3, "after the 3 tokens that were sent")
admin("mend-streams")
print("openai client: all checks passed")
