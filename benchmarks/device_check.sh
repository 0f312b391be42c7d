#!/usr/bin/env bash
# One GPU session, in one call: CUDA correctness tests, the speed table of every
# model at the three benchmark shapes (ratio to cuDNN LSTM), an A/B of the scan path's
# CUDA step kernels against its Python loops, the custom cells with 8 seeds stacked
# per step (ratio per seed), the reference path, and the smoke profile on CUDA. Prints
# a short table last. Usage (repo root): bash benchmarks/device_check.sh [OUTDIR]
# (a stage writes one to three files; where only a few files come back, write them
# elsewhere and pack them: bash benchmarks/device_check.sh /tmp/dc; tar czf OUTDIR/dc.tgz -C /tmp dc)
# STAGES (default: all) picks stages by name: tests bench ab sweep units rows sequence stacked
# grid reference smoke; "warps", "sync", "syncrows", "syncstacked" (the grid-synchronized
# launches' tiles; syncstacked: 8 stacked seeds in one launch, two programs a multiprocessor),
# "barriers" (their barriers alone, benchmarks/grid_barriers.py; first), "gridtests" (their
# GPU tests alone), "barrier" (step_sweep.py --sweep barrier: the barrier kinds), "profilegrid"
# (Nsight Compute: stall reasons of the grid-synchronized launches of lstm-loop and bn-lstm),
# "profile" (Nsight Compute on the bn-lstm step kernels), "dot" and "gridrows" (step_sweep.py:
# the float32 products' accumulators; the rows-split grid programs' chunks and warps), "bnrows"
# and "lnrows" (step_sweep.py: batch or layer norm with the rows split over programs,
# scan_triton.BN_SPLIT, LN_SPLIT, against the whole-batch programs or whole-sequence launches;
# their GPU tests are in gridtests),
# "abkernels" (benchmarks/ab_kernels.py: the kernels against AB_OTHER, another version of
# their source, for AB_MODELS), "tuned" and "tuned_stacked" run only when named. tuned and tuned_stacked time the bench and stacked stages' models under the
# settings step_sweep.py --pick takes from this call's units, rows, sequence, sync and
# syncrows sweeps (the whole-sequence launches left off where their GPU tests failed).
# Each sweep stage is 4-5 settings x 3-7 models, about a minute. One call for a session
# that tunes: STAGES="tests units rows sequence tuned tuned_stacked"; once the defaults
# match the pick: STAGES="tests bench stacked" (both run on an H100, 2026-11-26). The
# defaults' table beside a launch per step, and the grid launches' tiles:
# STAGES="tests bench grid stacked sync syncstacked" (~9 minutes). The barrier kinds, then
# the defaults' table: STAGES="barriers gridtests tests barrier bench" (~7 minutes). After
# the step kernels' loads moved before their products: STAGES="gridtests tests bench stacked
# profilegrid" (~7 minutes). For a change to the kernels that no switch turns off: the
# tests, then an A/B against the source before it (AB_OTHER, carried with the call), then
# the table: STAGES="gridtests tests abkernels bench" (~6 minutes). Batch and layer norm with
# the rows split, first timed: STAGES="gridtests bnrows lnrows" (gridtests runs their GPU tests
# too; by the stage times below, about 3-4 minutes).
# Needs torch (CUDA), triton, numpy, pandas, scipy, pytest; nothing is installed.
# Stage times seen on an H100 (2026-11-26 and 27): tests 64-136 s, bench 43-69 s, ab 20 s, sweep
# 49 s, units 50 s, rows 25 s, sequence 66 s, warps 36 s, profile 29 s, stacked 37 s (6
# models), tuned 46-68 s, smoke 44 s, grid 70 s, sync 122 s (with its gradient checks),
# syncrows 57-62 s, barriers ~30 s, gridtests 49-56 s, barrier 74 s, profilegrid 61-73 s,
# dot 74 s, gridrows 48 s, abkernels 98 s (5 models, 2 shapes), stacked 76 s (11 models);
# a call's start and transfers ~30 s.
set -uo pipefail
OUTDIR=${1:-${OUT:-results/device}}
STAGES=${STAGES:-tests bench ab sweep units rows sequence stacked grid reference smoke}
mkdir -p "$OUTDIR"
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1
PY=${PY:-python3}
stage() { echo; echo "=== $* ($(date +%T))"; }
want() { [[ " $STAGES " == *" $1 "* ]]; }
BENCH="$PY -m suite.cli bench --device cuda --repeats 3"

