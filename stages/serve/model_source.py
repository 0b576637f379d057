"""Which model goes live: resolve the configured reference to one pinned version, then fetch it.

``models:/NAME@ALIAS`` is resolved to ``models:/NAME/VERSION`` once, here, so every replica loads
the same version even if the alias moves while they start, and the run records exactly what
went live.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

from stages.serve.server import ServeSetupError


@dataclass(frozen=True)
class ModelSource:
    requested: str                  # as configured (models:/NAME@ALIAS, a path, ...)
    uri: str                        # pinned: models:/NAME/VERSION, runs:/..., or an absolute path
    name: str | None = None         # registered model name
    version: str | None = None
    alias: str | None = None
    run_id: str | None = None       # the run that logged the version

    def as_dict(self) -> dict:
        return asdict(self)


def requested_model(model: str | None, alias: str, pipeline_name: str) -> str:
    return model or f"models:/{pipeline_name}@{alias}"


def resolve(ref: str, tracking_uri: str | None) -> ModelSource:
    if ref.startswith("runs:/") or ref.startswith("mlflow-artifacts:/"):
        return ModelSource(ref, ref)
    if not ref.startswith("models:/"):
        path = Path(ref.removeprefix("file://")).expanduser()
        if not path.exists():
            raise ServeSetupError(f"model path {path} does not exist")
        return ModelSource(ref, str(path.resolve()))
    if not tracking_uri:
        raise ServeSetupError(f"{ref} needs the MLflow tracking server: set tracking.uri or MLFLOW_TRACKING_URI")
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    client = MlflowClient(tracking_uri)
    rest = ref.removeprefix("models:/")
    name, at, alias = rest.partition("@")
    try:
        if at:
            mv = client.get_model_version_by_alias(name, alias)
        else:
            name, _, version = rest.rpartition("/")
            mv = client.get_model_version(name, version)
    except MlflowException as e:
        raise ServeSetupError(_not_found(client, ref, name, alias if at else None, e)) from None
    return ModelSource(ref, f"models:/{mv.name}/{mv.version}", mv.name, str(mv.version), alias if at else None,
                       mv.run_id)


def _not_found(client, ref: str, name: str, alias: str | None, err) -> str:
    from mlflow.exceptions import MlflowException

    try:
        registered = client.get_registered_model(name)
    except MlflowException:
        return (f"{ref}: no model named {name!r} is registered at {client._tracking_client.tracking_uri}; "
                f"run the stages that register it (pretrain: @base, distill: @candidate, eval: @champion) or "
                f"pass --model PATH_OR_URI")
    aliases = ", ".join(f"@{a} -> v{v}" for a, v in sorted((registered.aliases or {}).items())) or "none"
    what = f"alias @{alias}" if alias else "that version"
    return (f"{ref}: model {name!r} has no {what} (aliases: {aliases}); pass --model models:/{name}@<alias> "
            f"({err.message})")


MLFLOW_SCHEMES = ("models:/", "runs:/", "mlflow-artifacts:/")


def fetch(source: ModelSource, dst: Path, tracking_uri: str | None) -> Path:
    """A local folder with the model files (a path is used in place)."""
    if not source.uri.startswith(MLFLOW_SCHEMES):
        return Path(source.uri)
    return download(source.uri, tracking_uri, dst)


def download(uri: str, tracking_uri: str | None, dst: Path) -> Path:
    """``models:/`` / ``runs:/`` artifacts to ``dst`` (these URIs have one slash after the scheme)."""
    import mlflow

    if tracking_uri:
        mlflow.set_tracking_uri(tracking_uri)
    dst.mkdir(parents=True, exist_ok=True)
    return Path(mlflow.artifacts.download_artifacts(uri, dst_path=str(dst)))
