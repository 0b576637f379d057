"""The Problem record every generator emits and every verifier reads."""

from __future__ import annotations

import hashlib
import json
import random
from dataclasses import asdict, dataclass, field
from typing import Any

# The answer-format instruction appended to every math-style question. Kept separate from
# the question so overlap checks compare problems, not the shared boilerplate.
BOXED_INSTRUCTION = "Put the final answer in \\boxed{}."
CODE_INSTRUCTION = "Answer with one ```python code block."

KINDS = ("arithmetic", "linear", "countdown", "code", "gym")
# how each kind is verified (see stages.common.verify); "math" also covers dataset problems
VERIFIER_OF_KIND = {"arithmetic": "math", "linear": "math", "math": "math",
                    "countdown": "countdown", "code": "code", "gym": "gym"}


@dataclass(frozen=True)
class Problem:
    id: str                 # stable: kind + hash of the canonical key
    kind: str               # arithmetic | linear | countdown | code | math
    question: str           # the problem alone
    prompt: str             # the user message: question + answer-format instruction
    answer: str             # canonical answer (a number, an expression, a reference solution)
    data: dict[str, Any] = field(default_factory=dict)  # what the verifier / procedural teacher need

    @property
    def task(self) -> str:
        """The task it is reported under: ``data["task"]`` (e.g. an out-of-distribution probe of a
        kind), else its kind."""
        return str(self.data.get("task") or self.kind)

    @property
    def verifier(self) -> str:
        return VERIFIER_OF_KIND.get(self.kind, self.kind)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Problem":
        missing = {"id", "kind", "question", "prompt", "answer"} - set(d)
        if missing:
            raise ValueError(f"problem record lacks {sorted(missing)}: {str(d)[:200]}")
        return cls(id=str(d["id"]), kind=str(d["kind"]), question=str(d["question"]),
                   prompt=str(d["prompt"]), answer=str(d["answer"]), data=dict(d.get("data") or {}))


def make_problem(kind: str, key: Any, question: str, instruction: str, answer: str,
                 data: dict[str, Any]) -> Problem:
    return Problem(id=f"{kind}-{stable_hash(key)}", kind=kind, question=question,
                   prompt=f"{question} {instruction}", answer=answer, data=data)


def stable_hash(obj: Any, n: int = 12) -> str:
    """Process-independent hash (Python's hash() is salted per process)."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:n]


def rng_for(seed: int, *stream: str) -> random.Random:
    """An independent, reproducible random stream per (seed, purpose): str seeds hash with SHA-512."""
    return random.Random(":".join([str(seed), *stream]))


def write_problems(problems, path) -> int:
    """One Problem per JSONL line (the held-out file the eval stage reads)."""
    from pathlib import Path

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        for p in problems:
            f.write(json.dumps(p.to_dict(), ensure_ascii=False) + "\n")
    return len(problems)


def read_problems(path) -> list[Problem]:
    """Problems written by write_problems; a bad line is an error naming the file and line."""
    out = []
    with open(path, encoding="utf-8") as f:
        for i, line in enumerate(f, 1):
            if line.strip():
                try:
                    out.append(Problem.from_dict(json.loads(line)))
                except ValueError as e:
                    raise ValueError(f"{path}:{i}: not a problem record: {e}") from None
    return out
