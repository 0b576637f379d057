"""Driver side: place the workers, run Ray Train's ``TorchTrainer``, hand back the result.

    result = fit(job, storage=ctx.out / "ray", name="pretrain")
    result.summary           # steps, tokens_per_s, mfu, val_bpb, ...
    result.state             # TrainState: per-step history, evaluations, summed expert loads
    result.checkpoint_dir()  # the last checkpoint, as a local directory (context manager)

Before anything starts, the config is checked against the model and the cluster: a
``ScalingConfig`` that Ray cannot place makes Ray Train V2 wait and reschedule forever, so a
missing CPU or GPU is an immediate, explicit error here instead.

The run lives in ``<storage>/<name>`` (Ray Train's checkpoints and snapshot). Calling ``fit``
again with the same storage and name resumes from its latest checkpoint, whether the previous
driver finished, stopped at ``stop_after_step`` or died; inside one ``fit``, worker failures
restart the group from the latest checkpoint up to ``max_failures`` times.
"""

from __future__ import annotations

import contextlib
import os
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from stages.common.training.config import FaultConfig
from stages.common.training.state import TrainState
from stages.common.training.worker import TrainJob, train_worker

FAULT_ENV = "WHALE_FAULT_AT_STEP"   # plus WHALE_FAULT_DURING (step|save), WHALE_FAULT_RANK


class ResourcesUnavailable(RuntimeError):
    """The cluster cannot host the requested workers (now or ever)."""


@dataclass
class TrainResult:
    summary: dict[str, Any]
    state: TrainState
    checkpoint: Any                 # ray.train.Checkpoint of the last step (None if none was saved)
    run_path: str                   # <storage>/<name>, or "" in local mode
    peak_flops: float
    peak_source: str
    flops_per_token: float

    @contextlib.contextmanager
    def checkpoint_dir(self):
        if self.checkpoint is None:
            raise RuntimeError("the run saved no checkpoint")
        with self.checkpoint.as_directory() as d:
            yield Path(d)


def fit(job: TrainJob, *, storage: str | Path, name: str, local: bool = False,
        placement_timeout_s: float = 60.0) -> TrainResult:
    """Train ``job`` on Ray Train. ``local=True`` runs the single worker in this process
    (``ScalingConfig(num_workers=0)``: no Ray cluster, no fault tolerance, for tests and benchmarks)."""
    from ray.train import CheckpointConfig, FailureConfig, LoggingConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    cfg = job.config
    if job.model_config is not None:
        problems = cfg.check_against(job.model_config)
        if problems:
            raise ValueError("train config does not fit the model: " + "; ".join(problems))
    cfg = cfg.model_copy(update={"fault": _fault_from_env(cfg.fault)})
    workers = cfg.parallel.world_size
    storage = str(storage)
    if local:
        if workers != 1:
            raise ValueError(f"local mode runs one worker; the layout asks for {workers}")
        import torch

        job = replace(job, config=cfg, threads=cfg.parallel.cpus_per_worker or torch.get_num_threads(),
                      use_gpu=False, fault_marker=None, local_mode=True)
        scaling = ScalingConfig(num_workers=0)
    else:
        use_gpu, threads = place_workers(workers, cfg.parallel.cpus_per_worker, cfg.parallel.use_gpu,
                                         placement_timeout_s)
        marker = f"{storage.rstrip('/')}/{name}/fault-at-step-{cfg.fault.at_step}.fired" if cfg.fault.at_step else None
        job = replace(job, config=cfg, threads=threads, use_gpu=use_gpu, fault_marker=marker, local_mode=False)
        resources = {"CPU": threads, **({"GPU": 1} if use_gpu else {})}
        scaling = ScalingConfig(num_workers=workers, use_gpu=use_gpu, resources_per_worker=resources)

    trainer = TorchTrainer(
        _entry, train_loop_config={"job": job}, scaling_config=scaling,
        run_config=RunConfig(name=name, storage_path=storage,
                             failure_config=FailureConfig(max_failures=cfg.max_failures),
                             checkpoint_config=CheckpointConfig(num_to_keep=cfg.checkpoint.keep),
                             logging_config=LoggingConfig(log_level="WARNING")))
    result = trainer.fit()
    if result.error is not None:
        raise RuntimeError(f"training failed after {cfg.max_failures} restart(s): {result.error}") from result.error
    out = result.return_value
    if not out:
        raise RuntimeError("training finished but rank 0 returned nothing")
    return TrainResult(summary=out["summary"], state=TrainState.from_dict(out["state"]),
                       checkpoint=result.checkpoint, run_path="" if local else f"{storage.rstrip('/')}/{name}",
                       peak_flops=out["peak_flops"], peak_source=out["peak_source"],
                       flops_per_token=out["flops_per_token"])


def _entry(config: dict) -> dict | None:
    return train_worker(config["job"])


def place_workers(workers: int, cpus_per_worker: int | None, use_gpu: bool | None,
                  timeout_s: float = 60.0) -> tuple[bool, int]:
    """(use_gpu, CPUs per worker) that this Ray cluster can host, or ResourcesUnavailable.

    Fails at once when the cluster can never host the workers; waits up to ``timeout_s`` when it
    could but other work holds the resources now."""
    import ray

    if not ray.is_initialized():
        ray.init(include_dashboard=False)
    nodes = [n["Resources"] for n in ray.nodes() if n.get("Alive")]
    total_cpu = sum(n.get("CPU", 0) for n in nodes)
    total_gpu = sum(n.get("GPU", 0) for n in nodes)
    if use_gpu is None:
        use_gpu = total_gpu >= workers
    if use_gpu and total_gpu < workers:
        raise ResourcesUnavailable(f"{workers} GPU workers requested but the cluster has {total_gpu:g} GPUs; "
                                   f"lower parallel.dp/ep or set parallel.use_gpu: false")
    if cpus_per_worker is None:   # share the CPUs: oversubscribed threads are far slower than fewer
        cpus_per_worker = max(1, int(total_cpu // workers))
        cpus_per_worker = min(cpus_per_worker, int(max((n.get("CPU", 0) for n in nodes), default=1)) or 1)
    fits = sum(int(n.get("CPU", 0) // cpus_per_worker) for n in nodes)
    if fits < workers:
        raise ResourcesUnavailable(
            f"{workers} workers x {cpus_per_worker} CPU(s) cannot be placed: the cluster has {total_cpu:g} CPUs "
            f"over {len(nodes)} node(s) (room for {fits} such workers). Lower parallel.dp/ep or "
            f"parallel.cpus_per_worker, or add nodes.")
    need = {"CPU": workers * cpus_per_worker, "GPU": workers if use_gpu else 0}
    deadline = time.monotonic() + timeout_s
    while True:
        free = ray.available_resources()
        short = {k: v for k, v in need.items() if v and free.get(k, 0) < v}
        if not short:
            return bool(use_gpu), cpus_per_worker
        if time.monotonic() > deadline:
            have = ", ".join(f"{k}: {free.get(k, 0):g}" for k in short)
            raise ResourcesUnavailable(f"waited {timeout_s:.0f}s for {need} but only {{{have}}} is free: "
                                       f"other Ray work holds the rest")
        time.sleep(1.0)


def _fault_from_env(fault: FaultConfig) -> FaultConfig:
    step = os.environ.get(FAULT_ENV)
    if not step:
        return fault
    return FaultConfig(at_step=int(step), during=os.environ.get("WHALE_FAULT_DURING", fault.during),
                       rank=int(os.environ.get("WHALE_FAULT_RANK", fault.rank)))
