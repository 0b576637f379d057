"""The serve stage: deploy the registered model (models:/<name>@champion by default) on Ray Serve
behind an OpenAI-compatible API, smoke-test it and record which version went live.
See stages/serve/README.md and stages/serve/run.py.

Kept light (pydantic only): the config loader imports every stage package.
"""

from pipeline.stage import Resources, Stage
from stages.serve.config import ServeConfig

STAGE = Stage(
    name="serve",
    config=ServeConfig,
    run="stages.serve.run:run",
    upstream=("eval",),
    # the replicas take the CPUs; the orchestrating task only deploys and smoke-tests
    resources=Resources(cpus=0),
    code=("stages.serve", "model", "tokenizer"),
    key_metric="url",
    headline=("tokens_per_s", "ttft_ms", "url"),
    # a deployment is a side effect outside the output folder: it must come back on every run
    always_run=True,
    # eval only orders it (it moves @champion); serve reads the registry, not eval's folder
    reads_upstream=False,
    description="OpenAI-compatible Ray Serve deployment (continuous batching, latent KV cache, MTP "
                "speculative decoding, streaming, reasoning) of the registered model",
)
