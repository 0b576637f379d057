"""The one training loop, shared by pretrain and distill (SFT): Ray Train workers, data + expert
parallelism, BF16/FP8, exact checkpoint/resume, fault tolerance, rank-0 tracking.

    from stages.common.training import TrainerConfig, TrainJob, fit

    job = TrainJob(config=cfg.train, model_config=model_config,      # or init_from=<hf folder>
                   train_data=MyData(...), eval_data=MyEval(...), tracker=ctx.tracker, seed=ctx.seed)
    result = fit(job, storage=ctx.out / "ray", name="pretrain")
    model = load_model(<checkpoint dir>)                             # any layout -> full model

See README.md in this folder for the data contract and the loss, checkpoint and logging rules.
``config`` is light (pydantic only) so stage configs can embed it; everything else loads lazily.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from stages.common.training.config import (
    CheckpointConfig,
    EvalConfig,
    FaultConfig,
    MTPWeightConfig,
    OptimizerConfig,
    ParallelConfig,
    ScheduleConfig,
    TrainerConfig,
)

_LAZY = {
    "TrainJob": "stages.common.training.worker",
    "train_worker": "stages.common.training.worker",
    "fit": "stages.common.training.runner",
    "place_workers": "stages.common.training.runner",
    "TrainResult": "stages.common.training.runner",
    "ResourcesUnavailable": "stages.common.training.runner",
    "TrainStep": "stages.common.training.step",
    "StepStats": "stages.common.training.step",
    "LossTerm": "stages.common.training.step",
    "TrainState": "stages.common.training.state",
    "BatchSource": "stages.common.training.batches",
    "TrainData": "stages.common.training.batches",
    "EvalData": "stages.common.training.batches",
    "evaluate": "stages.common.training.evaluation",
    "load_model": "stages.common.training.checkpoint",
    "CheckpointError": "stages.common.training.checkpoint",
    "learning_rate": "stages.common.training.schedule",
    "mtp_weight": "stages.common.training.schedule",
}

__all__ = ["CheckpointConfig", "EvalConfig", "FaultConfig", "MTPWeightConfig", "OptimizerConfig",
           "ParallelConfig", "ScheduleConfig", "TrainerConfig", *_LAZY]

if TYPE_CHECKING:
    from stages.common.training.batches import BatchSource, EvalData, TrainData  # noqa: F401
    from stages.common.training.checkpoint import CheckpointError, load_model  # noqa: F401
    from stages.common.training.evaluation import evaluate  # noqa: F401
    from stages.common.training.runner import ResourcesUnavailable, TrainResult, fit, place_workers  # noqa: F401
    from stages.common.training.schedule import learning_rate, mtp_weight  # noqa: F401
    from stages.common.training.state import TrainState  # noqa: F401
    from stages.common.training.step import LossTerm, StepStats, TrainStep  # noqa: F401
    from stages.common.training.worker import TrainJob, train_worker  # noqa: F401


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'stages.common.training' has no attribute {name!r}")
