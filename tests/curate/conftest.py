"""Fixtures and helpers for the curate stage's tests."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest
from datatrove.data import Document

# Article 1 (and a few more) of the Universal Declaration of Human Rights, in its official
# translations: real sentences in several languages and scripts.
UDHR = {
    "en": "All human beings are born free and equal in dignity and rights. They are endowed with reason "
          "and conscience and should act towards one another in a spirit of brotherhood.",
    "de": "Alle Menschen sind frei und gleich an Würde und Rechten geboren. Sie sind mit Vernunft und "
          "Gewissen begabt und sollen einander im Geist der Brüderlichkeit begegnen.",
    "fr": "Tous les êtres humains naissent libres et égaux en dignité et en droits. Ils sont doués de "
          "raison et de conscience et doivent agir les uns envers les autres dans un esprit de fraternité.",
    "es": "Todos los seres humanos nacen libres e iguales en dignidad y derechos y, dotados como están de "
          "razón y conciencia, deben comportarse fraternalmente los unos con los otros.",
    "ru": "Все люди рождаются свободными и равными в своем достоинстве и правах. Они наделены разумом и "
          "совестью и должны поступать в отношении друг друга в духе братства.",
    "ja": "すべての人間は、生まれながらにして自由であり、かつ、尊厳と権利とについて平等である。人間は、"
          "理性と良心とを授けられており、互いに同胞の精神をもって行動しなければならない。",
}
UDHR_DE_LONG = (
    "Alle Menschen sind frei und gleich an Würde und Rechten geboren. Sie sind mit Vernunft und Gewissen "
    "begabt und sollen einander im Geist der Brüderlichkeit begegnen.\n\n"
    "Jeder hat Anspruch auf alle in dieser Erklärung verkündeten Rechte und Freiheiten ohne irgendeinen "
    "Unterschied, etwa nach Rasse, Hautfarbe, Geschlecht, Sprache, Religion, politischer oder sonstiger "
    "Überzeugung, nationaler oder sozialer Herkunft, Vermögen, Geburt oder sonstigem Stand.\n\n"
    "Jeder hat das Recht auf Leben, Freiheit und Sicherheit der Person.\n\n"
    "Niemand darf in Sklaverei oder Leibeigenschaft gehalten werden; Sklaverei und Sklavenhandel sind in "
    "allen ihren Formen verboten.\n\n"
    "Niemand darf der Folter oder grausamer, unmenschlicher oder erniedrigender Behandlung oder Strafe "
    "unterworfen werden.\n\n"
    "Jeder hat das Recht, überall als rechtsfähig anerkannt zu werden.")


def python_doc(topic: str) -> str:
    """A section of the Python documentation shipped with CPython: real, well-formed English."""
    from pydoc_data.topics import topics

    return topics[topic]


def doc(text: str, id: str = "d", **metadata) -> Document:
    return Document(text=text, id=id, metadata=dict(metadata))


def run_filter(step, docs: list[Document]) -> tuple[list[Document], dict[str, str]]:
    """(kept docs, {removed id: reason}) from a datatrove filter, through its exclusion hook."""
    from stages.curate.accounting import Accounted

    removed: dict[str, str] = {}
    acc = Accounted(step, "t")
    acc._removed = lambda d: removed.__setitem__(d.id, d.metadata.get("filter_reason", "removed"))
    kept = list(acc.run(iter(docs)))
    return kept, removed


def write_jsonl_gz(path: Path, records: list[dict]) -> Path:
    with gzip.open(path, "wt", encoding="utf-8") as f:
        for r in records:
            f.write(json.dumps(r) + "\n")
    return path


def read_branch(out: Path, branch: str) -> list[dict]:
    docs = []
    for f in sorted((out / branch).glob("*.jsonl.gz")):
        with gzip.open(f, "rt", encoding="utf-8") as fh:
            docs += [json.loads(line) for line in fh]
    return docs


@pytest.fixture
def lid_model() -> str:
    from stages.curate.fasttext_env import lid176_path

    return str(lid176_path())
