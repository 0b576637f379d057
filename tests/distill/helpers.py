"""Shared by the distill-stage tests: real traces from the procedural teacher, a real (small)
sentencepiece tokenizer trained on them, and micro DeepSeek-V3 checkpoints in Hugging Face layout."""

from __future__ import annotations

from pathlib import Path

from stages.common.problems import ProblemsConfig, build_split

ARITHMETIC_ONLY = dict(arithmetic={"max_digits": 2, "ops": ["+", "-"]}, linear=None, countdown=None, code=None)

# A micro model with every feature the trainer touches (dense first layer, shared + routed
# experts, MTP), milliseconds per step.
MICRO = dict(hidden_size=64, num_hidden_layers=2, max_position_embeddings=512, num_attention_heads=2,
             q_lora_rank=32, kv_lora_rank=32, qk_nope_head_dim=16, qk_rope_head_dim=8, v_head_dim=16,
             intermediate_size=128, moe_intermediate_size=32, first_k_dense_replace=1, n_routed_experts=4,
             n_shared_experts=1, num_experts_per_tok=2, n_group=1, topk_group=1, num_nextn_predict_layers=1,
             initializer_range=0.05)


def trace_rows(n_train: int = 200, seed: int = 0) -> list[dict]:
    """Verified chat rows (user + assistant with reasoning_content) from the procedural teacher."""
    from stages.distill.rejection import RejectionConfig, rejection_sample
    from stages.distill.teachers import ProceduralTeacherConfig

    split = build_split(ProblemsConfig(n_train=n_train, n_heldout=8, **ARITHMETIC_ONLY), seed=seed)
    return rejection_sample(split.train, ProceduralTeacherConfig(error_rate=0.0), RejectionConfig(),
                            seed=seed, say=lambda _: None).rows


def train_tokenizer(rows: list[dict], path: Path):
    """A byte-fallback BPE trained on the rendered traces (a few seconds), saved to ``path``."""
    from itertools import islice

    from tokenizer import Tokenizer, TrainSettings, train_sentencepiece
    from tokenizer.local_corpus import web_documents
    from tokenizer.training import min_vocab_size

    # the compact traces alone are too little text for the smallest vocabulary: add some prose
    texts = [_plain(r) for r in rows] * 3 + [d["text"][:4000] for d in islice(web_documents(), 30)]
    tok = Tokenizer(train_sentencepiece(texts, TrainSettings(vocab_size=min_vocab_size() + 96),
                                        log=lambda *_: None).model_proto)
    path.mkdir(parents=True, exist_ok=True)
    tok.save(path)
    return tok


def _plain(row: dict) -> str:
    parts: list[str] = []
    for m in row["messages"]:
        parts += [m.get("reasoning_content") or "", m.get("content") or ""]
    return "\n".join(p for p in parts if p)


def micro_checkpoint(path: Path, tok, seed: int = 0, **overrides) -> Path:
    """A random micro DeepSeek-V3 plus the tokenizer files, as the pretrain stage exports it."""
    import torch

    from model import DeepSeekV3, ModelConfig

    cfg = ModelConfig.model_validate({**MICRO, "vocab_size": tok.vocab_size, "bos_token_id": tok.bos_id,
                                      "eos_token_id": tok.eos_id, "pad_token_id": tok.pad_id, **overrides})
    torch.manual_seed(seed)
    DeepSeekV3(cfg).save_pretrained(path)
    tok.save(path)
    return path


def tiny_shards(path: Path, tok, n_docs: int = 40) -> Path:
    """A tokenizer-stage shards folder (train and validation splits of local prose, source "web"),
    for the replay of pretraining text in SFT."""
    from itertools import islice

    import numpy as np

    from tokenizer.local_corpus import web_documents
    from tokenizer.shards import ShardWriter, SourceStats, build_manifest, write_manifest

    docs = [d for d in islice(web_documents(), n_docs + 8) if d["text"].strip()]
    stats: dict = {"train": {}, "validation": {}}
    for split, part in (("train", docs[:-8]), ("validation", docs[-8:])):
        w = ShardWriter(path, split, "web-00000", np.uint16, tok.eos_id, keep_text=True)
        for d in part:
            text = d["text"][:6000]
            w.add(d["id"], tok.encode(text), len(text.encode()), text)
        st = SourceStats()
        st.add(w.close())
        stats[split]["web"] = st
    write_manifest(path, build_manifest(np.uint16, tok.vocab_size, tok.eos_id, {"web": 1.0}, stats))
    return path
