"""The MLflow UI, in headless Chromium, after a toy pipeline ran through the real runner.

Screenshots land in the test's tmp dir, or under ``$WHALE_TEST_ARTIFACTS`` when set (for CI
to upload); their paths are printed.
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path

import cloudpickle
import pytest

from pipeline.config import parse_config
from pipeline.runner import Runner
from tests.e2e import toy_pipeline
from tests.e2e.browser import skip_reason
from tests.e2e.mlflow_ui import check_mlflow_ui
from tests.e2e.toy_pipeline import ALIASES, STAGES, model_name

# Ray workers cannot import the tests package by name; ship the toy stages by value.
cloudpickle.register_pickle_by_value(toy_pipeline)

pytestmark = [pytest.mark.slow, pytest.mark.skipif(skip_reason() is not None, reason=skip_reason() or "")]


def test_mlflow_ui_shows_the_pipeline_run(tmp_path, mlflow_server, ray_local):
    name = f"ui-{uuid.uuid4().hex[:8]}"
    cfg = parse_config({"name": name, "output_root": str(tmp_path / "out")}, STAGES)
    results = Runner(cfg, STAGES, mlflow_server).run()
    assert [r.status for r in results] == ["ran"] * len(STAGES)

    shots_root = Path(os.environ.get("WHALE_TEST_ARTIFACTS") or tmp_path)
    found = check_mlflow_ui(mlflow_server, name, [s.name for s in STAGES],
                            {model_name(name): [a for aliases in ALIASES.values() for a in aliases]},
                            shots_root / "mlflow-ui" / name)

    assert set(found["stage_runs"]) == {s.name for s in STAGES}
    assert found["chart_metric"] == "data:data/loss"
    for what, path in found["screenshots"].items():
        png = Path(path).read_bytes()
        assert png.startswith(b"\x89PNG") and len(png) > 10_000, f"{what} screenshot looks empty"
        print(f"screenshot {what}: {path}")
