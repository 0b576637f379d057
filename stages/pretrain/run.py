"""The pretrain stage: check the inputs, measure the unigram baseline, train on Ray Train, export.

Output (``ctx.out``):
    hf/            the model in Hugging Face layout plus the tokenizer files: loads alone with
                   ``DeepSeekV3.from_pretrained`` and ``transformers.AutoTokenizer``; logged and
                   registered in MLflow as ``<pipeline name>@base``
    ray/           Ray Train's run (checkpoints, snapshot) unless train.checkpoint.storage is set
    plots/         loss_curve.png, expert_load.png (also MLflow artifacts)
    metrics.json   the summary and the baselines
"""

from __future__ import annotations

import json
import time

from pipeline.stage import StageContext
from stages.pretrain.config import PretrainConfig


def _log(msg: str) -> None:
    print(f"[pretrain] {msg}", flush=True)


def run(cfg: PretrainConfig, ctx: StageContext) -> dict[str, float | int | str]:
    import torch

    from stages.common.training import TrainJob, fit, load_model
    from stages.common.training.plots import expert_load_figure, loss_curve_figure, save_figure
    from stages.pretrain.baseline import train_token_counts, unigram_bpb, validation_bytes_check
    from stages.pretrain.data import ShardEvalData, ShardTrainData
    from tokenizer import Tokenizer
    from tokenizer.shards import ShardError, ShardReader, read_manifest

    t_start = time.perf_counter()
    train = cfg.train
    world = train.parallel.data_parallel_size   # ways the batch is split (pipeline stages share data)
    seed = ctx.seed if train.seed is None else train.seed

    # -- inputs: everything that can be wrong, before any compute -------------------------------
    upstream = ctx.input("tokenizer")
    tok = Tokenizer.load(upstream / "tokenizer")
    shards = upstream / "shards"
    manifest = read_manifest(shards)
    if manifest["vocab_size"] != tok.vocab_size:
        raise ShardError(f"{shards} was written with vocab_size {manifest['vocab_size']} but the tokenizer "
                         f"has {tok.vocab_size}: the tokenizer stage's output is inconsistent")
    model_config = cfg.build_model_config(vocab_size=tok.vocab_size, bos_token_id=tok.bos_id,
                                    eos_token_id=tok.eos_id, pad_token_id=tok.pad_id)
    problems = train.check_against(model_config)
    if problems:
        raise ValueError("; ".join(problems))
    reader = ShardReader(shards, "train", train.seq_len - 1, mix=cfg.data.mix, seed=seed, rank=0, world_size=world)
    if len(reader) < train.micro_batch_size:
        raise ShardError(f"the training split has {len(reader) * world} windows of {train.seq_len} tokens: fewer "
                         f"than one micro-batch ({train.micro_batch_size}) per data-parallel rank for {world} rank(s)")
    epochs = train.steps * train.batch_size / (len(reader) * world)
    sources = []
    for source in sorted(manifest["splits"]["validation"]["sources"]):
        try:
            n = len(ShardReader(shards, "validation", train.seq_len - 1, sources=[source], mix="natural",
                                shuffle=False, world_size=world))
        except ShardError:
            n = 0
        if n:
            sources.append(source)
        else:
            _log(f"WARNING: validation source {source!r} holds less than one {train.seq_len}-token window per "
                 f"rank; it is not evaluated")
    token_bytes = tok.token_byte_lengths()
    eval_data = ShardEvalData(str(shards), token_bytes, tuple(sources), cfg.data.document_masking) if sources else None
    _log(f"model {model_config.hidden_size}d x {model_config.num_hidden_layers} layers, "
         f"{model_config.n_routed_experts} experts, vocab {tok.vocab_size}; {train.steps} steps x "
         f"{train.batch_size} x {train.seq_len} tokens = {epochs:.2f} epochs of the training split")

    # -- the unigram baseline on exactly the targets the model will be scored on -----------------
    t0 = time.perf_counter()
    data_metrics: dict[str, float] = {"data/epochs": epochs, "data/train_windows": len(reader) * world}
    for source, (from_tokens, recorded) in validation_bytes_check(shards, token_bytes).items():
        data_metrics[f"data/val_bytes/{source}"] = recorded
        if from_tokens != recorded:
            _log(f"WARNING: validation tokens of {source!r} stand for {from_tokens:,} bytes but the manifest "
                 f"records {recorded:,}: bits per byte is computed from the tokens")
    baseline = {}
    if eval_data is not None:
        counts = train_token_counts(shards, tok.vocab_size)
        baseline = unigram_bpb(counts, eval_data, world, train.micro_batch_size, train.seq_len, train.eval.batches)
        _log("unigram baseline: " + ", ".join(f"{k} {v:.4f}" for k, v in sorted(baseline.items()) if "bpb" in k)
             + f" ({time.perf_counter() - t0:.1f}s)")
    ctx.tracker.log_metrics({**data_metrics, **baseline})

    # -- train ------------------------------------------------------------------------------------
    job = TrainJob(config=train, model_config=model_config, eval_data=eval_data, tracker=ctx.tracker, seed=seed,
                   train_data=ShardTrainData(str(shards), cfg.data.mix, cfg.data.document_masking),
                   label="pretrain")
    storage = train.checkpoint.storage or str(ctx.out / "ray")
    t_fit = time.perf_counter()
    result = fit(job, storage=storage, name=f"pretrain-{ctx.fingerprint}")
    fit_seconds = time.perf_counter() - t_fit

    # -- export: the full model from the last checkpoint (any layout), plus the tokenizer ----------
    hf = ctx.out / "hf"
    with result.checkpoint_dir() as d:
        model = load_model(d)
    model.save_pretrained(hf, dtype=getattr(torch, cfg.hf_dtype))
    tok.save(hf)
    _log(f"exported {sum(p.numel() for p in model.parameters()) / 1e6:.1f}M parameters to {hf}")

    # -- figures, metrics, registry -------------------------------------------------------------
    plots = ctx.out / "plots"
    plots.mkdir(exist_ok=True)
    state = result.state
    figures = {"loss_curve.png": loss_curve_figure(state.history, state.evals,
                                                   {k: v for k, v in baseline.items() if "bpb" in k}, "pretrain"),
               "expert_load.png": expert_load_figure(state.expert_load or [[0.0]], _layer_labels(model),
                                                     "pretrain: tokens per expert / mean, whole run")}
    for name, fig in figures.items():
        ctx.tracker.log_figure(fig, f"plots/{name}")
        save_figure(fig, plots / name)

    s = result.summary
    summary: dict[str, float | int | str] = {
        "val_bpb": _round(s.get("val_bpb")), "unigram_bpb": _round(baseline.get("unigram/bpb")),
        "val_loss": _round(s.get("val_loss")), "train_loss": _round(s.get("train_loss")),
        "tokens_per_s": round(s["tokens_per_s"], 1), "mfu": round(s["mfu"], 5),
        "steps": s["steps"], "train_tokens": s["train_tokens"], "restarts": s["restarts"],
        "skipped_steps": s["skipped_steps"], "parameters": sum(p.numel() for p in model.parameters()),
        "layout": f"dp{train.parallel.dp}xep{train.parallel.ep}", "precision": s.get("precision", train.precision),
        "peak_tflops": round(result.peak_flops / 1e12, 3), "fit_seconds": round(fit_seconds, 1),
    }
    for source in sources:
        summary[f"val_bpb_{source}"] = _round(s.get(f"val_bpb_{source}"))
        summary[f"unigram_bpb_{source}"] = _round(baseline.get(f"unigram/bpb/{source}"))
    version = ctx.tracker.register_model(hf, name=ctx.name, alias="base")
    if version:
        summary["registered_version"] = version
    summary["stage_seconds"] = round(time.perf_counter() - t_start, 1)
    summary = {k: v for k, v in summary.items() if v is not None}
    (ctx.out / "metrics.json").write_text(json.dumps({"summary": summary, "baseline": baseline, **data_metrics,
                                                      "peak_source": result.peak_source}, indent=2) + "\n")
    ctx.tracker.log_artifact(ctx.out / "metrics.json")
    _log("done: " + json.dumps(summary))
    return summary


def _layer_labels(model) -> list[str]:
    L = model.config.num_hidden_layers
    return [f"layer {i}" if i < L else f"MTP {i - L + 1}" for i in model.moe_layer_ids]


def _round(v: float | None, digits: int = 4) -> float | None:
    return None if v is None else round(float(v), digits)

