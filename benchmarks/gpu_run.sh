#!/usr/bin/env bash
# Everything this repository measures on a lent GPU, in one go (device tool: one call).
#   bash benchmarks/gpu_run.sh [steps...]   steps: facts calibrate traces smoke tests, or a script path
# One log ($OUT/run.log) and the result files are copied to $OUT when it is set.
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH=.:${PYTHONPATH:-} PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/rooflight-out}; mkdir -p "$OUT"
LOG="$OUT/run.log"
steps=${*:-facts calibrate traces smoke}
{
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm,clocks.max.mem --format=csv
python3 -c "import torch, triton; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'triton', triton.__version__)"
} 2>&1 | tee "$LOG"
for s in $steps; do
  echo "=== $s" | tee -a "$LOG"; t0=$(date +%s)
  case $s in
    facts) python3 benchmarks/gpu_facts.py 2>&1 | tee -a "$LOG"; cp benchmarks/results/gpu_facts.json "$OUT/" ;;
    calibrate) python3 benchmarks/calibrate.py 2>&1 | tee -a "$LOG"
               for f in benchmarks/results/calibrate-*.json; do [ "$f" = benchmarks/results/calibrate-cpu.json ] || cp "$f" "$OUT/"; done ;;
    traces) python3 tests/fixtures/record_traces.py 2>&1 | tee -a "$LOG"; tar czf "$OUT/fixtures.tgz" tests/fixtures/trace_* ;;
    smoke) python3 benchmarks/timing_smoke.py "$OUT" 2>&1 | tee -a "$LOG" ;;
    tests) python3 -m pytest -q -m gpu tests 2>&1 | tee -a "$LOG" ;;
    *) python3 $s 2>&1 | tee -a "$LOG" ;;
  esac
  echo "=== $s took $(( $(date +%s) - t0 )) s" | tee -a "$LOG"
done
