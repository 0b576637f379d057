"""Per-language filtering: technical prose that must pass and boilerplate that must fail in six languages,
the per-language rules, and the word-tokenizer check at config validation."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
from datatrove.pipeline.filters import GopherQualityFilter
from pydantic import ValidationError

from stages.curate.config import CurateConfig
from stages.curate.languages import DEFAULT_RULES, rules_for
from stages.curate.web_filters import C4Quality, Extract, FineWebQuality, GopherQuality, GopherRepetition
from tests.curate.conftest import doc, run_filter

FIXTURES = Path(__file__).parent / "fixtures"
# an APT how-to with inline commands, paths and options, written for these tests in six languages
TECHNICAL = json.loads((FIXTURES / "technical_pages.json").read_text(encoding="utf-8"))
# a site's navigation menu, repeated as it is on every page of a crawl
MENUS = json.loads((FIXTURES / "menu_pages.json").read_text(encoding="utf-8"))
LANGS = ["en", "de", "fr", "es", "it", "ja"]


def chain():
    """The stage's prose rules, with its C4 setting (no terminal-punctuation line rule)."""
    return [GopherQuality(), GopherRepetition(), C4Quality(filter_no_terminal_punct=False), FineWebQuality()]


def judge(text: str, lang: str) -> str:
    """'kept' or the first removal reason of the stage's prose rules."""
    d = doc(text, id=lang, language=lang)
    for f in chain():
        kept, removed = run_filter(f, [d])
        if removed:
            return removed[lang]
        d = kept[0]
    return "kept"


@pytest.mark.parametrize("lang", LANGS)
def test_technical_prose_passes_in_each_language(lang):
    assert judge(TECHNICAL[lang], lang) == "kept"


@pytest.mark.parametrize("lang", LANGS)
def test_navigation_boilerplate_fails_in_each_language(lang):
    assert judge("\n".join(MENUS[lang] * 6), lang) != "kept"


@pytest.mark.parametrize("lang", ["en", "de", "fr", "es", "it"])
def test_punctuation_tokens_are_not_words(lang):
    """datatrove's own Gopher filter counts '(', '/', ':' as words and removes this prose; ours does not."""
    _, removed = run_filter(GopherQualityFilter(), [doc(TECHNICAL[lang], id=lang, language=lang)])
    assert removed == {lang: "gopher_below_alpha_threshold"}
    kept, _ = run_filter(GopherQuality(), [doc(TECHNICAL[lang], id=lang, language=lang)])
    assert len(kept) == 1


def test_stop_words_are_the_documents_language():
    # French prose judged with German stop words has none of them
    d = doc(TECHNICAL["fr"], id="fr-as-de", language="de")
    _, removed = run_filter(GopherQuality(language_rules={"de": {"stop_words": ["und", "der", "die"]}}), [d])
    assert removed == {"fr-as-de": "gopher_enough_stop_words"}
    assert d.metadata["filter_value"] == 0 and d.metadata["filter_threshold"] == 2


def test_japanese_lines_are_counted_in_words_not_spaces():
    """C4 needs 3 words per line; a Japanese line has no spaces, so ``line.split()`` saw one word."""
    kept, _ = run_filter(C4Quality(filter_no_terminal_punct=False), [doc(TECHNICAL["ja"], id="ja", language="ja")])
    assert kept and kept[0].text.count("\n") == TECHNICAL["ja"].count("\n")


