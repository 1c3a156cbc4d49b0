#!/usr/bin/env bash
# Every GPU measurement in two bounded commands (one 2-GPU lease each), results tarred into OUT/PART.tgz:
#   bash scripts/gpu_session.sh level1 OUT [--dry-run]       (15-18 minutes; each step's limit is in STEPS)
#     gpu-marked tests; nvJPEG vs PIL decode; the engine with ViT-B/16 on one GPU (512 clients, and one client
#     for batch-1 latency; with and without idle dispatch; in threads and in worker processes), with experts that
#     cost nothing (the request path's ceiling) and with a stand-in device in a worker (the request path in front of
#     a GPU-like expert, `--null-device-ms`), the subnet's reference pipeline, the engine on two GPUs (threads,
#     workers); the miner (threads, workers) beside bittensor's stock axon through real dendrites. One command may
#     run 10 minutes at most: split the steps over two or three commands with ONLY (docs/performance.md has one).
#   bash scripts/gpu_session.sh production OUT [--dry-run]   (5 minutes on two H200s, at most 9)
#     the production-size cascade (scripts/prod_bench.sh) on both GPUs, the training bench on the second GPU
#     while the models are built, then the hot-reload bench (device memory before, during and after).
# ONLY="step step ..." runs the named steps alone (the names the dry run prints). BUDGET_S=N: every step's limit is cut
# to what is left of N seconds from the start, and steps with under 10 s left are skipped, so the results are packed
# before the device's own per-command limit ends the command (a command cut off there brings nothing back).
# Each step has its own time limit; a failing step is logged and the next one runs. Runs from the repository
# root with `python3 -m ...` (PYTHONPATH must hold the repository and the carried wheels, pybase64 among them).
set -u -o pipefail
PART=${1:?usage: gpu_session.sh level1|production OUT [--dry-run]}
OUT=${2:?usage: gpu_session.sh level1|production OUT [--dry-run]}
DRY=${3:-}
PY=${PYTHON:-python3}
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 YOLO_OFFLINE=1 PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
WORK=$(mktemp -d)/$PART
mkdir -p "$WORK" "$OUT"
B="$PY -m sn72_lab.bench"
GPU_TESTS="tests/integration/test_gpu_decode.py tests/unit/test_preprocess.py tests/integration/test_expert_classifier.py
 tests/integration/test_expert_zero_shot.py tests/integration/test_expert_owlv2.py tests/integration/test_expert_detector.py
 tests/integration/test_expert_vlm_transformers.py tests/integration/test_reload_gpu.py tests/e2e/test_production_bench.py
 tests/integration/test_worker_process.py"
