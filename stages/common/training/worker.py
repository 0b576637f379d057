"""The training function every Ray Train worker runs (``TorchTrainer(train_worker, ...)``).

    layout groups -> model (seeded init or a HF folder) -> keep this rank's pipeline stages and
    experts -> precision -> ZeRO-3: FSDP2 shards of the dense parameters -> AdamW (ZeRO-1:
    sharded states) -> resume from
    ray.train.get_checkpoint() -> loop:
         micro-batches from this rank's source -> TrainStep -> log (rank 0)
         -> evaluate every M steps -> checkpoint every N steps (ray.train.report)

Collective discipline: every rank runs the same steps, evaluations and checkpoints, so every
collective (gradient buckets, the all-to-all inside MoE layers, ``ray.train.report``'s barrier)
is issued the same number of times everywhere. Only rank 0 logs (``tracker.for_rank``) and
returns the run's summary.
"""

from __future__ import annotations

import shutil
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from typing import Any

import torch

from model import DeepSeekV3, ModelConfig
from model.fp8 import prepare_model
from model.parallel import ParallelLayout, init_parallel, shard_experts
from pipeline.tracking import Tracker
from stages.common.training.batches import EvalData, TrainData, check_batch
from stages.common.training.checkpoint import load_checkpoint, save_checkpoint
from stages.common.training.config import TrainerConfig
from stages.common.training.evaluation import evaluate
from stages.common.training.faults import FaultInjector
from stages.common.training.perf import device_peak, resolve_precision, train_flops_per_token
from stages.common.training.schedule import learning_rate, mtp_weight
from stages.common.training.state import TrainState
from stages.common.training.step import LossTerm, TrainStep, build_optimizer


@dataclass
class TrainJob:
    """Everything the workers need; pickled once to each of them.

    model_config  the architecture; None with ``init_from`` (then read from that folder)
    init_from     a ``save_pretrained`` folder to start from (e.g. SFT of the base model);
                  None: random init from ``seed``
    train_data    recipe opened per rank (:class:`stages.common.training.batches.TrainData`)
    eval_data     recipe for the validation sets, or None
    loss_terms    extra losses on the logits (:class:`stages.common.training.step.LossTerm` recipes,
                  e.g. distillation to a teacher), opened in every worker
    """

    config: TrainerConfig
    train_data: TrainData
    model_config: ModelConfig | None = None
    eval_data: EvalData | None = None
    init_from: str | None = None
    tracker: Tracker = field(default_factory=Tracker.disabled)
    seed: int = 0
    label: str = "train"                # console prefix: [label] step 10/300 ...
    loss_terms: tuple[LossTerm, ...] = ()
    # filled in by the runner
    threads: int = 1
    use_gpu: bool = False
    fault_marker: str | None = None
    local_mode: bool = False            # ScalingConfig(num_workers=0): in-process, no Ray storage


def train_worker(job: TrainJob) -> dict[str, Any] | None:
    """The Ray Train entry point: set up, resume, train; rank 0 returns the run's result."""
    return WorkerRun(job).train()


