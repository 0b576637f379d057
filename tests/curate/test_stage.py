"""The whole stage on Ray: local environment + real CC samples + deliberately broken files, logged to a
real MLflow server; the books must balance, and a rerun must not change or duplicate anything."""

from __future__ import annotations

import gzip
import hashlib
import json
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from pipeline.config import GlobalConfig
from pipeline.stage import StageContext
from pipeline.tracking import Tracker
from stages.curate.config import CurateConfig
from tests.conftest import SHARED_DATA
from tests.curate.conftest import UDHR, read_branch, write_jsonl_gz

pytestmark = pytest.mark.slow


def broken_inputs(root: Path) -> tuple[Path, Path]:
    """A JSONL folder and a code tree with every kind of bad input next to good records."""
    jsonl = root / "jsonl"
    jsonl.mkdir(parents=True)
    good = [{"text": (UDHR["en"] + " ") * 12, "id": f"good-{i}", "url": f"https://example.org/{i}"}
            for i in range(3)]
    with gzip.open(jsonl / "mixed.jsonl.gz", "wb") as f:
        f.write(b"\n".join([json.dumps(good[0]).encode(), b'{"text": "caf\xe9"}', b'{"text": "cut',
                            json.dumps({"text": " "}).encode(), json.dumps({"text": "y" * 300_000}).encode(),
                            json.dumps(good[1]).encode()]) + b"\n")
    cut = write_jsonl_gz(jsonl / "truncated.jsonl.gz", [{"text": f"{i} " + UDHR["en"]} for i in range(3000)])
    cut.write_bytes(cut.read_bytes()[:4000])
    tree = root / "tree"
    tree.mkdir()
    (tree / "util.py").write_text("def add(a, b):\n    \"\"\"Sum of a and b.\"\"\"\n    return a + b\n" * 3)
    (tree / "native.so").write_bytes(b"\x7fELF\x02\x01\x01\x00" + bytes(range(256)))
    (tree / "legacy.py").write_bytes("# -*- coding: latin-1 -*-\nname = 'Fran\xe7ois'\n".encode("latin-1"))
    return jsonl, tree


def curate_config(root: Path) -> CurateConfig:
    jsonl, tree = broken_inputs(root)
    sources = [{"type": "local", "max_web_docs": 160, "max_web_bytes": 700_000, "max_code_docs": 120,
                "max_code_bytes": 700_000},
               {"type": "jsonl", "path": str(jsonl)},
               {"type": "tree", "path": str(tree), "branch": "code"}]
    extra = {}
    if SHARED_DATA.exists():
        sources += [{"type": "jsonl", "path": str(SHARED_DATA / "cc-jsonl")},
                    {"type": "warc", "path": str(SHARED_DATA / "cc-warc")}]
        extra["quality_eval_path"] = str(SHARED_DATA / "dclm" / "majority_data.jsonl")
    return CurateConfig.model_validate({"sources": sources, "max_doc_bytes": 200_000, **extra})


def run_stage(cfg: CurateConfig, out: Path, tracker: Tracker) -> dict:
    from stages.curate.run import run

    ctx = StageContext(stage="curate", out=out, inputs={}, tracker=tracker, pipeline=GlobalConfig(name="test"),
                       fingerprint="test")
    return run(cfg, ctx)


def digest(out: Path) -> dict[str, str]:
    return {f"{p.parent.name}/{p.name}": hashlib.sha256(gzip.decompress(p.read_bytes())).hexdigest()
            for p in sorted(out.glob("*/*.jsonl.gz"))}


