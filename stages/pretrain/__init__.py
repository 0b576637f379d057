"""The pretrain stage: the DeepSeek-V3 model on the tokenizer stage's shards with Ray Train
(data + expert parallelism, BF16 or DeepSeek's FP8 recipe), exact checkpoint/resume, fault
tolerance, rank-0 MLflow tracking; exports a Hugging Face folder registered as ``base``.
See stages/pretrain/run.py and stages/common/training/.

Kept light (pydantic only): the config loader imports every stage package.
"""

from pipeline.stage import Resources, Stage
from stages.pretrain.config import PretrainConfig

STAGE = Stage(
    name="pretrain",
    config=PretrainConfig,
    run="stages.pretrain.run:run",
    upstream=("tokenizer",),
    # the orchestrating task reserves nothing: the Ray Train workers take the CPUs/GPUs
    resources=Resources(cpus=0),
    code=("stages.pretrain", "stages.common.training", "model", "tokenizer"),
    key_metric="val_bpb",
    headline=("val_bpb", "unigram_bpb", "tokens_per_s", "mfu"),
    description="MoE pretraining on Ray Train (DP x EP, BF16/FP8), checkpoints + fault tolerance, "
                "val bits/byte vs a unigram baseline, HF export registered as `base`",
)
