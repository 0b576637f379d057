"""Ray Train end to end on 2 CPU workers (EP=2, gloo): exact resume and fault tolerance.

Three runs of the same 6-step job on the same data:
- uninterrupted;
- stopped after step 3 (``stop_after_step``), then resumed by a second ``fit`` on the same storage;
- a worker killed (``os._exit``) halfway through writing the step-4 checkpoint, injected by the
  env switch: Ray restarts the group from the step-2 checkpoint (the half-written one is never
  registered) and the run completes.
All three must produce bitwise the same loss at every step and see the same data at every step.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from stages.common.training import TrainerConfig, TrainJob, fit
from stages.pretrain.data import ShardEvalData, ShardTrainData
from tests.pretrain.helpers import micro_config
from tokenizer import Tokenizer

pytestmark = pytest.mark.slow

STEPS = 6


def make_job(tokenized: Path, **train) -> TrainJob:
    tok = Tokenizer.load(tokenized / "tokenizer")
    cfg = TrainerConfig(steps=STEPS, batch_size=4, seq_len=32, precision="fp32", log_every=1,
                        schedule={"warmup_steps": 2}, parallel={"ep": 2}, checkpoint={"every": 2, "keep": 2},
                        eval={"every": 3, "batches": 1}, **train)
    shards = str(tokenized / "shards")
    return TrainJob(config=cfg, model_config=micro_config(vocab_size=tok.vocab_size), seed=0, label="test",
                    train_data=ShardTrainData(shards), eval_data=ShardEvalData(shards, tok.token_byte_lengths()))


def trajectory(result) -> list[tuple]:
    return [(r["step"], r["loss"], r["grad_norm"], r["data_fingerprint"]) for r in result.state.history]


@pytest.fixture(scope="module")
def uninterrupted(ray_local, tokenized, tmp_path_factory):
    return fit(make_job(tokenized), storage=tmp_path_factory.mktemp("ray"), name="uninterrupted")


def test_uninterrupted_run(uninterrupted):
    r = uninterrupted
    assert r.state.step == STEPS and r.state.attempts == [0]
    assert [row["step"] for row in r.state.history] == list(range(1, STEPS + 1))
    assert r.state.history[-1]["loss"] < r.state.history[0]["loss"]
    assert [e["step"] for e in r.state.evals] == [3, 6]
    assert {"val/loss", "val/bpb", "val/bpb/web", "val/bpb/code"} <= r.state.evals[-1].keys()
    assert r.summary["steps"] == STEPS and r.summary["tokens_per_s"] > 0 and 0 < r.summary["mfu"] < 1
    # expert parallel: both ranks' experts saw tokens, summed over the run
    assert all(sum(row) == pytest.approx(4 * 32 * 2 * STEPS) for row in r.state.expert_load[:-1])
    kept = sorted(p.name for p in Path(r.run_path).glob("checkpoint-*"))
    assert kept == ["checkpoint-00000004", "checkpoint-00000006"]   # keep=2


def test_stop_and_resume_is_exact(uninterrupted, tokenized, tmp_path):
    first = fit(make_job(tokenized, stop_after_step=3), storage=tmp_path, name="resumed")
    assert first.state.step == 3
    second = fit(make_job(tokenized), storage=tmp_path, name="resumed")
    assert second.state.attempts == [0, 3]
    assert trajectory(second) == trajectory(uninterrupted)   # bitwise, every step
    assert second.state.evals == uninterrupted.state.evals


def test_worker_crash_during_save_restarts_from_last_good_checkpoint(uninterrupted, tokenized, tmp_path,
                                                                    monkeypatch):
    monkeypatch.setenv("WHALE_FAULT_AT_STEP", "4")
    monkeypatch.setenv("WHALE_FAULT_DURING", "save")
    monkeypatch.setenv("WHALE_FAULT_RANK", "1")
    result = fit(make_job(tokenized), storage=tmp_path, name="crashed")
    assert (tmp_path / "crashed" / "fault-at-step-4.fired").is_file()      # the fault did fire
    assert result.state.attempts == [0, 2]      # restarted from step 2: step 4 was never registered
    assert result.summary["restarts"] == 1 and result.state.step == STEPS
    # no skipped or repeated data, and the same numbers as the run that never failed
    assert trajectory(result) == trajectory(uninterrupted)
