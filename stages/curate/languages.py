"""Per-language thresholds and stop words for the Gopher, FineWeb and repetition rules, and which
package each language's word tokenizer needs.

Defaults are FineWeb-2's per-language values (github.com/huggingface/fineweb-2, ``configs/<iso3>_<script>.yml``:
stopwords, min/max_avg_word_length, max_non_alpha_words_ratio, line_punct_thr, new_line_ratio,
dup_line_frac, top_n_grams, dup_n_grams), English's are FineWeb's (datatrove's defaults). A language
without an entry gets English's numbers and no stop-word rule (English stop words would fail every
document). FineWeb-2's ``language_score`` thresholds are not taken: they were set on GlotLID scores,
not lid.176's; ``web.language.threshold`` stays the one LID knob.

Light on purpose (stdlib only): the config imports it for validation.
"""

from __future__ import annotations

import csv
import importlib.util
from dataclasses import dataclass, field, replace
from functools import cache
from pathlib import Path

_EN_TOP = ((2, 0.2), (3, 0.18), (4, 0.16))
_EN_DUP = ((5, 0.15), (6, 0.14), (7, 0.13), (8, 0.12), (9, 0.11), (10, 0.10))


@dataclass(frozen=True)
class LanguageRules:
    stop_words: tuple[str, ...] = ()
    min_stop_words: int = 2
    min_avg_word_length: float = 3
    max_avg_word_length: float = 10
    max_non_alpha_words_ratio: float = 0.8   # datatrove's name: the minimum share of words with a letter
    line_punct_thr: float = 0.12
    new_line_ratio: float = 0.3
    dup_line_frac: float = 0.3
    top_n_grams: tuple[tuple[int, float], ...] = _EN_TOP
    dup_n_grams: tuple[tuple[int, float], ...] = _EN_DUP
    overridden: tuple[str, ...] = field(default=(), compare=False)

    def with_overrides(self, overrides: dict) -> LanguageRules:
        clean = {k: (tuple(tuple(x) if isinstance(x, list) else x for x in v) if isinstance(v, list) else v)
                 for k, v in overrides.items() if v is not None}
        return replace(self, **clean, overridden=tuple(sorted(clean)))


def _dup(*fr: float) -> tuple[tuple[int, float], ...]:
    return tuple(zip(range(5, 11), fr, strict=True))


def _top(*fr: float) -> tuple[tuple[int, float], ...]:
    return tuple(zip(range(2, 5), fr, strict=True))


DEFAULT_RULES: dict[str, LanguageRules] = {
    "en": LanguageRules(stop_words=("the", "be", "to", "of", "and", "that", "have", "with")),
    "de": LanguageRules(
        stop_words=("der", "und", "die", "in", "von", "im", "den", "des", "mit", "das", "er", "dem", "als",
                    "wurde", "für"),
        min_avg_word_length=0, max_avg_word_length=15, max_non_alpha_words_ratio=0.774, line_punct_thr=0.0,
        new_line_ratio=0.152, dup_line_frac=0.263, top_n_grams=_top(0.169, 0.153, 0.137),
        dup_n_grams=_dup(0.141, 0.134, 0.126, 0.117, 0.108, 0.098)),
    "fr": LanguageRules(
        stop_words=("de", "la", "le", "et", "à", "en", "l'", "des", "du", "les", "est", "d'", "un", "une", "il",
                    "dans", "par", "au"),
        min_avg_word_length=2, max_avg_word_length=11, max_non_alpha_words_ratio=0.812, line_punct_thr=0.1,
        new_line_ratio=0.185, dup_line_frac=0.264, top_n_grams=_top(0.161, 0.149, 0.134),
        dup_n_grams=_dup(0.15, 0.141, 0.131, 0.121, 0.111, 0.1)),
    "es": LanguageRules(
        stop_words=("de", "la", "en", "el", "y", "a", "que", "del", "los", "se", "por", "un", "con", "una", "las",
                    "su"),
        min_avg_word_length=4, max_avg_word_length=14, max_non_alpha_words_ratio=0.825, line_punct_thr=0.3,
        new_line_ratio=0.171, dup_line_frac=0.265, top_n_grams=_top(0.077, 0.097, 0.112),
        dup_n_grams=_dup(0.152, 0.137, 0.123, 0.114, 0.107, 0.099)),
    "it": LanguageRules(
        stop_words=("di", "e", "il", "la", "in", "a", "del", "che", "è", "della", "un", "per", "nel", "l'", "con",
                    "da", "i", "una"),
        min_avg_word_length=3, max_avg_word_length=21, max_non_alpha_words_ratio=0.807, line_punct_thr=0.025,
        new_line_ratio=0.2, dup_line_frac=0.246, top_n_grams=_top(0.198, 0.156, 0.133),
        dup_n_grams=_dup(0.144, 0.136, 0.127, 0.118, 0.109, 0.1)),
    "pt": LanguageRules(
        stop_words=("de", "a", "e", "o", "em", "do", "da", "que", "um", "no", "uma", "com", "para", "na", "é",
                    "foi"),
        min_avg_word_length=3, max_avg_word_length=13, max_non_alpha_words_ratio=0.814, line_punct_thr=0.154,
        new_line_ratio=0.23, dup_line_frac=0.325, top_n_grams=_top(0.093, 0.117, 0.139),
        dup_n_grams=_dup(0.19, 0.172, 0.154, 0.142, 0.131, 0.12)),
    "ru": LanguageRules(
        stop_words=("в", "и", "на", "с", "года", "по", "году", "из", "был", "к", "не", "от", "что", "за", "для",
                    "его", "как", "а", "он", "также", "до", "после"),
        min_avg_word_length=3, max_avg_word_length=11, max_non_alpha_words_ratio=0.713, line_punct_thr=0.231,
        new_line_ratio=0.139, dup_line_frac=0.322, top_n_grams=_top(0.184, 0.164, 0.146),
        dup_n_grams=_dup(0.168, 0.156, 0.145, 0.133, 0.121, 0.109)),
    "ja": LanguageRules(
        stop_words=("の", "に", "を", "は", "た", "て", "が", "と", "で", "年", "し", "・", "月", "れ", "さ"),
        min_avg_word_length=1, max_avg_word_length=5, max_non_alpha_words_ratio=0.759, line_punct_thr=0.167,
        new_line_ratio=0.162, dup_line_frac=0.375, top_n_grams=_top(0.121, 0.129, 0.145),
        dup_n_grams=_dup(0.307, 0.283, 0.264, 0.248, 0.234, 0.223)),
    "zh": LanguageRules(
        stop_words=("的", "年", "在", "月", "是", "和", "日", "了", "於", "·", "為", "有", "被", "人", "中", "为",
                    "他", "與", "後", "也", "而", "由"),
        min_avg_word_length=1, max_avg_word_length=5, max_non_alpha_words_ratio=0.735, line_punct_thr=0.106,
        new_line_ratio=0.178, dup_line_frac=0.287, top_n_grams=_top(0.256, 0.201, 0.171),
        dup_n_grams=_dup(0.198, 0.182, 0.167, 0.154, 0.14, 0.127)),
}
# short lists (no FineWeb-2 numbers transcribed yet): the stop-word rule only
DEFAULT_RULES["nl"] = LanguageRules(stop_words=("de", "het", "een", "en", "van", "is", "dat", "op"))


