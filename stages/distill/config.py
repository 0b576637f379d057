"""The distill stage's config section. Light on purpose (pydantic only): the config loader imports it.

    distill:
      problems: {n_train: 8000, n_heldout: 256, arithmetic: {max_digits: 2, ops: ["+", "-"]}, linear: null, ...}
      teacher: {kind: procedural, error_rate: 0.1}      # or openai | dataset | local (stages/distill/teachers)
      rejection: {samples_per_prompt: 1, keep_per_prompt: 1}   # >1 for teachers that sample
      sft: {packing: true, val_fraction: 0.05, warmup_fraction: 0.05}
      replay: {enabled: true, ratio: 0.25, track: true}  # pretraining text in every batch; val/bpb/<source>
      train: {steps: 300, batch_size: 16, seq_len: 256, optimizer: {lr: 3.0e-3}, mtp_weight: 0, ...}
      kd: {enabled: false, divergence: forward, weight: 0.5, temperature: 1.0}          # local teacher only
      evaluation: {greedy: true, sampling: {samples: 0, max_new_tokens: 96}}   # stages/common/evaluation.py
      probe: {task: arithmetic_3digit, n: 64}          # out-of-distribution held-out task

The defaults are the embedded tiny run: two CPU cores, a 6M-parameter base model that has seen only
web and code text, a few minutes for the whole stage, and a clear gain on held-out arithmetic.
Everything checkable without data is checked here, before any compute.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from pipeline.stage import StageConfig
from stages.common.evaluation import ReasoningEvalConfig, SamplingConfig
from stages.common.problems import ProblemsConfig
from stages.common.training.config import TrainerConfig
from stages.distill.rejection import RejectionConfig
from stages.distill.teachers import ProceduralTeacherConfig, TeacherConfig

# Short arithmetic only: column-wise addition and subtraction of 0-99 operands (negative results
# included). Every held-out problem decomposes into digit steps the training traces contain, so a
# model that has never seen arithmetic can learn the procedure (not memorise answers) in a couple of
# minutes. 8,000 of the 20,000 distinct problems train; 256 others are held out (a 95 % interval
# of about +-0.06 on pass@1).
TINY_PROBLEMS: dict[str, Any] = {
    "n_train": 8000, "n_heldout": 256,
    "arithmetic": {"weight": 1.0, "min_digits": 1, "max_digits": 2, "ops": ["+", "-"]},
    "linear": None, "countdown": None, "code": None,
}

# SFT on the pretrained base: lr 3e-3, cosine to 10 % after a short warmup, a quarter of every batch
# replayed pretraining text (``replay``), and no MTP loss (weight 0: the MTP head is left as
# pretraining made it and its forward, a third of the step, is skipped). Without replay 3e-3 wrecked
# general text (web bits/byte 2.16 -> 4.75); with it, measured on the same FP32 base (web 1.93):
# lr 1e-3 -> held-out greedy pass@1 0.027 [0.013, 0.055], web 1.90; lr 3e-3 -> 0.059 [0.036, 0.094],
# web 1.89. The tiny model at 7M parameters learns the format (0.997) long before the arithmetic.
# Two workers, one thread each, experts split between them, as pretrain.
TINY_TRAIN: dict[str, Any] = {
    "steps": 300, "batch_size": 16, "seq_len": 256, "precision": "auto", "log_every": 10,
    "parallel": {"dp": 1, "ep": 2},
    "optimizer": {"lr": 3e-3, "weight_decay": 0.0},
    "schedule": {"kind": "cosine", "min_lr_ratio": 0.1},
    "mtp_weight": {"initial": 0.0, "final": 0.0},
    "checkpoint": {"every": 1000, "keep": 1},
    "eval": {"every": 60, "batches": 2},
}


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", protected_namespaces=())


class SFTConfig(_Strict):
    """How kept traces become training batches."""

    # several traces per row, attention and targets kept inside each (segment_ids); false: one
    # trace per row, padded
    packing: bool = True
    # which assistant turns are targets: "last" (after the final user message) or "all"
    train_on: Literal["last", "all"] = "last"
    # share of the kept traces (whole problems) held back for validation loss during training
    val_fraction: float = Field(0.05, ge=0, lt=0.5)
    # warmup as a share of train.steps; applied unless train.schedule.warmup_steps is given
    # (OpenR1 / R1-distill recipes: 3-10%)
    warmup_fraction: float = Field(0.05, ge=0, lt=1)


class ProbeConfig(_Strict):
    """Held-out problems from outside the training distribution, reported as their own task:
    by default two-operand +/- with 3-digit operands (training saw at most 2 digits)."""

    task: str = "arithmetic_3digit"
    n: int = Field(64, ge=1)
    arithmetic: dict[str, Any] = Field(default_factory=lambda: {"min_digits": 3, "max_digits": 3, "ops": ["+", "-"]})


class ReplayConfig(_Strict):
    """Pretraining text mixed into SFT batches (stages/distill/replay.py): ``ratio`` of every
    micro-batch's rows are windows of the tokenizer stage's training shards. ``track`` adds the
    shards' validation text per source as evaluation sets, so ``val/bpb/<source>`` follows general
    text through SFT."""

    enabled: bool = True
    ratio: float = Field(0.25, gt=0, lt=1)
    track: bool = True


class KDConfig(_Strict):
    """Logit-level distillation (Hinton et al. 2015; GKD/MiniLLM for the reverse direction), on top of
    the SFT cross-entropy: L = CE + weight · τ² · KL on the assistant tokens.

    forward  KL(p_teacher ‖ p_student): mass-covering, the classic distillation loss
    reverse  KL(p_student ‖ p_teacher): mode-seeking (MiniLLM)
    Needs ``teacher.kind: local`` with the same tokenizer as the student (checked at run time).
    """

    enabled: bool = False
    divergence: Literal["forward", "reverse"] = "forward"
    weight: float = Field(0.5, gt=0)
    temperature: float = Field(1.0, gt=0)


def _distill_evaluation() -> ReasoningEvalConfig:
    # greedy pass@1 on every held-out problem, before and after (the eval stage adds sampled pass@k)
    return ReasoningEvalConfig(sampling=SamplingConfig(samples=0, max_new_tokens=96), pass_at=[])


class DistillConfig(StageConfig):
    problems: ProblemsConfig = Field(default_factory=lambda: ProblemsConfig(**TINY_PROBLEMS))
    teacher: TeacherConfig = Field(default_factory=lambda: ProceduralTeacherConfig(error_rate=0.1))
    rejection: RejectionConfig = Field(default_factory=lambda: RejectionConfig(samples_per_prompt=1))
    sft: SFTConfig = Field(default_factory=SFTConfig)
    replay: ReplayConfig = Field(default_factory=ReplayConfig)
    train: TrainerConfig = Field(default_factory=lambda: TrainerConfig(**_tiny_train()))
    kd: KDConfig = Field(default_factory=KDConfig)
    evaluation: ReasoningEvalConfig = Field(default_factory=_distill_evaluation)
    # out-of-distribution probe: held-out problems of a harder family than training (evaluated only)
    probe: ProbeConfig | None = Field(default_factory=ProbeConfig)
    table_rows: int = Field(32, ge=0)   # sample generations per model in the MLflow table
    hf_dtype: Literal["float32", "bfloat16"] = "float32"

    @model_validator(mode="before")
    @classmethod
    def _defaults_under_overrides(cls, data: Any) -> Any:
        """``train:`` and ``problems:`` override the tiny defaults key by key (nested sections too)
        instead of replacing them with the generic defaults; the warmup follows ``train.steps``
        unless ``train.schedule.warmup_steps`` is set."""
        if not isinstance(data, dict):
            return data
        data = dict(data)
        sft = data.get("sft") or {}
        fraction = sft.get("warmup_fraction", SFTConfig.model_fields["warmup_fraction"].default) \
            if isinstance(sft, dict) else sft.warmup_fraction
        train = data.get("train")
        if train is None or isinstance(train, dict):
            data["train"] = _tiny_train(train or {}, fraction)
        if isinstance(data.get("problems"), dict):
            data["problems"] = _deep_merge(TINY_PROBLEMS, data["problems"])
        return data

    @model_validator(mode="after")
    def _consistent(self) -> "DistillConfig":
        errors = []
        if self.kd.enabled and self.teacher.kind != "local":
            errors.append(f"kd.enabled needs teacher.kind: local (a model whose logits we can read), "
                          f"got teacher.kind: {self.teacher.kind}")
        if self.teacher.kind != "dataset" and self.problems.n_train == 0:
            errors.append(f"problems.n_train is 0: the {self.teacher.kind} teacher needs prompts")
        if self.teacher.kind == "procedural" and self.problems.gym is not None and self.problems.gym.weight > 0:
            errors.append("problems.gym (reasoning-gym tasks) needs a teacher that writes its own reasoning "
                          "(teacher.kind: openai | local | dataset); the procedural teacher only explains Whale's "
                          "own families")
        if self.evaluation.enabled and self.problems.n_heldout == 0:
            errors.append("evaluation is enabled but problems.n_heldout is 0")
        if errors:
            raise ValueError("invalid distill config: " + "; ".join(errors))
        return self


def _tiny_train(over: dict[str, Any] | None = None, warmup_fraction: float = 0.05) -> dict[str, Any]:
    train = _deep_merge(TINY_TRAIN, over or {})
    schedule = train.setdefault("schedule", {})
    if "warmup_steps" not in (over or {}).get("schedule", {}):
        schedule["warmup_steps"] = round(warmup_fraction * int(train.get("steps", TINY_TRAIN["steps"])))
    return train


def _deep_merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in over.items():
        out[key] = _deep_merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out
