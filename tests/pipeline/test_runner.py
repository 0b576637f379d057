"""The DAG runner against real Ray and a real MLflow tracking server, with test-only toy stages."""

from __future__ import annotations

import cloudpickle
import pytest
from mlflow import MlflowClient

from pipeline import dag as dagmod
from pipeline.config import parse_config
from pipeline.dag import DagError
from pipeline.runner import PipelineFailed, Runner, select
from pipeline.stage import Stage, StageConfig
from tests.pipeline import toy_stages
from tests.pipeline.toy_stages import STAGES

# Ray workers cannot import the tests package by name; ship the toy stages by value.
cloudpickle.register_pickle_by_value(toy_stages)


def make_config(tmp_path, name="toy", **sections):
    raw = {"name": name, "output_root": str(tmp_path / "out")}
    for s in ("a", "b", "c", "x"):
        raw[s] = {"log_dir": str(tmp_path / "log"), **sections.get(s, {})}
    return parse_config(raw, STAGES)


def calls(tmp_path) -> list[str]:
    f = tmp_path / "log" / "calls"
    return f.read_text().split() if f.exists() else []


def run(tmp_path, mlflow_server, **sections):
    return Runner(make_config(tmp_path, **sections), STAGES, mlflow_server).run()


def statuses(results) -> dict[str, str]:
    return {r.name: r.status for r in results}


def test_rerun_hits_the_cache(tmp_path, mlflow_server, ray_local):
    first = run(tmp_path, mlflow_server)
    assert statuses(first) == {"a": "ran", "b": "ran", "c": "ran", "x": "ran"}
    assert sorted(calls(tmp_path)) == ["a", "b", "c", "x"]
    second = run(tmp_path, mlflow_server)
    assert statuses(second) == {"a": "cached", "b": "cached", "c": "cached", "x": "cached"}
    assert sorted(calls(tmp_path)) == ["a", "b", "c", "x"], "a cached stage must not execute"
    c = next(r for r in second if r.name == "c")
    assert c.summary == {"value": 3} and c.key_value == 3


def test_config_change_reruns_that_stage_and_downstream_only(tmp_path, mlflow_server, ray_local):
    run(tmp_path, mlflow_server)
    results = run(tmp_path, mlflow_server, b={"value": 10})
    assert statuses(results) == {"a": "cached", "b": "ran", "c": "ran", "x": "cached"}
    assert next(r for r in results if r.name == "c").summary["value"] == 12


def test_failed_stage_leaves_no_success_and_rerun_resumes_there(tmp_path, mlflow_server, ray_local):
    with pytest.raises(PipelineFailed):
        run(tmp_path, mlflow_server, b={"fail": True})
    cfg = make_config(tmp_path, b={"fail": True})
    dag = dagmod.Dag(STAGES, cfg)
    from pipeline.storage import Storage

    storage = Storage(cfg.globals.output_root)
    assert dagmod.state(storage, dag["a"]) == "cached"
    assert dagmod.state(storage, dag["b"]) == "failed"
    assert not storage.exists("b", dag["b"].fingerprint, dagmod.SUCCESS)
    assert "b was told to fail" in storage.read_text("b", dag["b"].fingerprint, dagmod.FAILED)
    assert dagmod.state(storage, dag["c"]) == "missing", "a stage after a failure must not run"
    assert sorted(calls(tmp_path)) == ["a", "b", "x"]

    # Fixing b (here: its config) reruns b and what follows; a and x stay cached.
    results = run(tmp_path, mlflow_server)
    assert statuses(results) == {"a": "cached", "b": "ran", "c": "ran", "x": "cached"}


def test_rerun_of_identical_failing_command_resumes_at_the_failed_stage(tmp_path, mlflow_server, ray_local):
    # c fails; rerunning the same command reruns only c (a, b cached), and still fails clearly.
    with pytest.raises(PipelineFailed):
        run(tmp_path, mlflow_server, c={"fail": True})
    with pytest.raises(PipelineFailed):
        run(tmp_path, mlflow_server, c={"fail": True})
    assert sorted(calls(tmp_path)) == ["a", "b", "c", "c", "x"]


