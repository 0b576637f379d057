"""Pipeline parallelism and ZeRO-1 on CPU with gloo: two processes reproduce one.

One process trains the micro model (3 layers + MTP: a dense layer, MoE layers with shared and
routed experts, group-limited routing, a balance loss, MTP) on the whole batch. Two processes run
it (all cases in one spawn, the start-up is the expensive part):

- as a 2-rank pipeline with torch's 1F1B, interleaved 1F1B and DualPipeV schedules, the embedding
  in the first stage, head + MTP in the last: loss terms, every gradient, the global expert loads
  and the router-bias update must match the single process;
- as dp=2 with ZeRO-1 (AdamW states sharded): parameters after the step must equal dp=2 without
  ZeRO bitwise, with half the optimizer state on each rank;
- a checkpoint written by the PP=2 run (model + AdamW state) must load into one unpipelined model.
"""

from __future__ import annotations

import pytest
import torch

from model.parallel import ParallelLayout
from tests.parallel.helpers import micro_model, random_batch, spawn

GLOBAL_BATCH, SEQ, LAYERS = 4, 32, 3
SCHEDULES = {"1f1b": 2, "interleaved": 4, "dualpipev": 4}   # schedule -> micro-batches


def one_step(model, groups, micro_batches, pipeline=None, optimizer=None):
    from stages.common.training.step import TrainStep, build_optimizer

    opt = optimizer or build_optimizer(model, lr=1e-2, betas=(0.9, 0.95), weight_decay=0.1)
    step = TrainStep(model, opt, groups, precision="fp32", grad_clip=1.0, bias_update_rate=0.01, pipeline=pipeline)
    stats = step.accumulate_gradients(micro_batches, mtp_weight=0.3)
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    step.apply(stats, lr=1e-2)
    return {"loss": stats.loss, "lm": stats.lm_loss, "mtp": stats.mtp_loss, "bal": stats.balance_loss,
            "loads": stats.expert_load, "grad_norm": stats.grad_norm, "grads": grads,
            "state": {n: t.clone() for n, t in model.state_dict().items()}}, opt


def split(batch, parts: int, index: int | None = None):
    per = batch["input_ids"].shape[0] // parts
    chunks = [{k: v[i * per:(i + 1) * per] for k, v in batch.items()} for i in range(parts)]
    return chunks if index is None else chunks[index]


def _worker(rank: int, world: int, ckpt_dir: str):
    from model.parallel import init_parallel
    from model.parallel.pipeline import Pipeline
    from model.parallel.zero import ZeroAdamW
    from stages.common.training.checkpoint import save_checkpoint

    batch = random_batch(GLOBAL_BATCH, SEQ)
    out = {}
    for schedule, m in SCHEDULES.items():
        groups = init_parallel(ParallelLayout(pp=2))
        model = micro_model(num_hidden_layers=LAYERS)
        pipe = Pipeline(model, groups, schedule=schedule, microbatches=m)
        result, opt = one_step(model, groups, split(batch, m), pipe)
        out[schedule] = {"stages": pipe.plan.stage_ids, **result}
        if schedule == "1f1b":
            meta = {"step": 1, "world_size": 2, "layout": {"pp": 2, "dp": 1, "ep": 1},
                    "model_config": model.config.to_hf_dict(), "trainer_state": {}} if rank == 0 else None
            save_checkpoint(ckpt_dir, model=model, optimizer=opt, groups=groups, rank_state={}, meta=meta)
    # ZeRO-1 against plain dp=2 on the same half-batches
    groups = init_parallel(ParallelLayout(dp=2))
    for zero in (False, True):
        model = micro_model(num_hidden_layers=LAYERS)
        opt = ZeroAdamW(model, groups, lr=1e-2, betas=(0.9, 0.95), weight_decay=0.1) if zero else None
        result, opt = one_step(model, groups, [split(batch, 2, rank)], optimizer=opt)
        result["state_bytes"] = (opt.state_bytes() if zero else
                                 sum(t.numel() * t.element_size() for s in opt.state.values() for t in s.values()
                                     if torch.is_tensor(t)))
        out["zero1" if zero else "dp2"] = result
    return out


