"""The CLI as a user runs it: real subprocesses, a local MLflow server started and stopped by it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

ENV = {**os.environ, "WHALE_STAGES": "tests.pipeline.toy_stages:STAGES", "PYTHONUNBUFFERED": "1"}
ENV.pop("MLFLOW_TRACKING_URI", None)
ENV.pop("RAY_ADDRESS", None)


ROOT = Path(__file__).resolve().parents[2]


def whale(*args, env=None, timeout=300):
    return subprocess.run([sys.executable, "-m", "pipeline", *args], capture_output=True, text=True,
                          env=env or ENV, timeout=timeout, cwd=ROOT)


@pytest.fixture
def config(tmp_path):
    path = tmp_path / "toy.yaml"
    path.write_text(f"name: toy-cli\noutput_root: {tmp_path / 'out'}\n"
                    f"a: {{log_dir: {tmp_path / 'log'}}}\nb: {{log_dir: {tmp_path / 'log'}}}\n"
                    f"c: {{log_dir: {tmp_path / 'log'}}}\nx: {{log_dir: {tmp_path / 'log'}}}\n"
                    f"ray: {{num_cpus: 2}}\n")
    return path


@pytest.mark.slow
def test_run_status_and_local_tracking_server_lifecycle(config, tmp_path):
    st = whale("status", str(config))
    assert st.returncode == 0, st.stderr
    assert st.stdout.count("missing") == 4

    r = whale("run", str(config), "--no-block")
    assert r.returncode == 0, r.stdout + r.stderr
    out = r.stdout
    for stage in "abcx":
        assert f"{stage} started" in out
    assert "value = 3" in out  # c's key metric in the final table
    assert "#/experiments/" in out  # MLflow run links
    # the server this run started was stopped at exit
    state = tmp_path / "out" / "mlflow" / "server.json"
    assert not state.exists()
    assert (tmp_path / "out" / "mlflow" / "mlflow.db").exists()

    st = whale("status", str(config))
    assert st.stdout.count("cached") == 4, st.stdout

    again = whale("run", str(config), "--no-block", "--set", "c.value=5")
    assert again.returncode == 0, again.stdout + again.stderr
    assert "a cached" in again.stdout and "c started" in again.stdout and "value = 7" in again.stdout


@pytest.mark.slow
def test_stage_alone_names_missing_upstream_then_runs(config, tmp_path):
    code = "import sys; from pipeline.cli import stage_main; stage_main(sys.argv[1], sys.argv[2:])"
    cmd = [sys.executable, "-c", code]
    r = subprocess.run([*cmd, "b", "--config", str(config)], capture_output=True, text=True, env=ENV, timeout=300)
    assert r.returncode == 2
    assert "needs the output of upstream stage 'a'" in r.stdout
    assert "python -m stages.a" in r.stdout
    r = subprocess.run([*cmd, "a", "--config", str(config)], capture_output=True, text=True, env=ENV, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    r = subprocess.run([*cmd, "b", "--config", str(config)], capture_output=True, text=True, env=ENV, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    manifest = next((tmp_path / "out" / "b").glob("*/manifest.json"))
    assert json.loads(manifest.read_text())["summary"] == {"value": 2}


def test_ui_starts_finds_and_stops_the_server(tmp_path):
    root = str(tmp_path / "out")
    first = whale("ui", "--output-root", root)
    assert first.returncode == 0, first.stderr
    assert "(started)" in first.stdout
    url = first.stdout.split("MLflow UI: ")[1].split()[0]
    try:
        assert httpx.get(f"{url}/health", timeout=5).status_code == 200
        second = whale("ui", "--output-root", root)
        assert f"MLflow UI: {url} (already running)" in second.stdout
    finally:
        stop = whale("ui", "--output-root", root, "--stop")
    assert "stopped MLflow server" in stop.stdout
    with pytest.raises(httpx.HTTPError):
        httpx.get(f"{url}/health", timeout=2)


def test_config_typo_exits_before_starting_anything(config, tmp_path):
    config.write_text(config.read_text() + "serve_port: 3\n")
    r = whale("run", str(config), "--no-block")
    assert r.returncode == 2
    assert "serve_port" in r.stdout and "unknown key" in r.stdout
    assert not (tmp_path / "out" / "mlflow").exists(), "no tracking server may start for a bad config"
