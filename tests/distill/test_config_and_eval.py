"""The stage config (defaults, overrides, errors before compute), the held-out evaluator's scoring,
and the trace bookkeeping (decontamination, validation split)."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from stages.common.evaluation import (
    GREEDY,
    Graded,
    ReasoningEvalConfig,
    SamplingConfig,
    VerifierConfig,
    grade_all,
    select_problems,
    summarize,
)
from stages.common.problems import ProblemsConfig, build_split
from stages.common.scoring import pass_at_k, reasoning_span
from stages.distill.config import DistillConfig
from stages.distill.traces import decontaminate, split_validation
from tests.distill.helpers import ARITHMETIC_ONLY, trace_rows, train_tokenizer

# -- config ----------------------------------------------------------------------------------------


def test_tiny_default_is_arithmetic_with_a_fine_tuning_recipe():
    cfg = DistillConfig()
    assert cfg.teacher.kind == "procedural" and set(cfg.problems.kinds()) == {"arithmetic"}
    s = cfg.train.schedule
    assert s.kind == "cosine" and s.min_lr_ratio == 0.1 and 0.03 <= s.warmup_steps / cfg.train.steps <= 0.1
    # lr 3e-3 only with replay (measured: 0.059 greedy pass@1 vs 0.027 at 1e-3, web bits/byte kept), no MTP
    # loss, one sample per prompt from the deterministic procedural teacher, greedy evaluation with an
    # out-of-distribution probe
    assert cfg.train.optimizer.lr == 3e-3 and cfg.train.mtp_weight.initial == cfg.train.mtp_weight.final == 0
    assert cfg.replay.enabled and 0 < cfg.replay.ratio < 1 and cfg.rejection.samples_per_prompt == 1
    assert cfg.evaluation.greedy and cfg.probe.task == "arithmetic_3digit"


def test_overrides_merge_into_the_tiny_defaults():
    cfg = DistillConfig(train={"steps": 200}, problems={"arithmetic": {"max_digits": 3}})
    assert cfg.train.schedule.warmup_steps == 10          # 5% of the new step count
    assert cfg.train.parallel.ep == DistillConfig().train.parallel.ep
    assert cfg.problems.arithmetic.max_digits == 3 and cfg.problems.arithmetic.ops == ["+", "-"]
    assert DistillConfig(train={"schedule": {"warmup_steps": 2}}).train.schedule.warmup_steps == 2
    assert DistillConfig(sft={"warmup_fraction": 0.1}, train={"steps": 100}).train.schedule.warmup_steps == 10


@pytest.mark.parametrize("bad, match", [
    ({"kd": {"enabled": True}}, "teacher.kind: local"),
    ({"evaluation": {"sampling": {"samples": 2}, "pass_at": [1, 4]}}, "pass_at"),
    ({"train": {"batch_sz": 4}}, "batch_sz"),
    ({"teacher": {"kind": "openai", "base_url": "ftp://x", "model": "m"}}, "base_url"),
    ({"problems": {"n_heldout": 0}}, "n_heldout is 0"),
    ({"train": {"batch_size": 3}}, "divisible"),
])
def test_bad_configs_fail_before_compute(bad, match):
    with pytest.raises(ValidationError, match=match):
        DistillConfig(**bad)


def test_kd_with_a_local_teacher_validates():
    cfg = DistillConfig(teacher={"kind": "local", "path": "/nonexistent"},
                        kd={"enabled": True, "divergence": "reverse"})
    assert cfg.kd.divergence == "reverse"


# -- evaluation scoring ----------------------------------------------------------------------------

def test_pass_at_k_is_the_unbiased_estimator():
    assert pass_at_k(4, 0, 1) == 0 and pass_at_k(4, 4, 1) == 1
    assert pass_at_k(4, 1, 1) == pytest.approx(0.25)
    assert pass_at_k(4, 1, 2) == pytest.approx(1 - 3 / 6)      # 1 - C(3,2)/C(4,2)
    assert pass_at_k(5, 2, 5) == 1.0
    with pytest.raises(ValueError):
        pass_at_k(2, 3, 1)


def test_reasoning_span_names_the_format_problem():
    think, end = 7, 8
    assert reasoning_span([think, 20, 21, end, 30], think, end) == (2, None)
    assert reasoning_span([20, think, 21, end], think, end) == (0, "no_reasoning")
    assert reasoning_span([think, 20, end, think, end], think, end) == (0, "multiple_reasoning")
    assert reasoning_span([think, 20, 21], think, end) == (2, "unclosed_reasoning")
    assert reasoning_span([think, end, 30], think, end) == (0, "empty_reasoning")


def test_select_problems_round_robins_tasks():
    split = build_split(ProblemsConfig(n_train=10, n_heldout=12, countdown=None, code=None), seed=0)
    picked = select_problems(split.heldout, 4)
    assert len(picked) == 4 and {p.kind for p in picked} == {"arithmetic", "linear"}


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
    return train_tokenizer(trace_rows(60), tmp_path_factory.mktemp("tok"))


def test_grading_verifies_the_answer_and_checks_the_format(tok):
    split = build_split(ProblemsConfig(n_train=0, n_heldout=2, **ARITHMETIC_ONLY), seed=1)
    p = split.heldout[0]

    def ids(text):
        return tok.encode(text, allow_special=True)

    good = f"<think>\nwork\n</think>\n\n\\boxed{{{p.answer}}}"
    generated = [
        (p, GREEDY, ids(good), "stop"),
        (p, 1, ids(f"<think>\nwork\n</think>\n\n\\boxed{{{int(p.answer) + 1}}}"), "stop"),
        (p, 2, ids(f"\\boxed{{{p.answer}}}"), "stop"),                   # right, but no reasoning
        (p, 3, ids(good), "length"),                                       # cut off at the token limit
    ]
    graded = grade_all(tok, generated, VerifierConfig())
    assert [g.correct for g in graded] == [True, False, True, True]
    assert [g.format_issue for g in graded] == [None, None, "no_reasoning", "truncated"]
    assert graded[0].reasoning == "work" and graded[0].reasoning_tokens == len(ids("\nwork\n"))
    m = summarize(graded, ReasoningEvalConfig(sampling=SamplingConfig(samples=3), pass_at=[1, 3]))
    assert m["greedy_pass_at_1"] == 1.0 and m["pass_at_1"] == pytest.approx(2 / 3) and m["pass_at_3"] == 1.0
    assert m["format"] == 0.5 and m["format_issue/no_reasoning"] == 1
    assert m["arithmetic/pass_at_1"] == pytest.approx(2 / 3)


def test_summarize_averages_over_problems_not_samples():
    split = build_split(ProblemsConfig(n_train=0, n_heldout=2, **ARITHMETIC_ONLY), seed=2)
    a, b = split.heldout
    graded = [Graded(a, i, "r", "x", 3, None, True, "correct") for i in range(2)]
    graded += [Graded(b, i, "r", "x", 5, None, False, "wrong") for i in range(2)]
    m = summarize(graded, ReasoningEvalConfig(sampling=SamplingConfig(samples=2), pass_at=[1, 2]))
    assert m["pass_at_1"] == 0.5 and m["pass_at_2"] == 0.5 and m["reasoning_tokens"] == 4 and m["problems"] == 2


# -- traces ----------------------------------------------------------------------------------------

def test_decontamination_drops_prompts_that_contain_a_heldout_question():
    split = build_split(ProblemsConfig(n_train=0, n_heldout=3, **ARITHMETIC_ONLY), seed=0)
    leak = {"messages": [{"role": "user", "content": f"Quick one. {split.heldout[0].question} Think first."},
                         {"role": "assistant", "content": "x"}]}
    clean = {"messages": [{"role": "user", "content": "What is 1000 + 2000?"}, {"role": "assistant", "content": "x"}]}
    kept, dropped = decontaminate([leak, clean], split.heldout, n=8, max_overlap=0.8)
    assert kept == [clean] and dropped == 1


def test_validation_split_is_seeded_and_keeps_problems_whole():
    rows = trace_rows(100)
    rows = rows + [dict(r, id=r["id"] + "-copy") for r in rows[:20]]   # a second trace for some problems
    train, val = split_validation(rows, 0.2, seed=0)
    assert len(train) + len(val) == len(rows) and 0 < len(val) < len(rows) / 2
    assert not {r["problem_id"] for r in train} & {r["problem_id"] for r in val}
    assert split_validation(rows, 0.2, seed=0) == (train, val) and split_validation(rows, 0.2, seed=1) != (train, val)
    assert split_validation(rows, 0.0, seed=0) == (rows, [])
