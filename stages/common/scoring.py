"""Scoring generated answers, shared by the distill stage's before/after evaluation and the eval stage.

pass@k: the unbiased estimator (Chen et al. 2021, "Evaluating Large Language Models Trained on Code").

With n samples of which c pass, pass@k = 1 - C(n-c, k) / C(n, k): the chance that k samples drawn
without replacement from the n include at least one that passes. Computed as a product, which
stays exact-ish for large n where the binomials overflow: C(n-c, k)/C(n, k) = prod_{i=n-c+1}^{n} (1 - k/i).
"""

from __future__ import annotations

from collections.abc import Sequence


def pass_at_k(n: int, c: int, k: int) -> float:
    if not 0 <= c <= n or not 1 <= k <= n:
        raise ValueError(f"pass@k needs 0 <= c <= n and 1 <= k <= n, got n={n}, c={c}, k={k}")
    if n - c < k:  # every draw of k contains a passing sample
        return 1.0
    prob_all_fail = 1.0
    for i in range(n - c + 1, n + 1):
        prob_all_fail *= 1.0 - k / i
    return 1.0 - prob_all_fail


def mean_pass_at_k(counts: Sequence[tuple[int, int]], k: int) -> float:
    """Mean over problems of pass@k, ``counts`` = [(n, c), ...]."""
    if not counts:
        return float("nan")
    return sum(pass_at_k(n, c, k) for n, c in counts) / len(counts)


def reasoning_span(tokens: Sequence[int], think_id: int, think_end_id: int) -> tuple[int, str | None]:
    """(tokens of reasoning, format issue or None) of generated ids that should open with
    ``<think>`` and close it exactly once (R1's format)."""
    if not tokens or tokens[0] != think_id:
        return 0, "no_reasoning"
    if tokens.count(think_id) > 1 or tokens.count(think_end_id) > 1:
        return 0, "multiple_reasoning"
    if think_end_id not in tokens:
        return len(tokens) - 1, "unclosed_reasoning"
    n = tokens.index(think_end_id) - 1
    return n, (None if n > 0 else "empty_reasoning")
