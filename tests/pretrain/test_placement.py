"""Fail fast on a layout the Ray cluster cannot place (Ray Train V2 would wait forever)."""

from __future__ import annotations

import pytest

from stages.common.training.runner import ResourcesUnavailable, place_workers


def test_workers_share_the_cpus(ray_local):
    assert place_workers(2, None, None) == (False, 1)       # 2 CPUs, 2 workers: one thread each
    assert place_workers(1, None, None) == (False, 2)


def test_impossible_layouts_fail_at_once(ray_local):
    with pytest.raises(ResourcesUnavailable, match=r"4 workers x 1 CPU\(s\) cannot be placed: the cluster has 2 CPUs"):
        place_workers(4, None, None)
    with pytest.raises(ResourcesUnavailable, match="2 GPU workers requested but the cluster has 0 GPUs"):
        place_workers(2, 1, True)
