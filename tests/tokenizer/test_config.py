"""The stage's config: presets, and bad values rejected with a message before any compute."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

import stages.tokenizer as stage_pkg
from stages.tokenizer.config import TokenizerConfig


def test_stage_declaration():
    stage = stage_pkg.STAGE
    assert (stage.name, stage.upstream, stage.run) == ("tokenizer", ("curate",), "stages.tokenizer.run:run")
    assert stage.resources.cpus == 0 and "tokenizer" in stage.code
    assert stage.config is TokenizerConfig


def test_tiny_default_and_deepseek_preset():
    tiny = TokenizerConfig()
    assert tiny.vocab_size == 4096 and tiny.sources == ["code", "web"]
    big = TokenizerConfig(preset="deepseek-v3", sample={"mix": {"web": 1.0}})
    assert big.vocab_size == 129_280
    assert big.sample.max_bytes == 1_000_000_000 and big.sample.mix == {"web": 1.0}  # merged, not replaced
    assert TokenizerConfig(preset="deepseek-v3", vocab_size=100_000).vocab_size == 100_000  # explicit wins


@pytest.mark.parametrize("values, message", [
    ({"vocab_size": 400}, "vocab_size=400 is too small"),
    ({"sample": {"max_bytes": 10_000}}, "sample.max_bytes=10,000 cannot train vocab_size=4,096"),
    ({"shards": {"mix": {"web": -1.0}}}, "weights must be >= 0"),
    ({"shards": {"mix": {"web": 0.0, "code": 0.0}}}, "at least one weight must be positive"),
    ({"sample": {"mix": {"../etc": 1.0}}}, "not a source folder name"),
    ({"shards": {"validation_fraction": 0.9}}, "less than or equal to 0.5"),
    ({"preset": "huge"}, "preset"),
    ({"vocab": 4096}, "Extra inputs are not permitted"),
])
def test_bad_values_are_rejected(values, message):
    with pytest.raises(ValidationError, match=message):
        TokenizerConfig(**values)


def test_zero_weight_source_is_not_read():
    cfg = TokenizerConfig(sample={"mix": {"web": 1.0, "code": 0.0}}, shards={"mix": {"web": 1.0}})
    assert cfg.sources == ["web"]
