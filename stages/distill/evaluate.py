"""Held-out reasoning: the model before and after distillation, same problems, same seeds.

    report = evaluate_reasoning(model, tok, heldout, cfg.evaluation, seed=ctx.seed, label="before")
    report.metrics["pass_at_1"], report.records[0]["verdict"]

Per held-out problem, ``samples`` completions at temperature T (R1's protocol: pass@1 is the mean
correctness over samples at T=0.6, top-p 0.95), generated in batches with ``model.generate`` (one
KV-cache slot per row, finished rows leave the batch). Each row's seed depends only on (seed,
problem id, sample index), so both models see the same seeds.

    pass_at_k         unbiased pass@k of Chen et al. (2021): mean over problems of 1 − C(n−c, k)/C(n, k)
    <kind>/pass_at_1  per problem kind
    format            share of completions in the trained format: opens with <think>, exactly one
                      closed, non-empty think block, an answer the verifier can read, ended by EOS
    reasoning_tokens  mean tokens between <think> and </think> (to the token limit if unclosed)
    format_issue/<why> counts of the first format problem per completion

The answer after ``</think>`` alone is verified, by ``stages.common.verify`` (the verifiers the
traces were filtered with); pass@k and the format check are ``stages.common.scoring``, shared
with the eval stage's reasoning suite.
"""

from __future__ import annotations

import time
from collections import Counter, defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from stages.common.problems import Problem, stable_hash
from stages.common.sandbox import SandboxLimits
from stages.common.scoring import pass_at_k, reasoning_span
from stages.common.verify import Verdict, extract_answer, extract_code, verify_distinct
from stages.distill.config import EvaluationConfig


def select_problems(problems: Sequence[Problem], limit: int | None) -> list[Problem]:
    """The first ``limit`` problems taken round-robin across kinds, so a small limit covers them all."""
    by_kind: dict[str, list[Problem]] = defaultdict(list)
    for p in problems:
        by_kind[p.kind].append(p)
    queues = [list(v) for _, v in sorted(by_kind.items())]
    out: list[Problem] = []
    while queues and (limit is None or len(out) < limit):
        for q in queues:
            if q and (limit is None or len(out) < limit):
                out.append(q.pop(0))
        queues = [q for q in queues if q]
    return out


def row_seed(seed: int, problem_id: str, sample: int) -> int:
    return int(stable_hash([seed, problem_id, sample], 8), 16)


@dataclass
class Graded:
    problem: Problem
    sample: int
    reasoning: str | None
    answer: str
    reasoning_tokens: int
    format_issue: str | None
    verdict: Verdict


@dataclass
class ReasoningReport:
    metrics: dict[str, float]
    records: list[dict] = field(default_factory=list)
    seconds: float = 0.0


def generate(model, tokenizer, problems: Sequence[Problem], cfg: EvaluationConfig, seed: int,
             log: Callable[[str], None] | None = None) -> list[tuple[Problem, int, list[int], str]]:
    """(problem, sample index, generated ids, finish reason) for every problem x sample."""
    rows = []
    for p in problems:
        prompt = tokenizer.encode_chat([{"role": "user", "content": p.prompt}], add_generation_prompt=True).ids
        rows += [(p, i, prompt) for i in range(cfg.samples)]
    context = model.config.max_position_embeddings
    out: list[tuple[Problem, int, list[int], str]] = []
    fits = [r for r in rows if len(r[2]) + cfg.max_new_tokens <= context]
    out += [(p, i, [], "too_long") for p, i, prompt in rows if len(prompt) + cfg.max_new_tokens > context]
    fits.sort(key=lambda r: len(r[2]))   # similar lengths share a batch
    t0 = time.perf_counter()
    for start in range(0, len(fits), cfg.batch_size):
        batch = fits[start:start + cfg.batch_size]
        gens = model.generate([prompt for _, _, prompt in batch], max_new_tokens=cfg.max_new_tokens,
                              temperature=cfg.temperature, top_p=cfg.top_p,
                              seed=[row_seed(seed, p.id, i) for p, i, _ in batch],
                              stop_token_ids=[tokenizer.eos_id])
        out += [(p, i, list(g.tokens), g.finish_reason) for (p, i, _), g in zip(batch, gens, strict=True)]
        if log:
            log(f"{start + len(batch)}/{len(fits)} completions ({time.perf_counter() - t0:.0f}s)")
    order = {(p.id, i): n for n, (p, i, _) in enumerate(rows)}
    return sorted(out, key=lambda r: order[(r[0].id, r[1])])


