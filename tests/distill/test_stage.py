"""The distill stage end to end on a micro model: real problems and procedural traces, SFT on Ray
Train through the shared trainer, before/after evaluation, a real MLflow server with the registry."""

from __future__ import annotations

import json
import math

import pytest

from pipeline.config import GlobalConfig
from pipeline.stage import StageContext
from pipeline.tracking import Tracker
from stages.distill.config import DistillConfig
from tests.distill.helpers import micro_checkpoint, tiny_shards, trace_rows, train_tokenizer

NAME = "distill-stage-test"
CONFIG = {
    "problems": {"n_train": 160, "n_heldout": 8},
    "train": {"steps": 12, "batch_size": 4, "seq_len": 256, "log_every": 4, "parallel": {"dp": 1, "ep": 1},
              "optimizer": {"lr": 3e-3}, "checkpoint": {"every": 6}, "eval": {"every": 6, "batches": 1}},
    "sft": {"val_fraction": 0.1},
    "evaluation": {"max_problems": 6, "sampling": {"samples": 2, "max_new_tokens": 40}, "pass_at": [1, 2]},
    "probe": {"n": 3},
    "table_rows": 4,
    "replay": {"ratio": 0.5},
}


@pytest.fixture(scope="module")
def upstream(tmp_path_factory):
    """A tokenizer-stage output and a pretrain-stage output (a random micro model + tokenizer files)."""
    root = tmp_path_factory.mktemp("distill-upstream")
    tok = train_tokenizer(trace_rows(200), root / "tokenizer" / "tokenizer")
    tiny_shards(root / "tokenizer" / "shards", tok)
    micro_checkpoint(root / "pretrain" / "hf", tok)
    return {"tokenizer": root / "tokenizer", "pretrain": root / "pretrain"}


@pytest.fixture(scope="module")
def stage(ray_local, mlflow_server, upstream, tmp_path_factory):
    from mlflow import MlflowClient

    from stages.distill.run import run

    client = MlflowClient(mlflow_server)
    run_id = client.create_run(client.create_experiment(NAME)).info.run_id
    out = tmp_path_factory.mktemp("distill-out")
    ctx = StageContext(stage="distill", out=out, inputs=upstream, tracker=Tracker(run_id, mlflow_server),
                       pipeline=GlobalConfig(name=NAME), fingerprint="test")
    summary = run(DistillConfig(**CONFIG), ctx)
    client.set_terminated(run_id)
    return out, summary, client, run_id


def test_outputs_follow_the_stage_contract(stage):
    from stages.common.problems import read_problems
    from stages.distill.rejection import read_jsonl

    out, summary, _, _ = stage
    heldout = read_problems(out / "data" / "heldout.jsonl")
    train = read_jsonl(out / "data" / "train.jsonl")
    assert len(heldout) == 6 + 3 and len(train) > 50          # the evaluated held-out problems + the probe
    assert {p.task for p in heldout} == {"arithmetic", "arithmetic_3digit"}
    assert not {p.id for p in heldout} & {r["problem_id"] for r in train}
    roles = [m["role"] for m in train[0]["messages"]]
    assert roles == ["user", "assistant"] and train[0]["messages"][1]["reasoning_content"]
    stats = json.loads((out / "data" / "stats.json").read_text())
    assert stats["rejection"]["kept"] == summary["traces_kept"] and stats["split"]["overlap"]["max_overlap"] < 0.8
    for f in ("config.json", "model.safetensors", "tokenizer.model", "tokenizer.json"):
        assert (out / "hf" / f).is_file(), f
    assert (out / "samples" / "before.jsonl").is_file() and (out / "samples" / "after.jsonl").is_file()
    assert (out / "plots" / "loss_curve.png").is_file()


def test_summary_has_before_and_after(stage):
    _, s, _, _ = stage
    for key in ("pass_at_1_before", "pass_at_1_after", "before/pass_at_2", "after/pass_at_2", "before/format",
                "after/format", "after/arithmetic/greedy_pass_at_1_ci_high", "after/arithmetic_3digit/greedy_pass_at_1",
                "after/reasoning_tokens", "train_loss", "val_loss", "val_bpb_web"):
        assert math.isfinite(s[key]), key
    assert 0 <= s["after/pass_at_1"] <= s["after/pass_at_2"] <= 1
    assert s["steps"] == 12 and s["registered_version"] == "1"
    assert s["before/format"] == 0.0   # a random model never writes a think block, an answer and EOS


def test_distilled_model_loads_standalone(stage):
    import torch
    from transformers import AutoTokenizer

    from model import DeepSeekV3
    from tokenizer import Tokenizer

    out, _, _, _ = stage
    model = DeepSeekV3.from_pretrained(out / "hf").eval()
    tok = Tokenizer.load(out / "hf")
    prompt = tok.encode_chat([{"role": "user", "content": "What is 2 + 3?"}], add_generation_prompt=True).ids
    assert AutoTokenizer.from_pretrained(out / "hf")("What is 2 + 3?", add_special_tokens=False)["input_ids"] == \
        tok.encode("What is 2 + 3?")
    with torch.no_grad():
        assert torch.isfinite(model(torch.tensor([prompt])).logits).all()


def test_mlflow_has_metrics_table_and_candidate_alias(stage):
    out, s, client, run_id = stage
    metrics = client.get_run(run_id).data.metrics
    for key in ("eval/before/greedy_pass_at_1", "eval/after/greedy_pass_at_1", "eval/after/format",
                "eval/pass_at_1_gain", "val/bpb/web",
                "data/kept", "data/keep_rate", "problems/max_overlap", "sft/train_traces", "train/loss",
                "train/lm_loss", "val/loss"):
        assert key in metrics, key
    assert metrics["eval/after/greedy_pass_at_1"] == pytest.approx(s["pass_at_1_after"], abs=1e-4)
    assert any(k.startswith("data/dropped/") for k in metrics)
    version = client.get_model_version_by_alias(NAME, "candidate")
    assert version.version == "1" and version.run_id == run_id
    artifacts = {a.path for a in client.list_artifacts(run_id, "samples")}
    assert "samples/heldout_generations.json" in artifacts
    table = json.loads(open(client.download_artifacts(run_id, "samples/heldout_generations.json")).read())
    assert {"model", "prompt", "reasoning", "answer", "verdict"} <= set(table["columns"])
    assert {row[table["columns"].index("model")] for row in table["data"]} == {"before", "after"}
