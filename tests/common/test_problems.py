"""Problem generators: deterministic, correct canonical answers, disjoint held-out split."""

from __future__ import annotations

import json
from fractions import Fraction

import pytest
from pydantic import ValidationError

from stages.common.problems import (
    HeldOutLeak,
    Problem,
    ProblemsConfig,
    ProblemSupplyError,
    allocate,
    build_split,
    check_disjoint,
    read_problems,
    write_problems,
)
from stages.common.problems.arithmetic import ArithmeticConfig
from stages.common.problems.code_bank import FAMILIES, build_problem, reference
from stages.common.problems.countdown import solve
from stages.common.problems.overlap import ngrams
from stages.common.verify import check_countdown

SMALL = dict(n_train=400, n_heldout=60)


def test_same_seed_same_split_different_seed_different_split():
    a, b = build_split(ProblemsConfig(**SMALL), seed=3), build_split(ProblemsConfig(**SMALL), seed=3)
    assert [p.to_dict() for p in a.train] == [p.to_dict() for p in b.train]
    assert [p.to_dict() for p in a.heldout] == [p.to_dict() for p in b.heldout]
    c = build_split(ProblemsConfig(**SMALL), seed=4)
    assert {p.id for p in c.heldout} != {p.id for p in a.heldout}


def test_counts_follow_the_weights_and_every_kind_appears():
    split = build_split(ProblemsConfig(**SMALL), seed=0)
    assert len(split.train) == 400 and len(split.heldout) == 60
    assert split.stats["train_by_kind"] == allocate(400, ProblemsConfig().kinds())
    kinds = {p.kind for p in split.train}
    assert kinds == {"arithmetic", "linear", "countdown", "code"}


def test_allocate_sums_exactly():
    assert allocate(10, {"a": 1, "b": 1, "c": 1}) in ({"a": 4, "b": 3, "c": 3}, {"a": 3, "b": 4, "c": 3},
                                                      {"a": 3, "b": 3, "c": 4})
    assert sum(allocate(997, {"a": 0.3, "b": 0.25, "c": 0.1}).values()) == 997


def test_canonical_answers_are_right():
    split = build_split(ProblemsConfig(**SMALL), seed=1)
    for p in split.train + split.heldout:
        d = p.data
        if p.kind == "arithmetic":
            assert int(p.answer) == {"+": d["a"] + d["b"], "-": d["a"] - d["b"], "*": d["a"] * d["b"]}[d["op"]]
        elif p.kind == "linear":
            x = Fraction(p.answer)
            assert d["a"] * x + d["b"] == d["c"]
        elif p.kind == "countdown":
            assert check_countdown(p.answer, d["numbers"], d["target"]).correct, p
        assert p.prompt.startswith(p.question) and p.id.startswith(p.kind)


def test_arithmetic_respects_digit_limits():
    cfg = ProblemsConfig(n_train=200, n_heldout=20, linear=None, countdown=None, code=None,
                         arithmetic=ArithmeticConfig(min_digits=3, max_digits=3, ops=["*"], max_mul_digits=2))
    for p in build_split(cfg, seed=0).train:
        assert p.data["op"] == "*" and 10 <= p.data["a"] <= 99 and 10 <= p.data["b"] <= 99


def test_heldout_is_disjoint_from_train():
    split = build_split(ProblemsConfig(n_train=1500, n_heldout=150), seed=0)
    assert not {p.id for p in split.train} & {p.id for p in split.heldout}
    assert not {p.question for p in split.train} & {p.question for p in split.heldout}
    assert split.overlap.max_overlap < 0.8
    train_fams = {p.data["family"] for p in split.train if p.kind == "code"}
    held_fams = {p.data["family"] for p in split.heldout if p.kind == "code"}
    assert held_fams and train_fams and not train_fams & held_fams


def test_a_planted_leak_fails_loudly():
    split = build_split(ProblemsConfig(**SMALL), seed=0)
    leaked = split.train + [split.heldout[0]]
    with pytest.raises(HeldOutLeak, match="also in train"):
        check_disjoint(split.heldout, leaked, 8, 0.8)
    # a near-duplicate under another id: same question, one word changed
    h = split.heldout[0]
    near = Problem("other-id", h.kind, h.question + " Show your work.", h.prompt, h.answer, h.data)
    with pytest.raises(HeldOutLeak, match="leaks"):
        check_disjoint(split.heldout, split.train + [near], 8, 0.5)


