"""The candidate-vs-champion table: one row per metric, with its suite, direction and gate status."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

from stages.eval.config import better_direction
from stages.eval.gate import Check

SUITE_NAMES = {"lm": "language_modelling", "reasoning": "reasoning", "humaneval": "humaneval",
               "lm_eval": "harness"}


def _num(v) -> float | None:
    return None if v is None or (isinstance(v, float) and math.isnan(v)) else float(v)


def rows(candidate: Mapping[str, float], champion: Mapping[str, float] | None,
         checks: Sequence[Check] = (), base: Mapping[str, float] | None = None) -> list[dict]:
    gate_status: dict[str, list[str]] = {}
    for c in checks:
        gate_status.setdefault(c.metric, []).append(f"{c.kind}:{c.status}")
    out = []
    for metric in sorted(set(candidate) | set(champion or {})):
        cand, champ = _num(candidate.get(metric)), _num((champion or {}).get(metric))
        delta = cand - champ if cand is not None and champ is not None else None
        out.append({"suite": SUITE_NAMES.get(metric.split("/", 1)[0], "other"), "metric": metric,
                    "better": better_direction(metric) or "-",
                    "candidate": cand, "champion": champ, "delta": delta, "base": _num((base or {}).get(metric)),
                    "gate": ", ".join(gate_status.get(metric, [])) or "-"})
    return out


def markdown(table: Sequence[dict], candidate_label: str, champion_label: str | None) -> str:
    def f(v):
        return "-" if v is None else f"{v:.4g}"

    lines = [f"| suite | metric | better | candidate ({candidate_label}) | champion ({champion_label or 'none'}) "
             f"| delta | base | gate |", "| --- | --- | --- | ---: | ---: | ---: | ---: | --- |"]
    for r in table:
        lines.append(f"| {r['suite']} | {r['metric']} | {r['better']} | {f(r['candidate'])} | {f(r['champion'])} "
                     f"| {f(r['delta'])} | {f(r.get('base'))} | {r['gate']} |")
    return "\n".join(lines) + "\n"
