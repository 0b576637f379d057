import pytest
import torch
import torch.nn.functional as F
from torch import nn

from model import DeepSeekV3, ModelConfig
from model.router import Router

from .conftest import micro_model

pytestmark = pytest.mark.usefixtures("single_thread")


def test_init_std_0006_untied_and_norms_one():
    torch.manual_seed(0)
    model = DeepSeekV3(ModelConfig.load("tiny"))
    for name in ["embed_tokens.weight", "lm_head.weight", "layers.1.self_attn.kv_b_proj.weight",
                 "layers.1.mlp.experts.3.up_proj.weight", "layers.1.mlp.gate.weight", "mtp.0.eh_proj.weight"]:
        w = model.get_parameter(name)
        assert w.std().item() == pytest.approx(0.006, rel=0.05), name
        assert abs(w.mean().item()) < 1e-3
    assert model.lm_head.weight.data_ptr() != model.embed_tokens.weight.data_ptr()
    assert torch.all(model.norm.weight == 1) and torch.all(model.layers["2"].self_attn.kv_a_layernorm.weight == 1)
    assert torch.all(model.layers["1"].mlp.gate.e_score_correction_bias == 0)


def test_module_names_and_fp8_swappable_linears():
    model = micro_model()
    linears = {n for n, m in model.named_modules() if type(m) is nn.Linear}
    for name in ["layers.0.self_attn.q_a_proj", "layers.0.self_attn.q_b_proj", "layers.0.self_attn.kv_a_proj_with_mqa",
                 "layers.0.self_attn.kv_b_proj", "layers.0.self_attn.o_proj", "layers.0.mlp.gate_proj",
                 "layers.1.mlp.shared_experts.down_proj", "layers.2.mlp.experts.7.up_proj",
                 "mtp.0.block.mlp.experts.0.gate_proj", "mtp.0.eh_proj", "lm_head"]:
        assert name in linears, name
    assert isinstance(model.layers["1"].mlp.gate, Router) and not isinstance(model.layers["1"].mlp.gate, nn.Linear)
    assert isinstance(model.embed_tokens, nn.Embedding)
    assert "layers.1.mlp.gate.e_score_correction_bias" in model.state_dict()


def test_lm_loss_is_shifted_cross_entropy_with_masks():
    model = micro_model()
    ids = torch.randint(0, 256, (2, 10))
    labels = ids.clone()
    labels[0, :4] = -100
    loss_mask = torch.ones_like(ids)
    loss_mask[1, 6:] = 0
    out = model(ids, labels, loss_mask=loss_mask)
    logits = out.logits[:, :-1]
    tgt = labels[:, 1:].clone()
    tgt[loss_mask[:, 1:] == 0] = -100
    want = F.cross_entropy(logits.reshape(-1, 256), tgt.reshape(-1), ignore_index=-100)
    assert out.lm_loss.item() == pytest.approx(want.item(), rel=1e-5)
    assert out.num_target_tokens.item() == (tgt != -100).sum().item() == 9 - 3 + 9 - 4
    lam = model.config.mtp_loss_weight
    assert out.loss.item() == pytest.approx(out.lm_loss.item() + lam * out.mtp_loss.item(), rel=1e-5)
    assert out.balance_loss is None                   # eval mode: no balance loss
    out2 = model(ids, labels, loss_mask=loss_mask, mtp_loss_weight=0.0)
    assert out2.loss.item() == pytest.approx(out.lm_loss.item(), rel=1e-6)
    empty = model(ids, torch.full_like(ids, -100))
    assert empty.lm_loss.item() == 0 and empty.num_target_tokens.item() == 0


def test_mtp_loss_by_hand():
    model = micro_model()
    ids = torch.randint(0, 256, (2, 9))
    out = model(ids, ids)
    # depth 1 at position i: h_i (main, normalised) and Emb(t_{i+1}) -> predict t_{i+2}
    T = 9
    ctx = model.attention_context(ids[:, :T - 1])
    mtp = model.mtp[0]
    h_mtp, _ = mtp(out.hidden_states[:, :T - 1], model.embed_tokens(ids[:, 1:]), ctx)
    logits = model.lm_head(mtp.shared_head.norm(h_mtp))[:, :T - 2]
    want = F.cross_entropy(logits.reshape(-1, 256), ids[:, 2:].reshape(-1))
    assert out.mtp_loss.item() == pytest.approx(want.item(), rel=1e-5)


def test_mtp_depth_two():
    model = micro_model(num_nextn_predict_layers=2)
    out = model(torch.randint(0, 256, (1, 12)), torch.randint(0, 256, (1, 12)))
    assert len(out.mtp_losses) == 2 and model.moe_layer_ids == [1, 2, 3, 4]
    assert out.mtp_loss.item() == pytest.approx(sum(x.item() for x in out.mtp_losses) / 2)
    assert out.expert_load[2:].sum() > 0


