"""infra/local/start-cluster.sh and stop-cluster.sh, for real: a head and a worker node on this
machine, `ray job submit` through the token-authenticated job API, work placed on both nodes,
and a stop that leaves no process and no port behind, even with a job still running."""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

import psutil
import pytest

from tests.fixtures.services import (
    VENV_BIN,
    LocalRayCluster,
    read_env_file,
    short_tmp_dir,
    start_local_cluster,
    stop_local_cluster,
)

pytestmark = pytest.mark.slow

PROBE = """
import json, os, sys
import ray
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

ray.init()
nodes = [n for n in ray.nodes() if n["Alive"]]

@ray.remote(num_cpus=1)
def where():
    return {"node": ray.get_runtime_context().get_node_id(), "python": sys.executable,
            "has_code": os.path.exists("marker.txt"), "has_venv": os.path.exists(".venv")}

placed = [where.options(scheduling_strategy=NodeAffinitySchedulingStrategy(n["NodeID"], soft=False)).remote()
          for n in nodes]
print("PROBE " + json.dumps({"nodes": {n["NodeID"]: n.get("NodeName") for n in nodes},
                             "tasks": ray.get(placed), "driver_python": sys.executable}))
"""


def probe_dir(tmp_path: Path) -> Path:
    work = tmp_path / "job"
    (work / ".venv").mkdir(parents=True)
    (work / ".venv" / "big.bin").write_bytes(b"\0" * 1024)
    (work / "marker.txt").write_text("shipped")
    (work / "probe.py").write_text(PROBE)
    return work


