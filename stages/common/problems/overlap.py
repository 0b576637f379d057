"""Held-out contamination check: word n-gram overlap between held-out and train questions.

overlap(h, t) = |ngrams(h) ∩ ngrams(t)| / |ngrams(h)|, the share of the held-out question's
n-grams found in one train question (a question shorter than n counts as one n-gram: the
whole question). A held-out problem's overlap is its maximum over the train set.
"""

from __future__ import annotations

import re
from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass

_TOKEN = re.compile(r"\w+|[^\w\s]")


def ngrams(text: str, n: int) -> set[tuple[str, ...]]:
    toks = _TOKEN.findall(text.lower())
    if len(toks) <= n:
        return {tuple(toks)} if toks else set()
    return {tuple(toks[i:i + n]) for i in range(len(toks) - n + 1)}


class NgramIndex:
    """n-grams of a reference set, to score many queries against all of it quickly."""

    def __init__(self, texts: Sequence[str], n: int):
        self.n = n
        self.sizes = []
        self.postings: dict[tuple[str, ...], list[int]] = defaultdict(list)
        for i, text in enumerate(texts):
            grams = ngrams(text, n)
            self.sizes.append(len(grams))
            for g in grams:
                self.postings[g].append(i)

    def hits(self, text: str) -> tuple[int, Counter]:
        """(number of n-grams of ``text``, shared n-gram count per reference index)."""
        grams = ngrams(text, self.n)
        shared: Counter = Counter()
        for g in grams:
            shared.update(self.postings.get(g, ()))
        return len(grams), shared

    def containment_of_reference(self, text: str) -> dict[int, float]:
        """For each reference item sharing an n-gram with ``text``: the share of ITS n-grams shared."""
        _, shared = self.hits(text)
        return {i: c / self.sizes[i] for i, c in shared.items() if self.sizes[i]}

    def best_containment(self, text: str) -> tuple[float, int | None]:
        """Max over reference items of the share of ``text``'s n-grams that item contains."""
        total, shared = self.hits(text)
        if not total or not shared:
            return 0.0, None
        i, c = shared.most_common(1)[0]
        return c / total, i


@dataclass
class OverlapReport:
    n: int
    max_overlap: float
    mean_overlap: float
    worst_heldout: str | None   # id of the held-out item with the max overlap
    worst_train: str | None     # ...and of the train item it overlaps

    def as_dict(self) -> dict:
        return dict(self.__dict__)


def overlap_report(heldout: Sequence[tuple[str, str]], train: Sequence[tuple[str, str]], n: int) -> OverlapReport:
    """``heldout`` and ``train`` are (id, question) pairs."""
    index = NgramIndex([q for _, q in train], n)
    worst, worst_pair, total = 0.0, (None, None), 0.0
    for hid, q in heldout:
        score, ti = index.best_containment(q)
        total += score
        if score > worst or worst_pair[0] is None:
            worst, worst_pair = score, (hid, train[ti][0] if ti is not None else None)
    return OverlapReport(n, round(worst, 4), round(total / max(1, len(heldout)), 4), *worst_pair)
