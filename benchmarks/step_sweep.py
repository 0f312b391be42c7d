"""Tuning sweeps of the scan path's CUDA step kernels (baselines/scan_triton.py), timed
as whole training steps (``suite.bench``, ratio to cuDNN LSTM on the same shape):

- ``tiles``: the matrix products' float32 precision, the reduction chunk and the rows
  per program where no batch norm binds the rows together;
- ``warps``: the warps of a program that holds the whole batch (batch norm);
- ``units``: the hidden units of a program that holds the whole batch (batch norm),
  which set how many programs share a step (H/units): 4 (the default), 8 and 16; and
  longer reduction chunks;
- ``rows``: the kernels whose rows are split over programs (no batch statistics): 16
  units a program, chunks of 32, 8 warps, 16 rows a program (their registers, compiled
  for sm_90, are in scan_triton.py);
- ``sequence``: the whole-sequence launches for every cell without batch statistics
  (``scan_triton.SEQUENCE``; layer norm runs there always) against a launch per step,
  16 rows a program (7 programs at B=100 instead of 13), and 4 warps with chunks of 32;
- ``sync`` and ``syncrows``: the grid-synchronized launches (``scan_triton.GRID_SYNC``:
  all steps in one launch, a barrier between steps; the default) against a launch per
  step, and their tiles: 2 units or 16 warps a whole-batch program (batch norm; ``sync``;
  a program on its own multiprocessor has warps to spare: compiled for sm_90, bn-lstm's
  kernels need 116 and 64 registers a thread with 16 warps, no spills, by
  ``kernel_resources.py --warps 8,16 --chunks 16 --only 'lstm fwd bn'`` and ``'lstm bwd
  bn'``), 32 rows or 16 units a rows-split one, or 8 rows with two programs a
  multiprocessor (``GRID_PER_SM``: 169 programs for lstm-loop; ``syncrows``);
- ``syncstacked``: 8 stacked seeds of the batch-norm cells (8 x 25 programs at the
  seq-MNIST shape: a launch per step) against one grid-synchronized launch of two
  programs a multiprocessor (``GRID_PER_SM=2``);
- ``barrier``: the grid-synchronized launches' barriers: one counter for every program
  of a launch, one thread polling with Triton's atomic (as first timed), timed first and
  last, against the defaults (a barrier of the programs that share rows and seed, every
  thread polling with its own acquire loads: ``GRID_GROUPS``, ``GRID_POLL``) and against
  the new polls alone;
- ``dot``: the float32 products' three TF32 products, each summed into its own
  accumulator (``FP32_DOT="split"``, the default) against Triton's tf32x3, which chains
  them (timed first and last), and "split" in whole-sequence launches too
  (``FP32_DOT_SEQ``; the layer-norm cells);
- ``gridrows``: the rows-split programs of grid-synchronized launches (16 rows, 8
  units): chunks of 16 throughout (``BK_GRID``; the default takes 32 where H is a
  multiple of 32), and 2 or 1 warps a program (``WARPS_FREE_GRID``);
- ``bnrows``: batch norm with the rows split over programs (``BN_SPLIT``,
  baselines/scan_triton_rows.py: lstm-loop's tiles, the row blocks' statistics
  exchanged between phases of a step; the exchanges' barriers a unit block's, the
  steps' a row block's) against whole-batch programs (the default, timed first and
  last), with one counter for every barrier of every program (``GRID_GROUPS=False``),
  and with chunks of 16 where H is a multiple of 32 (compiled for sm_90, bn-lstm's
  forward kernel spills 32 bytes a thread with chunks of 32);
- ``lnrows``: layer norm the same way (``LN_SPLIT``: grid launches of the rows-split
  programs exchanging each row's statistics, each row block's barriers its own) against
  the whole-sequence launches, and with one counter for every program's barriers
  (``GRID_GROUPS=False``).

``tiles``, ``warps``, ``units`` and ``rows`` time a launch per step (``PER_STEP``): the
tiles that stacked seeds, too many programs for one grid-synchronized launch, run on.
What ``--pick`` takes from them applies to grid-synchronized launches too (``BJ``,
``BK`` where ``BK_GRID`` does not apply, the whole-batch tiles; not ``ROWS_FREE``),
where they were not timed: the ``tuned`` table then shows both together.

    python3 benchmarks/step_sweep.py [--sweep NAME] [--json FILE]  (NAME: one of the sweeps above)
    python3 benchmarks/step_sweep.py --pick SWEEP.json... [--keep SETTING...] -- BENCH ARGS

``--pick`` reads sweeps' JSON rows, takes from each the setting that was fastest over
all its models (``pick``), prints them, and runs ``rnnbench bench`` with the arguments
after ``--`` under those settings together: the whole table with a tuned set, timed in
the same call as its sweeps, before the defaults are changed to match.

Run on a CUDA machine (benchmarks/device_check.sh runs each as a stage of its name,
``tiles`` as ``sweep``). Before timing a setting, ``check`` runs one eager training step
of each model at the shape, which compiles its kernels outside any CUDA graph, and
compares its gradients on one batch (its first ``CHECK_STEPS`` steps) with the
reference loop's; a setting that this Triton cannot compile, or that computes wrong
gradients, prints one line and is skipped.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import sys
from typing import Any, Iterator

import torch

from baselines import scan_triton, set_fast_path
from suite.bench import SHAPES, build_step, bench, make_batch
from suite.errors import one_line
from tasks.base import Batch

DEFAULTS = dict(FP32_DOT="split", FP32_DOT_SEQ="tf32x3", BK=16, ROWS_FREE=32, WARPS_WHOLE_BATCH=8, WARPS_FREE=4,
                BJ=8, BJ_WHOLE_BATCH=4, BK_WHOLE_BATCH=16, SEQUENCE=False, ROWS_SEQ=8, WARPS_SEQ=8, BK_SEQ=16,
                GRID_SYNC=True, ROWS_FREE_GRID=16, WARPS_FREE_GRID=4, BK_GRID=32, GRID_PER_SM=1,
                GRID_GROUPS=True, GRID_POLL=True, BN_SPLIT=False, LN_SPLIT=False)
PER_STEP = dict(GRID_SYNC=False)  # the tiles of a launch per step (where grid-synchronized launches do not fit)
ONE_BARRIER = dict(GRID_GROUPS=False, GRID_POLL=False)  # the grid-synchronized launches' barrier as first timed
SWEEPS = {  # (settings that differ from DEFAULTS, {shape: models}, settings under every one of them)
    "tiles": ([dict(FP32_DOT="ieee"), {}, dict(BK=32), dict(ROWS_FREE=16)],
              {"seq-mnist": ["bn-lstm", "lstm-loop", "bn-gru", "rnn-loop"], "char-lm": ["lstm-loop"]}, PER_STEP),
    "warps": ([{}, dict(WARPS_WHOLE_BATCH=4)], {"seq-mnist": ["bn-lstm", "bn-gru", "bn-rnn"]}, PER_STEP),
    "units": ([{}, dict(BJ_WHOLE_BATCH=8), dict(BJ_WHOLE_BATCH=16, BK_WHOLE_BATCH=32), dict(BK_WHOLE_BATCH=32),
               dict(BK_WHOLE_BATCH=64)],
              {"seq-mnist": ["bn-lstm", "bn-gru", "bn-rnn"]}, PER_STEP),
    "rows": ([{}, dict(BJ=16, BK=32), dict(BJ=16), dict(WARPS_FREE=8), dict(ROWS_FREE=16)],
             {"seq-mnist": ["lstm-loop", "gru-loop", "rnn-loop"]}, PER_STEP),
    "sequence": ([{}, dict(SEQUENCE=True), dict(ROWS_SEQ=16), dict(WARPS_SEQ=4, BK_SEQ=32)],
                 {"seq-mnist": ["rnn-loop", "lstm-loop", "gru-loop", "ln-rnn", "ln-lstm", "ln-gru"],
                  "adding": ["lstm-loop"]}, {}),
    "sync": ([{}, dict(GRID_SYNC=False), dict(BJ_WHOLE_BATCH=2), dict(WARPS_WHOLE_BATCH=16)],
             {"seq-mnist": ["bn-lstm", "bn-gru", "bn-rnn"], "adding": ["bn-lstm"]}, {}),
    "syncrows": ([{}, dict(GRID_SYNC=False), dict(ROWS_FREE_GRID=32), dict(BJ=16),
                  dict(GRID_PER_SM=2, ROWS_FREE_GRID=8)],
                 {"seq-mnist": ["lstm-loop", "gru-loop", "rnn-loop"], "adding": ["gru-loop"]}, {}),
    "syncstacked": ([{}, dict(GRID_PER_SM=2)], {"seq-mnist": ["bn-lstm", "bn-gru", "bn-rnn"]}, {}),
    "barrier": ([ONE_BARRIER, {}, dict(GRID_GROUPS=False), ONE_BARRIER],
                {"seq-mnist": ["lstm-loop", "gru-loop", "bn-lstm", "bn-gru", "bn-rnn"], "adding": ["lstm-loop"]}, {}),
    "dot": ([dict(FP32_DOT="tf32x3"), {}, dict(FP32_DOT_SEQ="split"), dict(FP32_DOT="tf32x3")],
            {"seq-mnist": ["lstm-loop", "gru-loop", "bn-lstm", "bn-gru", "ln-lstm", "ln-gru"], "adding": ["lstm-loop"]},
            {}),
    "gridrows": ([dict(BK_GRID=16), {}, dict(WARPS_FREE_GRID=2), dict(WARPS_FREE_GRID=1)],
                 {"seq-mnist": ["lstm-loop", "gru-loop"], "adding": ["lstm-loop", "gru-loop"]}, {}),
    "bnrows": ([{}, dict(BN_SPLIT=True), dict(BN_SPLIT=True, GRID_GROUPS=False), dict(BN_SPLIT=True, BK_GRID=16), {}],
               {"seq-mnist": ["bn-lstm", "bn-gru", "bn-rnn"], "adding": ["bn-lstm", "bn-gru", "bn-rnn"]}, {}),
    "lnrows": ([{}, dict(LN_SPLIT=True), dict(LN_SPLIT=True, GRID_GROUPS=False), dict(LN_SPLIT=True, BK_GRID=16), {}],
               {"seq-mnist": ["ln-lstm", "ln-gru", "ln-rnn"], "adding": ["ln-lstm", "ln-gru", "ln-rnn"]}, {}),
}
SEEDS = {"syncstacked": 8}  # seeds stacked in one training step (ratio per seed); else one


@contextlib.contextmanager
def applied(settings: dict[str, Any]) -> Iterator[None]:
    """The step kernels' ``settings`` in force inside the block; afterwards each is put
    back as it was found."""
    before = {k: getattr(scan_triton, k) for k in settings}
    try:
        for k, v in settings.items():
            setattr(scan_triton, k, v)
        yield
    finally:
        for k, v in before.items():
            setattr(scan_triton, k, v)


# Largest relative gradient error (‖fast - reference‖ / ‖reference‖ over all parameters'
# gradients together: a parameter whose gradient is near zero would make its own ratio
# noise) a setting may show against the reference loop before it is timed. The compiled
# CPU loops land at 2.3e-7 (tiny shape) and 8.4e-7 (small, bn-lstm); a race between programs (a
# barrier that lets a program read a neighbour's h_t before it is written) lands far above.
GRAD_TOL = 1e-3
# The gradients are compared on the batch's first CHECK_STEPS steps: the kernels and
# their tiles are those of the whole sequence (they depend on T only for T < 2), while
# over all 784 steps of seq-MNIST ln-lstm's gradient at initialization is too
# ill-conditioned for float32 to match itself: norm 1.5e7, the float32 reference loop
# 0.91 off the float64 one, the compiled CPU loops in float64 3.9e-9 off it (100 steps:
# norm 26, float32 9.0e-5 off).
CHECK_STEPS = 100


def check(model: str, shape: str, device: str = "cuda") -> str | None:
    """None where one eager training step of ``model`` at ``shape`` runs with the current
    settings (on CUDA: compiling its step kernels outside any CUDA graph) and its
    gradients on the first ``CHECK_STEPS`` steps of one batch match the reference loop's
    from the same weights within ``GRAD_TOL``; else one line saying why not (the sweep
    then skips the setting)."""
    dev = torch.device(device)
    try:
        step = build_step(model, SHAPES[shape], dev, fast_path=False)  # eager: no graph to break
        batch = make_batch(SHAPES[shape], dev)
        head = _head(batch, CHECK_STEPS)
        grads = []
        for fast in (False, True):  # the reference loop, then the fast recurrence
            set_fast_path(step.model, fast)
            step.model.zero_grad(set_to_none=True)
            step.loss_fn(step.model(head.x, head.lengths), head).backward()
            grads.append([p.grad.detach().clone() if p.grad is not None else torch.zeros_like(p)
                          for p in step.params])
        step(batch)  # and a whole training step, optimizer included, on the fast path
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)
    except Exception as e:  # a setting this Triton cannot compile
        return one_line(e, 160)
    ref, fast = (torch.cat([g.flatten().double() for g in gs]) for gs in grads)
    err = float((fast - ref).norm() / ref.norm().clamp_min(1e-30))
    if not err <= GRAD_TOL:  # NaN fails too
        return f"gradients {err:.1e} off the reference loop's (relative; at most {GRAD_TOL:.0e} allowed)"
    return None


def _head(batch: Batch, steps: int) -> Batch:
    """The batch's first ``steps`` steps (targets of every step cut to match)."""
    every = batch.y.dim() == 2 and not batch.y.is_floating_point()  # (B, T) class ids; else one target a row
    y = batch.y[:, :steps] if every else batch.y
    return Batch(batch.x[:, :steps], y, None if batch.lengths is None else batch.lengths.clamp(max=steps))


