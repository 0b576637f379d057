"""Connect to Ray: the cluster in ``RAY_ADDRESS`` (as under ``ray job submit``) or a local one.

A local Ray started here is recorded (``<cache>/ray-helpers/<driver pid>.json``: its processes
and their start times). A driver that is killed cannot shut Ray down, and Ray's helpers then
linger for minutes; the next local start reaps those of every recorded driver that is gone.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import sys
from pathlib import Path

from pipeline.config import RayConfig
from pipeline.storage import cache_dir


def connect(cfg: RayConfig, verbose: bool = True) -> bool:
    """Initialise Ray once; returns True when this process started the cluster itself.

    ``verbose=False``: workers' output is not streamed to this driver (the runner sends each stage's
    output to its log file and tails it) and Ray's own driver-side logging follows the Python logging
    set up by ``console.quiet_driver`` instead of printing to the console."""
    import ray

    if ray.is_initialized():
        return False
    if not verbose:
        from pipeline.console import output_to_driver_log

        with output_to_driver_log():
            return _init(ray, cfg, verbose)
    return _init(ray, cfg, verbose)


def _init(ray, cfg: RayConfig, verbose: bool) -> bool:
    quiet = {} if verbose else {"log_to_driver": False, "configure_logging": False}
    address = cfg.address or os.environ.get("RAY_ADDRESS")
    if address:
        # Under `ray job submit` the job's runtime env (working dir) is inherited automatically.
        ray.init(address=address, logging_level=logging.WARNING, **quiet)
        return False
    reap_orphaned_helpers()
    before = _children()
    ray.init(num_cpus=cfg.num_cpus, include_dashboard=False, logging_level=logging.WARNING,
             **{"configure_logging": True, **quiet})
    record_helpers(exclude=before)  # Ray's processes only (not, say, the MLflow server started before)
    return True


def _children() -> set[int]:
    import psutil

    return {c.pid for c in psutil.Process().children(recursive=True)}


def _helpers_dir() -> Path:
    return cache_dir() / "ray-helpers"


def record_helpers(exclude: set[int] = frozenset()) -> Path:
    """Write down the processes this driver started (Ray's gcs, raylet, ...), but ``exclude``."""
    import psutil

    me = psutil.Process()
    procs = []
    for child in me.children(recursive=True):
        if child.pid in exclude:
            continue
        try:
            procs.append({"pid": child.pid, "started": child.create_time(), "name": child.name()})
        except psutil.Error:
            pass
    path = _helpers_dir() / f"{me.pid}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"owner": me.pid, "owner_started": me.create_time(), "procs": procs}))
    return path


def reap_orphaned_helpers() -> int:
    """Kill the recorded helpers of drivers that are gone; returns how many were still running."""
    import psutil

    def same(pid: int, started: float) -> bool:
        try:
            return abs(psutil.Process(pid).create_time() - started) < 1e-3
        except psutil.Error:
            return False

    reaped = 0
    for path in sorted(_helpers_dir().glob("*.json")) if _helpers_dir().exists() else ():
        try:
            state = json.loads(path.read_text())
        except (OSError, ValueError):
            path.unlink(missing_ok=True)
            continue
        if same(state["owner"], state["owner_started"]):
            continue  # its driver still runs
        for proc in state["procs"]:
            if same(proc["pid"], proc["started"]):  # not a recycled pid
                try:
                    os.kill(proc["pid"], signal.SIGKILL)
                    reaped += 1
                except OSError:
                    pass
        path.unlink(missing_ok=True)
    if reaped:
        print(f"Ray: reaped {reaped} process(es) left by a local Ray whose driver was killed", file=sys.stderr)
    return reaped


def cluster_summary() -> str:
    import ray

    res = ray.cluster_resources()
    nodes = [n for n in ray.nodes() if n.get("Alive")]
    return (f"{len(nodes)} node(s), {res.get('CPU', 0):g} CPU, {res.get('GPU', 0):g} GPU, "
            f"{res.get('memory', 0) / 1024**3:.1f} GiB")


def owns_cluster() -> bool:
    """Whether the Ray cluster dies with this process (started in-process, no address)."""
    return not os.environ.get("RAY_ADDRESS")