def test_independent_stages_run_concurrently(tmp_path, mlflow_server, ray_local):
    rendezvous = str(tmp_path / "rendezvous")
    results = run(tmp_path, mlflow_server, a={"rendezvous": rendezvous}, x={"rendezvous": rendezvous})
    assert statuses(results)["a"] == "ran" and statuses(results)["x"] == "ran"
    assert sorted(p.name for p in (tmp_path / "rendezvous").iterdir()) == ["a", "x"]


def test_parent_and_child_runs_in_mlflow(tmp_path, mlflow_server, ray_local):
    run(tmp_path, mlflow_server, name="toy-mlflow")
    run(tmp_path, mlflow_server, name="toy-mlflow")  # all cached
    client = MlflowClient(mlflow_server)
    exp = client.get_experiment_by_name("toy-mlflow")
    runs = client.search_runs([exp.experiment_id], order_by=["attributes.start_time ASC"])
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    assert len(parents) == 2
    first, second = parents
    kids = {p.info.run_id: [r for r in runs if r.data.tags.get("mlflow.parentRunId") == p.info.run_id]
            for p in parents}
    assert sorted(r.info.run_name for r in kids[first.info.run_id]) == ["a", "b", "c", "x"]
    for child in kids[first.info.run_id]:
        assert child.data.tags["whale.cached"] == "false"
        assert child.info.status == "FINISHED"
        assert child.data.params["value"] == "1"
        assert child.data.tags["whale.fingerprint"]
    c_run = next(r for r in kids[first.info.run_id] if r.info.run_name == "c")
    assert c_run.data.metrics["toy/value"] == 3.0
    assert c_run.data.metrics["summary/value"] == 3.0
    for child in kids[second.info.run_id]:
        assert child.data.tags["whale.cached"] == "true"
        producer = child.data.tags["whale.produced_by"]
        assert producer in {r.info.run_id for r in kids[first.info.run_id]}
    assert first.info.status == "FINISHED"
    artifacts = [a.path for a in client.list_artifacts(first.info.run_id)]
    assert "config.yaml" in artifacts and "report.md" in artifacts
    # the report card carries the same numbers as the stage runs
    report = (tmp_path / "out" / "runs" / first.info.run_id / "report.md").read_text()
    assert "| c | ran |" in report and "value 3" in report
    assert "## Environment" in report and "torch:" in report
    cached_report = (tmp_path / "out" / "runs" / second.info.run_id / "report.md").read_text()
    assert "| c | cached |" in cached_report and "value 3" in cached_report


def test_failed_stage_marks_its_run_and_the_parent_failed(tmp_path, mlflow_server, ray_local):
    with pytest.raises(PipelineFailed):
        run(tmp_path, mlflow_server, name="toy-fail", b={"fail": True})
    client = MlflowClient(mlflow_server)
    exp = client.get_experiment_by_name("toy-fail")
    runs = client.search_runs([exp.experiment_id])
    b = next(r for r in runs if r.info.run_name == "b")
    assert b.info.status == "FAILED"
    assert "b was told to fail" in b.data.tags["whale.error"]
    parent = next(r for r in runs if "mlflow.parentRunId" not in r.data.tags)
    assert parent.info.status == "FAILED"


def test_only_requires_cached_upstream(tmp_path):
    cfg = make_config(tmp_path)
    from pipeline.storage import Storage

    with pytest.raises(DagError, match=r"needs the output of 'b'.*not cached"):
        select(dagmod.Dag(STAGES, cfg), Storage(cfg.globals.output_root), only=["c"])


def _mark_cached(dag, storage, *names):
    for n in names:
        storage.write_text("", n, dag[n].fingerprint, dagmod.SUCCESS)


