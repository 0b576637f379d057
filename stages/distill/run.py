"""The distill stage (DeepSeek-R1 §2.3.3/§2.4, distillation into a small model):

    held-out + train problems (disjoint, n-gram checked)
      -> teacher samples n per prompt -> format filters, verification, dedup (rejection sampling)
      -> evaluate the base model on the held-out problems ("before")
      -> SFT from the pretrain checkpoint on the kept traces (assistant tokens only, packed), on Ray Train
         through stages.common.training; optionally + KL to a local teacher's logits
      -> export, evaluate the distilled model ("after"), register it as <name>@candidate

Output (``ctx.out``):
    hf/                    the distilled model in Hugging Face layout plus the tokenizer files
    data/train.jsonl       kept traces, chat ``messages`` (user, assistant with reasoning_content)
    data/validation.jsonl  traces held back for validation loss
    data/heldout.jsonl     held-out problems (``stages.common.problems.write_problems``; eval reads it)
    data/stats.json        the split, rejection and SFT-data counters
    data/sft/{train,val}/  the tokenized traces the trainer reads (memory-mapped .npy)
    samples/{before,after}.jsonl   every evaluation completion with its verdict
    plots/loss_curve.png, metrics.json, ray/ (Ray Train's run, unless train.checkpoint.storage is set)
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from pipeline.stage import StageContext
from stages.distill.config import DistillConfig


def _log(msg: str) -> None:
    print(f"[distill] {msg}", flush=True)


def run(cfg: DistillConfig, ctx: StageContext) -> dict[str, float | int | str]:
    import torch

    from model import DeepSeekV3, ModelConfig
    from stages.common.evaluation import select_problems
    from stages.common.problems import build_split, write_problems
    from stages.common.training import TrainJob, fit, load_model
    from stages.common.training.plots import loss_curve_figure, save_figure
    from stages.distill.rejection import rejection_sample, rejection_sample_dataset, write_jsonl
    from stages.distill.sft_data import encode_traces
    from stages.distill.teachers import build_teacher
    from stages.distill.traces import decontaminate, split_validation
    from tokenizer import Tokenizer

    t_start = time.perf_counter()
    seed = ctx.seed if cfg.train.seed is None else cfg.train.seed
    data_dir = ctx.out / "data"
    data_dir.mkdir(parents=True, exist_ok=True)

    # -- inputs: everything that can be wrong, before any compute ------------------------------
    base = ctx.input("pretrain") / "hf"
    if not (base / "config.json").is_file():
        raise FileNotFoundError(f"{base} has no config.json: expected the pretrain stage's Hugging Face export")
    tok = Tokenizer.load(ctx.input("tokenizer") / "tokenizer")
    base_config = ModelConfig.load(base)
    _check_tokenizer(tok, base, base_config, "the pretrained model")
    problems = cfg.train.check_against(base_config)
    if problems:
        raise ValueError("train config does not fit the pretrained model: " + "; ".join(problems))
    kd_terms = ()
    if cfg.kd.enabled:
        kd_terms = (_kd_term(cfg, tok),)
    teacher = build_teacher(cfg.teacher)   # TeacherUnavailable: missing key, checkpoint, dataset

    # -- problems: held-out first, train decontaminated against it -------------------------------
    split = build_split(cfg.problems, seed=seed)   # raises HeldOutLeak if the check fails
    _log(f"problems: {len(split.train)} train, {len(split.heldout)} held-out, max {cfg.problems.ngram_n}-gram "
         f"overlap {split.overlap.max_overlap:.3f}")

    # -- traces: rejection sampling ----------------------------------------------------------------
    try:
        if cfg.teacher.kind == "dataset":
            result = rejection_sample_dataset(teacher, cfg.rejection, say=_log)
        else:   # ray_shards: each Ray task builds its own teacher from the config
            result = rejection_sample(split.train, cfg.teacher if cfg.rejection.ray_shards else teacher,
                                      cfg.rejection, seed=seed, say=_log)
    finally:
        teacher.close()
    rows, near_heldout = decontaminate(result.rows, split.heldout, cfg.problems.ngram_n, cfg.problems.max_overlap)
    if near_heldout:
        result.stats["dropped"]["near_heldout"] = near_heldout
        _log(f"dropped {near_heldout} traces whose prompt overlaps a held-out problem")
    train_rows, val_rows = split_validation(rows, cfg.sft.val_fraction, seed)
    write_jsonl(train_rows, data_dir / "train.jsonl")
    write_jsonl(val_rows, data_dir / "validation.jsonl")

    # -- SFT data: chat template, assistant-only targets -----------------------------------------
    seq_len = cfg.train.seq_len
    train_set, train_drops = encode_traces(train_rows, tok, seq_len, cfg.sft.train_on)
    val_set, val_drops = encode_traces(val_rows, tok, seq_len, cfg.sft.train_on)
    train_path, val_path = train_set.save(data_dir / "sft" / "train"), val_set.save(data_dir / "sft" / "val")
    sft_stats = {"train_traces": len(train_set), "val_traces": len(val_set),
                 "train_tokens": int(train_set.lengths.sum()), "target_tokens": int(train_set.mask.sum()),
                 "dropped": dict(train_drops + val_drops)}
    if len(train_set) == 0:
        raise ValueError(f"no training traces left (rejection: {result.stats['dropped']}; SFT: {sft_stats['dropped']})")
    stats = {"split": split.stats, "rejection": result.stats, "sft": sft_stats}
    (data_dir / "stats.json").write_text(json.dumps(stats, indent=2, default=str) + "\n")
    ctx.tracker.log_metrics(_data_metrics(split, result.stats, sft_stats))
    ctx.tracker.log_artifact(data_dir / "stats.json", "data")
    for task, t in result.stats.get("by_kind", {}).items():
        drops = {k.removeprefix("dropped/"): v for k, v in t.items() if k.startswith("dropped/")}
        _log(f"rejection {task}: {t.get('prompts', 0)} prompts, {t.get('samples', 0)} samples, {t.get('verified', 0)} "
             f"verified, {t.get('kept', 0)} unique kept ({t.get('kept_per_prompt', 0)} per prompt), dropped {drops}")
    _log(f"traces: kept {result.stats['kept']} of {result.stats['requested']} samples "
         f"(dropped {result.stats['dropped']}); SFT {len(train_set)} train / {len(val_set)} validation traces, "
         f"{sft_stats['train_tokens']:,} tokens ({sft_stats['target_tokens']:,} targets)")

    # -- evaluation before: the base model --------------------------------------------------------
    ev = cfg.evaluation
    heldout_eval = select_problems(split.heldout, ev.max_problems) + _probe(cfg, seed)
    write_problems(heldout_eval, data_dir / "heldout.jsonl")   # what the eval stage measures too
    reports = {}
    if ev.enabled:
        reports["before"] = _evaluate(DeepSeekV3.from_pretrained(base).eval(), tok, heldout_eval, cfg, seed, "before")
        ctx.tracker.log_metrics({f"eval/before/{k}": v for k, v in reports["before"].metrics.items()})

    # -- SFT on Ray Train (the shared trainer) ------------------------------------------------------
    train_data, eval_data = _sft_data(cfg, ctx, tok, train_path, val_path if len(val_set) else None)
    job = TrainJob(config=cfg.train, init_from=str(base), tracker=ctx.tracker, seed=seed, label="distill",
                   train_data=train_data, eval_data=eval_data, loss_terms=kd_terms)
    epochs = cfg.train.steps * cfg.train.batch_size / max(1, _rows_estimate(train_set, seq_len, cfg.sft.packing))
    if cfg.replay.enabled:
        epochs *= 1 - cfg.replay.ratio
    _log(f"SFT from {base}: {cfg.train.steps} steps x {cfg.train.batch_size} rows x {seq_len} tokens "
         f"(~{epochs:.1f} epochs of the traces"
         f"{f', {cfg.replay.ratio:.0%} of rows replayed pretraining text' if cfg.replay.enabled else ''}), "
         f"lr {cfg.train.optimizer.lr:g} {cfg.train.schedule.kind}, warmup "
         f"{cfg.train.schedule.warmup_steps}{', KD ' + cfg.kd.divergence if cfg.kd.enabled else ''}")
    t_fit = time.perf_counter()
    fit_result = fit(job, storage=cfg.train.checkpoint.storage or str(ctx.out / "ray"),
                     name=f"distill-{ctx.fingerprint}")
    fit_seconds = time.perf_counter() - t_fit

    # -- export: full model + tokenizer, loadable on its own ----------------------------------------
    hf = ctx.out / "hf"
    with fit_result.checkpoint_dir() as d:
        model = load_model(d)
    model.save_pretrained(hf, dtype=getattr(torch, cfg.hf_dtype))
    tok.save(hf)
    del model
    _log(f"exported the distilled model to {hf}")

    # -- evaluation after: the exported model, as the eval and serve stages will load it -------------
    if ev.enabled:
        reports["after"] = _evaluate(DeepSeekV3.from_pretrained(hf).eval(), Tokenizer.load(hf), heldout_eval, cfg,
                                     seed, "after")
        ctx.tracker.log_metrics({f"eval/after/{k}": v for k, v in reports["after"].metrics.items()})
        _write_samples(ctx, reports, cfg.table_rows)

    # -- figures, metrics, registry --------------------------------------------------------------
    plots = ctx.out / "plots"
    plots.mkdir(exist_ok=True)
    fig = loss_curve_figure(fit_result.state.history, fit_result.state.evals, None, "distill (SFT)")
    ctx.tracker.log_figure(fig, "plots/loss_curve.png")
    save_figure(fig, plots / "loss_curve.png")

    s = fit_result.summary
    summary: dict[str, float | int | str] = {
        "traces_kept": result.stats["kept"], "keep_rate": result.stats["keep_rate"],
        "sft_traces": len(train_set), "sft_tokens": sft_stats["train_tokens"],
        "steps": s["steps"], "train_loss": _round(s.get("train_loss")), "val_loss": _round(s.get("val_loss")),
        "tokens_per_s": round(s["tokens_per_s"], 1), "fit_seconds": round(fit_seconds, 1),
        "heldout_problems": len(split.heldout), "max_overlap": split.overlap.max_overlap,
    }
    if cfg.kd.enabled:
        summary["kd_loss"] = _round(fit_result.state.history[-1].get("kd_loss"))
    for label, report in reports.items():
        for k, v in report.metrics.items():
            if k.endswith(("greedy_pass_at_1", "_ci_low", "_ci_high", "format", "reasoning_tokens")) or \
                    k.startswith("pass_at_"):
                summary[f"{label}/{k}"] = _round(v)
        summary[f"eval_seconds_{label}"] = round(report.seconds, 1)
    if len(reports) == 2:
        b, a = reports["before"].metrics, reports["after"].metrics
        summary["pass_at_1_before"] = _round(b.get("greedy_pass_at_1"))
        summary["pass_at_1_after"] = _round(a.get("greedy_pass_at_1"))
        summary["pass_at_1_gain"] = _round(a["greedy_pass_at_1"] - b["greedy_pass_at_1"])
        ctx.tracker.log_metrics({"eval/pass_at_1_gain": summary["pass_at_1_gain"]})
    for key in ("val_bpb_web", "val_bpb_code", "val_loss_traces"):   # general text after SFT
        if s.get(key) is not None:
            summary[key] = _round(s[key])
    version = ctx.tracker.register_model(hf, name=ctx.name, alias="candidate")
    if version:
        summary["registered_version"] = version
    summary["stage_seconds"] = round(time.perf_counter() - t_start, 1)
    summary = {k: v for k, v in summary.items() if v is not None}
    (ctx.out / "metrics.json").write_text(json.dumps(
        {"summary": summary, **{f"eval_{k}": r.metrics for k, r in reports.items()}}, indent=2) + "\n")
    ctx.tracker.log_artifact(ctx.out / "metrics.json")
    _log("done: " + json.dumps(summary))
    return summary


# ------------------------------------------------------------------------------------------------
def _check_tokenizer(tok, model_dir: Path, model_config, what: str) -> None:
    """The tokenizer stage's tokenizer must be the one the model was trained with."""
    from tokenizer import Tokenizer

    if model_config.vocab_size < tok.vocab_size:
        raise ValueError(f"{what} at {model_dir} has {model_config.vocab_size} embedding rows but the tokenizer has "
                         f"{tok.vocab_size} ids: they do not belong together")
    if (model_dir / "tokenizer.model").is_file():
        theirs = Tokenizer.load(model_dir)
        if theirs.vocab_size != tok.vocab_size or theirs.encode(_PROBE) != tok.encode(_PROBE):
            raise ValueError(f"{what} at {model_dir} was trained with another tokenizer than the tokenizer stage's "
                             f"output (vocab {theirs.vocab_size} vs {tok.vocab_size})")


