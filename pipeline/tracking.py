"""The small tracking API stages use: one MLflow run, logged over HTTP, only from rank 0.

A ``Tracker`` is a picklable handle (tracking URI + run id). Ship it to a Ray task or a Ray
Train worker as is; workers call ``tracker.for_rank(rank)``, which turns every call into a
no-op off rank 0, so "only the driver or rank 0 logs" holds by construction.
``Tracker.disabled()`` is the no-op tracker for library code and unit tests.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

_BATCH = 900  # MLflow accepts at most 1000 metrics per log_batch call

# Our own output prints the run links once, in the final table; MLflow would print two lines per run.
os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")


def flatten(d: Mapping[str, Any], prefix: str = "", sep: str = ".") -> dict[str, Any]:
    """{"a": {"b": 1}} -> {"a.b": 1}; lists stay values."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{sep}{k}" if prefix else str(k)
        if isinstance(v, Mapping) and v:
            out.update(flatten(v, key, sep))
        else:
            out[key] = v
    return out


class Tracker:
    def __init__(self, run_id: str | None, tracking_uri: str | None = None, active: bool = True):
        self.run_id = run_id
        self.tracking_uri = tracking_uri
        self.active = active and run_id is not None
        self._client = None

    # -- construction -------------------------------------------------------------------
    @classmethod
    def disabled(cls) -> "Tracker":
        return cls(None, None, active=False)

    def for_rank(self, rank: int) -> "Tracker":
        """The same run on rank 0; a no-op tracker everywhere else."""
        return Tracker(self.run_id, self.tracking_uri, active=self.active and rank == 0)

    def __getstate__(self):
        return {"run_id": self.run_id, "tracking_uri": self.tracking_uri, "active": self.active}

    def __setstate__(self, state):
        self.__init__(state["run_id"], state["tracking_uri"], state["active"])

    @property
    def client(self):
        if self._client is None:
            from mlflow import MlflowClient

            self._client = MlflowClient(tracking_uri=self.tracking_uri)
        return self._client

    # -- logging --------------------------------------------------------------------------
    def log_params(self, params: Mapping[str, Any]) -> None:
        if not self.active:
            return
        from mlflow.entities import Param

        items = [Param(k, _param_str(v)) for k, v in flatten(params).items()]
        for i in range(0, len(items), 100):
            self.client.log_batch(self.run_id, params=items[i:i + 100])

    def log_metric(self, key: str, value: float, step: int | None = None) -> None:
        self.log_metrics({key: value}, step=step)

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        if not self.active:
            return
        from mlflow.entities import Metric

        ts = int(time.time() * 1000)
        items = [Metric(k, float(v), ts, step or 0) for k, v in metrics.items()
                 if v is not None and math.isfinite(float(v))]
        for i in range(0, len(items), _BATCH):
            self.client.log_batch(self.run_id, metrics=items[i:i + _BATCH])

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        if not self.active:
            return
        from mlflow.entities import RunTag

        self.client.log_batch(self.run_id, tags=[RunTag(k, str(v)) for k, v in tags.items()])

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        if self.active:
            self.client.log_artifact(self.run_id, str(path), artifact_path)

    def log_artifacts(self, directory: str | Path, artifact_path: str | None = None) -> None:
        if self.active:
            self.client.log_artifacts(self.run_id, str(directory), artifact_path)

    def log_text(self, text: str, name: str) -> None:
        if self.active:
            self.client.log_text(self.run_id, text, name)

    def log_dict(self, obj: Any, name: str) -> None:
        if self.active:
            self.client.log_text(self.run_id, json.dumps(obj, indent=2, default=str), name)

    def log_table(self, rows: Iterable[Mapping[str, Any]] | Mapping[str, list], name: str) -> None:
        """A table as an MLflow table artifact (``name`` ends in .json), viewable in the UI."""
        if not self.active:
            return
        if not isinstance(rows, Mapping):
            rows = list(rows)
            cols = list(dict.fromkeys(k for r in rows for k in r))
            rows = {c: [r.get(c) for r in rows] for c in cols}
        self.client.log_table(self.run_id, data=dict(rows), artifact_file=name)

    def log_figure(self, figure, name: str) -> None:
        """A matplotlib figure as a PNG artifact."""
        if self.active:
            self.client.log_figure(self.run_id, figure, name)

    # -- lineage: datasets in, models out -----------------------------------------------------
    def log_datasets(self, datasets: Iterable["DatasetRef"], context: str = "input") -> None:
        """What the run consumed, as MLflow datasets (the runs table's Dataset column)."""
        if not self.active:
            return
        from mlflow.entities import DatasetInput, InputTag

        inputs = [DatasetInput(d.entity(), tags=[InputTag("mlflow.data.context", context)]) for d in datasets]
        if inputs:
            self.client.log_inputs(self.run_id, datasets=inputs)

    def log_model_inputs(self, model_ids: Iterable[str]) -> None:
        """Logged models the run consumed (another stage's output model)."""
        if not self.active:
            return
        from mlflow.entities import LoggedModelInput

        models = [LoggedModelInput(m) for m in model_ids]
        if models:
            self.client.log_inputs(self.run_id, models=models)

    def log_model_outputs(self, model_ids: Iterable[str]) -> None:
        """Link logged models to this run as its outputs (the runs table's Models column)."""
        if not self.active:
            return
        from mlflow.entities import LoggedModelOutput

        models = [LoggedModelOutput(m, step=0) for m in model_ids]
        if models:
            self.client.log_outputs(self.run_id, models)

    def logged_models(self, run_id: str | None = None) -> list[str]:
        """Ids of the logged models a run produced (``source_run_id``), oldest first."""
        if not self.active:
            return []
        run = self.client.get_run(run_id or self.run_id)
        found = self.client.search_logged_models(
            experiment_ids=[run.info.experiment_id], filter_string=f"source_run_id = '{run.info.run_id}'")
        return [m.model_id for m in sorted(found, key=lambda m: m.creation_timestamp)]

    # -- model registry -------------------------------------------------------------------
    def register_model(self, local_dir: str | Path, name: str, alias: str) -> str | None:
        """Log ``local_dir`` as an MLflow 3 LoggedModel produced by this run (named
        ``<name>-<alias>``, linked as the run's output) and register it as a new version of ``name``
        with ``alias``. Returns the version (None when inactive)."""
        if not self.active:
            return None
        from mlflow.exceptions import MlflowException

        run = self.client.get_run(self.run_id)
        model = self.client.create_logged_model(
            run.info.experiment_id, name=f"{name}-{alias}", source_run_id=self.run_id,
            tags={"whale.alias": alias, "whale.stage": run.data.tags.get("whale.stage", "")}, model_type="whale")
        try:
            self.client.log_model_artifacts(model.model_id, str(local_dir))
        except BaseException:
            self.client.finalize_logged_model(model.model_id, "FAILED")
            raise
        self.client.finalize_logged_model(model.model_id, "READY")
        self.log_model_outputs([model.model_id])
        try:
            self.client.create_registered_model(name)
        except MlflowException as e:  # already exists
            if "RESOURCE_ALREADY_EXISTS" not in str(e.error_code):
                raise
        mv = self.client.create_model_version(name, source=f"models:/{model.model_id}", run_id=self.run_id,
                                              model_id=model.model_id)
        self.client.set_registered_model_alias(name, alias, mv.version)
        self.set_tags({f"registered.{alias}": f"models:/{name}/{mv.version}"})
        return str(mv.version)


