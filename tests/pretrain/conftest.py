"""Fixtures for the pretrain tests: a real tokenizer-stage output (token shards of real prose and
code from the local Python installation), built once per session."""

from __future__ import annotations

from pathlib import Path

import pytest

from pipeline.config import GlobalConfig
from pipeline.stage import StageContext
from pipeline.tracking import Tracker


@pytest.fixture(scope="session")
def tokenized(ray_local, tmp_path_factory) -> Path:
    """The tokenizer stage's ``out`` (``tokenizer/``, ``shards/``): vocab 1024, ~250K training tokens."""
    from stages.tokenizer.config import TokenizerConfig
    from stages.tokenizer.run import run
    from tokenizer.local_corpus import write_local_corpus

    root = tmp_path_factory.mktemp("pretrain-data")
    write_local_corpus(root / "curate", web_bytes=300_000, code_bytes=300_000, files_per_source=2)
    out = root / "tokenizer"
    out.mkdir()
    cfg = TokenizerConfig(vocab_size=1024, baseline=False, eval_bytes=100_000, sample={"max_bytes": 600_000},
                          shards={"validation_fraction": 0.1, "max_shard_tokens": 1 << 20})
    run(cfg, StageContext(stage="tokenizer", out=out, inputs={"curate": root / "curate"}, tracker=Tracker.disabled(),
                          pipeline=GlobalConfig(name="test"), fingerprint="test"))
    return out
