"""The report card: every stage's headline numbers and wall time, the environment, plot links.

Written at the end of each pipeline run to ``<output_root>/runs/<parent run id>/report.md``,
logged as an artifact of the parent MLflow run, and printed. The numbers are the stages'
summaries (the same values the stage runs carry as ``summary/<key>`` metrics).
"""

from __future__ import annotations

import os
import platform
from importlib import metadata
from urllib.parse import quote

from pipeline.console import StageResult, fmt_duration, fmt_value
from pipeline.stage import Stage

PACKAGES = ("torch", "ray", "mlflow", "datatrove", "sentencepiece", "transformers", "fasttext-numpy2-wheel")


def render(name: str, results: list[StageResult], stages: dict[str, Stage], tracking_uri: str | None = None,
           parent_url: str | None = None, artifacts: dict[str, list[str]] | None = None) -> str:
    """``artifacts``: stage -> plot paths in the run that produced the stage's output."""
    lines = [f"# Whale report card · {name}", ""]
    if parent_url:
        lines += [f"MLflow parent run: {parent_url}", ""]
    lines += ["| stage | status | wall | headline |", "| --- | --- | --- | --- |"]
    for r in results:
        lines.append(f"| {r.name} | {r.status} | {fmt_duration(r.wall_s if r.status == 'ran' else None)}"
                     f" | {_headline(r, stages.get(r.name))} |")
    total = sum(r.wall_s or 0 for r in results if r.status == "ran")
    lines += ["", f"Total stage wall time this run: {fmt_duration(total)}", ""]
    for r in results:
        if r.summary and r.summary.get("gate_checks"):
            lines += _gate(r.summary)
    for r in results:
        if not r.summary:
            continue
        lines += [f"## {r.name}", ""]
        lines += [f"- {k}: {fmt_value(v)}" for k, v in r.summary.items() if not isinstance(v, (dict, list))]
        for path in (artifacts or {}).get(r.name, []):
            lines.append(f"- plot: [{path}]({artifact_url(tracking_uri, r, path)})")
        lines.append("")
    lines += ["## Environment", ""] + [f"- {k}: {v}" for k, v in environment().items()]
    return "\n".join(lines) + "\n"


def _gate(summary: dict) -> list[str]:
    """The deploy decision, each check with its numbers. Only checks that ran are listed; an
    uninformative one (0 on both sides) says so and never reads as held."""
    lines = ["## Gate", "", f"**{summary.get('gate', '?')}** ({summary.get('promoted', '')}): "
             f"{summary.get('gate_reason', '')}", "",
             "| metric | check | status | candidate | reference | detail |", "| --- | --- | --- | ---: | ---: | --- |"]
    for c in summary["gate_checks"]:
        lines.append(f"| {c['metric']} | {c['kind']} | {c['status']} | {fmt_value(c.get('candidate'))} "
                     f"| {fmt_value(c.get('reference'))} | {c['detail']} |")
    return lines + [""]


def _headline(r: StageResult, stage: Stage | None) -> str:
    if r.status not in ("ran", "cached"):
        return r.error or "-"
    keys = (stage.headline if stage and stage.headline else ()) or tuple(
        k for k, v in r.summary.items() if isinstance(v, (int, float)) and not isinstance(v, bool))[:4]
    return ", ".join(f"{k} {fmt_value(r.summary[k])}" for k in keys if k in r.summary) or "-"


def artifact_url(tracking_uri: str | None, r: StageResult, path: str) -> str:
    if not tracking_uri or not r.run_id:
        return path
    return f"{tracking_uri.rstrip('/')}/get-artifact?path={quote(path)}&run_uuid={r.run_id}"


def environment() -> dict[str, str]:
    env = {"python": platform.python_version(), "platform": platform.platform(),
           "cpu": _cpu_model(), "cpus": str(os.cpu_count()), "memory": _memory()}
    for pkg in PACKAGES:
        try:
            env[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            pass
    try:
        import torch

        env["gpu"] = (", ".join(torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count()))
                      if torch.cuda.is_available() else "none")
    except ImportError:
        pass
    return env


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _memory() -> str:
    try:
        import psutil

        return f"{psutil.virtual_memory().total / 1024**3:.1f} GiB"
    except ImportError:
        return "unknown"
