"""Check, in a real browser, that the MLflow UI shows a pipeline run the way the README promises.

``check_mlflow_ui`` looks up ids over MLflow's REST API (which runs, which metrics, which
artifacts exist) and then asserts that the *UI* shows them:

- the experiment's runs table lists the parent run with every stage run nested under it:
  the stage runs are hidden until the parent's expander is clicked, then appear as the rows
  right below it (un-nested runs would be top-level rows, newest first, above the parent);
- every stage run's page names the parent run and lists its metrics;
- one stage run's "Model metrics" tab draws a chart of a metric logged over several steps;
- the stage runs' artifact tabs list their top-level artifacts;
- the Models page lists the registered models, and each model's page shows its aliases.

It saves screenshots of the runs table, the metric charts, an artifact listing and the
models page. Only MLflow 3.x's routes (``/#/experiments/<id>/runs...``, ``/#/models...``)
and a few DOM facts are relied on; everything else is found by run id or by the names passed
in, so the same check serves the toy pipeline in tests/e2e and the real one.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from urllib.parse import quote

from tests.e2e.browser import BrowserError, HeadlessChromium

PAGE_TIMEOUT_S = 45
MAX_METRICS_CHECKED = 8  # per run: the overview's metrics table is paged for long lists
MAX_ARTIFACTS_CHECKED = 8

# Best effort, for readable screenshots only: close the MLflow Assistant side panel and the
# "new Model Registry UI" announcement. Never fails; nothing is asserted through it.
_TIDY_JS = """(() => {
  let closed = 0;
  for (const b of document.querySelectorAll('button[aria-label="Close"]')) { b.click(); closed++; }
  return closed;
})()"""

_ROW_OF_RUN_JS = """((runId) => {
  const link = document.querySelector(`a[href$="/runs/${runId}"]`);
  const row = link && link.closest('[role="row"]');
  return row ? Number(row.getAttribute('row-index')) : null;
})"""

# The expander is the only button in the parent's run-name cell.
_EXPAND_JS = """((runId) => {
  const link = document.querySelector(`a[href$="/runs/${runId}"]`);
  const cell = link && link.closest('[role="gridcell"], .ag-cell');
  const button = cell && cell.querySelector('button');
  if (!button) return false;
  button.click();
  return true;
})"""

_CHART_DRAWN_JS = """document.querySelectorAll('.js-plotly-plot .scatterlayer path.js-line').length"""


# every scrollable box one screen further down: the metrics tab draws charts lazily, in view only
_SCROLL_DOWN_JS = """(() => { window.scrollBy(0, 700);
  for (const e of document.querySelectorAll('*')) {
    const y = getComputedStyle(e).overflowY;
    if ((y === 'auto' || y === 'scroll') && e.scrollHeight > e.clientHeight + 10) e.scrollTop += 700;
  } return true; })()"""


class MlflowUiError(AssertionError):
    """The MLflow UI does not show what the pipeline logged."""


def check_mlflow_ui(tracking_uri: str, experiment_name: str, stage_names: Iterable[str],
                    model_aliases: Mapping[str, Iterable[str]], screenshot_dir: str | Path, *,
                    parent_run_id: str | None = None, chart_stage: str | None = None,
                    timeout: float = PAGE_TIMEOUT_S) -> dict:
    """Assert through headless Chromium that the MLflow UI shows a pipeline run.

    ``stage_names``: the stage runs (run names) expected under the parent run.
    ``model_aliases``: registered model name -> the aliases its page must show.
    ``parent_run_id``: the pipeline run to look at; default the experiment's newest top-level
    run that has a child run for every stage.
    ``chart_stage``: the stage whose metric charts are opened; default the first stage with a
    metric logged at more than one step.

    Returns ``{"experiment_id", "parent_run_id", "stage_runs": {name: run_id},
    "chart_metric", "screenshots": {what: path}}``. Raises MlflowUiError (an AssertionError)
    naming what is missing, or BrowserError when Chromium itself fails.
    """
    from mlflow import MlflowClient

    base = tracking_uri.rstrip("/")
    shots_dir = Path(screenshot_dir)
    shots_dir.mkdir(parents=True, exist_ok=True)
    stage_names = list(stage_names)
    client = MlflowClient(tracking_uri)

    exp = client.get_experiment_by_name(experiment_name)
    if exp is None:
        raise MlflowUiError(f"no experiment {experiment_name!r} on {tracking_uri}")
    exp_id = exp.experiment_id
    parent, children = _parent_run(client, exp_id, parent_run_id, stage_names)
    stage_runs = _pick(children, parent.info.run_id, stage_names)
    chart_stage, chart_metric = _chart_metric(client, stage_runs, chart_stage)

    shots: dict[str, str] = {}
    with HeadlessChromium(log_path=shots_dir / "chromium.log") as browser:
        browser.open(f"{base}/#/experiments/{exp_id}/runs")
        _runs_table_nests(browser, parent, stage_runs, len(children), timeout)
        shots["experiment_runs"] = str(_screenshot(browser, shots_dir / "experiment-runs.png"))

        for name, run in stage_runs.items():
            _run_overview(browser, base, exp_id, name, run, parent, timeout)
        shots["run_overview"] = str(_screenshot(browser, shots_dir / "run-overview.png"))

        browser.open(f"{base}/#/experiments/{exp_id}/runs/{stage_runs[chart_stage].info.run_id}/model-metrics")
        claim = f"the Model metrics tab of stage run {chart_stage!r} draws a chart of {chart_metric!r}"
        _scroll_until_text(browser, chart_metric.rsplit("/", 1)[-1], timeout, claim)
        try:
            browser.wait_for(_CHART_DRAWN_JS, timeout, what="a line chart is drawn")
        except BrowserError as e:
            raise MlflowUiError(f"MLflow UI check failed: {claim}. {e}") from None
        shots["run_metrics"] = str(_screenshot(browser, shots_dir / "run-metrics.png"))

        artifacts = {name: _top_artifacts(client, run) for name, run in stage_runs.items()}
        if not any(artifacts.values()):
            raise MlflowUiError(f"none of the stage runs {stage_names} logged an artifact")
        shown = chart_stage if artifacts[chart_stage] else next(n for n, a in artifacts.items() if a)
        for name, names in artifacts.items():
            if names:
                _run_artifacts(browser, base, exp_id, name, stage_runs[name], names, timeout)
            if name == shown:
                shots["run_artifacts"] = str(_screenshot(browser, shots_dir / "run-artifacts.png"))

        _models_page(browser, base, model_aliases, timeout)
        shots["models"] = str(_screenshot(browser, shots_dir / "models.png"))
        for model, aliases in model_aliases.items():
            browser.open(f"{base}/#/models/{quote(model, safe='')}")
            _wait_or_fail(browser, [model, *(_alias_pattern(a) for a in aliases)], timeout,
                          f"model {model!r} shows its aliases {sorted(aliases)}")
        if model_aliases:
            shots["model"] = str(_screenshot(browser, shots_dir / "model.png"))

    return {"experiment_id": exp_id, "parent_run_id": parent.info.run_id,
            "stage_runs": {n: r.info.run_id for n, r in stage_runs.items()},
            "chart_metric": f"{chart_stage}:{chart_metric}", "screenshots": shots}


# -- what MLflow holds (REST) ---------------------------------------------------------------------

def _parent_run(client, exp_id: str, run_id: str | None, stage_names: list[str]) -> tuple:
    """(parent run, its children by run name): the given run, else the newest top-level run
    that has a child run for every stage."""
    if run_id:
        return client.get_run(run_id), _children(client, exp_id, run_id)
    runs = client.search_runs([exp_id], order_by=["attributes.start_time DESC"], max_results=200)
    top = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    for run in top:
        children = _children(client, exp_id, run.info.run_id)
        if all(n in children for n in stage_names):
            return run, children
    raise MlflowUiError(f"experiment {exp_id} has no top-level run with child runs for all of "
                        f"{stage_names} (top-level runs: {[r.info.run_name for r in top[:10]]})")


def _children(client, exp_id: str, parent_id: str) -> dict:
    runs = client.search_runs([exp_id], filter_string=f"tags.`mlflow.parentRunId` = '{parent_id}'",
                              max_results=1000)
    return {r.info.run_name: r for r in runs}


def _pick(children: dict, parent_id: str, stage_names: list[str]) -> dict:
    missing = [n for n in stage_names if n not in children]
    if missing:
        raise MlflowUiError(f"parent run {parent_id} has no child runs named {missing}; "
                            f"it has {sorted(children)}")
    return {n: children[n] for n in stage_names}


def _scroll_until_text(browser: HeadlessChromium, text: str, timeout: float, claim: str) -> None:
    """A run with many metrics has many chart sections; scroll until the wanted one is drawn."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            browser.wait_for_text([text], min(5.0, max(0.5, deadline - time.monotonic())))
            return
        except BrowserError as e:
            if time.monotonic() >= deadline:
                raise MlflowUiError(f"MLflow UI check failed: {claim}. {e}") from None
            browser.evaluate(_SCROLL_DOWN_JS)


