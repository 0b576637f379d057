"""Shared fixtures for the model tests: small FP32 configs that run in milliseconds.

Test modules opt in to ``single_thread`` with ``pytestmark = pytest.mark.usefixtures("single_thread")``
(not autouse: other suites share this folder).
"""

from __future__ import annotations

import pytest
import torch

from model import DeepSeekV3, ModelConfig

# Smaller than the `tiny` preset, but every feature on: group-limited routing, a dense first
# layer, shared experts, MTP. A larger init std than 0.006 keeps logits far from ties, so greedy
# comparisons are not decided by rounding.
MICRO = dict(
    vocab_size=256, hidden_size=64, num_hidden_layers=3, max_position_embeddings=256,
    num_attention_heads=4, q_lora_rank=32, kv_lora_rank=32,
    qk_nope_head_dim=16, qk_rope_head_dim=8, v_head_dim=16,
    intermediate_size=128, moe_intermediate_size=32, first_k_dense_replace=1,
    n_routed_experts=8, n_shared_experts=1, num_experts_per_tok=2, n_group=4, topk_group=2,
    num_nextn_predict_layers=1, initializer_range=0.05,
)


def micro_config(**overrides) -> ModelConfig:
    return ModelConfig.model_validate({**MICRO, **overrides})


def micro_model(seed: int = 0, bias_std: float = 0.0, **overrides) -> DeepSeekV3:
    """A random micro model in eval mode; ``bias_std`` > 0 randomises the routing biases."""
    torch.manual_seed(seed)
    model = DeepSeekV3(micro_config(**overrides)).eval()
    if bias_std:
        with torch.no_grad():
            for moe in model.moe_layers().values():
                moe.gate.e_score_correction_bias.normal_(0, bias_std)
    return model


@pytest.fixture
def micro_lm() -> DeepSeekV3:
    return micro_model(bias_std=0.05)


@pytest.fixture
def single_thread():
    """Seeded, and one intra-op thread: these tensors are tiny, and on a shared 2-core machine
    OpenMP synchronisation makes small ops up to 100x slower with 2 threads."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    torch.manual_seed(1234)
    yield
    torch.set_num_threads(threads)
