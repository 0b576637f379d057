"""The tokenizer stage: train a byte-fallback BPE on curated web + code, export it (sentencepiece
and Hugging Face), and tokenize the corpus into training shards on Ray. See stages/tokenizer/run.py.

Kept light (pydantic only): the config loader imports every stage package.
"""

from pipeline.stage import Resources, Stage
from stages.tokenizer.config import TokenizerConfig

STAGE = Stage(
    name="tokenizer",
    config=TokenizerConfig,
    run="stages.tokenizer.run:run",
    upstream=("curate",),
    # the orchestrating task reserves nothing: its Ray tasks (one CPU each) tokenize the corpus.
    # Training runs in the orchestrating task itself with cfg.train_threads threads.
    resources=Resources(cpus=0),
    code=("stages.tokenizer", "tokenizer"),
    key_metric="bytes_per_token",
    headline=("bytes_per_token_web", "bytes_per_token_code", "vocab_size", "train_tokens"),
    description="byte-fallback BPE (sentencepiece) with chat/reasoning/FIM specials, HF export, "
                "corpus tokenized into training shards on Ray",
)
