#!/usr/bin/env bash
# Batch 1 of this tree against another tree of the repository, alternated in one lease (one machine, one hour):
#   git archive REV | tar -x -C BASE            (the other tree, e.g. the commit before a change)
#   bash scripts/tree_ab.sh OUT BASE [ROUNDS]   (one H100/H200: ~7 minutes with ROUNDS=2)
# 1. the GPU tests of the classifier backend and the preprocessing (this tree);
# 2. `sn72-bench stages` of each tree (the worker's call at batch 1, stage by stage), then ROUNDS times the engine at
#    one client in a worker process, each tree in turn;
# 3. `sn72-bench roundtrip` through four fronts beside the stock axon, each tree (two rounds each);
# 4. STEPS_AFTER (optional): more `name|limit|command` steps of this tree, ';'-separated (the engine at 512 clients).
# Each step runs with PYTHONPATH=<its tree>:$SITE (SITE: the carried wheels' install folder, /tmp/site by default).
# The cascade is config/cascade.bench-gpu.yaml of each tree (CASCADE=... picks another, e.g. the CPU one to try the
# script on a laptop: CASCADE=config/cascade.bench-cpu.yaml DEVICE=cpu). BUDGET_S=N skips what would start after N s.
set -u -o pipefail
OUT=${1:?usage: tree_ab.sh OUT BASE [ROUNDS]}
BASE=$(cd "${2:?usage: tree_ab.sh OUT BASE [ROUNDS]}" && pwd)
ROUNDS=${3:-2}
PY=${PYTHON:-python3}  # a name on PATH or an absolute path: each step runs in its own tree
SITE=${SITE:-/tmp/site}
CASCADE=${CASCADE:-config/cascade.bench-gpu.yaml}
DEVICE=${DEVICE:-cuda:0}
HERE=$(pwd)
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 YOLO_OFFLINE=1 PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
mkdir -p "$OUT"
start=$(date +%s)
# The other tree reads the same models: its cascade's paths are relative to its own config folder.
[ -e "$BASE/.bench" ] || ln -s "$HERE/.bench" "$BASE/.bench"
step() {  # name limit tree command...
  local name=$1 limit=$2 tree=$3; shift 3
  if [ -n "${BUDGET_S:-}" ]; then
    local left=$(( BUDGET_S - ($(date +%s) - start) ))
    if [ "$left" -lt 15 ]; then echo "== $name skipped: ${left}s left of BUDGET_S=$BUDGET_S"; return; fi
    [ "$left" -lt "$limit" ] && limit=$left
  fi
  echo "== $(date +%T) $name ($tree)"
  (cd "$tree" && PYTHONPATH="$tree:$SITE" timeout "$limit" "$@") > "$OUT/$name.log" 2>&1
  local rc=$?  # before any command substitution, which would reset $?
  echo "== $(date +%T) $name exit $rc"
  tail -n 3 "$OUT/$name.log" | cut -c1-200
}
B="$PY -m sn72_lab.bench"
if [ "$DEVICE" != cpu ]; then
  [ -d .bench/models/vit-b16 ] || step models 90 "$HERE" $PY -m sn72_lab.make_tiny_models --out .bench/models \
    --device "$DEVICE" vit-b16
  step gpu-tests 150 "$HERE" $PY -m pytest -q -p no:cacheprovider -m gpu tests/integration/test_expert_classifier.py \
    tests/unit/test_preprocess.py
fi
for tree in base new; do
  dir=$BASE; [ "$tree" = new ] && dir=$HERE
  step "stages-$tree" 120 "$dir" $B stages --cascade "$CASCADE" --device "$DEVICE" --reps 300 \
    --json "$OUT/stages-$tree.json"
done
for round in $(seq 1 "$ROUNDS"); do
  for tree in base new; do
    dir=$BASE; [ "$tree" = new ] && dir=$HERE
    step "c1-$tree-r$round" 60 "$dir" $B engine --cascade "$CASCADE" --worker-process --idle-dispatch \
      --requests 300 --concurrency 1 --json "$OUT/c1-$tree-r$round.json"
  done
done
for tree in base new; do
  dir=$BASE; [ "$tree" = new ] && dir=$HERE
  step "roundtrip-$tree" 150 "$dir" $B roundtrip --cascade "$CASCADE" --worker-process --idle-dispatch \
    --requests 300 --rounds 2 --processes 4 --dispatch direct --stock --stock-hotkey-once \
    --json "$OUT/roundtrip-$tree.json"
done
IFS=';' read -r -a extra <<< "${STEPS_AFTER:-}"
for spec in "${extra[@]}"; do
  [ -n "$spec" ] || continue
  IFS='|' read -r name limit command <<< "$spec"
  step "$name" "$limit" "$HERE" bash -c "$command"
done
# One summary line per JSON: the figures the comparison reads.
$PY - "$OUT" <<'EOF'
import json, pathlib, sys
for path in sorted(pathlib.Path(sys.argv[1]).glob("*.json")):
    d = json.loads(path.read_text())
    if d.get("mode") == "stages":
        s = {k: round(v["p50"], 3) for k, v in d["stages"].items()}
        print(path.stem, "call p50", round(d["predict_batch"]["p50"], 3), "stages", s,
              "device", round(d.get("forward_device", {}).get("p50", float("nan")), 3))
    elif d.get("mode") == "engine":
        print(path.stem, "p50", round(d["latency_ms"]["p50"], 3), "rps", round(d["throughput_rps"], 1),
              "late", d.get("late_answers"))
    elif d.get("mode", "").startswith("roundtrip"):
        print(path.stem, {side: {k: round(v, 2) for k, v in figures.items() if k.startswith("p50")}
                          for side, figures in d.items() if isinstance(figures, dict)})
EOF
