#!/usr/bin/env bash
# The same GPU figures for two versions of the code in one lease, alternated so drift hits both alike:
#   bash scripts/code_ab.sh BEFORE_TREE OUT engine [ROUNDS]   (one H200: ~3 minutes a round)
#   bash scripts/code_ab.sh BEFORE_TREE OUT axon [ROUNDS]      (one H200: ~1.5 minutes a round)
# BEFORE_TREE is an unpacked older checkout (`git archive <commit> | tar -x -C DIR`); "after" is this repository.
# engine: level 1 at production settings (config/cascade.bench-gpu-prod.yaml, idle dispatch as the default is now)
#   under 512 closed-loop clients (throughput) and one client (batch-1 latency), ROUNDS times per side.
# axon: the miner beside bittensor's stock axon through real dendrites (sn72-bench axon-vs-stock, ROUNDS rounds inside).
# Each side runs from its own tree (`python -m` puts the working directory first on sys.path), with the models
# built once under this repository's .bench/. OUT/summary.txt has the medians and ranges per side.
set -u -o pipefail
BEFORE=$(cd "${1:?usage: code_ab.sh BEFORE_TREE OUT engine|axon [ROUNDS]}" && pwd)
mkdir -p "${2:?usage: code_ab.sh BEFORE_TREE OUT engine|axon [ROUNDS]}"
OUT=$(cd "$2" && pwd)
WHAT=${3:?usage: code_ab.sh BEFORE_TREE OUT engine|axon [ROUNDS]}
ROUNDS=${4:-3}
SIDES=${SIDES:-before after}  # SIDES="after before" runs the newer code first in each round (an order check)
AFTER=$(pwd)
PY=${PYTHON:-python3}
EXTRA=${EXTRA_PYTHONPATH:-}
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 YOLO_OFFLINE=1 PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
bench_module() {  # the bench moved from cascade/tools/ to sn72_lab/ in the layout change
  if [ -f "$1/sn72_lab/bench.py" ]; then echo sn72_lab.bench; else echo cascade.tools.bench; fi
}
run_side() {  # side tree limit name args...
  local side=$1 tree=$2 limit=$3 name=$4; shift 4
  (cd "$tree" && PYTHONPATH="$tree${EXTRA:+:$EXTRA}" timeout "$limit" $PY -m "$(bench_module "$tree")" "$@" \
    --json "$OUT/$side-$name.json" > "$OUT/$side-$name.log" 2>&1) || echo "run $side $name failed (see $side-$name.log)"
}
[ -d .bench/models/vit-b16 ] || PYTHONPATH="$AFTER${EXTRA:+:$EXTRA}" $PY -m sn72_lab.make_tiny_models \
  --out .bench/models --device cuda:0 vit-b16 > "$OUT/models.log" 2>&1 \
  || { echo "error: building vit-b16 failed (see $OUT/models.log)" >&2; exit 1; }
[ -e "$BEFORE/.bench" ] || ln -s "$AFTER/.bench" "$BEFORE/.bench"
case "$WHAT" in
  engine)
    for round in $(seq 1 "$ROUNDS"); do
      for side in $SIDES; do
        tree=$AFTER; [ "$side" = before ] && tree=$BEFORE
        run_side "$side" "$tree" 120 "c512-r$round" engine --cascade config/cascade.bench-gpu-prod.yaml --idle-dispatch \
          --requests 6000 --concurrency 512 --decode-workers 12
        run_side "$side" "$tree" 60 "c1-r$round" engine --cascade config/cascade.bench-gpu-prod.yaml --idle-dispatch \
          --requests 300 --concurrency 1
        echo "== $(date +%T) round $round $side done"
      done
    done ;;
  axon)
    for side in $SIDES; do
      tree=$AFTER; [ "$side" = before ] && tree=$BEFORE
      run_side "$side" "$tree" 260 axon-vs-stock axon-vs-stock --cascade config/cascade.bench-gpu.yaml --worker-process \
        --idle-dispatch --requests 1500 --concurrency 64 --wallets 8 --decode-workers 8 --rounds "$ROUNDS"
      echo "== $(date +%T) $side axon-vs-stock done"
    done ;;
  *) echo "error: engine or axon, got $WHAT" >&2; exit 2 ;;
esac
$PY - "$OUT" <<'PY' | tee -a "$OUT/summary.txt"
import json, statistics, sys
from pathlib import Path
out = Path(sys.argv[1])
for side in ("before", "after"):
    for clients, pick, unit in (("c512", lambda r: r["throughput_rps"], "req/s"),
                                ("c1", lambda r: r["latency_ms"]["p50"], "ms p50")):
        runs = [json.loads(p.read_text()) for p in sorted(out.glob(f"{side}-{clients}-r*.json"))]
        if runs:
            figures = [pick(r) for r in runs]
            print(f"{side:<7} engine {clients:<5} median {statistics.median(figures):8.1f} {unit} (range "
                  f"{min(figures):.1f}-{max(figures):.1f}, {len(figures)} runs; late {sum(r['late_answers'] for r in runs)})")
    path = out / f"{side}-axon-vs-stock.json"
    if path.exists():
        report = json.loads(path.read_text())
        print(f"{side:<7} axon-vs-stock: " + json.dumps({k: v for k, v in report.items() if not isinstance(v, dict)}))
PY
