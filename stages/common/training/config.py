"""The trainer's config: a pydantic section a stage embeds (``train:`` in pretrain and distill).

Light on purpose (pydantic only): the pipeline's config loader imports every stage config.
Cross-field checks that need the model (experts divisible by ep, seq_len within max positions)
are in :meth:`TrainerConfig.check_against`, which stages call once the model config is known.

    train:
      steps: 300
      batch_size: 16            # sequences per optimizer step, all ranks and micro-batches together
      seq_len: 256
      grad_accum: 1             # micro-batches per step; micro batch = batch_size / (workers x grad_accum)
      precision: bf16           # fp32 | bf16 | fp8 (FP32 master weights in every case)
      optimizer: {lr: 3.0e-3, betas: [0.9, 0.95], weight_decay: 0.1, grad_clip: 1.0}
      schedule: {kind: cosine, warmup_steps: 30, min_lr_ratio: 0.1}
      mtp_weight: {initial: 0.3, final: 0.1, switch_at: 0.7}
      parallel: {dp: 1, ep: 1}
      checkpoint: {every: 100, keep: 2}
      eval: {every: 100, batches: 8}
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", protected_namespaces=())


class OptimizerConfig(_Strict):
    """AdamW (decoupled weight decay on matrices; norms and biases are not decayed)."""

    lr: float = Field(3e-3, gt=0)
    betas: tuple[float, float] = (0.9, 0.95)
    eps: float = Field(1e-8, gt=0)
    weight_decay: float = Field(0.1, ge=0)
    # max global gradient norm; null: no clipping
    grad_clip: float | None = Field(1.0, gt=0)

    @model_validator(mode="after")
    def _betas(self) -> "OptimizerConfig":
        if not all(0 <= b < 1 for b in self.betas):
            raise ValueError(f"optimizer.betas must lie in [0, 1), got {list(self.betas)}")
        return self


class ScheduleConfig(_Strict):
    """Linear warmup to ``optimizer.lr``, then

    - ``cosine``: cosine decay to ``min_lr_ratio·lr`` at the last step;
    - ``wsd`` (warmup-stable-decay): constant, then over the last ``decay_fraction`` of the steps
      a cosine decay to ``min_lr_ratio·lr`` (V3's shape: constant, then cosine to 10%);
    - ``constant``: no decay.
    """

    kind: Literal["cosine", "wsd", "constant"] = "cosine"
    warmup_steps: int = Field(30, ge=0)
    min_lr_ratio: float = Field(0.1, ge=0, le=1)
    decay_fraction: float = Field(0.2, gt=0, le=1)


class MTPWeightConfig(_Strict):
    """λ of the MTP loss: ``initial`` until ``switch_at`` (fraction of the steps), then ``final``
    (V3 §4.2: 0.3 for the first 10T of 14.8T tokens, then 0.1)."""

    initial: float = Field(0.3, ge=0)
    final: float = Field(0.1, ge=0)
    switch_at: float = Field(0.7, ge=0, le=1)


class ParallelConfig(_Strict):
    """Workers = dp x ep (Ray Train workers, one process each). Every worker reads its own slice
    of the batch; routed experts are split over ``ep`` ranks and replicated ``dp`` times."""

    dp: int = Field(1, ge=1)
    ep: int = Field(1, ge=1)
    # when given, must equal dp x ep (a guard for configs written with a worker count in mind)
    workers: int | None = Field(None, ge=1)
    # CPUs each worker reserves and uses as torch threads; null: the cluster's CPUs / workers
    # (2 cores, 2 workers -> 1 thread each: oversubscribed threads make small ops ~100x slower)
    cpus_per_worker: int | None = Field(None, ge=1)
    # GPUs: null = use them when the cluster has any (one per worker, NCCL); false = CPU + gloo
    use_gpu: bool | None = None

    @model_validator(mode="after")
    def _workers(self) -> "ParallelConfig":
        if self.workers is not None and self.workers != self.dp * self.ep:
            raise ValueError(f"parallel.workers ({self.workers}) must equal parallel.dp x parallel.ep "
                             f"({self.dp} x {self.ep} = {self.dp * self.ep})")
        return self

    @property
    def world_size(self) -> int:
        return self.dp * self.ep


class CheckpointConfig(_Strict):
    every: int = Field(100, ge=1)          # steps; the last step is always saved
    keep: int = Field(2, ge=1)             # newest checkpoints kept (Ray deletes older ones)
    # where Ray Train keeps the run (checkpoints, its snapshot): a local path or fsspec URI
    # (s3://..., shared NFS for multi-node). null: inside the stage's output folder, which the
    # pipeline clears when it reruns a failed stage; a stable path here makes a rerun resume.
    storage: str | None = None


class EvalConfig(_Strict):
    every: int = Field(100, ge=1)          # steps; the last step is always evaluated
    batches: int = Field(8, ge=1)          # micro-batches per eval set per rank


class FaultConfig(_Strict):
    """Fault injection for tests (also settable by env ``WHALE_FAULT_AT_STEP`` on the driver):
    worker ``rank`` dies with ``os._exit`` at step ``at_step`` (``during: step``, before computing
    it) or halfway through writing that step's checkpoint (``during: save``). It fires once per
    run: a marker in the run's storage keeps the restarted workers from crashing again."""

    at_step: int | None = Field(None, ge=1)
    during: Literal["step", "save"] = "step"
    rank: int = Field(0, ge=0)


class TrainerConfig(_Strict):
    steps: int = Field(300, ge=1)
    batch_size: int = Field(16, ge=1)      # global sequences per optimizer step
    seq_len: int = Field(256, ge=2)
    grad_accum: int = Field(1, ge=1)
    precision: Literal["fp32", "bf16", "fp8"] = "bf16"
    activation_checkpointing: Literal["none", "selective", "full"] = "none"
    seed: int | None = None                # null: the pipeline's seed
    # γ of the router-bias update; null: the model config's router_bias_update_rate
    bias_update_rate: float | None = Field(None, ge=0)
    log_every: int = Field(10, ge=1)
    # end this attempt after this step (with a checkpoint); a later run on the same storage and
    # run name resumes from it. For budgets, preemption drills and the exact-resume test.
    stop_after_step: int | None = Field(None, ge=1)
    max_failures: int = Field(2, ge=0)     # worker-group restarts from the latest checkpoint
    optimizer: OptimizerConfig = Field(default_factory=OptimizerConfig)
    schedule: ScheduleConfig = Field(default_factory=ScheduleConfig)
    mtp_weight: MTPWeightConfig = Field(default_factory=MTPWeightConfig)
    parallel: ParallelConfig = Field(default_factory=ParallelConfig)
    checkpoint: CheckpointConfig = Field(default_factory=CheckpointConfig)
    eval: EvalConfig = Field(default_factory=EvalConfig)
    fault: FaultConfig = Field(default_factory=FaultConfig)

    @model_validator(mode="after")
    def _shapes(self) -> "TrainerConfig":
        errors = []
        per_step = self.parallel.world_size * self.grad_accum
        if self.batch_size % per_step:
            errors.append(f"batch_size ({self.batch_size}) must be divisible by workers x grad_accum "
                          f"({self.parallel.world_size} x {self.grad_accum} = {per_step})")
        if self.schedule.warmup_steps >= self.steps and self.schedule.kind != "constant":
            errors.append(f"schedule.warmup_steps ({self.schedule.warmup_steps}) must be below steps ({self.steps})")
        if self.fault.at_step is not None and self.fault.rank >= self.parallel.world_size:
            errors.append(f"fault.rank ({self.fault.rank}) is not a rank of {self.parallel.world_size} workers")
        if errors:
            raise ValueError("invalid train config: " + "; ".join(errors))
        return self

    @property
    def micro_batch_size(self) -> int:
        return self.batch_size // (self.parallel.world_size * self.grad_accum)

    @property
    def tokens_per_step(self) -> int:
        return self.batch_size * self.seq_len

    def check_against(self, model: Any) -> list[str]:
        """Problems of this config for a ``model.ModelConfig`` (empty: fine)."""
        errors = []
        if model.n_routed_experts % self.parallel.ep:
            errors.append(f"the model's n_routed_experts ({model.n_routed_experts}) must be divisible by "
                          f"parallel.ep ({self.parallel.ep})")
        if self.seq_len > model.max_position_embeddings:
            errors.append(f"seq_len ({self.seq_len}) exceeds the model's max_position_embeddings "
                          f"({model.max_position_embeddings})")
        return errors