stage environment
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm --format=csv | tee "$OUTDIR/gpu.txt"
$PY -c "import torch, triton; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'triton', triton.__version__)"

if want barriers; then
  # The barriers alone first: one that never opens would hang every later stage, so where
  # this fails the grid-synchronized launches are turned off for the rest of the call.
  stage "grid-synchronized launches: their barriers alone (benchmarks/grid_barriers.py)"
  if ! timeout 90 $PY benchmarks/grid_barriers.py --json "$OUTDIR/grid_barriers.json" 2>&1 \
      | tee "$OUTDIR/grid_barriers.txt"; then
    echo "the barriers failed: RNNBENCH_GPU_GRID_SYNC=0 from here on, no barrier sweep"
    export RNNBENCH_GPU_GRID_SYNC=0
    STAGES=" $STAGES "; STAGES=${STAGES// barrier / }
  fi
fi
if want gridtests; then
  stage "grid-synchronized launches: GPU tests"
  timeout 150 $PY -m pytest -q -m gpu tests/test_gpu.py -p no:cacheprovider -k "grid or counter" 2>&1 \
    | tee "$OUTDIR/gpu_tests_grid.log" | grep -E "passed|failed|FAILED|Error|Timeout" | tail -12
fi
if want tests; then
  stage "correctness on CUDA (pytest -m gpu; the opt-in one-program kernels and the grid stage's tests left out)"
  timeout 180 $PY -m pytest -q -m gpu tests/test_gpu.py -p no:cacheprovider -k "not fused- and not grid and not counter" 2>&1 \
    | tee "$OUTDIR/gpu_tests.log" | grep -E "passed|failed|FAILED|Error" | tail -15
fi
if want bench; then
  stage "speed: every model, three shapes, fast path"
  timeout 200 $BENCH --json "$OUTDIR/bench.json" 2>&1 | tee "$OUTDIR/bench.txt" | tail -2
fi
if want ab; then
  stage "A/B: the scan path's Python loops (RNNBENCH_GPU_STEPS=0) at seq-MNIST shape"
  RNNBENCH_GPU_STEPS=0 timeout 60 $BENCH --shapes seq-mnist --models 'rnn-loop,bn-rnn,lstm-loop,bn-lstm,gru-loop,bn-gru' \
    --json "$OUTDIR/bench_ab.json" 2>&1 | tee "$OUTDIR/bench_ab.txt" | tail -2
fi
if want abkernels; then
  # a change no switch turns off, against the source before it (benchmarks/ab_kernels.py;
  # the file travels with the call: git show REV:baselines/scan_triton.py > AB_OTHER)
  stage "A/B: the step kernels against ${AB_OTHER:=results/ab/scan_triton_before.py}"
  timeout 240 $PY benchmarks/ab_kernels.py --other "$AB_OTHER" --models "${AB_MODELS:-bn-lstm,bn-gru,bn-rnn}" \
    --shapes seq-mnist,adding --json "$OUTDIR/ab_kernels.json" 2>&1 | tee "$OUTDIR/ab_kernels.txt" | tail -20
fi
if want sweep; then
  stage "tuning sweep of the step kernels (benchmarks/step_sweep.py)"
  timeout 150 $PY benchmarks/step_sweep.py --json "$OUTDIR/sweep.json" 2>&1 | tee "$OUTDIR/sweep.txt" | tail -3
fi
for sw in units rows sequence sync syncrows syncstacked barrier dot gridrows bnrows lnrows; do
  if want $sw; then
    stage "sweep: $sw (benchmarks/step_sweep.py --sweep $sw)"
    timeout 200 $PY benchmarks/step_sweep.py --sweep $sw --json "$OUTDIR/sweep_$sw.json" 2>&1 \
      | tee "$OUTDIR/sweep_$sw.txt" | grep "^best"
  fi
done
if want warps; then
  stage "sweep: warps of the whole-batch step kernels"
  timeout 90 $PY benchmarks/step_sweep.py --sweep warps --json "$OUTDIR/sweep_warps.json" 2>&1 \
    | tee "$OUTDIR/sweep_warps.txt" | tail -3
fi
if want profile; then
  stage "Nsight Compute: the bn-lstm step kernels at seq-MNIST shape (benchmarks/profile_steps.py)"
  NCU=$(command -v ncu || ls /opt/nvidia/nsight-compute/*/ncu 2>/dev/null | head -1)
  for k in _lstm_fwd _lstm_bwd; do
    timeout 60 "$NCU" --clock-control none -k "regex:$k" --launch-skip 50 --launch-count 1 --section SpeedOfLight \
      --section WarpStateStats --section Occupancy --section LaunchStats --section SchedulerStats \
      $PY benchmarks/profile_steps.py bn-lstm seq-mnist > "$OUTDIR/ncu$k.txt" 2>&1
    grep -E "Duration|Registers Per|Achieved Occupancy|Warp Cycles Per Issued|Memory Throughput|Compute \(SM\) Th|stalled|Block Size|Grid Size" \
      "$OUTDIR/ncu$k.txt" | cut -c1-260
  done
fi
STACKED="--seeds 8 --shapes seq-mnist,adding --models rnn-loop,irnn-loop,bn-rnn,bn-rnn-input,ln-rnn,lstm-loop,bn-lstm,ln-lstm,gru-loop,bn-gru,ln-gru"
if want profilegrid; then
  # Where a grid-synchronized launch's time goes: each stall reason's cycles per issued
  # instruction (sampled over the launch's 784 steps), lstm-loop (91 programs) and bn-lstm (25)
  stage "Nsight Compute: the grid-synchronized launches at seq-MNIST shape (lstm-loop, bn-lstm)"
  NCU=$(command -v ncu || ls /opt/nvidia/nsight-compute/*/ncu 2>/dev/null | head -1)
  for m in lstm-loop bn-lstm; do
    for k in _lstm_fwd_seq _lstm_bwd_seq; do
      timeout 60 "$NCU" --clock-control none -k "regex:$k" --launch-skip 1 --launch-count 1 --section SpeedOfLight \
        --section LaunchStats --metrics "regex:smsp__average_warps_issue_stalled_.*_per_issue_active\.ratio" \
        $PY benchmarks/profile_steps.py $m seq-mnist > "$OUTDIR/ncu_${m}$k.txt" 2>&1
      echo "--- $m $k"
      grep -E " Duration|Registers Per|Grid Size|Block Size" "$OUTDIR/ncu_${m}$k.txt" | cut -c1-120
      grep -E "issue_stalled" "$OUTDIR/ncu_${m}$k.txt" | awk '$NF+0 >= 0.3' | sed 's/smsp__average_warps_issue_stalled_//; s/_per_issue_active.ratio//' | cut -c1-120
    done
  done
fi
if want stacked; then
  stage "speed: 8 seeds stacked per step (ratio per seed)"
  timeout 150 $BENCH $STACKED --json "$OUTDIR/bench_stacked.json" 2>&1 | tee "$OUTDIR/bench_stacked.txt" | tail -2
fi
if want grid; then
  # The grid-synchronized launches (scan_triton.GRID_SYNC, the default): their GPU tests
  # under a timeout (a barrier that never opens hangs), then the same models with a launch
  # per step (RNNBENCH_GPU_GRID_SYNC=0), to set beside the bench stage's rows.
  stage "grid-synchronized launches: GPU tests, then a launch per step (RNNBENCH_GPU_GRID_SYNC=0) for comparison"
  timeout 180 $PY -m pytest -q -m gpu tests/test_gpu.py -p no:cacheprovider -k "grid or counter" 2>&1 \
    | tee "$OUTDIR/gpu_tests_grid.log" | grep -E "passed|failed|FAILED|Error|Timeout" | tail -12
  RNNBENCH_GPU_GRID_SYNC=0 timeout 150 $BENCH --shapes seq-mnist,adding \
    --models 'lstm,rnn-loop,bn-rnn,lstm-loop,bn-lstm,gru-loop,bn-gru' --json "$OUTDIR/bench_per_step.json" 2>&1 \
    | tee "$OUTDIR/bench_per_step.txt" | tail -2
fi
KEEP=()  # the whole-sequence launches' settings stay as they are where their GPU tests failed
grep -E "^FAILED" "$OUTDIR/gpu_tests.log" 2>/dev/null | grep -qE "seq|True\]" \
  && KEEP=(--keep SEQUENCE ROWS_SEQ WARPS_SEQ BK_SEQ)
PICK=($PY benchmarks/step_sweep.py --pick "$OUTDIR/sweep_units.json" "$OUTDIR/sweep_rows.json"
      "$OUTDIR/sweep_sequence.json" "$OUTDIR/sweep_sync.json" "$OUTDIR/sweep_syncrows.json"
      "$OUTDIR/sweep_dot.json" "$OUTDIR/sweep_gridrows.json" "${KEEP[@]}" --)
if want tuned; then
  stage "speed: every model, three shapes, under the settings picked from the sweeps (${KEEP[*]})"
  timeout 150 "${PICK[@]}" --device cuda --repeats 3 --json "$OUTDIR/bench_tuned.json" 2>&1 | tee "$OUTDIR/bench_tuned.txt" | tail -2
fi
if want tuned_stacked; then
  stage "speed: 8 seeds stacked per step, under the settings picked from the sweeps"
  timeout 150 "${PICK[@]}" --device cuda --repeats 3 $STACKED --json "$OUTDIR/bench_tuned_stacked.json" 2>&1 \
    | tee "$OUTDIR/bench_tuned_stacked.txt" | tail -2
fi
if want reference; then
  stage "speed: the reference path (explicit loop, eager) of the custom cells"
  timeout 60 $BENCH --reference --shapes seq-mnist --models rnn-loop,bn-rnn,bn-lstm \
    --json "$OUTDIR/bench_reference.json" 2>&1 | tee "$OUTDIR/bench_reference.txt" | tail -2
fi
if want smoke; then
  stage "smoke profile on CUDA"
  rm -f "$OUTDIR/smoke.sqlite"
  timeout 100 $PY -m suite.cli run --profile smoke --device cuda --store "$OUTDIR/smoke.sqlite" -q 2>&1 | tail -3
  $PY - "$OUTDIR/smoke.sqlite" <<'PY' 2>&1 | tee "$OUTDIR/smoke_summary.txt"
import sys
from suite.store import Store
s = Store(sys.argv[1]).summaries()
cols = [c for c in ("test_mse", "test_acc", "samples_per_s", "step_ms", "peak_mem_mb") if c in s]
print(s.groupby(["task", "model"])[cols].mean().round(4).to_string())
print(s["status"].value_counts().to_string())
PY
fi

stage "summary"
want tests && tail -1 "$OUTDIR/gpu_tests.log"
(want grid || want gridtests) && tail -1 "$OUTDIR/gpu_tests_grid.log"
want barriers && cat "$OUTDIR/grid_barriers.txt"
# each setting's lines are in the files
for f in sweep sweep_units sweep_rows sweep_sequence sweep_sync sweep_syncrows sweep_syncstacked sweep_barrier sweep_warps; do
  [[ -f "$OUTDIR/$f.txt" ]] && grep -E "^best|skipped" "$OUTDIR/$f.txt"
done
for f in bench_ab bench_stacked bench_tuned_stacked bench_per_step bench bench_tuned; do
  [[ -f "$OUTDIR/$f.txt" ]] && echo "--- $f" && cat "$OUTDIR/$f.txt"
done
