"""One YAML per run: a global section plus one section per stage, validated before any compute.

    name: tiny                  # experiment and registered-model name
    seed: 0
    output_root: outputs        # local path or fsspec URI (s3://bucket/prefix)
    tracking: {...}
    ray: {...}
    curate: {...}               # one section per stage, each the stage's own pydantic model
    ...

Errors name the key, the file and the closest valid key; ``--set a.b=c`` overrides are parsed
as YAML scalars and type-checked by the same models.

A config may extend another: ``base: tiny.yaml`` (relative to the config's own folder) loads that
file first and lays this one over it. Every mapping merges key by key at any depth (``model:`` as
well as ``train:``); lists and scalars replace. ``--set`` overrides apply last.
"""

from __future__ import annotations

import copy
import difflib
import hashlib
import json
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, create_model, field_validator

from pipeline.stage import Stage


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", protected_namespaces=())


class TrackingConfig(Strict):
    # None: MLFLOW_TRACKING_URI if set, else a local `mlflow server` started by the pipeline
    uri: str | None = None
    # leave the server that the pipeline started running after it exits
    keep_server: bool = False


class RayConfig(Strict):
    # None: RAY_ADDRESS if set (as under `ray job submit`), else start Ray in-process
    address: str | None = None
    num_cpus: int | None = None
    # runtime_env excludes when the working dir is shipped to a cluster
    excludes: list[str] = Field(default_factory=lambda: [
        ".venv", "outputs", ".git", "**/__pycache__", "*.egg-info", ".hypothesis", ".pytest_cache"])


class GlobalConfig(Strict):
    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
    seed: int = 0
    output_root: str = Field("outputs", validate_default=True)
    tracking: TrackingConfig = TrackingConfig()
    ray: RayConfig = RayConfig()

    @field_validator("output_root")
    @classmethod
    def _absolute_root(cls, root: str) -> str:
        """A relative local root is resolved once, here: against WHALE_PROJECT_DIR when set (the
        local cluster scripts set it, since job drivers run in a temporary copy of the working
        dir), else the current directory. URIs (s3://...) pass through."""
        if "://" in root or os.path.isabs(root):
            return root
        base = os.environ.get("WHALE_PROJECT_DIR") or os.getcwd()
        return os.path.normpath(os.path.join(base, os.path.expanduser(root)))


GLOBAL_KEYS = tuple(GlobalConfig.model_fields)


class ConfigError(ValueError):
    """A config problem, phrased for the person who wrote the YAML."""


class PipelineConfig:
    """The validated config: ``.globals`` plus one validated section per stage."""

    def __init__(self, globals_: GlobalConfig, sections: dict[str, BaseModel], raw: dict,
                 source: str):
        self.globals = globals_
        self.sections = sections
        self.raw = raw
        self.source = source

    def __getitem__(self, stage: str) -> BaseModel:
        return self.sections[stage]

    @property
    def name(self) -> str:
        return self.globals.name

    def to_dict(self) -> dict:
        d = self.globals.model_dump(mode="json")
        d.update({k: v.model_dump(mode="json") for k, v in self.sections.items()})
        return d

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)


def stage_hash(section: BaseModel) -> str:
    return hashlib.sha256(json.dumps(section.model_dump(mode="json"), sort_keys=True).encode()).hexdigest()


# -- loading ------------------------------------------------------------------------------

def load_config(path: str | Path, stages: Iterable[Stage], overrides: Iterable[str] = ()) -> PipelineConfig:
    path = Path(path)
    raw = load_raw(path)
    return parse_config(raw, stages, overrides, source=str(path), text=path.read_text())


def load_raw(path: Path, _seen: tuple[Path, ...] = ()) -> dict:
    """The YAML mapping of ``path`` with its ``base:`` chain resolved (base first, this file over it)."""
    if not path.exists():
        via = f" (the base of {_seen[-1]})" if _seen else ""
        raise ConfigError(f"config file {path}{via} does not exist")
    if path.resolve() in _seen:
        raise ConfigError(f"{path}: base: includes form a cycle: {' -> '.join(map(str, (*_seen, path.resolve())))}")
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML: {e}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of sections")
    base = raw.pop("base", None)
    if base is None:
        return raw
    if not isinstance(base, str) or not base.strip():
        raise ConfigError(f"{path}: base: must name one YAML file (relative to {path.parent}), got {base!r}")
    return deep_merge(load_raw(path.parent / base, (*_seen, path.resolve())), raw)


