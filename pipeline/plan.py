"""``python -m pipeline plan CONFIG --gpus N --gpu-mem GB``: memory per GPU of the pretrain layout.

Reads the same ``pretrain.model`` and ``pretrain.train.parallel`` fields the trainer runs with
(so planning and running agree), builds the model on the meta device and prints, per pipeline
rank, weights, master weights, gradients, optimizer states and an activation estimate, and
whether the busiest GPU fits. ``--gpus`` sets the data-parallel degree (N / (pp x ep)); the
rest of the layout comes from the config (or ``--set pretrain.train.parallel.pp=...``).
See :mod:`model.parallel.memory` for what is counted.
"""

from __future__ import annotations

from pipeline.config import ConfigError


def add_command(sub, with_config) -> None:
    p = sub.add_parser("plan", help="memory per GPU of the pretrain layout (weights, grads, optimizer, activations)")
    with_config(p)
    p.add_argument("--gpus", type=int, default=None,
                   help="GPUs in all; sets parallel.dp = GPUS / (pp x ep) (default: the config's layout)")
    p.add_argument("--gpu-mem", type=float, default=80.0,
                   help="memory of one GPU as vendors state it, in GiB (default 80: an 80GB H100 holds 80 GiB)")
    p.add_argument("--recipe", choices=("whale", "deepseek"), default="whale",
                   help="bytes per parameter: whale = this trainer (FP32 params, grads, moments); deepseek = "
                        "V3's (BF16 weights and moments, FP32 master and grads)")
    p.add_argument("--json", action="store_true", help="print the plan as JSON")
    p.set_defaults(func=cmd_plan)


def plan_for(cfg, gpus: int | None, recipe: str):
    """(name, model config, MemoryPlan) for a loaded pipeline config; ConfigError if it cannot be planned."""
    from model.parallel.memory import MemoryLayout, memory_plan

    if "pretrain" not in cfg.sections:
        raise ConfigError("the config has no pretrain section to plan")
    pre = cfg["pretrain"]
    train, par = pre.train, pre.train.parallel
    model_config = pre.build_model_config()
    dp = par.dp
    if gpus is not None:
        if gpus < 1 or gpus % (par.pp * par.ep):
            raise ConfigError(f"--gpus {gpus} is not a multiple of pp x ep ({par.pp} x {par.ep} = {par.pp * par.ep})")
        dp = gpus // (par.pp * par.ep)
        data_ranks = dp * par.ep
        if train.batch_size % (data_ranks * train.num_microbatches):
            raise ConfigError(f"batch_size ({train.batch_size}) does not divide over {data_ranks} data-parallel ranks "
                              f"x {train.num_microbatches} micro-batches with --gpus {gpus}")
    mbs = train.batch_size // (dp * par.ep * train.num_microbatches)
    problems = par.check_model(model_config.num_hidden_layers, model_config.num_nextn_predict_layers,
                               model_config.n_routed_experts)
    if problems:
        raise ConfigError("; ".join(problems))
    layout = MemoryLayout(pp=par.pp, dp=dp, ep=par.ep, zero=par.zero, schedule=par.schedule,
                          virtual_stages=par.virtual_stages, micro_batch_size=mbs, seq_len=train.seq_len,
                          microbatches=train.num_microbatches, activation_checkpointing=train.checkpointing,
                          recipe=recipe, fp8_activations=recipe == "deepseek" and train.precision == "fp8")
    return cfg.name, model_config, memory_plan(model_config, layout)


def cmd_plan(args) -> int:
    import json
    from dataclasses import asdict

    from model.parallel.memory import format_plan
    from pipeline.cli import EXIT_FAILED, _load
    from pipeline.console import console

    cfg, _ = _load(args)
    name, _, plan = plan_for(cfg, args.gpus, args.recipe)
    gpu_bytes = args.gpu_mem * 2**30   # GPU vendors' "GB" of HBM are GiB (an "80GB" H100 reports 81559 MiB)
    if args.json:
        print(json.dumps({"layout": asdict(plan.layout), "gpu_bytes": gpu_bytes, "fits": plan.fits(gpu_bytes),
                          "total_params": plan.total_params,
                          "ranks": [{**asdict(r), "total_bytes": r.total_bytes} for r in plan.ranks]}, indent=1))
    else:
        console.print(format_plan(name, plan, gpu_bytes), highlight=False, markup=False)
    return 0 if plan.fits(gpu_bytes) else EXIT_FAILED
