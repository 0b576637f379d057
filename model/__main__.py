"""``python -m model info PRESET_OR_YAML [--json]``: parameter counts and KV-cache size."""

from __future__ import annotations

import argparse
import json
import sys

from pydantic import ValidationError


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m model", description="DeepSeek-V3 model utilities")
    sub = p.add_subparsers(dest="command", required=True)
    info = sub.add_parser("info", help="parameters (total / activated / MTP) and KV-cache bytes per token")
    info.add_argument("config", help="preset name (tiny, small, deepseek-v3-671b), YAML file or checkpoint dir")
    info.add_argument("--json", action="store_true", help="print JSON instead of text")
    info.add_argument("--seq-len", type=int, default=None, help="sequence length for FLOPs per token")
    args = p.parse_args(argv)

    from model.config import ModelConfig

    try:
        config = ModelConfig.load(args.config)
    except (ValidationError, ValueError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    from model.info import format_info, model_info

    result = model_info(config, seq_len=args.seq_len)
    if args.json:
        print(json.dumps({"model": args.config, **result.as_dict()}, indent=2))
    else:
        print(format_info(args.config, result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
