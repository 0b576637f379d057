"""DCLM-style model-based quality filtering with fastText, trained by the stage itself.

DCLM (Li et al. 2024) trains a fastText bigram classifier (lr 0.1, 5 epochs) to tell a reference
set of good text (OpenHermes-2.5 + ELI5) from raw web text (RefinedWeb), scores every document
with P(good), and keeps the top 10%. Here: positives from a configurable reference set (offline
default: the Python documentation shipped with CPython), negatives sampled from this run's own raw
input; both cut into chunks of similar length so the model cannot just learn document length.
Precision/recall/AUC on a held-out split are logged, and the model is saved as an artifact.
"""

from __future__ import annotations

import json
import math
import random
import re
import subprocess
import sys
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from datatrove.data import Document, DocumentsPipeline
from datatrove.io import DataFolderLike, get_datafolder
from datatrove.pipeline.base import PipelineStep
from datatrove.pipeline.filters.base_filter import BaseFilter

from stages.curate.accounting import AuditSample

POSITIVE, NEGATIVE = "__label__hq", "__label__cc"
_TOKEN = re.compile(r"\w+|[^\w\s]")


class Featurizer:
    """What the classifier sees: one line of tokens per text.

    ``words`` (DCLM): lower-cased word and punctuation tokens. ``style``: the ``vocab`` most
    frequent words (by document frequency in the training texts, i.e. function words) stay,
    every other token becomes its shape (<w>, <cap>, <num>, <mix>) and punctuation stays. With an
    offline reference set whose topic differs from the web (Python docs), word features learn the
    topic; style features learn how well-formed prose reads, and that is what transfers: on the
    DCLM human-labelled CC sample, AUC 0.45 (words) vs 0.75 (style) for the same training data
    (bench/curate.py reports it).
    """

    def __init__(self, mode: str = "words", vocab: Iterable[str] = ()):
        if mode not in ("words", "style"):
            raise ValueError(f"unknown feature mode {mode!r}")
        self.mode = mode
        self.vocab = frozenset(vocab)

    @classmethod
    def fit(cls, texts: Iterable[str], mode: str, vocab_size: int) -> "Featurizer":
        if mode == "words":
            return cls("words")
        df = Counter()
        for t in texts:
            df.update({w for w in _TOKEN.findall(t.lower()) if w.isalpha()})
        return cls("style", [w for w, _ in sorted(df.items(), key=lambda kv: (-kv[1], kv[0]))[:vocab_size]])

    def __call__(self, text: str) -> str:
        tokens = _TOKEN.findall(text)
        if self.mode == "words":
            return " ".join(t.lower() for t in tokens)
        return " ".join(t.lower() if t.lower() in self.vocab else _shape(t) for t in tokens)

    def save(self, path: Path) -> None:
        path.write_text(json.dumps({"mode": self.mode, "vocab": sorted(self.vocab)}))

    @classmethod
    def load(cls, path: Path) -> "Featurizer":
        d = json.loads(path.read_text())
        return cls(d["mode"], d["vocab"])


def _shape(token: str) -> str:
    if token.isdigit():
        return "<num>"
    if token.isalpha():
        return "<cap>" if token[0].isupper() else "<w>"
    if token[0].isalnum() or token[0] == "_":
        return "<mix>"
    return token


def features_path(model_path: str | Path) -> Path:
    return Path(str(model_path) + ".features.json")


