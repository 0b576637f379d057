"""One branch of the curate stage as a sequence of datatrove pipelines ("passes") on Ray.

    1 filter          sources -> [web: URL, extract, LID, Gopher x2, C4, FineWeb, PII |
                                  code: language, Stack v2 filters, secrets] -> stage1 + exact sigs
    2 exact_find      ExactFindDedups                                      (one task)
    3 exact_filter    stage1 -> ExactDedupFilter -> stage2 + MinHash signatures
    4 minhash_buckets MinhashDedupBuckets, the buckets dealt over the tasks
    5 minhash_cluster MinhashDedupCluster                                  (one task)
    6 minhash_filter  stage2 -> MinhashDedupFilter -> [web: quality score] -> stage3 (web) / output (code)
    7 quality         stage3 -> top fraction by score -> output                  (web)

Each pass is one ``RayPipelineExecutor`` run with its own logging folder, so a rerun resumes per
task from ``completions/``. Dedup removal lists index documents by position in a task's stream,
hence the rank-named intermediate files read back by ``StagedReader``.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from datatrove.data import Document
from datatrove.pipeline.base import PipelineStep
from datatrove.pipeline.dedup.exact_dedup import (
    ExactDedupConfig,
    ExactDedupFilter,
    ExactDedupSignature,
    ExactFindDedups,
)
from datatrove.pipeline.dedup.minhash import (
    MinhashConfig,
    MinhashDedupBuckets,
    MinhashDedupCluster,
    MinhashDedupFilter,
    MinhashDedupSignature,
)
from datatrove.pipeline.writers import JsonlWriter
from datatrove.utils.logging import logger
from datatrove.utils.text import ngrams, simplify_text

from stages.curate.accounting import Accounted
from stages.curate.code_filters import CodeLanguage, SecretRedactor, StarCoderFilters
from stages.curate.config import CurateConfig
from stages.curate.quality import QualityScorer, QualityThreshold, RawSample
from stages.curate.readers import SourceReader, StagedReader
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


class PassFailed(RuntimeError):
    pass


# metadata the filters use that is not written out (``Extract``'s code lines: the prose rules' view)
WORKING_METADATA = ("code_lines",)


def without_working_metadata(writer, document: Document) -> dict:
    """The writers' adapter: datatrove's default record without the filters' working metadata."""
    data = writer._default_adapter(document)
    for key in WORKING_METADATA:
        data.get("metadata", {}).pop(key, None)
    return data


def document_text(doc: Document) -> str:
    """Exact dedup key: the text as written (a module-level function, so it pickles)."""
    return doc.text


@dataclass
class PassResult:
    name: str
    steps: list[PipelineStep]   # the pipeline's steps, aligned with ``stats``
    stats: list[dict]
    wall_s: float


class WhitespaceMinhashSignature(MinhashDedupSignature):
    """MinHash signatures over whitespace words of the normalised text (StarCoder-style for code).

    ``simplify_text`` already lower-cases and strips punctuation, so splitting on whitespace gives
    the identifier/keyword tokens that matter for code, about 15x faster than spaCy's rules.
    """

    def get_shingles(self, text: str) -> np.ndarray:
        words = simplify_text(text, self.config.norm_config).split()
        return np.fromiter((self._hash_func(" ".join(g)) for g in ngrams(words, self.config.n_grams)),
                           dtype=np.uint64).reshape((-1, 1))


def merged_stats(logging_dir: Path, tasks: int) -> list[dict]:
    """Per-step stats summed over tasks, from each completed task's own stats file (the executor's
    merged stats.json is only written when every task finished in that same call)."""
    from datatrove.utils.stats import PipelineStats

    total = PipelineStats()
    for rank in range(tasks):
        total += PipelineStats.from_json(json.loads((logging_dir / "stats" / f"{rank:05d}.json").read_text()))
    return json.loads(total.to_json())


