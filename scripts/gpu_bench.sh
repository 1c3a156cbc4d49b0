#!/usr/bin/env bash
# The GPU benchmark set in one go: a thin wrapper of `sn72-gpu-bench` (sn72_lab/gpu_bench.py).
#   bash scripts/gpu_bench.sh [OUT_DIR] | --help | --dry-run
exec "${PYTHON:-.venv/bin/python}" -m sn72_lab.gpu_bench "$@"
