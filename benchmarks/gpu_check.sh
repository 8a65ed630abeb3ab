#!/usr/bin/env bash
# One GPU check for issue 13, under 8 minutes on one GPU; prints one table (see benchmarks/gpu_check.py).
#
#   bash benchmarks/gpu_check.sh               # one CUDA GPU: reference config, 50 x 512 x 512 inference
#   bash benchmarks/gpu_check.sh --cpu-smoke   # the same steps on the CPU (tiny config): proves the script runs
#
# PYTHON selects the interpreter (default: python3 on PATH); the working tree's ctslice is used.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
# A hard stop above the script's own budget (450 s on a GPU, 600 s for the smoke run), which leaves it
# time to print the table.
limit=480
[[ " $* " == *" --cpu-smoke "* ]] && limit=660
exec timeout "$limit" "$PYTHON" benchmarks/gpu_check.py "$@"
