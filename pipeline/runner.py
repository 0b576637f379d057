"""The driver: decide what runs, run independent stages concurrently as Ray tasks, track it all.

One MLflow parent run per pipeline run; one child run per stage, created here and handed to
the Ray task by id (cached stages get a child run too, tagged ``cached=true`` with a link to the
run that produced the output).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import logging
import os
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from rich.markdown import Markdown
from rich.markup import escape

from pipeline import dag as dagmod
from pipeline import report
from pipeline.config import PipelineConfig
from pipeline.console import LiveProgress, StageResult, console, results_table, stage_log_env
from pipeline.dag import Dag, DagError, Node
from pipeline.executor import StageFailed, StageJob, execute, stage_log_path
from pipeline.mlflow_server import runs_url
from pipeline.stage import Stage
from pipeline.storage import Storage
from pipeline.tracking import DatasetRef, Tracker, flatten

log = logging.getLogger(__name__)

# What each stage's output folder is, as a dataset a downstream run consumed (lineage in MLflow's
# runs table). Stages that register a model are linked by their LoggedModel instead.
DATASET_NAMES = {"curate": "curated-corpus", "tokenizer": "token-shards"}

PROJECT_ROOT = Path(__file__).resolve().parent.parent


class PipelineFailed(RuntimeError):
    pass


@dataclass
class Selection:
    """Which stages run this time and which are reused."""

    run: list[str]
    reuse: list[str]
    forced: set[str] = field(default_factory=set)


def select(dag: Dag, storage: Storage, only: list[str] = (), from_: str | None = None,
           force: list[str] = ()) -> Selection:
    names = set(dag.order)
    for n in [*only, *([from_] if from_ else []), *[f for f in force if f != "all"]]:
        dag[n]  # raises a clear error for unknown names
    forced = set(names) if "all" in force else set(force)
    if from_:
        forced |= {from_} | dag.descendants(from_)
    wanted = set(only) if only else names
    if only:  # a lone stage reruns; its upstream must already be there
        forced |= set(only)
    run, reuse = [], []
    for node in dag:
        if node.name not in wanted:
            continue
        if node.name in forced or node.stage.always_run or dagmod.state(storage, node) != "cached":
            run.append(node.name)
        else:
            reuse.append(node.name)
    # every upstream of a running stage must be running or cached; a cached one outside the
    # selection (``--only tokenizer`` after a curate run) is reused, so the stage can start
    for name in run:
        for up in dag.upstream(name):
            if up in run or up in reuse:
                continue
            if dagmod.state(storage, dag[up]) == "cached":
                reuse.append(up)
            elif dag.stages[name].reads_upstream:
                raise DagError(f"stage {name!r} needs the output of {up!r}, which is not cached "
                               f"({storage.uri(up, dag[up].fingerprint)}); run it first "
                               f"(drop --only, or add --from {up})")
    reuse.sort(key=dag.order.index)
    return Selection(run=run, reuse=reuse, forced=forced)


class Runner:
    """``verbose``: frameworks print to the console as they like; otherwise every stage's output goes
    to its log file (``<output>/<stage>.log``) and the console shows Whale's own lines only."""

    def __init__(self, config: PipelineConfig, stages: list[Stage], tracking_uri: str, verbose: bool = False):
        self.config = config
        self.verbose = verbose
        self.dag = Dag(stages, config)
        self.storage = Storage(config.globals.output_root)
        self.tracking_uri = tracking_uri
        from mlflow import MlflowClient

        self.client = MlflowClient(tracking_uri)

    # -- MLflow bookkeeping ---------------------------------------------------------------
    def experiment_id(self) -> str:
        exp = self.client.get_experiment_by_name(self.config.name)
        return exp.experiment_id if exp else self.client.create_experiment(self.config.name)

    def _child_run(self, exp_id: str, parent_id: str | None, node: Node, cached: bool,
                   extra_tags: dict | None = None) -> str:
        tags = {"whale.stage": node.name, "whale.fingerprint": node.fingerprint,
                "whale.cached": str(cached).lower(), "cached": str(cached).lower(),
                "whale.git_commit": git_commit(), "whale.output": self.storage.uri(node.name, node.fingerprint)}
        if parent_id:
            tags["mlflow.parentRunId"] = parent_id
        tags.update(extra_tags or {})
        run = self.client.create_run(exp_id, run_name=node.name, tags=tags)
        tracker = Tracker(run.info.run_id, self.tracking_uri)
        tracker.log_params(flatten(node.config.model_dump(mode="json")))
        self._log_lineage(tracker, node, producer=(extra_tags or {}).get("whale.produced_by") if cached else None)
        return run.info.run_id

    def _log_lineage(self, tracker: Tracker, node: Node, producer: str | None) -> None:
        """The stage run's inputs: upstream outputs as datasets (name, digest = fingerprint, path,
        the upstream summary's counts) or, for model-producing stages, their LoggedModels; raw sources
        for a stage without upstream. A cached run also links the producing run's models as outputs.
        Lineage is bookkeeping: a failure here is logged to the driver log, never fails the run."""
        from mlflow.exceptions import MlflowException

        try:
            datasets, models = [], []
            for up in self.dag.upstream(node.name):
                unode = self.dag[up]
                try:
                    manifest = dagmod.manifest(self.storage, unode)
                except OSError:  # an ordering-only upstream that is not there (serve run alone)
                    continue
                up_run = manifest.get("mlflow", {}).get("run_id")
                produced = self._models_of(tracker, up_run)
                if produced:
                    models += produced
                else:
                    datasets.append(DatasetRef(DATASET_NAMES.get(up, f"{up}-output"), unode.fingerprint,
                                               self.storage.uri(up, unode.fingerprint),
                                               _counts(manifest.get("summary", {}))))
            if not self.dag.upstream(node.name):
                datasets += _raw_sources(node.config)
            tracker.log_datasets(datasets)
            tracker.log_model_inputs(models)
            if producer:
                tracker.log_model_outputs(self._models_of(tracker, producer))
        except (MlflowException, OSError, ValueError) as e:
            log.warning("lineage of %s not logged: %s", node.name, e)

    def _models_of(self, tracker: Tracker, run_id: str | None) -> list[str]:
        from mlflow.exceptions import MlflowException

        if not run_id:
            return []
        try:
            return tracker.logged_models(run_id)
        except MlflowException:  # a run this server does not hold (another server, deleted)
            return []

    # -- running --------------------------------------------------------------------------
    def run(self, sel: Selection | None = None) -> list[StageResult]:
        import ray

        sel = sel or select(self.dag, self.storage)
        exp_id = self.experiment_id()
        stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
        parent = self.client.create_run(exp_id, run_name=f"{self.config.name}-{stamp}", tags={
            "whale.kind": "pipeline", "whale.git_commit": git_commit(), "whale.config": self.config.source,
            "whale.output_root": self.storage.root})
        parent_id = parent.info.run_id
        parent_tracker = Tracker(parent_id, self.tracking_uri)
        parent_tracker.log_params(flatten(self.config.globals.model_dump(mode="json")))
        parent_tracker.log_text(self.config.to_yaml(), "config.yaml")
        self.storage.write_text(self.config.to_yaml(), "runs", parent_id, "config.yaml")
        console.print(f"[bold]Whale[/] {self.config.name}: {len(sel.run)} stage(s) to run, "
                      f"{len(sel.reuse)} cached · outputs {self.storage.root} · MLflow "
                      f"{runs_url(self.tracking_uri, exp_id, parent_id)}")

        results: dict[str, StageResult] = {}
        for name in sel.reuse:
            results[name] = self._reuse(exp_id, parent_id, self.dag[name])
            console.print(f"[cyan]↺ {name} cached[/] {results[name].output}")

        pending = list(sel.run)
        running: dict = {}  # ObjectRef -> (name, run_id, started)
        failed: set[str] = set()
        interrupted = False
        with LiveProgress(set(self.dag.order), verbose=self.verbose) as live:
            try:
                while pending or running:
                    for name in list(pending):
                        # upstreams outside this selection (not cached, not read) do not hold it up
                        ups = [u for u in self.dag.upstream(name) if u in sel.run or u in sel.reuse]
                        if any(u in failed or (u in results and results[u].status in ("failed", "skipped"))
                               for u in ups):
                            pending.remove(name)
                            results[name] = self._result(self.dag[name], "skipped", error="upstream failed")
                            failed.add(name)
                            continue
                        if all(u in results and results[u].status in ("ran", "cached") for u in ups):
                            pending.remove(name)
                            running[self._launch(name, exp_id, parent_id)] = (name, time.time())
                            live.start(name, f"[{self.dag[name].fingerprint}]", self._log_path(name))
                    if not running:
                        for name in pending:  # never silently: whatever could not start is reported
                            results[name] = self._result(self.dag[name], "skipped", error="upstream not available")
                            failed.add(name)
                        break
                    done, _ = ray.wait(list(running), num_returns=1, timeout=1.0)
                    live.poll()
                    for ref in done:
                        name, started = running.pop(ref)
                        res = self._collect(ref, name, exp_id, started)
                        results[name] = res
                        if res.status == "failed":
                            failed.add(name)
                        live.finish(name, res.status, res.error or "")
            except KeyboardInterrupt:
                interrupted = True
                for ref, (name, started) in running.items():
                    ray.cancel(ref, force=True)
                    results[name] = self._result(self.dag[name], "interrupted", wall_s=time.time() - started)
                for name in pending:
                    results[name] = self._result(self.dag[name], "skipped", error="interrupted")

        ordered = [results[n] for n in self.dag.order if n in results]
        ok = not failed and not interrupted
        console.print(results_table(ordered, title=f"Whale pipeline · {self.config.name}"))
        self._write_report(parent_tracker, ordered, runs_url(self.tracking_uri, exp_id, parent_id))
        self._finish_parent(parent_tracker, ordered, ok, interrupted)
        if not ok:
            bad = [r for r in ordered if r.status in ("failed", "interrupted")]
            for r in bad:
                console.print(f"[bold red]✗ stage {r.name!r} {r.status}[/]: {escape(r.error or '')}")
                if r.status == "failed":
                    console.print(f"  traceback: {self.storage.uri(r.name, r.fingerprint, dagmod.FAILED)}")
                    console.print(f"  full log:  {self._log_path(r.name)}")
            console.print("  [bold]To resume[/], run the same command again: finished stages are cached "
                          "and the run restarts at the first stage without _SUCCESS.")
            raise PipelineFailed(", ".join(f"{r.name} {r.status}" for r in bad))
        return ordered

    def _launch(self, name: str, exp_id: str, parent_id: str):
        import ray

        node = self.dag[name]
        run_id = self._child_run(exp_id, parent_id, node, cached=False)
        job = StageJob(stage=node.stage, config=node.config, pipeline=self.config.globals,
                       fingerprint=node.fingerprint, output_root=self.storage.root,
                       upstream=self.dag.inputs(name, self.storage),
                       tracking_uri=self.tracking_uri, run_id=run_id)
        opts = node.stage.resources.ray_options()
        env = {"MLFLOW_TRACKING_URI": self.tracking_uri,
               # what the stage's own Ray work (Ray Train's controller, Serve) inherits: Ray's state
               # API otherwise guesses the cluster and fails when a machine runs two of them
               "RAY_ADDRESS": ray.get_runtime_context().gcs_address}
        if not self.verbose:
            env.update(stage_log_env(self._log_path(name), launch_id=run_id))
            if not self.storage.remote:  # the console tails this file: not an earlier attempt's lines
                self._log_path(name).unlink(missing_ok=True)
        task = ray.remote(_execute_remote).options(
            name=f"stage:{name}", max_retries=0, scheduling_strategy="SPREAD",
            runtime_env={"env_vars": env}, **opts)
        return task.remote(job)

    def _log_path(self, name: str) -> Path:
        return stage_log_path(self.storage, name, self.dag[name].fingerprint)

    def _collect(self, ref, name: str, exp_id: str, started: float) -> StageResult:
        import ray

        node = self.dag[name]
        try:
            manifest = ray.get(ref)
        except Exception as e:  # noqa: BLE001 - every failure becomes a row in the table
            cause = _unwrap(e)
            self._mark_failed(node, cause)
            return self._result(node, "failed", wall_s=time.time() - started, error=cause)
        return self._from_manifest(node, manifest, "ran", exp_id)

    def _mark_failed(self, node: Node, cause: str) -> None:
        """A worker that died (OOM, crash) could not mark its own run; do it here."""
        runs = self.client.search_runs(
            [self.experiment_id()], filter_string=f"tags.`whale.fingerprint` = '{node.fingerprint}'",
            order_by=["attributes.start_time DESC"], max_results=1)
        if runs and runs[0].info.status == "RUNNING":
            self.client.set_tag(runs[0].info.run_id, "whale.error", cause[:5000])
            self.client.set_terminated(runs[0].info.run_id, "FAILED")

    def _reuse(self, exp_id: str, parent_id: str, node: Node) -> StageResult:
        manifest = dagmod.manifest(self.storage, node)
        producer = manifest.get("mlflow", {}).get("run_id")
        run_id = self._child_run(exp_id, parent_id, node, cached=True, extra_tags={
            "whale.produced_by": producer or "unknown",
            "whale.produced_by_url": runs_url(self.tracking_uri, exp_id, producer) if producer else ""})
        summary = manifest.get("summary", {})
        Tracker(run_id, self.tracking_uri).log_metrics(
            {f"summary/{k}": v for k, v in summary.items() if isinstance(v, (int, float)) and not isinstance(v, bool)})
        self.client.set_terminated(run_id, "FINISHED")
        res = self._from_manifest(node, manifest, "cached", exp_id)
        res.run_url = runs_url(self.tracking_uri, exp_id, run_id)
        return res

    def _from_manifest(self, node: Node, manifest: dict, status: str, exp_id: str) -> StageResult:
        summary = manifest.get("summary", {})
        key = node.stage.key_metric
        run_id = manifest.get("mlflow", {}).get("run_id")
        return StageResult(name=node.name, status=status, fingerprint=node.fingerprint,
                           output=manifest.get("output", self.storage.uri(node.name, node.fingerprint)),
                           wall_s=manifest.get("timings", {}).get("wall_s") if status == "ran" else 0.0,
                           key_metric=key, key_value=summary.get(key) if key else None,
                           run_url=runs_url(self.tracking_uri, exp_id, run_id) if run_id else None,
                           run_id=run_id, summary=summary)

    def _result(self, node: Node, status: str, wall_s: float | None = None, error: str | None = None):
        return StageResult(name=node.name, status=status, fingerprint=node.fingerprint,
                           output=self.storage.uri(node.name, node.fingerprint), wall_s=wall_s, error=error)

    def _write_report(self, parent: Tracker, results: list[StageResult], parent_url: str) -> None:
        plots = {r.name: self._plots(r.run_id) for r in results if r.run_id}
        text = report.render(self.config.name, results, self.dag.stages, self.tracking_uri, parent_url, plots)
        self.storage.write_text(text, "runs", parent.run_id, "report.md")
        parent.log_text(text, "report.md")
        if console.is_terminal:  # a log (CI, `ray job logs`) keeps the table above and the card's path
            console.print(Markdown(text))
        console.print(f"Report card: {self.storage.uri('runs', parent.run_id, 'report.md')}")

    def _plots(self, run_id: str) -> list[str]:
        """PNG artifacts of the run that produced a stage's output. A cached output may name a run
        this tracking server does not hold (another server, a deleted run): then no plot links."""
        from mlflow.exceptions import MlflowException

        found, frontier = [], [None]
        while frontier and len(found) < 20:
            try:
                items = self.client.list_artifacts(run_id, frontier.pop())
            except MlflowException as e:
                console.print(f"[yellow]report card: no plots for run {run_id} ({str(e).splitlines()[0]})[/]")
                return []
            for item in items:
                if item.is_dir:
                    frontier.append(item.path)
                elif item.path.endswith(".png"):
                    found.append(item.path)
        return sorted(found)

    def _finish_parent(self, tracker: Tracker, results: list[StageResult], ok: bool, interrupted: bool):
        rows = [{"stage": r.name, "status": r.status, "wall_s": r.wall_s, "key_metric": r.key_metric,
                 "key_value": r.key_value, "output": r.output, "fingerprint": r.fingerprint}
                for r in results]
        tracker.log_table(rows, "stages.json")
        tracker.log_metrics({f"{r.name}/wall_s": r.wall_s for r in results if r.wall_s is not None})
        status = "FINISHED" if ok else ("KILLED" if interrupted else "FAILED")
        self.client.set_terminated(tracker.run_id, status)


