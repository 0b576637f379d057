"""Markdown / reST to prose: code, tables, badges and link syntax go; the words stay."""

from stages.curate.markup import detect_format, to_plain_text

README_MD = """\
# tomli

[![Build](https://github.com/x/y/badge.svg)](https://github.com/x/y/actions)

> A lil' TOML parser

**Table of Contents** *generated with [mdformat-toc](https://github.com/hukkin/mdformat-toc)*

Tomli is a Python library for parsing [TOML](https://toml.io). It is fully compatible with
TOML v1.0.0, and `tomllib` in the standard library is based on it.

```python
import tomli
data = tomli.loads('x = {a = 1}')
```

| Parser | Speed |
|--------|-------|
| tomli  | 1.0x  |

* one *thing*
+ another __thing__ with snake_case_name
"""

README_RST = """\
Requests
========

.. image:: https://img.shields.io/pypi/v/requests.svg
    :target: https://pypi.org/project/requests/

Requests is a simple, yet elegant, HTTP library. See :func:`requests.get <requests.api.get>`
and the `documentation <https://requests.readthedocs.io>`_ for more.

Usage::

    >>> r = requests.get('https://httpbin.org/basic-auth/user/pass')

.. note:: Requests officially supports Python 3.8+.

.. code-block:: python

    import requests

That's all, folks_.
"""


def test_markdown_keeps_prose_drops_markup():
    text = to_plain_text(README_MD, "markdown")
    assert "Tomli is a Python library for parsing TOML. It is fully compatible with" in text
    assert "tomllib in the standard library is based on it." in text
    assert "A lil' TOML parser" in text and text.startswith("tomli")
    for gone in ("```", "import tomli", "badge.svg", "](", "| Parser", "**", "x = {a = 1}"):
        assert gone not in text, gone
    assert "- one thing" in text and "- another thing with snake_case_name" in text


def test_rst_keeps_prose_drops_directives_and_literals():
    text = to_plain_text(README_RST, "rst")
    assert text.startswith("Requests\n")
    assert "See requests.get\nand the documentation for more." in text
    assert "Usage:" in text and ">>>" not in text
    assert "Requests officially supports Python 3.8+." in text  # admonitions are prose
    for gone in ("====", ".. image", "shields.io", "import requests", "code-block", "`_"):
        assert gone not in text, gone
    assert "That's all, folks." in text


def test_format_detection():
    assert detect_format(content_type="text/markdown; charset=UTF-8") == "markdown"
    assert detect_format(content_type="text/x-rst") == "rst"
    assert detect_format(name="docs/index.rst") == "rst"
    assert detect_format(name="README.md") == "markdown"
    assert detect_format(text="Title\n=====\n\n.. note:: x") == "rst"
    assert detect_format(text="# Title\n\nbody") == "markdown"
    assert detect_format(text="Copyright (c) 2020\n\nPermission is hereby granted") == "plain"


def test_pathological_lines_are_left_alone_quickly():
    import time

    line = "*" * 200_000 + "`" + ":" * 50_000
    t = time.time()
    out = to_plain_text(line, "markdown") + to_plain_text(line, "rst")
    assert time.time() - t < 1.0
    assert len(out) > 0
