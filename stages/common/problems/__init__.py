"""Verifiable problem generators (arithmetic, linear equations, countdown, Python functions).

    split = build_split(ProblemsConfig(n_train=1000, n_heldout=100), seed=0)
    split.train[0].prompt, split.train[0].answer, split.overlap.max_overlap

Every problem is deterministic given the seed, carries a stable id, the prompt, a canonical
answer and the data its verifier needs (stages.common.verify). Shared by distill (training
traces) and eval (held-out reasoning suite).
"""

from stages.common.problems.base import (
                                         BOXED_INSTRUCTION,
                                         CODE_INSTRUCTION,
                                         KINDS,
                                         Problem,
                                         make_problem,
                                         read_problems,
                                         rng_for,
                                         stable_hash,
                                         write_problems,
)
from stages.common.problems.overlap import OverlapReport, ngrams, overlap_report
from stages.common.problems.split import (
                                         HeldOutLeak,
                                         ProblemsConfig,
                                         ProblemSupplyError,
                                         Split,
                                         allocate,
                                         build_split,
                                         check_disjoint,
)

__all__ = ["BOXED_INSTRUCTION", "CODE_INSTRUCTION", "KINDS", "Problem", "make_problem", "read_problems",
           "write_problems", "rng_for",
           "stable_hash", "OverlapReport", "ngrams", "overlap_report", "HeldOutLeak", "ProblemsConfig",
           "ProblemSupplyError", "Split", "allocate", "build_split", "check_disjoint"]
