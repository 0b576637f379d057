"""The tokenizer stage's config section. Light on purpose (pydantic + constants only).

    tokenizer:
      preset: tiny            # or deepseek-v3: 129,280 ids (DeepSeek-V3's vocabulary size), 1 GB sample
      vocab_size: 4096
      sample: {mix: {web: 0.5, code: 0.5}, max_bytes: 4000000}
      shards: {mix: {web: 0.7, code: 0.3}, validation_fraction: 0.05}

A preset fills every key the section does not set itself.
"""

from __future__ import annotations

import re
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from pipeline.stage import StageConfig
from tokenizer.training import learned_capacity, min_vocab_size

PRESETS: dict[str, dict[str, Any]] = {
    "tiny": {},
    # DeepSeek-V3's vocabulary (128K-class, 129,280 ids); sentencepiece keeps the sample in memory
    # (roughly 10x its size), so 1 GB wants a big-memory node.
    "deepseek-v3": {
        "vocab_size": 129_280,
        "character_coverage": 0.9999,
        "train_threads": 16,
        "sample": {"max_bytes": 1_000_000_000, "max_doc_bytes": 1 << 20},
        "shards": {"validation_fraction": 0.001, "max_shard_tokens": 1 << 28},
        "eval_bytes": 20_000_000,
    },
}

_SOURCE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


def _check_mix(mix: dict[str, float], what: str) -> dict[str, float]:
    if not mix:
        raise ValueError(f"{what} must name at least one source, e.g. {{web: 0.7, code: 0.3}}")
    for name, w in mix.items():
        if not _SOURCE.match(name):
            raise ValueError(f"{what}: {name!r} is not a source folder name")
        if w < 0:
            raise ValueError(f"{what}: weight of {name!r} is {w}; weights must be >= 0")
    if sum(mix.values()) <= 0:
        raise ValueError(f"{what}: at least one weight must be positive, got {mix}")
    return mix


class SampleConfig(StageConfig):
    """The text the tokenizer is trained on: a seeded sample of the curated training documents
    (held-out validation documents are never in it)."""

    # share of the sample's bytes per source (normalised)
    mix: dict[str, float] = Field(default_factory=lambda: {"web": 0.5, "code": 0.5})
    max_bytes: int = Field(4_000_000, gt=0)
    max_docs: int | None = Field(None, gt=0)
    # a longer document contributes only its first max_doc_bytes (one file cannot dominate)
    max_doc_bytes: int = Field(65_536, ge=1024)

    @field_validator("mix")
    @classmethod
    def _valid_mix(cls, mix: dict[str, float]) -> dict[str, float]:
        return _check_mix(mix, "sample.mix")


class ShardsConfig(StageConfig):
    """The tokenized corpus that pretraining reads."""

    # pretraining mixture: share of training sequences per source, applied by the shard reader
    mix: dict[str, float] = Field(default_factory=lambda: {"web": 0.7, "code": 0.3})
    # share of documents held out (by a seeded hash of the document id)
    validation_fraction: float = Field(0.05, gt=0, le=0.5)
    max_shard_tokens: int = Field(1 << 26, ge=1024)
    # documents per sentencepiece batch call inside a Ray task
    batch_docs: int = Field(64, ge=1)
    # let tokenization tasks run on every node of the cluster; only with the pipeline's
    # output_root on storage all nodes mount (NFS): by default they stay on the stage's node
    spread: bool = False

    @field_validator("mix")
    @classmethod
    def _valid_mix(cls, mix: dict[str, float]) -> dict[str, float]:
        return _check_mix(mix, "shards.mix")


class TokenizerConfig(StageConfig):
    preset: Literal["tiny", "deepseek-v3"] = "tiny"
    vocab_size: int = Field(4096, le=1 << 32)
    character_coverage: float = Field(0.9995, ge=0.9, le=1.0)
    max_piece_length: int = Field(16, ge=2, le=64)
    # allow pieces that mix scripts (letters with punctuation, "self."): +6-9% bytes/token here
    split_by_script: bool = False
    train_threads: int = Field(2, ge=1)
    sample: SampleConfig = Field(default_factory=SampleConfig)
    shards: ShardsConfig = Field(default_factory=ShardsConfig)
    # train the HF byte-level BPE baseline on the same sample and compare
    baseline: bool = True
    # held-out bytes per source used for bytes/token and throughput
    eval_bytes: int = Field(1_000_000, gt=0)

    @model_validator(mode="before")
    @classmethod
    def _apply_preset(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        preset = data.get("preset", "tiny")
        if preset not in PRESETS:
            return data  # the Literal check reports it
        merged = {**PRESETS[preset]}
        for key, value in data.items():
            if isinstance(value, dict) and isinstance(merged.get(key), dict):
                merged[key] = {**merged[key], **value}
            else:
                merged[key] = value
        return merged

    @model_validator(mode="after")
    def _fits(self) -> "TokenizerConfig":
        if self.vocab_size < min_vocab_size():
            raise ValueError(f"vocab_size={self.vocab_size} is too small: the 32 special tokens, 256 "
                             f"byte pieces and the ASCII alphabet need at least {min_vocab_size()}")
        need = 4 * learned_capacity(self.vocab_size)
        if self.sample.max_bytes < need:
            raise ValueError(f"sample.max_bytes={self.sample.max_bytes:,} cannot train vocab_size="
                             f"{self.vocab_size:,}: learning {learned_capacity(self.vocab_size):,} pieces "
                             f"needs a sample of at least {need:,} bytes (and far more for a good one)")
        return self

    @property
    def sources(self) -> list[str]:
        """Every source either mixture gives weight to."""
        names = {s for s, w in self.sample.mix.items() if w > 0} | {s for s, w in self.shards.mix.items() if w > 0}
        return sorted(names)
