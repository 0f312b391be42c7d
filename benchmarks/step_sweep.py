"""Tuning sweeps of the scan path's CUDA step kernels (baselines/scan_triton.py), timed
as whole training steps (``suite.bench``, ratio to cuDNN LSTM on the same shape):

- ``tiles``: the matrix products' float32 precision, the reduction chunk and the rows
  per program where no batch norm binds the rows together;
- ``warps``: the warps of a program that holds the whole batch (batch norm).

    python3 benchmarks/step_sweep.py [--sweep tiles|warps] [--json FILE]

Run on a CUDA machine (benchmarks/device_check.sh runs it as its ``sweep`` stage).
"""

from __future__ import annotations

import argparse
import json

from baselines import scan_triton
from suite.bench import bench

DEFAULTS = dict(FP32_DOT="tf32x3", BK=32, ROWS_FREE=32, WARPS_WHOLE_BATCH=8)
SWEEPS = {  # (settings that differ from DEFAULTS, {shape: models})
    "tiles": ([dict(FP32_DOT="ieee"), {}, dict(BK=64), dict(ROWS_FREE=16)],
              {"seq-mnist": ["bn-lstm", "lstm-loop", "bn-gru", "rnn-loop"], "char-lm": ["lstm-loop"]}),
    "warps": ([{}, dict(WARPS_WHOLE_BATCH=4)], {"seq-mnist": ["bn-lstm", "bn-gru", "bn-rnn"]}),
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sweep", choices=sorted(SWEEPS), default="tiles")
    ap.add_argument("--json", help="write every row here")
    args = ap.parse_args()
    variants, cases = SWEEPS[args.sweep]
    rows = []
    for change in variants:
        settings = {**DEFAULTS, **change}
        for k, v in settings.items():
            setattr(scan_triton, k, v)
        label = " ".join(f"{k}={v}" for k, v in change.items()) or "defaults"
        for shape, models in cases.items():
            for r in bench(models, [shape], "cuda", repeats=3):
                if r["model"] != "lstm":
                    rows.append({**r, **settings})
                    print(f"{label:<22}{r['model']:<10}{shape:<10}{r['ms']:>8.2f} ms{r['ratio_to_lstm']:>7.3f}x  "
                          f"{r['path']}", flush=True)
    for k, v in DEFAULTS.items():
        setattr(scan_triton, k, v)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()
