"""Fixtures for the eval tests: the upstream outputs the stage reads, built in seconds.

- a tokenizer trained on the local Python installation's package descriptions and sources
- a tokenizer-stage output: <dir>/tokenizer and <dir>/shards with held-out web and code text
- a distill-stage output: <dir>/hf (a tiny random DeepSeek-V3 + tokenizer) and
  <dir>/data/heldout.jsonl (problems from stages.common.problems.build_split)
- model folders with a known bits-per-byte: a uniform model (zero output head) and a "spiky" one
  (large random output head: confidently wrong, worse than uniform)
"""

from __future__ import annotations

from itertools import islice
from pathlib import Path

import pytest

TINY_MODEL = dict(
    hidden_size=32, num_hidden_layers=2, max_position_embeddings=512,
    num_attention_heads=2, q_lora_rank=16, kv_lora_rank=16,
    qk_nope_head_dim=8, qk_rope_head_dim=8, v_head_dim=8,
    intermediate_size=64, moe_intermediate_size=16, first_k_dense_replace=1,
    n_routed_experts=4, n_shared_experts=1, num_experts_per_tok=2, n_group=2, topk_group=1,
    num_nextn_predict_layers=0, initializer_range=0.05,
)


def _texts(docs, max_bytes: int) -> list[dict]:
    out, size = [], 0
    for d in docs:
        out.append(d)
        size += len(d["text"].encode())
        if size >= max_bytes:
            break
    return out


@pytest.fixture(scope="session")
def corpus() -> dict[str, list[dict]]:
    from tokenizer.local_corpus import code_documents, web_documents

    return {"web": _texts(islice(web_documents(), 5000), 150_000),
            "code": _texts(islice(code_documents(), 5000), 150_000)}


@pytest.fixture(scope="session")
def eval_tokenizer(corpus):
    from tokenizer import Tokenizer, TrainSettings, train_sentencepiece

    texts = [d["text"] for docs in corpus.values() for d in docs]
    result = train_sentencepiece(texts, TrainSettings(vocab_size=640, num_threads=1), log=lambda *_: None)
    return Tokenizer(result.model_proto)


@pytest.fixture(scope="session")
def tokenizer_out(tmp_path_factory, eval_tokenizer, corpus) -> Path:
    """What the tokenizer stage leaves: tokenizer/ and shards/ (validation: the last 8 docs per source;
    train: the others)."""
    import numpy as np

    from tokenizer.shards import ShardWriter, SourceStats, build_manifest, write_manifest

    root = tmp_path_factory.mktemp("tokenizer_out")
    tok = eval_tokenizer
    tok.save(root / "tokenizer")
    shards = root / "shards"
    stats: dict[str, dict[str, SourceStats]] = {"train": {}, "validation": {}}
    for source, docs in corpus.items():
        # train: what the unigram baseline counts (and a "trained" test model learns from)
        w = ShardWriter(shards, "train", f"{source}-00000", np.uint16, tok.eos_id)
        for d in docs[:-8]:
            w.add(d["id"], tok.encode(d["text"]), len(d["text"].encode()))
        st = SourceStats()
        st.add(w.close())
        stats["train"][source] = st
        w = ShardWriter(shards, "validation", f"{source}-00000", np.uint16, tok.eos_id, keep_text=True)
        for d in docs[-8:]:
            text = d["text"][:3000]
            w.add(d["id"], tok.encode(text), len(text.encode()), text)
        st = SourceStats()
        st.add(w.close())
        stats["validation"][source] = st
    write_manifest(shards, build_manifest(np.uint16, tok.vocab_size, tok.eos_id, {"web": 0.7, "code": 0.3}, stats))
    return root


def save_model(path: Path, tok, *, seed: int = 0, head: str = "random", **overrides) -> Path:
    """A tiny DeepSeek-V3 + tokenizer as one HF folder. head: random | uniform (zero output head,
    every token equally likely) | spiky (large random output head)."""
    import torch

    from model import DeepSeekV3, ModelConfig

    torch.manual_seed(seed)
    config = ModelConfig.model_validate({**TINY_MODEL, "vocab_size": tok.vocab_size, "bos_token_id": tok.bos_id,
                                         "eos_token_id": tok.eos_id, **overrides})
    model = DeepSeekV3(config).eval()
    with torch.no_grad():
        if head == "uniform":
            model.lm_head.weight.zero_()
        elif head == "spiky":
            model.lm_head.weight.normal_(0.0, 3.0)
    path.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(path)
    tok.save(path)
    return path


@pytest.fixture(scope="session")
def models(tmp_path_factory, eval_tokenizer) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("models")
    return {kind: save_model(root / kind, eval_tokenizer, head=kind) for kind in ("random", "uniform", "spiky")}


@pytest.fixture(scope="session")
def distill_out(tmp_path_factory, eval_tokenizer, models) -> Path:
    """What the distill stage leaves: hf/ (the model) and data/heldout.jsonl."""
    import shutil

    from stages.common.problems import ProblemsConfig, build_split, write_problems

    root = tmp_path_factory.mktemp("distill_out")
    shutil.copytree(models["random"], root / "hf")
    split = build_split(ProblemsConfig(n_train=40, n_heldout=24), seed=0)
    write_problems(split.heldout, root / "data" / "heldout.jsonl")
    return root


def stage_context(tmp_path: Path, tokenizer_out: Path, distill_out: Path, tracker=None, name: str = "test"):
    from pipeline.config import GlobalConfig
    from pipeline.stage import StageContext
    from pipeline.tracking import Tracker

    return StageContext(stage="eval", out=tmp_path / "out", inputs={"tokenizer": tokenizer_out, "distill": distill_out},
                        tracker=tracker or Tracker.disabled(), pipeline=GlobalConfig(name=name), fingerprint="test")


def lm_only_config(**over):
    """Only the fast suite: bits per byte on a few KB, gated on the web and code bpb."""
    from stages.eval.config import EvalConfig

    base = {"language_modelling": {"max_bytes_per_source": 4000, "seq_len": 128},
            "reasoning": {"enabled": False}, "humaneval": {"enabled": False}, "harness": {"enabled": False},
            "gate": {"rules": [{"metric": "lm/web/bpb", "floor": 50.0, "max_regression": 0.01},
                               {"metric": "lm/code/bpb", "floor": 50.0, "max_regression": 0.01}]}}
    for k, v in over.items():
        base[k] = {**base[k], **v} if isinstance(v, dict) and isinstance(base.get(k), dict) else v
    return EvalConfig.model_validate(base)
