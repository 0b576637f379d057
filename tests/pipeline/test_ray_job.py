"""`ray job submit` of the pipeline to a real local cluster started by infra/local/start-cluster.sh."""

from __future__ import annotations

import json

import pytest
from mlflow import MlflowClient

from tests.fixtures.services import ROOT


@pytest.mark.slow
def test_ray_job_submit_runs_the_dag_on_the_cluster(local_ray_cluster, mlflow_server, tmp_path):
    out = tmp_path / "out"
    config = tmp_path / "toy.yaml"
    config.write_text(f"name: toy-job\noutput_root: {out}\n"
                      + "".join(f"{s}: {{log_dir: {tmp_path / 'log'}}}\n" for s in "abcx"))
    env = {"WHALE_STAGES": "tests.pipeline.toy_stages:STAGES", "MLFLOW_TRACKING_URI": mlflow_server}
    job = local_ray_cluster.submit("python", "-m", "pipeline", "run", str(config), working_dir=ROOT,
                                   runtime_env_json=json.dumps({"env_vars": env}), timeout=600)
    log = job.stdout + job.stderr
    assert job.returncode == 0, log
    assert "succeeded" in log
    assert "Ray: 2 node(s)" in log, "the job must join the running cluster, not start its own"

    manifests = {p.parent.parent.name: json.loads(p.read_text()) for p in out.glob("*/*/manifest.json")}
    assert sorted(manifests) == ["a", "b", "c", "x"]
    assert manifests["c"]["summary"] == {"value": 3}
    nodes = {m["ray"]["node_id"] for m in manifests.values()}
    assert len(nodes) == 2, f"stages are spread over the cluster's nodes, got {nodes}"

    client = MlflowClient(mlflow_server)
    exp = client.get_experiment_by_name("toy-job")
    runs = client.search_runs([exp.experiment_id])
    stage_runs = {r.info.run_name: r for r in runs if "mlflow.parentRunId" in r.data.tags}
    assert sorted(stage_runs) == ["a", "b", "c", "x"]
    assert all(r.info.status == "FINISHED" for r in stage_runs.values())
    assert {m["mlflow"]["run_id"] for m in manifests.values()} == {r.info.run_id for r in stage_runs.values()}