def test_ngrams_of_short_text_are_the_whole_text():
    assert ngrams("What is 2 + 3?", 8) == {("what", "is", "2", "+", "3", "?")}
    assert len(ngrams(" ".join(str(i) for i in range(10)), 8)) == 3


def test_asking_for_more_than_exists_is_a_clear_error():
    cfg = ProblemsConfig(n_train=500, n_heldout=10, linear=None, countdown=None, code=None,
                         arithmetic=ArithmeticConfig(min_digits=1, max_digits=1, ops=["+"]))
    with pytest.raises(ProblemSupplyError, match="arithmetic: asked for 500 train problems"):
        build_split(cfg, seed=0)


def test_config_errors_are_caught_before_generation():
    with pytest.raises(ValidationError):
        ProblemsConfig(arithmetic={"min_digits": 4, "max_digits": 2})
    with pytest.raises(ValidationError):
        ProblemsConfig(arithmetic={"digits": 3})  # unknown key
    with pytest.raises(ValueError, match="every kind is off"):
        build_split(ProblemsConfig(arithmetic=None, linear=None, countdown=None, code=None), seed=0)


def test_every_code_family_reference_passes_its_tests_and_the_buggy_one_fails():
    """In-process (the bank is our own code): each problem's asserts hold for the reference and
    at least one fails for the buggy variant, so the teacher's injected errors are detectable."""
    for family in FAMILIES:
        for params in family.grid:
            p = build_problem(family, params, n_tests=6)
            assert len(p.data["tests"]) >= 3, (family.name, params)
            ns: dict = {}
            exec(p.answer + "\n" + "\n".join(p.data["tests"]), ns)  # noqa: S102
            bad: dict = {}
            exec(p.data["buggy"], bad)  # noqa: S102
            failures = 0
            for t in p.data["tests"]:
                try:
                    exec(t, bad)  # noqa: S102
                except AssertionError:
                    failures += 1
                except Exception:  # noqa: BLE001 - a crashing buggy solution also fails
                    failures += 1
            assert failures, f"buggy {family.name}{params} passes every test"
            assert reference(family, params)  # callable


def test_countdown_solver_finds_the_generated_solution_space():
    tried, path, expr = solve([3, 7, 25, 50], 375)
    assert path and check_countdown(expr, [3, 7, 25, 50], 375).correct
    assert len(tried) >= len(path)
    _, none, _ = solve([1, 1], 97)
    assert none is None


def test_problems_roundtrip_through_jsonl(tmp_path):
    split = build_split(ProblemsConfig(**SMALL), seed=0)
    path = tmp_path / "heldout.jsonl"
    write_problems(split.heldout, path)
    assert [p.to_dict() for p in read_problems(path)] == [p.to_dict() for p in split.heldout]
    path.write_text(json.dumps({"id": "x"}) + "\n")
    with pytest.raises(ValueError, match="heldout.jsonl:1"):
        read_problems(path)


# -- reasoning-gym ---------------------------------------------------------------------------------

def test_reasoning_gym_task_mix_generates_splits_and_verifies():
    from stages.common.problems import ProblemsConfig, build_split
    from stages.common.verify import verify

    cfg = ProblemsConfig(n_train=20, n_heldout=8, arithmetic=None, linear=None, countdown=None, code=None,
                         gym={"tasks": [{"name": "basic_arithmetic", "weight": 2,
                                         "config": {"min_terms": 2, "max_terms": 3, "max_digits": 2}},
                                        {"name": "chain_sum"}]})
    split = build_split(cfg, seed=0)
    assert len(split.train) == 20 and len(split.heldout) == 8
    assert not {p.id for p in split.train} & {p.id for p in split.heldout}
    assert {p.task for p in split.train + split.heldout} <= {"basic_arithmetic", "chain_sum"}
    for p in split.heldout:
        assert p.kind == "gym" and p.verifier == "gym"
        assert verify(p, f"so \\boxed{{{p.answer}}}").correct                       # the scorer accepts the answer
        assert not verify(p, "\\boxed{123456789}").correct                           # and rejects a wrong one
        assert verify(p, "no box here").reason in ("no_answer", "wrong")


def test_unknown_reasoning_gym_task_fails_at_config_time():
    import pytest
    from pydantic import ValidationError

    from stages.common.problems import ProblemsConfig

    with pytest.raises(ValidationError, match="no_such_dataset"):
        ProblemsConfig(gym={"tasks": [{"name": "no_such_dataset"}]})
