"""``python -m stages.curate --config CONFIG``: run the curate stage alone.
``python -m stages.curate why CONFIG URL_OR_ID``: why a document was removed (see ``why.py``)."""

import sys

if sys.argv[1:2] == ["why"]:
    from stages.curate.why import main

    sys.exit(main(sys.argv[2:]))

from pipeline.cli import stage_main  # noqa: E402

stage_main("curate")
