"""The pretrain stage end to end: real tokenizer output -> Ray Train (2 workers, DP=2) -> a Hugging
Face folder that loads on its own, metrics and plots in MLflow, the model registered as `base`."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from pipeline.config import GlobalConfig
from pipeline.stage import StageContext
from pipeline.tracking import Tracker
from stages.pretrain.config import PretrainConfig
from stages.pretrain.run import run
from tests.pretrain.helpers import MICRO

pytestmark = pytest.mark.slow

NAME = "pretrain-stage-test"
MODEL = {"preset": "tiny", **{k: v for k, v in MICRO.items() if k != "vocab_size"}}
TRAIN = {"steps": 30, "batch_size": 8, "seq_len": 64, "log_every": 10, "precision": "auto",
         "mtp_weight": {"start_at": 0.5, "switch_at": 0.8, "batch_fraction": 0.5},   # MTP from step 16, half the rows
         "optimizer": {"lr": 1e-2}, "schedule": {"warmup_steps": 5}, "parallel": {"dp": 2, "ep": 1},
         "checkpoint": {"every": 15}, "eval": {"every": 15, "batches": 2}}


@pytest.fixture(scope="module")
def stage(ray_local, tokenized, mlflow_server, tmp_path_factory):
    from mlflow import MlflowClient

    client = MlflowClient(mlflow_server)
    run_id = client.create_run(client.create_experiment(NAME)).info.run_id
    out = tmp_path_factory.mktemp("pretrain-out")
    ctx = StageContext(stage="pretrain", out=out, inputs={"tokenizer": tokenized},
                       tracker=Tracker(run_id, mlflow_server), pipeline=GlobalConfig(name=NAME), fingerprint="test")
    cfg = PretrainConfig(model=MODEL, train=TRAIN, data={"document_masking": True})
    summary = run(cfg, ctx)
    client.set_terminated(run_id)
    return out, summary, client, run_id


def test_summary_has_the_headline_numbers(stage):
    _, s, _, _ = stage
    assert s["steps"] == 30 and s["train_tokens"] == 30 * 8 * 64 and s["layout"] == "dp2xep1"
    for key in ("val_bpb", "unigram_bpb", "val_bpb_web", "val_bpb_code", "tokens_per_s", "mfu"):
        assert math.isfinite(s[key]) and s[key] > 0, key
    assert 1 < s["unigram_bpb"] < 8
    assert s["val_loss"] < math.log(1024) - 0.5          # learnt something beyond uniform
    assert s["precision"] in ("fp32", "bf16")             # `auto` resolved on the workers
    assert s["registered_version"] == "1"


def test_hf_folder_loads_standalone(stage, tokenized):
    from transformers import AutoTokenizer

    from model import DeepSeekV3
    from tokenizer import Tokenizer

    out, _, _, _ = stage
    model = DeepSeekV3.from_pretrained(out / "hf").eval()
    assert model.config.vocab_size == 1024 and model.config.eos_token_id == 1
    text = "def add(a, b):\n    return a + b\n"
    hf_tok = AutoTokenizer.from_pretrained(out / "hf")
    ids = hf_tok(text, add_special_tokens=False)["input_ids"]
    assert ids == Tokenizer.load(tokenized / "tokenizer").encode(text)
    with torch.no_grad():
        logits = model(torch.tensor([ids])).logits
    assert logits.shape == (1, len(ids), 1024) and torch.isfinite(logits).all()


def test_metrics_plots_and_registry_in_mlflow(stage):
    out, s, client, run_id = stage
    metrics = client.get_run(run_id).data.metrics
    for key in ("train/loss", "train/lm_loss", "train/mtp_loss", "train/balance_loss", "train/lr", "train/grad_norm",
                "perf/tokens_per_s", "perf/mfu", "perf/peak_flops", "moe/maxvio", "moe/maxvio/layer_1",
                "moe/bias_range/layer_1", "val/loss", "val/bpb", "val/bpb/web", "val/bpb/code", "unigram/bpb",
                "unigram/bpb/web", "unigram/bpb/code"):
        assert key in metrics, key
    assert metrics["val/bpb"] == pytest.approx(s["val_bpb"], abs=1e-3)
    history = client.get_metric_history(run_id, "train/loss")
    assert [m.step for m in history] == [10, 20, 30]
    # MTP off (λ = 0, module skipped) until step 15: no MTP loss logged then, a forward share after
    assert [m.step for m in client.get_metric_history(run_id, "train/mtp_loss")] == [20, 30]
    assert [m.value for m in client.get_metric_history(run_id, "train/mtp_weight")] == [0.0, 0.3, 0.1]
    shares = [m.value for m in client.get_metric_history(run_id, "perf/mtp_forward_share")]
    assert shares[0] == 0.0 and all(0 < v < 1 for v in shares[1:])
    artifacts = {a.path for a in client.list_artifacts(run_id, "plots")}
    assert {"plots/loss_curve.png", "plots/expert_load.png"} <= artifacts
    assert (out / "plots" / "loss_curve.png").stat().st_size > 10_000
    version = client.get_model_version_by_alias(NAME, "base")
    assert version.run_id == run_id
    # the registered version is an MLflow 3 logged model produced by this run: the HF folder loads from it
    from stages.eval import registry

    ref = registry.resolve(f"models:/{NAME}@base", client.tracking_uri)
    local = registry.fetch(ref, out / "registered", client.tracking_uri)
    assert (Path(local) / "config.json").is_file()
