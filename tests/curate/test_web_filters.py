"""Each web filter on real text that must pass and text that must fail, in several languages."""

from __future__ import annotations

import importlib.util

import pytest

from stages.curate.web_filters import (
    C4Quality,
    CountingPII,
    Extract,
    FineWebQuality,
    GopherQuality,
    GopherRepetition,
    LanguageID,
    OfflineURLFilter,
)
from tests.curate.conftest import UDHR, UDHR_DE_LONG, doc, python_doc, run_filter

GOOD_EN = python_doc("exceptions")  # real, well-formed English (passes all four heuristics)


def test_language_id_keeps_configured_languages(lid_model):
    docs = [doc(text, id=lang) for lang, text in UDHR.items()]
    kept, removed = run_filter(LanguageID(lid_model, ["en"]), docs)
    assert [d.id for d in kept] == ["en"]
    assert kept[0].metadata["language"] == "en" and kept[0].metadata["language_score"] > 0.65
    assert removed == {lang: "language_not_selected" for lang in UDHR if lang != "en"}

    kept, removed = run_filter(LanguageID(lid_model, ["de", "fr", "ja"]), [doc(t, id=k) for k, t in UDHR.items()])
    assert sorted(d.id for d in kept) == ["de", "fr", "ja"]
    assert {d.id: d.metadata["language"] for d in kept} == {"de": "de", "fr": "fr", "ja": "ja"}


def test_language_id_threshold(lid_model):
    # two languages mixed half and half: the top label is not confident
    mixed = doc(UDHR["en"] + " " + UDHR["de"], id="mixed")
    kept, removed = run_filter(LanguageID(lid_model, ["en", "de"], threshold=0.9), [mixed])
    assert kept == [] and removed == {"mixed": "language_low_confidence"}
    kept, _ = run_filter(LanguageID(lid_model, ["en", "de"], threshold=0.3), [doc(mixed.text, id="m")])
    assert len(kept) == 1


def test_gopher_repetition():
    repeated = "\n\n".join(["Buy cheap watches online. Free shipping on all orders today!"] * 8)
    kept, removed = run_filter(GopherRepetition(), [doc(GOOD_EN, id="good"), doc(repeated, id="spam")])
    assert [d.id for d in kept] == ["good"]
    assert removed["spam"].startswith("gopher_rep_")


def test_gopher_quality_per_language():
    table = "\n".join(f"{i * 1000.25:.2f} | {i * 3.5e6:.3e} | {i * i * 1234} | sum | {i % 7}" for i in range(80))
    docs = [doc(GOOD_EN, id="en", language="en"), doc(table, id="table", language="en"),
            doc("Too short to be a real page.", id="short", language="en"),
            doc(UDHR_DE_LONG, id="de", language="de")]
    kept, removed = run_filter(GopherQuality(), docs)
    assert sorted(d.id for d in kept) == ["de", "en"]  # German passes on German stop words
    assert removed == {"table": "gopher_below_alpha_threshold", "short": "gopher_short_doc"}
    # the same German text judged with English stop words fails: the rule is per language
    _, removed = run_filter(GopherQuality(), [doc(UDHR_DE_LONG, id="de-as-en", language="en")])
    assert removed == {"de-as-en": "gopher_enough_stop_words"}


def test_c4_line_and_document_rules():
    lorem = GOOD_EN + "\nLorem ipsum dolor sit amet, consectetur adipiscing elit."
    curly = GOOD_EN + "\nUse the dict literal {'a': 1} to build one in place."
    js = GOOD_EN + "\nPlease enable JavaScript in your browser to view this page."
    kept, removed = run_filter(C4Quality(), [doc(GOOD_EN, id="good"), doc(lorem, id="lorem"),
                                             doc(curly, id="curly"), doc(js, id="js"),
                                             doc("One line. Two lines.", id="few")])
    assert sorted(d.id for d in kept) == ["good", "js"]
    assert removed == {"lorem": "c4_lorem_ipsum", "curly": "c4_curly_bracket", "few": "c4_too_few_sentences"}
    assert "JavaScript" not in next(d for d in kept if d.id == "js").text  # the line, not the page


def test_fineweb_quality():
    nav = "\n".join(["Home", "About us", "Products", "Contact", "Login", "Cart"] * 4 + [UDHR["en"]])
    kept, removed = run_filter(FineWebQuality(), [doc(GOOD_EN, id="good"), doc(nav, id="nav")])
    assert [d.id for d in kept] == ["good"]
    assert removed["nav"].startswith("fineweb_")


