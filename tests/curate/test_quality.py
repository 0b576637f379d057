"""The DCLM-style fastText quality classifier: pieces, training, and agreement with people."""

from __future__ import annotations

import random

import pytest

from stages.curate import quality as Q
from tests.curate.conftest import UDHR, doc, python_doc, run_filter


def test_fasttext_can_train():
    from stages.curate.fasttext_env import require_training

    require_training()  # the full library, not fasttext-predict


def test_chunks_cut_at_paragraphs_and_drop_tiny_tails():
    text = "\n\n".join(f"Paragraph {i}. " + "word " * 60 for i in range(10))
    chunks = Q.chunk_text(text, 800)
    assert all(300 <= len(c) <= 1000 for c in chunks[:-1])
    assert "".join(c.replace("\n\n", "") for c in chunks).count("Paragraph") == 10
    assert Q.chunk_text("short", 800) == ["short"]
    assert all(len(c) <= 1700 for c in Q.chunk_text("x " * 5000, 800))  # one huge paragraph is cut


def test_auc_and_metrics():
    assert Q.roc_auc([0.1, 0.4, 0.35, 0.8], [0, 0, 1, 1]) == pytest.approx(0.75)
    assert Q.roc_auc([0.5, 0.5], [0, 1]) == pytest.approx(0.5)
    m = Q.binary_metrics([0.9, 0.8, 0.3, 0.2], [1, 0, 1, 0])
    assert (m["precision"], m["recall"], m["accuracy"]) == (0.5, 0.5, 0.5)


def test_top_fraction_threshold():
    scores = [i / 100 for i in range(100)]
    t = Q.top_fraction_threshold(scores, 0.1)
    assert sum(s >= t for s in scores) == 10
    assert Q.top_fraction_threshold(scores, 1.0) == 0.0


def test_style_features_keep_function_words_and_shapes():
    f = Q.Featurizer.fit(["the cat and the dog", "the end and more"], "style", 2)
    assert f.vocab == {"the", "and"}
    assert f("The Zebra and 42 foo_bar, x!") == "the <cap> and <num> <mix> , <w> !"
    assert Q.Featurizer("words")("The Cat, 42") == "the cat , 42"


def test_training_separates_classes_and_reports_heldout(tmp_path):
    pos = [python_doc(t) for t in ("exceptions", "naming", "execmodel", "objects", "types", "specialnames")]
    rng = random.Random(0)
    vocab = "buy now cheap deal click here free shipping best price offer sale".split()
    neg = ["\n".join(" ".join(rng.choice(vocab) for _ in range(12)) for _ in range(40)) for _ in range(40)]
    examples = Q.build_examples(pos, neg, 600, 1000, seed=0)
    path, report = Q.train_classifier(examples, tmp_path, 0.2, 0, lr=0.1, epoch=5, word_ngrams=2, dim=32,
                                      bucket=4096, min_count=1, features="style")
    assert report.auc > 0.95 and report.n_heldout >= 2
    assert path.exists() and Q.features_path(path).exists()
    model = Q.QualityModel(path)  # reloads the featurizer from disk
    assert model.score(python_doc("assert")) > model.score(neg[0])
    # reproducible: the same examples and seed give the same model (a fresh process per training)
    path2, report2 = Q.train_classifier(examples, tmp_path / "again", 0.2, 0, lr=0.1, epoch=5, word_ngrams=2,
                                        dim=32, bucket=4096, min_count=1, features="style")
    assert report2 == report and path2.read_bytes() == path.read_bytes()


def test_quality_threshold_filter():
    docs = [doc("a", id="hi", quality_score=0.9), doc("b", id="lo", quality_score=0.1)]
    kept, removed = run_filter(Q.QualityThreshold(0.5), docs)
    assert [d.id for d in kept] == ["hi"] and removed == {"lo": "quality_below_top_fraction"}


def test_quality_threshold_per_language():
    """Each language keeps its own top fraction: French scored low by an English-trained model is cut
    against French, not against English."""
    docs = [doc("a", id="en-hi", quality_score=0.9, language="en"), doc("b", id="en-lo", quality_score=0.4,
                                                                        language="en"),
            doc("c", id="fr-hi", quality_score=0.3, language="fr"), doc("d", id="fr-lo", quality_score=0.1,
                                                                        language="fr")]
    kept, removed = run_filter(Q.QualityThreshold(0.5, {"en": 0.9, "fr": 0.3}), docs)
    assert sorted(d.id for d in kept) == ["en-hi", "fr-hi"]
    assert removed == {"en-lo": "quality_below_top_fraction", "fr-lo": "quality_below_top_fraction"}
    kept, _ = run_filter(Q.QualityThreshold(0.5), [doc("c", id="fr-hi", quality_score=0.3, language="fr")])
    assert kept == []  # one global cut removes it


def test_too_little_data_is_a_clear_error():
    with pytest.raises(ValueError, match="too little data"):
        Q.build_examples([UDHR["en"]], [UDHR["de"]], 1500, 100, 0)


@pytest.mark.slow
def test_agreement_with_human_labels(shared_data, tmp_path):
    """Train as the stage's default does (python-docs vs the Python environment's prose, style
    features), then compare with the 499 human good/poor labels of DCLM's sample (never trained on).

    The stage samples its negatives from the Python distributions' prose only, never from the
    system's manuals (/usr/share/doc, /usr/share/info) that it also harvests: with those among the
    negatives the classifier learns Python-docs style against GNU-manual style and its agreement
    with people falls to ~0.56 (0.62-0.69 without). ``doc_roots=[]`` reads exactly those negatives."""
    from stages.curate.config import CurateConfig, LocalSource
    from stages.curate.harvest import plan_inputs
    from stages.curate.readers import SourceReader
    from stages.curate.web_filters import Extract

    cfg = CurateConfig(sources=[LocalSource(doc_roots=[])])
    q = cfg.web.quality
    reader = SourceReader([[]], "web", cfg.max_doc_bytes)
    raw = [d for u in plan_inputs(cfg)["web"].units for d in reader.read_unit(u) if not isinstance(d, str)]
    negatives = [d.text for d in run_filter(Extract(), raw)[0]]
    positives = Q.reference_texts([r.model_dump() for r in q.reference], cfg.max_doc_bytes)
    examples = Q.build_examples(positives, negatives, q.chunk_chars, q.max_examples_per_class, seed=0)
    path, report = Q.train_classifier(examples, tmp_path, q.heldout_fraction, 0, lr=q.lr, epoch=q.epoch,
                                      word_ngrams=q.word_ngrams, dim=q.dim, bucket=q.bucket,
                                      min_count=q.min_count, features=q.features, style_vocab=q.style_vocab)
    human = Q.agreement(path, Q.load_labelled(shared_data / "dclm" / "majority_data.jsonl"))
    print(f"held-out AUC {report.auc:.3f}; DCLM human labels: AUC {human['auc']:.3f}, "
          f"accuracy {human['accuracy']:.3f} (n={human['n']})")
    assert report.auc > 0.9
    assert human["n"] == 499
    # Well above chance (0.5; with n=499 one standard error is ~0.026). The negatives are harvested
    # from whatever Python environment runs the test, so the figure moves a little between machines:
    # 0.62-0.70 measured (CI venv, dev venv); the word-feature model scores ~0.45 here.
    assert human["auc"] > 0.58
