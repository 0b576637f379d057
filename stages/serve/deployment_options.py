"""Ray Serve deployment options from the serve config, shared by both backends (no Ray import)."""

from __future__ import annotations

from stages.serve.config import ServeConfig


def serve_deployment_options(cfg: ServeConfig) -> dict:
    """Ray Serve @deployment options from the config (replicas or autoscaling, queue limits,
    resources, health checks, graceful shutdown)."""
    d = cfg.deployment
    actor: dict = {"num_cpus": d.num_cpus, "num_gpus": d.num_gpus}
    if d.memory_gb:
        actor["memory"] = int(d.memory_gb * 1024**3)
    opts = dict(
        ray_actor_options=actor, max_ongoing_requests=d.max_ongoing_requests,
        max_queued_requests=d.max_queued_requests, health_check_period_s=d.health_check_period_s,
        health_check_timeout_s=d.health_check_timeout_s,
        graceful_shutdown_wait_loop_s=d.graceful_shutdown_wait_loop_s,
        graceful_shutdown_timeout_s=d.graceful_shutdown_timeout_s,
        logging_config={"log_level": d.log_level},
    )
    if d.autoscaling is not None:
        a = d.autoscaling
        opts["autoscaling_config"] = {"min_replicas": a.min_replicas, "max_replicas": a.max_replicas,
                                      "target_ongoing_requests": a.target_ongoing_requests,
                                      "upscale_delay_s": a.upscale_delay_s, "downscale_delay_s": a.downscale_delay_s}
    else:
        opts["num_replicas"] = d.num_replicas
    return opts
