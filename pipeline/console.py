"""What a person sees: live stage progress and the final table."""

from __future__ import annotations

import contextlib
import os
import re
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from rich.console import Console
from rich.markup import escape
from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
from rich.table import Table

console = Console(highlight=False, stderr=False)
if not console.is_terminal:  # logs (CI, `ray job logs`): no wrapping of paths and links
    console.width = max(console.width, 200)

STATUS_STYLE = {"ran": "green", "cached": "cyan", "failed": "bold red", "skipped": "yellow",
                "interrupted": "yellow", "running": "blue"}


@dataclass
class StageResult:
    name: str
    status: str  # ran | cached | failed | skipped | interrupted
    fingerprint: str
    output: str
    wall_s: float | None = None
    key_metric: str | None = None
    key_value: object = None
    run_url: str | None = None
    run_id: str | None = None  # the MLflow run that produced the output (for cached stages: an earlier one)
    error: str | None = None
    summary: dict = field(default_factory=dict)


# -- framework output to one log file per stage -------------------------------------------------
#
# Every process a stage starts (its Ray task, Ray Train's controller and workers, datatrove's tasks,
# Serve's replicas) inherits the stage task's runtime env, hence these variables. Ray runs the setup
# hook named by its (internal, stable since 2.8) env var when a worker process starts; the hook points
# the process's stdout/stderr at the stage's log file. The driver tails that file and echoes only
# Whale's own ``[stage] ...`` lines, so the console carries no framework output at all.
STAGE_LOG_ENV = "WHALE_STAGE_LOG"
STAGE_LAUNCH_ENV = "WHALE_STAGE_LAUNCH"  # one value per launch: Ray then never reuses a worker whose
#                                          output points at the log of an earlier attempt
RAY_SETUP_HOOK_ENV = "__RAY_WORKER_PROCESS_SETUP_HOOK_ENV_VAR"  # ray_constants.WORKER_PROCESS_SETUP_HOOK_ENV_VAR


def stage_log_env(log_path: str | Path, launch_id: str) -> dict[str, str]:
    """Env vars for a stage's Ray task that send its and its children's output to ``log_path``."""
    return {STAGE_LOG_ENV: str(log_path), STAGE_LAUNCH_ENV: launch_id,
            RAY_SETUP_HOOK_ENV: f"{__name__}.redirect_to_stage_log",
            # the file gets the final line of a download, not a bar redrawn a hundred times
            "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false"}


def redirect_to_stage_log() -> str | None:
    """Append this process's stdout and stderr to the stage log named in the environment.

    At the file-descriptor level, so C++ (Ray core), subprocesses and libraries that captured
    ``sys.stderr`` early all follow. Idempotent: the executor calls it again once the stage folder
    is (re)created. Returns the path, or None outside a stage."""
    path = os.environ.get(STAGE_LOG_ENV)
    if not path:
        return None
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.close(fd)
    for stream in (sys.stdout, sys.stderr):  # lines reach the file (and the console's tail) as written
        try:
            stream.reconfigure(line_buffering=True)
        except (AttributeError, ValueError):
            pass
    return path


def quiet_driver(output_root: str) -> Path:
    """The driver's own library output (Ray's client-side warnings such as the token-auth notice,
    MLflow, Python warnings) goes to ``<output_root>/logs/driver-*.log`` (returned); the console keeps
    Whale's lines and errors."""
    import logging

    import ray  # noqa: F401 - importing Ray configures its loggers: do it first, then take them over

    from pipeline.storage import Storage, cache_dir

    storage = Storage(output_root)
    logs = cache_dir() / "logs" if storage.remote else storage.local_path("logs")
    log_path = logs / f"driver-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(log_path)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logging.captureWarnings(True)
    for name in ("", "py.warnings", "ray", "mlflow", "alembic", "urllib3", "filelock", "datatrove"):
        logger = logging.getLogger(name)
        logger.handlers = [handler]
        logger.propagate = False
    logging.getLogger().setLevel(logging.INFO)
    global DRIVER_LOG
    DRIVER_LOG = log_path
    return log_path


DRIVER_LOG: Path | None = None  # set by quiet_driver