GPU_TESTS=$(echo $GPU_TESTS)
case "$PART" in
  level1) STEPS=(
    "models|50|[ -d .bench/models/vit-b16 ] || $PY -m sn72_lab.make_tiny_models --out .bench/models --device cuda:0 vit-b16"
    "gpu-tests|120|$PY -m pytest -q -p no:cacheprovider -m gpu --continue-on-collection-errors $GPU_TESTS"
    "decode-bench|80|$PY -m sn72_lab.decode_bench --sections device,engine --json $WORK/decode_bench.json"
    "engine-1gpu|70|$B engine --cascade config/cascade.bench-gpu.yaml --requests 4000 --concurrency 512 --decode-workers 12 --json $WORK/engine-1gpu.json"
    "engine-1gpu-c1|40|$B engine --cascade config/cascade.bench-gpu.yaml --requests 300 --concurrency 1 --json $WORK/engine-1gpu-c1.json"
    "engine-1gpu-idle|70|$B engine --cascade config/cascade.bench-gpu.yaml --idle-dispatch --requests 4000 --concurrency 512 --decode-workers 12 --json $WORK/engine-1gpu-idle.json"
    "engine-1gpu-c1-idle|40|$B engine --cascade config/cascade.bench-gpu.yaml --idle-dispatch --requests 300 --concurrency 1 --json $WORK/engine-1gpu-c1-idle.json"
    "engine-1gpu-proc|80|$B engine --cascade config/cascade.bench-gpu.yaml --worker-process --idle-dispatch --requests 6000 --concurrency 512 --decode-workers 12 --json $WORK/engine-1gpu-proc.json"
    "engine-1gpu-proc-asyncio|80|$B engine --cascade config/cascade.bench-gpu.yaml --event-loop asyncio --worker-process --idle-dispatch --requests 6000 --concurrency 512 --decode-workers 12 --json $WORK/engine-1gpu-proc-asyncio.json"
    "engine-1gpu-proc-admit-all|80|$B engine --cascade config/cascade.bench-gpu.yaml --worker-process --idle-dispatch --requests 6000 --concurrency 512 --max-in-flight 1024 --decode-workers 12 --json $WORK/engine-1gpu-proc-admit-all.json"
    "stages|90|$B stages --cascade config/cascade.bench-gpu.yaml --device cuda:0 --reps 300 --json $WORK/stages.json"
    "engine-1gpu-c1-proc|50|$B engine --cascade config/cascade.bench-gpu.yaml --worker-process --idle-dispatch --requests 300 --concurrency 1 --json $WORK/engine-1gpu-c1-proc.json"
    "engine-2gpu-proc|100|$B engine --cascade config/cascade.bench-gpu-x2.yaml --worker-process --idle-dispatch --requests 8000 --concurrency 512 --decode-workers 16 --json $WORK/engine-2gpu-proc.json"
    "engine-2gpu-proc-admit-all|100|$B engine --cascade config/cascade.bench-gpu-x2.yaml --worker-process --idle-dispatch --requests 8000 --concurrency 512 --max-in-flight 1024 --decode-workers 16 --json $WORK/engine-2gpu-proc-admit-all.json"
    "engine-2gpu-proc-c1024|110|$B engine --cascade config/cascade.bench-gpu-x2.yaml --worker-process --idle-dispatch --requests 12000 --concurrency 1024 --max-in-flight 2048 --decode-workers 16 --json $WORK/engine-2gpu-proc-c1024.json"
    "engine-2gpu-proc-pool|100|$B engine --cascade config/cascade.bench-gpu-x2.yaml --inline-check-max-bytes 0 --worker-process --idle-dispatch --requests 8000 --concurrency 512 --decode-workers 16 --json $WORK/engine-2gpu-proc-pool.json"
    "engine-2gpu-proc-asyncio|100|$B engine --cascade config/cascade.bench-gpu-x2.yaml --event-loop asyncio --worker-process --idle-dispatch --requests 8000 --concurrency 512 --decode-workers 16 --json $WORK/engine-2gpu-proc-asyncio.json"
    "engine-standin-proc|60|$B engine --cascade config/cascade.bench-gpu.yaml --null-experts --null-device-ms 3 0.45 --worker-process --idle-dispatch --requests 6000 --concurrency 512 --decode-workers 12 --json $WORK/engine-standin-proc.json"
    "engine-null-1gpu-asyncio|45|$B engine --cascade config/cascade.bench-gpu.yaml --event-loop asyncio --null-experts --requests 4000 --concurrency 512 --max-in-flight 1024 --decode-workers 12 --json $WORK/engine-null-1gpu-asyncio.json"
    "engine-null-2proc|120|$B engine --cascade config/cascade.bench-gpu-x2.yaml --null-experts --worker-process --idle-dispatch --requests 8000 --concurrency 512 --max-in-flight 1024 --decode-workers 16 --json $WORK/engine-null-2proc.json"
    "engine-null-1gpu|45|$B engine --cascade config/cascade.bench-gpu.yaml --null-experts --requests 4000 --concurrency 512 --max-in-flight 1024 --decode-workers 12 --json $WORK/engine-null-1gpu.json"
    "baseline|60|$B baseline --model .bench/models/vit-b16 --device cuda:0 --json $WORK/baseline.json"
    "engine-2gpu|65|$B engine --cascade config/cascade.bench-gpu-x2.yaml --requests 5000 --concurrency 512 --decode-workers 16 --json $WORK/engine-2gpu.json"
    "axon-stock|45|$B axon --cascade config/cascade.bench-gpu.yaml --requests 1500 --concurrency 64 --wallets 8 --stock --json $WORK/axon-stock.json"
    "axon-miner|55|$B axon --cascade config/cascade.bench-gpu.yaml --requests 1500 --concurrency 64 --wallets 8 --decode-workers 8 --json $WORK/axon-miner.json"
    "axon-miner-proc|70|$B axon --cascade config/cascade.bench-gpu.yaml --worker-process --idle-dispatch --requests 1500 --concurrency 64 --wallets 8 --decode-workers 8 --json $WORK/axon-miner-proc.json"
    "axon-vs-stock|260|$B axon-vs-stock --cascade config/cascade.bench-gpu.yaml --worker-process --idle-dispatch --requests 1500 --concurrency 64 --wallets 8 --decode-workers 8 --rounds 3 --json $WORK/axon-vs-stock.json"
    "axon-vs-stock-strict|260|$B axon-vs-stock --stock-hotkey-once --cascade config/cascade.bench-gpu.yaml --worker-process --idle-dispatch --requests 1500 --concurrency 64 --wallets 8 --decode-workers 8 --rounds 3 --json $WORK/axon-vs-stock-strict.json"
    "axon-fronts|480|$B axon-vs-stock --stock-hotkey-once --cascade config/cascade.bench-gpu.yaml --worker-process --idle-dispatch --requests 4000 --concurrency 256 --client-processes 4 --wallets 8 --decode-workers 8 --rounds 3 --processes 0 4 --json $WORK/axon-fronts.json"
    "axon-fronts-c512|150|$B axon --cascade config/cascade.bench-gpu.yaml --worker-process --idle-dispatch --requests 8000 --concurrency 512 --client-processes 6 --wallets 8 --decode-workers 8 --processes 8 --json $WORK/axon-fronts-c512.json"
    "engine-1gpu-proc-c256|80|$B engine --cascade config/cascade.bench-gpu.yaml --worker-process --idle-dispatch --requests 6000 --concurrency 256 --decode-workers 12 --json $WORK/engine-1gpu-proc-c256.json"
    "axon-fronts-gil|150|if command -v py-spy >/dev/null; then py-spy record --subprocesses --gil --threads --nonblocking -r 100 --format raw -o $WORK/fronts-gil.raw -- $B axon --cascade config/cascade.bench-gpu.yaml --worker-process --idle-dispatch --requests 12000 --concurrency 256 --client-processes 4 --wallets 8 --decode-workers 8 --processes 8 --json $WORK/axon-fronts-gil.json && gzip $WORK/fronts-gil.raw; else echo 'py-spy is not installed (carry its wheel)'; exit 3; fi"
    "axon-fronts-1gpu-c512|420|$B axon-vs-stock --stock-hotkey-once --cascade config/cascade.bench-gpu.yaml --worker-process --idle-dispatch --requests 8000 --concurrency 512 --client-processes 8 --wallets 8 --decode-workers 8 --rounds 3 --processes 8 --json $WORK/axon-fronts-1gpu-c512.json"
    "axon-fronts-2gpu-c512|420|$B axon-vs-stock --stock-hotkey-once --cascade config/cascade.bench-gpu-x2.yaml --worker-process --idle-dispatch --requests 8000 --concurrency 512 --client-processes 8 --wallets 8 --decode-workers 16 --rounds 3 --processes 8 --json $WORK/axon-fronts-2gpu-c512.json"
    "roundtrip-fronts|150|$B roundtrip --cascade config/cascade.bench-gpu.yaml --worker-process --idle-dispatch --requests 300 --rounds 2 --processes 4 --stock --stock-hotkey-once --json $WORK/roundtrip-fronts.json"
    "axon-direct|330|$B axon-vs-stock --stock-hotkey-once --cascade config/cascade.bench-gpu.yaml --worker-process --idle-dispatch --requests 4000 --concurrency 256 --client-processes 4 --wallets 8 --decode-workers 8 --rounds 3 --processes 8 --dispatch direct --json $WORK/axon-direct.json"
    "roundtrip-direct|120|$B roundtrip --cascade config/cascade.bench-gpu.yaml --worker-process --idle-dispatch --requests 300 --rounds 2 --processes 4 --dispatch direct --stock --stock-hotkey-once --json $WORK/roundtrip-direct.json"
    "roundtrip-p0|120|$B roundtrip --cascade config/cascade.bench-gpu.yaml --worker-process --idle-dispatch --requests 300 --rounds 2 --processes 0 --dispatch direct --stock --stock-hotkey-once --json $WORK/roundtrip-p0.json"
    "axon-dispatch|560|$B axon-vs-stock --stock-hotkey-once --cascade config/cascade.bench-gpu.yaml --worker-process --idle-dispatch --requests 4000 --concurrency 256 --client-processes 4 --wallets 8 --decode-workers 8 --rounds 3 --processes 8 --dispatch direct fastapi --json $WORK/axon-dispatch.json"
    "roundtrip-dispatch|200|$B roundtrip --cascade config/cascade.bench-gpu.yaml --worker-process --idle-dispatch --requests 300 --rounds 2 --processes 4 --dispatch direct fastapi --stock --stock-hotkey-once --json $WORK/roundtrip-dispatch.json"
    "axon-miner-proc-asyncio|70|$B axon --cascade config/cascade.bench-gpu.yaml --event-loop asyncio --worker-process --idle-dispatch --requests 1500 --concurrency 64 --wallets 8 --decode-workers 8 --json $WORK/axon-miner-proc-asyncio.json"
  ) ;;
  production) STEPS=(
    "train-bench-bg|5|(CUDA_VISIBLE_DEVICES=1 PYTHON=$PY BENCH_TIMEOUT=170 bash scripts/train_bench.sh $WORK/train > $WORK/train.log 2>&1 &)"
    "prod-bench|420|PYTHON=$PY PROD_BENCH_BUDGET_S=400 bash scripts/prod_bench.sh $WORK/prod"
    "reload-bench|110|$PY -m sn72_lab.reload_bench --device cuda:0 --size base --out $WORK/reload.json"
  ) ;;
  *) echo "error: PART is level1 or production, got $PART" >&2; exit 2 ;;
