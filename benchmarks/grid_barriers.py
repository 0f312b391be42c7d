"""The grid-synchronized launches' barrier alone, timed on CUDA: T - 1 barriers between
steps, with no step's work between them, for the launches the suite makes at the
seq-MNIST shape (T=784, B=100, H=100), against each barrier kind of
``scan_triton._step_sync``:

- one counter for every program of the launch, or one for each group of programs that
  share rows and seed (``GRID_GROUPS``);
- one thread polling with Triton's atomic, or every thread with its own acquire loads
  (``GRID_POLL``).

A training step runs two such launches a layer (forward, backward), so 2 x 783
barriers: at 1 us a barrier that is 1.6 ms of a step. What this leaves out: here every
program arrives at once, so a barrier never waits for a slow program (which a group's
barrier waits for less), and nothing is read after it (each poll's acquire empties the
multiprocessor's L1, which a step then refills from L2).

    python3 benchmarks/grid_barriers.py [--repeats 5] [--json FILE]

Prints one line per (launch, barrier kind): programs, programs a barrier waits for, us a
barrier (median over repeats of one launch of T - 1 barriers, CUDA-event timed), bare and
with each program storing 4 KB before each barrier (whose release waits for them); a kind
that fails prints one line; the exit status is 1 where none ran.
"""

from __future__ import annotations

import argparse
import json
import statistics

import torch

from baselines import scan_triton as st
from suite.errors import one_line

T = 784
# (launch, its grid (unit blocks, row blocks, seeds), warps a program): lstm-loop's rows
# split 16 a program and 8 units (13 x 7), bn-lstm's whole batch and 4 units (25), and
# 8 stacked bn-lstm seeds two programs a multiprocessor (25 x 8; GRID_PER_SM=2)
LAUNCHES = [("lstm-loop", (13, 7, 1), st.WARPS_FREE), ("bn-lstm", (25, 1, 1), st.WARPS_WHOLE_BATCH),
            ("bn-lstm x8 seeds", (25, 1, 8), st.WARPS_WHOLE_BATCH)]
KINDS = [(False, False), (False, True), (True, False), (True, True)]  # (GRID_GROUPS, GRID_POLL)
STORE = 1024  # floats a program stores before a barrier: an LSTM step's 8 outputs at 16 rows and 8 units

if st.triton is not None:
    import triton
    import triton.language as tl

    @triton.jit(do_not_specialize=["T", "NPROG"])
    def _barriers(CNT, OUT, T, NPROG, GROUP: tl.constexpr, POLL: tl.constexpr, STORE: tl.constexpr):
        """T - 1 barriers of ``_step_sync``, the steps' work left out; with STORE > 0 each
        program stores STORE floats of its own before each barrier (which the barrier's
        release then waits for), as a step does."""
        pid = (tl.program_id(2) * tl.num_programs(1) + tl.program_id(1)) * tl.num_programs(0) + tl.program_id(0)
        for t in range(1, T):
            if STORE > 0:
                tl.store(OUT + pid * STORE + tl.arange(0, STORE), tl.full((STORE,), t, dtype=tl.float32))
            st._step_sync(CNT, t, NPROG, True, GROUP, POLL)


def barrier_us(grid: tuple[int, int, int], warps: int, group: bool, poll: bool, repeats: int,
               store: int = 0) -> float:
    """us a barrier: the median over ``repeats`` launches of T - 1 barriers (each after
    ``store`` floats stored by every program)."""
    groups = st.barrier_counters(grid, group)
    out = torch.zeros(grid[0] * grid[1] * grid[2] * max(store, 1), device="cuda")
    times = []
    for i in range(repeats + 1):  # the first launch compiles
        cnt = torch.zeros(groups, dtype=torch.int32, device="cuda")
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        _barriers[grid](cnt, out, T, grid[0] * grid[1] * grid[2] // groups, GROUP=group, POLL=poll, STORE=store,
                        num_warps=warps, launch_cooperative_grid=True)
        end.record()
        torch.cuda.synchronize()
        assert cnt.tolist() == [(T - 1) * grid[0] * grid[1] * grid[2] // groups] * groups
        if i:
            times.append(start.elapsed_time(end) * 1000 / (T - 1))
    return statistics.median(times)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--json", help="write the rows here")
    args = ap.parse_args(argv)
    sms = torch.cuda.get_device_properties(0).multi_processor_count
    print(f"{torch.cuda.get_device_name(0)}, {sms} multiprocessors; T={T}")
    print(f"{'launch':<18}{'programs':>9}{'a barrier':>10}  {'kind':<36}{'us a barrier':>13}"
          f"{'after stores':>13}")
    rows = []
    for name, grid, warps in LAUNCHES:
        n = grid[0] * grid[1] * grid[2]
        if n > 2 * sms:
            continue
        for group, poll in KINDS:
            kind = ("a group's counter" if group else "one counter") + (", every thread polls" if poll else
                                                                           ", one thread polls")
            waits = grid[0] if group else n
            try:
                us = barrier_us(grid, warps, group, poll, args.repeats)
                stored = barrier_us(grid, warps, group, poll, args.repeats, STORE)
            except Exception as e:  # a kind this Triton cannot compile, or a launch the GPU refuses
                print(f"{name:<18}{n:>9}{waits:>10}  {kind:<36} failed: {one_line(e, 200)}", flush=True)
                continue
            rows.append(dict(launch=name, programs=n, waits_for=waits, group=group, poll=poll, us=us,
                             us_after_stores=stored, device=torch.cuda.get_device_name(0)))
            print(f"{name:<18}{n:>9}{waits:>10}  {kind:<36}{us:>13.2f}{stored:>13.2f}", flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)
    raise SystemExit(0 if rows else 1)  # 1: no kind ran


if __name__ == "__main__":
    main()