_PROBE = "What is 47 + 38? <think> Let me add 7 + 8 = 15, carry 1.\n</think> def f(x): return x ** 2  # ünïcode"


def _kd_term(cfg: DistillConfig, tok):
    """The logit-distillation loss term, after checking the teacher shares the student's tokenizer."""
    from model import ModelConfig
    from stages.distill.kd import LogitDistillation
    from stages.distill.teachers import TeacherUnavailable
    from tokenizer import Tokenizer

    path = Path(cfg.teacher.path)
    if not (path / "config.json").is_file():
        raise TeacherUnavailable(f"teacher.path {path} has no config.json (not a model checkpoint)")
    teacher_tok = Tokenizer.load(cfg.teacher.tokenizer_path or path)
    if teacher_tok.vocab_size != tok.vocab_size or teacher_tok.encode(_PROBE) != tok.encode(_PROBE):
        raise ValueError("kd.enabled needs a teacher with the student's tokenizer; the teacher's tokenizer at "
                         f"{cfg.teacher.tokenizer_path or path} differs (vocab {teacher_tok.vocab_size} vs "
                         f"{tok.vocab_size}): turn kd off or use a teacher trained with this tokenizer")
    _check_tokenizer(tok, path, ModelConfig.load(path), "the KD teacher")
    return LogitDistillation(str(path), tok.vocab_size, cfg.kd.divergence, cfg.kd.weight, cfg.kd.temperature)


