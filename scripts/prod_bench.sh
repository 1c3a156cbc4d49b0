#!/usr/bin/env bash
# The production-size measurement in one command (docs/performance.md, "Production size"):
#
#   bash scripts/prod_bench.sh OUT [--size full|tiny] [--dry-run]
#
# Builds the production cascade's models with random weights (on cuda:0 in bf16 for --size full; the tiny twins on
# the CPU for --size tiny), then runs `sn72-bench levels` (per level, batch 1 and batch max, memory per expert
# against memory_gb) and `sn72-bench traffic` (the real miner process: escalation 10/30/100% at a validator-like
# rate, then a 10x burst), and writes OUT/levels.json, OUT/traffic.json, OUT/summary.md (tables), OUT/env.json,
# OUT/steps.json (each step's exit code and seconds) and a log per step. Runs from the repository root with
# `python3 -m ...` (no entry points needed); $PYTHON picks the interpreter. A step that fails or runs past its time
# is reported and the next one runs; the whole run keeps to $PROD_BENCH_BUDGET_S (default 470 s; a full run on one
# or two H200s takes about 6 minutes). Exit code: 0 when every step succeeded, 1 otherwise, 2 for bad arguments.
set -o pipefail
set -u

usage() { sed -n '2,13p' "$0" | sed 's/^# \{0,1\}//'; }

OUT="" SIZE="full" DRY=0
while [ $# -gt 0 ]; do
    case "$1" in
        -h|--help) usage; exit 0 ;;
        --size) SIZE="${2:-}"; shift 2 || { echo "error: --size needs full or tiny" >&2; exit 2; } ;;
        --size=*) SIZE="${1#--size=}"; shift ;;
        --dry-run) DRY=1; shift ;;
        -*) echo "error: unknown option $1 (see --help)" >&2; exit 2 ;;
        *) [ -z "$OUT" ] || { echo "error: one OUT folder only, got $OUT and $1" >&2; exit 2; }; OUT="$1"; shift ;;
    esac
done
[ -n "$OUT" ] || { echo "error: give the OUT folder for the results (see --help)" >&2; exit 2; }
case "$SIZE" in
    full) CASCADE=config/cascade.bench-production.yaml DEVICE=cuda:0
          TRAFFIC=() ;;
    tiny) CASCADE=config/cascade.bench-production-tiny.yaml DEVICE=cpu
          TRAFFIC=(--rps 5 --duration-s 3 --burst-factor 4 --burst-s 1.5) ;;
    *) echo "error: --size must be full or tiny, got '$SIZE'" >&2; exit 2 ;;
esac

OUT="$(realpath -m "$OUT")"  # given from the caller's folder; the steps run from the repository root
cd "$(dirname "$0")/.." || exit 2
PY="${PYTHON:-python3}"
BUDGET_S="${PROD_BENCH_BUDGET_S:-470}"
export HF_HUB_OFFLINE=1 YOLO_OFFLINE=1 PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false

STEPS=(
    "env|20|$PY -c 'import json, platform, torch, transformers; print(json.dumps({\"python\": platform.python_version(), \"torch\": torch.__version__, \"transformers\": transformers.__version__, \"gpus\": [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]}))'"
    "models|150|$PY -m sn72_lab.make_tiny_models --out .bench/models --device $DEVICE --production $SIZE --skip-existing"
    "levels|150|$PY -m sn72_lab.bench levels --cascade $CASCADE --device $DEVICE --reps 10 --json $OUT/levels.json"
    "traffic|330|$PY -m sn72_lab.bench traffic --cascade $CASCADE ${TRAFFIC[*]} --json $OUT/traffic.json"
    "report|30|$PY -m sn72_lab.bench report $OUT"
)

stamp() { date '+%H:%M:%S'; }
if [ "$DRY" = 1 ]; then
    for step in "${STEPS[@]}"; do
        IFS='|' read -r name limit command <<< "$step"
        echo "$name (at most ${limit}s): $command"
    done
    exit 0
fi

mkdir -p "$OUT" || { echo "error: cannot create $OUT" >&2; exit 2; }
began=$SECONDS
failed=()
results=()
echo "[$(stamp)] prod_bench: size $SIZE, cascade $CASCADE, results in $OUT, budget ${BUDGET_S}s"
for index in "${!STEPS[@]}"; do
    IFS='|' read -r name limit command <<< "${STEPS[$index]}"
    left=$(( BUDGET_S - (SECONDS - began) ))
    [ "$name" = report ] && left=$(( left > 30 ? left : 30 ))  # the tables are always written
    if [ "$left" -lt "$limit" ]; then limit=$left; fi
    if [ "$limit" -le 0 ]; then
        echo "[$(stamp)] SKIPPED $name: the ${BUDGET_S}s budget is spent"
        failed+=("$name"); results+=("\"$name\": {\"exit\": null, \"seconds\": 0}")
        continue
    fi
    echo "[$(stamp)] step $(( index + 1 ))/${#STEPS[@]} $name (at most ${limit}s): $command"
    start=$SECONDS
    # timeout signals the step's whole process group: a miner the traffic step started is stopped with it.
    timeout --kill-after=15 "$limit" bash -c "$command" 2>&1 | tee "$OUT/$name.log"
    code=$?
    [ "$name" = env ] && [ "$code" = 0 ] && tail -n 1 "$OUT/env.log" > "$OUT/env.json"
    seconds=$(( SECONDS - start ))
    results+=("\"$name\": {\"exit\": $code, \"seconds\": $seconds}")
    if [ "$code" = 0 ]; then
        echo "[$(stamp)] ok $name in ${seconds}s"
    else
        reason="exit $code"; [ "$code" = 124 ] && reason="ran past ${limit}s"
        echo "[$(stamp)] FAILED $name ($reason) after ${seconds}s; see $OUT/$name.log; going on"
        failed+=("$name")
    fi
done
( IFS=,; echo "{${results[*]}, \"size\": \"$SIZE\", \"total_seconds\": $(( SECONDS - began ))}" ) > "$OUT/steps.json"
if [ "${#failed[@]}" -gt 0 ]; then
    echo "[$(stamp)] done in $(( SECONDS - began ))s; failed: ${failed[*]}; results in $OUT"
    exit 1
fi
echo "[$(stamp)] done in $(( SECONDS - began ))s; every step ok; results in $OUT (summary.md has the tables)"
