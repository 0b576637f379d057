"""The console: Whale's own lines only, framework output in one log file per stage.

Unit tests for the pieces (line recognition, the tail, the thinning of tick lines, the fd-level
redirect) and one slow test that runs a short real pipeline (curate -> tokenizer -> pretrain with
Ray Train's two workers) with its output captured, as CI or ``ray job logs`` see it.
"""

from __future__ import annotations

import io
import json
import os
import re
import subprocess
import sys
import time

import pytest

from pipeline import console as con
from tests.conftest import ROOT

STAGES = {"curate", "tokenizer", "pretrain", "distill", "eval", "serve"}

# What the console showed before (issue 19), and what must never come back without --verbose.
NOISE = [
    r"PlacementGroupCleaner", r"Ray Train Controller", r"TrainingReport\(", r"Reporting training result",
    r"core_worker\.cc", r"PreemptionWatcher", r"Downloading artifacts", r"Token authentication",
    r"\bWARNING\b", r"\bINFO\b", r"Warning:", r"\(pid=\d+", r"\(stage:\w+ pid=", r":actor_name:", r":job_id:",
    r"Traceback \(most recent call last\)",
]


OWN = re.compile(r"^\[(" + "|".join(STAGES) + r")(/[\w.-]+)*\] ")


def noise_in(text: str) -> list[str]:
    """Lines matching a noise pattern; a stage's own warning (``[tokenizer] WARNING: ...``) is not noise."""
    return [line for line in text.splitlines()
            if not OWN.match(line) and any(re.search(p, line) for p in NOISE)]


# -- the pieces -----------------------------------------------------------------------------------

def test_whale_lines_are_recognised_and_framework_lines_are_not():
    assert con.whale_line("[pretrain] step 12/250 loss 3.2", STAGES) == "[pretrain] step 12/250 loss 3.2"
    loguru = ("2026-12-03 18:26:10.372 | INFO     | stages.curate.passes:run_pass:164 - "
              "[curate/code] pass 1_filter: 2 task(s)")
    assert con.whale_line(loguru, STAGES) == "[curate/code] pass 1_filter: 2 task(s)"
    assert con.whale_line("\x1b[36m[tokenizer] trained\x1b[0m", STAGES) == "[tokenizer] trained"
    for foreign in ("(PlacementGroupCleaner pid=1) Failed to query Ray Train Controller actor state",
                    "[2026-12-03 18:26:10,000 W 1 2] core_worker.cc:1 PreemptionWatcher ...",
                    "[rank0] hello", "Downloading artifacts: 12%|#", ":actor_name:RankWorker", ""):
        assert con.whale_line(foreign, STAGES) is None, foreign


def test_tail_returns_complete_lines_once_and_splits_carriage_returns(tmp_path):
    log = tmp_path / "s.log"
    tail = con.LogTail(log)
    assert tail.lines() == []  # not there yet
    log.write_bytes(b"one\ntw")
    assert tail.lines() == ["one"]
    with open(log, "ab") as f:
        f.write(b"o\rbar 50%\rbar 100%\n")
    assert tail.lines() == ["two", "bar 50%", "bar 100%"]
    assert tail.lines() == []
    log.write_bytes(b"new\n")  # recreated (a rerun of the stage): read from the start
    assert tail.lines() == ["new"]
    # recreated and already longer than what was read: noticed by its first bytes
    log.write_bytes(b":job_id:01\n")
    assert tail.lines() == [":job_id:01"]
    log.unlink()
    log.write_bytes(b"[tokenizer] sample: 3 docs\n[tokenizer] training\n")
    assert tail.lines() == ["[tokenizer] sample: 3 docs", "[tokenizer] training"]


@pytest.fixture
def plain_console(monkeypatch):
    """The module console writing to a buffer that is not a terminal."""
    buf = io.StringIO()
    monkeypatch.setattr(con.console, "file", buf)
    monkeypatch.setattr(con.console, "_force_terminal", False)
    return buf


def test_plain_progress_thins_ticks_keeps_milestones_and_beats_when_quiet(tmp_path, plain_console, monkeypatch):
    clock = [1000.0]
    monkeypatch.setattr(con.time, "time", lambda: clock[0])
    log = tmp_path / "pretrain.log"
    log.write_text("")
    live = con.LiveProgress(STAGES)
    assert not live.interactive
    live.start("pretrain", "[fp]", log)
    assert f"log {log}" in plain_console.getvalue(), "the log path is printed once, at the start"

    def write(*lines):
        with open(log, "a") as f:
            f.write("".join(line + "\n" for line in lines))

    write("[pretrain] step 1/100 loss 9", "[pretrain] step 1/100 loss 9",  # both ranks
          "(RayTrainWorker pid=7) Reporting training result 1: TrainingReport(...)", "[pretrain] step 2/100 loss 8")
    clock[0] += 1
    live.poll()
    out = plain_console.getvalue()
    assert out.count("step 1/100") == 0 and "step 2/100" not in out, "ticks inside 10 s of a line are held"
    assert "TrainingReport" not in out
    clock[0] += 10
    live.poll()
    assert plain_console.getvalue().count("step 2/100") == 1, "the latest held tick shows after 10 s"
    write("[pretrain] saved checkpoint 2", "[pretrain] WARNING: something the user must act on")
    clock[0] += 1
    live.poll()
    assert "saved checkpoint 2" in plain_console.getvalue(), "a milestone shows at once"
    assert "[pretrain] WARNING: something" in plain_console.getvalue()
    before = plain_console.getvalue()
    clock[0] += 10.5
    live.poll()
    assert "[pretrain] … still running" in plain_console.getvalue()[len(before):], "a heartbeat after 10 s quiet"
    live.finish("pretrain", "ran")
    assert noise_in(plain_console.getvalue()) == []
    assert noise_in("(RayTrainWorker pid=7) WARNING x\n2026 WARNING authentication_token_setup.py") != []


