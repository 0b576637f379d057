"""Bounded load test on loopback: 16 concurrent streaming clients for 30 s (WHALE_SERVE_LOAD_S)
against a real Ray Serve deployment. Zero failed requests; time-to-first-token and inter-token
latency percentiles are printed (no timing asserts: this machine is shared)."""

from __future__ import annotations

import asyncio
import json
import os
import statistics
import time

import httpx
import pytest

from tests.serve.conftest import deploy_for_test

pytestmark = pytest.mark.slow

CLIENTS = 16
DURATION_S = float(os.environ.get("WHALE_SERVE_LOAD_S", "30"))
MODEL = "tiny-chat"


@pytest.fixture(scope="module")
def base_url(ray_local, chat_model_dir):
    url = deploy_for_test(chat_model_dir, app_name="whale-load-test",
                          engine={"num_slots": CLIENTS, "max_seq_len": 256, "max_num_batched_tokens": 128,
                                  "max_waiting": CLIENTS})
    yield url
    from ray import serve

    serve.shutdown()


def percentile(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * len(xs)))] if xs else float("nan")


async def one_client(client: httpx.AsyncClient, k: int, stop_at: float, stats: dict) -> None:
    i = 0
    while time.monotonic() < stop_at:
        body = {"model": MODEL, "messages": [{"role": "user", "content": f"client {k} request {i}"}],
                "max_tokens": 32, "temperature": 0.7, "seed": 1000 * k + i, "stream": True, "ignore_eos": True,
                "stream_options": {"include_usage": True}}
        i += 1
        t0 = time.monotonic()
        last, done, tokens = None, False, 0
        try:
            async with client.stream("POST", "/v1/chat/completions", json=body) as r:
                if r.status_code != 200:
                    stats["failures"].append(f"HTTP {r.status_code}: {(await r.aread())[:200]!r}")
                    continue
                async for line in r.aiter_lines():
                    if not line.startswith("data: "):
                        continue
                    data = line.removeprefix("data: ")
                    if data == "[DONE]":
                        done = True
                        break
                    chunk = json.loads(data)
                    if chunk.get("usage"):
                        tokens = chunk["usage"]["completion_tokens"]
                    for ch in chunk.get("choices", []):
                        d = ch["delta"]
                        if d.get("content") or d.get("reasoning_content"):
                            now = time.monotonic()
                            if last is None:
                                stats["ttft"].append(now - t0)
                            else:
                                stats["itl"].append(now - last)
                            last = now
        except httpx.HTTPError as e:
            stats["failures"].append(f"{type(e).__name__}: {e}")
            continue
        if not done or tokens != 32:
            stats["failures"].append(f"incomplete stream (done={done}, tokens={tokens})")
        else:
            stats["completed"] += 1
            stats["tokens"] += tokens


def test_sixteen_streaming_clients_without_failures(base_url):
    stats = {"ttft": [], "itl": [], "failures": [], "completed": 0, "tokens": 0}

    async def main():
        limits = httpx.Limits(max_connections=CLIENTS, max_keepalive_connections=CLIENTS)
        async with httpx.AsyncClient(base_url=base_url, timeout=120, limits=limits) as client:
            stop_at = time.monotonic() + DURATION_S
            await asyncio.gather(*(one_client(client, k, stop_at, stats) for k in range(CLIENTS)))

    t0 = time.monotonic()
    asyncio.run(main())
    wall = time.monotonic() - t0
    report = {
        "clients": CLIENTS, "duration_s": round(wall, 1), "requests_completed": stats["completed"],
        "failed": len(stats["failures"]), "completion_tokens_per_s": round(stats["tokens"] / wall, 1),
        "ttft_ms_p50": round(1000 * percentile(stats["ttft"], 0.50), 1),
        "ttft_ms_p99": round(1000 * percentile(stats["ttft"], 0.99), 1),
        "itl_ms_p50": round(1000 * percentile(stats["itl"], 0.50), 1),
        "itl_ms_p99": round(1000 * percentile(stats["itl"], 0.99), 1),
        "itl_ms_mean": round(1000 * statistics.fmean(stats["itl"]), 1) if stats["itl"] else None,
    }
    print("\nserve load test:", json.dumps(report))
    assert not stats["failures"], stats["failures"][:5]
    assert stats["completed"] >= CLIENTS
