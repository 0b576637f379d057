"""Test-only stages for the browser test (never part of the product): data -> train -> tune.

They leave in MLflow what the real stages do, in miniature: metrics logged over several steps,
artifacts, and model versions registered under the aliases the real pipeline uses
(``base`` from train; ``candidate`` and ``champion`` from tune).
"""

from __future__ import annotations

from pipeline.stage import Resources, Stage, StageConfig

ALIASES = {"train": ("base",), "tune": ("candidate", "champion")}


class ToyConfig(StageConfig):
    steps: int = 6


def model_name(pipeline_name: str) -> str:
    return f"{pipeline_name}-lm"


def _make_run(name: str):
    def run(cfg: ToyConfig, ctx) -> dict:
        loss = 4.0
        for step in range(cfg.steps):
            loss *= 0.7
            ctx.tracker.log_metrics({f"{name}/loss": loss, f"{name}/tokens_per_s": 1000.0 + step}, step=step)
        (ctx.out / "notes.md").write_text(f"# {name}\nfinal loss {loss:.4f}\n")
        ctx.tracker.log_artifact(ctx.out / "notes.md")
        ctx.tracker.log_dict({"stage": name, "loss": loss}, f"{name}-summary.json")
        if name in ALIASES:
            weights = ctx.out / "model"
            weights.mkdir()
            (weights / "weights.txt").write_text(f"{name} {loss}\n")
            for alias in ALIASES[name]:
                ctx.tracker.register_model(weights, model_name(ctx.name), alias)
        return {"loss": loss}

    run.__name__ = f"run_{name}"
    return run


def toy(name: str, upstream: tuple[str, ...] = ()) -> Stage:
    return Stage(name=name, config=ToyConfig, run=_make_run(name), upstream=upstream,
                 resources=Resources(cpus=0.5), code=("tests.e2e.toy_pipeline",), key_metric="loss")


STAGES = [toy("data"), toy("train", ("data",)), toy("tune", ("train",))]