def _chart_metric(client, stage_runs: dict, wanted: str | None) -> tuple[str, str]:
    """(stage, metric key) of a metric with a multi-step history, to look at as a chart."""
    if wanted is not None and wanted not in stage_runs:
        raise MlflowUiError(f"chart_stage {wanted!r} is not one of the stages {sorted(stage_runs)}")
    for name in [wanted] if wanted else stage_runs:
        run = stage_runs[name]
        for key in sorted(run.data.metrics):
            if len(client.get_metric_history(run.info.run_id, key)) > 1:
                return name, key
    raise MlflowUiError(f"no metric of stage(s) {[wanted] if wanted else list(stage_runs)} was "
                        f"logged at more than one step, so there is no chart to look at")


# -- what the UI shows ----------------------------------------------------------------------------

def _runs_table_nests(browser: HeadlessChromium, parent, stage_runs: dict, n_children: int,
                      timeout: float) -> None:
    """Stage runs are hidden under the parent's expander, then shown as the rows below it."""
    parent_id = parent.info.run_id
    _wait_or_fail(browser, [parent.info.run_name], timeout, "the runs table lists the parent run")
    row_of = lambda run_id: browser.evaluate(f"{_ROW_OF_RUN_JS}({run_id!r})")  # noqa: E731
    child_ids = [r.info.run_id for r in stage_runs.values()]
    shown_early = [n for n, r in stage_runs.items() if row_of(r.info.run_id) is not None]
    if shown_early:
        raise MlflowUiError(f"stage runs {shown_early} are rows of their own before the parent run "
                            f"{parent.info.run_name!r} is expanded: they are not nested under it")
    if not browser.evaluate(f"{_EXPAND_JS}({parent_id!r})"):
        raise MlflowUiError(f"the parent run {parent.info.run_name!r} has no expander in the runs "
                            f"table, so no runs are nested under it")
    _wait_or_fail(browser, [r.info.run_name for r in stage_runs.values()], timeout,
                  "the stage runs appear after expanding the parent run")
    browser.wait_for(f"[{', '.join(repr(i) for i in child_ids)}].every(id => {_ROW_OF_RUN_JS}(id) !== null)",
                     timeout, what="every stage run has a row")
    parent_row = row_of(parent_id)
    rows = {n: row_of(r.info.run_id) for n, r in stage_runs.items()}
    # the parent's children (the stage runs, and any others it has) are the rows right below it
    if not all(parent_row < row <= parent_row + n_children for row in rows.values()):
        raise MlflowUiError(f"after expanding, the stage runs are not among the {n_children} rows right "
                            f"below the parent (row {parent_row}): {rows}")
    browser.evaluate(_TIDY_JS)


