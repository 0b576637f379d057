"""The unbiased pass@k estimator against brute-force counting."""

from __future__ import annotations

from itertools import combinations
from math import comb

import pytest

from stages.common.scoring import mean_pass_at_k, pass_at_k


@pytest.mark.parametrize("n,c,k", [(10, 1, 1), (10, 3, 5), (6, 0, 2), (6, 6, 6), (7, 2, 4), (5, 4, 2)])
def test_matches_enumerating_every_draw(n, c, k):
    samples = [True] * c + [False] * (n - c)
    draws = list(combinations(range(n), k))
    brute = sum(any(samples[i] for i in d) for d in draws) / len(draws)
    assert pass_at_k(n, c, k) == pytest.approx(brute)
    assert pass_at_k(n, c, k) == pytest.approx(1 - comb(n - c, k) / comb(n, k))


def test_pass_at_1_is_the_success_rate_and_large_n_is_stable():
    assert pass_at_k(10, 3, 1) == pytest.approx(0.3)
    assert 0 < pass_at_k(2000, 1, 100) < 1      # C(2000, 100) overflows floats; the product does not
    assert mean_pass_at_k([(4, 0), (4, 4)], 1) == pytest.approx(0.5)


def test_rejects_impossible_counts():
    for n, c, k in [(5, 6, 1), (5, 1, 6), (5, 1, 0)]:
        with pytest.raises(ValueError):
            pass_at_k(n, c, k)
