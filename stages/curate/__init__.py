"""The curate stage: raw web and code text to a clean, deduplicated pretraining corpus.

Two branches, the way FineWeb, DCLM and The Stack v2 build theirs, on datatrove's pipeline blocks
and its Ray executor: web (URL block list, extraction, fastText language ID, Gopher, C4 and FineWeb
heuristics, PII anonymisation, a DCLM-style fastText quality classifier trained on the fly) and code
(language by extension, StarCoder file filters, secret redaction); exact and MinHash deduplication
per branch; every document accounted for. See stages/curate/run.py.

Kept light (pydantic only): the config loader imports every stage package.
"""

from pipeline.stage import Resources, Stage
from stages.curate.config import CurateConfig

STAGE = Stage(
    name="curate",
    config=CurateConfig,
    run="stages.curate.run:run",
    upstream=(),
    # the orchestrating task reserves nothing: datatrove's Ray executor places one task per CPU
    resources=Resources(cpus=0),
    code=("stages.curate",),
    key_metric="kept_mb",
    headline=("docs_in", "web_docs", "code_docs", "web_dedup_rate", "code_dedup_rate", "kept_mb"),
    description="web + code corpora: datatrove filters on Ray, fastText LID and quality "
                "classifier, exact + MinHash dedup, conservation-checked accounting",
)
