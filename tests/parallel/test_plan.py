"""`pipeline plan`: memory per GPU from the module tree, checked by hand on the micro model and
run on DeepSeek-V3 671B at its production layout."""

from __future__ import annotations

import json

import pytest

from model import DeepSeekV3
from model.parallel.memory import GiB, MemoryLayout, activation_bytes_per_token, memory_plan
from tests.pretrain.helpers import micro_config


def count(module) -> int:
    return sum(p.numel() for p in module.parameters())


def test_micro_model_by_hand():
    config = micro_config(num_hidden_layers=3)
    layout = MemoryLayout(pp=2, dp=1, ep=2, zero=1, schedule="1f1b", micro_batch_size=2, seq_len=32,
                          microbatches=4, recipe="whale")
    plan = memory_plan(config, layout)
    model = DeepSeekV3(config)
    experts = {lid: count(moe.experts) for lid, moe in model.moe_layers().items()}
    # split rule: 3 layers + MTP over 2 stages -> [0, 1] | [2, mtp]
    stage0_dense = count(model.embed_tokens) + count(model.layers["0"]) + count(model.layers["1"]) - experts[1]
    stage1_dense = (count(model.layers["2"]) - experts[2] + count(model.mtp) - experts[3]
                    + count(model.norm) + count(model.lm_head))
    r0, r1 = plan.ranks
    assert (r0.layers, r1.layers) == ([0, 1], [2, 3])
    assert (r0.dense_params, r0.expert_params) == (stage0_dense, experts[1] // 2)
    assert (r1.dense_params, r1.expert_params) == (stage1_dense, (experts[2] + experts[3]) // 2)
    assert plan.total_params == count(model)
    for r in plan.ranks:   # whale recipe: FP32 weights and grads; ZeRO-1 shards the FP32 moments
        assert r.weights == r.gradients == 4 * r.params and r.master == 0
        # dense replicated over dp x ep = 2 ranks, this rank's experts over dp = 1
        assert r.optimizer == 8 * (r.dense_params / 2 + r.expert_params)
    # activations: 1F1B keeps pp = 2 micro-batches in flight; the last stage adds head + MTP logits
    tokens = 2 * 32
    per_layer = [activation_bytes_per_token(config, i, "none") for i in range(4)]
    assert r0.activations == pytest.approx((per_layer[0] + per_layer[1]) * tokens * 2)
    assert r1.activations == pytest.approx((per_layer[2] + per_layer[3]) * tokens * 2 + 2 * tokens * 256 * 6)
    # ZeRO-3 shards weights and gradients too; the deepseek recipe halves the weights
    z3 = memory_plan(config, MemoryLayout(pp=2, ep=2, zero=3, microbatches=4, seq_len=32, micro_batch_size=2))
    assert z3.ranks[0].weights == 4 * (r0.dense_params / 2 + r0.expert_params)
    ds = memory_plan(config, MemoryLayout(pp=2, ep=2, zero=1, microbatches=4, seq_len=32, micro_batch_size=2,
                                          recipe="deepseek"))
    assert ds.ranks[0].weights == 2 * r0.params and ds.ranks[0].optimizer == 4 * (r0.dense_params / 2
                                                                                   + r0.expert_params)


def test_activation_checkpointing_saves_memory():
    config = micro_config()
    none, sel, full = (activation_bytes_per_token(config, 1, m) for m in ("none", "selective", "full"))
    assert full == 4 * config.hidden_size < sel < none


def test_deepseek_v3_671b_plan(capsys):
    from pipeline.cli import main

    rc = main(["plan", "configs/deepseek-v3-671b.yaml", "--gpus", "2048", "--gpu-mem", "80", "--json"])
    out = json.loads(capsys.readouterr().out)
    assert out["layout"]["pp"] == 16 and out["layout"]["ep"] == 64 and out["layout"]["dp"] == 2
    assert out["total_params"] == pytest.approx(682.6e9, rel=1e-3)   # 671.0B + 11.5B MTP
    ranks = out["ranks"]
    assert len(ranks) == 16 and ranks[0]["stages"] == [0, 31]          # DualPipeV: embedding + head/MTP on rank 0
    per_rank = [r["dense_params"] + r["expert_params"] for r in ranks]
    assert all(1.0e9 < p < 4.0e9 for p in per_rank)                    # ~1.6B per GPU: experts / 64, layers / 16
    assert rc == (0 if out["fits"] else 1)
    worst = max(r["total_bytes"] for r in ranks)
    assert 20 * GiB < worst < 400 * GiB


def test_plan_rejects_bad_gpu_counts(capsys):
    from pipeline.cli import main

    assert main(["plan", "configs/deepseek-v3-671b.yaml", "--gpus", "1000"]) == 2
    assert "not a multiple of pp x ep" in capsys.readouterr().out
