"""The tokenizer stage end to end on a real local corpus, tokenizing on Ray."""

from __future__ import annotations

import gzip
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from pipeline.config import GlobalConfig
from pipeline.stage import StageContext
from pipeline.tracking import Tracker
from stages.tokenizer.config import TokenizerConfig
from stages.tokenizer.corpus import CorpusError
from stages.tokenizer.run import run
from tests.tokenizer.corpus_helpers import read_corpus_texts
from tokenizer import ShardReader, Tokenizer, TrainingDataError, read_manifest

SMALL = {"vocab_size": 1024, "sample": {"max_bytes": 600_000},
         "shards": {"validation_fraction": 0.1, "max_shard_tokens": 40_000}, "eval_bytes": 200_000}


def context(out: Path, curate: Path, seed: int = 0, tracker: Tracker | None = None) -> StageContext:
    return StageContext(stage="tokenizer", out=out, inputs={"curate": curate},
                        tracker=tracker or Tracker.disabled(), pipeline=GlobalConfig(name="test", seed=seed),
                        fingerprint="test")


def run_stage(out: Path, curate: Path, seed: int = 0, tracker: Tracker | None = None, **overrides):
    out.mkdir(parents=True, exist_ok=True)
    return run(TokenizerConfig(**{**SMALL, **overrides}), context(out, curate, seed, tracker))


@pytest.fixture(scope="module")
def stage(ray_cpus, corpus_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("tokenizer-out")
    return out, run_stage(out, corpus_dir)


def curated_docs(root: Path, source: str) -> dict[str, str]:
    docs = {}
    for p in sorted((root / source).glob("*.jsonl.gz")):
        with gzip.open(p, "rt", encoding="utf-8") as f:
            for line in f:
                d = json.loads(line)
                docs[d["id"]] = d["text"]
    return docs


def test_outputs_and_summary(stage):
    out, summary = stage
    tok = Tokenizer.load(out / "tokenizer")
    assert tok.vocab_size == summary["vocab_size"] == 1024
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "tokenizer.model"):
        assert (out / "tokenizer" / name).is_file()
    assert summary["hf_export_mismatched_docs"] == 0
    assert summary["token_dtype"] == "uint16"
    for source in ("web", "code"):
        assert 1.5 < summary[f"bytes_per_token_{source}"] < 8
        assert 1.5 < summary[f"baseline_bytes_per_token_{source}"] < 8
        assert summary[f"validation_bytes_{source}"] > 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["vocab/learned"] == 1024 - 32 - 256
    assert metrics["perf/encode_mb_s"] > 0 and metrics["baseline/encode_mb_s"] > 0


def test_every_document_lands_in_exactly_one_split_and_decodes_back(stage, corpus_dir):
    out, _ = stage
    tok = Tokenizer.load(out / "tokenizer")
    manifest = read_manifest(out / "shards")
    for source in ("web", "code"):
        curated = curated_docs(corpus_dir, source)
        seen = {}
        for split in ("train", "validation"):
            reader = ShardReader(out / "shards", split, seq_len=32)
            ids = []
            n_tokens = n_bytes = 0
            for doc_id, tokens in reader.documents(source):
                assert tok.decode(tokens) == curated[doc_id]  # exact text, EOS excluded
                ids.append(doc_id)
                n_tokens += len(tokens) + 1
                n_bytes += len(curated[doc_id].encode())
            part = manifest["splits"][split]["sources"][source]
            assert (part["documents"], part["tokens"], part["bytes"]) == (len(ids), n_tokens, n_bytes)
            seen[split] = set(ids)
        assert not seen["train"] & seen["validation"]
        assert seen["train"] | seen["validation"] == set(curated)
        assert 0 < len(seen["validation"]) < 0.3 * len(curated)


