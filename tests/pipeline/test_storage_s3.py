"""output_root on S3 (a real S3-compatible server on loopback: moto's server mode)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from pipeline.storage import Storage
from tests.fixtures.services import ROOT


def test_storage_helper_round_trips_on_s3(s3_bucket, monkeypatch, tmp_path):
    for k, v in s3_bucket.server.env.items():
        monkeypatch.setenv(k, v)
    storage = Storage(f"{s3_bucket.url}/root")
    assert storage.remote and storage.uri("a", "b") == f"{s3_bucket.url}/root/a/b"
    storage.write_json({"x": 1}, "stage", "fp", "manifest.json")
    assert storage.read_json("stage", "fp", "manifest.json") == {"x": 1}
    src = tmp_path / "src"
    (src / "sub").mkdir(parents=True)
    (src / "sub" / "f.bin").write_bytes(b"\x00\x01")
    (src / "g.txt").write_text("g")
    storage.upload(src, "stage", "fp")
    back = storage.download(tmp_path / "back", "stage", "fp")
    assert (back / "sub" / "f.bin").read_bytes() == b"\x00\x01" and (back / "g.txt").read_text() == "g"
    assert storage.listdir("stage", "fp") == ["g.txt", "manifest.json", "sub"]
    storage.remove("stage")
    assert not storage.exists("stage", "fp", "manifest.json")


@pytest.mark.slow
def test_pipeline_runs_and_caches_with_output_root_on_s3(s3_bucket, mlflow_server, tmp_path):
    root = f"{s3_bucket.url}/whale"
    config = tmp_path / "toy.yaml"
    config.write_text(f"name: toy-s3\noutput_root: {root}\nray: {{num_cpus: 2}}\n"
                      + "".join(f"{s}: {{log_dir: {tmp_path / 'log'}}}\n" for s in "abcx"))
    env = {**os.environ, **s3_bucket.server.env, "WHALE_STAGES": "tests.pipeline.toy_stages:STAGES",
           "MLFLOW_TRACKING_URI": mlflow_server, "WHALE_CACHE": str(tmp_path / "cache")}
    env.pop("RAY_ADDRESS", None)

    def whale(*args):
        return subprocess.run([sys.executable, "-m", "pipeline", *args], capture_output=True, text=True,
                              env=env, cwd=ROOT, timeout=300)

    first = whale("run", str(config), "--no-block")
    assert first.returncode == 0, first.stdout + first.stderr
    s3 = s3_bucket.server.client()
    keys = {o["Key"] for o in s3.list_objects_v2(Bucket=s3_bucket.name)["Contents"]}
    c_manifest = next(k for k in keys if k.startswith("whale/c/") and k.endswith("manifest.json"))
    manifest = json.loads(s3.get_object(Bucket=s3_bucket.name, Key=c_manifest)["Body"].read())
    assert manifest["summary"] == {"value": 3}
    assert manifest["output"].startswith(f"{root}/c/")
    assert c_manifest.replace("manifest.json", "value.txt") in keys  # the stage's file was uploaded
    assert any(k.startswith("whale/runs/") and k.endswith("report.md") for k in keys)

    second = whale("run", str(config), "--no-block")
    assert second.returncode == 0, second.stdout + second.stderr
    for stage in "abcx":
        assert f"{stage} cached" in second.stdout
    status = whale("status", str(config))
    assert status.stdout.count("cached") == 4 and f"{root}/c/" in status.stdout
