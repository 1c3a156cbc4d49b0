#!/usr/bin/env bash
# Batch 1 of this tree against another tree of the repository, alternated in one lease (one machine, one hour):
#   git archive REV | tar -x -C BASE            (the other tree, e.g. the commit before a change)
#   bash scripts/tree_ab.sh OUT BASE [ROUNDS]   (one H100/H200: ~7 minutes with ROUNDS=2)
# 1. the GPU tests of the classifier backend and the preprocessing (this tree);
# 2. `sn72-bench stages` of each tree (the worker's call at batch 1, stage by stage), then ROUNDS times the engine at
#    one client in a worker process, each tree in turn;
# 3. `sn72-bench roundtrip` through four fronts beside the stock axon, each tree (two rounds each);
# 4. LOAD_ROUNDS=N (default 0): N rounds of the engine at 512 clients in a worker process, each tree in turn
#    (LOAD_REQUESTS a run, default 6000): the throughput A/B of a change to the worker or the engine;
# 5. STEPS_AFTER (optional): more `name|limit|command` steps of this tree, ';'-separated.
# Each step runs with PYTHONPATH=<its tree>:$SITE (SITE: the carried wheels' install folder, /tmp/site by default).
# The cascade is config/cascade.bench-gpu.yaml of each tree (CASCADE=... picks another, e.g. the CPU one to try the
# script on a laptop: CASCADE=config/cascade.bench-cpu.yaml DEVICE=cpu, which builds the tiny model it needs).
# BUDGET_S=N skips what would start after N s. Exits 1, naming them, when any step failed.
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
failed=()
echo "== load average at the start: $(cut -d' ' -f1-3 /proc/loadavg) (figures from a busy machine say little)"
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
  [ "$rc" -eq 0 ] || failed+=("$name")
  echo "== $(date +%T) $name exit $rc"
  tail -n 3 "$OUT/$name.log" | cut -c1-200
}
B="$PY -m sn72_lab.bench"
tree_dir() { if [ "$1" = new ]; then echo "$HERE"; else echo "$BASE"; fi; }
if [ "$DEVICE" = cpu ]; then
  [ -d .bench/models/tiny-vit ] || step models 90 "$HERE" $PY -m sn72_lab.make_tiny_models --out .bench/models tiny-vit
else
  [ -d .bench/models/vit-b16 ] || step models 90 "$HERE" $PY -m sn72_lab.make_tiny_models --out .bench/models \
    --device "$DEVICE" vit-b16
  step gpu-tests 150 "$HERE" $PY -m pytest -q -p no:cacheprovider -m gpu tests/integration/test_expert_classifier.py \
    tests/unit/test_preprocess.py
fi
for tree in base new; do
  dir=$(tree_dir "$tree")
  step "stages-$tree" 120 "$dir" $B stages --cascade "$CASCADE" --device "$DEVICE" --reps 300 \
    --json "$OUT/stages-$tree.json"
done
for round in $(seq 1 "$ROUNDS"); do
  for tree in base new; do
    dir=$(tree_dir "$tree")
    step "c1-$tree-r$round" 60 "$dir" $B engine --cascade "$CASCADE" --worker-process --idle-dispatch \
      --requests 300 --concurrency 1 --json "$OUT/c1-$tree-r$round.json"
  done
done
for tree in base new; do
  dir=$(tree_dir "$tree")
  step "roundtrip-$tree" 150 "$dir" $B roundtrip --cascade "$CASCADE" --worker-process --idle-dispatch \
    --requests 300 --rounds 2 --processes 4 --dispatch direct --stock --stock-hotkey-once \
    --json "$OUT/roundtrip-$tree.json"
done
for round in $(seq 1 "${LOAD_ROUNDS:-0}"); do  # the engine under load (512 clients), each tree in turn
  for tree in base new; do
    dir=$(tree_dir "$tree")
    step "load-$tree-r$round" 90 "$dir" $B engine --cascade "$CASCADE" --worker-process --idle-dispatch \
      --requests "${LOAD_REQUESTS:-6000}" --concurrency 512 --decode-workers 12 --json "$OUT/load-$tree-r$round.json"
  done
done
IFS=';' read -r -a extra <<< "${STEPS_AFTER:-}"
for spec in "${extra[@]}"; do
  [ -n "$spec" ] || continue
  IFS='|' read -r name limit command <<< "$spec"
  step "$name" "$limit" "$HERE" bash -c "$command"
done
echo "== load average at the end: $(cut -d' ' -f1-3 /proc/loadavg)"
# The figures the comparison reads, base beside new (ms, p50).
$PY - "$OUT" <<'EOF'
import json, pathlib, sys
out = pathlib.Path(sys.argv[1])
def load(name):
    path = out / f"{name}.json"
    return json.loads(path.read_text()) if path.exists() else None
for tree in ("base", "new"):
    d = load(f"stages-{tree}")
    if d:
        stages = ", ".join(f"{k} {v['p50']:.3f}" for k, v in d["stages"].items())
        device = f"; forward on the device {d['forward_device']['p50']:.3f}" if "forward_device" in d else ""
        print(f"stages {tree:4}: the worker's call {d['predict_batch']['p50']:.3f} ms ({stages}{device})")
def engine_rounds(prefix, label, figure):
    """One line per tree: the engine runs named prefix-TREE-rN, round by round."""
    for tree in ("base", "new"):
        figures = [json.loads(p.read_text()) for p in sorted(out.glob(f"{prefix}-{tree}-r*.json"))]
        if figures:
            late = sum(f.get("late_answers", 0) for f in figures)
            print(f"{label} {tree:4}: {', '.join(figure(f) for f in figures)} by round, late {late}")
engine_rounds("c1", "engine at one client, p50 ms", lambda f: f"{f['latency_ms']['p50']:.3f}")
for tree in ("base", "new"):
    d = load(f"roundtrip-{tree}")
    if d:
        sides = {side: [v for k, v in fig.items() if k.startswith("p50_ms_round")] for side, fig in d.items()
                 if isinstance(fig, dict)}
        text = "; ".join(f"{side} " + ", ".join(f"{v:.2f}" for v in values) for side, values in sides.items())
        print(f"round trip {tree:4}: p50 by round, ms: {text}")
def worker_shares(f):
    """The worker's busy share and, where the tree reports them, that share by stage (both over the run)."""
    busy = ", ".join(f"{v:.3f}" for v in f.get("worker_busy_fraction", {}).values())
    stages = "; ".join(" ".join(f"{k} {v:.3f}" for k, v in s.items())
                       for s in f.get("worker_stage_fraction", {}).values())
    return f" (busy {busy or '-'}: {stages or 'stages not reported'})"
engine_rounds("load", "engine at 512 clients, req/s", lambda f: f"{f['throughput_rps']:.1f}{worker_shares(f)}")
for path in sorted(out.glob("*.json")):
    d = json.loads(path.read_text())
    if d.get("mode") == "engine" and not path.stem.startswith(("c1-", "load-")):
        print(f"{path.stem}: {d['throughput_rps']:.1f} req/s, p50 {d['latency_ms']['p50']:.1f} ms, "
              f"late {d.get('late_answers')}")
EOF
if [ "${#failed[@]}" -gt 0 ]; then
  echo "tree_ab: ${#failed[@]} step(s) failed: ${failed[*]} (their logs are in $OUT)" >&2
  exit 1
fi