class BucketRange(PipelineStep):
    """Runs MinhashDedupBuckets for every bucket ``b`` with ``b % world_size == rank``.

    datatrove wants one task per bucket (14 by default); on a small cluster each Ray task costs
    seconds to start, so a few tasks each take a share of the buckets. Same files, same result.
    """

    def __init__(self, step: MinhashDedupBuckets, num_buckets: int):
        super().__init__()
        self.step = step
        self.num_buckets = num_buckets
        self.name, self.type = step.name, step.type
        self.stats = step.stats

    def run(self, data=None, rank: int = 0, world_size: int = 1):
        for bucket in range(rank, self.num_buckets, world_size):
            self.step.run(None, bucket, self.num_buckets)
        return iter(())


@dataclass
class Branch:
    """Builds and runs the passes of one branch (``web`` or ``code``)."""

    name: str
    cfg: CurateConfig
    shards: list[list[dict]]
    work: Path                    # intermediate files and executor logs
    out: Path                     # the branch's published shards
    lid_model: str | None = None
    results: list[PassResult] = field(default_factory=list)
    threshold: float | None = None
    language_thresholds: dict[str, float] = field(default_factory=dict)
    n_scored: int = 0

    @property
    def tasks(self) -> int:
        return self.cfg.execution.tasks

    def folder(self, *parts: str) -> str:
        return str(self.work.joinpath(*parts))

    def accounted(self, step: PipelineStep, key: str, default_reason: str = "removed") -> Accounted:
        # bookkeeping steps ("_write_stage1", "_publish") are counted but not sampled
        samples = 0 if key.startswith("_") else self.cfg.audit_samples
        return Accounted(step, key, audit_folder=self.folder("audit"), samples=samples,
                         default_reason=default_reason,
                         ledger_folder=None if key.startswith("_") else self.folder("ledger"))

    # -- execution ------------------------------------------------------------------------------
    def run_pass(self, name: str, pipeline: list[PipelineStep], tasks: int | None = None) -> PassResult:
        from datatrove.executor.ray import RayPipelineExecutor

        ex = self.cfg.execution
        tasks = tasks or self.tasks
        logging_dir = self.work / "logs" / name
        executor = RayPipelineExecutor(
            pipeline, tasks=tasks, workers=min(ex.workers or tasks, tasks), logging_dir=str(logging_dir),
            cpus_per_task=ex.cpus_per_task, mem_per_cpu_gb=ex.mem_per_cpu_gb, skip_completed=True,
            time=ex.task_timeout_s,
            # datatrove's dedup steps draw tqdm bars that Ray forwards line by line to the driver
            ray_remote_kwargs={"runtime_env": {"env_vars": {"TQDM_DISABLE": "1"}}})
        t0 = time.time()
        logger.info(f"[curate/{self.name}] pass {name}: {tasks} task(s)")
        executor.run()
        done = sorted(p.name for p in (logging_dir / "completions").glob("*"))
        if done != [f"{r:05d}" for r in range(tasks)]:
            raise PassFailed(f"curate {self.name} pass {name!r}: {len(done)}/{tasks} tasks completed; "
                             f"task logs are in {logging_dir / 'logs'}")
        stats = merged_stats(logging_dir, tasks)
        steps = [s for s in pipeline if hasattr(s, "stats")]
        result = PassResult(name, steps, stats, time.time() - t0)
        self.results.append(result)
        return result

    # -- pass builders ---------------------------------------------------------------------------
    def writer(self, folder: str, key: str) -> Accounted:
        writer = JsonlWriter(folder, output_filename="${rank}.jsonl.gz", compression="gzip",
                             adapter=without_working_metadata)
        return self.accounted(writer, key)

    def filter_steps(self) -> list[PipelineStep]:
        if self.name == "web":
            return self._web_steps()
        return self._code_steps()

    def _web_steps(self) -> list[PipelineStep]:
        w = self.cfg.web
        steps: list[PipelineStep] = []
        if w.url_filter.enabled:
            steps.append(self.accounted(OfflineURLFilter(
                use_integrated_lists=w.url_filter.use_integrated_lists, extra_domains=w.url_filter.extra_domains,
                extra_urls=w.url_filter.extra_urls, banned_words=w.url_filter.banned_words), "url_filter"))
        steps.append(self.accounted(Extract(w.extract.favour_precision, w.extract.timeout_s), "extract"))
        if w.quality.enabled:
            # Negatives from the Python environment's prose only: with the system's GNU manuals among
            # them the classifier learns "Python docs vs GNU style" and agrees far less with human
            # quality labels (DCLM sample AUC 0.57 vs 0.69, tests/curate/test_quality.py).
            system_roots = tuple(r for s in self.cfg.sources if s.type == "local" for r in s.doc_roots)
            steps.append(RawSample(self.folder("raw_sample"), w.quality.negatives_per_task, system_roots))
        steps.append(self.accounted(LanguageID(self.lid_model, w.language.languages, w.language.threshold),
                                    "language"))
        # Gopher quality before Gopher repetition (FineWeb runs them the other way round): both are
        # pure predicates on the same text, so the kept set is the same, and the cheap one first
        # spares the expensive n-gram counting a third of the documents
        rules = w.language.rule_overrides()
        if w.gopher_quality.enabled:
            g = w.gopher_quality
            steps.append(self.accounted(GopherQuality(
                min_doc_words=g.min_doc_words, max_doc_words=g.max_doc_words, language_rules=rules),
                "gopher_quality"))
        if w.gopher_repetition.enabled:
            steps.append(self.accounted(GopherRepetition(language_rules=rules), "gopher_repetition"))
        if w.c4.enabled:
            c = w.c4
            steps.append(self.accounted(C4Quality(
                filter_no_terminal_punct=c.filter_no_terminal_punct, filter_curly_bracket=c.filter_curly_bracket,
                min_num_sentences=c.min_num_sentences, min_words_per_line=c.min_words_per_line,
                language_rules=rules), "c4"))
        if w.fineweb_quality.enabled:
            f = w.fineweb_quality
            steps.append(self.accounted(FineWebQuality(
                short_line_thr=f.short_line_thr, char_duplicates_ratio=f.char_duplicates_ratio,
                language_rules=rules), "fineweb_quality"))
        if w.pii.emails or w.pii.ips:
            steps.append(self.accounted(CountingPII(remove_emails=w.pii.emails, remove_ips=w.pii.ips), "pii"))
        return steps

    def _code_steps(self) -> list[PipelineStep]:
        c = self.cfg.code
        f = c.filters
        steps: list[PipelineStep] = [
            self.accounted(CodeLanguage(c.extensions), "code_language"),
            self.accounted(StarCoderFilters(
                max_line_length=f.max_line_length, max_mean_line_length=f.max_mean_line_length,
                min_alnum_fraction=f.min_alnum_fraction, autogenerated=f.autogenerated,
                max_numeric_fraction=f.max_numeric_fraction, max_data_line_fraction=f.max_data_line_fraction),
                "stack_filters"),
        ]
        if c.redact_secrets:
            steps.append(self.accounted(SecretRedactor(), "secrets"))
        return steps

    # -- the dedup building blocks ----------------------------------------------------------------
    @property
    def exact_config(self) -> ExactDedupConfig:
        return ExactDedupConfig(content_getter=document_text)

    @property
    def minhash_config(self) -> MinhashConfig:
        m = self.cfg.dedup.minhash
        return MinhashConfig(n_grams=m.n_grams, num_buckets=m.num_buckets, hashes_per_bucket=m.hashes_per_bucket,
                             seed=m.seed)

    def minhash_signature(self) -> MinhashDedupSignature:
        if self.name == "code":
            return WhitespaceMinhashSignature(self.folder("minhash", "sigs"), config=self.minhash_config)
        # prose: word n-grams from the (first configured) language's word tokenizer, as FineWeb does
        return MinhashDedupSignature(self.folder("minhash", "sigs"), config=self.minhash_config,
                                     language=self.cfg.web.language.languages[0])

    def run_all(self, after_filter: Callable[["Branch"], None] | None = None,
                model_path: Callable[["Branch"], str] | None = None) -> None:
        """Run every pass. ``after_filter`` is called once the filtered stage exists (the quality
        classifier's training starts there, beside the dedup passes); ``model_path`` is asked for
        the trained classifier before the pass that scores documents."""
        dedup = self.cfg.dedup
        quality = self.name == "web" and self.cfg.web.quality.enabled
        if quality and model_path is None:
            raise ValueError("the web branch's quality filter needs a model_path callback")

        # 1: filters
        p1 = [SourceReader(self.shards, self.name, self.cfg.max_doc_bytes), *self.filter_steps()]
        if not (dedup.exact or dedup.minhash.enabled or quality):
            self.run_pass("1_filter", p1 + [self.writer(str(self.out), "_publish")])
            return
        p1.append(self.writer(self.folder("stage1"), "_write_stage1"))
        if dedup.exact:
            p1.append(ExactDedupSignature(self.folder("exact", "sigs"), self.exact_config))
        elif dedup.minhash.enabled:
            p1.append(self.minhash_signature())
        self.run_pass("1_filter", p1)
        if after_filter:
            after_filter(self)
        current = "stage1"

        # 2-3: exact duplicates (content hash)
        if dedup.exact:
            self.run_pass("2_exact_find", [ExactFindDedups(self.folder("exact", "sigs"), self.folder("exact", "dups"),
                                                            self.exact_config)], tasks=1)
            p3 = [StagedReader(self.folder(current)),
                  self.accounted(ExactDedupFilter(self.folder("exact", "dups"), self.exact_config),
                                 "exact_dedup", default_reason="exact_duplicate"),
                  self.writer(self.folder("stage2"), "_write_stage2")]
            if dedup.minhash.enabled:
                p3.append(self.minhash_signature())
            self.run_pass("3_exact_filter", p3)
            current = "stage2"

        # 4-6: near duplicates (MinHash LSH), then quality scores
        final: list[PipelineStep] = [StagedReader(self.folder(current))]
        if dedup.minhash.enabled:
            cfg = self.minhash_config
            self.run_pass("4_minhash_buckets", [BucketRange(MinhashDedupBuckets(
                self.folder("minhash", "sigs"), self.folder("minhash", "buckets"), config=cfg), cfg.num_buckets)],
                tasks=min(self.tasks, cfg.num_buckets))
            self.run_pass("5_minhash_cluster", [MinhashDedupCluster(
                self.folder("minhash", "buckets"), self.folder("minhash", "remove"), config=cfg,
                save_cluster_id=True)], tasks=1)
            final.append(self.accounted(MinhashDedupFilter(self.folder("minhash", "remove"), load_cluster_ids=True),
                                        "minhash_dedup", default_reason="near_duplicate"))
        if not quality:
            self.run_pass("6_minhash_filter", final + [self.writer(str(self.out), "_publish")])
            return
        final += [QualityScorer(model_path(self), self.folder("quality", "scores")),
                  self.writer(self.folder("stage3"), "_write_stage3")]
        self.run_pass("6_minhash_filter", final)

        # 7: DCLM keeps the top fraction by classifier score, a threshold over all scores
        threshold = self.quality_threshold()
        self.run_pass("7_quality", [StagedReader(self.folder("stage3")),
                                    self.accounted(QualityThreshold(threshold, self.language_thresholds),
                                                   "quality_classifier"),
                                    self.writer(str(self.out), "_publish")])

    def quality_threshold(self) -> float:
        from stages.curate.quality import top_fraction_threshold

        pairs = []
        for f in sorted((self.work / "quality" / "scores").glob("*.json")):
            pairs += json.loads(f.read_text())
        fraction = self.cfg.web.quality.keep_fraction
        self.threshold = top_fraction_threshold([s for s, _ in pairs], fraction)
        self.n_scored = len(pairs)
        if self.cfg.web.quality.per_language:
            by_lang: dict[str, list[float]] = {}
            for s, lang in pairs:
                by_lang.setdefault(lang, []).append(s)
            self.language_thresholds = {lang: top_fraction_threshold(v, fraction) for lang, v in by_lang.items()}
        return self.threshold
