"""``python -m stages.curate why CONFIG URL_OR_ID``: why a document is not in the curated corpus.

Looks the id or URL/path up in the removal ledger (``<curate output>/removed/<branch>.jsonl.gz``) of
the curate output that CONFIG (with ``--set`` overrides) maps to, and prints the step, the reason, the
measured value and the threshold; a kept document is reported as kept. CONFIG may also be a curate
output folder itself.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def output_folder(config: str, overrides: list[str]) -> Path:
    from pipeline.config import load_config
    from pipeline.dag import Dag
    from pipeline.registry import load_stages
    from pipeline.storage import Storage

    if Path(config).is_dir():
        return Path(config)
    stages = load_stages()
    cfg = load_config(config, stages, overrides)
    node = Dag(stages, cfg)["curate"]
    return Storage(cfg.globals.output_root).local_path("curate", node.fingerprint)


def describe(hit: dict) -> str:
    if hit.get("kept"):
        return f"kept in {hit['branch']} (id {hit['id']}, language {hit.get('language')})"
    measured = ""
    if hit.get("value") is not None or hit.get("threshold") is not None:
        measured = f": measured {hit.get('value')}, threshold {hit.get('threshold')}"
    lang = f", language {hit['language']}" if hit.get("language") else ""
    return (f"removed from {hit['branch']} at step {hit['step']!r}, reason {hit['reason']!r}{measured}"
            f" (id {hit['id']}{lang})")


def main(argv: list[str] | None = None) -> int:
    from stages.curate.ledger import find_removal

    p = argparse.ArgumentParser(prog="python -m stages.curate why", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("config", help="pipeline YAML (or a curate output folder)")
    p.add_argument("key", help="document id, URL or local path")
    p.add_argument("--set", action="append", metavar="KEY.PATH=VALUE", help="override a config value")
    p.add_argument("--json", action="store_true", help="print the ledger lines as JSON")
    args = p.parse_args(argv)
    out = output_folder(args.config, list(args.set or []))
    if not (out / "stats.json").exists():
        print(f"error: curate has no finished output for this config at {out}; run it first: "
              f"python -m stages.curate --config {args.config}", file=sys.stderr)
        return 2
    hits = find_removal(out, args.key)
    if not hits:
        print(f"{args.key}: not among this run's documents (neither kept nor in the removal ledger at "
              f"{out / 'removed'}); unreadable records are counted by reason in stats.json only")
        return 1
    for hit in hits:
        print(json.dumps(hit, ensure_ascii=False) if args.json else f"{args.key}: {describe(hit)}")
    return 0
