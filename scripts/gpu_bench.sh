#!/usr/bin/env bash
# Reproduce the GPU figures of docs/performance.md on a CUDA machine (models are built locally with
# random weights; nothing is downloaded):   bash scripts/gpu_bench.sh [OUT_DIR]
set -uo pipefail
out=${1:-bench-results}
py=${PYTHON:-.venv/bin/python}
mkdir -p "$out"
export HF_HUB_OFFLINE=1 YOLO_OFFLINE=1 PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
$py scripts/make_tiny_models.py --out .bench/models tiny-vit vit-b16 tiny-clip tiny-yolo yolo11n tiny-vlm \
  tiny-owlv2 owlv2-base \
  || echo "FAILED make_tiny_models"
run() {
  local name=$1; shift
  echo "== $name: bench.py $*"
  timeout "${BENCH_STEP_TIMEOUT:-300}" $py scripts/bench.py "$@" --json "$out/$name.json" || echo "FAILED $name"
}
run baseline baseline --model .bench/models/vit-b16 --device cuda:0 --requests 300
run ceiling ceiling --model .bench/models/vit-b16 --device cuda:0 --batch 256
run engine engine --cascade config/cascade.bench-gpu.yaml --requests 6000 --concurrency 512 --decode-workers 12
run backends backends --cascade config/cascade.bench-backends.yaml --device cuda:0
run backends-owlv2 backends --cascade config/cascade.bench-owlv2.yaml --device cuda:0 --batches 1,8,16,32
run find-batch find-batch --cascade config/cascade.bench-gpu.yaml --device cuda:0 --budget-ms 100 --reps 8
run axon axon --cascade config/cascade.bench-gpu.yaml --requests 2000 --concurrency 64 --wallets 8 --decode-workers 8
run roundtrip roundtrip --cascade config/cascade.bench-gpu.yaml --requests 200
