"""What a person sees: live stage progress and the final table."""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field

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


class LiveProgress:
    """One spinner line per running stage; plain log lines when not on a terminal."""

    def __init__(self):
        self.interactive = console.is_terminal
        self.progress = Progress(SpinnerColumn(), TextColumn("[bold]{task.description}"),
                                 TimeElapsedColumn(), console=console, transient=True,
                                 redirect_stdout=True, redirect_stderr=True,
                                 disable=not self.interactive)
        self.tasks: dict[str, int] = {}
        self.started: dict[str, float] = {}

    def __enter__(self):
        self.progress.__enter__()
        return self

    def __exit__(self, *exc):
        self.progress.__exit__(*exc)

    def start(self, name: str, detail: str = "") -> None:
        self.started[name] = time.time()
        self.tasks[name] = self.progress.add_task(escape(f"{name} {detail}".strip()), total=None)
        console.print(f"[blue]▶[/] {name} started {escape(detail)}".rstrip())
        sys.stdout.flush()

    def finish(self, name: str, status: str, note: str = "") -> None:
        if name in self.tasks:
            self.progress.remove_task(self.tasks.pop(name))
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
