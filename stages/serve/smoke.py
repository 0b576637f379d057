"""One real request against the live endpoint: health, model list, a streamed chat completion.
Measures what a client sees: time to first token and tokens/s."""

from __future__ import annotations

import json
import time


class SmokeTestFailed(RuntimeError):
    pass


def smoke_test(base_url: str, model_name: str, prompt: str, max_tokens: int, timeout_s: float,
               api_key: str | None = None, health_only: bool = False) -> dict:
    import httpx

    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    with httpx.Client(base_url=base_url, timeout=timeout_s, headers=headers) as client:
        health = client.get("/health")
        if health.status_code != 200:
            raise SmokeTestFailed(f"GET {base_url}/health answered {health.status_code}: {health.text[:500]}")
        if health_only:
            return {"health": "ok"}
        models = client.get("/v1/models")
        ids = [m.get("id") for m in models.json().get("data", [])] if models.status_code == 200 else []
        if model_name not in ids:
            raise SmokeTestFailed(f"GET /v1/models answered {models.status_code} without {model_name!r}: "
                                  f"{models.text[:500]}")
        body = {"model": model_name, "messages": [{"role": "user", "content": prompt}], "max_tokens": max_tokens,
                "temperature": 0, "stream": True, "stream_options": {"include_usage": True}, "ignore_eos": True}
        t0 = time.perf_counter()
        ttft = None
        content, reasoning, usage, done = [], [], None, False
        with client.stream("POST", "/v1/chat/completions", json=body) as r:
            if r.status_code != 200:
                raise SmokeTestFailed(f"POST /v1/chat/completions answered {r.status_code}: {r.read()[:500]!r}")
            for line in r.iter_lines():
                if not line.startswith("data: "):
                    continue
                data = line.removeprefix("data: ")
                if data == "[DONE]":
                    done = True
                    break
                chunk = json.loads(data)
                if "error" in chunk:
                    raise SmokeTestFailed(f"the stream carried an error: {chunk['error']}")
                usage = chunk.get("usage") or usage
                for choice in chunk.get("choices", []):
                    delta = choice.get("delta", {})
                    piece_c, piece_r = delta.get("content") or "", delta.get("reasoning_content") or ""
                    if (piece_c or piece_r) and ttft is None:
                        ttft = time.perf_counter() - t0
                    content.append(piece_c)
                    reasoning.append(piece_r)
        total = time.perf_counter() - t0
    if not done:
        raise SmokeTestFailed("the stream ended without 'data: [DONE]'")
    if not usage or usage.get("completion_tokens", 0) < 1:
        raise SmokeTestFailed(f"the stream reported no completion tokens (usage={usage})")
    n = usage["completion_tokens"]
    return {"ttft_ms": round(1000 * (ttft if ttft is not None else total), 2), "latency_ms": round(1000 * total, 2),
            "completion_tokens": n, "tokens_per_s": round(n / total, 2),
            "text": "".join(content), "reasoning": "".join(reasoning)}
