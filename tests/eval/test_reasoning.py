"""Reasoning: subset selection, the format check on generated ids, grading with the real verifiers,
and the suite on a tiny model with the same seeds giving the same numbers."""

from __future__ import annotations

import pytest

from stages.common.problems import Problem, read_problems
from stages.eval import reasoning
from stages.eval.config import ReasoningSuite
from stages.eval.generation import Sample, load_model


@pytest.fixture(scope="module")
def heldout(distill_out):
    return read_problems(distill_out / "data" / "heldout.jsonl")


def test_small_subsets_cover_every_kind(heldout):
    kinds = {p.kind for p in heldout}
    picked = reasoning.select_problems(heldout, len(kinds))
    assert {p.kind for p in picked} == kinds
    assert len(reasoning.select_problems(heldout, None)) == len(heldout)
    assert reasoning.select_problems(heldout, 5) == reasoning.select_problems(heldout, 5)


def _sample(tok, reasoning_text: str | None, answer: str, finish="stop", close=True) -> Sample:
    ids = []
    if reasoning_text is not None:
        ids += [tok.think_id, *tok.encode("\n" + reasoning_text + "\n")]
        if close:
            ids.append(tok.think_end_id)
    ids += tok.encode("\n\n" + answer)
    return Sample(ids, finish)


def test_grading_uses_the_verifier_on_the_answer_and_checks_the_format(models):
    lm = load_model(models["random"])
    tok = lm.tokenizer
    p = Problem("arithmetic-x", "arithmetic", "What is 12 + 30?", "What is 12 + 30? Put the final answer in \\boxed{}.",
                "42", {"a": 12, "op": "+", "b": 30})
    cases = {
        "good": _sample(tok, "12 + 30 = 42.", "The answer is \\boxed{42}."),
        "wrong": _sample(tok, "12 + 30 = 41.", "\\boxed{41}"),
        "no_reasoning": _sample(tok, None, "\\boxed{42}"),
        "truncated": _sample(tok, "12 + 30 is", "", finish="length", close=False),
        "no_answer": _sample(tok, "easy", "forty-two"),
    }
    cfg = ReasoningSuite(samples=1, pass_at=[1])
    from stages.common.verify import verify
    from tokenizer import split_reasoning

    verdicts = {}
    for s in cases.values():
        answer = split_reasoning(tok.decode(s.tokens))[1]
        verdicts[(p.id, answer)] = verify(p, answer) if answer.strip() else reasoning.Verdict(False, "no_answer")
    graded = {k: reasoning.grade(lm, p, 0, s, verdicts) for k, s in cases.items()}
    assert graded["good"].formatted and graded["good"].verdict.correct
    assert graded["good"].reasoning_tokens == len(tok.encode("\n12 + 30 = 42.\n"))
    assert graded["wrong"].formatted and not graded["wrong"].verdict.correct
    assert graded["no_reasoning"].format_issue == "no_reasoning" and graded["no_reasoning"].verdict.correct
    assert graded["truncated"].format_issue == "unclosed_reasoning" and not graded["truncated"].verdict.correct
    assert graded["no_answer"].format_issue == "no_answer"
    m = reasoning.summarize(list(graded.values()), cfg)
    assert m["reasoning/pass_at_1"] == pytest.approx(2 / 5)   # five samples of one problem, two correct
    assert m["reasoning/format"] == pytest.approx(2 / 5)
    assert m["reasoning/format_issue/no_reasoning"] == 1


def test_suite_on_a_tiny_model_is_reproducible(models, heldout):
    lm = load_model(models["random"])
    cfg = ReasoningSuite(max_problems=4, samples=2, pass_at=[1, 2], sampling={"max_new_tokens": 12})
    problems = reasoning.select_problems(heldout, 4)
    m1, rec1 = reasoning.evaluate(lm, problems, cfg, seed=3, log=lambda _: None)
    m2, rec2 = reasoning.evaluate(lm, problems, cfg, seed=3, log=lambda _: None)
    assert m1 == m2 and [r["completion"] for r in rec1] == [r["completion"] for r in rec2]
    assert m1["reasoning/samples"] == 8 and m1["reasoning/problems"] == 4
    assert 0 <= m1["reasoning/format"] <= 1 and m1["reasoning/pass_at_2"] >= m1["reasoning/pass_at_1"]
    m3, rec3 = reasoning.evaluate(lm, problems, cfg, seed=4, log=lambda _: None)
    assert [r["completion"] for r in rec3] != [r["completion"] for r in rec1]
