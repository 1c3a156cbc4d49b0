#!/usr/bin/env bash
# GPU JPEG decoding checked and timed on a CUDA machine, in one go (docs/decoding.md):
#   bash scripts/gpu_decode_check.sh [OUT_DIR]      (default OUT_DIR: gpu-decode-results; PYTHON: python3)
# 1. the gpu-marked tests (nvJPEG against PIL, orientations, isolation, tiny models, the engine), 2. the decoding
# tests that run anywhere, 3. sn72-decode-bench (decode thread CPU, decode+resize per image for batches 1/32/128,
# the engine with decode.device off vs auto). Prints PASS/FAIL per part and the timing tables; OUT_DIR keeps
# the pytest output, JUnit XML and decode_bench.json. Exit 0 only if every part passed.
set -u
case "${1:-}" in -h|--help) sed -n '2,7p' "$0"; exit 0 ;; esac
PY="${PYTHON:-python3}"
OUT="${1:-gpu-decode-results}"
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 YOLO_OFFLINE=1 PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
if ! "$PY" -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)" 2>/dev/null; then
    echo "gpu decode check: no CUDA device visible to $PY (torch.cuda.is_available() is False)"
    exit 2
fi
mkdir -p "$OUT"
if ! "$PY" -c "import pytest" 2>/dev/null; then
    echo "gpu decode check: pytest is not installed for $PY: parts 1 and 2 will fail; the timings still run"
fi
echo "== 1/3 gpu tests"
"$PY" -m pytest -q -p no:cacheprovider -m gpu --junitxml "$OUT/junit-gpu.xml" \
    tests/integration/test_gpu_decode.py tests/unit/test_preprocess.py tests/integration/test_expert_classifier.py \
    tests/integration/test_expert_zero_shot.py tests/integration/test_expert_owlv2.py 2>&1 | tee "$OUT/pytest-gpu.txt"
gpu_rc=${PIPESTATUS[0]}
echo "== 2/3 decoding tests that run anywhere"
"$PY" -m pytest -q -p no:cacheprovider --junitxml "$OUT/junit-any.xml" \
    tests/unit/test_device_decode.py tests/integration/test_device_decode_path.py tests/unit/test_decode.py \
    2>&1 | tee "$OUT/pytest-any.txt"
any_rc=${PIPESTATUS[0]}
echo "== 3/3 timings"
"$PY" -m sn72_lab.decode_bench --json "$OUT/decode_bench.json" 2>&1 | tee "$OUT/decode_bench.txt"
bench_rc=${PIPESTATUS[0]}
verdict() { if [ "$1" -eq 0 ]; then echo PASS; else echo "FAIL (exit $1)"; fi; }
echo "gpu decode check: gpu tests $(verdict "$gpu_rc"); other decoding tests $(verdict "$any_rc");" \
     "timings $(verdict "$bench_rc"); output in $OUT"
[ "$gpu_rc" -eq 0 ] && [ "$any_rc" -eq 0 ] && [ "$bench_rc" -eq 0 ]