@contextlib.contextmanager
def output_to_driver_log():
    """While starting Ray: stdout/stderr at the fd level to the driver log (when ``quiet_driver`` ran),
    so what Ray prints while it starts (and its long-lived helper processes later) stays off the console."""
    if DRIVER_LOG is None:
        yield
        return
    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    fd = os.open(DRIVER_LOG, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    try:
        os.dup2(fd, 1)
        os.dup2(fd, 2)
        yield
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os.dup2(saved[0], 1)
        os.dup2(saved[1], 2)
        for f in (fd, *saved):
            os.close(f)


_ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")
# "progress tick" lines: when not on a terminal these are thinned to one per PLAIN_EVERY_S
_TICK = re.compile(r"\bstep \d+/\d+|\b\d+/\d+ (?:prompts|problems|completions|docs|files)\b")
PLAIN_EVERY_S = 10.0


def whale_line(line: str, stages: set[str]) -> str | None:
    """``[stage] message`` or ``[stage/part] message`` when ``line`` is one of Whale's own lines
    (also inside a loguru record: ``2026-... | INFO | module:fn:1 - [curate/web] pass ...``)."""
    line = _ANSI.sub("", line).strip()
    m = re.match(r"(?:.*? \| [A-Z]+ +\| \S+ - )?(\[([\w-]+)(?:/[\w.-]+)*\] .*)", line)
    if m and m.group(2) in stages:
        return m.group(1)
    return None


class LogTail:
    """New complete lines of a growing file (bytes offset kept; a partial last line waits).

    A file replaced under the same name (the executor recreates the stage folder after the worker
    already wrote Ray's first lines) is noticed by its first bytes changing, and read from the start."""

    HEAD = 64

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.offset = 0
        self.partial = b""
        self.head = b""

    def lines(self) -> list[str]:
        try:
            with open(self.path, "rb") as f:
                size = f.seek(0, os.SEEK_END)
                f.seek(0)
                if size < self.offset or f.read(len(self.head)) != self.head:  # another file now
                    self.offset, self.partial, self.head = 0, b"", b""
                f.seek(self.offset)
                data = f.read(4 << 20)
                self.offset += len(data)
                if len(self.head) < self.HEAD:
                    f.seek(0)
                    self.head = f.read(min(self.HEAD, self.offset))
        except OSError:
            return []
        chunks = re.split(rb"[\r\n]", self.partial + data)
        self.partial = chunks.pop()
        return [c.decode("utf-8", "replace") for c in chunks if c.strip()]


class LiveProgress:
    """What the console shows while stages run.

    On a terminal: one spinner line per running stage (its latest ``[stage]`` line and elapsed time),
    with Whale's own lines printed above. Otherwise (CI, ``ray job logs``, a pipe): plain lines, step
    ticks thinned to one per 10 s, and a heartbeat line when a stage has been quiet for 10 s.
    ``verbose`` (frameworks print to the console themselves) turns the log tailing off.
    """

    def __init__(self, stages: set[str] | None = None, verbose: bool = False):
        self.interactive = console.is_terminal
        self.stage_names = set(stages or ())
        self.verbose = verbose
        self.progress = Progress(SpinnerColumn(), TextColumn("[bold]{task.description}"),
                                 TimeElapsedColumn(), console=console, transient=True,
                                 redirect_stdout=True, redirect_stderr=True,
                                 disable=not self.interactive)
        self.tasks: dict[str, int] = {}
        self.started: dict[str, float] = {}
        self.tails: dict[str, LogTail] = {}
        self.last_print: dict[str, float] = {}
        self.held: dict[str, str] = {}  # a thinned tick line waiting for its turn
        self.last_line: dict[str, str] = {}

    def __enter__(self):
        self.progress.__enter__()
        return self

    def __exit__(self, *exc):
        self.progress.__exit__(*exc)

    def start(self, name: str, detail: str = "", log: str | Path | None = None) -> None:
        now = time.time()
        self.started[name] = self.last_print[name] = now
        self.stage_names.add(name)
        self.tasks[name] = self.progress.add_task(escape(f"{name} {detail}".strip()), total=None)
        where = f" · log {log}" if log else ""
        console.print(f"[blue]▶[/] {name} started {escape(detail)}{escape(where)}".rstrip())
        if log and not self.verbose:
            self.tails[name] = LogTail(log)
        sys.stdout.flush()

    def poll(self) -> None:
        """Echo the running stages' new lines; heartbeats for quiet ones. Call about once a second."""
        now = time.time()
        for name in list(self.tasks):
            tail = self.tails.get(name)
            for raw in tail.lines() if tail else ():
                line = whale_line(raw, self.stage_names)
                if line and line != self.last_line.get(name):  # the same line from two ranks shows once
                    self.last_line[name] = line
                    self._show(name, line, now)
            if self.interactive:
                continue
            quiet = now - self.last_print[name]
            if name in self.held and quiet >= PLAIN_EVERY_S:
                self._print(name, self.held.pop(name), now)
            elif quiet >= PLAIN_EVERY_S:
                self._print(name, f"[{name}] … still running", now)

    def _show(self, name: str, line: str, now: float) -> None:
        if self.interactive:
            self.progress.update(self.tasks[name], description=escape(line[:150]))
            if not _TICK.search(line):
                console.print(escape(line))
            return
        if _TICK.search(line) and now - self.last_print[name] < PLAIN_EVERY_S:
            self.held[name] = line
        else:
            self.held.pop(name, None)
            self._print(name, line, now)

    def _print(self, name: str, line: str, now: float) -> None:
        elapsed = fmt_duration(now - self.started[name])
        console.print(f"{escape(line)} [dim]({elapsed})[/]", soft_wrap=True)
        self.last_print[name] = now
        sys.stdout.flush()

    def finish(self, name: str, status: str, note: str = "") -> None:
        self.poll()  # the stage's last lines before its verdict
        if name in self.tasks:
            self.progress.remove_task(self.tasks.pop(name))
        self.tails.pop(name, None)
        self.held.pop(name, None)
        wall = time.time() - self.started.get(name, time.time())
        style = STATUS_STYLE.get(status, "white")
        mark = {"ran": "✓", "cached": "↺", "failed": "✗"}.get(status, "·")
        took = f" in {fmt_duration(wall)}" if status == "ran" or status == "failed" else ""
        console.print(f"[{style}]{mark} {name} {status}{took}[/] {escape(note)}".rstrip())


def fmt_duration(s: float | None) -> str:
    if s is None:
        return "-"
    if s < 60:
        return f"{s:.1f}s"
    m, sec = divmod(int(round(s)), 60)
    return f"{m}m{sec:02d}s" if m < 60 else f"{m // 60}h{m % 60:02d}m"


def fmt_value(v: object) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return "-" if v is None else str(v)


def results_table(results: list[StageResult], title: str = "Whale pipeline") -> Table:
    t = Table(title=title, title_justify="left")
    for col in ("stage", "status", "wall", "key metric", "output", "MLflow run"):
        t.add_column(col, overflow="fold")
    for r in results:
        metric = f"{r.key_metric} = {fmt_value(r.key_value)}" if r.key_metric and r.key_value is not None else "-"
        t.add_row(r.name, f"[{STATUS_STYLE.get(r.status, 'white')}]{r.status}[/]", fmt_duration(r.wall_s),
                  metric, r.output, r.run_url or "-")
    return t