# A sweep's setting replaces the defaults only where it is faster by more than this
# (geometric mean over its models): CUDA-event medians of the same setting vary by ~1-2%.
MARGIN = 0.97


def pick(sweeps: list[list[dict[str, Any]]], keep: tuple[str, ...] = ()) -> dict[str, Any]:
    """The settings to use together: from each sweep's rows (``main``'s JSON), the setting
    whose ms per step, relative to the defaults' on each (model, shape) the defaults were
    timed on, has the lowest geometric mean, where it was timed on all of them and beats
    the defaults by ``MARGIN``; the settings where it differs from the sweep's defaults
    (those named in ``keep`` left out), merged over the sweeps (a later sweep's change
    wins a clash)."""
    out: dict[str, Any] = {}
    for rows in sweeps:
        base = {(r["model"], r["shape"]): r for r in rows if r["setting"] == "defaults"}
        if not base:
            continue
        top, top_score = None, MARGIN
        for label in dict.fromkeys(r["setting"] for r in rows if r["setting"] != "defaults"):
            mine = {(r["model"], r["shape"]): r for r in rows if r["setting"] == label}
            if not set(base) <= set(mine):
                continue
            score = math.exp(sum(math.log(mine[k]["ms"] / b["ms"]) for k, b in base.items()) / len(base))
            if score < top_score:
                top, top_score = next(iter(mine.values())), score
        if top is not None:
            base_row = next(iter(base.values()))
            out.update({k: top[k] for k in DEFAULTS if k in top and top[k] != base_row.get(k) and k not in keep})
    return out


