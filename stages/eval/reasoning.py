"""Reasoning: the distill stage's held-out verifiable problems, through the shared evaluator
(``stages.common.evaluation``: the same selection, seeds, generation, grading and intervals that
distill's before/after evaluation uses), with metric names under ``reasoning/``:

    reasoning/<task>/greedy_pass_at_1 (+ _ci_low, _ci_high)   Wilson 95 % interval
    reasoning/<task>/pass_at_<k>      (+ _ci_low, _ci_high)   bootstrap 95 % interval over problems
    reasoning/format, reasoning/reasoning_tokens, reasoning/format_issue/<why>
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from stages.common.evaluation import GREEDY, evaluate_reasoning, paired_difference, select_problems
from stages.common.problems import Problem
from stages.eval.config import ReasoningSuite
from stages.eval.generation import LoadedModel

__all__ = ["evaluate", "select_problems", "paired_metrics", "GREEDY"]


def evaluate(lm: LoadedModel, problems: Sequence[Problem], cfg: ReasoningSuite, seed: int,
             log: Callable[[str], None], label: str = "model") -> tuple[dict[str, float], list[dict]]:
    report = evaluate_reasoning(lm.model, lm.tokenizer, problems, cfg, seed=seed, label=label, log=log)
    return {f"reasoning/{k}": v for k, v in report.metrics.items()}, report.records


def paired_metrics(candidate: list[dict], other: list[dict], cfg: ReasoningSuite, seed: int
                   ) -> dict[str, tuple[float, float, float]]:
    """(difference, CI low, CI high) of greedy pass@1, candidate minus the other model, paired per
    problem, overall and per task: ``reasoning/[<task>/]greedy_pass_at_1`` -> triple."""
    tasks = sorted({r["task"] for r in candidate})
    out = {}
    for task in [None, *tasks]:
        name = "reasoning/greedy_pass_at_1" if task is None else f"reasoning/{task}/greedy_pass_at_1"
        diff = paired_difference(candidate, other, task=task, confidence=cfg.confidence, resamples=cfg.bootstrap,
                                 seed=seed)
        if diff is not None:
            out[name] = diff
    return out
