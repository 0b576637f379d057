"""Rejection sampling (R1 §2.3.3): sample n completions per prompt, keep the verified ones.

    result = rejection_sample(split.train, ProceduralTeacherConfig(), RejectionConfig(), seed=0)
    write_jsonl(result.rows, out / "data" / "train.jsonl")
    result.stats["kept"], result.stats["dropped"]       # {"wrong_answer": 93, "duplicate": 4, ...}

Every requested sample ends in exactly one bucket: kept, or dropped for one reason:

    teacher_error / teacher_timeout   the teacher call failed after its retries
    format:no_reasoning               no reasoning block
    format:multiple_reasoning         more than one reasoning block, or stray <think> tags
    format:no_answer                  no \\boxed{} / answer line (math), no ```python block (code)
    format:truncated                  the generation hit its token limit
    format:reasoning_too_long/short, format:answer_too_long
    wrong_answer, invalid_answer      verified and wrong / unparsable or breaking the rules
    verify_timeout, verify_error      the verifier ran out of time / could not run
    unverifiable                      dataset rows without an answer or tests
    duplicate                         same prompt, reasoning and answer as a kept sample
    over_keep_limit                   verified, but keep_per_prompt were already kept
    malformed:<why>                   (dataset mode, per row) a row that could not be read

Output rows are chat ``messages`` (optional system, user, assistant with ``reasoning_content``
and ``content``), the format tokenizer.encode_chat trains on. Work runs on a thread pool (the
teacher is I/O-bound or has its own lock; verifiers run in subprocesses), optionally spread
over Ray tasks; it works inside a Ray task.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import logging
import re
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from stages.common.problems import Problem
from stages.common.sandbox import SandboxLimits
from stages.common.verify import Verdict, extract_answer, extract_code, verify
from stages.distill.teachers import (
    Completion,
    DatasetTeacherConfig,
    Teacher,
    TeacherError,
    approx_tokens,
    build_teacher,
    parse_teacher_config,
)
from stages.distill.teachers.base import THINK_CLOSE, THINK_OPEN

log = logging.getLogger(__name__)


class RejectionConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    samples_per_prompt: int = Field(2, ge=1, le=256)
    keep_per_prompt: int = Field(1, ge=1)
    min_reasoning_tokens: int = Field(1, ge=0)
    max_reasoning_tokens: int = Field(1024, ge=1)     # approx_tokens, see teachers.base
    max_answer_tokens: int = Field(512, ge=1)
    system_prompt: str | None = None                  # system message of the output rows (dataset rows keep theirs)
    keep_unverified: bool = False                     # dataset rows with neither answer nor tests
    workers: int = Field(4, ge=1, le=256)             # threads: teacher calls and verification
    ray_shards: int = Field(0, ge=0)                  # >0 and Ray running: spread prompts over this many Ray tasks
    math_timeout_s: float = Field(5.0, gt=0)
    code_wall_s: float = Field(10.0, gt=0)
    code_cpu_s: float = Field(5.0, gt=0)
    code_memory_mb: int = Field(1024, ge=64)
    progress_every: int = Field(500, ge=1)

    def code_limits(self) -> SandboxLimits:
        return SandboxLimits(wall_s=self.code_wall_s, cpu_s=self.code_cpu_s, memory_mb=self.code_memory_mb)


@dataclass
class RejectionResult:
    rows: list[dict[str, Any]]
    stats: dict[str, Any] = field(default_factory=dict)


# ----------------------------------------------------------------------------------------
# one sample
# ----------------------------------------------------------------------------------------

def format_problem(c: Completion, problem: Problem, cfg: RejectionConfig) -> str | None:
    """The reason this completion fails the format filters, or None."""
    if c.finish_reason == "length":
        return "format:truncated"
    if not c.reasoning or not c.reasoning.strip():
        return "format:no_reasoning"
    if c.think_blocks != 1 or any(tag in c.reasoning or tag in c.content for tag in (THINK_OPEN, THINK_CLOSE)):
        return "format:multiple_reasoning"
    if problem.kind == "code":
        has_answer = extract_code(c.content) is not None
    elif problem.kind == "unverified":
        has_answer = bool(c.content.strip())
    else:
        has_answer = extract_answer(c.content) is not None
    if not has_answer:
        return "format:no_answer"
    n_reason = approx_tokens(c.reasoning)
    if n_reason > cfg.max_reasoning_tokens:
        return "format:reasoning_too_long"
    if n_reason < cfg.min_reasoning_tokens:
        return "format:reasoning_too_short"
    if approx_tokens(c.content) > cfg.max_answer_tokens:
        return "format:answer_too_long"
    return None


_VERDICT_DROP = {"wrong": "wrong_answer", "invalid": "invalid_answer", "no_answer": "format:no_answer",
                 "timeout": "verify_timeout", "error": "verify_error"}


def check_sample(c: Completion, problem: Problem, cfg: RejectionConfig) -> tuple[str | None, Verdict | None]:
    """(drop reason or None, verdict)."""
    bad = format_problem(c, problem, cfg)
    if bad:
        return bad, None
    if problem.kind == "unverified":
        return (None if cfg.keep_unverified else "unverifiable"), None
    try:
        verdict = verify(problem, c.content, code_limits=cfg.code_limits(), math_timeout_s=cfg.math_timeout_s)
    except (KeyError, ValueError, TypeError) as e:  # problem data the verifier cannot use
        return "verify_error", Verdict(False, "error", detail=str(e))
    return (None if verdict.correct else _VERDICT_DROP.get(verdict.reason, "verify_error")), verdict


def _dedup_key(problem: Problem, c: Completion) -> str:
    norm = lambda s: re.sub(r"\s+", " ", s or "").strip()  # noqa: E731
    return hashlib.sha1("\x00".join([problem.prompt, norm(c.reasoning), norm(c.content)]).encode()).hexdigest()


def to_row(problem: Problem, c: Completion, index: int, teacher: str, system: str | None) -> dict[str, Any]:
    messages = [{"role": "system", "content": system}] if system else []
    messages += [{"role": "user", "content": problem.prompt},
                 {"role": "assistant", "reasoning_content": c.reasoning, "content": c.content}]
    return {"id": f"{problem.id}/{index}", "problem_id": problem.id, "kind": problem.kind, "teacher": teacher,
            "reasoning_tokens": approx_tokens(c.reasoning or ""), "messages": messages}


@dataclass
class _ProblemOutcome:
    problem: Problem
    candidates: list[tuple[Completion, str]] = field(default_factory=list)  # verified, with dedup key
    drops: Counter = field(default_factory=Counter)
    received: int = 0
    system: str | None = None


def _judge(problem: Problem, completions: list[Completion], cfg: RejectionConfig,
           system: str | None) -> _ProblemOutcome:
    out = _ProblemOutcome(problem, received=len(completions), system=system)
    for c in completions:
        reason, _ = check_sample(c, problem, cfg)
        if reason:
            out.drops[reason] += 1
        else:
            out.candidates.append((c, _dedup_key(problem, c)))
    return out


# ----------------------------------------------------------------------------------------
# the pipeline
# ----------------------------------------------------------------------------------------

class _Collector:
    """Keeps verified samples in input order, dedups globally, counts everything."""

    def __init__(self, cfg: RejectionConfig, teacher_name: str):
        self.cfg, self.teacher_name = cfg, teacher_name
        self.rows: list[dict[str, Any]] = []
        self.drops: Counter = Counter()
        self.seen: set[str] = set()
        self.requested = self.received = self.prompts = 0
        self.by_kind: dict[str, Counter] = defaultdict(Counter)

    def add(self, o: _ProblemOutcome, requested: int):
        self.prompts += 1
        self.requested += requested
        self.received += o.received
        self.drops.update(o.drops)
        kept_here = 0
        kind = self.by_kind[getattr(o.problem, "task", o.problem.kind)]   # per task of the mix
        kind["prompts"] += 1
        kind["samples"] += requested
        kind["verified"] += len(o.candidates)
        kind.update({f"dropped/{reason}": n for reason, n in o.drops.items()})
        for c, key in o.candidates:
            if key in self.seen:
                self.drops["duplicate"] += 1
                kind["dropped/duplicate"] += 1
            elif kept_here >= self.cfg.keep_per_prompt:
                self.drops["over_keep_limit"] += 1
                kind["dropped/over_keep_limit"] += 1
            else:
                self.seen.add(key)
                self.rows.append(to_row(o.problem, c, kept_here, self.teacher_name, o.system or self.cfg.system_prompt))
                kept_here += 1
        kind["kept"] += kept_here
        kind["prompts_kept"] += kept_here > 0

    def stats(self, seconds: float, teacher: dict, extra: dict | None = None) -> dict[str, Any]:
        kept = len(self.rows)
        lengths = [r["reasoning_tokens"] for r in self.rows]
        stats = {
            "prompts": self.prompts, "requested": self.requested, "received": self.received, "kept": kept,
            "prompts_kept": sum(k["prompts_kept"] for k in self.by_kind.values()),
            "keep_rate": round(kept / self.received, 4) if self.received else 0.0,
            "verified_rate": round(sum(k["verified"] for k in self.by_kind.values()) / self.received, 4)
            if self.received else 0.0,
            "dropped": dict(sorted(self.drops.items())),
            # per task: prompts, samples, verified, unique kept (and per prompt), why the rest were dropped
            "by_kind": {k: {**dict(v), "kept_per_prompt": round(v["kept"] / v["prompts"], 3) if v["prompts"] else 0}
                        for k, v in sorted(self.by_kind.items())},
            "mean_reasoning_tokens": round(sum(lengths) / kept, 1) if kept else 0.0,
            "max_reasoning_tokens": max(lengths, default=0),
            "seconds": round(seconds, 2), "teacher": teacher,
        }
        stats.update(extra or {})
        return stats


def _progress(done: int, total: int | None, col: _Collector, t0: float, say: Callable[[str], None]):
    rate = done / max(1e-9, time.monotonic() - t0)
    top = ", ".join(f"{k} {v}" for k, v in col.drops.most_common(3))
    say(f"rejection sampling: {done}{'/' + str(total) if total else ''} prompts, kept {len(col.rows)} "
        f"({rate:.1f} prompts/s){'; dropped: ' + top if top else ''}")


def rejection_sample(problems: Sequence[Problem], teacher: Teacher | Any, cfg: RejectionConfig = RejectionConfig(),
                     *, seed: int = 0, say: Callable[[str], None] = log.info) -> RejectionResult:
    """Prompt-driven teachers (procedural, openai, local): n samples per problem, keep the verified.

    ``teacher``: a Teacher, or a teacher config (needed for ``ray_shards``: each Ray task
    builds its own teacher from it).
    """
    if cfg.ray_shards > 0:
        if isinstance(teacher, Teacher):
            say("rejection sampling: ray_shards needs a teacher config (each task builds its own); using threads")
        else:
            shards = _ray_shards(problems, teacher, cfg, seed, say)
            if shards is not None:
                return shards
    owned = not isinstance(teacher, Teacher)
    teacher_obj: Teacher = build_teacher(teacher) if owned else teacher
    if not hasattr(teacher_obj, "complete"):
        raise TypeError(f"{type(teacher_obj).__name__} brings its own prompts: use rejection_sample_dataset")
    n = cfg.samples_per_prompt
    col = _Collector(cfg, teacher_obj.name)
    t0 = time.monotonic()

    def work(problem: Problem) -> _ProblemOutcome:
        try:
            completions = teacher_obj.complete(problem, n, seed=seed)
        except TeacherError as e:
            out = _ProblemOutcome(problem)
            out.drops[f"teacher_{'timeout' if e.kind == 'timeout' else 'error'}"] += n
            return out
        out = _judge(problem, completions[:n], cfg, None)
        if len(completions) < n:
            out.drops["teacher_error"] += n - len(completions)
        return out

    try:
        with ThreadPoolExecutor(max_workers=cfg.workers, thread_name_prefix="rejection") as pool:
            for i, outcome in enumerate(pool.map(work, problems), 1):
                col.add(outcome, n)
                if i % cfg.progress_every == 0:
                    _progress(i, len(problems), col, t0, say)
    finally:
        if owned:
            teacher_obj.close()
    if col.prompts % cfg.progress_every:
        _progress(col.prompts, len(problems), col, t0, say)
    return RejectionResult(col.rows, col.stats(time.monotonic() - t0, teacher_obj.describe()))


def rejection_sample_dataset(source: Any, cfg: RejectionConfig = RejectionConfig(), *,
                             say: Callable[[str], None] = log.info) -> RejectionResult:
    """Dataset teachers: every completion of every row is filtered and verified."""
    src = build_teacher(source) if isinstance(source, (dict, DatasetTeacherConfig)) else source
    col = _Collector(cfg, src.name)
    t0 = time.monotonic()
    rows = 0
    malformed: Counter = Counter()
    lock = threading.Lock()

    def work(sample) -> _ProblemOutcome | None:
        if sample.error:
            with lock:
                malformed[sample.error] += 1
            return None
        return _judge(sample.problem, sample.completions, cfg, sample.system)

    with ThreadPoolExecutor(max_workers=cfg.workers, thread_name_prefix="rejection") as pool:
        for outcome in _bounded_map(pool, work, src.iter_samples(), window=4 * cfg.workers):
            rows += 1
            if outcome is not None:
                col.add(outcome, outcome.received)
            if rows % cfg.progress_every == 0:
                _progress(rows, None, col, t0, say)
    col.drops.update(malformed)
    stats = col.stats(time.monotonic() - t0, src.describe(), {"rows": rows, "malformed_rows": sum(malformed.values())})
    if rows % cfg.progress_every:
        _progress(rows, None, col, t0, say)
    return RejectionResult(col.rows, stats)


def _bounded_map(pool: ThreadPoolExecutor, fn, items: Iterable, window: int):
    """pool.map over a lazy iterable with at most ``window`` items in flight (datasets can be huge)."""
    from collections import deque

    pending: deque = deque()
    for item in items:
        pending.append(pool.submit(fn, item))
        if len(pending) >= window:
            yield pending.popleft().result()
    while pending:
        yield pending.popleft().result()


# ----------------------------------------------------------------------------------------
# Ray fan-out
# ----------------------------------------------------------------------------------------

def _shard_task(problems: list[dict], teacher_cfg: dict, cfg: dict, seed: int) -> tuple[list[dict], dict]:
    """One Ray task: the thread-pool pipeline over a slice of the prompts."""
    result = rejection_sample([Problem.from_dict(p) for p in problems], parse_teacher_config(teacher_cfg),
                              RejectionConfig(**{**cfg, "ray_shards": 0}), seed=seed, say=lambda _: None)
    return result.rows, result.stats


def _ray_shards(problems: Sequence[Problem], teacher_cfg: Any, cfg: RejectionConfig, seed: int,
                say: Callable[[str], None]) -> RejectionResult | None:
    import ray

    if not ray.is_initialized():
        say("rejection sampling: ray_shards set but Ray is not running; using threads in this process")
        return None
    t0 = time.monotonic()
    raw_teacher = teacher_cfg.model_dump() if hasattr(teacher_cfg, "model_dump") else dict(teacher_cfg)
    k = min(cfg.ray_shards, max(1, len(problems)))
    chunks = [list(problems[i::k]) for i in range(k)]  # strided: each shard gets a mix of kinds
    remote = ray.remote(num_cpus=1)(_shard_task)
    refs = [remote.remote([p.to_dict() for p in chunk], raw_teacher, cfg.model_dump(), seed) for chunk in chunks]
    col = _Collector(cfg, raw_teacher.get("kind", "teacher"))
    teacher_info: dict = {}
    for done, ref in enumerate(refs, 1):
        rows, stats = ray.get(ref)
        teacher_info = stats.get("teacher", teacher_info)
        col.requested += stats["requested"]
        col.received += stats["received"]
        col.prompts += stats["prompts"]
        col.drops.update(stats["dropped"])
        for kind, counts in stats["by_kind"].items():
            col.by_kind[kind].update(counts)
        for row in rows:  # cross-shard dedup (identical prompts in two shards)
            key = hashlib.sha1(json.dumps(row["messages"], sort_keys=True).encode()).hexdigest()
            if key in col.seen:
                col.drops["duplicate"] += 1
                col.by_kind[row["kind"]]["kept"] -= 1
            else:
                col.seen.add(key)
                col.rows.append(row)
        say(f"rejection sampling: shard {done}/{k} done, kept {len(col.rows)}")
    return RejectionResult(col.rows, col.stats(time.monotonic() - t0, teacher_info, {"ray_shards": k}))


# ----------------------------------------------------------------------------------------
# files
# ----------------------------------------------------------------------------------------

def write_jsonl(rows: Iterable[dict], path: str | Path) -> int:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    opener = gzip.open if path.suffix == ".gz" else open
    n = 0
    with opener(path, "wt", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
            n += 1
    return n


def read_jsonl(path: str | Path) -> list[dict]:
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]