def run_picked(files: list[str], keep: list[str], bench_args: list[str]) -> int:
    """``rnnbench bench`` with ``bench_args`` under the settings ``pick`` takes from the
    sweeps' JSON ``files``; the kernels' settings are put back as they were afterwards."""
    from suite.cli import main as cli

    bad = [k for k in keep if k not in DEFAULTS]
    if bad:
        print(f"step_sweep: unknown setting '{bad[0]}' in --keep; choose from: {', '.join(DEFAULTS)}", file=sys.stderr)
        return 2
    sweeps = []
    for f in files:
        try:
            with open(f) as fh:
                sweeps.append(json.load(fh))
        except (OSError, ValueError) as e:  # a sweep that did not run: the others still count
            print(f"step_sweep: {f} skipped ({type(e).__name__}: {e})", flush=True)
    settings = pick(sweeps, tuple(keep))
    print("picked: " + (" ".join(f"{k}={v}" for k, v in settings.items()) or "defaults"), flush=True)
    with applied(settings):
        return cli(["bench", *bench_args])


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    if "--pick" in argv:
        cut = argv.index("--") if "--" in argv else len(argv)
        ap = argparse.ArgumentParser(description="rnnbench bench under the settings picked from sweeps")
        ap.add_argument("--pick", nargs="+", required=True, metavar="SWEEP_JSON")
        ap.add_argument("--keep", nargs="*", default=[], metavar="SETTING", help="leave these at the defaults")
        args = ap.parse_args(argv[:cut])
        raise SystemExit(run_picked(args.pick, args.keep, argv[cut + 1:]))
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sweep", choices=sorted(SWEEPS), default="tiles")
    ap.add_argument("--json", help="write every row here")
    ap.add_argument("--device", default="cuda", help="where to time (the kernels run on CUDA only; cpu: a dry run)")
    args = ap.parse_args(argv)
    variants, cases, under = SWEEPS[args.sweep]
    rows = []
    for i, change in enumerate(variants):
        settings = {**DEFAULTS, **under, **change}
        label = " ".join(f"{k}={v}" for k, v in change.items()) or "defaults"
        label += " (again)" * (change in variants[:i])  # a setting timed twice, for the drift between
        with applied(settings):
            for shape, models in cases.items():
                failed = {m: why for m in models if (why := check(m, shape, args.device))}
                for m, why in failed.items():
                    print(f"{label:<34}{m:<10}{shape:<10} skipped: {why}", flush=True)
                timed = [m for m in models if m not in failed]
                for r in _time(label, timed, shape, args.device, SEEDS.get(args.sweep, 1)):
                    rows.append({**r, **settings, "setting": label})
                    print(f"{label:<34}{r['model']:<10}{shape:<10}{r['ms']:>8.2f} ms{r['ratio_to_lstm']:>7.3f}x  "
                          f"{r['path']}", flush=True)
    for line in best(rows):
        print(line)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)


