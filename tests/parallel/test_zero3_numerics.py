"""ZeRO-3 (FSDP2 ``fully_shard``) on CPU with gloo: sharding changes where, not what.

Two processes (one spawn) train the micro model (a dense layer, MoE layers with shared and routed
experts, a balance loss, MTP) for two optimizer steps of two micro-batches each, with gradient
clipping that bites and the router-bias update, in each layout with and without ZeRO-3:

- dp=2: dense parameters sharded over both ranks, routed experts replicated and summed by the
  trainer's reducer (FSDP must not reduce them a second time);
- ep=2: routed experts split by expert parallelism, dense parameters sharded over the two ep ranks.

Loss, gradient norm, every (gathered) gradient, the router biases and the (gathered) parameters
after each step must match the unsharded run. The dp=2 ZeRO-3 run writes a checkpoint that must
load into an unsharded model and AdamW, through ``load_model``, and back into a ZeRO-3 model.
"""

from __future__ import annotations

import pytest
import torch

from model.parallel import ParallelLayout
from tests.parallel.helpers import micro_model, random_batch, spawn

LAYERS, SEQ, STEPS, MICRO = 3, 32, 2, 2
GRAD_CLIP = 0.05   # below the micro model's gradient norm: clipping acts on both steps


def batches(rank: int, parts: int) -> list[list[dict]]:
    """Per step, this rank's MICRO micro-batches of one sequence (the global batch: parts x MICRO)."""
    out = []
    for step in range(STEPS):
        batch = random_batch(parts * MICRO, SEQ, seed=step)
        rows = range(rank * MICRO, (rank + 1) * MICRO)
        out.append([{k: v[i:i + 1] for k, v in batch.items()} for i in rows])
    return out


def train(groups, zero3: bool, micro_batches, ckpt_dir: str | None = None):
    from torch.distributed.tensor import DTensor

    from model.parallel import GradientReducer, shard_experts
    from model.parallel.fsdp import full_tensor, shard_dense_parameters
    from stages.common.training.step import TrainStep, build_optimizer

    model = micro_model(num_hidden_layers=LAYERS)
    shard_experts(model, groups)
    reducer = None
    if zero3:
        shard_dense_parameters(model, groups)
        reducer = GradientReducer(model, groups, dense_sharded=True)
    opt = build_optimizer(model, lr=1e-2, betas=(0.9, 0.95), weight_decay=0.1)
    step = TrainStep(model, opt, groups, precision="fp32", grad_clip=GRAD_CLIP, bias_update_rate=0.01,
                     reducer=reducer)
    out = {"steps": [], "sharded": sorted(n for n, p in model.named_parameters() if isinstance(p, DTensor))}
    for mbs in micro_batches:
        stats = step.accumulate_gradients(mbs, mtp_weight=0.3)
        # gathered in model order on every rank (a collective per sharded gradient)
        grads = {n: full_tensor(p.grad).clone() for n, p in model.named_parameters() if p.grad is not None}
        step.apply(stats, lr=1e-2)
        out["steps"].append({"loss": stats.loss, "bal": stats.balance_loss, "grad_norm": stats.grad_norm,
                             "loads": stats.expert_load, "grads": grads,
                             "state": {n: full_tensor(t).clone() for n, t in model.state_dict().items()}})
    out["moments"] = {n: {k: full_tensor(v).clone() for k, v in opt.state[p].items() if k != "step"}
                      for n, p in model.named_parameters()}
    if ckpt_dir is not None:
        save(ckpt_dir, model, opt, groups)
    return out


def save(ckpt_dir, model, opt, groups):
    from stages.common.training.checkpoint import save_checkpoint

    meta = {"step": STEPS, "world_size": 2, "layout": {"pp": 1, "dp": 2, "ep": 1, "zero": 3},
            "model_config": model.config.to_hf_dict(), "trainer_state": {}} if groups.rank == 0 else None
    save_checkpoint(ckpt_dir, model=model, optimizer=opt, groups=groups, rank_state={}, meta=meta)


def resume_zero3(groups, ckpt_dir):
    """A fresh (differently seeded) ZeRO-3 model + AdamW loading the checkpoint, gathered back."""
    from model.parallel.fsdp import full_tensor, shard_dense_parameters
    from stages.common.training.checkpoint import load_checkpoint
    from stages.common.training.step import build_optimizer

    model = micro_model(num_hidden_layers=LAYERS, seed=1)
    shard_dense_parameters(model, groups)
    opt = build_optimizer(model, lr=1e-2, betas=(0.9, 0.95), weight_decay=0.1)
    load_checkpoint(ckpt_dir, model=model, optimizer=opt, groups=groups)
    return {"state": {n: full_tensor(t).clone() for n, t in model.state_dict().items()},
            "moments": {n: {k: full_tensor(v).clone() for k, v in opt.state[p].items() if k != "step"}
                        for n, p in model.named_parameters()}}