def rules_for(language: str, overrides: dict[str, dict] | None = None) -> LanguageRules:
    """The built-in rules of ``language`` (English's numbers and no stop words when unknown), with the
    config's overrides for it applied."""
    base = DEFAULT_RULES.get(language, LanguageRules(min_stop_words=0))
    extra = (overrides or {}).get(language)
    return base.with_overrides(extra) if extra else base


# -- word tokenizers ---------------------------------------------------------------------------------

# modules each of datatrove's tokenizer classes imports, with the pip names that provide them
_NEEDS = {
    "SpaCyTokenizer": [("spacy", "spacy")],
    "StanzaTokenizer": [("stanza", "stanza")],
    "ThaiTokenizer": [("pythainlp", "pythainlp")],
    "IndicNLPTokenizer": [("indicnlp", "indic-nlp-library")],
    "KiwiTokenizer": [("kiwipiepy", "kiwipiepy<0.22")],
    "KhmerTokenizer": [("khmernltk", "khmer-nltk")],
    "LaoTokenizer": [("laonlp", "laonlp")],
    "TibetanTokenizer": [("botok", "botok")],
    "WhitespaceTokenizer": [],
}
# spaCy languages whose blank pipeline imports a segmenter
_SPACY_EXTRA = {"ja": [("sudachipy", "sudachipy"), ("sudachidict_core", "sudachidict_core")],
                "zh": [("jieba", "jieba")], "vi": [("pyvi", "pyvi")], "ko": [("kiwipiepy", "kiwipiepy<0.22")],
                "th": [("pythainlp", "pythainlp")]}


@cache
def _assignments() -> dict[str, str]:
    """lid.176 code -> datatrove tokenizer class, from datatrove's own table (read, not imported)."""
    spec = importlib.util.find_spec("datatrove")
    if spec is None or not spec.submodule_search_locations:
        return {}
    path = Path(next(iter(spec.submodule_search_locations))) / "assets" / "tokenizer_assignment.csv"
    out: dict[str, str] = {}
    seen: set[str] = set()
    with open(path, encoding="utf-8") as f:
        for row in csv.DictReader(f):
            # the same walk as datatrove's load_tokenizer_assignments (its flags are non-empty strings)
            if not row["type"]:
                continue
            key = f"{row['code_1']}_{row['script']}"
            if row["code_1"] and row["default_code_1"] and key not in seen:
                seen.add(key)
                if row["default_script"]:
                    out[row["code_1"]] = row["type"]
    return out


def missing_tokenizer_packages(language: str) -> list[str] | None:
    """pip names needed for ``language``'s word tokenizer that are not installed ([] when all are);
    None when datatrove has no tokenizer for the language at all."""
    kind = _assignments().get(language)
    if kind is None:
        return None
    needs = list(_NEEDS.get(kind, []))
    if kind == "SpaCyTokenizer":
        needs += _SPACY_EXTRA.get(language, [])
    return [pip for module, pip in needs if importlib.util.find_spec(module) is None]


def tokenizer_problem(language: str) -> str | None:
    """A sentence naming what to install for ``language``'s word tokenizer, or None."""
    missing = missing_tokenizer_packages(language)
    if missing is None:
        return f"datatrove has no word tokenizer for {language!r}"
    if _assignments().get(language) == "StanzaTokenizer":
        return (f"the word tokenizer for {language!r} is stanza's, which downloads a model at run time "
                "(not allowed here): leave the language out or give it a tokenizer in datatrove's table")
    if missing:
        pkgs = " ".join(f"'{m}'" if "<" in m else m for m in missing)
        return (f"the word tokenizer for {language!r} needs {', '.join(missing)}: pip install {pkgs} "
                "(all are in the 'multilingual' extra: pip install -e '.[multilingual]')")
    return None
