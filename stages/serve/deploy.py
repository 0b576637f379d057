"""Ray Serve plumbing: start Serve's HTTP proxy, deploy an app with a deadline, build the URL,
run a function on the head node (where a proxy always listens)."""

from __future__ import annotations

import time

from stages.serve.config import HttpSection, ServeConfig
from stages.serve.server import ServeSetupError


def start_serve(http: HttpSection) -> tuple[str, int]:
    """Start Serve (or join the running instance); returns the host and port its proxies use.

    Serve's HTTP options are fixed while it runs: if an earlier deployment started it on another
    port, the app is served there and this says so."""
    from ray import serve

    serve.start(http_options={"host": http.host, "port": http.port}, proxy_location=http.proxy_location)
    try:   # the live options (DeveloperAPI-level internals; fall back to the requested ones)
        from ray.serve.context import _get_global_client

        live = _get_global_client().http_config
        host, port = live.host, live.port
    except Exception:  # noqa: BLE001
        host, port = http.host, http.port
    if (host, port) != (http.host, http.port):
        print(f"[serve] note: Serve already runs on this cluster with its proxy on {host}:{port}; HTTP options "
              f"cannot change while it runs, so the app is served there (run `serve shutdown` to move it to "
              f"{http.host}:{http.port})", flush=True)
    return host, port


def deploy_app(app, cfg: ServeConfig) -> None:
    """Deploy (or update in place) and wait until every replica is up, or fail with Serve's reason."""
    import ray
    from ray import serve
    from ray.serve.schema import ApplicationStatus

    _check_capacity(cfg, ray.cluster_resources())
    serve.run_many([serve.RunTarget(target=app, name=cfg.app_name, route_prefix=cfg.http.route_prefix)],
                   wait_for_applications_running=False)
    deadline = time.monotonic() + cfg.deployment.deploy_timeout_s
    last_report = time.monotonic()
    while True:
        status = serve.status().applications.get(cfg.app_name)
        state = status.status if status else None
        if state == ApplicationStatus.RUNNING:
            return
        if state == ApplicationStatus.DEPLOY_FAILED:
            raise ServeSetupError(f"deploying {cfg.app_name!r} failed: {_short(status.message)}")
        if time.monotonic() > deadline:
            details = "; ".join(f"{name}: {d.status} {d.message}" for name, d in
                                (status.deployments.items() if status else []))
            raise ServeSetupError(f"{cfg.app_name!r} was not running after {cfg.deployment.deploy_timeout_s:g}s "
                                  f"(is there room for its replicas? {details or 'no status'})")
        if time.monotonic() - last_report > 30:
            print(f"[serve] waiting for {cfg.app_name!r}: {state} {status.message if status else ''}", flush=True)
            last_report = time.monotonic()
        time.sleep(0.5)


def _check_capacity(cfg: ServeConfig, cluster: dict) -> None:
    """Fail before deploying when the cluster could never place the replicas."""
    d = cfg.deployment
    if cfg.backend != "whale":
        return
    replicas = d.autoscaling.min_replicas if d.autoscaling else d.num_replicas
    for resource, per_replica in (("CPU", d.num_cpus), ("GPU", d.num_gpus)):
        need, have = replicas * per_replica, cluster.get(resource, 0.0)
        if need > have:
            raise ServeSetupError(f"{replicas} replica(s) x {per_replica:g} {resource} = {need:g} {resource}, but the "
                                  f"cluster has {have:g}; lower serve.deployment.num_{resource.lower()}s or "
                                  f"num_replicas, or add nodes")


def _short(message: str, lines: int = 25) -> str:
    parts = (message or "").strip().splitlines()
    return "\n".join(parts[-lines:]) if len(parts) > lines else "\n".join(parts)


def endpoint_url(host: str, port: int, route_prefix: str) -> str:
    """Where clients reach the app: loopback stays loopback; a wildcard bind is reached at the
    head node's address."""
    if host in ("0.0.0.0", "::", ""):
        host = _head_node_ip()
    if ":" in host and not host.startswith("["):
        host = f"[{host}]"
    prefix = "" if route_prefix == "/" else route_prefix
    return f"http://{host}:{port}{prefix}"


def _head_node() -> dict:
    import ray

    for node in ray.nodes():
        if node.get("Alive") and "node:__internal_head__" in node.get("Resources", {}):
            return node
    raise ServeSetupError("no live head node in the Ray cluster")


def _head_node_ip() -> str:
    return _head_node()["NodeManagerAddress"]


def run_on_head_node(fn, *args):
    """``fn(*args)`` here when this is the head node, else in a zero-CPU task pinned to it (a
    loopback URL is only reachable there)."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    head = _head_node()["NodeID"]
    if head == ray.get_runtime_context().get_node_id():
        return fn(*args)
    task = ray.remote(fn).options(num_cpus=0, scheduling_strategy=NodeAffinitySchedulingStrategy(head, soft=False))
    return ray.get(task.remote(*args))
