"""The pretrain tests' tokenizer-stage output, reused for the pipeline-parallel stage run."""

from tests.pretrain.conftest import tokenized  # noqa: F401
