"""What a person looks at: stats.json, the funnel plot, audit samples, and the MLflow record."""

from __future__ import annotations

import json
import re
from pathlib import Path

from stages.curate.accounting import merge_samples
from stages.curate.ledger import BranchBooks


def metric_name(*parts: str) -> str:
    """MLflow accepts letters, digits, _ - . / and spaces in metric names."""
    return "/".join(re.sub(r"[^A-Za-z0-9_.\- ]", "_", p) for p in parts)


def collect_samples(audit_dir: Path, k: int) -> dict[str, dict[str, list[dict]]]:
    """{step: {outcome: samples}} merged over tasks (bottom-k by id hash)."""
    out = {}
    for step_dir in sorted(p for p in audit_dir.glob("*") if p.is_dir()):
        records = [json.loads(line) for f in sorted(step_dir.glob("*.jsonl"))
                   for line in f.read_text().splitlines() if line.strip()]
        out[step_dir.name] = merge_samples(records, k)
    return out


def funnel_metrics(books: dict[str, BranchBooks]) -> dict[str, float]:
    m: dict[str, float] = {}
    for branch, b in books.items():
        m[metric_name("data", branch, "docs_in")] = b.docs_in
        m[metric_name("data", branch, "read_bytes")] = b.bytes_read
        m[metric_name("data", branch, "kept")] = b.files_docs
        m[metric_name("data", branch, "kept_bytes")] = b.published_bytes
        m[metric_name("data", branch, "removed")] = b.removed
        m[metric_name("data", branch, "unreadable")] = sum(b.unreadable.values())
        for reason, n in b.unreadable.items():
            m[metric_name("data", branch, "unreadable", reason)] = n
        for r in b.rows:
            base = ("data", branch, r.step)
            m[metric_name(*base, "in")] = r.docs_in
            m[metric_name(*base, "kept")] = r.kept
            m[metric_name(*base, "removed")] = r.removed
            m[metric_name(*base, "kept_bytes")] = r.kept_bytes
            m[metric_name(*base, "removed_bytes")] = r.removed_bytes
            for reason, n in r.reasons.items():
                m[metric_name(*base, "removed", reason)] = n
            for key, n in r.extra.items():
                m[metric_name(*base, key)] = n
    return m


def funnel_table(books: dict[str, BranchBooks]) -> list[dict]:
    rows = []
    for branch, b in books.items():
        rows.append({"branch": branch, "step": "read", "in": b.docs_in, "kept": b.docs_read,
                     "removed": sum(b.unreadable.values()), "kept_MB": round(b.bytes_read / 1e6, 3),
                     "removed_MB": None, "reasons": json.dumps(dict(b.unreadable))})
        for r in b.rows:
            rows.append({"branch": branch, "step": r.step, "in": r.docs_in, "kept": r.kept, "removed": r.removed,
                         "kept_MB": round(r.kept_bytes / 1e6, 3), "removed_MB": round(r.removed_bytes / 1e6, 3),
                         "reasons": json.dumps(r.reasons)})
    return rows