def test_reader_over_stage_output(stage):
    out, _ = stage
    reader = ShardReader(out / "shards", "train", seq_len=64, seed=0)
    assert len(reader) > 100
    item = reader[len(reader) // 2]
    assert item.shape == (65,) and item.min() >= 0 and item.max() < 1024
    assert reader.mix == pytest.approx({"web": 0.7, "code": 0.3})
    val = ShardReader(out / "shards", "validation", seq_len=64, sources=["code"], shuffle=False)
    assert val.mix == {"code": 1.0} and len(val) > 0


def test_same_seed_same_shards_other_seed_other_split(stage, corpus_dir, tmp_path):
    out, _ = stage
    again = tmp_path / "again"
    run_stage(again, corpus_dir, baseline=False)
    first, second = read_manifest(out / "shards"), read_manifest(again / "shards")
    assert first["splits"] == second["splits"]
    for info in first["splits"]["train"]["sources"]["code"]["shards"]:
        assert (out / "shards" / info["path"]).read_bytes() == (again / "shards" / info["path"]).read_bytes()
    other = tmp_path / "other"
    run_stage(other, corpus_dir, seed=1, baseline=False)
    val_ids = {d for d, _ in ShardReader(other / "shards", "validation", 8).documents("web")}
    first_val = {d for d, _ in ShardReader(out / "shards", "validation", 8).documents("web")}
    assert val_ids != first_val


# -- bad input: clear errors, before training ----------------------------------------------------

def write_source(root: Path, source: str, lines: list[str], name: str = "00000.jsonl.gz"):
    (root / source).mkdir(parents=True, exist_ok=True)
    with gzip.open(root / source / name, "wt", encoding="utf-8") as f:
        f.write("".join(line + "\n" for line in lines))


def assert_nothing_trained(out: Path):
    assert not (out / "tokenizer").exists() and not (out / "shards").exists()


def test_missing_curate_folder(tmp_path):
    with pytest.raises(CorpusError, match="does not exist"):
        run_stage(tmp_path / "out", tmp_path / "nowhere")


def test_missing_source_is_named(corpus_dir, tmp_path):
    curate = tmp_path / "curate"
    shutil.copytree(corpus_dir / "web", curate / "web")
    with pytest.raises(CorpusError, match="source 'code' has no documents"):
        run_stage(tmp_path / "out", curate)
    assert_nothing_trained(tmp_path / "out")


def test_empty_corpus(tmp_path):
    curate = tmp_path / "curate"
    for source in ("web", "code"):
        write_source(curate, source, ['{"id": "a", "text": "   "}', "not json", '{"id": "b"}'])
    with pytest.raises(CorpusError, match="no usable training document"):
        run_stage(tmp_path / "out", curate)
    assert_nothing_trained(tmp_path / "out")


def test_too_small_corpus(tmp_path):
    curate = tmp_path / "curate"
    for source in ("web", "code"):
        write_source(curate, source, [json.dumps({"id": f"{source}{i}", "text": f"tiny doc {i}"})
                                      for i in range(200)])
    with pytest.raises(TrainingDataError, match="too small for vocab_size=4096"):
        run_stage(tmp_path / "out", curate, vocab_size=4096)
    assert_nothing_trained(tmp_path / "out")


def test_vocab_larger_than_the_data_supports(tmp_path):
    curate = tmp_path / "curate"
    for source in ("web", "code"):
        write_source(curate, source, [json.dumps({"id": f"{source}{i}", "text": "the cat sat on the mat. " * 40})
                                      for i in range(100)])
    with pytest.raises(TrainingDataError, match="larger than the training sample supports"):
        run_stage(tmp_path / "out", curate, vocab_size=4096)
    assert not (tmp_path / "out" / "tokenizer").exists()


def test_corrupt_gzip_is_named(corpus_dir, tmp_path):
    curate = tmp_path / "curate"
    shutil.copytree(corpus_dir, curate)
    bad = curate / "code" / "00000.jsonl.gz"
    bad.write_bytes(bad.read_bytes()[:5000])  # truncated mid-stream
    with pytest.raises(CorpusError, match="cannot read curated file .*code/00000.jsonl.gz"):
        run_stage(tmp_path / "out", curate)
    assert_nothing_trained(tmp_path / "out")


def test_bad_lines_are_skipped_and_counted(ray_cpus, corpus_dir, tmp_path):
    curate = tmp_path / "curate"
    shutil.copytree(corpus_dir, curate)
    write_source(curate, "web", ["{broken", '{"id": "x", "text": 5}', '{"id": "y", "text": ""}',
                                 '{"id": "z", "text": "\\ud800 lone surrogate"}'], name="99999.jsonl.gz")
    out = tmp_path / "out"
    run_stage(out, curate, baseline=False)
    metrics = json.loads((out / "metrics.json").read_text())
    assert {k: metrics[f"data/skipped/{k}"] for k in ("invalid_json", "no_text", "empty_text", "invalid_unicode")} \
        == {"invalid_json": 1, "no_text": 1, "empty_text": 1, "invalid_unicode": 1}


@pytest.mark.slow
def test_metrics_and_artifacts_reach_mlflow(ray_cpus, corpus_dir, mlflow_server, tmp_path):
    from mlflow import MlflowClient

    client = MlflowClient(mlflow_server)
    exp = client.create_experiment(f"tokenizer-test-{tmp_path.name}")
    run_id = client.create_run(exp).info.run_id
    summary = run_stage(tmp_path / "out", corpus_dir, tracker=Tracker(run_id, mlflow_server))
    client.set_terminated(run_id)
    metrics = client.get_run(run_id).data.metrics
    for key in ("bytes_per_token/web", "bytes_per_token/code", "baseline/bytes_per_token/web",
                "baseline/bytes_per_token/code", "time/train_s", "baseline/train_s", "perf/encode_mb_s",
                "baseline/encode_mb_s", "vocab/learned", "data/tokens/train"):
        assert key in metrics
    assert metrics["bytes_per_token/web"] == pytest.approx(summary["bytes_per_token_web"], abs=1e-3)
    artifacts = {a.path for a in client.list_artifacts(run_id, "tokenizer")}
    assert {"tokenizer/tokenizer.json", "tokenizer/tokenizer.model", "tokenizer/tokenizer_config.json"} <= artifacts
    assert [a.path for a in client.list_artifacts(run_id, "shards")] == ["shards/manifest.json"]


def test_real_corpus_texts_are_what_we_think(corpus_dir):
    # guards the fixture: real prose and real code, not empty placeholders
    web, code = read_corpus_texts(corpus_dir, "web"), read_corpus_texts(corpus_dir, "code")
    assert sum(map(len, web)) > 300_000 and sum(map(len, code)) > 300_000
    assert any("def " in t for t in code) and any("pip install" in t for t in web)
    assert np.mean([t.count("\n") for t in code]) > 10
