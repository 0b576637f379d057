"""Reasoning through the shared evaluator: subset selection, grading with the real verifiers and the
format check, and the suite on a tiny model through the engine (same seeds, same numbers)."""

from __future__ import annotations

import pytest

from stages.common.evaluation import GREEDY, VerifierConfig, grade_all
from stages.common.problems import Problem, read_problems
from stages.eval import reasoning
from stages.eval.config import ReasoningSuite
from stages.eval.generation import load_model


@pytest.fixture(scope="module")
def heldout(distill_out):
    return read_problems(distill_out / "data" / "heldout.jsonl")


def test_small_subsets_cover_every_kind(heldout):
    kinds = {p.kind for p in heldout}
    picked = reasoning.select_problems(heldout, len(kinds))
    assert {p.kind for p in picked} == kinds
    assert len(reasoning.select_problems(heldout, None)) == len(heldout)
    assert reasoning.select_problems(heldout, 5) == reasoning.select_problems(heldout, 5)


def _ids(tok, reasoning_text: str | None, answer: str, close=True) -> list[int]:
    ids = []
    if reasoning_text is not None:
        ids += [tok.think_id, *tok.encode("\n" + reasoning_text + "\n")]
        if close:
            ids.append(tok.think_end_id)
    return ids + tok.encode("\n\n" + answer)


def test_grading_uses_the_verifier_on_the_answer_and_checks_the_format(models):
    tok = load_model(models["random"]).tokenizer
    p = Problem("arithmetic-x", "arithmetic", "What is 12 + 30?", "What is 12 + 30? Put the final answer in \\boxed{}.",
                "42", {"a": 12, "op": "+", "b": 30})
    cases = {
        "good": (_ids(tok, "12 + 30 = 42.", "The answer is \\boxed{42}."), "stop"),
        "wrong": (_ids(tok, "12 + 30 = 41.", "\\boxed{41}"), "stop"),
        "no_reasoning": (_ids(tok, None, "\\boxed{42}"), "stop"),
        "truncated": (_ids(tok, "12 + 30 is", "", close=False), "length"),
        "no_answer": (_ids(tok, "easy", "forty-two"), "stop"),
    }
    graded = dict(zip(cases, grade_all(tok, [(p, i, ids, finish) for i, (ids, finish) in enumerate(cases.values())],
                                       VerifierConfig()), strict=True))
    assert graded["good"].format_issue is None and graded["good"].correct
    assert graded["good"].reasoning_tokens == len(tok.encode("\n12 + 30 = 42.\n"))
    assert graded["wrong"].format_issue is None and not graded["wrong"].correct
    assert graded["no_reasoning"].format_issue == "no_reasoning" and graded["no_reasoning"].correct
    assert graded["truncated"].format_issue == "unclosed_reasoning" and not graded["truncated"].correct
    assert graded["no_answer"].format_issue == "no_answer" and not graded["no_answer"].correct


def test_suite_on_a_tiny_model_is_reproducible(models, heldout):
    lm = load_model(models["random"])
    cfg = ReasoningSuite(max_problems=4, sampling={"samples": 2, "max_new_tokens": 12}, pass_at=[1, 2])
    problems = reasoning.select_problems(heldout, 4)
    m1, rec1 = reasoning.evaluate(lm, problems, cfg, seed=3, log=lambda _: None)
    m2, rec2 = reasoning.evaluate(lm, problems, cfg, seed=3, log=lambda _: None)
    assert m1 == m2 and [r["answer"] for r in rec1] == [r["answer"] for r in rec2]
    assert m1["reasoning/samples"] == 12 and m1["reasoning/problems"] == 4     # greedy + 2 samples each
    assert sum(r["sample"] == "greedy" for r in rec1) == 4
    assert 0 <= m1["reasoning/format"] <= 1 and m1["reasoning/pass_at_2"] >= m1["reasoning/pass_at_1"]
    assert m1["reasoning/greedy_pass_at_1_ci_low"] <= m1["reasoning/greedy_pass_at_1"]
    m3, rec3 = reasoning.evaluate(lm, problems, cfg, seed=4, log=lambda _: None)
    sampled = [r["answer"] for r in rec1 if r["sample"] != "greedy"]
    assert [r["answer"] for r in rec3 if r["sample"] != "greedy"] != sampled
    # greedy completions do not depend on the seed
    assert [r["answer"] for r in rec3 if r["sample"] == "greedy"] == [r["answer"] for r in rec1
                                                                        if r["sample"] == "greedy"]
    assert GREEDY == -1
