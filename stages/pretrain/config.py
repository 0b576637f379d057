"""The pretrain stage's config section. Light on purpose (pydantic + model.config only).

    pretrain:
      model: {preset: tiny}          # a model preset plus overrides; vocab_size comes from the tokenizer
      data: {mix: null, document_masking: false}
      train: {steps: 300, batch_size: 16, seq_len: 256, precision: bf16, parallel: {dp: 1, ep: 1}, ...}
      hf_dtype: float32              # dtype of the exported Hugging Face weights

Everything that can be checked without data is checked here, before any compute: the model
shape, the layout against the model (experts divisible by ep), the batch against the layout,
seq_len against the model's positions.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from model.config import ModelConfig
from pipeline.stage import StageConfig
from stages.common.training.config import TrainerConfig

# The tiny default: 2 CPU cores, under 5 minutes including Ray Train's start (see README).
TINY_MODEL: dict[str, Any] = {
    "preset": "tiny",
    # V3's std 0.006 is for width 7168; at width 192 the same per-unit scale is ~0.04 and 0.02
    # learns faster here (measured: 100 steps, LM loss 6.40 vs 6.70)
    "initializer_range": 0.02,
}
TINY_TRAIN: dict[str, Any] = {
    "steps": 250, "batch_size": 8, "seq_len": 256, "precision": "bf16", "log_every": 10,
    # γ = 1e-3 (V3) suits millions of steps; in a few hundred steps the routers collapse onto a
    # few experts before it can react (MaxVio 1.4 after 100 steps, vs 0.3 with 1e-2)
    "bias_update_rate": 1e-2,
    # two workers x one thread, experts split between them: on 2 cores as fast as one worker with
    # two threads, and immune to OpenMP spin-waits when anything else runs (measured: 10-20x
    # slower steps with 2 threads on a busy 2-core machine)
    "parallel": {"dp": 1, "ep": 2},
    "optimizer": {"lr": 3e-3},
    "schedule": {"kind": "cosine", "warmup_steps": 30, "min_lr_ratio": 0.1},
    "checkpoint": {"every": 100, "keep": 2},
    "eval": {"every": 100, "batches": 4},
}


class DataConfig(StageConfig):
    # share of training sequences per source; null: the mix the tokenizer stage recorded
    mix: dict[str, float] | None = None
    # attention and targets stay inside each packed document (DeepSeek-V3 packs without masking)
    document_masking: bool = False

    @field_validator("mix")
    @classmethod
    def _mix(cls, mix: dict[str, float] | None) -> dict[str, float] | None:
        if mix is not None and (any(w < 0 for w in mix.values()) or sum(mix.values()) <= 0):
            raise ValueError(f"data.mix weights must be >= 0 with a positive sum, got {mix}")
        return mix


class PretrainConfig(StageConfig):
    model: dict[str, Any] = Field(default_factory=lambda: dict(TINY_MODEL))
    data: DataConfig = Field(default_factory=DataConfig)
    train: TrainerConfig = Field(default_factory=lambda: TrainerConfig(**TINY_TRAIN))
    hf_dtype: Literal["float32", "bfloat16"] = "float32"

    @model_validator(mode="before")
    @classmethod
    def _train_over_tiny(cls, data: Any) -> Any:
        """A ``train:`` section overrides the tiny defaults key by key (nested sections too),
        rather than replacing them with the generic trainer defaults."""
        if isinstance(data, dict) and isinstance(data.get("train"), dict):
            data = {**data, "train": _deep_merge(TINY_TRAIN, data["train"])}
        return data

    @field_validator("model")
    @classmethod
    def _no_vocab(cls, model: dict[str, Any]) -> dict[str, Any]:
        if "vocab_size" in model:
            raise ValueError("model.vocab_size is not configurable: it is read from the tokenizer stage's "
                             "output at run time (the model must match the trained tokenizer)")
        return model

    @model_validator(mode="after")
    def _fits(self) -> "PretrainConfig":
        try:
            model = self.build_model_config()
        except ValueError as e:
            raise ValueError(f"model: {e}") from None
        problems = self.train.check_against(model)
        if problems:
            raise ValueError("; ".join(problems))
        return self

    def build_model_config(self, vocab_size: int | None = None, **overrides: Any) -> ModelConfig:
        """The model to train; ``vocab_size`` from the tokenizer (the preset's until then)."""
        extra = {"vocab_size": vocab_size} if vocab_size is not None else {}
        return ModelConfig.model_validate({"preset": "tiny", **self.model, **extra, **overrides})


def _deep_merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in over.items():
        out[key] = _deep_merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out
