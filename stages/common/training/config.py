"""The trainer's config: a pydantic section a stage embeds (``train:`` in pretrain and distill).

Light on purpose (pydantic only): the pipeline's config loader imports every stage config.
Cross-field checks that need the model (experts divisible by ep, seq_len within max positions)
are in :meth:`TrainerConfig.check_against`, which stages call once the model config is known.

    train:
      steps: 300
      batch_size: 16            # sequences per optimizer step, all ranks and micro-batches together
      seq_len: 256
      grad_accum: 1             # micro-batches per step; micro batch = batch_size / (dp x ep x grad_accum)
      precision: auto           # auto | fp32 | bf16 | fp8 (FP32 master weights in every case)
      optimizer: {lr: 3.0e-3, betas: [0.9, 0.95], weight_decay: 0.1, grad_clip: 1.0}
      schedule: {kind: cosine, warmup_steps: 30, min_lr_ratio: 0.1}
      mtp_weight: {initial: 0.3, final: 0.1, switch_at: 0.7, start_at: 0.0, batch_fraction: 1.0}
      parallel: {pp: 1, dp: 1, ep: 1, schedule: 1f1b, microbatches: null, zero: 0, activation_checkpointing: null}
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
    """λ of the MTP loss: 0 before ``start_at``, ``initial`` until ``switch_at`` (fractions of the
    steps), then ``final`` (V3 §4.2: 0.3 for the first 10T of 14.8T tokens, then 0.1). A step with
    λ = 0 skips the MTP modules entirely: no forward, no backward, no cost (so ``initial: 0,
    final: 0`` trains without MTP, and ``start_at: 0.8`` trains the MTP head only at the end,
    on the trunk's late features, where it costs 20 % of the steps instead of all of them)."""

    initial: float = Field(0.3, ge=0)
    final: float = Field(0.1, ge=0)
    switch_at: float = Field(0.7, ge=0, le=1)
    start_at: float = Field(0.0, ge=0, le=1)
    # share of each micro-batch's sequences the MTP modules see (the first ceil(f x B)): MTP adds
    # ~50 % of the main model's FLOPs on the tiny shape (one block + a second 4096-wide head over
    # 4 layers), ~2 % at V3's 61 layers; 0.5 halves that extra cost, the loss stays an unbiased mean
    batch_fraction: float = Field(1.0, gt=0, le=1)

    @model_validator(mode="after")
    def _order(self) -> "MTPWeightConfig":
        if self.start_at > self.switch_at and self.initial != self.final:
            raise ValueError(f"mtp_weight.start_at ({self.start_at}) is after switch_at ({self.switch_at}): "
                             f"the initial weight would never be used; set start_at <= switch_at")
        return self


class ParallelConfig(_Strict):
    """Workers = pp x dp x ep (Ray Train workers, one process each).

    Every pipeline (the ``pp`` ranks that share a ``(dp, ep)`` position) reads its own slice of
    the batch; routed experts are split over ``ep`` ranks and replicated ``dp`` times inside each
    pipeline stage. ``pp > 1`` splits the layers into stages (model/parallel/README.md has the
    split rule) and runs ``microbatches`` micro-batches per step through ``schedule``."""

    pp: int = Field(1, ge=1)
    dp: int = Field(1, ge=1)
    ep: int = Field(1, ge=1)
    # pipeline schedule (torch.distributed.pipelining): 1f1b (one stage per rank), interleaved
    # (interleaved 1F1B, `virtual_stages` stages per rank), dualpipev (DeepSeek's DualPipe, V
    # variant: two stages per rank, the first and the last on rank 0)
    schedule: Literal["1f1b", "interleaved", "dualpipev"] = "1f1b"
    virtual_stages: int = Field(2, ge=2)   # stages per rank for `interleaved`
    # micro-batches per optimizer step per pipeline; null: train.grad_accum. With pp > 1 the
    # schedule needs at least as many micro-batches as stages (see check_schedule).
    microbatches: int | None = Field(None, ge=1)
    # 0: optimizer states replicated; 1: AdamW states (FP32 moments) sharded over the replicas of
    # each parameter (ZeRO-1, DeepSeek-V3's choice); 3: dense parameters, gradients and states
    # sharded over the dp x ep ranks with FSDP2 (pp 1 only; routed experts stay sharded by ep)
    zero: Literal[0, 1, 3] = 0
    # none | selective (recompute all but matmul/attention outputs) | full; null: train.activation_checkpointing
    activation_checkpointing: Literal["none", "selective", "full"] | None = None
    # when given, must equal pp x dp x ep (a guard for configs written with a worker count in mind)
    workers: int | None = Field(None, ge=1)
    # CPUs each worker reserves and uses as torch threads; null: the cluster's CPUs / workers
    # (2 cores, 2 workers -> 1 thread each: oversubscribed threads make small ops ~100x slower)
    cpus_per_worker: int | None = Field(None, ge=1)
    # GPUs: null = use them when the cluster has any (one per worker, NCCL); false = CPU + gloo
    use_gpu: bool | None = None

    @model_validator(mode="after")
    def _layout(self) -> "ParallelConfig":
        errors = []
        if self.workers is not None and self.workers != self.world_size:
            errors.append(f"parallel.workers ({self.workers}) must equal parallel.pp x parallel.dp x parallel.ep "
                          f"({self.pp} x {self.dp} x {self.ep} = {self.world_size})")
        if self.zero == 3 and self.pp > 1:
            errors.append(f"parallel.zero: 3 (FSDP2 fully_shard) works without pipelining only (pp 1, got pp "
                          f"{self.pp}): the pipeline schedule would have to drive FSDP's gather/reduce per stage "
                          f"and micro-batch, which the trainer does not do; use zero: 1 with pp > 1 "
                          f"(DeepSeek-V3's layout)")
        if errors:
            raise ValueError("; ".join(errors))
        return self

    @property
    def world_size(self) -> int:
        return self.pp * self.dp * self.ep

    @property
    def data_parallel_size(self) -> int:
        """Ways the batch is split: dp x ep (the pp ranks of a pipeline read the same data)."""
        return self.dp * self.ep

    @property
    def num_stages(self) -> int:
        from model.parallel.layout import stages_per_rank

        return self.pp * stages_per_rank(self.schedule, self.virtual_stages) if self.pp > 1 else 1

    def check_schedule(self, microbatches: int) -> list[str]:
        """What torch.distributed.pipelining's schedules require of the micro-batch count."""
        if self.pp == 1:
            return []
        m, stages = microbatches, self.num_stages
        if self.schedule == "1f1b" and m < self.pp:
            return [f"schedule 1f1b with pp {self.pp} needs at least {self.pp} micro-batches per step, got {m} "
                    f"(set parallel.microbatches)"]
        if self.schedule == "dualpipev" and m < stages:
            return [f"schedule dualpipev with pp {self.pp} runs {stages} stages and needs at least {stages} "
                    f"micro-batches per step, got {m} (set parallel.microbatches)"]
        if self.schedule == "interleaved":
            rounds = max(1, m // self.pp)
            if m % rounds:
                return [f"schedule interleaved needs micro-batches ({m}) to be a multiple of the rounds "
                        f"max(1, microbatches // pp) = {rounds}; use a multiple of pp ({self.pp})"]
        return []

    def check_model(self, num_hidden_layers: int, mtp_layers: int, n_routed_experts: int) -> list[str]:
        """Problems of this layout for a model shape (empty: fine)."""
        errors = []
        if n_routed_experts % self.ep:
            errors.append(f"the model's n_routed_experts ({n_routed_experts}) must be divisible by "
                          f"parallel.ep ({self.ep})")
        if self.pp > 1:
            from model.parallel.layout import split_layers

            try:
                split_layers(num_hidden_layers, mtp_layers, self.num_stages)
            except ValueError as e:
                errors.append(f"pipeline split ({self.pp} ranks x {self.num_stages // self.pp} stage(s) with "
                              f"schedule {self.schedule}): {e}")
        return errors


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
    # auto: bf16 autocast where the device has fast BF16 matmuls (CUDA; CPUs with AVX512-BF16/AMX),
    # else fp32 (on an AVX2-only CPU a BF16 matmul is 10-100x slower than FP32: measured here)
    precision: Literal["auto", "fp32", "bf16", "fp8"] = "auto"
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
        par = self.parallel
        if par.microbatches is not None and self.grad_accum not in (1, par.microbatches):
            errors.append(f"grad_accum ({self.grad_accum}) and parallel.microbatches ({par.microbatches}) both set "
                          f"the micro-batches per step; set one of them")
        per_step = par.data_parallel_size * self.num_microbatches
        if self.batch_size % per_step and par.pp == 1 and par.microbatches is None:
            errors.append(f"batch_size ({self.batch_size}) must be divisible by workers x grad_accum "
                          f"({par.world_size} x {self.grad_accum} = {per_step})")
        elif self.batch_size % per_step:
            errors.append(f"batch_size ({self.batch_size}) must be divisible by data-parallel ranks x micro-batches "
                          f"(dp {par.dp} x ep {par.ep} x {self.num_microbatches} = {per_step}; the pp ranks of a "
                          f"pipeline share the data)")
        errors += par.check_schedule(self.num_microbatches)
        if (par.activation_checkpointing is not None and self.activation_checkpointing != "none"
                and par.activation_checkpointing != self.activation_checkpointing):
            errors.append(f"activation_checkpointing ({self.activation_checkpointing}) and "
                          f"parallel.activation_checkpointing ({par.activation_checkpointing}) disagree; set one")
        if self.schedule.warmup_steps >= self.steps and self.schedule.kind != "constant":
            errors.append(f"schedule.warmup_steps ({self.schedule.warmup_steps}) must be below steps ({self.steps})")
        if par.pp > 1 and self.mtp_weight.batch_fraction < 1:
            errors.append(f"mtp_weight.batch_fraction ({self.mtp_weight.batch_fraction}) < 1 is not supported with "
                          f"pipeline parallelism (pp {par.pp}); use 1.0")
        if self.fault.at_step is not None and self.fault.rank >= par.world_size:
            errors.append(f"fault.rank ({self.fault.rank}) is not a rank of {par.world_size} workers")
        if errors:
            raise ValueError("invalid train config: " + "; ".join(errors))
        return self

    @property
    def num_microbatches(self) -> int:
        """Micro-batches per optimizer step on each rank (gradient accumulation / pipeline depth)."""
        return self.parallel.microbatches or self.grad_accum

    @property
    def checkpointing(self) -> str:
        """The activation checkpointing mode in force."""
        return self.parallel.activation_checkpointing or self.activation_checkpointing

    @property
    def micro_batch_size(self) -> int:
        return self.batch_size // (self.parallel.data_parallel_size * self.num_microbatches)

    @property
    def tokens_per_step(self) -> int:
        return self.batch_size * self.seq_len

    def check_against(self, model: Any) -> list[str]:
        """Problems of this config for a ``model.ModelConfig`` (empty: fine)."""
        errors = self.parallel.check_model(model.num_hidden_layers, model.num_nextn_predict_layers,
                                           model.n_routed_experts)
        if self.seq_len > model.max_position_embeddings:
            errors.append(f"seq_len ({self.seq_len}) exceeds the model's max_position_embeddings "
                          f"({model.max_position_embeddings})")
        return errors
