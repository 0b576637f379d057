"""Expert (and data) parallelism on CPU with gloo: two processes give the same step as one.

One process trains on the whole global batch; two processes (EP=2: experts split between them,
tokens exchanged by all-to-all; then DP=2: everything replicated) each take half of it. Loss,
gradients (dense and every expert's), the all-reduced expert loads, and the parameters and
router biases after the AdamW + bias update must agree.
"""

from __future__ import annotations

import datetime
import os

import pytest
import torch
import torch.multiprocessing as mp

from model.parallel import ParallelLayout
from tests.pretrain.helpers import free_port, micro_model, random_batch

GLOBAL_BATCH, SEQ = 4, 32
# (layout, skewed routing): "skewed" biases every token towards experts 0-3, which EP rank 0
# holds, so EP rank 1 receives no token at all and must still take part in every all-to-all
CASES = [(ParallelLayout(dp=1, ep=2), False), (ParallelLayout(dp=2, ep=1), False), (ParallelLayout(dp=1, ep=2), True)]
CASE_IDS = ["ep2", "dp2", "ep2-idle-rank"]


def build_model(skewed: bool):
    model = micro_model()
    if skewed:
        with torch.no_grad():
            for moe in model.moe_layers().values():
                moe.gate.e_score_correction_bias[:4] = 10.0
    return model


def one_step(model, groups, micro_batches, precision="fp32"):
    from stages.common.training.step import TrainStep, build_optimizer

    opt = build_optimizer(model, lr=1e-2, betas=(0.9, 0.95), weight_decay=0.1)
    step = TrainStep(model, opt, groups, precision=precision, grad_clip=1.0, bias_update_rate=0.01)
    stats = step.accumulate_gradients(micro_batches, mtp_weight=0.3)
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    step.apply(stats, lr=1e-2)
    state = {n: t.clone() for n, t in model.state_dict().items()}
    return {"loss": stats.loss, "lm": stats.lm_loss, "mtp": stats.mtp_loss, "bal": stats.balance_loss,
            "loads": stats.expert_load, "grad_norm": stats.grad_norm, "grads": grads, "state": state}


def _worker(rank: int, world: int, port: int, out_dir: str) -> None:
    import torch.distributed as dist

    from model.parallel import init_parallel, shard_experts

    torch.set_num_threads(1)
    # a collective mismatch (one rank skipping an all-to-all) fails in a minute instead of hanging
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world,
                            timeout=datetime.timedelta(seconds=60))
    try:
        batch = random_batch(GLOBAL_BATCH, SEQ)
        half = GLOBAL_BATCH // world
        mine = {k: v[rank * half:(rank + 1) * half] for k, v in batch.items()}
        for i, (layout, skewed) in enumerate(CASES):
            groups = init_parallel(layout)
            model = build_model(skewed)
            shard_experts(model, groups)
            # two micro-batches per rank: grad accumulation composes with the layout
            micro = [{k: v[j::2] for k, v in mine.items()} for j in range(2)]
            torch.save(one_step(model, groups, micro), os.path.join(out_dir, f"layout{i}-rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def two_process_results(tmp_path_factory):
    out = tmp_path_factory.mktemp("ep")
    mp.start_processes(_worker, args=(2, free_port(), str(out)), nprocs=2, join=True, start_method="spawn")
    return {(i, r): torch.load(out / f"layout{i}-rank{r}.pt") for i in range(len(CASES)) for r in range(2)}


@pytest.fixture(scope="module")
def references():
    from model.parallel import ParallelGroups

    torch.set_num_threads(1)
    return {skewed: one_step(build_model(skewed), ParallelGroups.single(), [random_batch(GLOBAL_BATCH, SEQ)])
            for skewed in (False, True)}


@pytest.mark.parametrize("layout", range(len(CASES)), ids=CASE_IDS)
def test_two_ranks_match_one(two_process_results, references, layout):
    ref = references[CASES[layout][1]]
    for rank in range(2):
        got = two_process_results[(layout, rank)]
        for key in ("loss", "lm", "mtp", "bal", "grad_norm"):
            assert got[key] == pytest.approx(ref[key], rel=1e-5, abs=1e-7), key
        torch.testing.assert_close(got["loads"], ref["loads"], rtol=0, atol=0)   # counts: exact
        assert ref["bal"] > 0 and ref["mtp"] > 0
        # every gradient this rank holds equals the single-process one; EP ranks hold half the experts
        assert got["grads"].keys() <= ref["grads"].keys()
        for name, g in got["grads"].items():
            torch.testing.assert_close(g, ref["grads"][name], rtol=1e-4, atol=1e-6, msg=name)
        for name in (n for n in got["state"] if n.endswith("e_score_correction_bias")):
            torch.testing.assert_close(got["state"][name], ref["state"][name], rtol=0, atol=0, msg=name)
    # after the update, replicas hold bitwise the same parameters (AdamW's first step is
    # ~lr·sign(g), so comparing to the reference itself would amplify rounding in tiny gradients)
    a, b = (two_process_results[(layout, r)]["state"] for r in range(2))
    for name in a.keys() & b.keys():
        assert torch.equal(a[name], b[name]), name
    experts = [n for n in ref["grads"] if ".experts." in n]
    held = [set(n for n in two_process_results[(layout, r)]["grads"] if ".experts." in n) for r in range(2)]
    if CASES[layout][0].ep == 2:
        assert held[0].isdisjoint(held[1]) and held[0] | held[1] == set(experts)
    else:
        assert held[0] == held[1] == set(experts)
    if CASES[layout][1]:   # the idle rank's experts got no gradient, and it still finished the step
        assert ref["loads"][:, 4:].sum() == 0
        assert not any(".experts." in n for n in two_process_results[(layout, 1)]["grads"])


def test_bias_update_uses_global_loads(references):
    """The biases moved by γ·sign(mean − load) of the *global* loads (checked on the reference
    that every layout matched above)."""
    reference = references[False]
    loads = reference["loads"]
    biases = [v for k, v in reference["state"].items() if k.endswith("e_score_correction_bias")]
    assert len(biases) == loads.shape[0]
    for load, bias in zip(loads, biases, strict=True):
        expected = 0.01 * torch.sign(load.mean() - load)
        torch.testing.assert_close(bias.double(), expected, rtol=0, atol=1e-7)
