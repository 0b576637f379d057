"""``python -m pipeline`` / ``whale``: run, status, ui; and ``stage_main`` for ``python -m stages.X``."""

from __future__ import annotations

import argparse
import os
import signal
import sys
import time
from pathlib import Path

from rich.markup import escape

from pipeline import dag as dagmod
from pipeline.config import ConfigError, PipelineConfig, load_config
from pipeline.console import console
from pipeline.dag import Dag, DagError
from pipeline.storage import Storage, cache_dir

EXIT_CONFIG = 2
EXIT_FAILED = 1


def _stages():
    from pipeline.registry import load_stages

    return load_stages()


def _load(args) -> tuple[PipelineConfig, list]:
    stages = _stages()
    return load_config(args.config, stages, overrides=args.set or []), stages


def _tracking_state_dir(cfg: PipelineConfig) -> Path:
    storage = Storage(cfg.globals.output_root)
    return storage.local_path("mlflow") if not storage.remote else cache_dir() / "mlflow"


def _tracking(cfg: PipelineConfig, keep: bool):
    from pipeline.mlflow_server import resolve

    server = resolve(cfg.globals.tracking.uri, _tracking_state_dir(cfg), keep=keep or cfg.globals.tracking.keep_server)
    os.environ["MLFLOW_TRACKING_URI"] = server.uri
    return server


# -- commands ----------------------------------------------------------------------------

def cmd_run(args) -> int:
    from pipeline import ray_runtime
    from pipeline.runner import PipelineFailed, Runner, select

    cfg, stages = _load(args)
    # decide what runs (and fail on unknown stages or missing upstream) before starting anything
    selection = select(Dag(stages, cfg), Storage(cfg.globals.output_root), args.only or [], args.from_,
                       args.force or [])
    from pipeline.console import quiet_driver

    driver_log = None if args.verbose else quiet_driver(cfg.globals.output_root)
    server = _tracking(cfg, keep=args.keep_server)
    started_ray = ray_runtime.connect(cfg.globals.ray, verbose=args.verbose)
    import ray

    console.print(f"Ray: {ray_runtime.cluster_summary()}" + (f" · driver log {driver_log}" if driver_log else ""))
    runner = Runner(cfg, stages, server.uri, verbose=args.verbose)
    try:
        results = runner.run(selection)
    except PipelineFailed:
        return EXIT_FAILED
    live = [r for r in results if r.status == "ran" and runner.dag.stages[r.name].always_run]
    if live and started_ray and not args.no_block:
        # The Ray cluster (and the Serve deployment on it) lives in this process.
        console.print("[bold]Serving.[/] Press Ctrl-C to stop.")
        if server.started_here:
            console.print(f"MLflow UI: {server.uri}")
        _block_until_interrupted()
    if started_ray:
        ray.shutdown()
    return 0


def cmd_status(args) -> int:
    cfg, stages = _load(args)
    dag = Dag(stages, cfg)
    storage = Storage(cfg.globals.output_root)
    from rich.table import Table

    t = Table(title=f"Whale · {cfg.name} · {storage.root}", title_justify="left")
    for col in ("stage", "fingerprint", "state", "upstream", "location"):
        t.add_column(col, overflow="fold")
    style = {"cached": "green", "failed": "bold red", "incomplete": "yellow", "missing": "dim"}
    for node in dag:
        st = dagmod.state(storage, node)
        t.add_row(node.name, node.fingerprint, f"[{style[st]}]{st}[/]", ", ".join(node.stage.upstream) or "-",
                  storage.uri(node.name, node.fingerprint))
    console.print(t)
    return 0


def cmd_ui(args) -> int:
    from pipeline.mlflow_server import find_local, runs_url

    if args.config:
        cfg, _ = _load(args)
        state_dir, configured = _tracking_state_dir(cfg), cfg.globals.tracking.uri
        name = cfg.name
    else:
        state_dir, configured, name = Path(args.output_root) / "mlflow", None, None
    if args.stop:
        running = find_local(state_dir)
        if running:
            running.stop()
            console.print(f"stopped MLflow server {running.uri}")
        else:
            console.print("no MLflow server running for this output root")
        return 0
    from pipeline.mlflow_server import resolve

    server = resolve(configured, state_dir, keep=True)
    console.print(f"MLflow UI: {server.uri}" + (" (started)" if server.started_here else " (already running)"))
    if name:
        from mlflow import MlflowClient

        exp = MlflowClient(server.uri).get_experiment_by_name(name)
        if exp:
            console.print(f"Runs of {name}: {runs_url(server.uri, exp.experiment_id)}")
    if server.started_here:
        console.print(f"Stop it with: python -m pipeline ui --stop{' ' + args.config if args.config else ''}")
    return 0


def _block_until_interrupted() -> None:
    stop = False

    def handler(*_):
        nonlocal stop
        stop = True

    signal.signal(signal.SIGTERM, handler)
    try:
        while not stop:
            time.sleep(1)
    except KeyboardInterrupt:
        pass


# -- parser ------------------------------------------------------------------------------

