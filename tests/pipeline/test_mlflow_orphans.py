"""Issue 21 item 10: the MLflow server a killed run started is reaped at the next start, and
``python -m pipeline ui --stop`` stops a kept one. Real ``mlflow server`` processes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

from pipeline.mlflow_server import _alive, find_local, find_or_start_local, healthy

REPO = Path(__file__).resolve().parents[2]
ENV = {**os.environ, "PYTHONPATH": str(REPO)}


def _wait_dead(pid: int, within_s: float = 20) -> bool:
    deadline = time.time() + within_s
    while time.time() < deadline:
        if not _alive(pid):
            return True
        time.sleep(0.2)
    return False


def test_server_of_a_killed_run_is_reaped_at_the_next_start(tmp_path):
    state = tmp_path / "mlflow"
    driver = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
        import time
        from pathlib import Path
        from pipeline.mlflow_server import resolve
        s = resolve(None, Path({str(state)!r}), keep=False)
        print(s.pid, flush=True)
        time.sleep(600)
        """)], env={k: v for k, v in ENV.items() if k != "MLFLOW_TRACKING_URI"}, stdout=subprocess.PIPE, text=True)
    orphan = int(driver.stdout.readline())
    recorded = json.loads((state / "server.json").read_text())
    assert recorded["pid"] == orphan and recorded["owner"] == driver.pid
    driver.send_signal(signal.SIGKILL)  # no atexit: the server outlives its run
    driver.wait()
    assert _alive(orphan)

    server = find_or_start_local(state, owner=os.getpid())
    try:
        assert server.started_here and server.pid != orphan
        assert _wait_dead(orphan), "the orphaned server was not reaped"
        assert healthy(server.uri)
    finally:
        server.stop()
    assert _wait_dead(server.pid)


def test_ui_keeps_its_server_until_ui_stop(tmp_path):
    root = tmp_path / "outputs"
    env = {k: v for k, v in ENV.items() if k != "MLFLOW_TRACKING_URI"}
    up = subprocess.run([sys.executable, "-m", "pipeline", "ui", "--output-root", str(root)], env=env,
                        capture_output=True, text=True, timeout=180)
    assert up.returncode == 0, up.stderr[-2000:]
    running = find_local(root / "mlflow", reap_orphan=True)  # no owner: a kept server is never reaped
    assert running is not None and healthy(running.uri)
    down = subprocess.run([sys.executable, "-m", "pipeline", "ui", "--stop", "--output-root", str(root)], env=env,
                          capture_output=True, text=True, timeout=120)
    assert down.returncode == 0 and "stopped" in down.stdout, down.stdout + down.stderr
    assert _wait_dead(running.pid) and not (root / "mlflow" / "server.json").exists()


def test_ray_helpers_of_a_killed_driver_are_reaped(tmp_path):
    """The record/reap half of the Ray wiring, with real processes standing in for gcs and raylet
    (starting a real local Ray here would attach other tests' ray.init() to it)."""
    env = {**ENV, "WHALE_CACHE": str(tmp_path)}
    driver = subprocess.Popen([sys.executable, "-c", textwrap.dedent("""
        import subprocess, sys, time
        from pipeline.ray_runtime import record_helpers
        helpers = [subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"]) for _ in range(2)]
        record_helpers()
        print(" ".join(str(h.pid) for h in helpers), flush=True)
        time.sleep(600)
        """)], env=env, stdout=subprocess.PIPE, text=True, start_new_session=True)
    helpers = [int(x) for x in driver.stdout.readline().split()]
    driver.send_signal(signal.SIGKILL)
    driver.wait()
    assert all(_alive(h) for h in helpers)  # orphans, as Ray's helpers are after a SIGKILL

    code = "from pipeline.ray_runtime import reap_orphaned_helpers; print(reap_orphaned_helpers())"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60)
    assert out.stdout.strip() == "2", out.stderr
    assert all(_wait_dead(h) for h in helpers)
    assert not list((tmp_path / "ray-helpers").glob("*.json"))