def _probe(cfg: DistillConfig, seed: int) -> list:
    """The out-of-distribution probe's problems (never trained on), or none."""
    from stages.common.problems import rng_for
    from stages.common.problems.arithmetic import ArithmeticConfig, probe

    if cfg.probe is None:
        return []
    return probe(cfg.probe.task, cfg.probe.n, ArithmeticConfig(**cfg.probe.arithmetic), rng_for(seed, "probe"))


def _evaluate(model, tok, problems, cfg: DistillConfig, seed: int, label: str):
    from stages.common.evaluation import evaluate_reasoning

    ev = cfg.evaluation
    _log(f"evaluating the {'base' if label == 'before' else 'distilled'} model on {len(problems)} held-out "
         f"problems (greedy{f' + {ev.sampling.samples} samples' if ev.sampling.samples else ''}, "
         f"<= {ev.sampling.max_new_tokens} new tokens)")
    report = evaluate_reasoning(model, tok, problems, ev, seed=seed, label=label, log=_log)
    m = report.metrics
    tasks = sorted({p.task for p in problems})
    _log(f"{label}: " + "; ".join(
        f"{t} greedy pass@1 {m[f'{t}/greedy_pass_at_1']:.3f} [{m[f'{t}/greedy_pass_at_1_ci_low']:.3f}, "
        f"{m[f'{t}/greedy_pass_at_1_ci_high']:.3f}]" for t in tasks if f"{t}/greedy_pass_at_1" in m)
        + f"; format {m['format']:.3f} ({report.seconds:.1f}s)")
    return report


