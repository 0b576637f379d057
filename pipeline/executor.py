"""Run one stage: prepare its folders, call it, and mark the result.

Runs inside a Ray task (``python -m pipeline run``) or in-process (``python -m stages.X``).
``_SUCCESS`` and ``manifest.json`` are written only after the stage returns; a stage that
raises leaves ``_FAILED`` (with the traceback) instead, so a rerun resumes exactly there.

A new attempt of the same fingerprint (same config, code and upstream) keeps what the failed or
killed attempt left in the folder, removing only its markers (a forced rerun of a finished stage
starts from an empty folder): stages resume *inside* from it
(curate's datatrove passes skip the tasks recorded in ``completions/``; pretrain restarts from
its checkpoints). So a stage writes its files by overwriting, never by appending to what a
previous attempt may have left; one that needs a clean folder clears it itself.
"""

from __future__ import annotations

import getpass
import os
import platform
import shutil
import socket
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from pipeline import console
from pipeline.config import GlobalConfig
from pipeline.dag import FAILED, MANIFEST, SUCCESS
from pipeline.stage import Stage, StageContext
from pipeline.storage import Storage, cache_dir
from pipeline.tracking import Tracker


class StageFailed(RuntimeError):
    """A stage raised; carries a message fit for the final table and the resume hint."""

    def __init__(self, stage: str, cause: str, details: str = ""):
        super().__init__(f"stage {stage!r} failed: {cause}")
        self.stage, self.cause, self.details = stage, cause, details

    def __reduce__(self):  # keep the fields across Ray's pickling
        return (StageFailed, (self.stage, self.cause, self.details))


@dataclass
class StageJob:
    """Everything a worker needs to run one stage; picklable."""

    stage: Stage
    config: BaseModel
    pipeline: GlobalConfig
    fingerprint: str
    output_root: str
    # upstream stage -> its fingerprint
    upstream: dict[str, str] = field(default_factory=dict)
    tracking_uri: str | None = None
    run_id: str | None = None


def execute(job: StageJob) -> dict[str, Any]:
    """Run the stage and return its manifest."""
    name, fp = job.stage.name, job.fingerprint
    storage = Storage(job.output_root)
    tracker = Tracker(job.run_id, job.tracking_uri)
    out = _work_dir(storage, name, fp, fresh=storage.exists(name, fp, SUCCESS))
    log_file = console.redirect_to_stage_log()  # again: a forced rerun just recreated the folder
    inputs = {u: _local_input(storage, u, ufp) for u, ufp in job.upstream.items()}
    upstream_manifests = {u: storage.read_json(u, ufp, MANIFEST) for u, ufp in job.upstream.items()}
    ctx = StageContext(stage=name, out=out, inputs=inputs, tracker=tracker, pipeline=job.pipeline,
                       fingerprint=fp, upstream=upstream_manifests)
    started = time.time()
    try:
        summary = job.stage.load_run()(job.config, ctx) or {}
    except BaseException as e:  # noqa: BLE001 - recorded, then re-raised as StageFailed
        details = traceback.format_exc()
        cause = f"{type(e).__name__}: {e}" if str(e) else type(e).__name__
        storage.write_text(details, name, fp, FAILED)
        tracker.set_tags({"whale.error": cause[:5000]})
        tracker.log_text(details, "error.txt")
        _log_stage_log(tracker, log_file)
        _terminate(tracker, "FAILED")
        if isinstance(e, KeyboardInterrupt):
            raise
        raise StageFailed(name, cause, details) from None
    finished = time.time()
    manifest = {
        "stage": name,
        "fingerprint": fp,
        "code_version": job.stage.code_version(),
        "config": job.config.model_dump(mode="json"),
        "inputs": {u: {"fingerprint": ufp, "path": storage.uri(u, ufp)} for u, ufp in job.upstream.items()},
        "output": storage.uri(name, fp),
        "summary": summary,
        "timings": {"started": started, "finished": finished, "wall_s": round(finished - started, 3)},
        "mlflow": {"run_id": job.run_id, "tracking_uri": job.tracking_uri},
        "ray": _ray_node(),
    }
    if storage.remote:
        storage.upload(out, name, fp)
    storage.write_json(manifest, name, fp, MANIFEST)
    storage.write_text("", name, fp, SUCCESS)
    tracker.log_metrics({f"summary/{k}": v for k, v in summary.items() if _is_number(v)})
    tracker.log_metric("stage/wall_s", finished - started)
    _log_stage_log(tracker, log_file)
    _terminate(tracker, "FINISHED")
    return manifest


def stage_log_path(storage: Storage, name: str, fp: str) -> Path:
    """Where the stage's framework output goes (the runner tails it): inside its output folder."""
    return _work_dir_path(storage, name, fp) / f"{name}.log"


def _work_dir_path(storage: Storage, name: str, fp: str) -> Path:
    # a remote output root: the stage writes locally (kept across attempts on this machine); uploaded after it returns
    return cache_dir() / "staging" / name / fp if storage.remote else storage.local_path(name, fp)


def _log_stage_log(tracker: Tracker, log_file: str | None) -> None:
    if log_file and Path(log_file).exists():
        tracker.log_artifact(log_file, "logs")


def _work_dir(storage: Storage, name: str, fp: str, fresh: bool) -> Path:
    """The stage's folder: emptied for a forced rerun of a finished stage (``fresh``), else what an
    unfinished attempt left is kept and only its verdict markers go."""
    if fresh:
        storage.remove(name, fp)
    for marker in (FAILED, SUCCESS, MANIFEST):
        storage.remove(name, fp, marker)
    out = _work_dir_path(storage, name, fp)
    if storage.remote and fresh:
        shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True, exist_ok=True)
    return out


def _local_input(storage: Storage, name: str, fp: str) -> Path:
    if not storage.remote:
        return storage.local_path(name, fp)
    local = cache_dir() / "inputs" / name / fp
    if not (local / SUCCESS).exists():
        storage.download(local, name, fp)
    return local


def _terminate(tracker: Tracker, status: str) -> None:
    if tracker.active:
        tracker.client.set_terminated(tracker.run_id, status)


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _ray_node() -> dict[str, Any]:
    info: dict[str, Any] = {"hostname": socket.gethostname(), "pid": os.getpid(),
                            "user": getpass.getuser(), "python": platform.python_version()}
    try:
        import ray

        if ray.is_initialized():
            rc = ray.get_runtime_context()
            info.update(node_id=rc.get_node_id(), node_ip=ray.util.get_node_ip_address(),
                        job_id=rc.get_job_id())
    except Exception:  # noqa: BLE001 - node info is best effort, never fails a stage
        pass
    return info