def grade_all(tokenizer, generated: Sequence[tuple[Problem, int, list[int], str]], cfg: EvaluationConfig
              ) -> list[Graded]:
    from tokenizer import split_reasoning

    vocab = tokenizer.vocab_size
    parsed = []
    for p, i, ids, finish in generated:
        ids = [t for t in ids if t < vocab]   # a padded embedding can sample ids the tokenizer lacks
        n_reason, issue = reasoning_span(ids, tokenizer.think_id, tokenizer.think_end_id)
        reasoning, answer = split_reasoning(tokenizer.decode(ids))
        if issue is None and finish != "stop":
            issue = "truncated" if finish == "length" else finish
        readable = extract_code(answer) if p.kind == "code" else extract_answer(answer)
        if issue is None and readable is None:
            issue = "no_answer"
        parsed.append((p, i, reasoning, answer, n_reason, issue))

    limits = SandboxLimits(wall_s=cfg.code_wall_s, cpu_s=cfg.code_cpu_s, memory_mb=cfg.code_memory_mb)
    verdicts = verify_distinct({(p.id, answer): p for p, _, _, answer, _, _ in parsed}, code_limits=limits,
                               math_timeout_s=cfg.math_timeout_s, workers=cfg.verify_workers)
    return [Graded(p, i, reasoning, answer, n, issue, verdicts[(p.id, answer)])
            for p, i, reasoning, answer, n, issue in parsed]


def summarize(graded: Sequence[Graded], pass_at: Sequence[int]) -> dict[str, float]:
    counts: dict[str, list[int]] = defaultdict(lambda: [0, 0])   # problem id -> [n, correct]
    kind_of: dict[str, str] = {}
    for g in graded:
        counts[g.problem.id][0] += 1
        counts[g.problem.id][1] += int(g.verdict.correct)
        kind_of[g.problem.id] = g.problem.kind

    def mean_pass(ids, k):
        return sum(pass_at_k(*counts[i], k) for i in ids) / len(ids) if ids else float("nan")

    m: dict[str, float] = {f"pass_at_{k}": mean_pass(list(counts), k) for k in sorted({1, *pass_at})}
    for kind in sorted(set(kind_of.values())):
        m[f"{kind}/pass_at_1"] = mean_pass([i for i in counts if kind_of[i] == kind], 1)
    n = len(graded)
    m["format"] = sum(g.format_issue is None for g in graded) / n if n else float("nan")
    m["reasoning_tokens"] = sum(g.reasoning_tokens for g in graded) / n if n else float("nan")
    m["problems"], m["samples"] = len(counts), n
    for issue, c in sorted(Counter(g.format_issue for g in graded if g.format_issue).items()):
        m[f"format_issue/{issue}"] = c
    return m


def evaluate_reasoning(model, tokenizer, problems: Sequence[Problem], cfg: EvaluationConfig, *, seed: int,
                       label: str, log: Callable[[str], None] | None = None) -> ReasoningReport:
    """Generate, grade and summarise; records carry ``label`` (e.g. "before"/"after") for the table."""
    t0 = time.perf_counter()
    generated = generate(model, tokenizer, problems, cfg, seed,
                         (lambda msg: log(f"eval {label}: {msg}")) if log else None)
    graded = grade_all(tokenizer, generated, cfg)
    records = [{"model": label, "id": g.problem.id, "kind": g.problem.kind, "sample": g.sample,
                "prompt": g.problem.prompt, "reasoning": g.reasoning, "answer": g.answer,
                "expected": g.problem.answer, "verdict": g.verdict.reason, "correct": g.verdict.correct,
                "format_issue": g.format_issue, "reasoning_tokens": g.reasoning_tokens} for g in graded]
    return ReasoningReport(summarize(graded, cfg.pass_at), records, time.perf_counter() - t0)