def _write_samples(ctx: StageContext, reports: dict, table_rows: int) -> None:
    """Every completion to samples/<label>.jsonl; the first ``table_rows`` problems' first samples,
    before and after side by side, as the MLflow table ``samples/heldout_generations.json``."""
    from stages.distill.rejection import write_jsonl

    samples = ctx.out / "samples"
    for label, report in reports.items():
        write_jsonl(report.records, samples / f"{label}.jsonl")
    firsts = {label: [r for r in report.records if r["sample"] in ("greedy", 0)][:table_rows]
              for label, report in reports.items()}
    table = [r for pair in zip(*firsts.values(), strict=False) for r in pair]
    if table:
        ctx.tracker.log_table([{k: r[k] for k in ("model", "id", "prompt", "reasoning", "answer", "expected",
                                                  "verdict", "correct", "format_issue")} for r in table],
                              "samples/heldout_generations.json")
    ctx.tracker.log_artifacts(samples, "samples")


def _sft_data(cfg: DistillConfig, ctx: StageContext, tok, train_path: Path, val_path: Path | None):
    """The trainer's data recipes: packed traces (plus replayed pretraining rows), and the
    validation sets (held-back traces, plus general text per source when ``replay.track``)."""
    from stages.distill.replay import MixedEvalData, ReplayMixData, validation_sources
    from stages.distill.sft_data import SFTEvalData, SFTTrainData

    shards = ctx.input("tokenizer") / "shards"
    train = SFTTrainData(str(train_path), tok.pad_id, cfg.sft.packing)
    if cfg.replay.enabled:
        train = ReplayMixData(train, str(shards), cfg.replay.ratio, tok.pad_id)
    traces = SFTEvalData(str(val_path), tok.pad_id, tok.token_byte_lengths(), cfg.sft.packing) if val_path else None
    sources = tuple(validation_sources(shards)) if cfg.replay.track else ()
    if not sources:
        return train, traces
    return train, MixedEvalData(traces, str(shards), sources, tok.pad_id, tok.token_byte_lengths())


