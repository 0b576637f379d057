"""The curate stage's entry point: plan the inputs, run both branches on Ray, check the books,
publish ``web/``, ``code/`` and ``stats.json``, and report to MLflow."""

from __future__ import annotations

import json
import shutil
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from pipeline.stage import StageContext
from stages.curate.config import CurateConfig, LocalSource, WarcSource

# intermediate folders removed after a successful run (logs, stats and audit samples stay)
_BULKY = ("stage1", "stage2", "stage3", "exact", "minhash", "raw_sample", "ledger")


def say(msg: str) -> None:
    print(f"[curate] {msg}", file=sys.stderr, flush=True)


def preflight(cfg: CurateConfig) -> str | None:
    """Everything that can fail before compute: fastText, lid.176, tokenizers, HTML extraction.
    Returns the lid.176 path (None when the web branch is off)."""
    from stages.curate import fasttext_env

    branches = cfg.branches()
    if "web" in branches and cfg.web.quality.enabled:
        fasttext_env.require_training()
    lid = None
    if "web" in branches:
        lid = str(fasttext_env.lid176_path())
        from stages.curate.web_filters import word_tokenizer_problem

        # the config checked the packages; this loads each tokenizer once (a broken install, a model
        # that would have to be downloaded)
        for lang in cfg.web.language.languages:
            if problem := word_tokenizer_problem(lang):
                raise ValueError(f"web.language.languages: the word tokenizer for {lang!r} does not load here "
                                 f"({problem}); the Gopher, C4 and FineWeb filters need one") from None
        # HTML comes from WARC responses and from HTML manuals in local documentation folders
        if any(isinstance(s, WarcSource) or (isinstance(s, LocalSource) and s.web and s.doc_roots)
               for s in cfg.sources):
            try:
                import lxml_html_clean  # noqa: F401  trafilatura silently extracts nothing without it
                import trafilatura  # noqa: F401
            except ImportError as e:
                raise RuntimeError(f"HTML extraction (WARC sources, HTML manuals under local.doc_roots) needs "
                                   f"trafilatura and lxml_html_clean ({e}): pip install trafilatura "
                                   "lxml_html_clean") from None
    return lid


def prepare_work_dir(cfg: CurateConfig, out: Path) -> Path:
    """``out/_work`` for intermediates and executor logs.

    An interrupted run with the same config resumes: datatrove skips the tasks it recorded as
    complete, and every output file is named by its task, so a redone task overwrites its file
    instead of appending to it. A finished run, or one with another config, is cleared first: a
    rerun then recomputes everything and, being deterministic, writes the same files again.
    """
    work = out / "_work"
    stamp = work / "config.json"
    current = cfg.model_dump_json()
    finished = (out / "stats.json").exists()
    if stamp.exists() and (finished or stamp.read_text() != current):
        say("clearing the previous run in this folder" + ("" if finished else " (its config differs)"))
        for name in ("_work", "web", "code", "audit", "quality", "removed"):
            shutil.rmtree(out / name, ignore_errors=True)
        for name in ("stats.json", "funnel.png", "funnel_by_language.png"):
            (out / name).unlink(missing_ok=True)
    work.mkdir(parents=True, exist_ok=True)
    stamp.write_text(current)
    return work


def run(cfg: CurateConfig, ctx: StageContext) -> dict[str, float | int | str]:
    from datatrove.utils.logging import logger

    # the executor prints every pass's full stats table; our own progress lines say what matters,
    # and a failed pass raises with the path of its task logs
    logger.disable("datatrove.executor")
    try:
        return _run(cfg, ctx)
    finally:
        logger.enable("datatrove.executor")


