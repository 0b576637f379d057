"""The serve stage: config validation, model resolution against a real MLflow registry, and the
whole stage run inside a Ray task (as the runner runs it), leaving a live deployment behind."""

from __future__ import annotations

import argparse
import json

import pytest
from pydantic import ValidationError

from pipeline.config import GlobalConfig, parse_config
from pipeline.stage import StageContext
from pipeline.tracking import Tracker
from stages.serve import STAGE
from stages.serve.config import ServeConfig
from stages.serve.server import ServeSetupError
from tests.serve.conftest import free_port
from tests.serve.helpers import REPLY_ANSWER, REPLY_REASONING

NAME = "serve-test"


# -- config ---------------------------------------------------------------------------------------

def test_stage_declaration():
    assert STAGE.name == "serve" and STAGE.upstream == ("eval",) and STAGE.always_run
    assert STAGE.resources.cpus == 0 and STAGE.key_metric == "url"
    cfg = ServeConfig()
    assert (cfg.model, cfg.alias, cfg.http.host, cfg.auth.enabled, cfg.backend) == \
        (None, "champion", "127.0.0.1", False, "whale")


@pytest.mark.parametrize("bad,match", [
    ({"http": {"port": 0}}, "greater than or equal to 1"),
    ({"http": {"route_prefix": "v1"}}, "must start with '/'"),
    ({"model": "models:/whale"}, "models:/NAME@ALIAS or models:/NAME/VERSION"),
    ({"model": "  "}, "model is empty"),
    ({"deployment": {"autoscaling": {"min_replicas": 3, "max_replicas": 2}}}, "exceeds max_replicas"),
    ({"engine": {"num_slots": 64, "max_num_batched_tokens": 64}}, "must exceed num_slots"),
    ({"backend": "tgi"}, "'whale' or 'vllm'"),
    ({"deployment": {"replicas": 2}}, "Extra inputs are not permitted"),
])
def test_bad_config_fails_before_any_work(bad, match):
    with pytest.raises(ValidationError, match=match):
        ServeConfig.model_validate(bad)


def test_cli_flags_become_config_overrides():
    from stages.serve.__main__ import _extra_args

    parser = argparse.ArgumentParser()
    to_overrides = _extra_args(parser)
    args = parser.parse_args(["--model", "models:/whale@candidate", "--port", "9001"])
    overrides = to_overrides(args)
    assert overrides == ["serve.model=models:/whale@candidate", "serve.http.port=9001"]
    cfg = parse_config({"name": "whale"}, [STAGE], overrides)
    assert cfg["serve"].model == "models:/whale@candidate" and cfg["serve"].http.port == 9001


def test_vllm_backend_maps_the_config_and_explains_a_missing_vllm():
    from stages.serve.vllm_backend import build_vllm_app, llm_config_kwargs

    cfg = ServeConfig.model_validate({"backend": "vllm", "engine": {"max_seq_len": 4096, "num_slots": 32,
                                                                    "max_num_batched_tokens": 2048},
                                      "vllm": {"tensor_parallel_size": 8, "accelerator_type": "H100",
                                               "engine_kwargs": {"enforce_eager": True}},
                                      "deployment": {"autoscaling": {"min_replicas": 1, "max_replicas": 4}}})
    kw = llm_config_kwargs(cfg, "/models/whale", "whale")
    assert kw["model_loading_config"] == {"model_id": "whale", "model_source": "/models/whale"}
    e = kw["engine_kwargs"]
    assert (e["max_model_len"], e["max_num_seqs"], e["tensor_parallel_size"], e["enforce_eager"]) == (4096, 32, 8, True)
    assert e["speculative_config"]["method"] == "deepseek_mtp" and e["reasoning_parser"] == "deepseek_r1"
    assert kw["accelerator_type"] == "H100" and kw["deployment_config"]["autoscaling_config"]["max_replicas"] == 4
    assert "ray_actor_options" not in kw["deployment_config"]
    import importlib.util

    if importlib.util.find_spec("vllm") is None:
        with pytest.raises(ServeSetupError, match="needs vLLM"):
            build_vllm_app(cfg, "/models/whale", "whale")


