"""Training: bad samples fail before training with the cause named; training is deterministic."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.tokenizer.corpus_helpers import read_corpus_texts
from tokenizer import Tokenizer, TrainingDataError, TrainSettings, train_sentencepiece
from tokenizer.training import chunk_text

QUIET = {"log": lambda *_: None}


def test_empty_sample_is_rejected():
    with pytest.raises(TrainingDataError, match="sample is empty"):
        train_sentencepiece(["", "   \n\t"], TrainSettings(vocab_size=1024), **QUIET)


def test_too_small_sample_is_rejected_before_training():
    with pytest.raises(TrainingDataError, match=r"too small for vocab_size=4096.*at least 15,232 bytes"):
        train_sentencepiece(["hello world"] * 100, TrainSettings(vocab_size=4096), **QUIET)


def test_vocab_larger_than_the_data_supports_names_the_limit():
    # big enough to pass the cheap pre-check, too repetitive to hold 4096 distinct pieces
    text = "the cat sat on the mat. " * 2000
    with pytest.raises(TrainingDataError, match=r"vocab_size=4096 is larger than the training sample "
                                                r"supports \(at most \d+ for"):
        train_sentencepiece([text], TrainSettings(vocab_size=4096), **QUIET)


def test_settings_validate_before_training():
    with pytest.raises(ValueError, match="vocab_size=300 is too small"):
        TrainSettings(vocab_size=300)
    with pytest.raises(ValueError, match="character_coverage"):
        TrainSettings(character_coverage=0.5)


def test_training_is_deterministic(corpus_dir):
    texts = read_corpus_texts(corpus_dir, "code")[:40]
    a = train_sentencepiece(texts, TrainSettings(vocab_size=800), **QUIET)
    b = train_sentencepiece(texts, TrainSettings(vocab_size=800), **QUIET)
    assert a.model_proto == b.model_proto
    tok = Tokenizer(a.model_proto)
    assert tok.vocab_size == 800
    # code structure got learned: indentation and newline pieces exist
    pieces = {tok.decode([i]) for i in range(288, tok.vocab_size)}
    assert "    " in pieces and any("\n" in p for p in pieces)


@settings(max_examples=200, deadline=None)
@given(st.text(), st.integers(min_value=4, max_value=64))
def test_chunks_rejoin_and_fit(text, max_bytes):
    chunks = list(chunk_text(text, max_bytes))
    assert "".join(chunks) == text
    assert all(0 < len(c.encode()) <= max_bytes for c in chunks)
