"""Issue 21 item 9: a killed stage's rerun recomputes only its unfinished tasks.

The stage's tasks are a real datatrove pipeline (completion markers in ``logs/completions``, as in
curate's passes); the attempt is SIGKILLed part-way, in its own process, and run again through
``pipeline.executor.execute`` with the same fingerprint."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

from pipeline.dag import FAILED, SUCCESS
from pipeline.storage import Storage

REPO = Path(__file__).resolve().parents[2]


def attempt(tmp_path: Path, kill: bool, fingerprint: str = "fp0001") -> subprocess.CompletedProcess:
    code = textwrap.dedent(f"""
        from pipeline.config import GlobalConfig
        from pipeline.executor import StageJob, execute
        from tests.pipeline.resume_stage import STAGE, ResumeConfig
        cfg = ResumeConfig(log_dir={str(tmp_path)!r}, tasks=6, kill_at=3)
        job = StageJob(stage=STAGE, config=cfg, pipeline=GlobalConfig(name="t", output_root={str(tmp_path / "out")!r}),
                       fingerprint={fingerprint!r}, output_root={str(tmp_path / "out")!r})
        print(execute(job)["summary"])
        """)
    env = {**os.environ, "PYTHONPATH": str(REPO), "WHALE_TEST_KILL": "1" if kill else "0"}
    return subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=300, start_new_session=True)


def calls(tmp_path: Path) -> list[int]:
    return [int(x) for x in (tmp_path / "calls").read_text().split()]


def test_killed_attempt_rerun_recomputes_only_unfinished_tasks(tmp_path):
    first = attempt(tmp_path, kill=True)
    assert first.returncode == -9, first.stderr[-2000:]  # SIGKILL: no _FAILED, nothing cleaned up
    assert calls(tmp_path) == [0, 1, 2, 3]
    storage = Storage(str(tmp_path / "out"))
    assert not storage.exists("resumable", "fp0001", SUCCESS)

    second = attempt(tmp_path, kill=False)
    assert second.returncode == 0, second.stderr[-2000:]
    rerun = calls(tmp_path)[4:]
    print(f"\ntasks recomputed after the kill: {sorted(rerun)} of 6 (finished before it: 0, 1, 2)")
    assert sorted(rerun) == [3, 4, 5], "finished tasks 0-2 must not run again"
    assert storage.exists("resumable", "fp0001", SUCCESS) and not storage.exists("resumable", "fp0001", FAILED)
    assert "'tasks_completed': 6" in second.stdout

    # a forced rerun of the finished stage starts clean: every task runs again
    third = attempt(tmp_path, kill=False)
    assert third.returncode == 0 and sorted(calls(tmp_path)[7:]) == [0, 1, 2, 3, 4, 5]


def test_another_fingerprint_does_not_reuse_the_work(tmp_path):
    assert attempt(tmp_path, kill=True).returncode == -9
    assert attempt(tmp_path, kill=False, fingerprint="fp0002").returncode == 0
    assert sorted(calls(tmp_path)[4:]) == [0, 1, 2, 3, 4, 5]
