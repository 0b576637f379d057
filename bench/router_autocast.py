"""Router routing inside vs outside a BF16 autocast (issue 20, item 1), printed as JSON.

    python bench/router_autocast.py

64 experts, top-8, 8 groups (4 kept), hidden 256, 4,096 tokens, per init std. ``before`` is the
old gate, ``F.linear(x.float(), w.float())`` with no autocast guard (autocast re-casts it to BF16);
``now`` is :class:`model.router.Router`, which turns autocast off around the gate. Counts tokens
whose set of 8 experts differs from the same router outside autocast, and the largest gate change.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from model.config import ModelConfig  # noqa: E402
from model.router import Router, Routing  # noqa: E402

CONFIG = dict(vocab_size=256, hidden_size=256, num_hidden_layers=2, num_attention_heads=4, q_lora_rank=32,
              kv_lora_rank=32, qk_nope_head_dim=16, qk_rope_head_dim=8, v_head_dim=16, intermediate_size=128,
              moe_intermediate_size=32, first_k_dense_replace=1, n_routed_experts=64, n_shared_experts=1,
              num_experts_per_tok=8, n_group=8, topk_group=4, num_nextn_predict_layers=0)


def old_route(router: Router, x: torch.Tensor) -> Routing:
    """The router's computation without the autocast guard (what ran before the fix)."""
    return router._route(x)


def compare(routed, reference) -> dict:
    differ = (routed.expert_ids.sort(-1).values != reference.expert_ids.sort(-1).values).any(-1)
    gates = (routed.gates.sort(-1).values.float() - reference.gates.sort(-1).values).abs().max()
    return {"tokens_differing": int(differ.sum()), "share": round(float(differ.float().mean()), 4),
            "max_gate_diff": float(gates), "scores_dtype": str(routed.scores.dtype)}


@torch.no_grad()
def main() -> None:
    torch.set_num_threads(1)
    out = {"load_avg": os.getloadavg(), "tokens": 4096}
    for std in (0.006, 0.02, 0.05):
        torch.manual_seed(0)
        router = Router(ModelConfig.model_validate(CONFIG))
        router.reset_parameters(std)
        x = torch.randn(4096, 256)
        reference = router(x)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            before, now = old_route(router, x), router(x)
        out[f"std_{std}"] = {"before": compare(before, reference), "now": compare(now, reference)}
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
