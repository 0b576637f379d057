"""Planted duplicates through the stage's exact + MinHash dedup on Ray, with 1 and 2 workers.

Near-copies at ~0.9 Jaccard (on the stage's own word 5-gram shingles) must go (>= 95%), distinct
documents, including related pairs at ~0.3 Jaccard, must stay (< 1% removed), and the kept set must
not depend on how many workers ran the tasks.
"""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from pipeline.config import GlobalConfig
from pipeline.stage import StageContext
from pipeline.tracking import Tracker
from stages.curate.config import CurateConfig
from tests.curate.conftest import read_branch, write_jsonl_gz

pytestmark = pytest.mark.slow


def shingler():
    from datatrove.pipeline.dedup.minhash import MinhashConfig, MinhashDedupSignature

    sig = MinhashDedupSignature("/tmp/unused-minhash", config=MinhashConfig(), language="en")
    return lambda text: set(sig.get_shingles(text).ravel().tolist())


def jaccard(a: set, b: set) -> float:
    return len(a & b) / len(a | b)


def real_prose() -> list[str]:
    """The Python documentation and the installed packages' long descriptions, as plain text."""
    import importlib.metadata
    from pydoc_data.topics import topics

    from stages.curate.markup import detect_format, to_plain_text
    from stages.curate.readers import metadata_description

    texts = [text for _, text in sorted(topics.items())]
    for dist in sorted(importlib.metadata.distributions(), key=lambda d: d.metadata.get("Name") or ""):
        body, ctype = metadata_description(dist.read_text("METADATA") or "")
        texts.append(to_plain_text(body, detect_format(content_type=ctype, text=body)))
    return texts


def base_texts(n: int, words: int = 300) -> list[str]:
    """Non-overlapping windows of real prose that LID calls English, mutually distinct."""
    from stages.curate.fasttext_env import lid176_path, load_model

    lid = load_model(lid176_path())
    shingles = shingler()
    chosen, sets = [], []
    for text in real_prose():
        tokens = text.split()
        for i in range(0, len(tokens) - words, words):
            window = " ".join(tokens[i:i + words])
            (label,), (p,) = lid.predict(window)
            if label != "__label__en" or p < 0.8:
                continue
            s = shingles(window)
            if len(s) < 200 or any(jaccard(s, t) > 0.2 for t in sets):
                continue
            chosen.append(window)
            sets.append(s)
            if len(chosen) == n:
                return chosen
    raise AssertionError(f"only {len(chosen)} distinct windows")


def near_copy(text: str, rng: random.Random, shingles, target=(0.86, 0.92)) -> str:
    """Substitute words until the shingle Jaccard with the original falls into ``target``."""
    words = text.split()
    original = shingles(text)
    vocab = sorted(set(words))
    while True:
        i = rng.randrange(len(words))
        words[i] = rng.choice(vocab) + "x"
        j = jaccard(original, shingles(" ".join(words)))
        if j <= target[1]:
            assert j >= target[0], j
            return " ".join(words)


def planted_corpus(path: Path) -> dict[str, list[str]]:
    rng = random.Random(0)
    shingles = shingler()
    texts = base_texts(240)
    groups = {"original": [], "copy": [], "exact": [], "singleton": [], "related": []}
    records = []
    for i, text in enumerate(texts[:60]):            # an original and its ~0.9 near-copy
        records += [{"id": f"orig-{i}", "text": text}, {"id": f"copy-{i}", "text": near_copy(text, rng, shingles)}]
        groups["original"].append(f"orig-{i}")
        groups["copy"].append(f"copy-{i}")
    for i, text in enumerate(texts[60:80]):           # verbatim copies
        records += [{"id": f"exo-{i}", "text": text}, {"id": f"exc-{i}", "text": text}]
        groups["exact"].append((f"exo-{i}", f"exc-{i}"))
    for i, text in enumerate(texts[80:140]):          # unrelated documents
        records.append({"id": f"single-{i}", "text": text})
        groups["singleton"].append(f"single-{i}")
    for i in range(50):                               # related pairs: a shared opening, J in [0.25, 0.4)
        a, other = texts[140 + 2 * i].split(), texts[141 + 2 * i].split()
        for share in (0.5, 0.45, 0.4, 0.35, 0.3, 0.25, 0.2):
            b = a[: int(share * len(a))] + other[: len(a) - int(share * len(a))]
            j = jaccard(shingles(" ".join(a)), shingles(" ".join(b)))
            if j < 0.4:
                break
        assert 0.25 <= j < 0.4, j
        records += [{"id": f"relA-{i}", "text": " ".join(a)}, {"id": f"relB-{i}", "text": " ".join(b)}]
        groups["related"] += [f"relA-{i}", f"relB-{i}"]
    rng.shuffle(records)
    write_jsonl_gz(path, records)
    return groups


def run_dedup(src: Path, out: Path, workers: int) -> set[str]:
    from stages.curate.run import run

    cfg = CurateConfig.model_validate({
        "sources": [{"type": "jsonl", "path": str(src)}],
        "web": {"url_filter": {"enabled": False}, "gopher_repetition": {"enabled": False},
                "gopher_quality": {"enabled": False}, "c4": {"enabled": False},
                "fineweb_quality": {"enabled": False}, "quality": {"enabled": False}},
        "execution": {"tasks": 2, "workers": workers}})
    ctx = StageContext(stage="curate", out=out, inputs={}, tracker=Tracker.disabled(),
                       pipeline=GlobalConfig(name="test"), fingerprint="test")
    run(cfg, ctx)
    return {d["id"] for d in read_branch(out, "web")}


def test_planted_duplicates_and_worker_invariance(ray_local, tmp_path):
    src = tmp_path / "planted.jsonl.gz"
    groups = planted_corpus(src)
    kept1 = run_dedup(src, tmp_path / "w1", workers=1)
    kept2 = run_dedup(src, tmp_path / "w2", workers=2)
    assert kept1 == kept2, "the kept set depends on the number of workers"

    pairs = list(zip(groups["original"], groups["copy"], strict=True)) + groups["exact"]
    caught = sum(1 for a, b in pairs if (a in kept1) != (b in kept1))  # exactly one of the two survives
    lost_both = [p for p in pairs if p[0] not in kept1 and p[1] not in kept1]
    assert not lost_both
    assert caught / len(pairs) >= 0.95, f"only {caught}/{len(pairs)} planted copies removed"
    assert all((a in kept1) != (b in kept1) for a, b in groups["exact"])

    distinct = groups["singleton"] + groups["related"]
    removed = [d for d in distinct if d not in kept1]
    print(f"planted copies removed: {caught}/{len(pairs)}; distinct removed: {len(removed)}/{len(distinct)}")
    assert len(removed) / len(distinct) < 0.01, f"distinct documents removed: {removed}"
