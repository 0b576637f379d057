"""infra/local/start-mlflow.sh and stop-mlflow.sh, for real: SQLite and PostgreSQL backends,
artifacts served by the server, idempotent start, the pipeline finds the server, clean stop."""

from __future__ import annotations

import json
import os
import socket
import subprocess
from pathlib import Path

import psutil
import pytest
from mlflow import MlflowClient

from tests.fixtures.services import INFRA, read_env_file

pytestmark = pytest.mark.slow


def script(name: str, *args: str, env: dict | None = None, timeout: float = 180) -> subprocess.CompletedProcess:
    return subprocess.run([str(INFRA / "local" / name), *args], capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, **(env or {})})


def port_open(uri: str) -> bool:
    host, port = uri.split("//")[1].split(":")
    try:
        socket.create_connection((host, int(port)), timeout=1).close()
        return True
    except OSError:
        return False


@pytest.fixture
def state_dir(tmp_path):
    directory = tmp_path / "mlflow"
    yield directory
    script("stop-mlflow.sh", "--dir", str(directory))  # whatever a failed assertion left running


def server_processes(pid: int) -> list[psutil.Process]:
    try:
        parent = psutil.Process(pid)
        return [parent, *parent.children(recursive=True)]
    except psutil.NoSuchProcess:
        return []


def test_sqlite_server_logs_runs_is_found_by_the_pipeline_and_stops_clean(state_dir, tmp_path):
    started = script("start-mlflow.sh", "--dir", str(state_dir))
    assert started.returncode == 0, started.stdout + started.stderr
    uri = read_env_file(state_dir / "mlflow.env")["MLFLOW_TRACKING_URI"]
    assert uri.startswith("http://127.0.0.1:")
    state = json.loads((state_dir / "server.json").read_text())
    assert state["uri"] == uri and state["backend"] == f"sqlite:///{state_dir}/mlflow.db"

    client = MlflowClient(uri)
    run = client.create_run(client.create_experiment("local-script"))
    (tmp_path / "note.txt").write_text("hi")
    client.log_artifact(run.info.run_id, str(tmp_path / "note.txt"))
    assert list((state_dir / "artifacts").rglob("note.txt")), "artifacts are served into <dir>/artifacts"

    again = script("start-mlflow.sh", "--dir", str(state_dir))
    assert again.returncode == 0 and f"already running: {uri}" in again.stdout
    # the pipeline's own lookup reuses it instead of starting a second writer on the SQLite file
    from pipeline.mlflow_server import find_local

    found = find_local(state_dir)
    assert found is not None and found.uri == uri and not found.started_here

    processes = server_processes(state["pid"])
    assert processes
    stopped = script("stop-mlflow.sh", "--dir", str(state_dir))
    assert stopped.returncode == 0, stopped.stderr
    _, alive = psutil.wait_procs(processes, timeout=10)
    assert not alive and not port_open(uri)
    assert not (state_dir / "server.json").exists() and (state_dir / "mlflow.db").exists()
    assert "No MLflow server recorded" in script("stop-mlflow.sh", "--dir", str(state_dir)).stdout


def test_postgres_backend_keeps_the_password_out_of_sight(state_dir, postgres_server, postgres_db):
    password = postgres_server.password
    started = script("start-mlflow.sh", "--dir", str(state_dir), env={"MLFLOW_BACKEND_STORE_URI": postgres_db})
    assert started.returncode == 0, started.stdout + started.stderr
    uri = read_env_file(state_dir / "mlflow.env")["MLFLOW_TRACKING_URI"]
    state = json.loads((state_dir / "server.json").read_text())
    processes = server_processes(state["pid"])
    assert password not in started.stdout + started.stderr
    assert password not in (state_dir / "server.json").read_text()
    assert all(password not in " ".join(p.cmdline()) for p in processes)

    client = MlflowClient(uri)
    run = client.create_run(client.create_experiment("on-postgres"))
    conn = postgres_server.connect(postgres_db.rsplit("/", 1)[1])
    with conn, conn.cursor() as cur:
        cur.execute("SELECT count(*) FROM runs WHERE run_uuid = %s", (run.info.run_id,))
        assert cur.fetchone() == (1,)
    conn.close()
    assert not Path(state_dir / "mlflow.db").exists()

    # a second start with another backend for the same folder is refused, not silently ignored
    other = script("start-mlflow.sh", "--dir", str(state_dir))
    assert other.returncode != 0 and "stop it first" in other.stderr

    assert script("stop-mlflow.sh", "--dir", str(state_dir)).returncode == 0
    _, alive = psutil.wait_procs(processes, timeout=10)
    assert not alive and not port_open(uri)