def _time(label: str, models: list[str], shape: str, device: str, seeds: int) -> list[dict]:
    """``bench``'s rows of ``models`` at ``shape`` (cuDNN LSTM's left out). Stacked seeds
    (``seeds`` > 1) are timed one model at a time: ``check`` tries one seed, and a stack's
    grid-synchronized launch may still be refused (more programs than can be resident at
    once), which skips that model with one line, not the sweep."""
    if not models:
        return []
    if seeds == 1:
        return [r for r in bench(models, [shape], device, repeats=3) if r["model"] != "lstm"]
    rows = []
    for m in models:
        try:
            rows += [r for r in bench([m], [shape], device, repeats=3, seeds=seeds) if r["model"] != "lstm"]
        except Exception as e:  # a launch this GPU refuses
            print(f"{label:<34}{m:<10}{shape:<10} skipped: {one_line(e, 160)}", flush=True)
    return rows


def best(rows: list[dict]) -> list[str]:
    """One line per (model, shape): its fastest setting, against the defaults where they
    were timed (ms per training step, ratio to cuDNN LSTM, and the speed-up)."""
    out = []
    for key in dict.fromkeys((r["model"], r["shape"]) for r in rows):
        mine = [r for r in rows if (r["model"], r["shape"]) == key]
        top = min(mine, key=lambda r: r["ms"])
        base = next((r for r in mine if r["setting"] == "defaults"), None)
        gain = f" against defaults {base['ms']:.2f} ms ({base['ms'] / top['ms']:.2f}x)" if base else ""
        out.append(f"best {key[0]:<10}{key[1]:<10}{top['setting']:<34}{top['ms']:>8.2f} ms{top['ratio_to_lstm']:>7.3f}x"
                   + gain)
    return out


if __name__ == "__main__":
    main()
