"""The chunked, head-fused cross-entropy equals the plain one (value and gradients), and the model's
training forward (fused head, no logits) gives the loss of its scoring forward (logits kept)."""

import pytest
import torch

from model import DeepSeekV3, ModelConfig
from model.loss import IGNORE_INDEX, cross_entropy, linear_cross_entropy


def _inputs(n=70, d=24, v=50, seed=0):
    g = torch.Generator().manual_seed(seed)
    h = torch.randn(n, d, generator=g, requires_grad=True)
    w = (torch.randn(v, d, generator=g) * 0.3).requires_grad_()
    t = torch.randint(0, v, (n,), generator=g)
    t[::7] = IGNORE_INDEX
    return h, w, t


@pytest.mark.parametrize("chunk", [16, 70, 1000])
def test_linear_cross_entropy_equals_full_logits(chunk):
    h, w, t = _inputs()
    ref, n_ref = cross_entropy(h @ w.t(), t)
    ref.backward()
    gh, gw = h.grad.clone(), w.grad.clone()
    h.grad = w.grad = None
    got, n = linear_cross_entropy(h, w, t, chunk=chunk)
    (2.0 * got).backward()          # the incoming gradient scales the precomputed ones
    assert int(n) == int(n_ref) == 60
    torch.testing.assert_close(got, ref, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(h.grad, 2 * gh, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(w.grad, 2 * gw, rtol=1e-5, atol=1e-6)


def test_linear_cross_entropy_under_bf16_autocast_and_no_grad():
    h, w, t = _inputs()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        ref = cross_entropy(torch.nn.functional.linear(h, w), t)[0]
        got = linear_cross_entropy(h, w, t, chunk=32)[0]
    torch.testing.assert_close(got, ref, rtol=1e-3, atol=1e-3)
    with torch.no_grad():
        assert torch.allclose(linear_cross_entropy(h, w, t)[0], cross_entropy(h @ w.t(), t)[0], atol=1e-6)
    all_ignored = torch.full_like(t, IGNORE_INDEX)
    assert float(linear_cross_entropy(h, w, all_ignored)[0].detach()) == 0.0


def test_model_fused_loss_equals_logits_loss():
    torch.manual_seed(0)
    model = DeepSeekV3(ModelConfig.load("tiny", vocab_size=256, hidden_size=64, num_hidden_layers=2,
                                        initializer_range=0.02)).train()
    ids = torch.randint(0, 256, (2, 33))
    seg = torch.tensor([[0] * 20 + [1] * 13, [0] * 33])
    grads = []
    outs = []
    for return_logits in (True, False):
        model.zero_grad()
        out = model(ids, ids, segment_ids=seg, return_logits=return_logits)
        out.loss.backward()
        outs.append(out)
        grads.append({n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None})
    full, fused = outs
    assert fused.logits is None and full.logits is not None
    torch.testing.assert_close(fused.lm_loss, full.lm_loss, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(fused.mtp_loss, full.mtp_loss, rtol=1e-5, atol=1e-6)
    assert grads[0].keys() == grads[1].keys()
    for name in grads[0]:
        torch.testing.assert_close(grads[1][name], grads[0][name], rtol=1e-4, atol=1e-6, msg=name)


def test_mtp_weight_zero_skips_the_mtp_modules():
    torch.manual_seed(0)
    model = DeepSeekV3(ModelConfig.load("tiny", vocab_size=256, hidden_size=64, num_hidden_layers=2)).train()
    ids = torch.randint(0, 256, (2, 16))
    calls = []
    model.mtp[0].register_forward_hook(lambda *a: calls.append(1))
    out = model(ids, ids, mtp_loss_weight=0.0, return_logits=False)
    assert calls == [] and out.mtp_loss is None and out.mtp_losses == []
    torch.testing.assert_close(out.loss, out.lm_loss + (out.balance_loss or 0))
    assert float(out.expert_load[-1].sum()) == 0          # the MTP layer's row: no tokens
    out.loss.backward()
    assert all(p.grad is None for p in model.mtp.parameters())
    model(ids, ids, mtp_loss_weight=0.1, return_logits=False)
    assert calls == [1]


def test_mtp_rows_runs_mtp_on_the_first_sequences_only():
    torch.manual_seed(0)
    model = DeepSeekV3(ModelConfig.load("tiny", vocab_size=256, hidden_size=64, num_hidden_layers=2,
                                        seq_aux_loss_alpha=0.0)).train()
    ids = torch.randint(0, 256, (4, 24))
    part = model(ids, ids, mtp_rows=2, return_logits=False)
    alone = model(ids[:2], ids[:2], return_logits=False)
    torch.testing.assert_close(part.mtp_loss, alone.mtp_loss, rtol=1e-5, atol=1e-6)
    assert float(part.expert_load[-1].sum()) == float(alone.expert_load[-1].sum())   # MTP layer: 2 rows' tokens


def test_trainer_counts_mtp_targets_of_the_rows_mtp_sees():
    from stages.common.training.step import mtp_rows, target_counts

    ids = torch.zeros(6, 10, dtype=torch.long)
    assert target_counts({"input_ids": ids}, 1) == [54, 48]
    assert mtp_rows(6, 0.5) == 3 and mtp_rows(6, 1.0) is None and mtp_rows(1, 0.1) == 1
    assert target_counts({"input_ids": ids}, 1, 0.5) == [54, 24]
