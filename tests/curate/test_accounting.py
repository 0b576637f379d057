"""Accounting: every document is kept, removed with a reason, or reported lost; samples merge exactly."""

from __future__ import annotations

import random

import pytest
from datatrove.pipeline.filters.base_filter import BaseFilter
from datatrove.pipeline.formatters.base import BaseFormatter

from stages.curate.accounting import Accounted, AuditSample, merge_samples
from stages.curate.config import CurateConfig
from tests.curate.conftest import doc


class DropOdd(BaseFilter):
    name = "odd"

    def filter(self, d):
        return (False, "odd") if int(d.id) % 2 else True


class SwallowThird(BaseFormatter):
    """A buggy step: loses every third document without telling anyone."""

    name = "swallow"

    def format(self, text):
        return text

    def run(self, data, rank=0, world_size=1):
        for i, d in enumerate(data):
            if i % 3:
                yield d


def counts(step) -> dict:
    return {k[5:]: v.total for k, v in step.stats.stats.items() if k.startswith("acct_")}


def test_kept_and_removed_with_reasons_and_bytes(tmp_path):
    docs = [doc("é" * (i + 1), id=str(i)) for i in range(10)]
    step = Accounted(DropOdd(), "odd", audit_folder=str(tmp_path), samples=2)
    kept = list(step.run(iter(docs), rank=3))
    n = counts(step)
    assert [d.id for d in kept] == ["0", "2", "4", "6", "8"]
    assert (n["in"], n["kept"], n["removed"], n["removed:odd"]) == (10, 5, 5, 5)
    assert n["in_bytes"] == sum(2 * (i + 1) for i in range(10))  # UTF-8 bytes, not characters
    assert n["kept_bytes"] + n["removed_bytes"] == n["in_bytes"]
    lines = (tmp_path / "odd" / "00003.jsonl").read_text().splitlines()
    assert len(lines) == 4  # 2 kept + 2 removed samples


def test_silent_loss_is_counted_as_unaccounted():
    step = Accounted(SwallowThird(), "swallow")
    kept = list(step.run(iter([doc("x", id=str(i)) for i in range(9)])))
    n = counts(step)
    assert len(kept) == 6 and n["removed:unaccounted"] == 3


def test_audit_sample_merges_like_one_global_sample():
    docs = [doc(f"text {i}", id=f"doc-{i}") for i in range(300)]
    whole = AuditSample(5)
    for d in docs:
        whole.offer("kept", d)
    parts = [AuditSample(5) for _ in range(3)]
    for i, d in enumerate(random.Random(0).sample(docs, len(docs))):
        parts[i % 3].offer("kept", d)
    merged = merge_samples([r for p in parts for r in p.records()], 5)
    assert [r["id"] for r in merged["kept"]] == [r["id"] for r in merge_samples(whole.records(), 5)["kept"]]


def test_config_errors_are_readable():
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="lid.176 labels"):
        CurateConfig.model_validate({"web": {"language": {"languages": ["English"]}}})
    with pytest.raises(ValidationError, match="start with a dot"):
        CurateConfig.model_validate({"code": {"extensions": {"py": "python"}}})
    with pytest.raises(ValidationError, match="no source feeds an enabled branch"):
        CurateConfig.model_validate({"sources": [{"type": "warc", "path": "x"}], "web": {"enabled": False}})
    with pytest.raises(ValidationError, match="needs a path"):
        CurateConfig.model_validate({"web": {"quality": {"reference": [{"type": "jsonl"}]}}})
    with pytest.raises(ValidationError, match="keep_fraction"):
        CurateConfig.model_validate({"web": {"quality": {"keep_fraction": 0}}})
    assert CurateConfig().branches() == ["web", "code"]
