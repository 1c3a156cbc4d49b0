#!/usr/bin/env bash
# Level 1's batch window chosen by measurement, in one lease: the production settings
# (config/cascade.bench-gpu-prod.yaml) with wait_when_idle true (as written) and false (--idle-dispatch),
# alternated ROUNDS times, each under 512 closed-loop clients (throughput) and one client (batch-1 latency).
#   bash scripts/batch_window_ab.sh OUT [ROUNDS]      (one H200: about 8 minutes for 3 rounds)
# Each run writes OUT/<setting>-c<clients>-r<round>.json (sn72-bench engine's report); OUT/summary.txt has the
# medians and ranges. Runs from the repository root with `python3 -m ...` (PYTHONPATH holds the repository and the
# carried wheels).
set -u -o pipefail
OUT=${1:?usage: batch_window_ab.sh OUT [ROUNDS]}
ROUNDS=${2:-3}
PY=${PYTHON:-python3}
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 YOLO_OFFLINE=1 PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
mkdir -p "$OUT"
[ -d .bench/models/vit-b16 ] || $PY -m sn72_lab.make_tiny_models --out .bench/models --device cuda:0 vit-b16 \
  > "$OUT/models.log" 2>&1 || { echo "error: building vit-b16 failed (see $OUT/models.log)" >&2; exit 1; }
B="$PY -m sn72_lab.bench engine --cascade config/cascade.bench-gpu-prod.yaml"
for round in $(seq 1 "$ROUNDS"); do
  for setting in window idle-dispatch; do
    flag=""; [ "$setting" = idle-dispatch ] && flag="--idle-dispatch"
    timeout 120 $B $flag --requests 6000 --concurrency 512 --decode-workers 12 \
      --json "$OUT/$setting-c512-r$round.json" > "$OUT/$setting-c512-r$round.log" 2>&1 || echo "run $setting c512 r$round failed"
    timeout 60 $B $flag --requests 300 --concurrency 1 \
      --json "$OUT/$setting-c1-r$round.json" > "$OUT/$setting-c1-r$round.log" 2>&1 || echo "run $setting c1 r$round failed"
    echo "== $(date +%T) round $round $setting done"
  done
done
$PY - "$OUT" <<'PY' | tee "$OUT/summary.txt"
import json, statistics, sys
from pathlib import Path
out = Path(sys.argv[1])
for setting in ("window", "idle-dispatch"):
    for clients, key in (("c512", "throughput_rps"), ("c1", "p50")):
        values = []
        for path in sorted(out.glob(f"{setting}-{clients}-r*.json")):
            report = json.loads(path.read_text())
            value = report["throughput_rps"] if key == "throughput_rps" else report["latency_ms"]["p50"]
            batch = report.get("mean_batch_size") or {}
            values.append((value, report["late_answers"], sum(batch.values()) / max(1, len(batch))))
        if not values:
            print(f"{setting:<14} {clients:<5} no runs")
            continue
        figures = [v for v, _, _ in values]
        unit = "req/s" if key == "throughput_rps" else "ms p50"
        print(f"{setting:<14} {clients:<5} median {statistics.median(figures):8.1f} {unit} "
              f"(range {min(figures):.1f}-{max(figures):.1f}, {len(figures)} runs; late {sum(l for _, l, _ in values)}; "
              f"mean batch {[round(b, 1) for _, _, b in values]})")
PY
