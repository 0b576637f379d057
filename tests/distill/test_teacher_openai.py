"""The OpenAI-compatible teacher against a real local HTTP server (see conftest.FakeOpenAI)."""

from __future__ import annotations

import time

import pytest
from pydantic import ValidationError

from stages.common.problems import Problem
from stages.common.verify import verify
from stages.distill.teachers import OpenAITeacherConfig, TeacherError, TeacherUnavailable, build_teacher

PROBLEM = Problem("arithmetic-t", "arithmetic", "What is 12 + 30?",
                  "What is 12 + 30? Put the final answer in \\boxed{}.", "42", {"a": 12, "op": "+", "b": 30})


def teacher(server, model: str, **kw):
    cfg = dict(base_url=server.base_url, model=model, api_key_env=None, backoff_s=0.01, backoff_max_s=0.05,
               max_retries=2, timeout_s=5)
    return build_teacher(OpenAITeacherConfig(**{**cfg, **kw}))


@pytest.mark.parametrize("style", ["reasoning_content", "reasoning", "inline", "inline-open-missing"])
def test_each_reasoning_style_is_understood(openai_server, style):
    [c] = teacher(openai_server, style).complete(PROBLEM, 1)
    assert c.reasoning == "Compute 12 + 30 step by step.\nResult: 42."
    assert c.content == "12 + 30 = \\boxed{42}" and c.think_blocks == 1 and c.finish_reason == "stop"
    assert verify(PROBLEM, c.content).correct


def test_request_carries_the_sampling_settings(openai_server):
    t = teacher(openai_server, "reasoning_content", temperature=0.6, top_p=0.95, max_tokens=77,
                system_prompt="Be brief.", extra_body={"top_k": 20})
    t.complete(PROBLEM, 1, seed=5)
    body = openai_server.requests[-1]["body"]
    assert body["messages"] == [{"role": "system", "content": "Be brief."}, {"role": "user", "content": PROBLEM.prompt}]
    sent = (body["temperature"], body["top_p"], body["max_tokens"], body["seed"], body["top_k"])
    assert sent == (0.6, 0.95, 77, 5, 20)


def test_n_samples_are_split_over_requests(openai_server):
    out = teacher(openai_server, "reasoning_content", n_per_request=2).complete(PROBLEM, 3)
    assert len(out) == 3
    assert [r["body"]["n"] for r in openai_server.requests] == [2, 1]


def test_server_errors_are_retried_until_they_pass(openai_server):
    t = teacher(openai_server, "flaky", max_retries=3)
    [c] = t.complete(PROBLEM, 1)
    assert verify(PROBLEM, c.content).correct
    assert t.counters["requests"] == 3 and t.counters["retries"] == 2


def test_rate_limits_are_retried(openai_server):
    t = teacher(openai_server, "ratelimit")
    assert len(t.complete(PROBLEM, 1)) == 1 and t.counters["retries"] == 1


def test_a_dead_server_fails_after_the_retries(openai_server):
    t = teacher(openai_server, "down", max_retries=2)
    with pytest.raises(TeacherError, match="gave up after 3 attempts: HTTP 500") as err:
        t.complete(PROBLEM, 1)
    assert err.value.kind == "error" and openai_server.counts["down"] == 3
    assert t.counters["failed_error"] == 1


def test_timeouts_are_retried_then_reported_as_timeouts(openai_server):
    t = teacher(openai_server, "slow", timeout_s=0.3, max_retries=1)
    t0 = time.monotonic()
    with pytest.raises(TeacherError) as err:
        t.complete(PROBLEM, 1)
    assert err.value.kind == "timeout" and time.monotonic() - t0 < 3
    assert t.counters["requests"] == 2


def test_client_errors_are_not_retried(openai_server):
    t = teacher(openai_server, "bad-request", max_retries=3)
    with pytest.raises(TeacherError, match="HTTP 400"):
        t.complete(PROBLEM, 1)
    assert openai_server.counts["bad-request"] == 1


def test_non_json_responses_are_errors(openai_server):
    with pytest.raises(TeacherError, match="not JSON"):
        teacher(openai_server, "garbage", max_retries=1).complete(PROBLEM, 1)


def test_api_key_comes_from_the_named_env_var(openai_server, monkeypatch):
    with pytest.raises(TeacherUnavailable, match="WHALE_TEST_KEY"):
        teacher(openai_server, "auth", api_key_env="WHALE_TEST_KEY")
    monkeypatch.setenv("WHALE_TEST_KEY", "letmein")
    [c] = teacher(openai_server, "auth", api_key_env="WHALE_TEST_KEY").complete(PROBLEM, 1)
    assert openai_server.requests[-1]["auth"] == "Bearer letmein" and c.content


def test_config_is_validated():
    with pytest.raises(ValidationError, match="base_url"):
        OpenAITeacherConfig(base_url="localhost:8000", model="m")
    with pytest.raises(ValidationError):
        OpenAITeacherConfig(base_url="http://x/v1", model="m", temprature=0.5)  # typo: unknown key
