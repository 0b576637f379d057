"""A test-only stage (never part of the product) whose work is a datatrove pipeline of N tasks,
as curate's passes are: each task appends its rank to ``<log_dir>/calls``; one task can SIGKILL
the whole attempt (its process group), as a lost node would."""

from __future__ import annotations

import os
import signal
from pathlib import Path

from datatrove.executor.local import LocalPipelineExecutor
from datatrove.pipeline.base import PipelineStep

from pipeline.stage import Stage, StageConfig


class ResumeConfig(StageConfig):
    log_dir: str
    tasks: int = 6
    kill_at: int | None = None  # task rank that kills the attempt


class CountTask(PipelineStep):
    name = "count"

    def __init__(self, log_dir: str, kill_at: int | None):
        super().__init__()
        self.log_dir, self.kill_at = log_dir, kill_at

    def run(self, data=None, rank: int = 0, world_size: int = 1):
        with open(Path(self.log_dir) / "calls", "a") as f:
            f.write(f"{rank}\n")
        if rank == self.kill_at and os.environ.get("WHALE_TEST_KILL") == "1":
            os.killpg(os.getpgrp(), signal.SIGKILL)  # the attempt and its helpers, at once
        yield from ()


def run(cfg: ResumeConfig, ctx) -> dict:
    executor = LocalPipelineExecutor([CountTask(cfg.log_dir, cfg.kill_at)], tasks=cfg.tasks, workers=1,
                                     logging_dir=str(ctx.out / "logs"), skip_completed=True)
    executor.run()
    done = len(list((ctx.out / "logs" / "completions").glob("*")))
    return {"tasks_completed": done}


STAGE = Stage(name="resumable", config=ResumeConfig, run=run)
