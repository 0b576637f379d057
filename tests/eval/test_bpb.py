"""Bits per byte: a hand-computable case, the windowing, and independence from batching."""

from __future__ import annotations

import math

import pytest

from stages.eval.bpb import bits_per_byte, validation_texts, windows
from stages.eval.generation import load_model


def test_windows_score_every_token_once_after_the_separator():
    doc = list(range(100, 111))                      # 11 tokens
    wins = windows(doc, start_id=1, seq_len=4)
    assert [y for _, y in wins] == [[100, 101, 102, 103], [104, 105, 106, 107], [108, 109, 110]]
    assert wins[0][0] == [1, 100, 101, 102] and wins[1][0] == [103, 104, 105, 106]
    assert all(len(x) == len(y) for x, y in wins)


def test_uniform_model_scores_log2_vocab_per_token(models, tokenizer_out):
    """Zero output head: p = 1/V for every token, so bpb = log2(V) * tokens / bytes exactly."""
    lm = load_model(models["uniform"])
    texts = validation_texts(tokenizer_out / "shards", "web", max_bytes=5000)
    r = bits_per_byte(lm.model, lm.tokenizer, texts, seq_len=64, batch_size=4)
    V = lm.model.config.vocab_size
    tokens = sum(len(lm.tokenizer.encode(t)) for t in texts)
    n_bytes = sum(len(t.encode()) for t in texts)
    assert (r.tokens, r.bytes, r.documents) == (tokens, n_bytes, len(texts))
    assert r.bpb == pytest.approx(math.log2(V) * tokens / n_bytes, rel=1e-5)
    assert r.bits_per_token == pytest.approx(math.log2(V), rel=1e-5)


def test_padding_and_batching_do_not_change_the_score(models, tokenizer_out):
    lm = load_model(models["random"])
    texts = validation_texts(tokenizer_out / "shards", "code", max_bytes=4000)
    one = bits_per_byte(lm.model, lm.tokenizer, texts, seq_len=96, batch_size=1)
    many = bits_per_byte(lm.model, lm.tokenizer, texts, seq_len=96, batch_size=5)
    assert many.bpb == pytest.approx(one.bpb, rel=1e-5)
    # a trained-from-nothing model is near uniform, a confidently wrong one is far worse
    spiky = load_model(models["spiky"])
    assert bits_per_byte(spiky.model, spiky.tokenizer, texts, seq_len=96, batch_size=5).bpb > 1.5 * one.bpb


def test_validation_texts_stop_after_the_byte_budget(tokenizer_out):
    all_docs = validation_texts(tokenizer_out / "shards", "web", None)
    some = validation_texts(tokenizer_out / "shards", "web", max_bytes=1)
    assert len(all_docs) == 8 and some == all_docs[:1]


def test_the_whole_split_is_checked_against_the_manifest_bytes(tmp_path, tokenizer_out, distill_out):
    import json
    import shutil

    from stages.eval.run import Inputs
    from tests.eval.conftest import lm_only_config, stage_context

    cfg = lm_only_config(language_modelling={"max_bytes_per_source": None})
    texts = Inputs(cfg, stage_context(tmp_path, tokenizer_out, distill_out)).validation
    recorded = json.loads((tokenizer_out / "shards" / "manifest.json").read_text())["splits"]["validation"]["sources"]
    assert {s: len(v) for s, v in texts.items()} == {s: v["documents"] for s, v in recorded.items()}
    # a manifest that disagrees with the text on disk is refused, naming the source
    broken = tmp_path / "tok"
    shutil.copytree(tokenizer_out, broken)
    manifest = json.loads((broken / "shards" / "manifest.json").read_text())
    manifest["splits"]["validation"]["sources"]["web"]["bytes"] += 1
    (broken / "shards" / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ValueError, match="validation text of 'web' has .* but the manifest records"):
        Inputs(cfg, stage_context(tmp_path, broken, distill_out))
