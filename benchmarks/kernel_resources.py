"""Registers and spills of the CUDA step kernels (baselines/scan_triton.py and
scan_triton_rows.py), compiled
for sm_90 on any machine: Triton ships ptxas and cuobjdump, so no GPU is needed.

A kernel that spills (STACK > 0: bytes of local memory a thread) runs its loads and
stores of spilled values through the cache hierarchy every step, so this table is a
cheap first look at the tile settings that ``step_sweep.py`` then times on a GPU.

    python3 benchmarks/kernel_resources.py [--warps 4,8] [--chunks 16,32] [--only 'lstm fwd']

Prints one line per (kernel, norm, tile, warps, chunk): registers a thread, bytes of
stack a thread, shared memory a program.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import tempfile

os.environ.pop("TRITON_INTERPRET", None)  # compile, do not interpret
os.environ.setdefault("TRITON_DEFAULT_FP_FUSION", "1")

import triton  # noqa: E402
from triton.backends.compiler import GPUTarget  # noqa: E402
from triton.compiler import ASTSource  # noqa: E402

from baselines import scan_triton as st  # noqa: E402
from baselines import scan_triton_rows as rows  # noqa: E402

SCALARS = {"B": "i32", "H": "i32", "S": "i32", "B0": "i32", "t": "i32", "T": "i32", "hoff": "i32", "coff": "i32",
           "eps": "fp32", "ceps": "fp32", "CNT": "*i32", "NPROG": "i32", "k": "i32"}


def _norm(mode: int) -> dict:
    return dict(MODE=mode, HAS_BETA=False, HAS_SHIFT=mode == 2, HAS_VAR=mode == 1)


def _cell_norm(mode: int) -> dict:
    return dict(CMODE=mode, C_BETA=mode != 0, C_SHIFT=mode == 2, C_VAR=mode == 1)


GRID = dict(GRID=True, GROUP=st.GRID_GROUPS, POLL=st.GRID_POLL)  # the barriers between steps
SEQ = dict(GRID=False, GROUP=False, POLL=False)
# (label, kernel, constexprs, rows a program, units a program): the tiles the suite picks
# at the seq-MNIST shape (B=100, H=100) for each kind of program, and the whole-batch
# program at 16 units (the earlier default) beside them
CASES = [
    ("rows split", "lstm fwd", st._lstm_fwd, dict(_norm(0), **_cell_norm(0)), st.ROWS_FREE, st.BJ),
    ("rows split", "lstm bwd", st._lstm_bwd, dict(MODE=0, CMODE=0, HAS_NEXT=True, HAS_LAST=False), st.ROWS_FREE,
     st.BJ),
    ("whole batch", "lstm fwd bn", st._lstm_fwd, dict(_norm(1), **_cell_norm(1)), 128, st.BJ_WHOLE_BATCH),
    ("whole batch", "lstm bwd bn", st._lstm_bwd, dict(MODE=1, CMODE=1, HAS_NEXT=True, HAS_LAST=False), 128,
     st.BJ_WHOLE_BATCH),
    ("whole batch", "lstm fwd bn", st._lstm_fwd, dict(_norm(1), **_cell_norm(1)), 128, 16),
    ("whole batch", "lstm bwd bn", st._lstm_bwd, dict(MODE=1, CMODE=1, HAS_NEXT=True, HAS_LAST=False), 128, 16),
    ("sequence", "lstm fwd", st._lstm_fwd_seq, dict(_norm(0), **_cell_norm(0), **SEQ), st.ROWS_SEQ, 128),
    ("sequence", "lstm bwd", st._lstm_bwd_seq, dict(MODE=0, CMODE=0, HAS_LAST=False, **SEQ), st.ROWS_SEQ, 128),
    ("sequence", "lstm fwd ln", st._lstm_fwd_seq, dict(_norm(3), **_cell_norm(3), **SEQ), st.ROWS_SEQ, 128),
    ("sequence", "lstm bwd ln", st._lstm_bwd_seq, dict(MODE=3, CMODE=3, HAS_LAST=False, **SEQ), st.ROWS_SEQ, 128),
    ("sequence", "gru fwd", st._gru_fwd_seq, dict(_norm(0), **SEQ), st.ROWS_SEQ, 128),
    ("sequence", "gru bwd", st._gru_bwd_seq, dict(MODE=0, **SEQ), st.ROWS_SEQ, 128),
    ("sequence", "rnn fwd", st._rnn_fwd_seq, dict(_norm(0), RELU=False, **SEQ), st.ROWS_SEQ, 128),
    ("sequence", "rnn bwd", st._rnn_bwd_seq, dict(MODE=0, RELU=False, **SEQ), st.ROWS_SEQ, 128),
    # grid-synchronized launches: the step kernels' tiles, all steps in one launch
    ("grid", "lstm fwd", st._lstm_fwd_seq, dict(_norm(0), **_cell_norm(0), **GRID), st.ROWS_FREE_GRID, st.BJ),
    ("grid", "lstm bwd", st._lstm_bwd_seq, dict(MODE=0, CMODE=0, HAS_LAST=False, **GRID), st.ROWS_FREE_GRID,
     st.BJ),
    ("grid", "lstm fwd bn", st._lstm_fwd_seq, dict(_norm(1), **_cell_norm(1), **GRID), 128, st.BJ_WHOLE_BATCH),
    ("grid", "lstm bwd bn", st._lstm_bwd_seq, dict(MODE=1, CMODE=1, HAS_LAST=False, **GRID), 128,
     st.BJ_WHOLE_BATCH),
]

# batch norm (st.BN_SPLIT) and layer norm (st.LN_SPLIT) with the rows split: lstm-loop's
# tiles, the barriers of GRID_GROUPS (st._exchange_group); 7 row blocks of 16 at B=100
# exchanging batch norm's statistics, 13 unit blocks of 8 at H=100 exchanging each row's
# for layer norm
for _mode, _tag, _nrb in ((1, "bn", 8), (3, "ln", 16)):
    _rows = dict(GROUP=st.GRID_GROUPS, XGROUP=(2 if _mode == 1 else 1) if st.GRID_GROUPS else 0, POLL=st.GRID_POLL,
                 NRB=_nrb)
    CASES += [(f"{_tag} rows", f"{name} {_tag}", fn, dict(consts, **_rows), st.ROWS_FREE_GRID, st.BJ)
              for name, fn, consts in (
                  ("lstm fwd", rows._lstm_fwd_seq, dict(_norm(_mode), **_cell_norm(_mode))),
                  ("lstm bwd", rows._lstm_bwd_seq, dict(MODE=_mode, CMODE=_mode, HAS_LAST=False)),
                  ("gru fwd", rows._gru_fwd_seq, _norm(_mode)), ("gru bwd", rows._gru_bwd_seq, dict(MODE=_mode)),
                  ("rnn fwd", rows._rnn_fwd_seq, dict(_norm(_mode), RELU=False)),
                  ("rnn bwd", rows._rnn_bwd_seq, dict(MODE=_mode, RELU=False)))]


def resources(fn, consts: dict, warps: int) -> tuple[str, str, int]:
    """(registers, stack bytes, shared bytes) of ``fn`` compiled for sm_90 with ``consts``."""
    names = fn.arg_names
    consts = {k: v for k, v in dict(EARLY=True, **consts).items() if k in names}  # a launch per step: loads first
    sig = {n: "constexpr" if n in consts else SCALARS.get(n, "*fp32") for n in names}
    src = ASTSource(fn=fn, signature=sig, constexprs={(names.index(k),): v for k, v in consts.items()})
    k = triton.compile(src, target=GPUTarget("cuda", 90, 32), options=dict(num_warps=warps))
    tool = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "cuobjdump")
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(k.asm["cubin"])
        f.flush()
        out = subprocess.run([tool, "--dump-resource-usage", f.name], capture_output=True, text=True, check=True)
    fields = dict(x.split(":", 1) for x in next(ln for ln in out.stdout.splitlines() if "REG:" in ln).split()
                  if ":" in x)
    return fields["REG"], fields["STACK"], k.metadata.shared


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--warps", default="4,8", help="warps a program, comma-separated")
    ap.add_argument("--chunks", default="16,32", help="reduction chunks (BK), comma-separated")
    ap.add_argument("--only", default="", help="kernels whose name contains this (e.g. 'lstm fwd')")
    args = ap.parse_args(argv)
    print(f"{'program':<12}{'kernel':<13}{'rows':>5}{'units':>6}{'warps':>6}{'chunk':>6}{'regs':>6}{'stack':>7}"
          f"{'smem':>8}", flush=True)
    for label, name, fn, consts, rows, units in CASES:
        if args.only not in name:
            continue
        for warps in map(int, args.warps.split(",")):
            for bk in map(int, args.chunks.split(",")):
                prec = st.FP32_DOT_SEQ if label == "sequence" else st.FP32_DOT
                regs, stack, smem = resources(fn, dict(consts, BB=rows, BJ=units, BK=bk, PREC=prec), warps)
                print(f"{label:<12}{name:<13}{rows:>5}{units:>6}{warps:>6}{bk:>6}{regs:>6}{stack:>7}{smem:>8}",
                      flush=True)


if __name__ == "__main__":
    main()
