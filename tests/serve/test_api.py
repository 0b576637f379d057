"""The OpenAI-compatible API on a real Ray Serve deployment of a tiny model (taught one reply with
reasoning): the official openai client for the happy paths, raw HTTP for errors, overload,
disconnects and the SSE framing. API-key auth is on here (off is the stage default, tested in
test_stage.py)."""

from __future__ import annotations

import asyncio
import json
import time

import httpx
import pytest
from openai import OpenAI

from tests.serve.conftest import deploy_for_test
from tests.serve.helpers import REPLY_ANSWER, REPLY_REASONING

pytestmark = pytest.mark.slow

API_KEY = "test-key-123"
MODEL = "tiny-chat"
NUM_SLOTS = 2
USER = [{"role": "user", "content": "hello, how are you"}]


@pytest.fixture(scope="module")
def base_url(ray_local, chat_model_dir, tmp_path_factory):
    key_file = tmp_path_factory.mktemp("secret") / "api_key"
    key_file.write_text(API_KEY + "\n")
    url = deploy_for_test(chat_model_dir, app_name="whale-api-test",
                          engine={"num_slots": NUM_SLOTS, "max_seq_len": 256, "max_num_batched_tokens": 64,
                                  "max_waiting": 2},
                          auth={"enabled": True, "api_key_file": str(key_file)}, max_request_bytes=64 * 1024)
    yield url
    from ray import serve

    serve.shutdown()


@pytest.fixture(scope="module")
def client(base_url) -> OpenAI:
    return OpenAI(base_url=f"{base_url}/v1", api_key=API_KEY, max_retries=0, timeout=60)


@pytest.fixture(scope="module")
def http(base_url):
    with httpx.Client(base_url=base_url, headers={"Authorization": f"Bearer {API_KEY}"}, timeout=60) as c:
        yield c


def expected_completion_tokens(tok) -> int:
    """<think>…</think>…answer plus the EOS that ends the turn."""
    reply = {"role": "assistant", "content": REPLY_ANSWER, "reasoning_content": REPLY_REASONING}
    return len(tok.encode_chat(USER + [reply]).ids) - len(tok.encode_chat(USER, add_generation_prompt=True).ids)


# -- openai client ------------------------------------------------------------------------------

def test_models_and_health(client, base_url):
    assert [m.id for m in client.models.list().data] == [MODEL]
    assert httpx.get(f"{base_url}/health").json()["status"] == "ok"     # probes need no key


def test_chat_returns_reasoning_and_answer_separately(client, serve_tokenizer):
    r = client.chat.completions.create(model=MODEL, messages=USER, temperature=0, max_tokens=60)
    msg = r.choices[0].message
    assert (msg.content, msg.model_extra["reasoning_content"], msg.model_extra["reasoning"]) == \
        (REPLY_ANSWER, REPLY_REASONING, REPLY_REASONING)
    assert r.choices[0].finish_reason == "stop" and r.object == "chat.completion"
    prompt = len(serve_tokenizer.encode_chat(USER, add_generation_prompt=True).ids)
    assert (r.usage.prompt_tokens, r.usage.completion_tokens) == (prompt, expected_completion_tokens(serve_tokenizer))
    assert r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens


def test_streamed_chat_has_the_same_deltas_and_a_usage_chunk(client, serve_tokenizer):
    stream = client.chat.completions.create(model=MODEL, messages=USER, temperature=0, max_tokens=60, stream=True,
                                            stream_options={"include_usage": True})
    content, reasoning, reasoning_alias, finish, usage, roles = [], [], [], [], None, []
    for chunk in stream:
        if chunk.usage is not None:
            assert chunk.choices == []
            usage = chunk.usage
        for ch in chunk.choices:
            roles.append(ch.delta.role)
            content.append(ch.delta.content or "")
            extra = ch.delta.model_extra or {}
            reasoning.append(extra.get("reasoning_content") or "")
            reasoning_alias.append(extra.get("reasoning") or "")
            finish.append(ch.finish_reason)
    assert "".join(content) == REPLY_ANSWER
    assert "".join(reasoning) == "".join(reasoning_alias) == REPLY_REASONING
    assert roles[0] == "assistant" and finish[-1] == "stop" and finish.count("stop") == 1
    assert len([c for c in reasoning if c]) > 1       # streamed piece by piece, not in one block
    assert usage.completion_tokens == expected_completion_tokens(serve_tokenizer)