class DatasetRef:
    """One consumed dataset: a stage's output folder (or a raw source) with its digest and counts."""

    def __init__(self, name: str, digest: str, source: str, profile: Mapping[str, Any] | None = None):
        self.name, self.digest, self.source = name, digest, source
        self.profile = dict(profile or {})

    def entity(self):
        from mlflow.entities import Dataset

        scheme = source_type(self.source)
        return Dataset(name=self.name, digest=self.digest[:36], source_type=scheme,
                       source=json.dumps({"uri": self.source}),
                       profile=json.dumps(self.profile, default=str)[:16000] if self.profile else None)


def source_type(uri: str) -> str:
    return uri.split("://", 1)[0] if "://" in uri else "local"


def _param_str(v: Any) -> str:
    s = v if isinstance(v, str) else json.dumps(v, default=str)
    return s[:6000]  # MLflow's param value limit


MLFLOW_SCHEMES = ("models:/", "runs:/", "mlflow-artifacts:/")


def download_model(uri: str, tracking_uri: str | None = None, dst: str | Path | None = None) -> Path:
    """Resolve ``models:/NAME@ALIAS`` (or ``runs:/...``, or a local path) to a local folder."""
    if not uri.startswith(MLFLOW_SCHEMES):
        p = Path(uri.removeprefix("file://"))
        if not p.exists():
            raise FileNotFoundError(f"model path {p} does not exist")
        return p
    import mlflow

    if tracking_uri:
        mlflow.set_tracking_uri(tracking_uri)
    dst = Path(dst or tempfile.mkdtemp(prefix="whale-model-"))
    dst.mkdir(parents=True, exist_ok=True)
    return Path(mlflow.artifacts.download_artifacts(uri, dst_path=str(dst)))


def tracking_uri_from_env() -> str | None:
    return os.environ.get("MLFLOW_TRACKING_URI") or None