@pytest.fixture(scope="module")
def ranks(tmp_path_factory):
    root = tmp_path_factory.mktemp("pp")
    return spawn(_worker, 2, root / "out", str(root / "ckpt")), root / "ckpt"


@pytest.fixture(scope="module")
def reference():
    from model.parallel import ParallelGroups

    torch.set_num_threads(1)
    return one_step(micro_model(num_hidden_layers=LAYERS), ParallelGroups.single(), [random_batch(GLOBAL_BATCH, SEQ)])


@pytest.mark.parametrize("schedule", list(SCHEDULES))
def test_pp2_matches_pp1(schedule, ranks, reference):
    ref, _ = reference
    got_ranks = [r[schedule] for r in ranks[0]]
    assert ref["bal"] > 0 and ref["mtp"] > 0
    for got in got_ranks:
        for key in ("loss", "lm", "mtp", "bal", "grad_norm"):
            assert got[key] == pytest.approx(ref[key], rel=1e-5, abs=1e-7), key
        torch.testing.assert_close(got["loads"], ref["loads"], rtol=0, atol=0)   # counts: exact
        for name, g in got["grads"].items():
            torch.testing.assert_close(g, ref["grads"][name], rtol=1e-4, atol=1e-6, msg=name)
        for name in (n for n in got["state"] if n.endswith("e_score_correction_bias")):
            torch.testing.assert_close(got["state"][name], ref["state"][name], rtol=0, atol=0, msg=name)
    # the two ranks hold disjoint parts that together are the whole model, and got every gradient
    held = [set(r["state"]) for r in got_ranks]
    assert held[0].isdisjoint(held[1]) and held[0] | held[1] == set(ref["state"])
    assert set(got_ranks[0]["grads"]) | set(got_ranks[1]["grads"]) == set(ref["grads"])
    n_stages = 1 + max(max(r["stages"]) for r in got_ranks)
    first = next(r for r in range(2) if 0 in got_ranks[r]["stages"])
    last = next(r for r in range(2) if n_stages - 1 in got_ranks[r]["stages"])
    assert "embed_tokens.weight" in got_ranks[first]["state"]
    assert {"lm_head.weight", "norm.weight"} <= set(got_ranks[last]["state"])
    assert any(n.startswith("mtp.0.") for n in got_ranks[last]["state"])
    if schedule == "dualpipev":   # the V: the first and the last stage on rank 0
        assert first == last == 0 and n_stages == 4


def test_zero1_equals_dp(ranks, reference):
    ref, _ = reference
    for r in ranks[0]:
        plain, zero = r["dp2"], r["zero1"]
        assert zero["loss"] == pytest.approx(ref["loss"], rel=1e-5)
        for name, t in plain["state"].items():
            assert torch.equal(zero["state"][name], t), name   # ZeRO-1 changes where, not what
        # each rank keeps about half the AdamW state
        assert 0.3 * plain["state_bytes"] < zero["state_bytes"] < 0.7 * plain["state_bytes"]
    a, b = (r["zero1"]["state"] for r in ranks[0])
    assert all(torch.equal(a[n], b[n]) for n in a)   # replicas stay identical after the broadcast


def test_checkpoint_from_pp2_loads_into_pp1(ranks, reference):
    from model.parallel import ParallelGroups
    from stages.common.training.checkpoint import load_checkpoint, load_model
    from stages.common.training.step import build_optimizer

    results, ckpt = ranks
    stepped = {**results[0]["1f1b"]["state"], **results[1]["1f1b"]["state"]}
    full = load_model(ckpt)   # export path: every tensor, from both stages' files
    for name, t in full.state_dict().items():
        assert torch.equal(t, stepped[name]), name
    # resume path: a fresh unpipelined model + AdamW take the PP=2 run's weights and states
    model = micro_model(num_hidden_layers=LAYERS, seed=1)
    opt = build_optimizer(model, lr=1e-2, betas=(0.9, 0.95), weight_decay=0.1)
    meta, rank_state = load_checkpoint(ckpt, model=model, optimizer=opt, groups=ParallelGroups.single())
    assert rank_state is None and meta["layout"]["pp"] == 2   # another layout: no per-rank data state
    assert len(opt.state) == sum(1 for p in model.parameters() if p.requires_grad)
    for name, t in model.state_dict().items():
        assert torch.equal(t, stepped[name]), name