def test_chat_stop_strings_and_length_limit(client):
    r = client.chat.completions.create(model=MODEL, messages=USER, temperature=0, max_tokens=60, stop=["there"])
    assert (r.choices[0].message.content, r.choices[0].finish_reason) == ("Hello ", "stop")
    assert r.choices[0].message.model_extra["reasoning_content"] == REPLY_REASONING
    r = client.chat.completions.create(model=MODEL, messages=USER, temperature=0, max_tokens=4)
    msg = r.choices[0].message
    assert r.choices[0].finish_reason == "length" and r.usage.completion_tokens == 4
    assert msg.content == "" and REPLY_REASONING.startswith(msg.model_extra["reasoning_content"])


def test_completions_n_and_seed_streamed_and_not(client):
    kw = dict(model=MODEL, prompt="The river", max_tokens=8, temperature=1.0, n=2, seed=11,
              extra_body={"ignore_eos": True, "top_k": 50})
    a = client.completions.create(**kw)
    b = client.completions.create(**kw)
    assert [c.index for c in a.choices] == [0, 1] and a.object == "text_completion"
    assert [c.text for c in a.choices] == [c.text for c in b.choices]      # seeded: reproducible
    assert a.choices[0].text != a.choices[1].text                          # choice i uses seed + i
    assert a.usage.completion_tokens == 16 and all(c.finish_reason == "length" for c in a.choices)
    texts = {0: "", 1: ""}
    for chunk in client.completions.create(**kw, stream=True):
        for c in chunk.choices:
            texts[c.index] += c.text
    assert [texts[0], texts[1]] == [c.text for c in a.choices]


def test_completions_accept_token_id_prompts(client, serve_tokenizer):
    ids = serve_tokenizer.encode("The river")
    by_ids = client.completions.create(model=MODEL, prompt=ids, max_tokens=6, temperature=0)
    by_text = client.completions.create(model=MODEL, prompt="The river", max_tokens=6, temperature=0)
    assert by_ids.choices[0].text == by_text.choices[0].text
    assert by_ids.usage.prompt_tokens == len(ids)


# -- raw HTTP: framing and errors -----------------------------------------------------------------

def test_sse_framing_ends_with_done(http):
    body = {"model": MODEL, "messages": USER, "max_tokens": 10, "stream": True}
    with http.stream("POST", "/v1/chat/completions", json=body) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        events = [line for line in r.iter_lines() if line]
    assert all(e.startswith("data: ") for e in events) and events[-1] == "data: [DONE]"
    chunks = [json.loads(e.removeprefix("data: ")) for e in events[:-1]]
    assert all(c["object"] == "chat.completion.chunk" for c in chunks)


