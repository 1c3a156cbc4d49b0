# session 45 call A: the engine at 512 clients, then the 512-dendrite command at the new default slots, 3 rounds
set -u
OUT=$1; LIMIT=${2:-575}
python3 -m pip install -q --no-index --no-deps --target /tmp/site $(ls .gpu/wheels/*.whl | grep -v huggingface_hub) >/dev/null 2>&1
export PATH=/tmp/site/bin:$PATH PYTHONPATH=/tmp/site:$PWD HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 YOLO_OFFLINE=1 PYTHONUNBUFFERED=1
start=$(date +%s)
{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv; nproc; lscpu | grep -E "Model name|MHz"; git log --oneline -1; } > $OUT/machine.txt 2>&1
BUDGET_S=120 ONLY="models engine-1gpu-proc" bash scripts/gpu_session.sh level1 $OUT/s > $OUT/session.log 2>&1
echo "session done $(( $(date +%s) - start ))s" >> $OUT/machine.txt
left=$(( LIMIT - ($(date +%s) - start) ))
timeout --kill-after=10 $left python3 -m sn72_lab.bench axon-vs-stock --stock-hotkey-once --cascade config/cascade.bench-gpu.yaml --worker-process --idle-dispatch --requests 8000 --concurrency 512 --client-processes 8 --wallets 8 --decode-workers 8 --rounds 3 --processes 8 --json $OUT/axon-c512.json 2>&1 | grep --line-buffered -v "already exists" > $OUT/axon.log
echo "axon done $(( $(date +%s) - start ))s" >> $OUT/machine.txt
grep -E "rps|round" $OUT/axon.log | tail -20
cat $OUT/machine.txt
gzip -f $OUT/axon.log $OUT/session.log
