"""The S3 and PostgreSQL fixtures work the way later tests will use them, and the Kubernetes
MLflow deployment runs, as written, against a real PostgreSQL and an S3 server."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import fsspec
import httpx
import pytest

from tests.fixtures.services import free_port
from tests.infra import manifests

# -- S3 -----------------------------------------------------------------------------------------

def test_s3_round_trip_with_the_environment_only(s3_bucket, monkeypatch, tmp_path):
    for key, value in s3_bucket.server.env.items():
        monkeypatch.setenv(key, value)
    url = f"{s3_bucket.url}/runs/stage/part-0.jsonl"
    with fsspec.open(url, "w") as f:
        f.write('{"text": "hello"}\n')
    fs = fsspec.filesystem("s3")
    fs.invalidate_cache()
    assert fs.ls(f"{s3_bucket.name}/runs/stage") == [f"{s3_bucket.name}/runs/stage/part-0.jsonl"]
    # another process (a Ray worker, a stage) reaches the same object with the same environment
    read = subprocess.run([sys.executable, "-c", f"import fsspec; print(fsspec.open('{url}').open().read().decode())"],
                          env={**os.environ, **s3_bucket.server.env}, capture_output=True, text=True, timeout=120)
    assert read.returncode == 0, read.stderr[-2000:]
    assert json.loads(read.stdout) == {"text": "hello"}


def test_s3_round_trip_with_storage_options(s3_bucket):
    fs = fsspec.filesystem("s3", **s3_bucket.server.storage_options)
    fs.pipe(f"{s3_bucket.name}/a/b.bin", b"\x00\x01")
    assert fs.cat(f"{s3_bucket.name}/a/b.bin") == b"\x00\x01"
    assert not fs.exists(f"{s3_bucket.name}/a/missing")


# -- PostgreSQL ------------------------------------------------------------------------------

def test_postgres_needs_the_password(postgres_server):
    import psycopg2

    conn = postgres_server.connect()
    with conn, conn.cursor() as cur:
        cur.execute("SELECT current_user, inet_server_port()")
        assert cur.fetchone() == ("whale", postgres_server.port)
    conn.close()
    with pytest.raises(psycopg2.OperationalError, match="password authentication failed"):
        psycopg2.connect(host=postgres_server.host, port=postgres_server.port, user="whale", password="wrong",
                         dbname="postgres", connect_timeout=10)


def test_each_test_gets_its_own_database(postgres_server, postgres_db):
    name = postgres_db.rsplit("/", 1)[1]
    conn = postgres_server.connect(name)
    with conn, conn.cursor() as cur:
        cur.execute("SELECT count(*) FROM information_schema.tables WHERE table_schema = 'public'")
        assert cur.fetchone() == (0,)
    conn.close()


# -- MLflow on PostgreSQL (+ S3) ----------------------------------------------------------------

def start_mlflow(args: list[str], env: dict[str, str], port: int, log: Path) -> subprocess.Popen:
    proc = subprocess.Popen([str(Path(sys.executable).parent / "mlflow"), "server", *args],
                            env={**os.environ, **env}, stdout=open(log, "wb"), stderr=subprocess.STDOUT,
                            start_new_session=True)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        assert proc.poll() is None, f"mlflow server exited:\n{log.read_text()[-3000:]}"
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code == 200:
                return proc
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    stop_mlflow(proc)
    raise TimeoutError(f"mlflow server did not come up:\n{log.read_text()[-3000:]}")


def stop_mlflow(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(15)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(5)
    except ProcessLookupError:
        pass


def log_a_run(tracking_uri: str, tmp_path: Path) -> tuple[str, object]:
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri)
    experiment = client.create_experiment(f"infra-{time.time_ns()}")
    run = client.create_run(experiment)
    run_id = run.info.run_id
    client.log_param(run_id, "stage", "pretrain")
    for step, loss in enumerate([3.0, 2.5, 2.1]):
        client.log_metric(run_id, "train/loss", loss, step=step)
    artifact = tmp_path / "stats.json"
    artifact.write_text('{"kept": 10}')
    client.log_artifact(run_id, str(artifact))
    client.set_terminated(run_id)
    return run_id, client


@pytest.mark.slow
def test_mlflow_server_stores_runs_in_postgres(postgres_server, postgres_db, tmp_path):
    port = free_port()
    proc = start_mlflow(["--host", "127.0.0.1", "--port", str(port), "--workers", "1",
                         "--artifacts-destination", str(tmp_path / "artifacts")],
                        {"MLFLOW_BACKEND_STORE_URI": postgres_db, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"},
                        port, tmp_path / "mlflow.log")
    try:
        run_id, client = log_a_run(f"http://127.0.0.1:{port}", tmp_path)
        run = client.get_run(run_id)
        assert run.data.params == {"stage": "pretrain"}
        assert [m.value for m in client.get_metric_history(run_id, "train/loss")] == [3.0, 2.5, 2.1]
        assert [a.path for a in client.list_artifacts(run_id)] == ["stats.json"]
    finally:
        stop_mlflow(proc)
    conn = postgres_server.connect(postgres_db.rsplit("/", 1)[1])
    with conn, conn.cursor() as cur:
        cur.execute("SELECT status FROM runs WHERE run_uuid = %s", (run_id,))
        assert cur.fetchone() == ("FINISHED",)
    conn.close()


@pytest.mark.slow
def test_k8s_mlflow_deployment_runs_against_real_postgres_and_s3(postgres_server, s3_server, tmp_path):
    """mlflow.yaml's init container and server, with their environment built from the secrets the
    way the kubelet builds it; only in-cluster DNS names are mapped to the loopback servers."""
    database = postgres_server.create_database(f"k8s_{time.time_ns()}")
    examples = manifests.secret_keys_example()
    secrets = {**examples,
               "whale-postgres": {"POSTGRES_USER": postgres_server.user, "POSTGRES_PASSWORD": postgres_server.password,
                                  "POSTGRES_DB": database},
               "whale-object-store": {"AWS_ACCESS_KEY_ID": s3_server.access_key,
                                      "AWS_SECRET_ACCESS_KEY": s3_server.secret_key,
                                      "AWS_ENDPOINT_URL": s3_server.endpoint_url,
                                      "AWS_DEFAULT_REGION": s3_server.region}}
    pod = manifests.find("Deployment", "mlflow")["spec"]["template"]["spec"]
    cluster_dns = {"@postgres:5432/": f"@{postgres_server.host}:{postgres_server.port}/"}

    def env_of(container):
        env = manifests.resolve_env(container, secrets)
        for name, value in env.items():
            for service, local in cluster_dns.items():
                env[name] = value.replace(service, local)
        return env

    (init,) = pod["initContainers"]
    init_env = env_of(init)
    upgrade = subprocess.run([str(Path(sys.executable).parent / init["command"][0]),
                              *(manifests.expand(a, init_env) for a in init["command"][1:])],
                             env={**os.environ, **init_env}, capture_output=True, text=True, timeout=300)
    assert upgrade.returncode == 0, upgrade.stderr[-3000:]

    server = pod["containers"][0]
    bucket = next(a for a in server["args"] if a.startswith("--artifacts-destination=")).split("//")[1].split("/")[0]
    try:
        s3_server.client().create_bucket(Bucket=bucket)
    except s3_server.client().exceptions.BucketAlreadyOwnedByYou:
        pass
    port = free_port()
    args = [a for a in server["args"] if not a.startswith(("--host=", "--port="))]
    args += ["--host=127.0.0.1", f"--port={port}"]
    proc = start_mlflow(args, env_of(server), port, tmp_path / "mlflow.log")
    try:
        run_id, client = log_a_run(f"http://127.0.0.1:{port}", tmp_path)
        assert [a.path for a in client.list_artifacts(run_id)] == ["stats.json"]
        stored = s3_server.client().list_objects_v2(Bucket=bucket).get("Contents", [])
        assert any(o["Key"].endswith(f"{run_id}/artifacts/stats.json") for o in stored), "artifact not in S3"
        # Host headers: what Ray pods send is accepted, anything else is refused
        api = f"http://127.0.0.1:{port}/api/2.0/mlflow/experiments/search?max_results=1"
        tracking_host = examples["whale-mlflow"]["MLFLOW_TRACKING_URI"].split("//")[1]
        assert httpx.get(api, headers={"Host": tracking_host}, timeout=10).status_code == 200
        assert httpx.get(api, headers={"Host": "mlflow:5000"}, timeout=10).status_code == 200
        assert httpx.get(api, headers={"Host": "evil.example.com"}, timeout=10).status_code == 403
    finally:
        stop_mlflow(proc)
    conn = postgres_server.connect(database)
    with conn, conn.cursor() as cur:
        cur.execute("SELECT count(*) FROM runs WHERE run_uuid = %s", (run_id,))
        assert cur.fetchone() == (1,)
    conn.close()
