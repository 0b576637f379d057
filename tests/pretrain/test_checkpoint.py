"""Checkpoints keyed by global names: saved by two expert-parallel ranks, loaded by one rank (and
as a full model for export); incomplete or foreign checkpoints are refused."""

from __future__ import annotations

import copy

import pytest
import torch

from model.parallel import ParallelGroups, ParallelLayout
from stages.common.training.checkpoint import CheckpointError, load_checkpoint, load_model, save_checkpoint
from stages.common.training.step import build_optimizer
from tests.pretrain.helpers import micro_model

EP2 = ParallelLayout(dp=1, ep=2)


def stepped(model):
    """An optimizer with state, after one update from a deterministic gradient."""
    opt = build_optimizer(model, 1e-3, (0.9, 0.95), 0.1)
    for n, p in model.named_parameters():
        p.grad = torch.full_like(p, 1e-3 * (len(n) % 7 + 1))
    opt.step()
    return opt


@pytest.fixture
def ep2_checkpoint(tmp_path):
    full = micro_model()
    for rank in range(2):
        shard = copy.deepcopy(full)
        for moe in shard.moe_layers().values():
            moe.retain_experts(list(EP2.experts_of(rank, 8)))
        groups = ParallelGroups(EP2, rank=rank, ep_rank=rank)
        meta = {"step": 7, "world_size": 2, "model_config": full.config.to_hf_dict(), "trainer_state": {}} \
            if rank == 0 else None
        save_checkpoint(tmp_path, model=shard, optimizer=stepped(shard), groups=groups,
                        rank_state={"data": {"rank": rank}, "rng": torch.get_rng_state()}, meta=meta)
    full_opt = stepped(full)   # the same update on the unsharded model, for comparison
    return tmp_path, full, full_opt


def test_each_tensor_is_written_once(ep2_checkpoint):
    d, full, _ = ep2_checkpoint
    from safetensors import safe_open

    keys = []
    for f in sorted((d / "model").glob("*.safetensors")):
        with safe_open(str(f), "pt") as sf:
            keys += list(sf.keys())
    assert sorted(keys) == sorted(full.state_dict())


def test_ep2_checkpoint_loads_into_one_rank(ep2_checkpoint):
    d, full, full_opt = ep2_checkpoint
    model = micro_model(seed=1)            # different init: everything must come from the files
    opt = build_optimizer(model, 1e-3, (0.9, 0.95), 0.1)
    meta, rank_state = load_checkpoint(d, model=model, optimizer=opt, groups=ParallelGroups.single())
    assert meta["step"] == 7 and rank_state is None    # another world size: no per-rank state
    for name, t in full.state_dict().items():
        assert torch.equal(model.state_dict()[name], t), name
    loaded = dict(model.named_parameters())
    for name, p in full.named_parameters():
        for key in ("step", "exp_avg", "exp_avg_sq"):
            assert torch.equal(opt.state[loaded[name]][key], full_opt.state[p][key]), (name, key)
    whole = load_model(d)
    for name, t in full.state_dict().items():
        assert torch.equal(whole.state_dict()[name], t), name


def test_incomplete_or_foreign_checkpoints_are_refused(ep2_checkpoint):
    d, _, _ = ep2_checkpoint
    with pytest.raises(CheckpointError, match="lacks"):
        load_checkpoint(d, model=micro_model(n_routed_experts=16), optimizer=None, groups=ParallelGroups.single())
    (d / "complete" / "rank-00001").unlink()
    with pytest.raises(CheckpointError, match=r"incomplete: ranks \[1\] of 2"):
        load_model(d)
