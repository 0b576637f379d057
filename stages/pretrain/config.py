"""The pretrain stage's config section. Light on purpose (pydantic + model.config only).

    pretrain:
      model: {preset: tiny}          # a model preset plus overrides; vocab_size comes from the tokenizer
      data: {mix: null, document_masking: false}
      train: {steps: 300, batch_size: 16, seq_len: 256, precision: auto, parallel: {dp: 1, ep: 1}, ...}
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
    """Defaults are what a user with no config gets: the ``tiny`` model preset (CPU-sized) and the
    trainer's own defaults (one worker, ``precision: auto``). The tuned 2-core tiny run lives in
    ``configs/tiny.yaml`` only, with the measurements behind each choice."""

    model: dict[str, Any] = Field(default_factory=lambda: {"preset": "tiny"})
    data: DataConfig = Field(default_factory=DataConfig)
    train: TrainerConfig = Field(default_factory=TrainerConfig)
    hf_dtype: Literal["float32", "bfloat16"] = "float32"

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
