"""Eager training steps of one model at one benchmark shape, for a profiler to watch
(Nsight Compute on the scan path's CUDA step kernels; benchmarks/device_check.sh's
``profile`` stage):

    ncu -k regex:_lstm_fwd --launch-skip 50 --launch-count 2 python3 benchmarks/profile_steps.py bn-lstm seq-mnist
"""

from __future__ import annotations

import sys

import torch

from suite.bench import SHAPES, build_step, make_batch


def main() -> None:
    name, shape = (sys.argv[1:3] + ["bn-lstm", "seq-mnist"][len(sys.argv[1:3]):])[:2]
    dev = torch.device("cuda")
    step = build_step(name, SHAPES[shape], dev)
    batch = make_batch(SHAPES[shape], dev)
    for _ in range(2):  # the graphed step runs its first steps eagerly
        step(batch)
    torch.cuda.synchronize()
    print(name, shape, step.path, flush=True)


if __name__ == "__main__":
    main()