def _run(cfg: CurateConfig, ctx: StageContext) -> dict[str, float | int | str]:
    import ray

    from stages.curate.harvest import plan_inputs, shard_units
    from stages.curate.ledger import build_books, publish_ledger
    from stages.curate.passes import Branch
    from stages.curate.report import collect_samples, funnel_figure, language_funnel_figure, log_to_tracker

    t0 = time.time()
    lid = preflight(cfg)
    out = Path(ctx.out)
    work = prepare_work_dir(cfg, out)
    plans = plan_inputs(cfg)
    for b, plan in plans.items():
        say(f"{b}: {len(plan.units)} input units, {plan.bytes / 1e6:.1f} MB"
            + (f" ({plan.not_selected['docs']} local candidates over the caps left out)"
               if plan.not_selected["docs"] else ""))
        if plan.missing_roots:
            say(f"{b}: local documentation folders not on this machine, skipped: {', '.join(plan.missing_roots)}")
    if not ray.is_initialized():
        ray.init(include_dashboard=False)
    branches = {b: Branch(b, cfg, shard_units(plans[b].units, cfg.execution.tasks), work / b, out / b, lid)
                for b in plans}
    quality = QualityTraining(cfg, ctx.seed, out / "quality", work / "web" / "raw_sample") \
        if "web" in branches and cfg.web.quality.enabled else None

    def run_branch(branch: Branch) -> None:
        t = time.time()
        if branch.name == "web" and quality is not None:
            branch.run_all(after_filter=quality.start, model_path=quality.wait)
        else:
            branch.run_all()
        say(f"{branch.name}: done in {time.time() - t:.1f}s")

    if cfg.execution.branches_in_parallel and len(branches) > 1:
        with ThreadPoolExecutor(len(branches), thread_name_prefix="curate") as pool:
            for f in [pool.submit(run_branch, b) for b in branches.values()]:
                f.result()
    else:
        for b in branches.values():
            run_branch(b)

    books = {b: build_books(b, branches[b].results, out / b) for b in branches}
    say("conservation holds: " + "; ".join(
        f"{b}: {bk.docs_in} in = {bk.files_docs} kept + {bk.removed} removed + "
        f"{sum(bk.unreadable.values())} unreadable" for b, bk in books.items()))

    # the removal ledger beside the output, checked against the funnel, and the funnel per language
    by_language = {b: publish_ledger(bk, work / b / "ledger", out / "removed" / f"{b}.jsonl.gz")
                   for b, bk in books.items()}
    say("removal ledger: " + ", ".join(f"{out / 'removed' / f'{b}.jsonl.gz'} ({bk.removed} lines)"
                                       for b, bk in books.items()))

    samples = {b: collect_samples(work / b / "audit", cfg.audit_samples) for b in branches}
    audit_out = out / "audit"
    for b, by_step in samples.items():
        (audit_out / b).mkdir(parents=True, exist_ok=True)
        for step, outcomes in by_step.items():
            (audit_out / b / f"{step}.json").write_text(json.dumps(outcomes, indent=1, ensure_ascii=False))

    quality_stats = None
    if quality is not None:
        quality_stats = {"heldout": quality.report, "model": quality.model_path,
                         "keep_fraction": cfg.web.quality.keep_fraction,
                         "threshold": branches["web"].threshold, "scored": branches["web"].n_scored,
                         "language_thresholds": branches["web"].language_thresholds}
        if cfg.quality_eval_path:
            from stages.curate.quality import agreement, load_labelled

            quality_stats["human_agreement"] = agreement(
                quality.model_path, load_labelled(cfg.quality_eval_path), branches["web"].threshold)

    wall = time.time() - t0
    summary = summarize(books, quality_stats, wall)
    stats = {
        "summary": summary,
        "conservation": {b: {"docs_in": bk.docs_in, "kept": bk.files_docs, "removed": bk.removed,
                             "unreadable": sum(bk.unreadable.values()), "holds": True} for b, bk in books.items()},
        "branches": {b: bk.as_dict() for b, bk in books.items()},
        "inputs": {b: {"units": len(p.units), "bytes": p.bytes, "local_candidates_over_caps": p.not_selected}
                   for b, p in plans.items()},
        "dedup": dedup_summary(books),
        "by_language": by_language,
        "quality": quality_stats,
        "passes": {b: {r.name: round(r.wall_s, 2) for r in br.results} for b, br in branches.items()},
        "wall_s": round(wall, 2),
    }
    (out / "stats.json").write_text(json.dumps(stats, indent=2, default=str))
    fig = funnel_figure(books)
    fig.savefig(out / "funnel.png", dpi=110)
    lang_fig = language_funnel_figure(by_language)
    lang_fig.savefig(out / "funnel_by_language.png", dpi=110)
    log_to_tracker(ctx.tracker, out, stats, books, samples, fig, lang_fig)
    for b in branches:
        for name in _BULKY:
            shutil.rmtree(work / b / name, ignore_errors=True)
    say(f"done in {wall:.1f}s: " + ", ".join(f"{k}={v}" for k, v in summary.items()))
    return summary


