"""``python -m stages.curate --config CONFIG``: run the curate stage alone."""

from pipeline.cli import stage_main

stage_main("curate")