class WorkerRun:
    """One worker's part of a run: its model shard, optimizer, data source and counters."""

    def __init__(self, job: TrainJob):
        import ray.train

        self.job, cfg = job, job.config
        ctx = ray.train.get_context()
        self.rank, world = ctx.get_world_rank(), ctx.get_world_size()
        torch.set_num_threads(job.threads)
        self.device = _device(job)
        par = cfg.parallel
        self.layout = ParallelLayout(dp=par.dp, ep=par.ep, pp=par.pp)
        if world != self.layout.world_size:
            raise RuntimeError(f"Ray Train started {world} workers for layout {self.layout.describe()}")
        self.groups = init_parallel(self.layout, self.device.type)
        self.tracker = job.tracker.for_rank(self.rank)
        self.log = _console(job.label, self.rank)

        self.model = _build_model(job, self.device)
        self.pipeline = None
        if par.pp > 1:   # keep this rank's stages (before anything that walks the modules)
            from model.parallel.pipeline import Pipeline

            self.pipeline = Pipeline(self.model, self.groups, schedule=par.schedule,
                                     microbatches=cfg.num_microbatches, virtual_stages=par.virtual_stages,
                                     device=self.device)
        shard_experts(self.model, self.groups)
        self.precision = resolve_precision(cfg.precision, self.device)
        self.fp8_modules = prepare_model(self.model, self.precision)
        opt = cfg.optimizer
        reducer = None
        if par.zero == 1:
            from model.parallel.zero import ZeroAdamW

            self.optimizer = ZeroAdamW(self.model, self.groups, lr=opt.lr, betas=opt.betas,
                                       weight_decay=opt.weight_decay, eps=opt.eps)
        else:
            if par.zero == 3:   # FSDP2: dense parameters become shards; AdamW's moments follow them
                from model.parallel.data_parallel import GradientReducer
                from model.parallel.fsdp import shard_dense_parameters

                shard_dense_parameters(self.model, self.groups)
                reducer = GradientReducer(self.model, self.groups, dense_sharded=True)
            self.optimizer = build_optimizer(self.model, opt.lr, opt.betas, opt.weight_decay, opt.eps)
        terms = [(t.name, t.weight, t.open(self.device)) for t in job.loss_terms]
        self.train_step = TrainStep(self.model, self.optimizer, self.groups, precision=self.precision,
                                    grad_clip=opt.grad_clip, bias_update_rate=cfg.bias_update_rate, device=self.device,
                                    loss_terms=terms, pipeline=self.pipeline, reducer=reducer,
                                    mtp_batch_fraction=cfg.mtp_weight.batch_fraction)
        # the pp ranks of a pipeline read the same data: sources are opened per data-parallel rank
        data_rank, data_world = self.layout.data_rank(self.rank), self.layout.stage_size
        self.source = job.train_data.open(data_rank, data_world, cfg.micro_batch_size, cfg.seq_len, job.seed)
        self.eval_sets = (job.eval_data.open(data_rank, data_world, cfg.micro_batch_size, cfg.seq_len,
                                             cfg.eval.batches)
                          if job.eval_data is not None else {})
        token_bytes = job.eval_data.token_bytes() if job.eval_data is not None else None
        self.token_bytes = (torch.tensor(token_bytes, dtype=torch.int64, device=self.device)
                            if token_bytes is not None else None)
        self.faults = FaultInjector(cfg.fault, job.fault_marker, self.rank)
        self.state = TrainState()
        self.window = _Window()
        self.last_moe: dict[str, float] = {}
        self.local_checkpoints: list[str] = []

    # -- the run ---------------------------------------------------------------------------------
    def train(self) -> dict[str, Any] | None:
        cfg = self.job.config
        self.resume()
        self.measure_peak()
        last = min(cfg.steps, cfg.stop_after_step or cfg.steps)
        self.log(f"{self.layout.describe()}, {self.job.threads} thread(s)/worker on {self.device}, precision "
                 f"{self.precision} ({cfg.precision}), steps {self.state.step + 1}..{last} of {cfg.steps}, micro-batch "
                 f"{cfg.micro_batch_size}x{cfg.seq_len} x{cfg.num_microbatches}, peak {self.peak / 1e12:.2f} TFLOP/s "
                 f"({self.peak_source})")
        while self.state.step < last:
            step = self.state.step + 1
            self.faults.maybe_crash(step, "step")
            row = self.step(step)
            if step % cfg.log_every == 0 or step == last:
                self.log_window(step, last, row)
            if self.eval_sets and (step % cfg.eval.every == 0 or step == last):
                self.evaluate(step)
            if step % cfg.checkpoint.every == 0 or step == last:
                self.save(step, row)
        if self.rank != 0:
            return None
        summary = {**_summary(self.state, self.flops_per_token, self.peak), "precision": self.precision}
        return {"state": self.state.to_dict(), "summary": summary,
                "peak_flops": self.peak, "peak_source": self.peak_source, "flops_per_token": self.flops_per_token}

    def resume(self) -> None:
        """Continue from Ray Train's latest checkpoint of this run, if there is one."""
        import ray.train

        checkpoint = ray.train.get_checkpoint()
        if checkpoint is not None:
            with checkpoint.as_directory() as d:
                meta, rank_state = load_checkpoint(d, model=self.model, optimizer=self.optimizer, groups=self.groups)
            self.state = TrainState.from_dict(meta["trainer_state"])
            self.source.load_state_dict(rank_state["data"] if rank_state else meta["data_state"])
            if rank_state:
                torch.set_rng_state(rank_state["rng"])
            self.log(f"resumed from step {self.state.step} ({checkpoint.path})")
        self.state.attempts.append(self.state.step)

    def measure_peak(self) -> None:
        """The MFU denominator: every worker's matmul peak in the training dtype, measured at once, summed."""
        peak, self.peak_source = device_peak(self.device, self.precision)
        self.peak = self.groups.all_reduce_(torch.tensor([peak], dtype=torch.float64, device=self.device)).item()
        self.flops_per_token = train_flops_per_token(self.model.config, self.job.config.seq_len)
        if self.state.step == 0:
            self.tracker.log_metrics({"perf/peak_flops": self.peak, "perf/flops_per_token": self.flops_per_token,
                                      "model/parameters": float(sum(p.numel() for p in self.model.parameters()))})
            self.tracker.set_tags({"train.precision": self.precision, "train.peak_source": self.peak_source,
                                   "train.layout": self.layout.describe(),
                                   "train.fp8_modules": len(self.fp8_modules)})

    def step(self, step: int) -> dict[str, float]:
        cfg = self.job.config
        t0 = time.perf_counter()
        micro = [self.source.next_batch() for _ in range(cfg.num_microbatches)]
        if step == self.state.attempts[-1] + 1:   # the source's first batches: check its output once
            for mb in micro:
                check_batch(mb, cfg.micro_batch_size, cfg.seq_len)
        stats = self.train_step(micro, learning_rate(step, cfg.steps, cfg.optimizer.lr, cfg.schedule),
                                mtp_weight(step, cfg.steps, cfg.mtp_weight))
        _sync(self.device)
        seconds = time.perf_counter() - t0
        self.window.add(stats, seconds)
        self.last_moe = stats.moe
        if stats.skipped:
            self.log(f"step {step}: non-finite loss or gradient (loss {stats.loss}, |g| {stats.grad_norm}); "
                     f"update skipped")
        return self.state.record(stats, seconds)

    def log_window(self, step: int, last: int, row: dict[str, float]) -> None:
        w, mfu_of = self.window, self.flops_per_token / self.peak
        tok_s = w.tokens / w.seconds
        metrics = {f"train/{k}": row[k] for k in ("loss", "lm_loss", "mtp_loss", "balance_loss", "lr", "grad_norm",
                                                  "mtp_weight")}
        if row["mtp_weight"] == 0:   # the MTP modules did not run: no loss to show
            metrics.pop("train/mtp_loss")
        if w.forward_seconds:        # CPU: MTP's share of the forward time over the window
            metrics["perf/mtp_forward_share"] = w.mtp_forward_seconds / w.forward_seconds
        metrics.update({f"train/{name}": row[name] for name, _, _ in self.train_step.loss_terms})
        metrics.update({"train/tokens": self.state.input_tokens, "train/skipped_steps": self.state.skipped_steps,
                        "perf/tokens_per_s": tok_s, "perf/mfu": tok_s * mfu_of, "perf/step_s": w.seconds / w.steps,
                        **self.last_moe})
        if self.model.config.expert_capacity_factor is not None:
            metrics["moe/dropped_tokens"] = w.dropped
        if self.pipeline is not None:   # rank 0's view of the pipeline (it holds stage 0)
            metrics["perf/bubble"] = self.pipeline.last_bubble
            metrics["perf/bubble_theory"] = self.pipeline.theoretical_bubble()
        self.tracker.log_metrics(metrics, step=step)
        self.log(f"step {step}/{last} loss {row['loss']:.4f} (lm {row['lm_loss']:.4f}) lr {row['lr']:.2e} "
                 f"|g| {row['grad_norm']:.2f} {tok_s:,.0f} tok/s mfu {100 * tok_s * mfu_of:.1f}% "
                 f"maxvio {row['maxvio']:.2f}")
        self.window = _Window()

    def evaluate(self, step: int) -> None:
        val = evaluate(self.model, self.eval_sets, self.groups, token_bytes=self.token_bytes,
                       precision=self.precision, device=self.device, pipeline=self.pipeline)
        self.state.evals.append({"step": step, **val})
        self.tracker.log_metrics(val, step=step)
        self.log(f"step {step}: " + ", ".join(f"{k} {v:.4f}" for k, v in sorted(val.items())))

    def save(self, step: int, row: dict[str, float]) -> None:
        """Write this rank's part of the step's checkpoint and hand it to Ray Train (a barrier:
        every rank reports at the same steps)."""
        import ray.train

        cfg, state = self.job.config, self.state
        directory = tempfile.mkdtemp(prefix=f"whale-ckpt-{step:08d}-")
        meta = None
        if self.rank == 0:
            meta = {"step": step, "world_size": self.groups.world_size,
                    "layout": {"pp": cfg.parallel.pp, "dp": cfg.parallel.dp, "ep": cfg.parallel.ep,
                               "zero": cfg.parallel.zero},
                    "model_config": self.model.config.to_hf_dict(), "trainer_state": state.to_dict(),
                    "data_state": self.source.state_dict()}
        save_checkpoint(directory, model=self.model, optimizer=self.optimizer, groups=self.groups,
                        rank_state={"data": self.source.state_dict(), "rng": torch.get_rng_state()}, meta=meta,
                        midway=lambda: self.faults.maybe_crash(step, "save"))
        metrics = {"step": step, "loss": row["loss"], "tokens": state.input_tokens}
        if state.evals and state.evals[-1]["step"] == step:
            metrics.update({k: v for k, v in state.evals[-1].items() if k != "step"})
        ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(directory),
                         checkpoint_dir_name=f"checkpoint-{step:08d}",
                         delete_local_checkpoint_after_upload=not self.job.local_mode)
        if self.job.local_mode:   # in-process, the reported directory *is* the checkpoint: keep the last
            for old in self.local_checkpoints:
                shutil.rmtree(old, ignore_errors=True)
            self.local_checkpoints = [directory]


