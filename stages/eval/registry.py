"""The model registry side of the gate: which versions are candidate and champion, fetching them,
and moving the champion alias.

A ``models:/NAME@ALIAS`` reference is pinned to ``NAME/VERSION`` once, here, so the version that
was evaluated is the version that gets promoted even if the alias moves meanwhile.
"""

from __future__ import annotations

import shutil
from dataclasses import asdict, dataclass
from pathlib import Path


class RegistryError(RuntimeError):
    """A model reference that cannot be resolved; the message says what to do."""


@dataclass(frozen=True)
class ModelRef:
    requested: str              # as configured: models:/NAME@ALIAS, models:/NAME/VERSION or a path
    uri: str                    # pinned: models:/NAME/VERSION or an absolute path
    name: str | None = None     # registered model name (None for a bare path)
    version: str | None = None
    run_id: str | None = None   # the run that logged this version

    @property
    def registered(self) -> bool:
        return self.version is not None

    @property
    def label(self) -> str:
        return f"{self.name} v{self.version}" if self.registered else self.uri

    def as_dict(self) -> dict:
        return asdict(self)


def is_registry_uri(ref: str) -> bool:
    return ref.startswith("models:/")


def registered_name(ref: str) -> str:
    """NAME of models:/NAME@ALIAS or models:/NAME/VERSION."""
    rest = ref.removeprefix("models:/")
    return rest.partition("@")[0] if "@" in rest else rest.rpartition("/")[0]


def _client(tracking_uri: str):
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri)


def resolve(ref: str, tracking_uri: str | None) -> ModelRef:
    if not is_registry_uri(ref):
        path = Path(ref.removeprefix("file://")).expanduser()
        if not (path / "config.json").is_file():
            raise RegistryError(f"model path {path} is not a model folder (no config.json); expected the HF export "
                                f"with tokenizer files that pretrain/distill write to <out>/hf")
        return ModelRef(ref, str(path.resolve()))
    if not tracking_uri:
        raise RegistryError(f"{ref} needs the MLflow tracking server: set tracking.uri or MLFLOW_TRACKING_URI, "
                            f"or pass a local model folder")
    from mlflow.exceptions import MlflowException

    client = _client(tracking_uri)
    rest = ref.removeprefix("models:/")
    name, at, alias = rest.partition("@")
    try:
        if at:
            mv = client.get_model_version_by_alias(name, alias)
        else:
            name, _, version = rest.rpartition("/")
            mv = client.get_model_version(name, version)
    except MlflowException as e:
        raise RegistryError(_not_found(client, ref, name, alias if at else None, e)) from None
    return ModelRef(ref, f"models:/{mv.name}/{mv.version}", mv.name, str(mv.version), mv.run_id)


def find_alias(name: str, alias: str, tracking_uri: str | None) -> ModelRef | None:
    """The version ``name@alias`` points at, or None when the model or the alias does not exist."""
    if not tracking_uri:
        return None
    from mlflow.exceptions import MlflowException

    try:
        mv = _client(tracking_uri).get_model_version_by_alias(name, alias)
    except MlflowException as e:
        if e.error_code in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE", "NOT_FOUND"):
            return None
        raise
    return ModelRef(f"models:/{name}@{alias}", f"models:/{mv.name}/{mv.version}", mv.name, str(mv.version), mv.run_id)


def fetch(ref: ModelRef, dst: Path, tracking_uri: str | None) -> Path:
    """A local folder with the model files (a path is used in place)."""
    if not is_registry_uri(ref.uri):
        return Path(ref.uri)
    import mlflow

    if dst.exists():
        shutil.rmtree(dst)
    dst.mkdir(parents=True)
    mlflow.set_tracking_uri(tracking_uri)
    path = Path(mlflow.artifacts.download_artifacts(ref.uri, dst_path=str(dst)))
    if not (path / "config.json").is_file():
        raise RegistryError(f"{ref.uri} downloaded to {path} but holds no config.json: not a model export")
    return path


def set_alias(name: str, alias: str, version: str, tracking_uri: str) -> None:
    _client(tracking_uri).set_registered_model_alias(name, alias, version)


def tag_version(ref: ModelRef, tags: dict[str, str], tracking_uri: str) -> None:
    client = _client(tracking_uri)
    for k, v in tags.items():
        client.set_model_version_tag(ref.name, ref.version, k, str(v)[:5000])


def _not_found(client, ref: str, name: str, alias: str | None, err) -> str:
    from mlflow.exceptions import MlflowException

    try:
        registered = client.get_registered_model(name)
    except MlflowException:
        return (f"{ref}: no model named {name!r} is registered; run the distill stage (it registers "
                f"@candidate) or pass --model PATH_OR_URI")
    aliases = ", ".join(f"@{a} -> v{v}" for a, v in sorted((registered.aliases or {}).items())) or "none"
    what = f"alias @{alias}" if alias else "that version"
    return (f"{ref}: model {name!r} has no {what} (aliases: {aliases}); pass --model models:/{name}@<alias> "
            f"({err.message})")
