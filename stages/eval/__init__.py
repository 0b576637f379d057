"""The eval stage: benchmark the candidate model, compare it with the current champion on the
same suites and seeds, and gate what gets deployed (the registry alias ``champion`` moves to the
candidate only on a pass). See stages/eval/README.md and stages/eval/run.py.

Kept light (pydantic only): the config loader imports every stage package.
"""

from pipeline.stage import Resources, Stage
from stages.eval.config import EvalConfig

STAGE = Stage(
    name="eval",
    config=EvalConfig,
    run="stages.eval.run:run",
    upstream=("distill", "tokenizer", "pretrain"),   # pretrain: the base, when no @base alias exists
    # generation and scoring run in the orchestrating task (eval.torch_threads threads); the
    # sandboxed code checks are its subprocesses
    resources=Resources(cpus=1),
    code=("stages.eval", "stages.common.problems", "stages.common.verify", "stages.common.sandbox",
          "stages.common.evaluation", "stages.common.scoring", "model", "tokenizer"),
    key_metric="candidate/reasoning/arithmetic/greedy_pass_at_1",
    headline=("gate", "candidate/reasoning/arithmetic/greedy_pass_at_1", "base/reasoning/arithmetic/greedy_pass_at_1",
              "candidate/lm/web/bpb", "base/lm/web/bpb"),
    description="bits-per-byte, held-out reasoning pass@k, HumanEval, lm-eval tasks; candidate vs champion; "
                "the gate that moves the champion alias",
)