# ------------------------------------------------------------------------------------------------
def _build_model(job: TrainJob, device: torch.device) -> DeepSeekV3:
    cfg = job.config
    torch.manual_seed(job.seed)   # the same init on every rank: dense replicas start equal
    if job.init_from:
        model = DeepSeekV3.from_pretrained(job.init_from)
        if job.model_config is not None and _arch(job.model_config) != _arch(model.config):
            raise ValueError(f"model_config differs from the architecture saved in {job.init_from}")
    elif job.model_config is not None:
        model = DeepSeekV3(job.model_config)
    else:
        raise ValueError("TrainJob needs model_config or init_from")
    model.config.activation_checkpointing = cfg.checkpointing
    return model.to(device).train()


def _arch(config: ModelConfig) -> dict:
    training_only = {"router_bias_update_rate", "seq_aux_loss_alpha", "mtp_loss_weight",
                     "expert_capacity_factor", "activation_checkpointing"}
    return {k: v for k, v in config.model_dump().items() if k not in training_only}


def _device(job: TrainJob) -> torch.device:
    if not job.use_gpu:
        return torch.device("cpu")
    import ray.train.torch

    device = ray.train.torch.get_device()
    torch.cuda.set_device(device)
    return device


class _Window:
    """Sums over the steps since the last log line."""

    def __init__(self):
        self.steps, self.tokens, self.seconds, self.dropped = 0, 0, 0.0, 0
        self.forward_seconds = self.mtp_forward_seconds = 0.0

    def add(self, stats, seconds: float) -> None:
        self.steps += 1
        self.forward_seconds += stats.forward_seconds
        self.mtp_forward_seconds += stats.mtp_forward_seconds
        self.tokens += stats.input_tokens
        self.seconds += seconds
        self.dropped += stats.dropped_tokens