ERRORS = [
    # (what, request kwargs, status, error code)
    ("invalid JSON", dict(content=b'{"model": ', headers={"content-type": "application/json"}), 400, "invalid_json"),
    ("not an object", dict(json=[1, 2]), 400, "invalid_json"),
    ("wrong type", dict(json={"model": MODEL, "messages": USER, "temperature": "hot"}), 422, "invalid_type"),
    ("missing field", dict(json={"model": MODEL}), 422, "invalid_type"),
    ("unknown model", dict(json={"model": "gpt-9", "messages": USER}), 404, "model_not_found"),
    ("max_tokens 0", dict(json={"model": MODEL, "messages": USER, "max_tokens": 0}), 400, None),
    ("max_tokens past the context", dict(json={"model": MODEL, "messages": USER, "max_tokens": 10_000}), 400,
     "context_length_exceeded"),
    ("prompt past the context", dict(json={"model": MODEL, "messages": [{"role": "user", "content": "word " * 400}]}),
     400, "context_length_exceeded"),
    ("temperature out of range", dict(json={"model": MODEL, "messages": USER, "temperature": 7}), 400, "invalid_value"),
    ("n out of range", dict(json={"model": MODEL, "messages": USER, "n": 99}), 400, "invalid_value"),
    ("unsupported role", dict(json={"model": MODEL, "messages": [{"role": "tool", "content": "x"}]}), 400,
     "invalid_value"),
    ("image content", dict(json={"model": MODEL, "messages": [{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": "http://x"}}]}]}), 400, "invalid_value"),
    ("payload too large", dict(json={"model": MODEL, "messages": [{"role": "user", "content": "x" * 100_000}]}),
     413, "payload_too_large"),
    ("30,000-deep JSON", dict(content=b"[" * 30_000 + b"]" * 30_000, headers={"content-type": "application/json"}),
     400, "invalid_json"),
]


@pytest.mark.parametrize("what,kwargs,status,code", ERRORS, ids=[e[0] for e in ERRORS])
def test_bad_requests_get_openai_errors(http, what, kwargs, status, code):
    r = http.post("/v1/chat/completions", **kwargs)
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert set(err) == {"message", "type", "param", "code"} and err["message"]
    assert err["code"] == code


def test_auth_and_routing_errors(base_url, http):
    body = {"model": MODEL, "prompt": "hi", "max_tokens": 2}
    no_key = httpx.post(f"{base_url}/v1/completions", json=body)
    wrong = httpx.post(f"{base_url}/v1/completions", json=body, headers={"Authorization": "Bearer nope"})
    assert (no_key.status_code, wrong.status_code) == (401, 401)
    assert no_key.json()["error"]["code"] == "invalid_api_key"
    assert http.get("/v1/nothing").status_code == 404 and http.get("/v1/nothing").json()["error"]["code"] == "not_found"
    assert http.get("/v1/completions").status_code == 405
    assert http.get("/health").status_code == 200          # still up after all the bad input


def test_more_prompts_than_the_server_can_hold_is_400_not_503(http):
    """2 slots + 2 queued: 5 prompts can never be admitted, so retrying (503) would never help."""
    r = http.post("/v1/completions", json={"model": MODEL, "prompt": ["hi"] * 5, "max_tokens": 1})
    assert r.status_code == 400 and r.json()["error"]["code"] == "too_many_prompts", r.text
    r = http.post("/v1/completions", json={"model": MODEL, "prompt": ["hi"] * 2, "n": 2, "max_tokens": 1})
    assert r.status_code == 200, r.text


def test_overload_is_503_and_the_server_recovers(base_url, http):
    """2 slots + 2 queued: of 8 simultaneous long requests some are refused with 503, the
    admitted ones complete, and afterwards every slot is free again."""
    body = {"model": MODEL, "prompt": "The river", "max_tokens": 200, "temperature": 0, "ignore_eos": True}

    async def burst():
        async with httpx.AsyncClient(base_url=base_url, headers={"Authorization": f"Bearer {API_KEY}"},
                                     timeout=120) as c:
            return await asyncio.gather(*(c.post("/v1/completions", json=body) for _ in range(8)))

    responses = asyncio.run(burst())
    codes = sorted(r.status_code for r in responses)
    assert codes.count(503) >= 1 and codes.count(200) >= 2 and set(codes) <= {200, 503}, codes
    refused = next(r for r in responses if r.status_code == 503)
    assert refused.json()["error"]["code"] == "server_overloaded" and refused.headers["retry-after"] == "1"
    assert all(r.json()["usage"]["completion_tokens"] == 200 for r in responses if r.status_code == 200)
    stats = http.get("/stats").json()
    assert (stats["running"], stats["waiting"], stats["free_slots"]) == (0, 0, NUM_SLOTS)


def test_client_disconnect_cancels_generation_and_frees_the_slot(http):
    """Closing the connection mid-stream reaches the replica as asyncio.CancelledError."""
    before = http.get("/stats").json()["engine"]["aborted_requests"]
    body = {"model": MODEL, "prompt": "The river", "max_tokens": 250, "temperature": 0, "ignore_eos": True,
            "stream": True}
    with http.stream("POST", "/v1/completions", json=body) as r:
        lines = r.iter_lines()
        assert next(line for line in lines if line.startswith("data: "))
    # the response is closed here, long before 250 tokens
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        stats = http.get("/stats").json()
        if stats["engine"]["aborted_requests"] > before and stats["free_slots"] == NUM_SLOTS:
            break
        time.sleep(0.1)
    assert stats["engine"]["aborted_requests"] == before + 1
    assert (stats["running"], stats["free_slots"]) == (0, NUM_SLOTS)
    assert stats["engine"]["generated_tokens"] < 10_000


def test_prometheus_metrics_are_exported(ray_local, http):
    """Ray's metrics agent exposes the replica's metrics (they are flushed every few seconds)."""
    import ray

    http.post("/v1/chat/completions", json={"model": MODEL, "messages": USER, "max_tokens": 20, "temperature": 0})
    port = next(n["MetricsExportPort"] for n in ray.nodes() if n["Alive"])
    want = ["ray_whale_requests_total", "ray_whale_request_errors_total", "ray_whale_time_to_first_token_seconds",
            "ray_whale_request_latency_seconds", "ray_whale_generated_tokens_total", "ray_whale_tokens_per_second",
            "ray_whale_spec_acceptance_rate", "ray_whale_spec_drafted_total", "ray_whale_free_kv_slots"]
    deadline, missing = time.monotonic() + 40, want
    while missing and time.monotonic() < deadline:
        text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text
        missing = [m for m in want if m not in text]
        time.sleep(1)
    assert not missing
    assert 'status="422"' in text and 'route="chat"' in text
