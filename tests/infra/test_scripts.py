"""The shell scripts: syntax, and the clear errors they give before starting anything."""

from __future__ import annotations

import importlib.util
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
LOCAL = ROOT / "infra" / "local"
SCRIPTS = sorted((ROOT / "infra").rglob("*.sh"))


def run(script: str, *args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([str(LOCAL / script), *args], capture_output=True, text=True, timeout=timeout)


def test_the_expected_scripts_exist_and_are_executable():
    names = {p.name for p in SCRIPTS}
    assert {"start-cluster.sh", "stop-cluster.sh", "start-mlflow.sh", "stop-mlflow.sh", "make-secrets.sh"} <= names
    for script in SCRIPTS:
        assert script.stat().st_mode & 0o111, f"{script} is not executable"
        assert script.read_text().startswith("#!/usr/bin/env bash\n")
        assert "set -euo pipefail" in script.read_text()


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_script_parses(script):
    checked = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True)
    assert checked.returncode == 0, checked.stderr


@pytest.mark.parametrize("script", ["start-cluster.sh", "stop-cluster.sh", "start-mlflow.sh", "stop-mlflow.sh"])
def test_help_prints_usage(script):
    shown = run(script, "--help")
    assert shown.returncode == 0 and script in shown.stdout


@pytest.mark.parametrize("args,message", [
    (["--workers", "two"], "--workers must be a non-negative integer"),
    (["--head-cpus", "-1"], "--head-cpus must be a non-negative integer"),
    (["--object-store-mb", "10"], "--object-store-mb must be at least 100"),
    (["--frobnicate"], "unknown argument '--frobnicate'"),
    (["--dir", "/tmp/" + "x" * 60], "Unix socket paths need it at most"),
])
def test_start_cluster_rejects_bad_arguments_before_starting(args, message):
    refused = run("start-cluster.sh", *args)
    assert refused.returncode != 0
    assert message in refused.stderr


def test_cluster_scripts_refuse_a_directory_they_did_not_make():
    precious = Path(tempfile.mkdtemp(prefix="wr-", dir="/tmp"))  # short enough for --dir
    try:
        (precious / "keep.txt").write_text("mine")
        for script in ("start-cluster.sh", "stop-cluster.sh"):
            refused = run(script, "--dir", str(precious))
            assert refused.returncode != 0 and "not a cluster directory" in refused.stderr, script
        assert (precious / "keep.txt").read_text() == "mine"
    finally:
        shutil.rmtree(precious)


def test_stopping_a_cluster_that_is_not_there_is_a_no_op(tmp_path):
    stopped = run("stop-cluster.sh", "--dir", str(tmp_path / "never-started"))
    assert stopped.returncode == 0
    assert "No local Ray cluster" in stopped.stdout


@pytest.mark.parametrize("args,message", [
    (["--workers", "2"], "SQLite allows one writer"),
    (["--backend-store-uri", "file:///tmp/mlruns"], "must be a database URI"),
    (["--backend-store-uri", "postgresql://u:hunter2@db/x", "--port", "99999"], "--port must be 1-65535"),
])
def test_start_mlflow_rejects_bad_arguments(tmp_path, args, message):
    refused = run("start-mlflow.sh", "--dir", str(tmp_path), *args)
    assert refused.returncode != 0
    assert message in refused.stderr
    assert "hunter2" not in refused.stdout + refused.stderr


@pytest.mark.skipif(importlib.util.find_spec("psycopg") is not None, reason="psycopg 3 is installed here")
def test_start_mlflow_explains_the_postgres_driver(tmp_path):
    refused = run("start-mlflow.sh", "--dir", str(tmp_path), "--backend-store-uri", "postgresql://u:hunter2@db/x")
    assert refused.returncode != 0
    assert "postgresql+psycopg2://" in refused.stderr and "hunter2" not in refused.stderr


def test_stop_mlflow_without_a_server_is_a_no_op(tmp_path):
    stopped = run("stop-mlflow.sh", "--dir", str(tmp_path))
    assert stopped.returncode == 0 and "No MLflow server recorded" in stopped.stdout