def test_job_runs_on_both_nodes_with_the_project_python(local_ray_cluster, tmp_path):
    done = local_ray_cluster.submit("python", "probe.py", working_dir=probe_dir(tmp_path),
                                    runtime_env_json=json.dumps({"excludes": [".venv"]}), timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    line = next(ln for ln in done.stdout.splitlines() if ln.startswith("PROBE "))
    probe = json.loads(line[len("PROBE "):])
    assert sorted(probe["nodes"].values()) == ["head", "worker-1"]
    assert {t["node"] for t in probe["tasks"]} == set(probe["nodes"]), "a node ran no task"
    for python in [probe["driver_python"], *(t["python"] for t in probe["tasks"])]:
        assert Path(python).parent == VENV_BIN, f"{python} is not the project's virtualenv"
    assert all(t["has_code"] and not t["has_venv"] for t in probe["tasks"]), \
        "the working dir (minus its excludes) must reach every node"


def test_a_client_without_token_mode_is_refused(local_ray_cluster):
    env = local_ray_cluster.client_env()
    env.pop("RAY_AUTH_MODE")
    refused = subprocess.run([str(VENV_BIN / "ray"), "job", "list"], env=env, capture_output=True, text=True,
                             timeout=120)
    assert refused.returncode != 0
    assert "authentication token" in (refused.stdout + refused.stderr).lower()
    allowed = subprocess.run([str(VENV_BIN / "ray"), "job", "list"], env=local_ray_cluster.client_env(),
                             capture_output=True, text=True, timeout=120)
    assert allowed.returncode == 0, allowed.stderr[-2000:]


def test_starting_again_is_a_no_op_and_a_different_shape_is_refused(local_ray_cluster):
    same = start_local_cluster(local_ray_cluster.dir, "--workers", "1", "--head-cpus", "2", "--worker-cpus", "2",
                               "--object-store-mb", "256")
    assert same.returncode == 0 and "already running" in same.stdout
    assert read_env_file(local_ray_cluster.dir / "cluster.env") == local_ray_cluster.env
    other = start_local_cluster(local_ray_cluster.dir, "--workers", "2", "--object-store-mb", "256")
    assert other.returncode != 0 and "different shape" in other.stderr


SLEEPER = """
import os, sys, time
import ray
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

ray.init()
worker = next(n for n in ray.nodes() if n["Alive"] and n.get("NodeName") == "worker-1")

@ray.remote(num_cpus=1)
def hold(path):
    open(path, "w").write(str(os.getpid()))
    time.sleep(3600)

task = hold.options(scheduling_strategy=NodeAffinitySchedulingStrategy(worker["NodeID"], soft=False)).remote(
    sys.argv[1] + "/task.pid")
open(sys.argv[1] + "/driver.pid", "w").write(str(os.getpid()))
ray.get(task)
"""


def listening_ports(pids: set[int] | None = None, exclude: set[int] | None = None) -> set[int]:
    ports = set()
    for conn in psutil.net_connections(kind="inet"):
        if conn.status != psutil.CONN_LISTEN:
            continue
        if pids is not None and conn.pid not in pids:
            continue
        if exclude is not None and conn.pid in exclude:
            continue
        ports.add(conn.laddr.port)
    return ports


def wait_for_files(*paths: Path, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while not all(p.exists() and p.read_text() for p in paths):
        assert time.monotonic() < deadline, f"not written within {timeout_s}s: {[str(p) for p in paths]}"
        time.sleep(0.5)


def test_stop_ends_running_jobs_and_frees_every_port(tmp_path):
    cluster_dir = short_tmp_dir("wr-")
    flags = tmp_path / "flags"
    flags.mkdir()
    work = tmp_path / "job"
    work.mkdir()
    (work / "sleeper.py").write_text(SLEEPER)
    try:
        started = start_local_cluster(cluster_dir, "--workers", "1", "--object-store-mb", "256")
        assert started.returncode == 0, started.stdout + started.stderr
        cluster = LocalRayCluster(cluster_dir, read_env_file(cluster_dir / "cluster.env"))
        submitted = subprocess.run([str(VENV_BIN / "ray"), "job", "submit", "--no-wait", "--working-dir", str(work),
                                    "--", "python", "sleeper.py", str(flags)],
                                   env=cluster.client_env(), capture_output=True, text=True, timeout=180)
        assert submitted.returncode == 0, submitted.stderr[-2000:]
        wait_for_files(flags / "driver.pid", flags / "task.pid", timeout_s=180)
        job_pids = {int((flags / name).read_text()) for name in ("driver.pid", "task.pid")}

        members = cluster.members()
        pids = {p.pid for p in members}
        assert job_pids <= pids, "the job's driver and task must count as the cluster's processes"
        ours = listening_ports(pids=pids)
        shared = listening_ports(exclude=pids)  # e.g. Ray's fixed metrics ports, reused by other clusters
        gcs_port = int(cluster.env["RAY_ADDRESS"].rsplit(":", 1)[1])
        dashboard_port = int(cluster.env["RAY_API_SERVER_ADDRESS"].rsplit(":", 1)[1])
        assert {gcs_port, dashboard_port} <= ours

        stopped = stop_local_cluster(cluster_dir)
        assert stopped.returncode == 0, stopped.stdout + stopped.stderr
        alive = [pid for pid in pids if psutil.pid_exists(pid) and psutil.Process(pid).status() != psutil.STATUS_ZOMBIE]
        assert not alive, f"still running after stop: {alive}"
        assert not (ours - shared) & listening_ports(), "ports of the stopped cluster are still listening"
        assert not cluster_dir.exists()
        again = stop_local_cluster(cluster_dir)
        assert again.returncode == 0 and "No local Ray cluster" in again.stdout
    finally:
        stop_local_cluster(cluster_dir)


def test_fixture_env_matches_what_the_start_script_prints(local_ray_cluster):
    """cluster.env is the contract with the user: every variable the start script tells them to
    export is there, and the token file it names exists and is private."""
    env = local_ray_cluster.env
    assert set(env) == {"RAY_ADDRESS", "RAY_API_SERVER_ADDRESS", "RAY_AUTH_MODE", "RAY_AUTH_TOKEN_PATH"}
    assert env["RAY_AUTH_MODE"] == "token"
    token = Path(env["RAY_AUTH_TOKEN_PATH"])
    assert token.is_file() and token.stat().st_mode & 0o077 == 0
    assert env["RAY_API_SERVER_ADDRESS"].startswith("http://127.0.0.1:")
