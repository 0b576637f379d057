"""End-of-run figures from a :class:`TrainState`: the loss curve and the expert-load heatmap."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import matplotlib

matplotlib.use("Agg")   # no display on workers and CI
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402


def loss_curve_figure(history: Sequence[Mapping[str, float]], evals: Sequence[Mapping[str, float]],
                      baselines: Mapping[str, float] | None = None, title: str = "training"):
    """Left: train losses per step (LM, MTP, total). Right: validation bits per byte per source
    and pooled, with horizontal baselines (e.g. the unigram model of the same data)."""
    fig, (ax_loss, ax_bpb) = plt.subplots(1, 2, figsize=(12, 4.5))
    steps = [r["step"] for r in history]
    for key, style, label in (("loss", "-", "loss = lm + λ·mtp + balance"), ("lm_loss", "-", "lm_loss"),
                              ("mtp_loss", ":", "mtp_loss")):
        ax_loss.plot(steps, [r[key] for r in history], style, label=label, linewidth=1)
    val_loss = [(e["step"], e["val/loss"]) for e in evals if "val/loss" in e]
    if val_loss:
        ax_loss.plot(*zip(*val_loss, strict=True), "o-", label="val/loss", markersize=3)
    ax_loss.set(xlabel="step", ylabel="nats per token", title=f"{title}: loss")
    ax_loss.legend()
    ax_loss.grid(alpha=0.3)

    keys = sorted({k for e in evals for k in e if k.startswith("val/bpb")})
    for key in keys:
        pts = [(e["step"], e[key]) for e in evals if key in e]
        ax_bpb.plot(*zip(*pts, strict=True), "o-", label=key, markersize=3)
    for i, (name, value) in enumerate((baselines or {}).items()):
        ax_bpb.axhline(value, linestyle="--", color=f"C{i + len(keys)}", label=name)
    ax_bpb.set(xlabel="step", ylabel="bits per byte", title="validation bits per byte")
    if keys or baselines:
        ax_bpb.legend(fontsize=8)
    ax_bpb.grid(alpha=0.3)
    fig.tight_layout()
    return fig


def expert_load_figure(expert_load: Sequence[Sequence[float]], layer_labels: Sequence[str], title: str = ""):
    """Tokens routed to each expert over the run, per MoE layer, relative to the layer's mean
    (1 = perfectly balanced); each row's label carries the layer's MaxVio."""
    load = np.asarray(expert_load, dtype=np.float64)
    mean = load.mean(axis=1, keepdims=True)
    rel = np.divide(load, mean, out=np.zeros_like(load), where=mean > 0)
    fig, ax = plt.subplots(figsize=(max(6, 0.35 * load.shape[1] + 2), 0.5 * load.shape[0] + 1.8))
    im = ax.imshow(rel, aspect="auto", cmap="coolwarm", vmin=0, vmax=max(2.0, float(rel.max())))
    maxvio = rel.max(axis=1) - 1
    ax.set_yticks(range(len(layer_labels)),
                  [f"{label} (MaxVio {v:.2f})" for label, v in zip(layer_labels, maxvio, strict=True)])
    ax.set_xlabel("routed expert")
    ax.set_title(title or "expert load / mean load, whole run")
    fig.colorbar(im, ax=ax, fraction=0.03)
    fig.tight_layout()
    return fig


def save_figure(fig, path) -> None:
    fig.savefig(path, dpi=110)
    plt.close(fig)
