cd /work/main
for r in 1 2; do
 for t in pre post; do
  if [ $t = pre ]; then dir=/tmp/pre; else dir=/work/main; fi
  (cd $dir && PYTHONPATH=$dir timeout 300 /work/main/.venv/bin/python -m sn72_lab.bench axon-vs-stock --cascade config/cascade.bench-cpu.yaml --worker-process --idle-dispatch --requests 2000 --concurrency 64 --wallets 8 --rounds 1 --stock-hotkey-once --processes 0 2 --json /tmp/cpu-ab/$t-r$r.json) > /tmp/cpu-ab/$t-r$r.log 2>&1
  echo "$t r$r: $(grep '^round' /tmp/cpu-ab/$t-r$r.log | cut -c1-300)"
 done
done
