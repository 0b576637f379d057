"""A seeded train / held-out problem split, disjoint by construction and checked by n-gram overlap."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from pydantic import BaseModel, ConfigDict, Field

from stages.common.problems import arithmetic, code_bank, countdown, gym, linear
from stages.common.problems.arithmetic import ArithmeticConfig
from stages.common.problems.base import Problem, rng_for
from stages.common.problems.code_bank import CodeConfig
from stages.common.problems.countdown import CountdownConfig
from stages.common.problems.gym import GymConfig
from stages.common.problems.linear import LinearConfig
from stages.common.problems.overlap import NgramIndex, OverlapReport, overlap_report

log = logging.getLogger(__name__)


class HeldOutLeak(ValueError):
    """The held-out set overlaps the training set beyond the configured threshold."""


class ProblemSupplyError(ValueError):
    """A generator cannot produce as many distinct problems as the config asks for."""


class ProblemsConfig(BaseModel):
    """Which problems to generate and how to split them. A kind set to null is off."""

    model_config = ConfigDict(extra="forbid")

    n_train: int = Field(2000, ge=0)
    n_heldout: int = Field(200, ge=0)
    arithmetic: ArithmeticConfig | None = Field(default_factory=ArithmeticConfig)
    linear: LinearConfig | None = Field(default_factory=LinearConfig)
    countdown: CountdownConfig | None = Field(default_factory=CountdownConfig)
    code: CodeConfig | None = Field(default_factory=CodeConfig)
    gym: GymConfig | None = None        # reasoning-gym task mix (stages/common/problems/gym.py)
    # code problems are split by family; None: a seeded `heldout_code_share` of the families
    heldout_code_families: list[str] | None = None
    heldout_code_share: float = Field(0.25, gt=0, lt=1)
    # contamination check: a held-out question may share at most this share of its word
    # n-grams with any single train question (train candidates at or above it are skipped)
    ngram_n: int = Field(8, ge=1, le=50)
    max_overlap: float = Field(0.8, gt=0, le=1)

    def kinds(self) -> dict[str, float]:
        return {k: getattr(self, k).weight for k in ("arithmetic", "linear", "countdown", "code", "gym")
                if getattr(self, k) is not None and getattr(self, k).weight > 0}


@dataclass
class Split:
    train: list[Problem]
    heldout: list[Problem]
    overlap: OverlapReport
    stats: dict = field(default_factory=dict)


def allocate(total: int, weights: dict[str, float]) -> dict[str, int]:
    """Split ``total`` by weight with the largest-remainder method (sums exactly to total)."""
    if not weights or total == 0:
        return {k: 0 for k in weights}
    wsum = sum(weights.values())
    raw = {k: total * w / wsum for k, w in weights.items()}
    out = {k: int(v) for k, v in raw.items()}
    for k in sorted(raw, key=lambda k: (out[k] - raw[k], k))[: total - sum(out.values())]:
        out[k] += 1
    return out


def code_family_split(cfg: ProblemsConfig, seed: int) -> tuple[list[str], list[str]]:
    names = cfg.code.families or [f.name for f in code_bank.FAMILIES]
    if cfg.heldout_code_families is not None:
        unknown = sorted(set(cfg.heldout_code_families) - set(names))
        if unknown:
            raise ValueError(f"heldout_code_families {unknown} are not among the code families {names}")
        held = list(cfg.heldout_code_families)
    else:
        k = max(1, round(cfg.heldout_code_share * len(names)))
        held = sorted(rng_for(seed, "code-families").sample(sorted(names), k))
    train = [n for n in names if n not in held]
    if not train or not held:
        raise ValueError("code problems need at least one train and one held-out family")
    return train, held


def _stream(cfg: ProblemsConfig, kind: str, seed: int, part: str, families: list[str] | None) -> Iterator[Problem]:
    rng = rng_for(seed, part, kind)
    if kind == "code":
        return code_bank.generate(cfg.code, rng, families)
    return {"arithmetic": arithmetic.generate, "linear": linear.generate, "countdown": countdown.generate,
            "gym": gym.generate}[kind](getattr(cfg, kind), rng)


def _take(stream: Iterator[Problem], want: int, accept: Callable[[Problem], str | None], kind: str,
          part: str, skipped: dict[str, int]) -> list[Problem]:
    """Pull ``want`` accepted problems; ``accept`` returns None or the reason to skip one."""
    out: list[Problem] = []
    misses = 0
    budget = 200 + 50 * want  # consecutive rejections before we call the space exhausted
    for p in stream:
        if len(out) >= want:
            break
        reason = accept(p)
        if reason is None:
            out.append(p)
            misses = 0
            continue
        skipped[reason] = skipped.get(reason, 0) + 1
        misses += 1
        if misses > budget:
            break
    if len(out) < want:
        raise ProblemSupplyError(
            f"{kind}: asked for {want} {part} problems but only {len(out)} distinct ones could be generated "
            f"(skipped: {skipped}); lower its weight or n_{part}, or widen its ranges")
    return out


def build_split(cfg: ProblemsConfig, seed: int) -> Split:
    """Held-out first (its own seeded streams), then train avoiding held-out ids and near-duplicates."""
    weights = cfg.kinds()
    if not weights:
        raise ValueError("problems: every kind is off (null or weight 0)")
    n_held, n_train = allocate(cfg.n_heldout, weights), allocate(cfg.n_train, weights)
    fam_train, fam_held = code_family_split(cfg, seed) if "code" in weights else (None, None)

    heldout: list[Problem] = []
    held_ids: set[str] = set()
    skipped_h: dict[str, int] = {}
    for kind in weights:
        def accept_h(p: Problem) -> str | None:
            if p.id in held_ids:
                return "duplicate"
            held_ids.add(p.id)
            return None
        heldout += _take(_stream(cfg, kind, seed, "heldout", fam_held), n_held[kind], accept_h, kind,
                         "heldout", skipped_h)

    held_index = NgramIndex([p.question for p in heldout], cfg.ngram_n)
    train: list[Problem] = []
    train_ids: set[str] = set()
    skipped_t: dict[str, int] = {}
    for kind in weights:
        def accept_t(p: Problem) -> str | None:
            if p.id in held_ids:
                return "in_heldout"
            if p.id in train_ids:
                return "duplicate"
            # decontaminate train against held-out (never the other way round)
            if any(share >= cfg.max_overlap for share in held_index.containment_of_reference(p.question).values()):
                return "near_heldout"
            train_ids.add(p.id)
            return None
        train += _take(_stream(cfg, kind, seed, "train", fam_train), n_train[kind], accept_t, kind, "train",
                       skipped_t)

    order = rng_for(seed, "order")
    order.shuffle(heldout)
    order.shuffle(train)
    report = check_disjoint(heldout, train, cfg.ngram_n, cfg.max_overlap)
    stats = {"n_train": len(train), "n_heldout": len(heldout), "train_by_kind": n_train,
             "heldout_by_kind": n_held, "skipped_train": skipped_t, "skipped_heldout": skipped_h,
             "code_heldout_families": fam_held, "overlap": report.as_dict()}
    log.info("problems: %d train, %d held-out, max %d-gram overlap %.3f", len(train), len(heldout),
             cfg.ngram_n, report.max_overlap)
    return Split(train, heldout, report, stats)


def check_disjoint(heldout: list[Problem], train: list[Problem], n: int, max_overlap: float) -> OverlapReport:
    """Raise HeldOutLeak unless no held-out id is in train and every overlap is below the threshold."""
    shared_ids = {p.id for p in heldout} & {p.id for p in train}
    if shared_ids:
        raise HeldOutLeak(f"{len(shared_ids)} held-out problems are also in train, e.g. {sorted(shared_ids)[:3]}")
    report = overlap_report([(p.id, p.question) for p in heldout], [(p.id, p.question) for p in train], n)
    if report.max_overlap >= max_overlap:
        raise HeldOutLeak(
            f"held-out problem {report.worst_heldout} shares {report.max_overlap:.0%} of its {n}-grams with train "
            f"problem {report.worst_train} (threshold {max_overlap:.0%}): the held-out set leaks")
    return report
