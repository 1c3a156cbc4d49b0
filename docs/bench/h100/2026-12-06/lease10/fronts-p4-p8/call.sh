# session 45 call E (same lease, last): one round of the 512-dendrite command with 4 fronts and with 8, beside the stock axon
set -u
OUT=$1
python3 -m pip install -q --no-index --no-deps --target /tmp/site $(ls .gpu/wheels/*.whl | grep -v huggingface_hub) >/dev/null 2>&1
export PATH=/tmp/site/bin:$PATH PYTHONPATH=/tmp/site:$PWD HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 YOLO_OFFLINE=1 PYTHONUNBUFFERED=1
timeout --kill-after=10 300 python3 -m sn72_lab.bench axon-vs-stock --stock-hotkey-once --cascade config/cascade.bench-gpu.yaml --worker-process --idle-dispatch --requests 8000 --concurrency 512 --client-processes 8 --wallets 8 --decode-workers 8 --rounds 1 --processes 4 8 --json $OUT/axon-p4-p8.json 2>&1 | grep --line-buffered -v "already exists" > $OUT/axon.log
