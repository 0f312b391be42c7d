#!/usr/bin/env bash
# One GPU session, in one call: CUDA correctness tests, the speed table of every
# model at the three benchmark shapes (ratio to cuDNN LSTM), the custom cells with
# 8 seeds stacked per step (ratio per seed), the reference path of the custom cells
# for comparison, and the smoke profile on CUDA. Prints a short table last. Usage (repo root): bash benchmarks/device_check.sh [OUTDIR]
# Needs torch (CUDA), triton, numpy, pandas, scipy, pytest; nothing is installed.
set -uo pipefail
OUTDIR=${1:-${OUT:-results/device}}
mkdir -p "$OUTDIR"
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1
PY=${PY:-python3}
stage() { echo; echo "=== $* ($(date +%T))"; }

stage environment
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm --format=csv | tee "$OUTDIR/gpu.txt"
$PY -c "import torch, triton; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'triton', triton.__version__)"

stage "correctness on CUDA (pytest -m gpu)"
timeout 200 $PY -m pytest -q -m gpu tests/test_gpu.py -p no:cacheprovider 2>&1 | tee "$OUTDIR/gpu_tests.log" | tail -25

stage "speed: every model, three shapes, fast path"
timeout 170 $PY -m suite.cli bench --device cuda --repeats 3 --json "$OUTDIR/bench.json" 2>&1 | tee "$OUTDIR/bench.txt"

stage "speed: 8 seeds stacked per step (ratio per seed)"
timeout 70 $PY -m suite.cli bench --device cuda --repeats 3 --seeds 8 --shapes seq-mnist,adding \
  --models 'rnn-loop,bn-rnn,lstm-loop,bn-lstm,gru-loop,ln-lstm' --json "$OUTDIR/bench_stacked.json" 2>&1 \
  | tee "$OUTDIR/bench_stacked.txt"

stage "speed: the reference path (explicit loop, eager) of the custom cells"
timeout 60 $PY -m suite.cli bench --device cuda --reference --repeats 3 --shapes seq-mnist \
  --models rnn-loop,bn-rnn,bn-lstm --json "$OUTDIR/bench_reference.json" 2>&1 | tee "$OUTDIR/bench_reference.txt"

stage "smoke profile on CUDA"
rm -f "$OUTDIR/smoke.sqlite"
timeout 80 $PY -m suite.cli run --profile smoke --device cuda --store "$OUTDIR/smoke.sqlite" -q 2>&1 | tail -3
$PY - "$OUTDIR/smoke.sqlite" <<'PY' 2>&1 | tee "$OUTDIR/smoke_summary.txt"
import sys
from suite.store import Store
s = Store(sys.argv[1]).summaries()
cols = [c for c in ("test_mse", "test_acc", "samples_per_s", "timesteps_per_s", "step_ms", "peak_mem_mb") if c in s]
print(s.groupby(["task", "model"])[cols].mean().round(4).to_string())
print(s["status"].value_counts().to_string())
PY

stage "summary"
tail -4 "$OUTDIR/gpu_tests.log"
cat "$OUTDIR/bench.txt" "$OUTDIR/bench_stacked.txt"
