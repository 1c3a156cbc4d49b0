# session 45 call D (same lease, after calls A, B and the GPU tests): batch 1, the engine alone and through four fronts beside the stock axon
set -u
OUT=$1
python3 -m pip install -q --no-index --no-deps --target /tmp/site $(ls .gpu/wheels/*.whl | grep -v huggingface_hub) >/dev/null 2>&1
export PATH=/tmp/site/bin:$PATH PYTHONPATH=/tmp/site:$PWD HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 YOLO_OFFLINE=1 PYTHONUNBUFFERED=1
BUDGET_S=230 ONLY="models engine-1gpu-c1-proc roundtrip-direct" bash scripts/gpu_session.sh level1 $OUT/s > $OUT/session.log 2>&1