def funnel_figure(books: dict[str, BranchBooks]):
    """Documents and MB surviving each step, one panel per branch."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(books), figsize=(6.5 * len(books), 4.8), squeeze=False)
    for ax, (branch, b) in zip(axes[0], books.items(), strict=True):
        labels = ["input"] + ["read"] + [r.step for r in b.rows]
        docs = [b.docs_in, b.docs_read] + [r.kept for r in b.rows]
        mb = [None, b.bytes_read / 1e6] + [r.kept_bytes / 1e6 for r in b.rows]
        y = list(range(len(labels)))[::-1]
        ax.barh(y, docs, color="#4C72B0")
        for yi, d, m in zip(y, docs, mb, strict=True):
            ax.text(d, yi, f" {d:,}" + (f"  ({m:.2f} MB)" if m is not None else ""), va="center", fontsize=8)
        ax.set_yticks(y, labels, fontsize=8)
        ax.set_xlabel("documents remaining")
        ax.set_title(f"{branch}: {b.docs_in:,} in -> {b.files_docs:,} kept "
                     f"({b.published_bytes / 1e6:.2f} MB)", fontsize=10)
        ax.set_xlim(0, max(docs) * 1.45 if max(docs) else 1)
    fig.tight_layout()
    return fig


def language_funnel_table(by_language: dict[str, dict[str, dict]]) -> list[dict]:
    """One row per branch and language LID found: documents in, removed at each step, kept."""
    return [{"branch": b, "language": lang, **counts} for b, langs in by_language.items()
            for lang, counts in langs.items()]


def language_funnel_figure(by_language: dict[str, dict[str, dict]], top: int = 12):
    """Per language (the most frequent ``top``): kept and removed-by-step shares, stacked bars."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [(f"{b}:{lang}", c) for b, langs in by_language.items() for lang, c in list(langs.items())[:top]]
    steps = [s for s in dict.fromkeys(k for _, c in rows for k in c) if s not in ("in", "kept")]
    fig, ax = plt.subplots(figsize=(9, 0.45 * len(rows) + 1.8))
    y = list(range(len(rows)))[::-1]
    left = [0.0] * len(rows)
    colors = plt.get_cmap("tab20").colors
    for i, part in enumerate(["kept", *steps]):
        widths = [c.get(part, 0) / max(1, c["in"]) for _, c in rows]
        ax.barh(y, widths, left=left, color="#55A868" if part == "kept" else colors[i % len(colors)], label=part)
        left = [a + w for a, w in zip(left, widths, strict=True)]
    ax.set_yticks(y, [f"{name} ({c['in']})" for name, c in rows], fontsize=8)
    ax.set_xlabel("share of the language's documents (kept, then removed by step)")
    ax.set_xlim(0, 1)
    ax.legend(fontsize=7, loc="lower right", ncol=2)
    ax.set_title("curate funnel per language (language as LID found it)", fontsize=10)
    fig.tight_layout()
    return fig


def log_to_tracker(tracker, out: Path, stats: dict, books: dict[str, BranchBooks],
                   samples: dict[str, dict], figure, language_figure=None) -> None:
    if not tracker.active:
        return
    tracker.log_metrics(funnel_metrics(books))
    # the funnel as a line over steps as well: MLflow's chart of data/funnel/<branch>/kept vs step
    for branch, b in books.items():
        series = [b.docs_read] + [r.kept for r in b.rows]
        for i, n in enumerate(series):
            tracker.log_metrics({metric_name("data", "funnel", branch, "kept"): n}, step=i)
    flat = {}
    for key, value in stats.get("summary", {}).items():
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            flat[metric_name("curate", key)] = value
    for key, value in (stats.get("quality") or {}).get("heldout", {}).items():
        flat[metric_name("quality", "heldout", key)] = value
    for key, value in (stats.get("quality") or {}).get("human_agreement", {}).items():
        if isinstance(value, (int, float)):
            flat[metric_name("quality", "human", key)] = value
    tracker.log_metrics(flat)
    tracker.log_table(funnel_table(books), "curate/funnel_table.json")
    tracker.log_figure(figure, "curate/funnel.png")
    by_language = stats.get("by_language") or {}
    if by_language:
        tracker.log_table(language_funnel_table(by_language), "curate/funnel_by_language.json")
        for b, langs in by_language.items():
            for lang, c in langs.items():
                tracker.log_metrics({metric_name("data", b, "language", lang, "in"): c["in"],
                                     metric_name("data", b, "language", lang, "kept"): c["kept"]})
    if language_figure is not None:
        tracker.log_figure(language_figure, "curate/funnel_by_language.png")
    for f in sorted((out / "removed").glob("*.jsonl.gz")):
        tracker.log_artifact(f, "curate/removed")
    tracker.log_artifact(out / "stats.json", "curate")
    for branch, by_step in samples.items():
        for step, outcomes in by_step.items():
            tracker.log_dict(outcomes, f"curate/samples/{branch}/{step}.json")
    if (out / "quality").is_dir():  # the model, its featurizer and its held-out report
        tracker.log_artifacts(out / "quality", "curate/quality")