def _data_metrics(split, rejection: dict, sft: dict) -> dict[str, float]:
    m = {"data/prompts": rejection["prompts"], "data/samples": rejection["requested"], "data/kept": rejection["kept"],
         "data/keep_rate": rejection["keep_rate"], "data/verified_rate": rejection["verified_rate"],
         "data/mean_reasoning_tokens": rejection["mean_reasoning_tokens"],
         "problems/train": len(split.train), "problems/heldout": len(split.heldout),
         "problems/max_overlap": split.overlap.max_overlap, "problems/mean_overlap": split.overlap.mean_overlap,
         "sft/train_traces": sft["train_traces"], "sft/val_traces": sft["val_traces"],
         "sft/train_tokens": sft["train_tokens"], "sft/target_tokens": sft["target_tokens"]}
    m.update({f"data/dropped/{reason.replace(':', '/')}": n for reason, n in rejection["dropped"].items()})
    m.update({f"sft/dropped/{reason.split(':')[-1]}": n for reason, n in sft["dropped"].items()})
    return m


def _rows_estimate(data, seq_len: int, packing: bool) -> int:
    return max(1, -(-int(data.lengths.sum()) // seq_len)) if packing else len(data)


def _round(v, digits: int = 4):
    return None if v is None else round(float(v), digits)