esac
start=$(date +%s)
for step in "${STEPS[@]}"; do
  IFS='|' read -r name limit cmd <<< "$step"
  if [ -n "${ONLY:-}" ] && [[ " $ONLY " != *" $name "* ]]; then continue; fi
  if [ -n "$DRY" ]; then echo "$name (<= ${limit}s): $cmd"; continue; fi
  if [ -n "${BUDGET_S:-}" ]; then
    left=$(( BUDGET_S - ($(date +%s) - start) ))
    if [ "$left" -lt 10 ]; then echo "== $name skipped: ${left}s left of BUDGET_S=$BUDGET_S"; continue; fi
    [ "$left" -lt "$limit" ] && limit=$left
  fi
  echo "== $(date +%T) $name (<= ${limit}s)"
  timeout "$limit" bash -c "$cmd" > "$WORK/$name.log" 2>&1
  rc=$?
  echo "== $(date +%T) $name exit $rc ($(( $(date +%s) - start ))s so far)"
  tail -n 8 "$WORK/$name.log" | cut -c1-240
done
[ -n "$DRY" ] && exit 0
# Only the figures and logs come back (not the training images or checkpoints).
(cd "$(dirname "$WORK")" && find "$PART" -type f \( -name '*.json' -o -name '*.log' -o -name '*.md' -o -name '*.txt' -o -name '*.xml' -o -name '*.gz' \) \
   -size -4M -print0 | tar czf "$OUT/$PART.tgz" --null -T -) && echo "results: $OUT/$PART.tgz ($(du -h "$OUT/$PART.tgz" | cut -f1))"
