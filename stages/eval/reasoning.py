"""Reasoning: the distill stage's held-out verifiable problems, sampled n times each.

    reasoning/pass_at_1, reasoning/pass_at_<k>   unbiased pass@k over n samples (R1 reports pass@1 as
                                                 the mean correctness of n samples at T=0.6, top-p 0.95)
    reasoning/<kind>/pass_at_1                   per problem kind (arithmetic, linear, countdown, code)
    reasoning/format                             share of samples in the trained format: one closed
                                                 <think> block first, a non-empty reasoning, an answer
                                                 the verifier can read, ended by EOS (not cut off)
    reasoning/reasoning_tokens                   mean tokens inside <think>...</think> per sample

The answer after ``</think>`` is checked by ``stages.common.verify`` (exact/symbolic math, countdown
rules, code tests in the sandbox): the same verifiers the distill stage filters its traces with.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from stages.common.problems import Problem
from stages.common.sandbox import SandboxLimits
from stages.common.scoring import mean_pass_at_k, reasoning_span
from stages.common.verify import Verdict, extract_answer, extract_code, verify_distinct
from stages.eval.config import ReasoningSuite
from stages.eval.generation import LoadedModel, Sample, decode, row_seed, sample_many


def select_problems(problems: Sequence[Problem], limit: int | None) -> list[Problem]:
    """The first ``limit`` problems taken round-robin across kinds (file order within a kind), so a
    small limit still covers every kind."""
    by_kind: dict[str, list[Problem]] = defaultdict(list)
    for p in problems:
        by_kind[p.kind].append(p)
    out: list[Problem] = []
    queues = [list(v) for _, v in sorted(by_kind.items())]
    while queues and (limit is None or len(out) < limit):
        for q in queues:
            if q and (limit is None or len(out) < limit):
                out.append(q.pop(0))
        queues = [q for q in queues if q]
    return out


@dataclass
class Graded:
    problem: Problem
    sample: int
    text: str
    reasoning_tokens: int
    formatted: bool
    format_issue: str | None
    verdict: Verdict


def grade(lm: LoadedModel, problem: Problem, index: int, s: Sample,
          verdicts: dict[tuple[str, str], Verdict]) -> Graded:
    from tokenizer import split_reasoning

    tok = lm.tokenizer
    text = decode(lm, s.tokens)
    n_reason, issue = reasoning_span(s.tokens, tok.think_id, tok.think_end_id)
    _, answer = split_reasoning(text)
    if s.finish_reason != "stop" and issue is None:
        issue = "truncated" if s.finish_reason == "length" else s.finish_reason
    readable = extract_code(answer) if problem.kind == "code" else extract_answer(answer)
    if issue is None and readable is None:
        issue = "no_answer"
    verdict = verdicts.get((problem.id, answer)) or Verdict(False, "no_answer")
    return Graded(problem, index, text, n_reason, issue is None, issue, verdict)


def evaluate(lm: LoadedModel, problems: Sequence[Problem], cfg: ReasoningSuite, seed: int,
             log: Callable[[str], None]) -> tuple[dict[str, float], list[dict]]:
    from tokenizer import split_reasoning

    tok = lm.tokenizer
    prompts, seeds, rows = [], [], []
    for p in problems:
        messages = ([{"role": "system", "content": cfg.system_prompt}] if cfg.system_prompt else [])
        messages.append({"role": "user", "content": p.prompt})
        ids = tok.encode_chat(messages, add_generation_prompt=True).ids
        for i in range(cfg.samples):
            prompts.append(ids)
            seeds.append(row_seed(seed, p.id, i))
            rows.append((p, i))
    samples = sample_many(lm, prompts, seeds, cfg.sampling, log, "reasoning")

    # verify each distinct (problem, answer) once: sandboxed code runs are the slow part
    answers = {(p.id, split_reasoning(decode(lm, s.tokens))[1]): p for (p, _), s in zip(rows, samples, strict=True)}
    limits = SandboxLimits(wall_s=cfg.code_wall_s, cpu_s=cfg.code_cpu_s, memory_mb=cfg.code_memory_mb)
    verdicts = verify_distinct(answers, code_limits=limits, math_timeout_s=cfg.math_timeout_s,
                               workers=cfg.verify_workers)
    graded = [grade(lm, p, i, s, verdicts) for (p, i), s in zip(rows, samples, strict=True)]
    return summarize(graded, cfg), [_record(g) for g in graded]


def summarize(graded: Sequence[Graded], cfg: ReasoningSuite) -> dict[str, float]:
    counts: dict[str, list[int]] = defaultdict(lambda: [0, 0])   # problem id -> [n, correct]
    kind_of: dict[str, str] = {}
    for g in graded:
        c = counts[g.problem.id]
        c[0] += 1
        c[1] += int(g.verdict.correct)
        kind_of[g.problem.id] = g.problem.kind
    pairs = [tuple(v) for v in counts.values()]
    m: dict[str, float] = {f"reasoning/pass_at_{k}": mean_pass_at_k(pairs, k) for k in sorted({1, *cfg.pass_at})}
    for kind in sorted(set(kind_of.values())):
        kp = [tuple(v) for pid, v in counts.items() if kind_of[pid] == kind]
        m[f"reasoning/{kind}/pass_at_1"] = mean_pass_at_k(kp, 1)
    m["reasoning/format"] = sum(g.formatted for g in graded) / len(graded) if graded else float("nan")
    m["reasoning/reasoning_tokens"] = (sum(g.reasoning_tokens for g in graded) / len(graded)
                                       if graded else float("nan"))
    m["reasoning/problems"] = len(counts)
    m["reasoning/samples"] = len(graded)
    issues = Counter(g.format_issue for g in graded if g.format_issue)
    for issue, n in sorted(issues.items()):
        m[f"reasoning/format_issue/{issue}"] = n
    return m


def _record(g: Graded) -> dict:
    return {"id": g.problem.id, "kind": g.problem.kind, "sample": g.sample, "prompt": g.problem.prompt,
            "completion": g.text, "correct": g.verdict.correct, "verdict": g.verdict.reason,
            "format_issue": g.format_issue, "reasoning_tokens": g.reasoning_tokens}
