#!/usr/bin/env bash
# The first command to run when a GPU is lent (< 8 min on one H100/H200): every CUDA path once,
# one JSON to bench/results/gpu_check.json, exit 1 if a check failed, 2 on a CPU-only machine.
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3)}"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
exec "$PY" bench/gpu_check.py "$@"
