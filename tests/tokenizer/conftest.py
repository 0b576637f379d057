"""Fixtures for the tokenizer tests: a real corpus from the local Python installation (curate
output format) and a small tokenizer trained on it once per session."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.tokenizer.corpus_helpers import read_corpus_texts
from tokenizer.local_corpus import write_local_corpus

TEST_VOCAB = 1024


@pytest.fixture(scope="session")
def corpus_dir(tmp_path_factory) -> Path:
    """~0.9 MB of real prose and code in the curate stage's layout."""
    root = tmp_path_factory.mktemp("curate")
    write_local_corpus(root, web_bytes=450_000, code_bytes=450_000, files_per_source=2)
    return root


@pytest.fixture(scope="session")
def tok(corpus_dir):
    from tokenizer import Tokenizer, TrainSettings, train_sentencepiece

    texts = read_corpus_texts(corpus_dir, "web") + read_corpus_texts(corpus_dir, "code")
    result = train_sentencepiece(texts, TrainSettings(vocab_size=TEST_VOCAB), log=lambda *_: None)
    return Tokenizer(result.model_proto)


@pytest.fixture(scope="session")
def tok_dir(tok, tmp_path_factory) -> Path:
    return tok.save(tmp_path_factory.mktemp("tokenizer"))


@pytest.fixture(scope="module")
def ray_cpus():
    """Ray with 2 CPUs for this module; reuses (and leaves) one a session fixture already started."""
    import ray

    started = not ray.is_initialized()
    if started:
        ray.init(num_cpus=2, include_dashboard=False)
    yield ray
    if started:
        ray.shutdown()
