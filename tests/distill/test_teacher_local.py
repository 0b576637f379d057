"""The local-checkpoint teacher on a real (micro, random) DeepSeek-V3 checkpoint and a real tokenizer.

A random model writes noise, so these tests check the mechanics: the chat prompt, n samples,
seeded determinism, and that the pipeline counts what it drops; not answer quality.
"""

from __future__ import annotations

import pytest

pytest.importorskip("torch")
pytestmark = pytest.mark.slow  # loading torch and the model costs ~10 s on a busy 2-core machine

from stages.common.problems import ProblemsConfig, build_split  # noqa: E402
from stages.distill.rejection import RejectionConfig, rejection_sample  # noqa: E402
from stages.distill.teachers import LocalTeacherConfig, ProceduralTeacherConfig, TeacherUnavailable, build_teacher  # noqa: E402

MICRO = dict(hidden_size=64, num_hidden_layers=2, max_position_embeddings=512, num_attention_heads=4,
             q_lora_rank=32, kv_lora_rank=32, qk_nope_head_dim=16, qk_rope_head_dim=8, v_head_dim=16,
             intermediate_size=128, moe_intermediate_size=32, first_k_dense_replace=1, n_routed_experts=4,
             n_shared_experts=1, num_experts_per_tok=2, n_group=1, topk_group=1, num_nextn_predict_layers=0,
             initializer_range=0.05)


@pytest.fixture(scope="module")
def problems():
    return build_split(ProblemsConfig(n_train=200, n_heldout=10), seed=0).train


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory, problems):
    import torch

    from model import DeepSeekV3, ModelConfig
    from tokenizer import Tokenizer, TrainSettings, train_sentencepiece
    from tokenizer.training import min_vocab_size

    teacher = build_teacher(ProceduralTeacherConfig(error_rate=0))
    texts = [f"{p.prompt}\n{c.reasoning}\n{c.content}" for p in problems for c in teacher.complete(p, 1)]
    tok = Tokenizer(train_sentencepiece(texts * 3, TrainSettings(vocab_size=min_vocab_size() + 64),
                                        log=lambda *_: None).model_proto)
    path = tmp_path_factory.mktemp("teacher")
    tok.save(path)
    cfg = ModelConfig.model_validate({**MICRO, "vocab_size": tok.vocab_size, "eos_token_id": tok.special("eos").id,
                                      "bos_token_id": tok.special("bos").id})
    torch.manual_seed(0)
    DeepSeekV3(cfg).save_pretrained(path)
    return path


def test_generates_n_seeded_samples(checkpoint, problems):
    t = build_teacher(LocalTeacherConfig(path=str(checkpoint), max_new_tokens=12, temperature=1.0, top_p=1.0))
    a = t.complete(problems[0], 3, seed=0)
    assert len(a) == 3 and all(c.finish_reason in ("stop", "length") for c in a)
    assert [c.content for c in a] == [c.content for c in t.complete(problems[0], 3, seed=0)]
    assert [c.content for c in a] != [c.content for c in t.complete(problems[0], 3, seed=1)]


def test_pipeline_counts_every_noisy_sample(checkpoint, problems):
    cfg = LocalTeacherConfig(path=str(checkpoint), max_new_tokens=8)
    res = rejection_sample(problems[:3], cfg, RejectionConfig(samples_per_prompt=2, workers=2))
    st = res.stats
    assert st["requested"] == 6 and st["kept"] + sum(st["dropped"].values()) == 6
    assert all(k.startswith("format:") for k in st["dropped"])  # noise has no reasoning block / answer


def test_missing_checkpoint_is_a_clear_error(tmp_path):
    with pytest.raises(TeacherUnavailable, match="no config.json"):
        build_teacher(LocalTeacherConfig(path=str(tmp_path)))
