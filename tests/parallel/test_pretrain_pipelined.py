"""The pretrain stage on Ray Train with pipeline parallelism: 2 CPU workers as a 2-stage 1F1B
pipeline (ZeRO-1 is a no-op with one replica per stage, so it rides along), end to end to a
Hugging Face folder."""

from __future__ import annotations

import math

import pytest
import torch

from pipeline.config import GlobalConfig
from pipeline.stage import StageContext
from pipeline.tracking import Tracker
from stages.pretrain.config import PretrainConfig
from stages.pretrain.run import run
from tests.pretrain.helpers import MICRO

pytestmark = pytest.mark.slow

MODEL = {"preset": "tiny", **{k: v for k, v in MICRO.items() if k != "vocab_size"}}
TRAIN = {"steps": 6, "batch_size": 4, "seq_len": 64, "log_every": 3, "precision": "bf16",
         "optimizer": {"lr": 1e-2}, "schedule": {"warmup_steps": 2},
         "parallel": {"pp": 2, "dp": 1, "ep": 1, "schedule": "1f1b", "microbatches": 2, "zero": 1,
                      "activation_checkpointing": "selective"},
         "checkpoint": {"every": 3}, "eval": {"every": 6, "batches": 2}}


def test_pretrain_with_pp2(ray_local, tokenized, tmp_path):
    from model import DeepSeekV3

    ctx = StageContext(stage="pretrain", out=tmp_path / "out", inputs={"tokenizer": tokenized},
                       tracker=Tracker.disabled(), pipeline=GlobalConfig(name="pp-test"), fingerprint="test")
    summary = run(PretrainConfig(model=MODEL, train=TRAIN), ctx)
    assert summary["steps"] == 6 and summary["train_tokens"] == 6 * 4 * 64
    for key in ("train_loss", "val_loss", "val_bpb", "tokens_per_s"):
        assert math.isfinite(summary[key]) and summary[key] > 0, key
    assert summary["val_loss"] < math.log(1024) + 1   # the pipelined eval scored real targets
    model = DeepSeekV3.from_pretrained(tmp_path / "out" / "hf").eval()   # both stages' tensors
    assert model.config.num_hidden_layers == MICRO["num_hidden_layers"] and len(model.mtp) == 1
    with torch.no_grad():
        assert torch.isfinite(model(torch.tensor([[1, 2, 3, 4]])).logits).all()