class QualityTraining:
    """Trains the web quality classifier in a Ray task while the dedup passes run."""

    def __init__(self, cfg: CurateConfig, seed: int, out_dir: Path, raw_sample_dir: Path):
        self.cfg = cfg
        self.seed = seed
        self.out_dir = out_dir
        self.raw_sample_dir = raw_sample_dir
        self._ref = None
        self.model_path: str | None = None
        self.report: dict | None = None

    def start(self, _branch=None) -> None:
        import ray

        from stages.curate.quality import train_for_stage

        q = self.cfg.web.quality
        task = ray.remote(num_cpus=1)(train_for_stage)
        self._ref = task.remote(str(self.raw_sample_dir), [r.model_dump() for r in q.reference],
                                q.model_dump(), self.seed, str(self.out_dir), self.cfg.max_doc_bytes)
        say("web: training the quality classifier (Ray task)")

    def wait(self, _branch=None) -> str:
        import ray

        self.model_path, self.report = ray.get(self._ref)
        (self.out_dir / "report.json").write_text(json.dumps(self.report, indent=2))
        say("web: quality classifier held-out " + ", ".join(f"{k}={v:.3f}" for k, v in self.report.items()
                                                          if isinstance(v, float)))
        return self.model_path


def summarize(books, quality_stats, wall: float) -> dict[str, float | int | str]:
    s: dict[str, float | int | str] = {}
    for b, bk in books.items():
        s[f"{b}_docs"] = bk.files_docs
        s[f"{b}_mb"] = round(bk.published_bytes / 1e6, 3)
        s[f"{b}_docs_in"] = bk.docs_in
        dedup = [r for r in bk.rows if r.step in ("exact_dedup", "minhash_dedup")]
        if dedup:   # share of the documents reaching dedup that were exact or near duplicates
            s[f"{b}_dedup_rate"] = round(sum(r.removed for r in dedup) / max(1, dedup[0].docs_in), 4)
    s["kept_mb"] = round(sum(bk.published_bytes for bk in books.values()) / 1e6, 3)
    s["docs_in"] = sum(bk.docs_in for bk in books.values())
    s["unreadable"] = sum(sum(bk.unreadable.values()) for bk in books.values())
    if quality_stats:
        s["quality_auc"] = round(quality_stats["heldout"]["auc"], 4)
        if "human_agreement" in quality_stats:
            s["quality_human_auc"] = round(quality_stats["human_agreement"]["auc"], 4)
    s["wall_s"] = round(wall, 1)
    return s


def dedup_summary(books) -> dict:
    out = {}
    for b, bk in books.items():
        d = {}
        for r in bk.rows:
            if r.step == "exact_dedup":
                d["exact_removed"] = r.removed
            if r.step == "minhash_dedup":
                d["near_removed"] = r.removed
        for key, counters in bk.step_stats.items():
            if key.startswith("5_minhash_cluster"):
                d["minhash_clusters"] = counters.get("clusters", 0)
                d["minhash_docs_in_clusters"] = counters.get("duplicates", 0)
        out[b] = d
    return out
