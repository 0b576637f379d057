"""``python -m stages.distill --config configs/tiny.yaml``: the distill stage alone, reusing the cached
pretrain and tokenizer outputs."""

from pipeline.cli import stage_main

stage_main("distill")
