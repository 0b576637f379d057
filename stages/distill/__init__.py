"""The distill stage: R1-style reasoning distillation. Verifiable problems (held-out split checked
disjoint), teacher traces kept by rejection sampling, SFT of the pretrained model on Ray Train with
the shared trainer (optionally plus KL to a local teacher's logits), held-out pass@k before and
after; the distilled model is registered as ``candidate``. See stages/distill/run.py.

Kept light (pydantic only): the config loader imports every stage package.
"""

from pipeline.stage import Resources, Stage
from stages.distill.config import DistillConfig

STAGE = Stage(
    name="distill",
    config=DistillConfig,
    run="stages.distill.run:run",
    upstream=("pretrain", "tokenizer"),   # tokenizer: the tokenizer and the shards replayed in SFT
    # the orchestrating task reserves nothing: the Ray Train workers (and rejection shards) take the CPUs
    resources=Resources(cpus=0),
    code=("stages.distill", "stages.common.problems", "stages.common.verify", "stages.common.sandbox",
          "stages.common.evaluation", "stages.common.scoring",
          "stages.common.training", "model", "tokenizer"),
    key_metric="pass_at_1_after",
    headline=("pass_at_1_before", "pass_at_1_after", "after/arithmetic/greedy_pass_at_1_ci_low",
              "after/arithmetic_3digit/greedy_pass_at_1", "val_bpb_web", "traces_kept"),
    description="teacher traces verified by rejection sampling, SFT of the pretrained model with the think "
                "format on Ray Train, held-out pass@k before/after, distilled model registered as `candidate`",
)
