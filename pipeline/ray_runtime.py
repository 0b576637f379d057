"""Connect to Ray: the cluster in ``RAY_ADDRESS`` (as under ``ray job submit``) or a local one."""

from __future__ import annotations

import logging
import os

from pipeline.config import RayConfig


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
    ray.init(num_cpus=cfg.num_cpus, include_dashboard=False, logging_level=logging.WARNING,
             **{"configure_logging": True, **quiet})
    return True


def cluster_summary() -> str:
    import ray

    res = ray.cluster_resources()
    nodes = [n for n in ray.nodes() if n.get("Alive")]
    return (f"{len(nodes)} node(s), {res.get('CPU', 0):g} CPU, {res.get('GPU', 0):g} GPU, "
            f"{res.get('memory', 0) / 1024**3:.1f} GiB")


def owns_cluster() -> bool:
    """Whether the Ray cluster dies with this process (started in-process, no address)."""
    return not os.environ.get("RAY_ADDRESS")