def test_stage_end_to_end(ray_local, mlflow_server, tmp_path):
    from mlflow import MlflowClient

    cfg = curate_config(tmp_path / "inputs")
    client = MlflowClient(mlflow_server)
    run_id = client.create_run(client.create_experiment("curate-stage-test")).info.run_id
    out = tmp_path / "out"
    summary = run_stage(cfg, out, Tracker(run_id, mlflow_server))

    # published shards in the contract's layout
    for branch in ("web", "code"):
        docs = read_branch(out, branch)
        assert docs and all({"id", "text", "metadata"} <= d.keys() for d in docs)
        assert len({d["id"] for d in docs}) == len(docs)
        assert summary[f"{branch}_docs"] == len(docs)
    web = read_branch(out, "web")
    assert all(d["metadata"]["language"] == "en" and "quality_score" in d["metadata"] for d in web)
    code = read_branch(out, "code")
    assert {d["metadata"]["language"] for d in code} >= {"python"}
    assert any(d["id"].startswith("tree:") and d["metadata"]["path"].endswith("util.py") for d in code)

    # the books: docs in = kept + removed (per filter, by reason) + unreadable (by reason)
    stats = json.loads((out / "stats.json").read_text())
    for branch in ("web", "code"):
        b = stats["branches"][branch]
        removed = sum(sum(r["removed_by_reason"].values()) for r in b["funnel"])
        assert b["docs_in"] == b["kept"] + removed + sum(b["unreadable"].values())
        assert b["kept"] == len(read_branch(out, branch))
        assert stats["conservation"][branch]["holds"]
    web_unreadable = stats["branches"]["web"]["unreadable"]
    assert web_unreadable["invalid_utf8"] >= 1 and web_unreadable["malformed_json"] >= 1
    assert web_unreadable["truncated_gzip"] == 1 and web_unreadable["empty"] >= 1
    assert web_unreadable["too_large"] >= 1
    code_unreadable = stats["branches"]["code"]["unreadable"]
    assert code_unreadable["binary"] == 1 and code_unreadable["invalid_utf8"] == 1
    steps = [r["step"] for r in stats["branches"]["web"]["funnel"]]
    assert steps == ["url_filter", "extract", "language", "gopher_quality", "gopher_repetition", "c4",
                     "fineweb_quality", "pii", "exact_dedup", "minhash_dedup", "quality_classifier"]
    assert [r["step"] for r in stats["branches"]["code"]["funnel"]] == [
        "code_language", "stack_filters", "secrets", "exact_dedup", "minhash_dedup"]
    # the removal ledger: every removed document once, with the funnel's step and reason
    ledger = {}
    for branch in ("web", "code"):
        with gzip.open(out / "removed" / f"{branch}.jsonl.gz", "rt", encoding="utf-8") as f:
            lines = [json.loads(line) for line in f]
        b = stats["branches"][branch]
        assert len(lines) == b["removed"] and len({(r["id"], r["url"]) for r in lines}) == len(lines)
        assert Counter((r["step"], r["reason"]) for r in lines) == Counter(
            {(row["step"], reason): n for row in b["funnel"] for reason, n in row["removed_by_reason"].items()})
        ledger[branch] = lines
    measured = [r for r in ledger["web"] if r["step"] == "gopher_quality"]
    assert measured and all(r["threshold"] is not None and r["value"] is not None for r in measured)
    # URL (WARC) or path (local files) where the source has one; JSONL records without a url have their id
    assert all(r["id"] for r in ledger["web"]) and any(r["url"] for r in ledger["web"])
    # the funnel per language adds up to the branch's documents
    by_lang = stats["by_language"]["web"]
    assert sum(c["in"] for c in by_lang.values()) == stats["branches"]["web"]["read"]
    assert sum(c["kept"] for c in by_lang.values()) == stats["branches"]["web"]["kept"]

    # `why`: a removed page's step, reason and measure; a kept page is reported kept
    gone = measured[0]
    why = subprocess.run([sys.executable, "-m", "stages.curate", "why", str(out), gone["url"] or gone["id"]],
                         capture_output=True, text=True, check=True).stdout
    assert f"step 'gopher_quality', reason {gone['reason']!r}" in why and f"threshold {gone['threshold']}" in why
    kept_id = read_branch(out, "web")[0]["id"]
    why = subprocess.run([sys.executable, "-m", "stages.curate", "why", str(out), kept_id],
                         capture_output=True, text=True, check=True).stdout
    assert "kept in web" in why
    nothing = subprocess.run([sys.executable, "-m", "stages.curate", "why", str(out), "no-such-doc"],
                             capture_output=True, text=True)
    assert nothing.returncode == 1 and "not among this run's documents" in nothing.stdout

    q = stats["quality"]
    assert q["heldout"]["auc"] > 0.8 and Path(q["model"]).exists()
    if SHARED_DATA.exists():
        assert q["human_agreement"]["n"] == 499

    # MLflow: metrics, the table, the plot, samples per filter, the model
    run = client.get_run(run_id)
    m = run.data.metrics
    assert m["data/web/docs_in"] == stats["branches"]["web"]["docs_in"]
    assert m["data/code/kept"] == stats["branches"]["code"]["kept"]
    assert m["data/web/gopher_quality/in"] >= m["data/web/gopher_quality/kept"]
    assert "quality/heldout/auc" in m
    artifacts = {a.path for a in client.list_artifacts(run_id, "curate")}
    assert {"curate/funnel.png", "curate/stats.json", "curate/funnel_table.json", "curate/samples",
            "curate/quality", "curate/funnel_by_language.png", "curate/funnel_by_language.json",
            "curate/removed"} <= artifacts
    assert m["data/web/language/en/kept"] == stats["by_language"]["web"]["en"]["kept"]
    samples = {a.path for a in client.list_artifacts(run_id, "curate/samples/web")}
    assert "curate/samples/web/gopher_quality.json" in samples
    local = json.loads((out / "audit" / "web" / "gopher_quality.json").read_text())
    assert local["kept"] and any(k.startswith("removed:") for k in local)

    # rerun in the same folder: nothing duplicated, nothing changed
    before = digest(out)
    again = run_stage(cfg, out, Tracker.disabled())
    assert digest(out) == before
    assert {k: again[k] for k in ("web_docs", "code_docs", "docs_in")} == \
           {k: summary[k] for k in ("web_docs", "code_docs", "docs_in")}
