"""The HTTP app without Ray (the same ASGI app the replicas run): timeouts, config of the
server from a model folder."""

from __future__ import annotations

import asyncio
import json

import httpx
import pytest

from model.engine import EngineConfig
from stages.serve.config import AuthSection
from stages.serve.server import ServerSpec, ServeSetupError, build_openai_server, check_model_dir, resolve_api_key

pytestmark = pytest.mark.usefixtures("single_thread")


def local_server(model_dir, **spec):
    spec = ServerSpec(model_uri=str(model_dir), local_path=str(model_dir), tracking_uri=None, model_name="m",
                      engine=EngineConfig(num_slots=2, max_seq_len=512, max_num_batched_tokens=32).model_dump(),
                      **spec)
    return build_openai_server(spec)


def test_a_timed_out_generation_is_cut_and_its_slot_freed(chat_model_dir):
    server = local_server(chat_model_dir, request_timeout_s=0.2)
    body = {"model": "m", "prompt": "x", "max_tokens": 500, "temperature": 0, "ignore_eos": True}

    async def scenario():
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=server.app), base_url="http://t") as c:
            plain = await c.post("/v1/completions", json=body)
            streamed = await c.post("/v1/completions", json={**body, "stream": True})
            await asyncio.sleep(0.1)
            stats = (await c.get("/stats")).json()
        await server.engine.shutdown()
        return plain, streamed, stats

    plain, streamed, stats = asyncio.run(scenario())
    assert plain.status_code == 504 and plain.json()["error"]["code"] == "timeout"
    events = [line.removeprefix("data: ") for line in streamed.text.splitlines() if line.startswith("data: ")]
    assert events[-1] == "[DONE]" and json.loads(events[-2])["error"]["code"] == "timeout"
    assert stats["free_slots"] == 2 and stats["engine"]["aborted_requests"] == 2


def test_model_folder_and_api_key_checks(tmp_path, monkeypatch):
    with pytest.raises(ServeSetupError, match="config.json, tokenizer.model, \\*.safetensors missing"):
        check_model_dir(tmp_path)
    assert resolve_api_key(AuthSection()) is None
    monkeypatch.delenv("WHALE_TEST_KEY", raising=False)
    with pytest.raises(ServeSetupError, match="WHALE_TEST_KEY is empty or unset"):
        resolve_api_key(AuthSection(enabled=True, api_key_env="WHALE_TEST_KEY"))
    monkeypatch.setenv("WHALE_TEST_KEY", " s3cret\n")
    assert resolve_api_key(AuthSection(enabled=True, api_key_env="WHALE_TEST_KEY")) == "s3cret"
    with pytest.raises(ServeSetupError, match="does not exist"):
        resolve_api_key(AuthSection(enabled=True, api_key_file=str(tmp_path / "nope")))


def test_failing_engine_steps_fail_their_requests_and_turn_health_red(chat_model_dir):
    """Fault injection: the model step raises. Requests get a 500 error object (not a hang), and
    after repeated failures /health answers 503 so Serve restarts the replica."""
    server = local_server(chat_model_dir)

    def broken(plan):
        raise RuntimeError("device lost")

    server.engine.engine.runner.execute = broken
    body = {"model": "m", "prompt": "x", "max_tokens": 5}

    async def scenario():
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=server.app), base_url="http://t") as c:
            assert (await c.get("/health")).status_code == 200
            first = await c.post("/v1/completions", json=body)
            streamed = await c.post("/v1/completions", json={**body, "stream": True})
            await c.post("/v1/completions", json=body)
            health = await c.get("/health")
            refused = await c.post("/v1/completions", json=body)
        await server.engine.shutdown()
        return first, streamed, health, refused

    first, streamed, health, refused = asyncio.run(scenario())
    assert first.status_code == 500 and "device lost" in first.json()["error"]["message"]
    assert '"code": "engine_error"' in streamed.text and streamed.text.rstrip().endswith("data: [DONE]")
    assert health.status_code == 503 and health.json()["error"]["code"] == "unhealthy"
    assert refused.status_code == 503
    assert server.engine.engine.stats.failed_requests == 3 and server.engine.engine.num_free_slots == 2


def test_malformed_requests_are_4xx_never_5xx(chat_model_dir):
    """Issue 21 item 6: a 100,000-deep JSON body was a 500 (RecursionError); a completions request
    with more prompts than the server can ever hold was a retryable 503."""
    server = local_server(chat_model_dir)
    deep = 100_000
    nested = b"[" * deep + b"]" * deep
    cases = [
        ("/v1/completions", dict(content=nested), "invalid_json"),
        ("/v1/chat/completions", dict(content=b'{"model": "m", "messages": ' + nested + b"}"), "invalid_json"),
        ("/v1/chat/completions", dict(content=b'{"a":' * deep + b"1" + b"}" * deep), "invalid_json"),
        # deep, but inside the parser's reach: the schema refuses it
        ("/v1/chat/completions", dict(json={"model": "m", "messages": [{"role": "user", "content": json.loads(
            "[" * 500 + "]" * 500)}]}), None),
        ("/v1/completions", dict(json={"model": "m", "prompt": ["hi"] * 70, "max_tokens": 1}), "too_many_prompts"),
        ("/v1/completions", dict(json={"model": "m", "prompt": ["hi"] * 40, "n": 2, "max_tokens": 1}),
         "too_many_prompts"),
    ]

    async def scenario():
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=server.app), base_url="http://t") as c:
            out = [await c.post(route, headers={"content-type": "application/json"}, **kw) for route, kw, _ in cases]
            ok = await c.post("/v1/completions", json={"model": "m", "prompt": ["hi"] * 3, "max_tokens": 1})
        await server.engine.shutdown()
        return out, ok

    responses, ok = asyncio.run(scenario())
    statuses = [r.status_code for r in responses]
    assert all(400 <= s < 500 for s in statuses), [(s, r.text[:200]) for s, r in zip(statuses, responses, strict=True)]
    for (_, _, code), r in zip(cases, responses, strict=True):
        err = r.json()["error"]
        assert set(err) == {"message", "type", "param", "code"}
        if code:
            assert err["code"] == code, err
    assert ok.status_code == 200  # a request within capacity still works afterwards
