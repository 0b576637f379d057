"""The reasoning evaluator shared by distill (base before / distilled after) and eval (candidate,
champion, base): the same problems, seeds, generation path, grading and summary for every model.

    report = evaluate_reasoning(model, tok, problems, ReasoningEvalConfig(), seed=0, label="after")
    report.metrics["arithmetic/greedy_pass_at_1"], report.metrics["arithmetic/greedy_pass_at_1_ci_low"]

Per problem: one GREEDY completion (temperature 0: deterministic, the headline pass@1) and, when
``sampling.samples`` > 0, n sampled ones at ``sampling.temperature`` (R1's protocol, T=0.6, top-p
0.95) for pass@k. Every completion goes through ``model.engine`` (continuous batching, one KV-cache
slot per row, ids past the tokenizer's vocabulary masked); a row's seed depends only on (seed,
problem id, sample index), so every model sees the same seeds.

Metrics, overall and per task (``Problem.task``: the problem family, e.g. ``arithmetic`` or an
out-of-distribution probe ``arithmetic_3digit``):

    <task>/greedy_pass_at_1 (+ _ci_low, _ci_high)   share of problems solved greedily, Wilson 95 % interval
    <task>/pass_at_<k>      (+ _ci_low, _ci_high)   unbiased pass@k over the n samples, bootstrap 95 %
                                                     interval over problems
    <task>/format, <task>/reasoning_tokens, <task>/problems
    format_issue/<why>                               first format problem per completion (all tasks)

The answer after ``</think>`` alone is verified (``stages.common.verify``).
"""

from __future__ import annotations

import math
import random
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from pydantic import BaseModel, ConfigDict, Field, model_validator

from stages.common.problems import Problem, stable_hash


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class SamplingConfig(_Strict):
    """Sampled completions for pass@k (R1: temperature 0.6, top-p 0.95). ``samples: 0``: greedy only."""

    samples: int = Field(4, ge=0, le=256)
    temperature: float = Field(0.6, gt=0, le=2)
    top_p: float = Field(0.95, gt=0, le=1)
    top_k: int = Field(0, ge=0)
    max_new_tokens: int = Field(128, ge=1)     # greedy completions too


class VerifierConfig(_Strict):
    """How answers are checked: math with a timeout, code in the sandbox with these limits."""

    math_timeout_s: float = Field(5.0, gt=0)
    code_wall_s: float = Field(10.0, gt=0)
    code_cpu_s: float = Field(5.0, gt=0)
    code_memory_mb: int = Field(1024, ge=64)
    workers: int = Field(2, ge=1, le=64)

    def code_limits(self):
        from stages.common.sandbox import SandboxLimits

        return SandboxLimits(wall_s=self.code_wall_s, cpu_s=self.code_cpu_s, memory_mb=self.code_memory_mb)


class ReasoningEvalConfig(_Strict):
    """Held-out reasoning, the same for every model measured."""

    enabled: bool = True
    # held-out problems evaluated (round-robin across tasks); null: all of them
    max_problems: int | None = Field(None, ge=1)
    greedy: bool = True
    sampling: SamplingConfig = Field(default_factory=SamplingConfig)
    pass_at: list[int] = Field(default_factory=lambda: [1, 4])
    system_prompt: str | None = None
    verifier: VerifierConfig = Field(default_factory=VerifierConfig)
    num_slots: int = Field(64, ge=1)           # engine KV-cache slots: rows decoded together
    # 1: on 2 busy cores, two OpenMP threads per decode step run ~5x slower than one (spin-waits)
    torch_threads: int | None = Field(1, ge=1)
    confidence: float = Field(0.95, gt=0, lt=1)
    bootstrap: int = Field(1000, ge=100)

    @model_validator(mode="after")
    def _k_within_samples(self) -> "ReasoningEvalConfig":
        if not self.greedy and self.sampling.samples == 0:
            raise ValueError("reasoning evaluation with greedy off and sampling.samples 0 measures nothing")
        bad = [k for k in self.pass_at if not 1 <= k <= self.sampling.samples]
        if self.sampling.samples and bad:
            raise ValueError(f"pass_at {bad}: every k must lie in [1, sampling.samples={self.sampling.samples}]")
        return self


# -- statistics -----------------------------------------------------------------------------------

def _z(confidence: float) -> float:
    from statistics import NormalDist

    return NormalDist().inv_cdf(0.5 + confidence / 2)