def test_rules_are_per_language_and_overridable():
    assert rules_for("ja").max_avg_word_length == 5 and rules_for("en").max_avg_word_length == 10
    assert "der" in rules_for("de").stop_words
    unknown = rules_for("sw")
    assert unknown.min_stop_words == 0 and unknown.stop_words == ()
    r = rules_for("fr", {"fr": {"line_punct_thr": 0.5, "stop_words": ["le"]}})
    assert r.line_punct_thr == 0.5 and r.stop_words == ("le",) and r.max_avg_word_length == 11
    # an override changes the verdict: French prose fails when French needs 20 stop words
    _, removed = run_filter(GopherQuality(language_rules={"fr": {"min_stop_words": 20}}),
                            [doc(TECHNICAL["fr"], id="fr", language="fr")])
    assert removed == {"fr": "gopher_enough_stop_words"}
    cfg = CurateConfig.model_validate({"web": {"language": {"languages": ["en", "fr"],
                                                            "rules": {"fr": {"line_punct_thr": 0.5}}}}})
    assert cfg.web.language.rule_overrides() == {"fr": {"line_punct_thr": 0.5}}
    with pytest.raises(ValidationError, match="line_punct_thr"):
        CurateConfig.model_validate({"web": {"language": {"rules": {"fr": {"line_punct_thr": 2}}}}})
    assert set(LANGS) <= set(DEFAULT_RULES)


def test_code_blocks_are_set_aside_for_the_prose_rules():
    """A page whose <pre> code has '{' and short lines: C4 and FineWeb judge its prose, the code stays whole."""
    lines = TECHNICAL["en"].splitlines()
    prose, more = " ".join(lines[1:4]), " ".join(lines[4:])
    code = "fn main() {\n    let x = 5;\n    println!(\"{x}\");\n}"
    html = (f"<html><body><article><h1>Functions</h1><p>{prose}</p><pre><pre class='playground'><code>{code}"
            f"</code></pre></pre><p>{more}</p></article></body></html>")
    (page,), _ = run_filter(Extract(), [doc(html, id="p", format="html", language="en")])
    assert "fn main() {\nlet x = 5;" in page.text  # one line per code line, not flattened
    assert "fn main() {" in page.metadata["code_lines"] and page.metadata["code_fraction"] > 0
    for f in (C4Quality(filter_no_terminal_punct=False), FineWebQuality()):
        kept, removed = run_filter(f, [page])
        assert kept, removed
        page = kept[0]
    assert "println!(\"{x}\");" in page.text  # C4 kept the code's short lines
    # without the code marks, C4 cuts the code sample's lines out (fewer than 3 words each)
    page.metadata.pop("code_lines")
    kept, _ = run_filter(C4Quality(filter_no_terminal_punct=False), [page])
    assert "fn main() {" not in kept[0].text


# -- word tokenizers: checked at config validation, with the package to install ------------------------

def test_config_refuses_a_language_whose_tokenizer_is_missing(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name.startswith("sudachi") else real(name, *a))
    with pytest.raises(ValidationError, match=r"'ja' needs sudachipy, sudachidict_core: pip install sudachipy"):
        CurateConfig.model_validate({"web": {"language": {"languages": ["en", "ja"]}}})


def test_config_refuses_a_tokenizer_that_downloads_models():
    with pytest.raises(ValidationError, match="'cy' is stanza's, which downloads a model"):
        CurateConfig.model_validate({"web": {"language": {"languages": ["en", "cy"]}}})
    with pytest.raises(ValidationError, match="no word tokenizer for 'qq'"):
        CurateConfig.model_validate({"web": {"language": {"languages": ["qq"]}}})


def test_default_languages_tokenizers_are_main_dependencies():
    """`make run` installs the main dependencies only: the tiny default's languages must load with them."""
    import tomllib

    from pipeline.config import load_config
    from pipeline.registry import load_stages
    from stages.curate.languages import _NEEDS, _SPACY_EXTRA, _assignments

    root = Path(__file__).resolve().parents[2]
    deps = " ".join(tomllib.loads((root / "pyproject.toml").read_text())["project"]["dependencies"]).lower()
    cfg = load_config(str(root / "configs" / "tiny.yaml"), load_stages(), [])
    for lang in cfg["curate"].web.language.languages:
        kind = _assignments()[lang]
        for _, pip in _NEEDS[kind] + (_SPACY_EXTRA.get(lang, []) if kind == "SpaCyTokenizer" else []):
            assert pip.split("<")[0].replace("_", "-") in deps.replace("_", "-"), (lang, pip)
