#!/usr/bin/env bash
# Training time per 1,000 images for a real-size ViT-B/16 (random weights, built locally; nothing is
# downloaded) on CUDA, through the real trainer: bf16, batch 64, 8 data-loading workers, 3,000 generated
# 640x480 JPEGs (2,400 trained on). Under 3 minutes on one H200.   bash scripts/train_bench.sh [OUT_DIR]
set -euo pipefail
out=${1:-train-bench}
py=${PYTHON:-.venv/bin/python}
export HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
timeout "${BENCH_TIMEOUT:-600}" $py -m sn72_lab.training_bench --model vit-b16 --images 3000 --height 480 \
  --batch-size 64 --epochs 2 --workers 8 --device cuda --precision bf16 --skip-steps 5 --out "$out" --no-progress
echo "wrote $out/bench.json"