def _summary(state: TrainState, flops_per_token: float, peak: float) -> dict[str, float | int]:
    """Headline numbers of the whole run. Throughput uses the median step time, leaving out the
    first two steps of every attempt (allocator and thread-pool warm-up)."""
    warm = {a + k for a in state.attempts for k in (1, 2)}
    rates = [r["tokens"] / r["step_s"] for r in state.history if r["step"] not in warm] \
        or [r["tokens"] / r["step_s"] for r in state.history]
    tok_s = statistics.median(rates) if rates else 0.0
    out: dict[str, float | int] = {
        "steps": state.step, "train_tokens": state.input_tokens, "tokens_per_s": tok_s,
        "mfu": tok_s * flops_per_token / peak if peak else 0.0, "train_seconds": state.train_seconds,
        "skipped_steps": state.skipped_steps, "restarts": len(state.attempts) - 1,
    }
    if state.history:
        tail = state.history[-min(10, len(state.history)):]
        out["train_loss"] = sum(r["loss"] for r in tail) / len(tail)
        out["train_lm_loss"] = sum(r["lm_loss"] for r in tail) / len(tail)
    if state.evals:
        out.update({k.replace("/", "_"): v for k, v in state.evals[-1].items() if k != "step"})
    return out


def _console(label: str, rank: int):
    def log(msg: str) -> None:
        # not print(): Ray Train patches it to log *and* echo, so every line would show twice
        if rank == 0:
            sys.stderr.write(f"[{label}] {msg}\n")
            sys.stderr.flush()
    return log


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