def test_packed_documents_equal_separate_forwards():
    model = micro_model(bias_std=0.05)
    a, b = torch.randint(0, 256, (1, 7)), torch.randint(0, 256, (1, 5))
    packed = model(torch.cat([a, b], 1), torch.cat([a, b], 1), segment_ids=torch.tensor([[3] * 7 + [4] * 5]))
    sa, sb = model(a, a), model(b, b)
    assert torch.allclose(packed.logits, torch.cat([sa.logits, sb.logits], 1), atol=1e-5)
    # targets never cross the boundary: the packed loss is the token-weighted mean of the two
    assert packed.num_target_tokens.item() == 6 + 4
    want = (sa.lm_loss * 6 + sb.lm_loss * 4) / 10
    assert packed.lm_loss.item() == pytest.approx(want.item(), rel=1e-5)
    want_mtp = (sa.mtp_loss * 5 + sb.mtp_loss * 3) / 8
    assert packed.mtp_loss.item() == pytest.approx(want_mtp.item(), rel=1e-5)


def test_training_mode_balance_loss_and_loads():
    model = micro_model().train()
    ids = torch.randint(0, 256, (2, 16))
    out = model(ids, ids)
    assert out.balance_loss is not None and out.balance_loss.item() > 0
    assert out.loss.item() == pytest.approx(
        (out.lm_loss + 0.3 * out.mtp_loss + out.balance_loss).item(), rel=1e-6)
    assert out.expert_load.sum(1).tolist() == [64.0, 64.0, 64.0]   # 2·16 tokens × top-2, MTP included
    assert out.dropped_tokens.item() == 0
    out.loss.backward()
    assert model.layers["1"].mlp.gate.weight.grad.abs().sum() > 0   # gates and balance loss reach it


@pytest.mark.parametrize("mode", ["full", "selective"])
def test_activation_checkpointing_gives_the_same_gradients(mode):
    ids = torch.randint(0, 256, (2, 12))
    grads = {}
    for m in ["none", mode]:
        model = micro_model(activation_checkpointing=m).train()
        out = model(ids, ids)
        out.loss.backward()
        grads[m] = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
        assert out.expert_load.sum() > 0
    assert grads["none"].keys() == grads[mode].keys()
    for n, g in grads["none"].items():
        assert torch.allclose(g, grads[mode][n], atol=1e-6), n


def test_bf16_cast_keeps_router_bias_fp32():
    model = micro_model()
    bias = model.layers["1"].mlp.gate.e_score_correction_bias
    with torch.no_grad():
        bias.copy_(torch.linspace(-1e-3, 1e-3, 8) + 0.5)
    before = bias.clone()
    model.to(torch.bfloat16)
    after = model.layers["1"].mlp.gate.e_score_correction_bias
    assert after.dtype == torch.float32 and torch.equal(after, before)
    assert model.lm_head.weight.dtype == torch.bfloat16
    out = model(torch.randint(0, 256, (1, 5)))
    assert out.logits.dtype == torch.bfloat16 and torch.isfinite(out.logits).all()


def test_forward_is_a_composition_of_its_parts():
    """What a pipeline-parallel split relies on: embed -> layers -> norm/head, with layers keyed
    by global index so a stage may drop the others."""
    model = micro_model()
    ids = torch.randint(0, 256, (2, 8))
    ctx = model.attention_context(ids)
    h = model.embed_tokens(ids)
    all_layers = dict(model.layers.items())
    model.layers = nn.ModuleDict({k: all_layers[k] for k in ("0", "1")})   # stage 1
    h, stats1 = model.forward_layers(h, ctx)
    model.layers = nn.ModuleDict({"2": all_layers["2"]})                   # stage 2
    h, stats2 = model.forward_layers(h, ctx)
    logits = model.lm_head(model.norm(h))
    model.layers = nn.ModuleDict(all_layers)
    assert torch.allclose(logits, model(ids).logits, atol=1e-6)
    assert set(stats1) == {1} and set(stats2) == {2}


def test_short_training_run_learns():
    model = micro_model().train()
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    ids = torch.randint(0, 256, (4, 16))
    first = None
    for _ in range(30):
        out = model(ids, ids)
        opt.zero_grad()
        out.loss.backward()
        opt.step()
        model.update_router_biases(out.expert_load)
        first = first or (out.lm_loss.item(), out.mtp_loss.item())
    assert out.lm_loss.item() < 0.5 * first[0] and out.mtp_loss.item() < 0.7 * first[1]
