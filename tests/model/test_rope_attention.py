import math

import pytest
import torch

from model.attention import AttentionContext, MultiHeadLatentAttention, segment_positions
from model.config import ModelConfig
from model.rope import RotaryEmbedding, apply_rotary, yarn_inv_freq

from .conftest import micro_config

pytestmark = pytest.mark.usefixtures("single_thread")


def test_rope_matches_hand_computed_rotation():
    cfg = micro_config(qk_rope_head_dim=4, rope_theta=100.0)
    rot = RotaryEmbedding(cfg)
    assert torch.allclose(rot.inv_freq, torch.tensor([1.0, 0.1]))
    cos, sin = rot(torch.tensor([[3]]))
    x = torch.tensor([[[1.0, 2.0, 3.0, 4.0]]])
    y = apply_rotary(x, cos, sin)
    a, b = 3 * 1.0, 3 * 0.1  # angles of the two interleaved pairs (x0, x1), (x2, x3)
    want = [1 * math.cos(a) - 2 * math.sin(a), 2 * math.cos(a) + 1 * math.sin(a),
            3 * math.cos(b) - 4 * math.sin(b), 4 * math.cos(b) + 3 * math.sin(b)]
    assert torch.allclose(y.flatten(), torch.tensor(want), atol=1e-6)


def test_rope_scores_depend_only_on_relative_position():
    rot = RotaryEmbedding(micro_config())
    q, k = torch.randn(8), torch.randn(8)

    def score(pq, pk):
        cq, sq = rot(torch.tensor([pq]))
        ck, sk = rot(torch.tensor([pk]))
        return (apply_rotary(q, cq[0], sq[0]) * apply_rotary(k, ck[0], sk[0])).sum()

    assert torch.allclose(score(10, 3), score(107, 100), atol=1e-5)
    assert not torch.allclose(score(10, 3), score(10, 4), atol=1e-3)


def test_yarn_matches_transformers_reference():
    from transformers import DeepseekV3Config
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    ours = ModelConfig.load("deepseek-v3-671b")
    hf = DeepseekV3Config(**ours.to_hf_dict())
    hf_inv, hf_factor = ROPE_INIT_FUNCTIONS["yarn"](hf, "cpu")
    inv, factor = yarn_inv_freq(ours.qk_rope_head_dim, ours.rope_theta, ours.rope_scaling)
    assert torch.allclose(inv.float(), hf_inv, rtol=1e-6)
    assert factor == pytest.approx(hf_factor)
    # V3: mscale = mscale_all_dim = 1 -> cos/sin unscaled, softmax scale × (0.1·ln 40 + 1)^2
    assert factor == pytest.approx(1.0)
    assert ours.softmax_scale == pytest.approx(192 ** -0.5 * (0.1 * math.log(40) + 1) ** 2)
    # high-frequency dims kept, low-frequency dims interpolated by the factor
    base = 1.0 / 10000 ** (torch.arange(0, 64, 2, dtype=torch.float64) / 64)
    assert torch.allclose(inv[:4], base[:4]) and torch.allclose(inv[-4:], base[-4:] / 40)


def test_segment_positions_restart_per_document():
    seg = torch.tensor([[0, 0, 0, 1, 1, 2, 2, 2, 2], [5, 5, 5, 5, 5, 5, 5, 5, 5]])
    assert segment_positions(seg).tolist() == [[0, 1, 2, 0, 1, 0, 1, 2, 3], list(range(9))]


@pytest.mark.parametrize("q_lora_rank", [32, None])
def test_absorbed_equals_expanded(q_lora_rank):
    cfg = micro_config(q_lora_rank=q_lora_rank)
    torch.manual_seed(0)
    attn = MultiHeadLatentAttention(cfg, 0)
    for p in attn.parameters():
        torch.nn.init.normal_(p, std=0.1)
    rot = RotaryEmbedding(cfg)
    x = torch.randn(2, 11, cfg.hidden_size)
    ctx = AttentionContext.for_sequence(rot, torch.arange(11).expand(2, 11))
    q_nope, q_rope = attn.queries(x, ctx)
    latent, k_rope = attn.latents(x, ctx)
    expanded = attn.attend_expanded(q_nope, q_rope, latent, k_rope, None)
    absorbed = attn.attend_absorbed(q_nope, q_rope, latent, k_rope, None)
    assert expanded.shape == (2, 11, cfg.num_attention_heads, cfg.v_head_dim)
    assert torch.allclose(expanded, absorbed, atol=1e-5)
    # against a hand-written reference: per-head keys/values from the latent, plain softmax
    w = attn.kv_b_proj.weight.view(cfg.num_attention_heads, -1, cfg.kv_lora_rank)
    k_nope = torch.einsum("btc,hdc->bthd", latent, w[:, :cfg.qk_nope_head_dim])
    v = torch.einsum("btc,hdc->bthd", latent, w[:, cfg.qk_nope_head_dim:])
    scores = (torch.einsum("bthd,bshd->bhts", q_nope, k_nope)
              + torch.einsum("bthr,bsr->bhts", q_rope, k_rope)) * cfg.qk_head_dim ** -0.5
    scores = scores.masked_fill(torch.ones(11, 11, dtype=torch.bool).triu(1), float("-inf"))
    ref = torch.einsum("bhts,bshd->bthd", scores.softmax(-1), v)
    assert torch.allclose(expanded, ref, atol=1e-5)


def test_segment_mask_isolates_documents():
    cfg = micro_config()
    attn = MultiHeadLatentAttention(cfg, 0)
    rot = RotaryEmbedding(cfg)
    a, b = torch.randn(1, 5, cfg.hidden_size), torch.randn(1, 4, cfg.hidden_size)
    seg = torch.tensor([[0] * 5 + [1] * 4])
    packed = attn(torch.cat([a, b], 1), AttentionContext.for_sequence(rot, segment_positions(seg), seg))
    alone_a = attn(a, AttentionContext.for_sequence(rot, torch.arange(5)[None]))
    alone_b = attn(b, AttentionContext.for_sequence(rot, torch.arange(4)[None]))
    assert torch.allclose(packed, torch.cat([alone_a, alone_b], 1), atol=1e-5)