# -- registry ---------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def registry(mlflow_server, chat_model_dir):
    """NAME v1 @candidate and v2 @champion, as distill and eval would leave them."""
    from mlflow import MlflowClient

    client = MlflowClient(mlflow_server)
    exp = client.get_experiment_by_name(NAME)
    exp_id = exp.experiment_id if exp else client.create_experiment(NAME)
    for alias in ("candidate", "champion"):
        run = client.create_run(exp_id, run_name=f"register {alias}")
        Tracker(run.info.run_id, mlflow_server).register_model(chat_model_dir, NAME, alias)
        client.set_terminated(run.info.run_id)
    return client, exp_id


def test_model_references_resolve_to_pinned_versions(registry, mlflow_server):
    from stages.serve.model_source import resolve

    champion = resolve(f"models:/{NAME}@champion", mlflow_server)
    assert (champion.uri, champion.version, champion.alias) == (f"models:/{NAME}/2", "2", "champion")
    assert resolve(f"models:/{NAME}/1", mlflow_server).uri == f"models:/{NAME}/1"
    with pytest.raises(ServeSetupError, match=r"has no alias @prod \(aliases: @candidate -> v1, @champion -> v2\)"):
        resolve(f"models:/{NAME}@prod", mlflow_server)
    with pytest.raises(ServeSetupError, match="no model named 'nope' is registered"):
        resolve("models:/nope@champion", mlflow_server)
    with pytest.raises(ServeSetupError, match="does not exist"):
        resolve("/no/such/folder", mlflow_server)


# -- the stage, end to end ---------------------------------------------------------------------------

@pytest.mark.slow
def test_stage_deploys_the_champion_smoke_tests_and_records_it(ray_local, registry, mlflow_server, tmp_path):
    import httpx
    import ray
    from openai import OpenAI
    from ray import serve

    from stages.serve.run import run

    client, exp_id = registry
    stage_run = client.create_run(exp_id, run_name="serve")
    cfg = ServeConfig.model_validate({
        "app_name": "whale-stage-test", "http": {"port": free_port()},
        "engine": {"num_slots": 4, "max_seq_len": 256, "max_num_batched_tokens": 64},
        "deployment": {"num_cpus": 1, "deploy_timeout_s": 180, "log_level": "WARNING"},
        "smoke_test": {"max_tokens": 12},
    })
    out = tmp_path / "out"
    out.mkdir()
    ctx = StageContext(stage="serve", out=out, inputs={}, tracker=Tracker(stage_run.info.run_id, mlflow_server),
                       pipeline=GlobalConfig(name=NAME), fingerprint="test")
    try:
        # as the runner does: inside a Ray task that ends before anyone talks to the server
        summary = ray.get(ray.remote(run).options(num_cpus=0).remote(cfg, ctx))
        url = summary["url"]
        assert url == f"http://127.0.0.1:{cfg.http.port}"
        assert (summary["model_uri"], summary["model_version"]) == (f"models:/{NAME}/2", "2")
        assert summary["ttft_ms"] > 0 and summary["tokens_per_s"] > 0 and summary["smoke_completion_tokens"] == 12

        # the deployment outlived the stage's task; auth is off by default
        reply = OpenAI(base_url=f"{url}/v1", api_key="anything", max_retries=0).chat.completions.create(
            model=NAME, messages=[{"role": "user", "content": "hi"}], temperature=0, max_tokens=60)
        assert reply.choices[0].message.content == REPLY_ANSWER
        assert reply.choices[0].message.model_extra["reasoning_content"] == REPLY_REASONING
        assert httpx.get(f"{url}/health").status_code == 200

        deployment = json.loads((out / "deployment.json").read_text())
        assert deployment["url"] == url and deployment["openai_base_url"] == f"{url}/v1"
        assert deployment["model"]["uri"] == f"models:/{NAME}/2" and deployment["model"]["alias"] == "champion"
        assert deployment["config"]["engine"]["num_slots"] == 4 and deployment["smoke_test"]["completion_tokens"] == 12
        assert (out / "model" / "config.json").is_file()

        tags = client.get_run(stage_run.info.run_id).data.tags
        assert tags["serve.model_version"] == "2" and tags["serve.url"] == url
        assert tags["serve.model_requested"] == f"models:/{NAME}@champion"
        live = client.get_model_version(NAME, "2").tags
        assert live["whale.serving"] == url
        assert "whale.serving" not in client.get_model_version(NAME, "1").tags
        assert client.get_run(stage_run.info.run_id).data.metrics["smoke/ttft_ms"] > 0
    finally:
        serve.shutdown()
