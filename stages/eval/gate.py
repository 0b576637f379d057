"""The deploy gate: each rule checks one metric against an absolute floor and against the champion.

    decision = decide(rules, candidate_metrics, champion_metrics, allow_regression=False)
    decision.passed, decision.failures, decision.rows

Rules are evaluated in the metric's direction (``GateRule.higher_is_better``): for a
higher-is-better metric the floor is a minimum and the regression is ``champion - candidate``; for
a lower-is-better one (bits per byte) the floor is a maximum and the regression is
``candidate - champion``. A NaN never passes. With no champion only the floors apply.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field

from stages.eval.config import GateRule


@dataclass
class Check:
    metric: str
    kind: str                 # floor | regression | measured
    status: str               # pass | fail | skipped
    candidate: float | None
    reference: float | None   # the floor, or the champion's value
    detail: str

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class Decision:
    checks: list[Check] = field(default_factory=list)
    allow_regression: bool = False

    @property
    def failures(self) -> list[Check]:
        return [c for c in self.checks if c.status == "fail" and not self._waived(c)]

    @property
    def waived(self) -> list[Check]:
        """Regressions that failed but did not block, because regressions were allowed."""
        return [c for c in self.checks if c.status == "fail" and self._waived(c)]

    def _waived(self, c: Check) -> bool:
        return self.allow_regression and c.kind == "regression"

    @property
    def passed(self) -> bool:
        return not self.failures

    @property
    def verdict(self) -> str:
        return "pass" if self.passed else "fail"

    def message(self) -> str:
        if self.passed:
            extra = f" ({len(self.waived)} regression(s) allowed: " + "; ".join(c.detail for c in self.waived) + ")" \
                if self.waived else ""
            return f"gate passed: {sum(c.status == 'pass' for c in self.checks)} check(s) held{extra}"
        return "gate failed: " + "; ".join(c.detail for c in self.failures)


def _fmt(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.4g}"


def check_rule(rule: GateRule, candidate: Mapping[str, float], champion: Mapping[str, float] | None,
               missing_reason: Mapping[str, str] | None = None) -> list[Check]:
    m, higher = rule.metric, rule.higher_is_better
    value = candidate.get(m)
    out: list[Check] = []
    if value is None or (isinstance(value, float) and math.isnan(value)):
        why = "is NaN" if value is not None else f"was not measured ({(missing_reason or {}).get(m, 'no such metric')})"
        status = "fail" if (value is not None or rule.required) else "skipped"
        # its own kind: allowing regressions must never wave an unmeasured metric through
        out.append(Check(m, "measured", status, value, None, f"{m} {why}"))
        return out
    if rule.floor is not None:
        ok = value >= rule.floor if higher else value <= rule.floor
        sign = ">=" if higher else "<="
        out.append(Check(m, "floor", "pass" if ok else "fail", value, rule.floor,
                         f"{m} = {_fmt(value)} {'meets' if ok else 'misses'} the floor {sign} {_fmt(rule.floor)}"))
    if rule.max_regression is not None:
        ref = (champion or {}).get(m)
        if champion is None:
            out.append(Check(m, "regression", "skipped", value, None, f"{m}: no champion to compare with"))
        elif ref is None or (isinstance(ref, float) and math.isnan(ref)):
            out.append(Check(m, "regression", "skipped", value, ref, f"{m}: the champion has no value to compare with"))
        else:
            worse_by = (ref - value) if higher else (value - ref)
            ok = worse_by <= rule.max_regression + 1e-12
            out.append(Check(m, "regression", "pass" if ok else "fail", value, ref,
                             f"{m} = {_fmt(value)} vs champion {_fmt(ref)} "
                             f"({'worse' if worse_by > 0 else 'not worse'} by {_fmt(abs(worse_by))}; "
                             f"allowed {_fmt(rule.max_regression)})"))
    return out


def decide(rules: Sequence[GateRule], candidate: Mapping[str, float], champion: Mapping[str, float] | None,
           *, allow_regression: bool = False, missing_reason: Mapping[str, str] | None = None) -> Decision:
    d = Decision(allow_regression=allow_regression)
    for rule in rules:
        d.checks.extend(check_rule(rule, candidate, champion, missing_reason))
    return d
