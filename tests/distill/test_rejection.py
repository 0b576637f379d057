"""Rejection sampling: every sample accounted for, filters, dedup, output format, Ray."""

from __future__ import annotations

import pytest

from stages.common.problems import Problem, ProblemsConfig, build_split
from stages.distill.rejection import RejectionConfig, check_sample, read_jsonl, rejection_sample, write_jsonl
from stages.distill.teachers import Completion, OpenAITeacherConfig, ProceduralTeacherConfig

DOCUMENTED = {"teacher_error", "teacher_timeout", "format:no_reasoning", "format:multiple_reasoning",
              "format:no_answer", "format:truncated", "format:reasoning_too_long", "format:reasoning_too_short",
              "format:answer_too_long", "wrong_answer", "invalid_answer", "verify_timeout", "verify_error",
              "unverifiable", "duplicate", "over_keep_limit"}


@pytest.fixture(scope="module")
def split():
    return build_split(ProblemsConfig(n_train=300, n_heldout=30), seed=0)


def accounted(stats) -> bool:
    return stats["requested"] == stats["kept"] + sum(stats["dropped"].values())


def test_every_sample_is_kept_or_dropped_for_a_documented_reason(split):
    teacher = ProceduralTeacherConfig(error_rate=0.25, format_error_rate=0.1)
    res = rejection_sample(split.train, teacher, RejectionConfig(samples_per_prompt=3, keep_per_prompt=3))
    st = res.stats
    assert accounted(st) and st["requested"] == 900
    assert set(st["dropped"]) <= DOCUMENTED
    assert st["dropped"]["wrong_answer"] > 100 and st["dropped"]["format:no_answer"] > 0
    assert st["kept"] == len(res.rows) and st["prompts_kept"] <= 300
    assert {r["kind"] for r in res.rows} == {"arithmetic", "linear", "countdown", "code"}


def test_kept_rows_are_verified_chat_messages(split):
    res = rejection_sample(split.train[:40], ProceduralTeacherConfig(error_rate=0.5),
                           RejectionConfig(samples_per_prompt=2), seed=0)
    by_id = {p.id: p for p in split.train}
    from stages.common.verify import verify
    for row in res.rows:
        user, assistant = row["messages"]
        assert user == {"role": "user", "content": by_id[row["problem_id"]].prompt}
        assert set(assistant) == {"role", "reasoning_content", "content"} and assistant["reasoning_content"]
        assert verify(by_id[row["problem_id"]], assistant["content"]).correct


def test_rows_render_with_the_tokenizer_chat_template(split):
    from tokenizer.chat import render

    [row] = rejection_sample(split.train[:1], ProceduralTeacherConfig(error_rate=0),
                             RejectionConfig(system_prompt="Think first.")).rows
    text = render(row["messages"])
    assistant = row["messages"][-1]
    assert f"<think>\n{assistant['reasoning_content']}\n</think>\n\n{assistant['content']}" in text
    assert "Think first." in text


def test_identical_samples_are_deduplicated_and_keep_limit_applies(split):
    # the error-free procedural teacher is deterministic: 4 samples per prompt are one sample
    st = rejection_sample(split.train[:50], ProceduralTeacherConfig(error_rate=0),
                          RejectionConfig(samples_per_prompt=4, keep_per_prompt=2)).stats
    assert st["kept"] == 50 and st["dropped"] == {"duplicate": 150}


def test_length_filters(split):
    st = rejection_sample(split.train[:30], ProceduralTeacherConfig(error_rate=0),
                          RejectionConfig(max_reasoning_tokens=10)).stats
    assert st["dropped"] == {"format:reasoning_too_long": st["requested"] - st["kept"]} and st["kept"] < 30


@pytest.mark.parametrize("completion,reason", [
    (Completion(None, "\\boxed{42}", 0), "format:no_reasoning"),
    (Completion("r", "\\boxed{42}", 2), "format:multiple_reasoning"),
    (Completion("r", "<think>again</think>\\boxed{42}", 1), "format:multiple_reasoning"),
    (Completion("r", "forty-two", 1), "format:no_answer"),
    (Completion("r", "\\boxed{42}", 1, "length"), "format:truncated"),
    (Completion("r", "\\boxed{41}", 1), "wrong_answer"),
    (Completion("r", "\\boxed{42}", 1), None),
])
def test_sample_checks(completion, reason):
    p = Problem("arithmetic-x", "arithmetic", "What is 40 + 2?", "What is 40 + 2? Put the final answer in \\boxed{}.",
                "42", {"a": 40, "op": "+", "b": 2})
    assert check_sample(completion, p, RejectionConfig())[0] == reason