def test_url_filter_offline():
    f = OfflineURLFilter(extra_domains=["spam-site.com"], banned_words=["casino"])
    docs = [doc("x", id="ok", url="https://docs.python.org/3/library/re.html"),
            doc("x", id="listed", url="https://www.pornhub.com/"),
            doc("x", id="extra", url="https://www.spam-site.com/page"),
            doc("x", id="word", url="https://example.org/casino/bonus"),
            doc("x", id="local")]
    kept, removed = run_filter(f, docs)
    assert sorted(d.id for d in kept) == ["local", "ok"]
    assert removed == {"listed": "url_domain", "extra": "url_domain", "word": "url_hard_blacklisted"}


def test_pii_replaces_emails_and_public_ips_and_counts():
    text = ("Write to jane.doe@example.com or ops@corp.io; the server is 8.8.8.8 and the router "
            "192.168.1.1 stays (private).")
    f = CountingPII()
    kept, _ = run_filter(f, [doc(text)])
    out = kept[0].text
    assert "jane.doe@example.com" not in out and "ops@corp.io" not in out and "8.8.8.8" not in out
    assert "192.168.1.1" in out
    assert f.stats["pii_emails"].total == 2 and f.stats["pii_ips"].total == 1


def test_extract_html_and_markdown():
    html = ("<html><head><title>t</title><script>var x = 1;</script></head><body><nav>Home | About</nav>"
            f"<article><h1>Rights</h1><p>{UDHR['en']}</p><p>{UDHR['en']}</p></article></body></html>")
    md = "# Title\n\n```py\nx = 1\n```\n\nSome **prose** with a [link](http://x.org)."
    kept, removed = run_filter(Extract(), [doc(html, id="h", format="html"), doc(md, id="m", format="markdown"),
                                           doc("<html><body><script>1</script></body></html>", id="e",
                                               format="html")])
    by_id = {d.id: d.text for d in kept}
    assert "All human beings are born free" in by_id["h"] and "var x" not in by_id["h"]
    assert by_id["m"] == "Title\n\nSome prose with a link."
    assert removed == {"e": "extract_empty_html"}


@pytest.mark.parametrize("cls", [GopherRepetition, GopherQuality, C4Quality, FineWebQuality])
def test_filters_use_each_documents_language(cls):
    """Japanese has no spaces: the filters must tokenise it with a Japanese tokenizer, not crash."""
    f = cls()
    run_filter(f, [doc(UDHR["ja"] * 5, id="ja", language="ja")])
    assert f.language == "ja"


def test_language_without_a_word_tokenizer_is_removed_with_a_reason():
    """Welsh's datatrove tokenizer is stanza, which is not installed (and would download a model):
    its documents are removed as no_word_tokenizer and counted per language, not crashed on."""
    if importlib.util.find_spec("stanza"):
        pytest.skip("stanza is installed here")
    f = GopherRepetition()
    welsh = "Genir pawb yn rhydd ac yn gydradd â'i gilydd mewn urddas a hawliau. " * 5
    kept, removed = run_filter(f, [doc(welsh, id="cy", language="cy"),
                                   doc(GOOD_EN, id="en", language="en")])
    assert removed == {"cy": "no_word_tokenizer"} and [d.id for d in kept] == ["en"]
    assert f.stats["no_word_tokenizer_cy"].total == 1


def test_html_paragraphs_as_a_browser_lays_them_out():
    """Source line breaks and inline <code> do not split a paragraph; <pre> keeps its lines."""
    html = ("<html><body><article><h1>fs</h1><p>The <code>node:fs</code> module enables interacting\n"
            "with the file system in a way modeled on\nstandard POSIX functions. " + UDHR["en"] + "</p>"
            "<pre>const fs = require('fs');\nfs.readFileSync(path);</pre>"
            f"<p>{UDHR['en']}</p></article></body></html>")
    kept, _ = run_filter(Extract(), [doc(html, id="h", format="html")])
    text = kept[0].text
    assert ("The node:fs module enables interacting with the file system in a way modeled on standard POSIX "
            "functions.") in text
    from stages.curate.web_filters import html_as_rendered

    assert "<pre>const fs = require('fs');\nfs.readFileSync(path);</pre>" in html_as_rendered(html)
