"""Kept traces after rejection sampling: decontamination against the held-out set and the
train/validation split (whole problems, by a seeded hash, so a problem's traces stay together)."""

from __future__ import annotations

from collections.abc import Sequence

from stages.common.problems import Problem, stable_hash
from stages.common.problems.overlap import NgramIndex, ngrams


def user_prompt(row: dict) -> str:
    """The last user message of a chat row ('' if none)."""
    users = [m for m in row.get("messages", ()) if isinstance(m, dict) and m.get("role") == "user"]
    content = users[-1].get("content") if users else ""
    return content if isinstance(content, str) else ""


def decontaminate(rows: Sequence[dict], heldout: Sequence[Problem], n: int, max_overlap: float
                  ) -> tuple[list[dict], int]:
    """Drop rows whose prompt contains ``max_overlap`` or more of some held-out question's word
    n-grams (the split's own test, applied to prompts that did not come from the generators, e.g.
    a trace dataset). A held-out question shorter than n words is one "n-gram" (the whole question)
    in that test, which a longer prompt never contains as such: those are looked for as a
    contiguous word sequence instead. Returns (kept rows, dropped count)."""
    if not heldout:
        return list(rows), 0
    index = NgramIndex([p.question for p in heldout], n)
    short: dict[int, set[tuple[str, ...]]] = {}   # length -> held-out questions shorter than n words
    for p in heldout:
        grams = ngrams(p.question, n)
        if len(grams) == 1 and len(g := next(iter(grams))) < n:
            short.setdefault(len(g), set()).add(g)

    def leaks(prompt: str) -> bool:
        if any(share >= max_overlap for share in index.containment_of_reference(prompt).values()):
            return True
        return any(ngrams(prompt, k) & questions for k, questions in short.items())

    kept = [r for r in rows if not leaks(user_prompt(r))]
    return kept, len(rows) - len(kept)


def split_validation(rows: Sequence[dict], fraction: float, seed: int) -> tuple[list[dict], list[dict]]:
    """(train, validation): a seeded ``fraction`` of the problems goes to validation."""
    if fraction <= 0:
        return list(rows), []
    train, val = [], []
    for r in rows:
        key = r.get("problem_id") or user_prompt(r)
        (val if int(stable_hash([seed, "sft-val", key], 8), 16) < fraction * 16**8 else train).append(r)
    return train, val
