"""The shared trainer on Ray Train with ZeRO-3 (FSDP2), 2 CPU workers (dp=2, gloo): a run stopped
after step 3 and resumed from its (gathered, layout-free) checkpoint follows the unsharded dp=2
run step for step (loss and gradient norm within float tolerance, the same data), with two
micro-batches per step (FSDP's gradient sync on the last one only), and its final checkpoint
loads whole through ``load_model``."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from stages.common.training import TrainerConfig, TrainJob, fit
from stages.common.training.checkpoint import load_model
from stages.pretrain.data import ShardEvalData, ShardTrainData
from tests.pretrain.helpers import micro_config
from tokenizer import Tokenizer

pytestmark = pytest.mark.slow

STEPS = 6


def make_job(tokenized: Path, zero: int, **train) -> TrainJob:
    tok = Tokenizer.load(tokenized / "tokenizer")
    cfg = TrainerConfig(steps=STEPS, batch_size=4, seq_len=32, grad_accum=2, precision="fp32", log_every=1,
                        schedule={"warmup_steps": 2}, parallel={"dp": 2, "zero": zero},
                        checkpoint={"every": 3, "keep": 1}, eval={"every": 3, "batches": 1}, **train)
    shards = str(tokenized / "shards")
    return TrainJob(config=cfg, model_config=micro_config(vocab_size=tok.vocab_size), seed=0, label="zero3",
                    train_data=ShardTrainData(shards), eval_data=ShardEvalData(shards, tok.token_byte_lengths()))


def test_zero3_run_resumes_and_matches_dp(ray_local, tokenized, tmp_path):
    plain = fit(make_job(tokenized, 0), storage=tmp_path / "plain", name="plain")
    first = fit(make_job(tokenized, 3, stop_after_step=3), storage=tmp_path / "zero3", name="zero3")
    assert first.state.step == 3
    sharded = fit(make_job(tokenized, 3), storage=tmp_path / "zero3", name="zero3")
    assert sharded.state.attempts == [0, 3]
    for a, b in zip(plain.state.history, sharded.state.history, strict=True):
        assert (a["step"], a["data_fingerprint"]) == (b["step"], b["data_fingerprint"])
        assert b["loss"] == pytest.approx(a["loss"], rel=1e-4) and b["grad_norm"] == pytest.approx(a["grad_norm"],
                                                                                                    rel=1e-3)
    for a, b in zip(plain.state.evals, sharded.state.evals, strict=True):
        assert b["val/loss"] == pytest.approx(a["val/loss"], rel=1e-4)
    assert sharded.state.history[-1]["loss"] < sharded.state.history[0]["loss"]
    ckpt = sorted(Path(sharded.run_path).glob("checkpoint-*"))[-1]
    model = load_model(ckpt).eval()
    with torch.no_grad():
        assert torch.isfinite(model(torch.tensor([[1, 2, 3, 4]])).logits).all()