def deep_merge(base: Mapping, over: Mapping) -> dict:
    """``over`` laid on ``base``: mappings merge key by key at any depth, anything else replaces."""
    out = copy.deepcopy(dict(base))
    for k, v in over.items():
        out[k] = deep_merge(out[k], v) if isinstance(v, Mapping) and isinstance(out.get(k), Mapping) \
            else copy.deepcopy(v)
    return out


def parse_config(raw: Mapping, stages: Iterable[Stage], overrides: Iterable[str] = (),
                 source: str = "<config>", text: str | None = None) -> PipelineConfig:
    stages = list(stages)
    raw = copy.deepcopy(dict(raw))
    overrides = list(overrides)
    for ov in overrides:
        apply_override(raw, ov)
    schema = _schema(stages)
    try:
        model = schema.model_validate(raw)
    except ValidationError as e:
        raise ConfigError(_explain(e, schema, source, text, overrides)) from None
    globals_ = GlobalConfig.model_validate({k: raw[k] for k in GLOBAL_KEYS if k in raw})
    sections = {s.name: getattr(model, s.name) for s in stages}
    return PipelineConfig(globals_, sections, raw, source)


def apply_override(raw: dict, override: str) -> None:
    """``a.b.c=value``: value parsed as a YAML scalar (so 3 is an int, true a bool, [1,2] a list)."""
    key, sep, value = override.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"--set {override!r}: expected key.path=value")
    try:
        parsed = yaml.safe_load(value) if value.strip() else ""
    except yaml.YAMLError:
        parsed = value
    node = raw
    parts = key.strip().split(".")
    for part in parts[:-1]:
        nxt = node.setdefault(part, {})
        if not isinstance(nxt, dict):
            raise ConfigError(f"--set {override!r}: {part!r} is a value, not a section")
        node = nxt
    node[parts[-1]] = parsed


def _schema(stages: list[Stage]) -> type[BaseModel]:
    fields: dict[str, Any] = {k: (f.annotation, f) for k, f in GlobalConfig.model_fields.items()}
    for s in stages:
        fields[s.name] = (s.config, Field(default_factory=s.config))
    return create_model("WhaleConfig", __config__=ConfigDict(extra="forbid", protected_namespaces=()),
                        **fields)


def _explain(err: ValidationError, schema: type[BaseModel], source: str, text: str | None,
             overrides: list[str]) -> str:
    lines = [f"invalid config {source}:"]
    for e in err.errors():
        loc = [str(p) for p in e["loc"]]
        dotted = ".".join(loc)
        where = _line_of(text, loc)
        origin = next((f" (from --set {o})" for o in overrides if o.split("=")[0].strip() == dotted), "")
        if e["type"] == "extra_forbidden":
            valid = _valid_keys(schema, loc[:-1])
            close = difflib.get_close_matches(loc[-1], valid, n=1, cutoff=0.5)
            hint = f"; did you mean {'.'.join(loc[:-1] + close)!r}?" if close else ""
            lines.append(f"  - {dotted}{where}{origin}: unknown key{hint} "
                         f"(valid keys here: {', '.join(valid)})")
        else:
            lines.append(f"  - {dotted}{where}{origin}: {e['msg']} (got {e.get('input')!r})")
    return "\n".join(lines)


def _valid_keys(schema: type[BaseModel], loc: list[str]) -> list[str]:
    model: Any = schema
    for part in loc:
        fields = getattr(model, "model_fields", None)
        if not fields or part not in fields:
            return []
        model = _model_of(fields[part].annotation)
    return list(getattr(model, "model_fields", {}) or [])


def _model_of(annotation: Any) -> Any:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in getattr(annotation, "__args__", ()) or ():
        m = _model_of(arg)
        if m is not None:
            return m
    return None


def _line_of(text: str | None, loc: list[str]) -> str:
    """' (line N)' for the deepest key of ``loc`` found in the YAML text, by indentation."""
    if not text:
        return ""
    lineno, indent = 0, -1
    lines = text.splitlines()
    for part in loc:
        for i in range(lineno, len(lines)):
            stripped = lines[i].lstrip()
            ind = len(lines[i]) - len(stripped)
            if ind <= indent and stripped and not stripped.startswith("#") and i > lineno:
                return f" (line {lineno + 1})" if lineno or indent >= 0 else ""
            if stripped.startswith(f"{part}:") and ind > indent:
                lineno, indent = i, ind
                break
        else:
            break
    return f" (line {lineno + 1})" if indent >= 0 else ""
