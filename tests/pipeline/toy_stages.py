"""Test-only stages (never part of the product): a -> b -> c, plus x independent of them.

Each stage appends its name to ``<log_dir>/calls`` so tests can count executions, and writes a
file derived from its input so tests can follow data through the DAG.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from pipeline.stage import Resources, Stage, StageConfig


class ToyConfig(StageConfig):
    log_dir: str = "/tmp/whale-toy"
    value: int = 1
    fail: bool = False
    # both concurrent stages wait until the other has started (proves they overlap)
    rendezvous: str | None = None


def _record(cfg: ToyConfig, name: str) -> None:
    d = Path(cfg.log_dir)
    d.mkdir(parents=True, exist_ok=True)
    with open(d / "calls", "a") as f:
        f.write(name + "\n")


def _make_run(name: str):
    def run(cfg: ToyConfig, ctx) -> dict:
        _record(cfg, name)
        if cfg.rendezvous:
            d = Path(cfg.rendezvous)
            d.mkdir(parents=True, exist_ok=True)
            (d / name).write_text(str(os.getpid()))
            deadline = time.time() + 60
            while len(list(d.iterdir())) < 2:
                if time.time() > deadline:
                    raise TimeoutError(f"{name}: the other concurrent stage never started")
                time.sleep(0.1)
        if cfg.fail:
            raise ValueError(f"{name} was told to fail")
        total = cfg.value + sum(int((p / "value.txt").read_text()) for p in ctx.inputs.values())
        (ctx.out / "value.txt").write_text(str(total))
        ctx.tracker.log_metric("toy/value", total, step=1)
        return {"value": total}

    run.__name__ = f"run_{name}"
    return run


def toy(name: str, upstream: tuple[str, ...] = ()) -> Stage:
    return Stage(name=name, config=ToyConfig, run=_make_run(name), upstream=upstream,
                 resources=Resources(cpus=0.5), code=("tests.pipeline.toy_stages",), key_metric="value")


STAGES = [toy("a"), toy("b", ("a",)), toy("c", ("b",)), toy("x")]