def chunk_text(text: str, chunk_chars: int) -> list[str]:
    """Cut at paragraph (then line) boundaries into pieces of about ``chunk_chars`` characters;
    tails under a quarter of that are dropped unless the whole text is that short."""
    parts = [p for p in re.split(r"\n\s*\n", text) if p.strip()]
    chunks, cur = [], ""
    for part in parts:
        if len(cur) + len(part) > chunk_chars and cur:
            chunks.append(cur)
            cur = ""
        while len(part) > 2 * chunk_chars:  # one huge paragraph: cut at a line or a space
            cut = max(part.rfind("\n", 0, chunk_chars), part.rfind(" ", 0, chunk_chars), chunk_chars // 2)
            chunks.append(part[:cut])
            part = part[cut:].lstrip()
        cur = f"{cur}\n\n{part}" if cur else part
    if cur:
        chunks.append(cur)
    if len(chunks) > 1:
        chunks = [c for c in chunks if len(c) >= chunk_chars // 4]
    return chunks


@dataclass
class ClassifierReport:
    n_train: int
    n_heldout: int
    n_positive_chunks: int
    n_negative_chunks: int
    precision: float
    recall: float
    f1: float
    accuracy: float
    auc: float

    def as_dict(self) -> dict:
        return asdict(self)


def build_examples(positives: Iterable[str], negatives: Iterable[str], chunk_chars: int,
                   max_per_class: int, seed: int) -> list[tuple[int, str]]:
    """Balanced, shuffled (label, text) chunks: 1 = reference, 0 = raw input."""
    rng = random.Random(seed)
    pos = [c for t in positives for c in chunk_text(t, chunk_chars)]
    neg = [c for t in negatives for c in chunk_text(t, chunk_chars)]
    if len(pos) < 5 or len(neg) < 5:
        raise ValueError(f"too little data to train the quality classifier: {len(pos)} positive and "
                         f"{len(neg)} negative chunks (need at least 5 each)")
    n = min(len(pos), len(neg), max_per_class)
    rng.shuffle(pos)
    rng.shuffle(neg)
    examples = [(1, t) for t in pos[:n]] + [(0, t) for t in neg[:n]]
    rng.shuffle(examples)
    return examples


def train_classifier(examples: Sequence[tuple[int, str]], workdir: Path, heldout_fraction: float, seed: int,
                     lr: float, epoch: int, word_ngrams: int, dim: int, bucket: int, min_count: int,
                     features: str = "words", style_vocab: int = 100) -> tuple[Path, ClassifierReport]:
    """Train on (1 - heldout_fraction) of ``examples``, report on the rest; returns (model, report)."""
    workdir.mkdir(parents=True, exist_ok=True)
    n_held = max(2, int(len(examples) * heldout_fraction))
    heldout, train = examples[:n_held], examples[n_held:]
    featurize = Featurizer.fit((t for _, t in train), features, style_vocab)
    train_file = workdir / "train.txt"
    with open(train_file, "w") as f:
        for label, text in train:
            f.write(f"{POSITIVE if label else NEGATIVE} {featurize(text)}\n")
    path = workdir / "quality_fasttext.bin"
    params = dict(lr=lr, epoch=epoch, wordNgrams=word_ngrams, dim=dim, bucket=bucket, minCount=min_count,
                  loss="softmax", thread=1, seed=seed, verbose=0)
    fasttext_train(train_file, path, params)
    featurize.save(features_path(path))
    train_file.unlink()
    from stages.curate.fasttext_env import load_model

    model = load_model(path)
    scorer = QualityModel(path, model, featurize)
    scores = [scorer.score(t) for _, t in heldout]
    labels = [lab for lab, _ in heldout]
    m = binary_metrics(scores, labels)
    pos = sum(labels) + sum(lab for lab, _ in train)
    report = ClassifierReport(n_train=len(train), n_heldout=len(heldout), n_positive_chunks=pos,
                              n_negative_chunks=len(examples) - pos, **m)
    return path, report


_TRAIN_SCRIPT = (
    "import fasttext, json, sys\n"
    "fasttext.train_supervised(input=sys.argv[1], **json.loads(sys.argv[3])).save_model(sys.argv[2])\n")


def fasttext_train(train_file: Path, model_file: Path, params: dict, attempts: int = 3) -> None:
    """``fasttext.train_supervised`` in a fresh interpreter.

    The fastText build here is not reproducible inside a long-lived process: with the same data,
    seed and thread=1, repeated trainings in one process give slightly different models, and now
    and then fail with "Encountered NaN" (the outcome depends on the process's heap, so it looks
    like alignment-dependent vectorised math). The first training in a fresh process is
    reproducible, so every training gets one; a NaN is retried in another fresh process.
    """
    for attempt in range(1, attempts + 1):
        r = subprocess.run([sys.executable, "-c", _TRAIN_SCRIPT, str(train_file), str(model_file),
                            json.dumps(params)], capture_output=True, text=True)
        if r.returncode == 0:
            return
        if "Encountered NaN" not in r.stderr or attempt == attempts:
            raise RuntimeError(f"fastText training failed (attempt {attempt}):\n{r.stderr[-2000:]}")


def binary_metrics(scores: Sequence[float], labels: Sequence[int], threshold: float = 0.5) -> dict:
    tp = sum(1 for s, y in zip(scores, labels, strict=True) if s >= threshold and y)
    fp = sum(1 for s, y in zip(scores, labels, strict=True) if s >= threshold and not y)
    fn = sum(1 for s, y in zip(scores, labels, strict=True) if s < threshold and y)
    tn = len(labels) - tp - fp - fn
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"precision": precision, "recall": recall, "f1": f1,
            "accuracy": (tp + tn) / len(labels) if labels else 0.0, "auc": roc_auc(scores, labels)}


def roc_auc(scores: Sequence[float], labels: Sequence[int]) -> float:
    """Probability that a random positive outscores a random negative (ties count half)."""
    order = sorted(range(len(scores)), key=lambda i: scores[i])
    ranks = [0.0] * len(scores)
    i = 0
    while i < len(order):  # average ranks over ties
        j = i
        while j + 1 < len(order) and scores[order[j + 1]] == scores[order[i]]:
            j += 1
        for k in range(i, j + 1):
            ranks[order[k]] = (i + j) / 2 + 1
        i = j + 1
    n_pos = sum(1 for y in labels if y)
    n_neg = len(labels) - n_pos
    if not n_pos or not n_neg:
        return float("nan")
    rank_sum = sum(r for r, y in zip(ranks, labels, strict=True) if y)
    return (rank_sum - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg)


class QualityModel:
    """P(reference-like) for a text, with the featurizer saved beside the model."""

    def __init__(self, path: str | Path, model=None, featurize: Featurizer | None = None):
        self.path = str(path)
        self._model = model
        if featurize is None:
            fp = features_path(path)
            featurize = Featurizer.load(fp) if fp.exists() else Featurizer("words")
        self.featurize = featurize

    @property
    def model(self):
        if self._model is None:
            from stages.curate.fasttext_env import load_model

            self._model = load_model(self.path)
        return self._model

    def score(self, text: str) -> float:
        labels, probs = self.model.predict(self.featurize(text), k=2)
        for label, p in zip(labels, probs, strict=True):
            if label == POSITIVE:
                return float(min(max(p, 0.0), 1.0))
        return 0.0


def top_fraction_threshold(scores: Sequence[float], fraction: float) -> float:
    """The score of the ceil(fraction * n)-th best document: keeping scores >= it keeps the top
    fraction (plus any ties at the boundary)."""
    if not scores:
        return 0.0
    ordered = sorted(scores, reverse=True)
    k = max(1, math.ceil(fraction * len(ordered)))
    return ordered[k - 1]


# -- pipeline steps -------------------------------------------------------------------------------

class RawSample(PipelineStep):
    """Pass-through tap: a uniform sample (bottom-k by id hash) of raw documents, the negatives."""

    type = "🔬 - SAMPLE"
    name = "🎲 Raw sample"

    def __init__(self, output_folder: DataFolderLike, k: int, skip_path_prefixes: tuple[str, ...] = ()):
        super().__init__()
        self.output_folder = get_datafolder(output_folder)
        self.k = k
        self.skip_path_prefixes = tuple(skip_path_prefixes)

    def run(self, data: DocumentsPipeline, rank: int = 0, world_size: int = 1) -> DocumentsPipeline:
        sample = AuditSample(self.k)
        for doc in data:
            path = str(doc.metadata.get("path") or "")
            if not (self.skip_path_prefixes and path.startswith(self.skip_path_prefixes)):
                sample.offer("raw", Document(text=doc.text, id=doc.id))
            yield doc
        with self.output_folder.open(f"{rank:05d}.jsonl", "wt") as f:
            for rec in sample.records():
                f.write(json.dumps({"id": rec["id"], "text": rec["text"]}, ensure_ascii=False) + "\n")


class QualityScorer(PipelineStep):
    """Adds ``metadata["quality_score"]`` and saves this task's scores for the threshold."""

    type = "🔬 - SCORE"
    name = "⭐ fastText quality score"

    def __init__(self, model_path: str, scores_folder: DataFolderLike):
        super().__init__()
        self.model = QualityModel(model_path)
        self.scores_folder = get_datafolder(scores_folder)

    def run(self, data: DocumentsPipeline, rank: int = 0, world_size: int = 1) -> DocumentsPipeline:
        scores = []
        for doc in data:
            with self.track_time():
                s = self.model.score(doc.text)
            doc.metadata["quality_score"] = round(s, 6)
            scores.append([round(s, 6), doc.metadata.get("language") or ""])
            self.stat_update("scored")
            yield doc
        with self.scores_folder.open(f"{rank:05d}.json", "wt") as f:
            json.dump(scores, f)


class QualityThreshold(BaseFilter):
    name = "⭐ Quality top fraction"

    def __init__(self, threshold: float, per_language: dict[str, float] | None = None):
        super().__init__()
        self.threshold = threshold
        self.per_language = per_language or {}

    def filter(self, doc: Document) -> bool | tuple[bool, str]:
        threshold = self.per_language.get(doc.metadata.get("language") or "", self.threshold)
        score = doc.metadata.get("quality_score", 0.0)
        if score >= threshold:
            return True
        doc.metadata["filter_value"], doc.metadata["filter_threshold"] = score, threshold
        return False, "quality_below_top_fraction"


# -- training inside the stage ----------------------------------------------------------------------

def reference_texts(reference: list[dict], max_doc_bytes: int) -> list[str]:
    """Texts of the configured reference (positive) sources."""
    from stages.curate.config import FileSource
    from stages.curate.harvest import file_units, python_docs
    from stages.curate.readers import SourceReader

    texts: list[str] = []
    for ref in reference:
        if ref["type"] == "python-docs":
            texts += [text for _, text in python_docs()]
            continue
        reader = SourceReader([[]], "web", max_doc_bytes)
        units = file_units(FileSource(type=ref["type"], path=ref["path"], text_key=ref["text_key"]))
        for unit in units:
            texts += [d.text for d in reader.read_unit(unit) if not isinstance(d, str) and d.text.strip()]
    return texts


def raw_negatives(raw_sample_dir: str | Path) -> list[str]:
    texts = []
    for f in sorted(Path(raw_sample_dir).glob("*.jsonl")):
        texts += [json.loads(line)["text"] for line in f.read_text().splitlines() if line.strip()]
    return texts


def train_for_stage(raw_sample_dir: str, reference: list[dict], qcfg: dict, seed: int, out_dir: str,
                    max_doc_bytes: int) -> tuple[str, dict]:
    """Train the stage's classifier (runs as a Ray task); returns (model path, report dict)."""
    examples = build_examples(reference_texts(reference, max_doc_bytes), raw_negatives(raw_sample_dir),
                              qcfg["chunk_chars"], qcfg["max_examples_per_class"], seed)
    path, report = train_classifier(
        examples, Path(out_dir), qcfg["heldout_fraction"], seed, lr=qcfg["lr"], epoch=qcfg["epoch"],
        word_ngrams=qcfg["word_ngrams"], dim=qcfg["dim"], bucket=qcfg["bucket"], min_count=qcfg["min_count"],
        features=qcfg["features"], style_vocab=qcfg["style_vocab"])
    return str(path), report.as_dict()


def agreement(model_path: str | Path, labelled: Iterable[tuple[str, int]], threshold: float | None = None) -> dict:
    """How the classifier's scores agree with human good/poor labels (1/0): AUC, and accuracy,
    precision and recall at 0.5 and at the stage's top-fraction ``threshold``."""
    model = QualityModel(model_path)
    texts, labels = zip(*labelled, strict=True)
    scores = [model.score(t) for t in texts]
    out = {"n": len(labels), "positives": sum(labels), **binary_metrics(scores, labels)}
    if threshold is not None:
        at = binary_metrics(scores, labels, threshold)
        out.update({f"{k}_at_threshold": v for k, v in at.items() if k != "auc"}, threshold=threshold)
    return out


def load_labelled(path: str | Path) -> list[tuple[str, int]]:
    """(text, label) pairs from a JSONL file with ``text`` and a 0/1 ``label``."""
    pairs = []
    with open(path) as f:
        for line in f:
            if line.strip():
                d = json.loads(line)
                pairs.append((d["text"], int(d["label"])))
    return pairs
