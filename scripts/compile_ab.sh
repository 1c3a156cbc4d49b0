#!/usr/bin/env bash
# Batch-1 latency with and without compiled batch buckets (options.compile_max_batch), in one lease, alternated:
#   bash scripts/compile_ab.sh OUT [ROUNDS]        (one H100/H200: ~8 minutes with ROUNDS=2)
# 1. the GPU tests of the classifier backend (compiled buckets answer as eager ones; a forward inductor refuses);
# 2. `sn72-bench stages` of config/cascade.bench-gpu.yaml with --compile-max-batch 4: the worker's call, stage by
#    stage, and the whole call against an uncompiled twin in the same process (compile_ab);
# 3. `sn72-bench engine` at one client in a worker process, the cascade as it is (uncompiled) and with
#    compile_max_batch 4 added, alternated ROUNDS times (cold_start_s in each JSON says what compiling adds to a load);
# 4. `sn72-bench roundtrip` through four fronts beside the stock axon, uncompiled and compiled.
# Runs from the repository root with `python3 -m ...` (PYTHONPATH must hold the repository and the carried wheels).
set -u -o pipefail
OUT=${1:?usage: compile_ab.sh OUT [ROUNDS]}
ROUNDS=${2:-2}
PY=${PYTHON:-python3}
B="$PY -m sn72_lab.bench"
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 YOLO_OFFLINE=1 PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
mkdir -p "$OUT"
step() {  # name limit command...
  local name=$1 limit=$2; shift 2
  echo "== $(date +%T) $name"
  timeout "$limit" "$@" > "$OUT/$name.log" 2>&1
  local rc=$?  # before any command substitution, which would reset $?
  echo "== $(date +%T) $name exit $rc"
  tail -n 4 "$OUT/$name.log" | cut -c1-200
}
[ -d .bench/models/vit-b16 ] || step models 60 $PY -m sn72_lab.make_tiny_models --out .bench/models --device cuda:0 vit-b16
UNCOMPILED=config/cascade.bench-gpu.yaml
COMPILED=config/cascade.bench-gpu-compiled.yaml  # beside the original: its model path is relative to it
sed 's/^\(          positive_labels: \["Roadwork"\]\)$/\1\n          compile_max_batch: 4/' "$UNCOMPILED" > "$COMPILED"
grep -q "compile_max_batch: 4" "$COMPILED" || { echo "error: could not add compile_max_batch to $COMPILED" >&2; exit 1; }
trap 'rm -f "$COMPILED"' EXIT
step gpu-tests 120 $PY -m pytest -q -p no:cacheprovider -m gpu tests/integration/test_expert_classifier.py
step stages 150 $B stages --cascade config/cascade.bench-gpu.yaml --device cuda:0 --compile-max-batch 4 --reps 300 \
  --json "$OUT/stages.json"
for round in $(seq 1 "$ROUNDS"); do
  step "c1-uncompiled-r$round" 60 $B engine --cascade "$UNCOMPILED" --worker-process --idle-dispatch --requests 300 \
    --concurrency 1 --json "$OUT/c1-uncompiled-r$round.json"
  step "c1-compiled-r$round" 120 $B engine --cascade "$COMPILED" --worker-process --idle-dispatch \
    --requests 300 --concurrency 1 --json "$OUT/c1-compiled-r$round.json"
done
for side in uncompiled compiled; do
  cascade=$UNCOMPILED; [ "$side" = compiled ] && cascade=$COMPILED
  step "roundtrip-$side" 150 $B roundtrip --cascade "$cascade" --worker-process --idle-dispatch --requests 300 --rounds 2 \
    --processes 4 --dispatch direct --stock --stock-hotkey-once --json "$OUT/roundtrip-$side.json"
done