def test_jsonl_roundtrip(tmp_path, split):
    res = rejection_sample(split.train[:20], ProceduralTeacherConfig(error_rate=0), RejectionConfig())
    for name in ("train.jsonl", "train.jsonl.gz"):
        assert write_jsonl(res.rows, tmp_path / name) == len(res.rows)
        assert read_jsonl(tmp_path / name) == res.rows


def test_teacher_outages_are_counted_not_fatal(openai_server, split):
    arithmetic = [p for p in split.train if p.kind == "arithmetic"][:6]
    base = dict(base_url=openai_server.base_url, api_key_env=None, max_retries=1, backoff_s=0.01)
    two = RejectionConfig(samples_per_prompt=2)
    down = rejection_sample(arithmetic, OpenAITeacherConfig(model="down", **base), two)
    assert down.rows == [] and down.stats["dropped"] == {"teacher_error": 12} and accounted(down.stats)
    slow = rejection_sample(arithmetic[:2], OpenAITeacherConfig(model="slow", timeout_s=0.2, **base), RejectionConfig())
    assert slow.stats["dropped"] == {"teacher_timeout": 4}


def test_openai_teacher_end_to_end(openai_server, split):
    arithmetic = [p for p in split.train if p.kind == "arithmetic"][:8]
    base = dict(base_url=openai_server.base_url, api_key_env=None)
    one = RejectionConfig(samples_per_prompt=1)
    good = rejection_sample(arithmetic, OpenAITeacherConfig(model="inline", **base), one)
    assert good.stats["kept"] == 8
    bad = rejection_sample(arithmetic, OpenAITeacherConfig(model="wrong", **base), one)
    assert bad.stats["kept"] == 0 and bad.stats["dropped"] == {"wrong_answer": 8}


def test_config_rejects_unknown_keys():
    from pydantic import ValidationError

    with pytest.raises(ValidationError):
        RejectionConfig(samples=4)


# -- Ray ----------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def ray_cpus():
    import os
    from pathlib import Path

    import ray

    started = not ray.is_initialized()
    if started:
        repo = str(Path(__file__).resolve().parents[2])
        path = os.pathsep.join(p for p in (repo, os.environ.get("PYTHONPATH")) if p)
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False,
                 runtime_env={"env_vars": {"PYTHONPATH": path}})
    yield ray
    if started:
        ray.shutdown()


@pytest.mark.slow
def test_pipeline_runs_inside_a_ray_task(ray_cpus, split):
    """Threads, the code sandbox and the sympy worker, all from inside a Ray worker process."""
    ray = ray_cpus
    problems = [p.to_dict() for p in split.train[:60]]

    @ray.remote(num_cpus=1)
    def stage_like(problems):
        from stages.common.problems import Problem
        from stages.common.verify import math_equal

        res = rejection_sample([Problem.from_dict(p) for p in problems], ProceduralTeacherConfig(error_rate=0.2),
                               RejectionConfig(samples_per_prompt=2))
        return res.stats, math_equal("x^2+2x+1", "(x+1)^2").correct

    stats, symbolic = ray.get(stage_like.remote(problems))
    assert symbolic and accounted(stats) and stats["kept"] > 0
    assert stats["by_kind"]["code"]["kept"] > 0  # sandboxed tests passed inside the worker


@pytest.mark.slow
def test_ray_shards_with_an_http_teacher(ray_cpus, openai_server, split):
    arithmetic = [p for p in split.train if p.kind == "arithmetic"][:12]
    cfg = OpenAITeacherConfig(base_url=openai_server.base_url, model="reasoning", api_key_env=None)
    res = rejection_sample(arithmetic, cfg, RejectionConfig(samples_per_prompt=1, ray_shards=2))
    assert res.stats["ray_shards"] == 2 and res.stats["kept"] == 12 and accounted(res.stats)
    assert sorted(r["problem_id"] for r in res.rows) == sorted(p.id for p in arithmetic)