def test_only_selects_cached_upstream_for_reuse_without_ray(tmp_path):
    """The selection half of item 8, no Ray needed: --only c with b cached reuses b."""
    from pipeline.storage import Storage

    cfg = make_config(tmp_path)
    dag, storage = dagmod.Dag(STAGES, cfg), Storage(cfg.globals.output_root)
    _mark_cached(dag, storage, "a", "b")
    sel = select(dag, storage, only=["c"])
    assert (sel.run, sel.reuse) == (["c"], ["b"])
    sel = select(dag, storage, from_="b")
    assert sorted(sel.run) == ["b", "c", "x"] and sel.reuse == ["a"]
    with pytest.raises(DagError, match=r"needs the output of 'a'"):
        select(dagmod.Dag(STAGES, make_config(tmp_path / "other")), Storage(str(tmp_path / "other" / "out")),
               only=["b"])


def test_only_a_stage_with_cached_upstream_runs_it(tmp_path, mlflow_server, ray_local):
    """Issue 21 item 8: ``--only c`` after a full run used to select c, run nothing and exit 0."""
    run(tmp_path, mlflow_server)
    cfg = make_config(tmp_path)
    runner = Runner(cfg, STAGES, mlflow_server)
    sel = select(runner.dag, runner.storage, only=["c"])
    assert sel.run == ["c"] and sel.reuse == ["b"]
    before = calls(tmp_path).count("c")
    results = runner.run(sel)
    assert statuses(results) == {"b": "cached", "c": "ran"}
    assert calls(tmp_path).count("c") == before + 1, "c must really execute"
    assert next(r for r in results if r.name == "c").summary == {"value": 3}


def test_only_and_from_against_missing_upstream(tmp_path, mlflow_server, ray_local):
    cfg = make_config(tmp_path)
    runner = Runner(cfg, STAGES, mlflow_server)
    with pytest.raises(DagError, match=r"needs the output of 'a'"):
        select(runner.dag, runner.storage, only=["b"])
    # --from b with nothing cached: a is not selected by --from but is missing, so it runs too
    sel = select(runner.dag, runner.storage, from_="b")
    assert sel.run == [n for n in runner.dag.order if n in ("a", "b", "c", "x")] and sel.reuse == []
    # an independent stage alone needs nothing
    results = runner.run(select(runner.dag, runner.storage, only=["x"]))
    assert statuses(results) == {"x": "ran"}
    # cached a, then --only b: a is reused, b runs, c is untouched
    runner.run(select(runner.dag, runner.storage, only=["a"]))
    results = runner.run(select(runner.dag, runner.storage, only=["b"]))
    assert statuses(results) == {"a": "cached", "b": "ran"}


def test_from_reruns_stage_and_descendants(tmp_path, mlflow_server, ray_local):
    run(tmp_path, mlflow_server)
    cfg = make_config(tmp_path)
    runner = Runner(cfg, STAGES, mlflow_server)
    results = runner.run(select(runner.dag, runner.storage, from_="b"))
    assert statuses(results) == {"a": "cached", "b": "ran", "c": "ran", "x": "cached"}
    results = runner.run(select(runner.dag, runner.storage, force=["x"]))
    assert statuses(results)["x"] == "ran" and statuses(results)["a"] == "cached"


def test_unknown_stage_name_is_a_clear_error(tmp_path):
    cfg = make_config(tmp_path)
    from pipeline.storage import Storage

    with pytest.raises(DagError, match="unknown stage 'bb'"):
        select(dagmod.Dag(STAGES, cfg), Storage(cfg.globals.output_root), only=["bb"])


def test_unimplemented_stage_fails_clearly_without_output(tmp_path, mlflow_server, ray_local):
    stages = [Stage(name="later", config=StageConfig, run=None)]
    cfg = parse_config({"name": "toy-later", "output_root": str(tmp_path / "out")}, stages)
    runner = Runner(cfg, stages, mlflow_server)
    with pytest.raises(PipelineFailed):
        runner.run()
    node = runner.dag["later"]
    assert "not implemented" in runner.storage.read_text("later", node.fingerprint, dagmod.FAILED)
    assert not runner.storage.exists("later", node.fingerprint, dagmod.SUCCESS)
