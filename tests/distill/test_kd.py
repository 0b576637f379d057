"""Logit distillation: the divergences, and the trainer's loss-term hook that adds them to a step."""

from __future__ import annotations

import math

import pytest
import torch

from model.parallel import ParallelGroups
from stages.common.training.step import TrainStep, build_optimizer
from stages.distill.kd import LogitDistillation, kl_divergence
from stages.distill.sft_data import collate, encode_traces
from tests.distill.helpers import micro_checkpoint, trace_rows, train_tokenizer


def test_divergences_match_their_definitions():
    g = torch.Generator().manual_seed(0)
    s, t = torch.randn(5, 11, generator=g), torch.randn(5, 11, generator=g)
    p, q = t.softmax(-1), s.softmax(-1)
    torch.testing.assert_close(kl_divergence(s, t, "forward"), (p * (p.log() - q.log())).sum(-1))
    torch.testing.assert_close(kl_divergence(s, t, "reverse"), (q * (q.log() - p.log())).sum(-1))
    assert not torch.allclose(kl_divergence(s, t, "forward"), kl_divergence(s, t, "reverse"))
    assert (kl_divergence(s, t) > 0).all() and torch.allclose(kl_divergence(s, s), torch.zeros(5), atol=1e-6)
    # temperature: KL of the softened distributions, times τ²
    p2, q2 = (t / 2).softmax(-1), (s / 2).softmax(-1)
    torch.testing.assert_close(kl_divergence(s, t, "forward", 2.0), 4 * (p2 * (p2.log() - q2.log())).sum(-1))
    with pytest.raises(ValueError, match="forward"):
        kl_divergence(s, t, "sideways")


def test_forward_kl_gradient_moves_the_student_towards_the_teacher():
    t = torch.tensor([[2.0, 0.0, -1.0]])
    s = torch.zeros(1, 3, requires_grad=True)
    kl_divergence(s, t).sum().backward()
    # d/ds KL(p||q) = q - p: pushes up the logit the teacher prefers
    torch.testing.assert_close(s.grad, (torch.full((1, 3), 1 / 3) - t.softmax(-1)))


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    rows = trace_rows(40)
    root = tmp_path_factory.mktemp("kd")
    tok = train_tokenizer(rows, root / "tok")
    data, _ = encode_traces(rows, tok, 512)
    batch = collate(data, [[0, 1], [2, 3]], tok.pad_id)
    student = micro_checkpoint(root / "student", tok, seed=0)
    other = micro_checkpoint(root / "teacher", tok, seed=1)
    return tok, batch, student, other


def _step(path, batch, terms=()):
    from model import DeepSeekV3

    torch.manual_seed(0)
    model = DeepSeekV3.from_pretrained(path).train()
    opened = [(t.name, t.weight, t.open(torch.device("cpu"))) for t in terms]
    step = TrainStep(model, build_optimizer(model, 1e-3, (0.9, 0.95), 0.0), ParallelGroups.single(),
                     precision="fp32", grad_clip=None, loss_terms=opened)
    stats = step.accumulate_gradients([batch], mtp_weight=0.1)
    grads = torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None])
    return stats, grads


def test_loss_term_is_added_per_target_and_logged(setup):
    from model.transformer import IGNORE_INDEX, next_token_targets

    tok, batch, student, other = setup
    plain, g_plain = _step(student, batch)
    assert plain.extra_losses == {}

    # the student as its own teacher: KL 0, the same loss and gradient as plain SFT
    same, g_same = _step(student, batch, [LogitDistillation(str(student), tok.vocab_size, weight=0.5)])
    assert same.extra_losses["kd_loss"] == pytest.approx(0.0, abs=1e-6)
    assert same.loss == pytest.approx(plain.loss, rel=1e-6)
    torch.testing.assert_close(g_same, g_plain, atol=1e-6, rtol=1e-5)

    # another teacher: loss = plain + weight x mean KL over the assistant targets, gradient changes
    term = LogitDistillation(str(other), tok.vocab_size, "reverse", weight=0.5, temperature=2.0)
    kd, g_kd = _step(student, batch, [term])
    from model import DeepSeekV3

    with torch.no_grad():
        s = DeepSeekV3.from_pretrained(student).eval()(batch["input_ids"], segment_ids=batch["segment_ids"]).logits
        t = DeepSeekV3.from_pretrained(other).eval()(batch["input_ids"], segment_ids=batch["segment_ids"]).logits
    valid = next_token_targets(batch["labels"], batch["loss_mask"], batch["segment_ids"]) != IGNORE_INDEX
    want = kl_divergence(s[valid], t[valid], "reverse", 2.0).mean().item()
    assert kd.extra_losses["kd_loss"] == pytest.approx(want, rel=1e-4)
    assert kd.loss == pytest.approx(plain.loss + 0.5 * want, rel=1e-5)
    assert kd.lm_loss == pytest.approx(plain.lm_loss, rel=1e-6)
    assert not torch.allclose(g_kd, g_plain, atol=1e-6)
    assert math.isfinite(kd.loss)


def test_teacher_must_cover_the_vocabulary(setup, tmp_path):
    tok, _, _, _ = setup
    teacher = micro_checkpoint(tmp_path / "teacher", tok)   # exactly the tokenizer's ids: fine
    LogitDistillation(str(teacher), tok.vocab_size).open(torch.device("cpu"))
    with pytest.raises(ValueError, match="fewer than the tokenizer"):
        LogitDistillation(str(teacher), tok.vocab_size + 10).open(torch.device("cpu"))


def test_recipe_pickles_without_the_teacher(setup):
    import pickle

    _, _, student, _ = setup
    recipe = LogitDistillation(str(student), 300)
    assert pickle.loads(pickle.dumps(recipe)) == recipe


