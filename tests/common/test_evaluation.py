"""The shared reasoning evaluator's statistics: Wilson and bootstrap intervals, paired differences,
per-task summaries with greedy and sampled completions, and task-aware problem selection."""

from __future__ import annotations

import math

import pytest

from stages.common.evaluation import (
    GREEDY,
    Graded,
    ReasoningEvalConfig,
    SamplingConfig,
    bootstrap_interval,
    paired_difference,
    select_problems,
    summarize,
    wilson_interval,
)
from stages.common.problems import Problem


def test_wilson_interval_known_values():
    lo, hi = wilson_interval(0, 64)
    assert lo == 0.0 and hi == pytest.approx(0.0565, abs=1e-3)    # the rule of three, roughly
    lo, hi = wilson_interval(20, 64)
    assert lo == pytest.approx(0.2123, abs=1e-3) and hi == pytest.approx(0.4339, abs=1e-3)   # by hand
    assert all(math.isnan(x) for x in wilson_interval(0, 0))
    # more problems, narrower interval
    assert wilson_interval(50, 200)[1] - wilson_interval(50, 200)[0] < hi - lo


def test_bootstrap_interval_covers_the_mean_and_is_seeded():
    values = [1.0] * 30 + [0.0] * 70
    lo, hi = bootstrap_interval(values, seed=3)
    assert lo < 0.3 < hi and hi - lo < 0.25
    assert (lo, hi) == bootstrap_interval(values, seed=3)
    assert bootstrap_interval([0.0] * 50) == (0.0, 0.0)


def _records(correct: dict[str, bool], task: str = "arithmetic") -> list[dict]:
    return [{"id": i, "task": task, "sample": "greedy", "correct": c} for i, c in correct.items()]


def test_paired_difference_shows_a_clear_gain_and_no_gain():
    ids = [f"p{i}" for i in range(100)]
    base = _records({i: False for i in ids})
    better = _records({i: n % 3 == 0 for n, i in enumerate(ids)})          # 34 % solved
    diff, lo, hi = paired_difference(better, base)
    assert diff == pytest.approx(0.34) and lo > 0.2
    diff, lo, hi = paired_difference(base, base)                            # 0 vs 0
    assert (diff, lo, hi) == (0.0, 0.0, 0.0)
    noisy = _records({i: n % 10 == 0 for n, i in enumerate(ids)})
    other = _records({i: n % 10 == 5 for n, i in enumerate(ids)})
    diff, lo, hi = paired_difference(noisy, other)                          # same rate, different problems
    assert diff == 0 and lo < 0 < hi
    assert paired_difference(better, _records({"zz": True})) is None       # nothing shared


def _graded(p: Problem, sample: int, correct: bool) -> Graded:
    return Graded(p, sample, "r", "a", 5, None, correct, "ok" if correct else "wrong")


def test_summary_per_task_greedy_and_sampled():
    def prob(i, task):
        return Problem(f"{task}-{i}", "arithmetic", "q", "q", "1", {"task": task} if task != "arithmetic" else {})

    graded = []
    for i in range(10):
        p = prob(i, "arithmetic")
        graded += [_graded(p, GREEDY, i < 4)] + [_graded(p, s, i < 2 or s == 0) for s in range(4)]
        q = prob(i, "arithmetic_3digit")
        graded += [_graded(q, GREEDY, False)] + [_graded(q, s, False) for s in range(4)]
    cfg = ReasoningEvalConfig(sampling=SamplingConfig(samples=4), pass_at=[1, 4])
    m = summarize(graded, cfg)
    assert m["arithmetic/greedy_pass_at_1"] == pytest.approx(0.4)
    assert m["arithmetic/greedy_pass_at_1_ci_low"] < 0.4 < m["arithmetic/greedy_pass_at_1_ci_high"]
    assert m["arithmetic/pass_at_4"] == pytest.approx(1.0)                 # sample 0 always right
    assert m["arithmetic/pass_at_1"] == pytest.approx((2 * 1.0 + 8 * 0.25) / 10)
    assert m["arithmetic_3digit/greedy_pass_at_1"] == 0 and m["arithmetic_3digit/problems"] == 10
    assert m["greedy_pass_at_1"] == pytest.approx(0.2) and m["problems"] == 20


def test_selection_interleaves_tasks():
    ps = [Problem(f"a{i}", "arithmetic", "q", "q", "1") for i in range(10)]
    ps += [Problem(f"b{i}", "arithmetic", "q", "q", "1", {"task": "probe"}) for i in range(3)]
    chosen = select_problems(ps, 8)
    assert sum(p.task == "probe" for p in chosen) == 3 and len(chosen) == 8
    assert len(select_problems(ps, None)) == 13


def test_config_rejects_a_pass_k_beyond_the_samples_and_an_empty_evaluation():
    with pytest.raises(ValueError, match="pass_at"):
        ReasoningEvalConfig(sampling=SamplingConfig(samples=2), pass_at=[4])
    with pytest.raises(ValueError, match="measures nothing"):
        ReasoningEvalConfig(greedy=False, sampling=SamplingConfig(samples=0), pass_at=[])