def _worker(rank: int, world: int, ckpt_dir: str):
    from model.parallel import init_parallel

    out = {}
    for name, layout in (("dp2", ParallelLayout(dp=2)), ("ep2", ParallelLayout(ep=2))):
        groups = init_parallel(layout)
        data = batches(rank, 2)
        out[name] = train(groups, False, data)
        out[f"{name}_zero3"] = train(groups, True, data, ckpt_dir if name == "dp2" else None)
    out["resumed"] = resume_zero3(init_parallel(ParallelLayout(dp=2)), ckpt_dir)
    return out


@pytest.fixture(scope="module")
def ranks(tmp_path_factory):
    root = tmp_path_factory.mktemp("zero3")
    return spawn(_worker, 2, root / "out", str(root / "ckpt")), root / "ckpt"


def assert_same_run(plain, zero3):
    for ref, got in zip(plain["steps"], zero3["steps"], strict=True):
        assert ref["grad_norm"] > GRAD_CLIP and ref["bal"] > 0   # clipping and the balance loss act
        for key in ("loss", "bal", "grad_norm"):
            assert got[key] == pytest.approx(ref[key], rel=1e-5, abs=1e-7), key
        torch.testing.assert_close(got["loads"], ref["loads"], rtol=0, atol=0)
        assert set(got["grads"]) == set(ref["grads"])
        for name, g in ref["grads"].items():
            torch.testing.assert_close(got["grads"][name], g, rtol=1e-5, atol=1e-7, msg=name)
        # the norm is summed in another order (shards, then ranks): the clip factor differs in the
        # last bit, and AdamW's g/(sqrt(v)+eps) turns that into ~1e-6 on weights whose clipped
        # gradients are near eps by the second step (an update is ~lr = 1e-2)
        for name, t in ref["state"].items():
            torch.testing.assert_close(got["state"][name], t, rtol=1e-5, atol=1e-5, msg=name)


@pytest.mark.parametrize("layout", ["dp2", "ep2"])
def test_zero3_matches_unsharded(layout, ranks):
    for r in ranks[0]:
        plain, zero3 = r[layout], r[f"{layout}_zero3"]
        assert_same_run(plain, zero3)
        # dense parameters are shards, routed experts are not; without ZeRO-3 nothing is
        assert plain["sharded"] == [] and zero3["sharded"]
        assert not any(".experts." in n for n in zero3["sharded"])
        assert {"embed_tokens.weight", "lm_head.weight", "layers.0.self_attn.q_a_proj.weight",
                "mtp.0.eh_proj.weight", "mtp.0.block.mlp.gate.weight"} <= set(zero3["sharded"])
        # the router-bias update saw the global loads on both ranks: the biases moved, identically
        biases = [n for n in plain["steps"][-1]["state"] if n.endswith("e_score_correction_bias")]
        assert biases and all(zero3["steps"][-1]["state"][n].abs().sum() > 0 for n in biases)
        for n in biases:
            torch.testing.assert_close(zero3["steps"][-1]["state"][n], plain["steps"][-1]["state"][n],
                                       rtol=0, atol=0)


def test_zero3_checkpoint_loads_unsharded_and_back(ranks):
    from model.parallel import ParallelGroups
    from stages.common.training.checkpoint import load_checkpoint, load_model
    from stages.common.training.step import build_optimizer

    results, ckpt = ranks
    trained = results[0]["dp2_zero3"]
    final, moments = trained["steps"][-1]["state"], trained["moments"]
    for name, t in load_model(ckpt).state_dict().items():   # export: every tensor, whole
        assert torch.equal(t, final[name]), name
    model = micro_model(num_hidden_layers=LAYERS, seed=1)   # resume without ZeRO
    opt = build_optimizer(model, lr=1e-2, betas=(0.9, 0.95), weight_decay=0.1)
    meta, _ = load_checkpoint(ckpt, model=model, optimizer=opt, groups=ParallelGroups.single())
    assert meta["layout"]["zero"] == 3
    for name, t in model.state_dict().items():
        assert torch.equal(t, final[name]), name
    for name, p in model.named_parameters():
        for k, v in moments[name].items():
            assert torch.equal(opt.state[p][k], v), (name, k)
    for r in results:   # and back into ZeRO-3 on two ranks
        for name, t in r["resumed"]["state"].items():
            assert torch.equal(t, final[name]), name
        for name, m in r["resumed"]["moments"].items():
            for k, v in m.items():
                assert torch.equal(v, moments[name][k]), (name, k)
