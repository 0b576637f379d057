"""Fault injection for the fault-tolerance tests: one worker dies, once per run.

The worker process exits hard (``os._exit``, as a segfault or an OOM kill would), so Ray Train
sees a dead actor, tears the worker group down and starts a new one from the latest checkpoint
(``FailureConfig(max_failures)``). A marker file in the run's storage records that the fault
fired, so the restarted workers pass the same step without dying again.

Before dying, the worker waits until Ray has committed every checkpoint reported so far
(``get_all_reported_checkpoints(COMMITTED)``): Ray registers a checkpoint only when its controller
next polls the workers (every ~2 s), and a process killed inside that window loses its last
report, which would make "restarts from the latest checkpoint" a race in tests.
"""

from __future__ import annotations

import os
import sys

import fsspec

from stages.common.training.config import FaultConfig


class FaultInjector:
    def __init__(self, cfg: FaultConfig, marker_uri: str | None, rank: int):
        self.cfg, self.marker_uri, self.rank = cfg, marker_uri, rank

    def armed(self, step: int, point: str) -> bool:
        c = self.cfg
        if c.at_step != step or c.during != point or c.rank != self.rank or not self.marker_uri:
            return False
        fs, path = fsspec.core.url_to_fs(self.marker_uri)
        return not fs.exists(path)

    def maybe_crash(self, step: int, point: str) -> None:
        if not self.armed(step, point):
            return
        import ray.train

        ray.train.get_all_reported_checkpoints(consistency_mode=ray.train.CheckpointConsistencyMode.COMMITTED)
        fs, path = fsspec.core.url_to_fs(self.marker_uri)
        fs.makedirs(os.path.dirname(path), exist_ok=True)
        fs.touch(path)
        sys.stderr.write(f"[fault] rank {self.rank}: injected crash at step {step} ({point})\n")
        sys.stderr.flush()
        os._exit(17)
