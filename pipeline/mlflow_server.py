"""Find or start the one MLflow tracking server a deployment logs to.

Order: ``tracking.uri`` from the config, else ``MLFLOW_TRACKING_URI``, else a local
``mlflow server`` (SQLite backend, artifacts beside it, 127.0.0.1, a free port) that is
recorded in ``<state_dir>/server.json`` and reused by later runs while it is alive. Exactly one
process ever writes the SQLite file: starting is serialised by a file lock, and the server runs
a single worker.

Ownership: ``server.json`` records who started the server. A pipeline run owns the server it
started (its pid and start time) and stops it at exit; if the run was killed (SIGKILL, OOM)
instead, the next start finds the owner gone and reaps the orphan before starting afresh. A
server started by ``python -m pipeline ui`` (or with ``keep``) has no owner: it stays until
``python -m pipeline ui --stop``.
"""

from __future__ import annotations

import atexit
import contextlib
import fcntl
import json
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import httpx

STARTUP_TIMEOUT_S = 90


class TrackingError(RuntimeError):
    pass


@dataclass
class TrackingServer:
    uri: str
    started_here: bool = False
    pid: int | None = None
    state_dir: Path | None = None

    def stop(self) -> None:
        if self.pid:
            _terminate(self.pid)
        if self.state_dir:
            (self.state_dir / "server.json").unlink(missing_ok=True)
        self.pid = None


def healthy(uri: str, timeout: float = 2.0) -> bool:
    try:
        return httpx.get(f"{uri.rstrip('/')}/health", timeout=timeout).status_code == 200
    except httpx.HTTPError:
        return False


def resolve(configured: str | None, state_dir: Path, keep: bool) -> TrackingServer:
    """The tracking server to use; started (and stopped at exit unless ``keep``) if needed.

    A server that this process starts without ``keep`` is owned by it (see the module docstring)."""
    uri = configured or os.environ.get("MLFLOW_TRACKING_URI")
    if uri:
        if uri.startswith("http") and not healthy(uri, timeout=10):
            raise TrackingError(f"MLflow tracking server {uri} does not answer on /health; "
                                f"start it or unset MLFLOW_TRACKING_URI to use a local one")
        return TrackingServer(uri)
    server = find_or_start_local(state_dir, owner=None if keep else os.getpid())
    if server.started_here and not keep:
        atexit.register(server.stop)
    return server


def find_or_start_local(state_dir: Path, owner: int | None = None) -> TrackingServer:
    """The live local server, else a new one owned by process ``owner`` (None: kept until --stop)."""
    state_dir = Path(state_dir).resolve()
    state_dir.mkdir(parents=True, exist_ok=True)
    with _locked(state_dir / "server.lock"):
        running = find_local(state_dir, reap_orphan=True)
        if running:
            return running
        return _start(state_dir, owner)


def find_local(state_dir: Path, reap_orphan: bool = False) -> TrackingServer | None:
    state_file = Path(state_dir) / "server.json"
    if not state_file.exists():
        return None
    try:
        state = json.loads(state_file.read_text())
    except json.JSONDecodeError:
        return None
    if reap_orphan and state.get("owner") and not _same_process(state["owner"], state.get("owner_started")):
        if _alive(state.get("pid")):
            print(f"MLflow: reaping the server (pid {state['pid']}) left by run pid {state['owner']}, "
                  "which ended without stopping it", file=sys.stderr)
            _terminate(state["pid"])
        state_file.unlink(missing_ok=True)
        return None
    if _alive(state.get("pid")) and healthy(state["uri"]):
        return TrackingServer(state["uri"], started_here=False, pid=state["pid"], state_dir=Path(state_dir))
    return None


def _start(state_dir: Path, owner: int | None = None) -> TrackingServer:
    port = free_port()
    uri = f"http://127.0.0.1:{port}"
    log = open(state_dir / "server.log", "ab")
    cmd = [sys.executable, "-m", "mlflow", "server",
           "--backend-store-uri", f"sqlite:///{state_dir / 'mlflow.db'}",
           "--artifacts-destination", str(state_dir / "artifacts"),
           "--host", "127.0.0.1", "--port", str(port), "--workers", "1"]
    # own session: Ctrl-C in the terminal reaches the pipeline, which then stops the server
    # No background job runner (MLflow 3.17 would start it plus 7 huey workers): we use no jobs.
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                            cwd=state_dir, env=env)
    deadline = time.time() + STARTUP_TIMEOUT_S
    while time.time() < deadline:
        if proc.poll() is not None:
            raise TrackingError(f"mlflow server exited with code {proc.returncode}; "
                                f"see {state_dir / 'server.log'}")
        if healthy(uri, timeout=1):
            break
        time.sleep(0.5)
    else:
        _terminate(proc.pid)
        raise TrackingError(f"mlflow server did not come up within {STARTUP_TIMEOUT_S}s; "
                            f"see {state_dir / 'server.log'}")
    state = {"uri": uri, "pid": proc.pid, "owner": owner, "owner_started": _started_at(owner) if owner else None}
    (state_dir / "server.json").write_text(json.dumps(state))
    return TrackingServer(uri, started_here=True, pid=proc.pid, state_dir=state_dir)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _alive(pid: int | None) -> bool:
    if not pid:
        return False
    try:
        os.kill(pid, 0)
    except (ProcessLookupError, PermissionError):
        return False
    return True


def _started_at(pid: int) -> float | None:
    import psutil

    try:
        return psutil.Process(pid).create_time()
    except psutil.Error:
        return None


def _same_process(pid: int, started: float | None) -> bool:
    """Is ``pid`` still the process recorded (not a dead one whose pid was reused)?"""
    now = _started_at(pid)
    return now is not None and (started is None or abs(now - started) < 1e-3)


def _terminate(pid: int, grace_s: float = 10.0) -> None:
    """Stop the server's whole process group (mlflow spawns uvicorn workers)."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGTERM)
    deadline = time.time() + grace_s
    while time.time() < deadline and _alive(pid):
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, os.WNOHANG)
        time.sleep(0.1)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGKILL)
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)


@contextlib.contextmanager
def _locked(path: Path):
    with open(path, "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def runs_url(uri: str, experiment_id: str, run_id: str | None = None) -> str:
    """The UI link: MLflow 3.17 opens experiments on a GenAI overview; the runs table is here."""
    base = f"{uri.rstrip('/')}/#/experiments/{experiment_id}"
    return f"{base}/runs/{run_id}" if run_id else f"{base}/runs"
