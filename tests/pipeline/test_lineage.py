"""Lineage in MLflow: registered models are MLflow 3 LoggedModels produced by the stage's run, and
stage runs list what they consumed as datasets (against a real tracking server)."""

from __future__ import annotations

import mlflow
from mlflow import MlflowClient

from pipeline.tracking import DatasetRef, Tracker


def new_run(uri: str, experiment: str, stage: str) -> Tracker:
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name(experiment)
    exp_id = exp.experiment_id if exp else client.create_experiment(experiment)
    run = client.create_run(exp_id, run_name=stage, tags={"whale.stage": stage})
    return Tracker(run.info.run_id, uri)


def test_register_model_makes_a_logged_model_output_behind_the_version(tmp_path, mlflow_server):
    model_dir = tmp_path / "hf"
    model_dir.mkdir()
    (model_dir / "config.json").write_text('{"model_type": "deepseek_v3"}')
    tracker = new_run(mlflow_server, "lineage-models", "pretrain")
    version = tracker.register_model(model_dir, name="lineage-models", alias="base")

    client = MlflowClient(mlflow_server)
    mv = client.get_model_version_by_alias("lineage-models", "base")
    (model_id,) = tracker.logged_models()
    # (the REST ModelVersion does not carry model_id in MLflow 3.17: the source names the model)
    assert mv.version == version and mv.source == f"models:/{model_id}", "the version is the LoggedModel"
    model = client.get_logged_model(model_id)
    assert model.source_run_id == tracker.run_id and model.name == "lineage-models-base"
    assert "READY" in str(model.status)
    run = client.get_run(tracker.run_id)
    assert [o.model_id for o in run.outputs.model_outputs] == [model_id], "the run's Models column"

    mlflow.set_tracking_uri(mlflow_server)
    got = mlflow.artifacts.download_artifacts("models:/lineage-models@base", dst_path=str(tmp_path / "dl"))
    assert (tmp_path / "dl").exists() and any(p.name == "config.json" for p in __import__("pathlib").Path(got)
                                              .rglob("config.json"))


def test_datasets_and_model_inputs_show_on_the_consuming_run(tmp_path, mlflow_server):
    producer = new_run(mlflow_server, "lineage-inputs", "distill")
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "w.txt").write_text("w")
    producer.register_model(tmp_path / "m", name="lineage-inputs", alias="candidate")
    consumer = new_run(mlflow_server, "lineage-inputs", "eval")
    consumer.log_datasets([DatasetRef("token-shards", "0123456789ab", str(tmp_path / "tok"),
                                      {"train_tokens": 1000, "val_tokens": 50})])
    consumer.log_model_inputs(producer.logged_models())

    run = MlflowClient(mlflow_server).get_run(consumer.run_id)
    (ds,) = run.inputs.dataset_inputs
    assert (ds.dataset.name, ds.dataset.digest, ds.dataset.source_type) == ("token-shards", "0123456789ab", "local")
    assert '"train_tokens": 1000' in ds.dataset.profile and str(tmp_path / "tok") in ds.dataset.source
    assert [m.model_id for m in run.inputs.model_inputs] == producer.logged_models()


def test_an_inactive_tracker_logs_no_lineage():
    t = Tracker.disabled()
    t.log_datasets([DatasetRef("x", "d", "/x")])
    t.log_model_outputs(["m-1"])
    assert t.logged_models() == [] and t.register_model("/nowhere", "n", "a") is None


def test_runner_logs_each_stage_input_as_a_dataset_with_digest_and_counts(tmp_path, mlflow_server, ray_local):
    from pipeline.runner import Runner
    from tests.pipeline.test_runner import make_config
    from tests.pipeline.toy_stages import STAGES

    cfg = make_config(tmp_path, name="lineage-runner")
    first = {r.name: r for r in Runner(cfg, STAGES, mlflow_server).run()}
    client = MlflowClient(mlflow_server)
    c_inputs = client.get_run(first["c"].run_id).inputs.dataset_inputs
    assert [(d.dataset.name, d.dataset.digest) for d in c_inputs] == [("b-output", first["b"].fingerprint)]
    assert '"value": 2' in c_inputs[0].dataset.profile and first["b"].output in c_inputs[0].dataset.source
    assert client.get_run(first["a"].run_id).inputs.dataset_inputs == [], "no upstream, no sources: nothing"
    # a cached rerun's stage runs show the same inputs
    second = Runner(cfg, STAGES, mlflow_server).run()
    exp = client.get_experiment_by_name("lineage-runner")
    cached_c = [r for r in client.search_runs([exp.experiment_id], "tags.`whale.stage` = 'c'")
                if r.data.tags.get("whale.cached") == "true"]
    assert [r.status for r in second] == ["cached"] * 4 and len(cached_c) == 1
    assert [d.dataset.name for d in cached_c[0].inputs.dataset_inputs] == ["b-output"]


def test_raw_sources_of_the_first_stage_only_from_real_source_configs():
    from pipeline.config import load_config
    from pipeline.registry import default_stages
    from pipeline.runner import _raw_sources
    from tests.conftest import ROOT

    cfg = load_config(ROOT / "configs" / "tiny.yaml", default_stages(),
                      overrides=['curate.sources=[{type: local}, {type: jsonl, path: /data/web.jsonl}]'])
    refs = _raw_sources(cfg.sections["curate"])
    assert [(r.name, r.source) for r in refs] == [("local-sources", "local"), ("jsonl:web.jsonl", "/data/web.jsonl")]
    assert len({r.digest for r in refs}) == 2
    assert _raw_sources(cfg.sections["tokenizer"]) == [], "the tokenizer's `sources` are branch names, not data"