def wilson_interval(successes: int, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """Wilson score interval of a binomial proportion (good at 0 and small n, unlike the normal one)."""
    if n == 0:
        return float("nan"), float("nan")
    z = _z(confidence)
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def bootstrap_interval(values: Sequence[float], confidence: float = 0.95, resamples: int = 1000,
                       seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap interval of a mean over problems (seeded: the same every run)."""
    if not values:
        return float("nan"), float("nan")
    rng = random.Random(seed)
    n = len(values)
    means = sorted(sum(values[rng.randrange(n)] for _ in range(n)) / n for _ in range(resamples))
    lo = means[int((1 - confidence) / 2 * resamples)]
    hi = means[min(resamples - 1, int((1 + confidence) / 2 * resamples))]
    return lo, hi


# -- problems and generation ------------------------------------------------------------------------

def select_problems(problems: Sequence[Problem], limit: int | None) -> list[Problem]:
    """The first ``limit`` problems taken round-robin across tasks (file order within a task), so a
    small limit still covers every task."""
    by_task: dict[str, list[Problem]] = defaultdict(list)
    for p in problems:
        by_task[p.task].append(p)
    queues = [list(v) for _, v in sorted(by_task.items())]
    out: list[Problem] = []
    while queues and (limit is None or len(out) < limit):
        for q in queues:
            if q and (limit is None or len(out) < limit):
                out.append(q.pop(0))
        queues = [q for q in queues if q]
    return out


def row_seed(seed: int, problem_id: str, sample: int) -> int:
    return int(stable_hash([seed, problem_id, sample], 8), 16)


GREEDY = -1   # the sample index of the greedy completion


def generate(model, tokenizer, problems: Sequence[Problem], cfg: ReasoningEvalConfig, seed: int,
             log: Callable[[str], None] | None = None) -> list[tuple[Problem, int, list[int], str]]:
    """(problem, sample index or GREEDY, generated ids without the stop token, finish reason) for
    every problem: the greedy completion first, then the samples; through ``model.engine``."""
    from model.engine import Engine, EngineConfig, GenerationParams

    s = cfg.sampling
    rows, prompts, params = [], [], []
    for p in problems:
        messages = ([{"role": "system", "content": cfg.system_prompt}] if cfg.system_prompt else [])
        messages.append({"role": "user", "content": p.prompt})
        ids = tokenizer.encode_chat(messages, add_generation_prompt=True).ids
        indices = ([GREEDY] if cfg.greedy else []) + list(range(s.samples))
        for i in indices:
            rows.append((p, i))
            prompts.append(ids)
            params.append(GenerationParams(
                max_tokens=s.max_new_tokens, temperature=0.0 if i == GREEDY else s.temperature,
                top_p=1.0 if i == GREEDY else s.top_p, top_k=0 if i == GREEDY else s.top_k,
                seed=row_seed(seed, p.id, i)))
    context = model.config.max_position_embeddings
    fits = [j for j, ids in enumerate(prompts) if len(ids) + s.max_new_tokens <= context]
    out: list[tuple[Problem, int, list[int], str]] = [(*rows[j], [], "too_long") for j in range(len(rows))]
    if fits:
        longest = max(len(prompts[j]) for j in fits) + s.max_new_tokens
        engine = Engine(model, EngineConfig(num_slots=min(cfg.num_slots, len(fits)), max_seq_len=longest,
                                            max_num_batched_tokens=max(256, 4 * min(cfg.num_slots, len(fits))),
                                            use_mtp=False),
                        eos_token_ids=[tokenizer.eos_id], vocab_size=tokenizer.vocab_size)
        t0 = time.perf_counter()
        completions = engine.generate([prompts[j] for j in fits], [params[j] for j in fits])
        for j, c in zip(fits, completions, strict=True):
            ids = list(c.token_ids)
            if c.finish_reason == "stop" and ids and ids[-1] == c.stop_token_id:
                ids = ids[:-1]
            out[j] = (*rows[j], ids, c.finish_reason)
        if log:
            log(f"{len(fits)} completions, {sum(len(out[j][2]) for j in fits):,} tokens "
                f"({time.perf_counter() - t0:.0f}s)")
    return out


# -- grading and summary ----------------------------------------------------------------------------

@dataclass
class Graded:
    problem: Problem
    sample: int                 # GREEDY or 0..n-1
    reasoning: str | None
    answer: str
    reasoning_tokens: int
    format_issue: str | None
    correct: bool
    verdict: str


def grade_all(tokenizer, generated: Sequence[tuple[Problem, int, list[int], str]], cfg: VerifierConfig
              ) -> list[Graded]:
    from stages.common.scoring import reasoning_span
    from stages.common.verify import extract_answer, extract_code, verify_distinct
    from tokenizer import split_reasoning

    parsed = []
    for p, i, ids, finish in generated:
        n_reason, issue = reasoning_span(ids, tokenizer.think_id, tokenizer.think_end_id)
        reasoning, answer = split_reasoning(tokenizer.decode(ids))
        if issue is None and finish != "stop":
            issue = "truncated" if finish == "length" else finish
        readable = extract_code(answer) if p.kind == "code" else extract_answer(answer)
        if issue is None and readable is None:
            issue = "no_answer"
        parsed.append((p, i, reasoning, answer, n_reason, issue))
    verdicts = verify_distinct({(p.id, answer): p for p, _, _, answer, _, _ in parsed},
                               code_limits=cfg.code_limits(), math_timeout_s=cfg.math_timeout_s,
                               workers=cfg.workers)
    out = []
    for p, i, reasoning, answer, n, issue in parsed:
        v = verdicts[(p.id, answer)]
        out.append(Graded(p, i, reasoning, answer, n, issue, bool(v.correct), v.reason))
    return out


def summarize(graded: Sequence[Graded], cfg: ReasoningEvalConfig, seed: int = 0) -> dict[str, float]:
    tasks = sorted({g.problem.task for g in graded})
    m: dict[str, float] = {}
    for task in [None, *tasks]:
        mine = [g for g in graded if task is None or g.problem.task == task]
        prefix = "" if task is None else f"{task}/"
        greedy = {g.problem.id: g.correct for g in mine if g.sample == GREEDY}
        if greedy:
            solved = sum(greedy.values())
            lo, hi = wilson_interval(solved, len(greedy), cfg.confidence)
            m.update({f"{prefix}greedy_pass_at_1": solved / len(greedy), f"{prefix}greedy_pass_at_1_ci_low": lo,
                      f"{prefix}greedy_pass_at_1_ci_high": hi})
        counts: dict[str, list[int]] = defaultdict(lambda: [0, 0])
        for g in mine:
            if g.sample != GREEDY:
                counts[g.problem.id][0] += 1
                counts[g.problem.id][1] += int(g.correct)
        if counts:
            from stages.common.scoring import pass_at_k

            for k in sorted({1, *cfg.pass_at}):
                per = [pass_at_k(n, c, k) for n, c in counts.values()]
                lo, hi = bootstrap_interval(per, cfg.confidence, cfg.bootstrap, seed)
                m.update({f"{prefix}pass_at_{k}": sum(per) / len(per), f"{prefix}pass_at_{k}_ci_low": lo,
                          f"{prefix}pass_at_{k}_ci_high": hi})
        m[f"{prefix}format"] = sum(g.format_issue is None for g in mine) / len(mine) if mine else float("nan")
        m[f"{prefix}reasoning_tokens"] = sum(g.reasoning_tokens for g in mine) / len(mine) if mine else float("nan")
        m[f"{prefix}problems"] = len({g.problem.id for g in mine})
    m["samples"] = len(graded)
    for issue, c in sorted(Counter(g.format_issue for g in graded if g.format_issue).items()):
        m[f"format_issue/{issue}"] = c
    return m


@dataclass
class ReasoningReport:
    metrics: dict[str, float]
    records: list[dict] = field(default_factory=list)
    seconds: float = 0.0


def evaluate_reasoning(model, tokenizer, problems: Sequence[Problem], cfg: ReasoningEvalConfig, *, seed: int,
                       label: str, log: Callable[[str], None] | None = None) -> ReasoningReport:
    """Generate, grade and summarise; records carry ``label`` (the model's role) for tables."""
    import torch

    t0 = time.perf_counter()
    saved = torch.get_num_threads()
    if cfg.torch_threads:
        torch.set_num_threads(cfg.torch_threads)
    try:
        generated = generate(model, tokenizer, problems, cfg, seed,
                             (lambda msg: log(f"{label}: {msg}")) if log else None)
    finally:
        torch.set_num_threads(saved)
    graded = grade_all(tokenizer, generated, cfg.verifier)
    records = [{"model": label, "id": g.problem.id, "task": g.problem.task, "kind": g.problem.kind,
                "sample": "greedy" if g.sample == GREEDY else g.sample, "prompt": g.problem.prompt,
                "reasoning": g.reasoning, "answer": g.answer, "expected": g.problem.answer, "verdict": g.verdict,
                "correct": g.correct, "format_issue": g.format_issue, "reasoning_tokens": g.reasoning_tokens}
               for g in graded]
    return ReasoningReport(summarize(graded, cfg, seed), records, time.perf_counter() - t0)


def paired_difference(a: Sequence[dict], b: Sequence[dict], *, task: str | None = None, confidence: float = 0.95,
                      resamples: int = 1000, seed: int = 0) -> tuple[float, float, float] | None:
    """Greedy correctness of model a minus model b on the problems both answered (records of
    :func:`evaluate_reasoning`), paired per problem: (mean difference, bootstrap CI low, high).
    Pairing removes the problems' own difficulty from the noise, so a real gain shows sooner than
    with two separate intervals. None when no problem is shared."""
    def greedy(records):
        return {r["id"]: int(bool(r["correct"])) for r in records
                if r["sample"] == "greedy" and (task is None or r["task"] == task)}

    ga, gb = greedy(a), greedy(b)
    shared = sorted(set(ga) & set(gb))
    if not shared:
        return None
    diffs = [ga[i] - gb[i] for i in shared]
    lo, hi = bootstrap_interval(diffs, confidence, resamples, seed)
    return sum(diffs) / len(diffs), lo, hi
