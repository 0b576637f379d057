"""Config of the curate stage. Light on purpose (pydantic only): the config loader imports it.

The defaults are the embedded tiny default: the local Python environment as the only source, the
FineWeb filter chain for prose, The Stack v2 / StarCoder filters for code, exact + MinHash dedup per
branch and a DCLM-style fastText quality classifier trained on the fly, all within a few minutes
on 2 cores.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, field_validator, model_validator

from pipeline.stage import StageConfig

Branch = Literal["web", "code"]


# -- sources ------------------------------------------------------------------------------------

class LocalSource(StageConfig):
    """Harvest the software installed on this machine (offline, always available).

    Prose for the web branch: installed Python distributions' long descriptions (METADATA),
    READMEs, change logs, licence texts and docs shipped in packages, plus the system's own
    documentation folders (``doc_roots``: Debian's /usr/share/doc with READMEs, NEWS, change logs,
    copyright files, Markdown and HTML manuals; GNU Info manuals; man pages), gzip-compressed or
    not. Code for
    the code branch: the distributions' source files with a configured extension. Candidates are
    taken until the caps, the kinds the filters keep most of first (see ``harvest.select_local``),
    largest first within a kind (filters cost per document, so larger documents give more text
    per second).
    """

    type: Literal["local"] = "local"
    web: bool = True
    code: bool = True
    # folders that are missing on this machine (a slim container image) are skipped
    doc_roots: list[str] = Field(default_factory=lambda: ["/usr/share/doc", "/usr/share/info", "/usr/share/man"])
    max_web_docs: int = Field(6000, ge=0)
    max_web_bytes: int = Field(21_000_000, ge=0)
    max_code_docs: int = Field(4000, ge=0)
    max_code_bytes: int = Field(8_000_000, ge=0)
    # the size band of files worth harvesting: tiny files are mostly stubs; the biggest code files
    # are mostly generated tables (and filters cost per byte)
    min_doc_bytes: int = Field(400, ge=0)
    max_web_file_bytes: int = Field(400_000, ge=1)
    max_code_file_bytes: int = Field(24_000, ge=1)
    # the longest man pages are mostly option lists that fail Gopher's alphabetic-words rule whole
    max_man_page_bytes: int = Field(50_000, ge=1)
    max_package_share: float = Field(0.1, gt=0, le=1,
                                     description="at most this share of a branch's byte cap from one "
                                                 "distribution, so one big package cannot fill it")

    @model_validator(mode="after")
    def _band(self):
        for b in ("web", "code"):
            if getattr(self, f"max_{b}_file_bytes") < self.min_doc_bytes:
                raise ValueError(f"max_{b}_file_bytes ({getattr(self, f'max_{b}_file_bytes')}) is below "
                                 f"min_doc_bytes ({self.min_doc_bytes}): no file could be harvested")
        return self


class FileSource(StageConfig):
    """JSONL or Parquet files with a text column (Hugging Face datasets style).

    ``path`` is a local path or fsspec URI: one file, a folder (all files with the format's
    extension, recursively) or a glob (``s3://bucket/cc/*.jsonl.gz``).
    """

    type: Literal["jsonl", "parquet"]
    path: str
    branch: Branch = "web"
    text_key: str = "text"
    id_key: str = "id"
    limit: int | None = Field(None, ge=1, description="read at most this many documents per file")


class WarcSource(StageConfig):
    """WARC or WET files in Common Crawl's format (HTML responses are extracted with trafilatura)."""

    type: Literal["warc"] = "warc"
    path: str
    limit: int | None = Field(None, ge=1)


class TreeSource(StageConfig):
    """Every file under a local folder, one document each (a checkout of your own code or docs).

    Code files get their language from the extension (others are removed as unknown_extension);
    binary and non-UTF-8 files are counted as unreadable.
    """

    type: Literal["tree"] = "tree"
    path: str
    branch: Branch = "code"


Source = Annotated[LocalSource | FileSource | WarcSource | TreeSource, Field(discriminator="type")]


# -- web branch ---------------------------------------------------------------------------------

class UrlFilterConfig(StageConfig):
    enabled: bool = True
    # datatrove's integrated block lists (4.5M adult/malware domains, banned words); loaded lazily,
    # only when a document with a URL arrives
    use_integrated_lists: bool = True
    extra_domains: list[str] = Field(default_factory=list)
    extra_urls: list[str] = Field(default_factory=list)
    banned_words: list[str] = Field(default_factory=list)


class ExtractConfig(StageConfig):
    # trafilatura on HTML (WARC responses); markdown/reST unwrapping on local documentation
    favour_precision: bool = True
    timeout_s: float = Field(5.0, gt=0)


class LanguageRulesConfig(StageConfig):
    """One language's overrides of the built-in per-language rules (``stages/curate/languages.py``:
    FineWeb-2's values; unset fields keep them)."""

    stop_words: list[str] | None = None
    min_stop_words: int | None = Field(None, ge=0)
    min_avg_word_length: float | None = Field(None, ge=0)
    max_avg_word_length: float | None = Field(None, gt=0)
    max_non_alpha_words_ratio: float | None = Field(None, ge=0, le=1,
                                                    description="minimum share of words with a letter")
    line_punct_thr: float | None = Field(None, ge=0, le=1)
    new_line_ratio: float | None = Field(None, ge=0)
    dup_line_frac: float | None = Field(None, ge=0, le=1)
    top_n_grams: list[tuple[int, float]] | None = None
    dup_n_grams: list[tuple[int, float]] | None = None


class LanguageConfig(StageConfig):
    # ISO 639-1 labels of fastText lid.176 ("en", "de", "fr", ...); FineWeb keeps en at >= 0.65
    languages: list[str] = Field(default_factory=lambda: ["en"], min_length=1)
    threshold: float = Field(0.65, ge=0, le=1)
    # per-language thresholds and stop words for the Gopher, C4 and FineWeb rules, applied with the
    # language LID found: built-in FineWeb-2 defaults, overridden here per language ({fr: {line_punct_thr: 0.2}})
    rules: dict[str, LanguageRulesConfig] = Field(default_factory=dict)

    @field_validator("languages")
    @classmethod
    def _codes(cls, v: list[str]) -> list[str]:
        bad = [x for x in v if not (2 <= len(x) <= 3 and x.isalpha() and x.islower())]
        if bad:
            raise ValueError(f"language codes must be lid.176 labels such as 'en' or 'de' "
                             f"(two or three lower-case letters), got {bad}")
        from stages.curate.languages import tokenizer_problem

        problems = [p for x in v if (p := tokenizer_problem(x))]
        if problems:  # the Gopher, C4 and FineWeb rules would remove every such document
            raise ValueError("; ".join(problems))
        return v

    def rule_overrides(self) -> dict[str, dict]:
        return {lang: r.model_dump(exclude_none=True) for lang, r in self.rules.items()}


class GopherRepetitionConfig(StageConfig):
    enabled: bool = True


class GopherQualityConfig(StageConfig):
    enabled: bool = True
    min_doc_words: int = Field(50, ge=0)
    max_doc_words: int = Field(100_000, ge=1)
    # the alphabetic-words ratio, average word length and stop words are per language: web.language.rules


class C4Config(StageConfig):
    enabled: bool = True
    # FineWeb drops C4's terminal-punctuation line rule (it removes too much good text)
    filter_no_terminal_punct: bool = False
    filter_curly_bracket: bool = True
    min_num_sentences: int = Field(5, ge=-1)
    min_words_per_line: int = Field(3, ge=-1)


class FineWebQualityConfig(StageConfig):
    enabled: bool = True
    short_line_thr: float = Field(0.67, ge=0, le=1)
    char_duplicates_ratio: float = Field(0.01, ge=0, le=1)
    # line_punct_thr and new_line_ratio are per language: web.language.rules


class PiiConfig(StageConfig):
    emails: bool = True
    ips: bool = True


class ReferenceSource(StageConfig):
    """Positive examples for the quality classifier.

    ``python-docs``: the Python documentation that ships with every CPython (``pydoc_data``),
    well-formed expository English that is never part of the harvested input. Or JSONL/Parquet
    files with a text column (e.g. an instruction or ELI5 dump, as DCLM used).
    """

    type: Literal["python-docs", "jsonl", "parquet"] = "python-docs"
    path: str | None = None
    text_key: str = "text"

    @model_validator(mode="after")
    def _path_for_files(self):
        if self.type != "python-docs" and not self.path:
            raise ValueError(f"a {self.type!r} reference source needs a path")
        return self


class QualityConfig(StageConfig):
    """DCLM-style fastText classifier: positives = reference set, negatives = raw input."""

    enabled: bool = True
    keep_fraction: float = Field(0.8, gt=0, le=1, description="keep this top fraction by score")
    # the top fraction of each language (as LID found it): a classifier trained on an English reference
    # ranks every other language last, and one global cut removed them first
    per_language: bool = True
    reference: list[ReferenceSource] = Field(default_factory=lambda: [ReferenceSource()], min_length=1)
    # training examples are chunks of about this many characters cut at paragraph boundaries, so
    # positives and negatives share a length distribution and length is not what the model learns
    chunk_chars: int = Field(1500, ge=200)
    max_examples_per_class: int = Field(4000, ge=10)
    negatives_per_task: int = Field(400, ge=10, description="raw documents sampled per task")
    heldout_fraction: float = Field(0.2, gt=0, lt=1)
    # "words": DCLM's lower-cased tokens. "style": function words + token shapes; with the offline
    # python-docs reference it agrees far better with human web-quality labels (see quality.py)
    features: Literal["style", "words"] = "style"
    style_vocab: int = Field(100, ge=10, description="most frequent words kept verbatim by 'style'")
    # fastText (DCLM: bigrams, lr 0.1, 5 epochs); dim and bucket kept small so the model is a
    # few MB, thread=1 so training is deterministic
    word_ngrams: int = Field(2, ge=1, le=5)
    lr: float = Field(0.1, gt=0)
    epoch: int = Field(5, ge=1)
    dim: int = Field(64, ge=8)
    bucket: int = Field(32_768, ge=1024)
    min_count: int = Field(2, ge=1)


class WebConfig(StageConfig):
    enabled: bool = True
    url_filter: UrlFilterConfig = UrlFilterConfig()
    extract: ExtractConfig = ExtractConfig()
    language: LanguageConfig = LanguageConfig()
    gopher_repetition: GopherRepetitionConfig = GopherRepetitionConfig()
    gopher_quality: GopherQualityConfig = GopherQualityConfig()
    c4: C4Config = C4Config()
    fineweb_quality: FineWebQualityConfig = FineWebQualityConfig()
    pii: PiiConfig = PiiConfig()
    quality: QualityConfig = QualityConfig()


# -- code branch --------------------------------------------------------------------------------

DEFAULT_CODE_EXTENSIONS: dict[str, str] = {
    ".py": "python", ".pyi": "python", ".pyx": "cython", ".pxd": "cython",
    ".c": "c", ".h": "c", ".cc": "cpp", ".cpp": "cpp", ".cxx": "cpp", ".hpp": "cpp", ".hh": "cpp",
    ".cu": "cuda", ".cuh": "cuda", ".rs": "rust", ".go": "go", ".java": "java",
    ".js": "javascript", ".mjs": "javascript", ".ts": "typescript", ".sh": "shell",
    ".f90": "fortran", ".f": "fortran", ".jl": "julia", ".lua": "lua", ".rb": "ruby",
    ".sql": "sql", ".proto": "protobuf", ".css": "css",
}


class CodeFiltersConfig(StageConfig):
    """The Stack v2 / StarCoder file filters."""

    max_line_length: int = Field(1000, ge=1)
    max_mean_line_length: float = Field(100, gt=0)
    min_alnum_fraction: float = Field(0.25, ge=0, le=1)
    autogenerated: bool = True
    # "data-heavy": mostly numbers / literal tables / encoded blobs rather than code
    max_numeric_fraction: float = Field(0.5, gt=0, le=1)
    max_data_line_fraction: float = Field(0.5, gt=0, le=1)


class CodeConfig(StageConfig):
    enabled: bool = True
    extensions: dict[str, str] = Field(default_factory=lambda: dict(DEFAULT_CODE_EXTENSIONS))
    filters: CodeFiltersConfig = CodeFiltersConfig()
    redact_secrets: bool = True

    @field_validator("extensions")
    @classmethod
    def _dotted(cls, v: dict[str, str]) -> dict[str, str]:
        bad = [k for k in v if not k.startswith(".") or k != k.lower()]
        if bad:
            raise ValueError(f"extensions must be lower-case and start with a dot, e.g. '.py'; got {bad}")
        if not v:
            raise ValueError("at least one code extension is needed")
        return v


# -- dedup, execution, the stage ------------------------------------------------------------------

class MinhashConfig(StageConfig):
    enabled: bool = True
    n_grams: int = Field(5, ge=1)
    num_buckets: int = Field(14, ge=1)
    hashes_per_bucket: int = Field(8, ge=1)
    seed: int = 1


class DedupConfig(StageConfig):
    exact: bool = True
    minhash: MinhashConfig = MinhashConfig()


class ExecutionConfig(StageConfig):
    """How the work is laid out on Ray (datatrove's RayPipelineExecutor).

    ``tasks`` fixes the sharding, and with it the result; ``workers`` only sets how many tasks
    run at once, so 1 or 2 workers give the same kept set.
    """

    tasks: int = Field(2, ge=1, le=1024)
    workers: int | None = Field(None, ge=1, description="concurrent tasks (None: all at once)")
    cpus_per_task: float = Field(1, gt=0)
    mem_per_cpu_gb: float = Field(1.5, gt=0)
    # run the web and code branches at the same time (their tasks share the cluster's CPUs)
    branches_in_parallel: bool = True
    # a task running longer is killed and its pass fails with the path of its log (None: no limit)
    task_timeout_s: int | None = Field(3600, ge=10)


class CurateConfig(StageConfig):
    sources: list[Source] = Field(default_factory=lambda: [LocalSource()], min_length=1)
    web: WebConfig = WebConfig()
    code: CodeConfig = CodeConfig()
    dedup: DedupConfig = DedupConfig()
    execution: ExecutionConfig = ExecutionConfig()
    max_doc_bytes: int = Field(1_000_000, ge=1, description="larger documents are skipped as too_large")
    audit_samples: int = Field(4, ge=0, description="kept and removed samples logged per filter and reason")
    # labelled documents ({"text", "label": 0/1}) to report the quality classifier's agreement
    # with people on (never trained on); None: skip
    quality_eval_path: str | None = None

    @model_validator(mode="after")
    def _something_to_do(self):
        branches = {b for s in self.sources for b in _branches_of(s)}
        if not (branches & self.enabled_branches()):
            raise ValueError(f"no source feeds an enabled branch: sources feed {sorted(branches) or 'none'}, "
                             f"enabled branches are {sorted(self.enabled_branches()) or 'none'}")
        return self

    def enabled_branches(self) -> set[str]:
        return {b for b, on in (("web", self.web.enabled), ("code", self.code.enabled)) if on}

    def branches(self) -> list[str]:
        """Branches that are enabled and fed by at least one source, in a fixed order."""
        fed = {b for s in self.sources for b in _branches_of(s)}
        return [b for b in ("web", "code") if b in fed and b in self.enabled_branches()]


def _branches_of(source) -> set[str]:
    if isinstance(source, LocalSource):
        return {b for b, on in (("web", source.web), ("code", source.code)) if on}
    if isinstance(source, WarcSource):
        return {"web"}
    return {source.branch}  # FileSource, TreeSource
