"""The stage contract.

A stage is a plain function with declared inputs and outputs:

    def run(cfg: MyStageConfig, ctx: StageContext) -> dict[str, float | int | str]

- ``cfg`` is the stage's validated section of the YAML config (a pydantic model with
  ``extra="forbid"``).
- ``ctx.inputs`` maps each upstream stage name to its (cached) output folder; ``ctx.out`` is
  this stage's own, empty folder. A stage writes only under ``ctx.out``.
- The returned dict holds the stage's headline numbers (the final table's key metric, the
  report card). The runner writes them into ``manifest.json`` next to ``_SUCCESS``.

A stage package exposes ``STAGE = Stage(...)`` in its ``__init__`` and keeps that module
light (pydantic only): the config loader imports every stage to build the schema, and heavy
imports (torch, datatrove) belong inside the run function's module, named by ``run`` as
``"package.module:function"`` and imported only when the stage executes.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict

if TYPE_CHECKING:
    from pipeline.config import GlobalConfig
    from pipeline.tracking import Tracker


class StageConfig(BaseModel):
    """Base for every stage's config section: unknown keys are errors, not silently ignored."""

    model_config = ConfigDict(extra="forbid", protected_namespaces=())


@dataclass(frozen=True)
class Resources:
    """What the Ray task that runs a stage reserves.

    Stages that fan out their own Ray work (datatrove executor, Ray Train workers, Serve
    replicas) reserve 0 CPUs for the orchestrating task so the work it launches can be placed.
    """

    cpus: float = 1.0
    gpus: float = 0.0
    memory_gb: float | None = None

    def ray_options(self) -> dict[str, Any]:
        opts: dict[str, Any] = {"num_cpus": self.cpus, "num_gpus": self.gpus}
        if self.memory_gb:
            opts["memory"] = int(self.memory_gb * 1024**3)
        return opts


@dataclass
class StageContext:
    """Everything a running stage may use besides its own config."""

    stage: str
    out: Path
    inputs: dict[str, Path]
    tracker: "Tracker"
    pipeline: "GlobalConfig"
    fingerprint: str
    # upstream stage -> that stage's manifest (its summary, MLflow run id, ...)
    upstream: dict[str, dict] = field(default_factory=dict)

    @property
    def seed(self) -> int:
        return self.pipeline.seed

    @property
    def name(self) -> str:
        """The pipeline's name (experiment and registered-model name)."""
        return self.pipeline.name

    def input(self, stage: str) -> Path:
        try:
            return self.inputs[stage]
        except KeyError:
            raise KeyError(f"stage {self.stage!r} has no input from {stage!r}; "
                           f"declared upstream: {sorted(self.inputs)}") from None


class NotImplementedStage(RuntimeError):
    pass


@dataclass(frozen=True)
class Stage:
    name: str
    config: type[StageConfig]
    run: str | Callable[[Any, StageContext], dict] | None
    upstream: tuple[str, ...] = ()
    resources: Resources = Resources()
    # Python packages/modules whose source is part of the fingerprint ("code version").
    code: tuple[str, ...] = ()
    # Summary key shown in the final table, and the keys the report card leads with.
    key_metric: str | None = None
    headline: tuple[str, ...] = ()
    # Stages with side effects outside their folder (a live deployment) run every time.
    always_run: bool = False
    # False: upstream stages only order this one (serve deploys a registry model, it reads no
    # upstream folder), so running it alone does not require their outputs.
    reads_upstream: bool = True
    description: str = ""

    def load_run(self) -> Callable[[Any, StageContext], dict]:
        if self.run is None:
            raise NotImplementedStage(
                f"stage {self.name!r} is not implemented yet; run the stages before it with "
                f"--only/--from, or remove it from the DAG")
        if callable(self.run):
            return self.run
        module, _, func = self.run.partition(":")
        return getattr(importlib.import_module(module), func)

    def code_version(self) -> str:
        """Hash of the source files of the stage's code packages (sorted, path + bytes)."""
        h = hashlib.sha256()
        for name in self.code:
            for rel, path in sorted(_source_files(name)):
                h.update(rel.encode())
                h.update(path.read_bytes())
        return h.hexdigest()[:16]


def _source_files(module_name: str) -> list[tuple[str, Path]]:
    """(module-relative name, path) of every .py file of a module or package."""
    spec = importlib.util.find_spec(module_name)
    if spec is None:
        raise ModuleNotFoundError(f"code package {module_name!r} not found")
    if not spec.submodule_search_locations:
        return [(module_name, Path(spec.origin))] if spec.origin else []
    files = []
    for root in map(Path, spec.submodule_search_locations):
        for p in root.rglob("*.py"):
            if "__pycache__" not in p.parts:
                files.append((f"{module_name}/{p.relative_to(root).as_posix()}", p))
    return files