def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="whale", description="Whale: raw text to a served MoE chat model.")
    sub = p.add_subparsers(dest="command", required=True)

    def with_config(sp, required=True):
        sp.add_argument("config", nargs=None if required else "?", help="pipeline YAML (e.g. configs/tiny.yaml)")
        sp.add_argument("--set", action="append", metavar="KEY.PATH=VALUE",
                        help="override a config value (repeatable), e.g. --set pretrain.steps=50")

    r = sub.add_parser("run", help="run the stage DAG (cached stages are reused)")
    with_config(r)
    r.add_argument("--only", action="append", metavar="STAGE", help="run just this stage (repeatable)")
    r.add_argument("--from", dest="from_", metavar="STAGE", help="rerun this stage and everything after it")
    r.add_argument("--force", action="append", metavar="STAGE",
                   help="rerun this stage even if cached ('all' for every stage)")
    r.add_argument("--keep-server", action="store_true", help="leave the local MLflow server running at exit")
    r.add_argument("--no-block", action="store_true", help="exit after deploying instead of serving until Ctrl-C")
    r.add_argument("--verbose", action="store_true",
                   help="show Ray's, MLflow's and the stages' framework output on the console (default: "
                        "each stage's log file, <output>/<stage>.log)")
    r.set_defaults(func=cmd_run)

    s = sub.add_parser("status", help="each stage's fingerprint and whether its output is cached")
    with_config(s)
    s.set_defaults(func=cmd_status)

    u = sub.add_parser("ui", help="start (or find) the MLflow tracking server and print its URL")
    with_config(u, required=False)
    u.add_argument("--output-root", default="outputs", help="output root when no config is given")
    u.add_argument("--stop", action="store_true", help="stop the server started for this output root")
    u.set_defaults(func=cmd_ui)

    _add_extra_commands(sub, with_config)
    return p


def _add_extra_commands(sub, with_config) -> None:
    """Commands owned by other modules register here (e.g. ``plan``)."""
    try:
        from pipeline import plan
    except ImportError:
        return
    plan.add_command(sub, with_config)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (ConfigError, DagError) as e:
        console.print(f"[bold red]error:[/] {escape(str(e))}")
        return EXIT_CONFIG


# -- one stage alone ---------------------------------------------------------------------

def stage_main(name: str, argv: list[str] | None = None, extra_args=None) -> None:
    """``python -m stages.<name> --config CONFIG [--set ...]``: one stage, locally, reusing the
    cached outputs of the stages before it, logged as its own top-level MLflow run.

    ``extra_args(parser)`` may add stage flags and must return a function mapping the parsed
    args to extra ``--set`` overrides (e.g. serve's ``--model`` -> ``serve.model=...``).
    """
    p = argparse.ArgumentParser(prog=f"python -m stages.{name}", description=f"Run the {name} stage alone.")
    p.add_argument("--config", required=True, help="pipeline YAML (e.g. configs/tiny.yaml)")
    p.add_argument("--set", action="append", metavar="KEY.PATH=VALUE", help="override a config value")
    p.add_argument("--keep-server", action="store_true", help="leave the local MLflow server running at exit")
    to_overrides = extra_args(p) if extra_args else None
    args = p.parse_args(argv)
    overrides = list(args.set or []) + (to_overrides(args) if to_overrides else [])
    sys.exit(_run_stage_alone(name, args.config, overrides, args.keep_server))


def _run_stage_alone(name: str, config_path: str, overrides: list[str], keep_server: bool) -> int:
    from pipeline import ray_runtime
    from pipeline.executor import StageFailed, StageJob, execute
    from pipeline.runner import git_commit

    try:
        stages = _stages()
        cfg = load_config(config_path, stages, overrides)
        dag = Dag(stages, cfg)
        node = dag[name]
        storage = Storage(cfg.globals.output_root)
        for up in node.stage.upstream if node.stage.reads_upstream else ():
            if dagmod.state(storage, dag[up]) != "cached":
                raise DagError(f"stage {name!r} needs the output of upstream stage {up!r}, which is not "
                               f"cached at {storage.uri(up, dag[up].fingerprint)}; run it first: "
                               f"python -m stages.{up} --config {config_path} (or python -m pipeline run "
                               f"{config_path} --only {up})")
    except (ConfigError, DagError) as e:
        console.print(f"[bold red]error:[/] {escape(str(e))}")
        return EXIT_CONFIG
    server = _tracking(cfg, keep=keep_server)
    from mlflow import MlflowClient

    client = MlflowClient(server.uri)
    exp = client.get_experiment_by_name(cfg.name)
    exp_id = exp.experiment_id if exp else client.create_experiment(cfg.name)
    run = client.create_run(exp_id, run_name=f"{name} (alone)", tags={
        "whale.stage": name, "whale.fingerprint": node.fingerprint, "whale.cached": "false",
        "cached": "false", "whale.kind": "stage-alone", "whale.git_commit": git_commit()})
    from pipeline.tracking import Tracker, flatten

    Tracker(run.info.run_id, server.uri).log_params(flatten(node.config.model_dump(mode="json")))
    started_ray = ray_runtime.connect(cfg.globals.ray)
    job = StageJob(stage=node.stage, config=node.config, pipeline=cfg.globals, fingerprint=node.fingerprint,
                   output_root=storage.root, upstream=dag.inputs(name, storage),
                   tracking_uri=server.uri, run_id=run.info.run_id)
    console.print(f"[blue]▶[/] {name} [{node.fingerprint}] → {storage.uri(name, node.fingerprint)}")
    try:
        manifest = execute(job)
    except StageFailed as e:
        console.print(f"[bold red]✗ stage {name!r} failed:[/] {escape(e.cause)}")
        console.print(f"  traceback: {storage.uri(name, node.fingerprint, dagmod.FAILED)}")
        return EXIT_FAILED
    except KeyboardInterrupt:
        console.print(f"[yellow]interrupted; rerun the same command to start {name} again[/]")
        return 130
    console.print(f"[green]✓ {name}[/] in {manifest['timings']['wall_s']:.1f}s · {manifest['summary']}")
    if node.stage.always_run and started_ray:
        console.print("[bold]Serving.[/] Press Ctrl-C to stop.")
        _block_until_interrupted()
    return 0