def _run_overview(browser, base: str, exp_id: str, name: str, run, parent, timeout: float) -> None:
    run_id = run.info.run_id
    metrics = sorted(run.data.metrics)[:MAX_METRICS_CHECKED]
    if not metrics:
        raise MlflowUiError(f"stage run {name!r} ({run_id}) logged no metrics")
    browser.open(f"{base}/#/experiments/{exp_id}/runs/{run_id}")
    _wait_or_fail(browser, [run_id, name, parent.info.run_name, *metrics], timeout,
                  f"the page of stage run {name!r} shows its parent run and metrics")
    if not browser.evaluate(f"!!document.querySelector('a[href$=\"/runs/{parent.info.run_id}\"]')"):
        raise MlflowUiError(f"the page of stage run {name!r} has no link to its parent run")


def _top_artifacts(client, run) -> list[str]:
    return sorted(a.path.rsplit("/", 1)[-1] for a in client.list_artifacts(run.info.run_id))


def _run_artifacts(browser, base: str, exp_id: str, name: str, run, names: list[str], timeout: float) -> None:
    browser.open(f"{base}/#/experiments/{exp_id}/runs/{run.info.run_id}/artifacts")
    _wait_or_fail(browser, names[:MAX_ARTIFACTS_CHECKED], timeout,
                  f"the artifacts tab of stage run {name!r} lists its artifacts")


def _models_page(browser, base: str, model_aliases: Mapping[str, Iterable[str]], timeout: float) -> None:
    browser.open(f"{base}/#/models")
    _wait_or_fail(browser, list(model_aliases), timeout, "the Models page lists the registered models")
    browser.evaluate(_TIDY_JS)


def _alias_pattern(alias: str) -> re.Pattern:
    """An alias as MLflow renders its tag: ``@ champion`` (the gap may vary)."""
    return re.compile(rf"@\s*{re.escape(alias)}(?![\w-])")


def _wait_or_fail(browser: HeadlessChromium, texts: list, timeout: float, claim: str) -> str:
    try:
        return browser.wait_for_text(texts, timeout)
    except BrowserError as e:
        raise MlflowUiError(f"MLflow UI check failed: {claim}. {e}") from None


def _screenshot(browser: HeadlessChromium, path: Path) -> Path:
    if browser.evaluate(_TIDY_JS):
        time.sleep(0.5)  # let the closed panels animate away
    return browser.screenshot(path)
