#!/usr/bin/env bash
# Every GPU measurement of the level-1 path in one command (one lease on a 2-GPU machine), each step bounded:
#   bash scripts/gpu_session.sh OUT [--dry-run]
# gpu-marked tests; nvJPEG vs PIL decode; the engine on one GPU (512 clients, and 1 client for batch-1 latency)
# and on two; the miner beside the stock axon through real dendrites. JSON and logs in OUT.
set -u -o pipefail
OUT=${1:?usage: gpu_session.sh OUT [--dry-run]}; DRY=${2:-}
PY=${PYTHON:-python3}
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 YOLO_OFFLINE=1 PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
mkdir -p "$OUT"
B="$PY -m cascade.tools.bench"
GPU_TESTS="tests/integration/test_gpu_decode.py tests/unit/test_preprocess.py tests/integration/test_expert_classifier.py
 tests/integration/test_expert_zero_shot.py tests/integration/test_expert_owlv2.py tests/integration/test_expert_detector.py
 tests/integration/test_expert_vlm_transformers.py tests/integration/test_reload_gpu.py tests/e2e/test_production_bench.py"
GPU_TESTS=$(echo $GPU_TESTS)
STEPS=(
  "models|50|$PY -m cascade.tools.make_tiny_models --out .bench/models --device cuda:0 vit-b16"
  "gpu-tests|120|$PY -m pytest -q -p no:cacheprovider -m gpu --continue-on-collection-errors $GPU_TESTS"
  "decode-bench|80|$PY -m cascade.tools.decode_bench --sections device,engine --json $OUT/decode_bench.json"
  "engine-1gpu|70|$B engine --cascade config/cascade.bench-gpu.yaml --requests 4000 --concurrency 512 --decode-workers 12 --json $OUT/engine-1gpu.json"
  "engine-1gpu-c1|25|$B engine --cascade config/cascade.bench-gpu.yaml --requests 300 --concurrency 1 --json $OUT/engine-1gpu-c1.json"
  "engine-2gpu|65|$B engine --cascade config/cascade.bench-gpu-x2.yaml --requests 5000 --concurrency 512 --decode-workers 16 --json $OUT/engine-2gpu.json"
  "axon-stock|45|$B axon --cascade config/cascade.bench-gpu.yaml --requests 1500 --concurrency 64 --wallets 8 --stock --json $OUT/axon-stock.json"
  "axon-miner|55|$B axon --cascade config/cascade.bench-gpu.yaml --requests 1500 --concurrency 64 --wallets 8 --decode-workers 8 --json $OUT/axon-miner.json"
)
start=$(date +%s)
for step in "${STEPS[@]}"; do
  IFS='|' read -r name limit cmd <<< "$step"
  if [ -n "$DRY" ]; then echo "$name ($limit s): $cmd"; continue; fi
  echo "== $(date +%T) $name (<= ${limit}s)"
  timeout "$limit" bash -c "$cmd" > "$OUT/$name.log" 2>&1
  rc=$?
  echo "== $(date +%T) $name exit $rc ($(( $(date +%s) - start ))s so far)"
  tail -n 6 "$OUT/$name.log" | cut -c1-220
done