REDIRECTED = """
import os, subprocess, sys, warnings
from pipeline.console import redirect_to_stage_log
print("before")
sys.stdout.flush()
assert redirect_to_stage_log() == os.environ["WHALE_STAGE_LOG"]
print("[curate] python print")
warnings.warn("a library warning")
os.write(2, b"core_worker.cc: written by C++ at the fd level\\n")
subprocess.run(["echo", "from a subprocess"], check=True)
"""


def test_redirect_sends_python_c_level_and_subprocess_output_to_the_log(tmp_path):
    log = tmp_path / "sub" / "curate.log"
    env = {**os.environ, "PYTHONPATH": str(ROOT), **con.stage_log_env(log, "launch-1")}
    env.pop(con.RAY_SETUP_HOOK_ENV)  # no Ray here: call the hook by hand
    done = subprocess.run([sys.executable, "-c", REDIRECTED], env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout == "before\n" and done.stderr == ""
    text = log.read_text()
    for expected in ("[curate] python print", "a library warning", "core_worker.cc", "from a subprocess"):
        assert expected in text


def test_outside_a_stage_the_redirect_does_nothing(monkeypatch):
    monkeypatch.delenv(con.STAGE_LOG_ENV, raising=False)
    assert con.redirect_to_stage_log() is None


# -- the whole thing, short ------------------------------------------------------------------------

def docstring_corpus(path) -> None:
    """Real English prose, offline and fast: this repo's docstrings, one document per module."""
    import ast

    with open(path, "w") as f:
        for i, py in enumerate(sorted(ROOT.glob("[pmst]*/**/*.py"))):
            tree = ast.parse(py.read_text())
            docs = [ast.get_docstring(n) for n in ast.walk(tree)
                    if isinstance(n, (ast.Module, ast.FunctionDef, ast.ClassDef))]
            text = "\n\n".join(d for d in docs if d)
            if len(text) > 300:
                f.write(json.dumps({"id": f"doc-{i}", "text": text}) + "\n")


def short_pipeline_overrides(out, web_jsonl) -> list[str]:
    """curate on docstrings (web filters off: speed) and this repo's pipeline/ code, a 1k tokenizer,
    8 pretrain steps on Ray Train's two workers."""
    sources = json.dumps([{"type": "jsonl", "path": str(web_jsonl)},
                          {"type": "tree", "path": str(ROOT / "pipeline")}])
    off = ("url_filter", "gopher_repetition", "gopher_quality", "c4", "fineweb_quality", "quality")
    return ["name=console-test", f"output_root={out}", f"curate.sources={sources}",
            *[f"curate.web.{f}.enabled=false" for f in off], "curate.dedup.minhash.enabled=false",
            "tokenizer.vocab_size=1024", "tokenizer.shards.validation_fraction=0.2",
            "pretrain.train.steps=8", "pretrain.train.log_every=1", "pretrain.train.schedule.warmup_steps=2",
            "pretrain.train.eval.every=4", "pretrain.train.checkpoint.every=4",
            "pretrain.train.parallel.cpus_per_worker=1"]


@pytest.mark.slow
@pytest.mark.timeout(1500)
def test_short_pipeline_console_is_quiet_and_every_stage_has_its_log(tmp_path, mlflow_server):
    out = tmp_path / "out"
    docstring_corpus(tmp_path / "web.jsonl")
    args = [a for o in short_pipeline_overrides(out, tmp_path / "web.jsonl") for a in ("--set", o)]
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}  # Ray starts in-process
    env.update(PYTHONPATH=str(ROOT), MLFLOW_TRACKING_URI=mlflow_server)
    started = time.time()
    done = subprocess.run([sys.executable, "-m", "pipeline", "run", "configs/tiny.yaml", *args,
                           "--only", "curate", "--only", "tokenizer", "--only", "pretrain",
                           "--no-block"],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=1400)
    text = done.stdout + done.stderr
    (tmp_path / "console.txt").write_text(text)
    assert done.returncode == 0, text[-5000:]
    assert noise_in(text) == [], "framework noise on the console"
    assert len(text.splitlines()) < 150, len(text.splitlines())
    assert "[pretrain] step" in text, "the trainer's progress reaches the console"
    for stage in ("curate", "tokenizer", "pretrain"):
        logs = list(out.glob(f"{stage}/*/{stage}.log"))
        assert len(logs) == 1, stage
        assert f"log {logs[0]}" in text, "the log path is printed"
    # what left the console is in the files: Ray Train's reports land in pretrain's log
    assert "TrainingReport" in next(out.glob("pretrain/*/pretrain.log")).read_text()
    assert list(out.glob("logs/driver-*.log"))
    # and in MLflow, on the stage's run
    from mlflow import MlflowClient

    client = MlflowClient(mlflow_server)
    runs = {r.data.tags["whale.stage"]: r for r in client.search_runs(
        [client.get_experiment_by_name("console-test").experiment_id], "tags.`whale.stage` != ''")}
    for stage in ("curate", "tokenizer", "pretrain"):
        assert [a.path for a in client.list_artifacts(runs[stage].info.run_id, "logs")] == [f"logs/{stage}.log"]
    # lineage: what each stage consumed, as datasets with the upstream fingerprint as digest
    assert [d.dataset.name for d in runs["pretrain"].inputs.dataset_inputs] == ["token-shards"]
    assert [d.dataset.name for d in runs["tokenizer"].inputs.dataset_inputs] == ["curated-corpus"]
    print(f"short pipeline: {time.time() - started:.0f}s, {len(text.splitlines())} console lines")
