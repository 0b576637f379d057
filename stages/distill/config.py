"""The distill stage's config section. Light on purpose (pydantic only): the config loader imports it.

    distill:
      problems: {n_train: 3000, n_heldout: 64, arithmetic: {max_digits: 2, ops: ["+", "-"]}, linear: null, ...}
      teacher: {kind: procedural, error_rate: 0.1}      # or openai | dataset | local (stages/distill/teachers)
      rejection: {samples_per_prompt: 2, keep_per_prompt: 1}
      sft: {packing: true, val_fraction: 0.05, warmup_fraction: 0.05}
      train: {steps: 240, batch_size: 16, seq_len: 256, optimizer: {lr: 3.0e-3}, ...}   # the shared trainer
      kd: {enabled: false, divergence: forward, weight: 0.5, temperature: 1.0}          # local teacher only
      evaluation: {max_problems: 64, samples: 4, pass_at: [1, 4], temperature: 0.6, max_new_tokens: 128}

The defaults are the embedded tiny run: two CPU cores, a 6M-parameter base model that has seen only
web and code text, a few minutes for the whole stage, and a clear gain on held-out arithmetic.
Everything checkable without data is checked here, before any compute.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from pipeline.stage import StageConfig
from stages.common.problems import ProblemsConfig
from stages.common.training.config import TrainerConfig
from stages.distill.rejection import RejectionConfig
from stages.distill.teachers import ProceduralTeacherConfig, TeacherConfig

# Short arithmetic only: column-wise addition and subtraction of 1-2 digit numbers. Every
# held-out problem decomposes into digit steps the training traces contain, so a model that has
# never seen arithmetic can learn the procedure (not memorise answers) in a couple of minutes.
TINY_PROBLEMS: dict[str, Any] = {
    "n_train": 3000, "n_heldout": 64,
    "arithmetic": {"weight": 1.0, "min_digits": 1, "max_digits": 2, "ops": ["+", "-"]},
    "linear": None, "countdown": None, "code": None,
}

# SFT on the pretrained base (R1/OpenR1-style: cosine to 10% after a short warmup). Two workers,
# one thread each, experts split between them: as pretrain, immune to OpenMP spin-waits on 2 cores.
# Traces are ~110 tokens, so 256-token rows lose little to packing; more optimizer steps beat
# longer rows at the same token count: measured on the tiny base, 300 x 16 x 256 (1.2M tokens)
# reaches held-out pass@1 0.06 (from 0.00; loss still falling), 100 x 16 x 256 only 0.004. The
# default stops at 240 so that `make run` keeps a margin under its 15 minutes on 2 cores (a
# fresh 2-core machine took 15 min 8 s with 270).
TINY_TRAIN: dict[str, Any] = {
    "steps": 240, "batch_size": 16, "seq_len": 256, "precision": "bf16", "log_every": 10,
    "parallel": {"dp": 1, "ep": 2},
    "optimizer": {"lr": 3e-3, "weight_decay": 0.0},
    "schedule": {"kind": "cosine", "min_lr_ratio": 0.1},
    # λ of the MTP loss: the MTP head keeps learning on the traces (it drafts at serve time)
    "mtp_weight": {"initial": 0.1, "final": 0.1},
    "checkpoint": {"every": 1000, "keep": 1},
    "eval": {"every": 1000, "batches": 4},
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


class EvaluationConfig(_Strict):
    """Held-out reasoning, measured on the base model before and on the distilled model after."""

    enabled: bool = True
    # held-out problems evaluated (round-robin across kinds); null: all of them
    max_problems: int | None = Field(64, ge=1)
    samples: int = Field(4, ge=1, le=64)            # completions per problem
    pass_at: list[int] = Field(default_factory=lambda: [1, 4], min_length=1)
    # R1 reports pass@1 as the mean over samples at T=0.6, top-p 0.95
    temperature: float = Field(0.6, ge=0, le=2)
    top_p: float = Field(0.95, gt=0, le=1)
    max_new_tokens: int = Field(128, ge=1)
    batch_size: int = Field(128, ge=1)              # rows per model.generate call
    # 1: on 2 busy cores, two OpenMP threads per decode step run ~5x slower than one (spin-waits)
    torch_threads: int | None = Field(1, ge=1)      # null: all the process may use
    table_rows: int = Field(32, ge=0)               # sample generations per model in the MLflow table
    math_timeout_s: float = Field(5.0, gt=0)
    code_wall_s: float = Field(10.0, gt=0)
    code_cpu_s: float = Field(5.0, gt=0)
    code_memory_mb: int = Field(1024, ge=64)
    verify_workers: int = Field(4, ge=1, le=64)

    @model_validator(mode="after")
    def _k_within_samples(self) -> "EvaluationConfig":
        bad = [k for k in self.pass_at if not 1 <= k <= self.samples]
        if bad:
            raise ValueError(f"evaluation.pass_at {bad}: every k must lie in [1, samples={self.samples}]")
        return self


class DistillConfig(StageConfig):
    problems: ProblemsConfig = Field(default_factory=lambda: ProblemsConfig(**TINY_PROBLEMS))
    teacher: TeacherConfig = Field(default_factory=lambda: ProceduralTeacherConfig(error_rate=0.1))
    rejection: RejectionConfig = Field(default_factory=lambda: RejectionConfig(samples_per_prompt=2))
    sft: SFTConfig = Field(default_factory=SFTConfig)
    train: TrainerConfig = Field(default_factory=lambda: TrainerConfig(**_tiny_train()))
    kd: KDConfig = Field(default_factory=KDConfig)
    evaluation: EvaluationConfig = Field(default_factory=EvaluationConfig)
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
