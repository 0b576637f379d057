"""Teacher traces from an existing dataset (OpenR1-style chat rows), read lazily.

A row becomes (problem, completions): the prompt is the last user message (or the
``problem`` field), completions are the assistant messages after it plus any
``generations``; the reasoning is ``reasoning_content`` / ``reasoning`` or inline <think>.
Rows that cannot be read are yielded with an error reason, never raised.
"""

from __future__ import annotations

import gzip
import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from stages.common.problems import BOXED_INSTRUCTION, Problem, stable_hash
from stages.distill.teachers.base import Completion, TeacherUnavailable, completion_from_message, split_think
from stages.distill.teachers.config import DatasetTeacherConfig


@dataclass
class DatasetSample:
    row: int
    problem: Problem | None = None
    completions: list[Completion] = field(default_factory=list)
    system: str | None = None
    error: str | None = None   # "malformed:<why>" when the row could not be used


class DatasetTeacher:
    name = "dataset"

    def __init__(self, cfg: DatasetTeacherConfig):
        self.cfg = cfg
        self.files = _data_files(Path(cfg.path), cfg.format)

    def describe(self):
        return {"name": self.name, "path": self.cfg.path, "files": len(self.files)}

    def iter_samples(self) -> Iterator[DatasetSample]:
        n = 0
        for path in self.files:
            for row in _read_rows(path, self.cfg.format):
                if self.cfg.limit is not None and n >= self.cfg.limit:
                    return
                yield self.parse_row(row, n)
                n += 1

    def parse_row(self, row: Any, index: int) -> DatasetSample:
        cfg = self.cfg
        if isinstance(row, _Unreadable):
            return DatasetSample(index, error=f"malformed:{row.reason}")
        if not isinstance(row, dict):
            return DatasetSample(index, error="malformed:not_an_object")
        messages = row.get(cfg.messages_field)
        prompt, system, completions = None, None, []
        if messages is not None:
            if not isinstance(messages, list) or not all(isinstance(m, dict) for m in messages):
                return DatasetSample(index, error="malformed:messages_not_a_list")
            users = [i for i, m in enumerate(messages) if m.get("role") == "user"]
            if users:
                last_user = users[-1]
                prompt = _text(messages[last_user].get("content"))
                system = next((_text(m.get("content")) for m in messages if m.get("role") == "system"), None)
                completions = [completion_from_message(m) for m in messages[last_user + 1:]
                               if m.get("role") == "assistant"]
        if prompt is None and isinstance(row.get(cfg.problem_field), str):
            prompt = row[cfg.problem_field]
        generations = row.get(cfg.generations_field)
        if isinstance(generations, list):
            for g in generations:
                if isinstance(g, str):
                    reasoning, answer, blocks = split_think(g)
                    completions.append(Completion(reasoning, answer, blocks))
        if not prompt or not prompt.strip():
            return DatasetSample(index, error="malformed:no_prompt")
        if not completions:
            return DatasetSample(index, error="malformed:no_assistant_message")
        return DatasetSample(index, self._problem(row, prompt), completions, system)

    def _problem(self, row: dict, prompt: str) -> Problem:
        cfg = self.cfg
        pid = str(row[cfg.id_field]) if cfg.id_field and row.get(cfg.id_field) is not None else None
        tests, entry = row.get(cfg.tests_field), row.get(cfg.entry_point_field)
        answer = row.get(cfg.answer_field)
        if tests and entry:
            kind, ans, data = "code", "", {"tests": tests, "entry_point": str(entry)}
        elif answer is not None and str(answer).strip():
            kind, ans, data = "math", str(answer).strip(), {}
        else:
            kind, ans, data = "unverified", "", {}
        question = prompt.replace(BOXED_INSTRUCTION, "").strip()
        return Problem(id=pid or f"dataset-{stable_hash(prompt)}", kind=kind, question=question,
                       prompt=prompt, answer=ans, data=data)


class _Unreadable:
    def __init__(self, reason: str):
        self.reason = reason


def _text(content: Any) -> str | None:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(p.get("text", "") for p in content if isinstance(p, dict))
    return None


def _data_files(path: Path, fmt: str) -> list[Path]:
    if not path.exists():
        raise TeacherUnavailable(f"teacher.path {str(path)!r} does not exist")
    if path.is_file():
        return [path]
    pats = {"jsonl": ("*.jsonl", "*.jsonl.gz"), "parquet": ("*.parquet",),
            "auto": ("*.jsonl", "*.jsonl.gz", "*.parquet")}[fmt]
    files = sorted({p for pat in pats for p in path.rglob(pat)})
    if not files:
        raise TeacherUnavailable(f"no {'/'.join(pats)} files under {path}")
    return files


def _read_rows(path: Path, fmt: str) -> Iterator[Any]:
    if fmt == "parquet" or (fmt == "auto" and path.suffix == ".parquet"):
        import pyarrow.parquet as pq

        for batch in pq.ParquetFile(path).iter_batches(batch_size=256):
            yield from batch.to_pylist()
        return
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding="utf-8", errors="replace") as f:
        for line in f:
            if not line.strip():
                continue
            try:
                yield json.loads(line)
            except ValueError:
                yield _Unreadable("invalid_json")
