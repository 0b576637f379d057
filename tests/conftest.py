"""Shared fixtures: one real MLflow tracking server and one local Ray for the whole session."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

# Real services for any test: moto S3, PostgreSQL, a local multi-node Ray cluster.
pytest_plugins = ("tests.fixtures.services",)

ROOT = Path(__file__).resolve().parent.parent
SHARED_DATA = ROOT.parent / "shared" / "data"

os.environ.setdefault("RAY_ENABLE_UV_RUN_RUNTIME_ENV", "0")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session")
def mlflow_server(tmp_path_factory):
    """A real `mlflow server` (SQLite backend) on a free loopback port."""
    from pipeline.mlflow_server import find_or_start_local

    server = find_or_start_local(tmp_path_factory.mktemp("mlflow"))
    yield server.uri
    server.stop()


@pytest.fixture(scope="session")
def ray_local():
    """A local Ray for the session (2 logical CPUs, like the CI machine)."""
    import ray

    if not ray.is_initialized():
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=True)
    yield ray
    ray.shutdown()


@pytest.fixture
def shared_data() -> Path:
    if not SHARED_DATA.exists():
        pytest.skip(f"{SHARED_DATA} is absent (the shared test data sits beside the repo in CI only)")
    return SHARED_DATA
