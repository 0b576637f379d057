"""The deploy gate: each rule checks one metric against an absolute floor, the base model, the
unigram baseline and the champion.

    decision = decide(rules, candidate, champion, base=base, paired=paired, unigram=unigram)
    decision.passed, decision.failures, decision.checks

Rules are evaluated in the metric's direction (``GateRule.higher_is_better``): for a
higher-is-better metric the floor is a minimum and the regression is ``champion - candidate``; for
a lower-is-better one (bits per byte) the floor is a maximum and the regression is
``candidate - champion``. A NaN never passes. With no champion the champion checks are skipped
(reported, not held). ``paired`` holds, per (metric, "base" | "champion"), the paired difference
(candidate - other) and its 95 % interval, computed on the same problems and seeds. A comparison
whose two sides are both 0 is uninformative: it never counts as held, and a gain check on it fails.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field

from stages.eval.config import GateRule


@dataclass
class Check:
    metric: str
    kind: str                 # floor | regression | measured | vs_base | gain | unigram
    status: str               # pass | fail | skipped | uninformative
    candidate: float | None
    reference: float | None   # the floor, the base's, the unigram model's or the champion's value
    detail: str
    informative: bool = True  # False: both sides 0 (or identical by construction): it proves nothing

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

    @property
    def uninformative(self) -> list[Check]:
        return [c for c in self.checks if not c.informative]

    def _waived(self, c: Check) -> bool:
        return self.allow_regression and c.kind == "regression"

    @property
    def passed(self) -> bool:
        return not self.failures

    @property
    def verdict(self) -> str:
        return "pass" if self.passed else "fail"

    def message(self) -> str:
        unclear = ("; uninformative (not counted): " + ", ".join(sorted({f"{c.metric} ({c.kind})"
                                                                          for c in self.uninformative}))
                   if self.uninformative else "")
        if self.passed:
            extra = f" ({len(self.waived)} regression(s) allowed: " + "; ".join(c.detail for c in self.waived) + ")" \
                if self.waived else ""
            return f"gate passed: {sum(c.status == 'pass' for c in self.checks)} check(s) held{extra}{unclear}"
        return "gate failed: " + "; ".join(c.detail for c in self.failures) + unclear


def _fmt(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.4g}"


def _nan(v) -> bool:
    return v is None or (isinstance(v, float) and math.isnan(v))


def _both_zero(a: float | None, b: float | None) -> bool:
    return a is not None and b is not None and a == 0 and b == 0


def check_rule(rule: GateRule, candidate: Mapping[str, float], champion: Mapping[str, float] | None,
               missing_reason: Mapping[str, str] | None = None, *, base: Mapping[str, float] | None = None,
               paired: Mapping[tuple[str, str], tuple[float, float, float]] | None = None,
               unigram: Mapping[str, float] | None = None) -> list[Check]:
    m, higher = rule.metric, rule.higher_is_better
    value = candidate.get(m)
    paired = paired or {}
    out: list[Check] = []
    if _nan(value):
        why = "is NaN" if value is not None else f"was not measured ({(missing_reason or {}).get(m, 'no such metric')})"
        status = "fail" if (value is not None or rule.required) else "skipped"
        # its own kind: allowing regressions must never wave an unmeasured metric through
        out.append(Check(m, "measured", status, value, None, f"{m} {why}"))
        return out
    better = "higher" if higher else "lower"
    if rule.floor is not None:
        ok = value >= rule.floor if higher else value <= rule.floor
        sign = ">=" if higher else "<="
        out.append(Check(m, "floor", "pass" if ok else "fail", value, rule.floor,
                         f"{m} = {_fmt(value)} {'meets' if ok else 'misses'} the floor {sign} {_fmt(rule.floor)}"))
    if rule.below_unigram:
        ref = (unigram or {}).get(m)
        if _nan(ref):
            out.append(Check(m, "unigram", "fail" if rule.required else "skipped", value, None,
                             f"{m}: no unigram baseline was measured"))
        else:
            ok = value < ref
            out.append(Check(m, "unigram", "pass" if ok else "fail", value, ref,
                             f"{m} = {_fmt(value)} {'below' if ok else 'NOT below'} the unigram baseline {_fmt(ref)}"))
    if rule.needs_base:
        ref = None if base is None else base.get(m)
        if _nan(ref):
            out.append(Check(m, "vs_base", "fail" if rule.required else "skipped", value, None,
                             f"{m}: the base model was not measured"))
        else:
            if rule.base_tolerance is not None:
                limit = ref * (1 + rule.base_tolerance) if not higher else ref * (1 - rule.base_tolerance)
                ok = value <= limit if not higher else value >= limit
                informative = not _both_zero(value, ref)
                status = ("pass" if ok else "fail") if informative else "uninformative"
                out.append(Check(m, "vs_base", status, value, ref,
                                 f"{m} = {_fmt(value)} vs base {_fmt(ref)} ({value / ref if ref else math.nan:.3f}x; "
                                 f"allowed {'<=' if not higher else '>='} {_fmt(limit)}, {rule.base_tolerance:.0%})",
                                 informative))
            if rule.gain_over_base:
                diff, lo, hi = paired.get((m, "base"), (value - ref, math.nan, math.nan))
                informative = not _both_zero(value, ref)
                clear = (lo > 0 if higher else hi < 0) if not _nan(lo) else False
                out.append(Check(m, "gain", "pass" if clear and informative else "fail", value, ref,
                                 f"{m} = {_fmt(value)} vs base {_fmt(ref)}: gain {_fmt(diff)}, 95% CI "
                                 f"[{_fmt(lo)}, {_fmt(hi)}] " + (
                                     "(0 on both sides: uninformative, no gain shown)" if not informative else
                                     "excludes 0: a clear gain" if clear else
                                     f"does not show a {better} value: the gain is not distinguishable from noise"),
                                 informative))
    if rule.max_regression is not None or rule.regression_test == "ci":
        ref = (champion or {}).get(m)
        if champion is None:
            out.append(Check(m, "regression", "skipped", value, None, f"{m}: no champion to compare with"))
        elif _nan(ref):
            out.append(Check(m, "regression", "skipped", value, ref, f"{m}: the champion has no value to compare with"))
        elif _both_zero(value, ref):
            out.append(Check(m, "regression", "uninformative", value, ref,
                             f"{m}: 0 for candidate and champion: uninformative", False))
        else:
            worse_by = (ref - value) if higher else (value - ref)
            if rule.regression_test == "ci" and (m, "champion") in paired:
                diff, lo, hi = paired[(m, "champion")]
                ok = not (hi < 0 if higher else lo > 0)
                detail = (f"{m} = {_fmt(value)} vs champion {_fmt(ref)} (difference {_fmt(diff)}, 95% CI "
                          f"[{_fmt(lo)}, {_fmt(hi)}]: {'within noise or better' if ok else 'worse beyond noise'})")
            else:
                allowed = rule.max_regression if rule.max_regression is not None else 0.0
                ok = worse_by <= allowed + 1e-12
                detail = (f"{m} = {_fmt(value)} vs champion {_fmt(ref)} "
                          f"({'worse' if worse_by > 0 else 'not worse'} by {_fmt(abs(worse_by))}; "
                          f"allowed {_fmt(allowed)})")
            out.append(Check(m, "regression", "pass" if ok else "fail", value, ref, detail))
    return out


def decide(rules: Sequence[GateRule], candidate: Mapping[str, float], champion: Mapping[str, float] | None,
           *, allow_regression: bool = False, missing_reason: Mapping[str, str] | None = None,
           base: Mapping[str, float] | None = None,
           paired: Mapping[tuple[str, str], tuple[float, float, float]] | None = None,
           unigram: Mapping[str, float] | None = None) -> Decision:
    d = Decision(allow_regression=allow_regression)
    for rule in rules:
        d.checks.extend(check_rule(rule, candidate, champion, missing_reason, base=base, paired=paired,
                                   unigram=unigram))
    return d