def _counts(summary: dict) -> dict:
    """The numbers of a stage summary worth showing as a dataset's profile (rows, tokens, sizes)."""
    return {k: v for k, v in summary.items()
            if isinstance(v, (int, float)) and not isinstance(v, bool) and not k.endswith("_s")}


def _raw_sources(config) -> list[DatasetRef]:
    """A first stage's configured sources (curate's ``sources``) as datasets."""
    refs = []
    for src in getattr(config, "sources", None) or ():
        if not hasattr(src, "model_dump"):  # e.g. the tokenizer's list of branch names: not a source
            continue
        spec = src.model_dump(mode="json")
        if not isinstance(spec, dict) or "type" not in spec:
            continue
        path = spec.get("path")
        name = f"{spec.get('type', 'source')}:{Path(path).name}" if path else f"{spec.get('type', 'source')}-sources"
        digest = hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:12]
        refs.append(DatasetRef(name, digest, path or spec.get("type", "local"), {}))
    return refs


def _execute_remote(job: StageJob) -> dict:
    return execute(job)


def _unwrap(e: BaseException) -> str:
    """The stage's own message out of Ray's error wrapping."""
    cause = getattr(e, "cause", None)
    if isinstance(cause, StageFailed):
        return cause.cause
    if isinstance(e, StageFailed):
        return e.cause
    text = str(e).strip().splitlines()
    return text[-1] if text else type(e).__name__


_GIT: str | None = None


def git_commit() -> str:
    """The code version for run tags. Under `ray job submit` the working dir arrives without
    .git, so a submitter can pass it: ``--runtime-env-json '{"env_vars": {"WHALE_GIT_COMMIT": ...}}'``."""
    global _GIT
    if _GIT is None and os.environ.get("WHALE_GIT_COMMIT"):
        _GIT = os.environ["WHALE_GIT_COMMIT"]
    if _GIT is None:
        try:
            _GIT = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=PROJECT_ROOT, text=True,
                                  capture_output=True, timeout=5).stdout.strip() or "unknown"
            dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=PROJECT_ROOT,
                                   text=True, capture_output=True, timeout=5).stdout.strip()
            if dirty and _GIT != "unknown":
                _GIT += "-dirty"
        except (OSError, subprocess.SubprocessError):
            _GIT = "unknown"
    return _GIT
