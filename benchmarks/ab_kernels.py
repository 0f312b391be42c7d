"""A/B of the scan path's CUDA step kernels against another version of their source,
timed in one process on one GPU.

A change to the kernels that no switch turns off (a different order of operations, a
reduction merged with another) is timed against the source before it: FILE is another
version of baselines/scan_triton.py, loaded beside this tree's, and the training steps
of each model run under this tree's kernels, FILE's, then this tree's again (the
repeat shows the drift between runs; the ratio to cuDNN LSTM is from the same run)::

    git show HEAD~1:baselines/scan_triton.py > results/ab/scan_triton_before.py
    python3 benchmarks/ab_kernels.py --other results/ab/scan_triton_before.py \\
        --models bn-lstm,bn-gru --shapes seq-mnist,adding [--json FILE]

Run on a CUDA machine; ``--device cpu`` is a dry run (the kernels do not run there).
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import sys
from collections.abc import Iterator
from types import ModuleType

import baselines
from baselines import scan
from suite.bench import SHAPES, bench
from suite.errors import one_line


def load(path: str) -> ModuleType:
    """The kernels' module from ``path``, under a name of its own (its Triton kernels
    compile apart from this tree's: their source differs)."""
    name = "rnnbench_other_scan_triton"
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise ValueError(f"{path} is not a Python file")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod  # the module looks itself up there (scan_triton._this)
    spec.loader.exec_module(mod)
    return mod


@contextlib.contextmanager
def kernels(mod: ModuleType) -> Iterator[None]:
    """The scan path runs ``mod``'s kernels inside the block (scan.py calls them through
    its module reference at each call)."""
    before = scan.scan_triton
    scan.scan_triton = mod
    try:
        yield
    finally:
        scan.scan_triton = before


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--other", required=True, help="another version of baselines/scan_triton.py")
    ap.add_argument("--models", default="bn-lstm,bn-gru,bn-rnn,lstm-loop,gru-loop")
    ap.add_argument("--shapes", default="seq-mnist")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--json", help="write every row here")
    args = ap.parse_args(argv)
    models, shapes = [m for m in args.models.split(",") if m], args.shapes.split(",")
    bad = [s for s in shapes if s not in SHAPES] + [m for m in models if m not in baselines.names()]
    if bad:
        raise SystemExit(f"ab_kernels: unknown shape or model '{bad[0]}'; shapes: {', '.join(SHAPES)}; models: "
                         f"{', '.join(baselines.names())}")
    try:
        other = load(args.other)
    except (OSError, SyntaxError, ValueError, ImportError) as e:
        raise SystemExit(f"ab_kernels: cannot load --other {args.other}: {one_line(e, 200)}")
    rows = []
    for label, mod in (("this", scan.scan_triton), ("other", other), ("this (again)", scan.scan_triton)):
        with kernels(mod):
            for r in bench(models, shapes, args.device, repeats=3):
                rows.append({**r, "kernels": label})
                print(f"{label:<14}{r['model']:<10}{r['shape']:<10}{r['ms']:>8.2f} ms{r['ratio_to_lstm']:>7.3f}x  "
                      f"{r.get('path', '')}", flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()
