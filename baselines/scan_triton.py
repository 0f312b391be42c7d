"""The scan path's sequential loops on CUDA: one Triton kernel per time step.

On CUDA the Python loops of ``baselines/scan.py`` are captured in the training step's
CUDA graph, so Python costs nothing there, but each of a step's ops is still a kernel
of a few microseconds: an LSTM step with batch norm on W_hh h and c_t is 10 kernels
forward and 7 backward, and at T=784 that is ~13,000 kernels per training step.
Here each step is one kernel, forward and backward, which does the step's matrix
product as well as its elementwise work:

- forward, step t: z = h_{t-1} W^T for a block of hidden units (all gates of those
  units), the norm of z (per-step batch statistics, population statistics or none),
  the gates, c_t and its norm, h_t;
- backward, step t: ∂L/∂h_t = dy_t + ∂L/∂z_{t+1} W for the block (the launch
  boundary makes every unit's ∂L/∂z_{t+1} visible), the gates' derivatives, the
  norms' backward passes (dγ, dβ summed in place across steps), ∂L/∂z_t.

A program owns a block of hidden units and, without batch norm, a block of rows; with
batch norm it owns every row of the batch (at most ``MAX_ROWS``), so each unit's batch
statistics stay within one program. Stacked seeds (``baselines/stack.py``: W_hh of shape
(S, G*H, H), rows seed-major) are a third grid axis: each seed's programs do what one
model's do, with its own weights, norm parameters and statistics, so a launch has S
times the programs (the batch-norm kernels above have few). Nothing is shared between
programs of one launch, so there is no atomic and the sums are in a fixed order: the
results are the same from run to run, and a stacked seed's are those of the seed alone.
(With ``BN_SPLIT``, opt-in, batch norm's rows are split over programs that exchange
their rows' statistics, in a fixed order too: ``baselines/scan_triton_rows.py``.)

The functions take the arguments of the compiled CPU loops (``scan_cpp``,
csrc/scan_loops.cpp) and fill the same buffers, so scan.py runs either with the same
code around them. They cover the RNN, LSTM and GRU cells, one model or stacked seeds,
with no norm or batch norm (batch or population statistics), in float32; layer norm
(whose statistics span every unit of a row) runs in whole-sequence launches only
(below); otherwise it and float64 keep the Python loops (``for_call`` says None). Tests
run the kernels in Triton's interpreter on the CPU (``TRITON_INTERPRET=1``) against the
Python loops; tests/test_gpu.py runs them compiled. ``RNNBENCH_GPU_STEPS=0`` turns them off.

A step issues every load that waits on nothing it computes before its matrix product
(``_first``; in a launch per step and in grid-synchronized launches, where it was
timed; whole-sequence launches load after it, ``EARLY``): on an H100 that took
lstm-loop from 0.37x to 0.50x cuDNN LSTM at the seq-MNIST shape, gru-loop 0.46x ->
0.58x, rnn-loop 0.85x -> 1.00x, bn-rnn 0.48x -> 0.56x, bn-lstm 0.18x -> 0.21x
(benchmarks/RESULTS.md, 2026-11-26). Each float32 product's three TF32 products sum
into accumulators of their own (``FP32_DOT``), and batch and layer norm sum all gates
in one reduction (``_bn_gates``): lstm-loop 0.60x at seq-MNIST and 0.58x at adding,
gru-loop 0.61x and 0.67x, bn-lstm 0.25x and 0.24x, bn-gru 0.30x and 0.29x (2026-11-27).
Earlier, measured
on an H100 (code of b6af4d6; training step, ratio to cuDNN LSTM at the seq-MNIST
shape, Python loops -> step kernels): rnn-loop 0.34x -> 0.64x, bn-rnn 0.16x ->
0.34x, gru-loop 0.19x -> 0.32x, lstm-loop 0.18x -> 0.25x, bn-gru 0.12x -> 0.13x, bn-lstm
0.08x -> 0.10x. The batch-norm kernels are the slow ones: a program holds the whole
batch, so a launch had H/16 programs (7 of 132 multiprocessors at H=100), and Nsight
Compute showed each latency-bound (bn-lstm: 30 us forward, 37 us backward per step, one
instruction every 4.7 cycles per scheduler). Tuned on an H100 (2026-11-26, settings
below): 4 units a program (25 programs) took bn-lstm to 0.17x, bn-gru 0.22x, bn-rnn
0.45x; 8 units and chunks of 16 took lstm-loop to 0.30x, gru-loop 0.39x, rnn-loop 0.70x.
Eight stacked seeds (one launch, a grid axis per seed) train at 0.63x to 2.35x per seed
at the seq-MNIST and adding shapes.

Whole sequences in one launch (layer norm always; the other cells with ``SEQUENCE``,
``RNNBENCH_GPU_SEQUENCE=1``): where
no norm takes batch statistics (no norm, population statistics in evaluation, layer
norm), each row's recurrence is independent of the other rows'. A program then owns
ROWS_SEQ rows and every hidden unit, and runs the step kernels' code for t = 0 .. T-1
(backward: T-1 .. 0) in one launch, with a barrier between steps for its own warps: no
launch per step, no other program to wait for. Layer norm, whose statistics span every
unit (and gate) of a row, runs here only; its γ and β gradients are summed after the
loop from the saved terms and statistics, as for the Python loops. Runs record
"scan-triton-seq". Tested in the interpreter against the float64 reference, compiled for
sm_90 and on an H100. Timed there (``benchmarks/step_sweep.py --sweep sequence``): faster
than the Python loops for layer norm, slower than a launch per step for the gated cells
without it, hence the default above.
"""

from __future__ import annotations

import math
import os
import warnings

import torch
from torch import Tensor

from suite.errors import one_line

try:  # Triton is optional: without it the Python loops run.
    import triton
    import triton.language as tl
except ImportError:  # pragma: no cover - depends on the installation
    triton = None

ENV = "RNNBENCH_GPU_STEPS"
MAX_ROWS = 128  # batch norm: the whole batch in one program
# Measured on an H100 (benchmarks/RESULTS.md), the kernels beat the graphed Python loops
# at H=100 and 128 and lost to them at H=1000 (char-LM shape: lstm-loop 0.79x against
# 1.09x, rnn-loop 2.58x against 2.96x), where cuBLAS spreads each step's product over
# the chip; between the two it is not measured, so larger H keeps the Python loops.
MAX_HIDDEN = 128
# The tile settings below are the fastest of ``benchmarks/step_sweep.py``'s sweeps on an
# H100 (benchmarks/RESULTS.md, 2026-11-26; ms per training step at the seq-MNIST shape).
# Hidden units per program where the rows are split over programs, and the matrix
# products' reduction chunk there: 8 and 16 against 16 and 32 took lstm-loop from 21.1
# to 16.9 ms, gru-loop 16.1 -> 12.8, rnn-loop 8.1 -> 7.3 (chunks of 16 alone: 20.2, 14.7,
# 8.3; 8 warps: slower).
BJ = 8
BK = 16
# Hidden units per program where a program holds the whole batch (batch norm): fewer
# units spread a step over more programs (H/BJ of them: 25 at H=100 with 4, 7 with 16).
# 4 units and chunks of 16 against 16 and 32: bn-lstm 50.7 -> 28.9 ms, bn-gru 39.3 ->
# 22.8, bn-rnn 15.7 -> 11.1 (8 units: 32.6, 23.5, 11.7).
BJ_WHOLE_BATCH = 4
BK_WHOLE_BATCH = 16
ROWS_FREE = 32  # rows per program where no batch statistics bind them together
# The matrix products' precision where PyTorch's float32 matmul setting asks for full
# float32: three TF32 products on the tensor cores (the operands split into a TF32 part
# and a TF32 remainder, ``_tf32``; relative error ~1e-6, as float32's accumulation).
# "split" (``_dot``) sums each of the three into its own accumulator across the chunks
# of the reduction; Triton's own "tf32x3" chains them into one, each chunk's three
# products waiting one on another (a chunk of 16: six dependent tensor-core
# instructions; in the LSTM's backward product, 4H/16 chunks of them a step, one after
# another). On an H100 (``step_sweep.py --sweep dot``, 2026-11-27; ms per training step
# at seq-MNIST, tf32x3 -> split): lstm-loop 10.23 -> 8.38, gru-loop 8.54 -> 8.38, bn-lstm
# 21.90 -> 20.58, bn-gru 17.81 -> 16.45; lstm-loop at adding 14.87 -> 12.08. Triton's
# plain float32 product ("ieee") runs on the FMA units; on an H100 it made training
# steps at the seq-MNIST shape slower: bn-lstm 62.7 against 48.0 ms, lstm-loop 26.6
# against 20.7, rnn-loop 11.1 against 7.9 (benchmarks/step_sweep.py).
# With TF32 allowed, one TF32 product. Whole-sequence launches (a program of 8 rows and
# every unit) keep "tf32x3" (FP32_DOT_SEQ): compiled for sm_90 (Triton 3.6), their
# twelve accumulators of 8 x 128 took ln-lstm's forward kernel from 56 to 200 bytes of
# spills a thread.
FP32_DOT = "split"
FP32_DOT_SEQ = "tf32x3"
WARPS_WHOLE_BATCH = 8  # warps of a program that holds the whole batch (128 rows)
# Warps of a program of ROWS_FREE rows. Compiled for sm_90 (32 rows x 16 units), the
# LSTM's forward kernel used 254 registers and spilled 32 bytes a thread with 4 warps and
# chunks of 32 (the earlier defaults); chunks of 16 need 136 and spill nothing. 8 warps
# were slower on an H100 (``step_sweep.py --sweep rows``).
WARPS_FREE = 4
# Whole-sequence kernels (``_*_seq``): where no batch statistics bind the rows together,
# a program owns ROWS_SEQ rows and every hidden unit and runs all steps in one launch.
# Layer norm runs there always (it has no other kernel); the other cells only with
# SEQUENCE on (RNNBENCH_GPU_SEQUENCE=1): on an H100 at the seq-MNIST shape (8 rows a
# program) they lost to a launch per step with its tuned tiles (lstm-loop 27.1 against
# 16.9 ms, gru-loop 22.6 against 12.8, rnn-loop 7.6 against 7.3), while the layer-norm
# cells gained over the Python loops (ln-rnn 20.9 -> 9.0 ms, ln-lstm 39.6 -> 34.0,
# ln-gru 32.1 -> 24.4). 8 rows a program (13 at B=100) beat 16 (7 programs) for every
# cell (ln-lstm 48.3 -> 34.0 ms), and 16 rows with 16 warps (ln-lstm 54.9 ms).
ENV_SEQUENCE = "RNNBENCH_GPU_SEQUENCE"
SEQUENCE = os.environ.get(ENV_SEQUENCE) == "1"
ROWS_SEQ = 8
# A program holds every unit (a tile of up to 128): compiled for sm_90 with 4 warps and
# chunks of 32, the LSTM's forward kernel used 255 registers and spilled 2.4 KB a
# thread; with 8 warps and chunks of 16, 40 bytes, and 736 with layer norm over its
# gates (cuobjdump --dump-resource-usage; 16 rows a program).
WARPS_SEQ = 8
BK_SEQ = 16
# Grid-synchronized launches (GRID_SYNC; on by default, RNNBENCH_GPU_GRID_SYNC=0 turns
# them off): where a launch per step runs (not whole sequences), all T steps in one
# launch of the step kernels' programs, with a barrier of every program between steps
# (``_step_sync``: an atomic counter in global memory) in place of a launch and its
# ordering. What a launch per step costs beyond its work, twice per step, becomes one
# barrier; batch statistics stay within a program (the whole batch of its units), as in
# a launch per step. Needs every program resident at once, so at most GRID_PER_SM (1)
# per multiprocessor (bn-lstm at the seq-MNIST shape: 25 programs of 132); elsewhere (8
# stacked seeds, say) a launch per step runs. Runs record "scan-triton-grid". On an H100
# (benchmarks/RESULTS.md; the same tiles): bn-rnn 11.19 -> 10.19 ms a training step at
# the seq-MNIST shape, rnn-loop 7.12 -> 6.70, bn-lstm 39.11 -> 35.76 at the adding shape;
# gru-loop 12.52 -> 13.81 at seq-MNIST until its rows were split finer (ROWS_FREE_GRID).
ENV_GRID_SYNC = "RNNBENCH_GPU_GRID_SYNC"
GRID_SYNC = os.environ.get(ENV_GRID_SYNC, "1") != "0"
# Programs a multiprocessor may hold in a grid-synchronized launch (RNNBENCH_GPU_GRID_PER_SM;
# not yet timed above 1). More lets more programs share a step: 8 stacked seeds of bn-lstm
# (8 x 25 programs at the seq-MNIST shape, a launch per step at 1), or 8 rows a program
# (169 for lstm-loop). Two bn-lstm programs of 8 warps fit a multiprocessor's registers
# (108 a thread, compiled for sm_90). The driver refuses a cooperative launch whose
# programs cannot all be resident at once (an error, not a hang), and the sweeps check
# each setting before timing it (benchmarks/step_sweep.py).
ENV_GRID_PER_SM = "RNNBENCH_GPU_GRID_PER_SM"


def _env_count(name: str, default: int) -> int:
    """A whole number >= 1 from the environment variable ``name``; else (with a warning
    naming it) ``default``."""
    raw = os.environ.get(name)
    if raw is None:
        return default
    if raw.strip().isdigit() and int(raw) >= 1:
        return int(raw)
    warnings.warn(f"rnnbench: {name}={raw!r} is not a whole number of at least 1; using {default}", RuntimeWarning,
                  stacklevel=2)
    return default


GRID_PER_SM = _env_count(ENV_GRID_PER_SM, 1)
# Rows per program where no batch statistics bind them together, in grid-synchronized
# launches: a launch costs nothing more per program there, so a step spreads over more
# programs (lstm-loop at seq-MNIST: 13 x 7 = 91 instead of 13 x 4). On an H100 against
# 32 rows: lstm-loop 16.23 -> 13.66 ms, gru-loop 13.81 -> 11.12, rnn-loop 6.70 -> 5.88
# (seq-MNIST), gru-loop 15.36 -> 15.82 (adding); 4 units a program instead was slower
# (14.28, 12.11, 6.73). Whole-batch programs keep BJ_WHOLE_BATCH: 2 units (50 programs)
# were 2% faster over bn-lstm, bn-gru and bn-rnn at seq-MNIST and bn-lstm at adding
# together, under the sweeps' 3% margin (bn-lstm adding 35.76 -> 37.73 ms).
ROWS_FREE_GRID = 16
# Warps of such a program (16 rows x 8 units: each warp's tensor-core tile is the whole
# program's, so every warp does the same product). On an H100 (2026-11-27, ms per
# training step at seq-MNIST and adding; ``step_sweep.py --sweep gridrows``) 2 warps
# against 4: lstm-loop 9.16 / 8.44 and 11.31 / 12.09, gru-loop 8.20 / 8.15 and 10.68 /
# 10.65; 1 warp: 11.85, 11.73, 11.51, 10.08. Kept at 4.
WARPS_FREE_GRID = 4
# The products' chunk there: BK_GRID where H is a multiple of it (the adding shape's
# 128), so that no reduction (H forward, 3H or 4H backward) is padded, else BK. Chunks
# of 32 against 16 on an H100 (the sweep above): lstm-loop 8.96 / 8.44 ms at seq-MNIST
# (H=100: 4 chunks of 32 are 128 units against 7 of 16, 112), 11.14 / 12.09 at adding;
# gru-loop 7.93 / 8.15 and 9.59 / 10.65.
BK_GRID = 32
# The barriers of grid-synchronized launches. GRID_GROUPS: a barrier waits only for the
# programs that share a program's rows and seed, whose stores of a step are all that the
# next step reads from other programs (``_step_sync``): 13 of lstm-loop's 91 at the
# seq-MNIST shape, one seed's 25 of 8 stacked bn-lstm seeds' 200, each group counting on
# its own counter; else every program of the launch on one counter. GRID_POLL: every
# thread waits with its own acquire loads, not one thread with Triton's atomic, whose
# value it hands to the others through shared memory and two barriers of the program's
# warps at every read. On an H100 (benchmarks/RESULTS.md, 2026-11-26) a barrier costs
# ~1 us whichever the kind, alone or after a step's stores (benchmarks/grid_barriers.py:
# 0.90 to 1.15 us at 25 and 91 programs), and the two together against neither changed
# training steps by -1% to -4% (``step_sweep.py --sweep barrier``: lstm-loop 13.60 and
# 13.81 -> 13.39 ms, gru-loop 11.24 and 11.18 -> 10.74 at seq-MNIST; the new polls alone
# as fast). At 200 programs (8 stacked seeds, two a multiprocessor: GRID_PER_SM=2, not
# the default) every thread polling doubled a barrier (1.21 -> 2.25 us a group's).
GRID_GROUPS = True
GRID_POLL = True
# Batch norm with the batch's rows split over programs (``baselines/scan_triton_rows.py``;
# RNNBENCH_GPU_BN_SPLIT=1): where the hidden term's norm takes batch statistics, a
# grid-synchronized launch takes the rows-split programs' tiles (ROWS_FREE_GRID rows, BJ
# units: 91 programs for bn-lstm at the seq-MNIST shape, against 25 of the whole batch),
# and the programs of a unit block exchange their rows' statistics through global memory,
# with a barrier between a step's phases (two a step; three for the LSTM with its cell's
# batch norm): with GRID_GROUPS one of the unit block's programs (7 there, on a counter
# of theirs) and the step's one of the row block's (13), the shares in two copies by the
# step's parity; else every barrier one of every program. Tested in the interpreter and
# compiled for sm_90, not yet timed on a GPU: off until it is. BN_SPLIT_STEPS: in a launch per step too,
# each phase a launch of its own (the tests' way to run several row blocks in Triton's
# interpreter, which runs a launch's programs one after another).
ENV_BN_SPLIT = "RNNBENCH_GPU_BN_SPLIT"
BN_SPLIT = os.environ.get(ENV_BN_SPLIT) == "1"
BN_SPLIT_STEPS = False
# Layer norm the same way (RNNBENCH_GPU_LN_SPLIT=1): where the hidden term's norm is layer
# norm (and no norm takes batch statistics), a grid-synchronized launch of the rows-split
# programs in place of the whole-sequence launches (13 programs of 8 rows and every unit
# at the seq-MNIST shape), the programs of a row block exchanging each row's statistics
# over its units, so that every barrier, a step's or a phase's, waits for the programs of
# a row block alone (with GRID_GROUPS: 13 of 91 there); where they do not fit, whole
# sequences as before. Tested and compiled as BN_SPLIT, and tried by the grid launches'
# probe where it is on; not yet timed on a GPU: off until it is.
ENV_LN_SPLIT = "RNNBENCH_GPU_LN_SPLIT"
LN_SPLIT = os.environ.get(ENV_LN_SPLIT) == "1"
# On the CPU the kernels run only in Triton's interpreter, for tests (far slower than
# the compiled CPU loops), so they are used there only when a test switches this on.
ALLOW_INTERPRETER = False
# The programs a grid barrier may wait for in Triton's interpreter: one, as it runs a
# launch's programs one after another (tests/interpreter_grid.py runs them as threads
# and raises this).
INTERPRETER_PROGRAMS = 1

GATES = {"rnn": 1, "lstm": 4, "gru": 3}
_NONE, _BATCH, _POP, _LAYER = 0, 1, 2, 3  # csrc/scan_loops.cpp's modes; layer norm in whole sequences only


def enabled() -> bool:
    return os.environ.get(ENV, "1") != "0"


def interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET") == "1"


def for_call(x: Tensor, seeds: int, cell: str, modes: tuple[int, ...]):
    """This module where its kernels apply to a recurrence on ``x`` (B, T, ·) of one model
    or of ``seeds`` stacked seeds: CUDA (or the interpreter, when a test allows it),
    float32, ``modes`` (the norms' csrc numbers) with layer norm only where the whole
    sequence runs in one launch (``whole_sequence``: a program then holds every unit of
    its rows), a seed's rows in one program where batch statistics are taken, and at most
    ``MAX_HIDDEN`` hidden units; else None."""
    if triton is None or not enabled() or x.dtype != torch.float32 or cell not in GATES:
        return None
    if x.shape[-1] // GATES[cell] > MAX_HIDDEN or x.numel() >= 2**31:  # offsets are int32
        return None
    rows = x.shape[0] // max(seeds, 1)  # of one seed
    if any(m not in (_NONE, _BATCH, _POP, _LAYER) for m in modes) or (_BATCH in modes and rows > MAX_ROWS):
        return None
    if _LAYER in modes and not whole_sequence(x.shape[1], modes):
        return None
    if x.device.type == "cuda":  # NVIDIA only: the float32 product (3xTF32) is NVIDIA's
        usable = not interpreting() and torch.version.hip is None
    else:
        usable = x.device.type == "cpu" and interpreting() and ALLOW_INTERPRETER
    if not (usable and _runs_here(x.device)):
        return None
    if whole_sequence(x.shape[1], modes) and not _seq_runs_here(x.device) and _LAYER in modes:
        return None  # the launches cannot run here: layer norm keeps the Python loops, the rest a launch per step
    return _this()


_failed: str | None = None  # why the kernels could not run here, once tried
_tried = False
_seq_failed: str | None = None  # why the whole-sequence launches could not run here, once tried
_seq_tried = False
_grid_failed: str | None = None  # why the grid-synchronized launches could not run here, once tried
_grid_tried = False


def _probe(device: torch.device, T: int, seq: bool = False, grid: bool = False) -> str | None:
    """Why an RNN forward pass of ``T`` steps on one row fails here (None: it runs); on
    one unit, or ``seq``: in a whole-sequence launch, whatever ``SEQUENCE`` says (the
    layer-norm cells run there with it off); ``grid``: in a grid-synchronized launch of
    several programs (of one in the interpreter), over a whole chunk of BK_GRID units
    (the longer chunk that H a multiple of it takes), with batch norm where BN_SPLIT
    splits its rows and layer norm where LN_SPLIT does (``scan_triton_rows``' kernels;
    each on, one after the other)."""
    global SEQUENCE, GRID_SYNC
    before = SEQUENCE, GRID_SYNC
    SEQUENCE, GRID_SYNC = (SEQUENCE or seq) and not grid, GRID_SYNC or grid
    try:
        H = BK_GRID * triton.cdiv(2 * BJ, BK_GRID) if grid and device.type == "cuda" else 1
        one = torch.ones(1, H, device=device)
        off = Norm(_NONE, one[0, :1], None, None, None, None, None, None, 0.0)
        split = [m for m, on in ((_BATCH, BN_SPLIT), (_LAYER, LN_SPLIT)) if on and grid]
        for mode in split or [_NONE]:
            nh, zs = off, None
            if mode != _NONE:  # the tables: (T, H) batch norm's, (T, 1 row) layer norm's
                F = H if mode == _BATCH else 1
                nh = Norm(mode, one[0], None, None, None, torch.empty(T, F, device=device),
                          torch.empty(T, F, device=device), None, 1e-5)
                zs = torch.empty(T, 1, H, device=device)
            rnn_forward(torch.ones(T, 1, H, device=device), zs, one, torch.eye(H, device=device), nh, False, off,
                        None)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        return None
    except Exception as e:  # a compiler, driver or launcher failure
        return one_line(e)
    finally:
        SEQUENCE, GRID_SYNC = before


def _capturing(device: torch.device) -> bool:
    return device.type == "cuda" and torch.cuda.is_current_stream_capturing()


def _runs_here(device: torch.device) -> bool:
    """Whether the kernels compile and run here, tried once per process on a one-step
    recurrence (Triton needs a C compiler for its launcher, and a driver it supports);
    where they do not, one warning says why and the Python loops run."""
    global _failed, _tried
    if not (_tried or _capturing(device)):
        _tried, _failed = True, _probe(device, 1)
        if _failed:
            warnings.warn(f"rnnbench: the CUDA step kernels could not run ({_failed}); the scan path runs its Python "
                          f"loops. Set {ENV}=0 to skip the attempt.", RuntimeWarning, stacklevel=3)
    return _failed is None


def _seq_runs_here(device: torch.device) -> bool:
    """Whether the whole-sequence launches compile and run here, tried once per process
    (as ``_runs_here``) on a two-step recurrence; where they do not, one warning says why
    and ``whole_sequence`` says no from then on."""
    global _seq_failed, _seq_tried
    if not (_seq_tried or _capturing(device)):
        _seq_tried, _seq_failed = True, _probe(device, 2, seq=True)
        if _seq_failed:
            warnings.warn(f"rnnbench: the CUDA whole-sequence launches could not run ({_seq_failed}); the step "
                          f"kernels run a launch per step, layer-norm cells the Python loops.", RuntimeWarning,
                          stacklevel=3)
    return _seq_failed is None


def _grid_runs_here(device: torch.device) -> bool:
    """Whether the grid-synchronized launches compile and run here, tried once per process
    (as ``_runs_here``) on a two-step recurrence of two programs; where they do not, one
    warning says why and a launch per step runs. (A barrier that never opened would
    hang here; the launch is cooperative, so the driver runs every program at once or
    refuses, and tests/test_gpu.py runs them on CUDA.) A GPU that offers fewer
    multiprocessors than it has (an MPS limit on a shared card) would refuse the
    first larger launch with an error, not hang: ``RNNBENCH_GPU_GRID_SYNC=0`` there."""
    global _grid_failed, _grid_tried
    if not (_grid_tried or _capturing(device)):
        _grid_tried = True
        _grid_failed = _probe(device, 2, grid=True)
        if _grid_failed:
            warnings.warn(f"rnnbench: the CUDA grid-synchronized launches could not run ({_grid_failed}); the step "
                          f"kernels run a launch per step.", RuntimeWarning, stacklevel=3)
    return _grid_failed is None


def path(x: Tensor, seeds: int, cell: str, modes: tuple[int, ...]) -> str:
    """The path a recurrence on ``x`` that ``for_call`` takes records: "scan-triton-seq"
    (whole sequences), "scan-triton-grid" (grid-synchronized) or "scan-triton" (a launch
    per step)."""
    T, S = x.shape[1], max(seeds, 1)
    seq, grid, _ = _plan(T, x.shape[0] // S, x.shape[-1] // GATES[cell], S, modes, x.device)
    return "scan-triton-seq" if seq else "scan-triton-grid" if grid else "scan-triton"


def whole_sequence(T: int, modes: tuple[int, ...]) -> bool:
    """Whether a recurrence of ``T`` steps whose norms have ``modes`` (csrc's numbers) runs
    as one launch per direction: two steps or more, no batch statistics, and ``SEQUENCE``
    on or a layer norm (which runs nowhere else but in LN_SPLIT's grid launches, which
    ``_plan`` puts in their place: ``for_call`` routes it to the kernels only where this
    holds, independent of the call, so a backward pass never finds it without the
    launches its forward pass used); not where the launches failed to run here
    (``_seq_runs_here``)."""
    return T >= 2 and _BATCH not in modes and (SEQUENCE or _LAYER in modes) and _seq_failed is None


def _this():
    import sys

    return sys.modules[__name__]


def _rows():
    """The rows-split batch-norm launches (``rows_split``), imported where first used: their
    module builds on this one's kernels."""
    from baselines import scan_triton_rows

    return scan_triton_rows


class Norm:
    """One term's norm as the kernels take it; the arguments of csrc's ``Norm``:
    mode, γ, β, population scale and shift (T, F), and the (T, F) tables that the
    forward pass fills with each step's batch mean, 1/std and variance. ``dgamma`` and
    ``dbeta`` hold the backward pass's sums (batch norm)."""

    def __init__(self, mode: int, gamma: Tensor, beta: Tensor | None, scale: Tensor | None, shift: Tensor | None,
                 mean: Tensor | None, rstd: Tensor | None, var: Tensor | None, eps: float) -> None:
        if mode not in (_NONE, _BATCH, _POP, _LAYER):
            raise ValueError(f"the step kernels take norm modes 0, 1, 2, 3 (none, batch, population, layer), got {mode}")
        if mode == _POP and scale is None or mode in (_BATCH, _LAYER) and (mean is None or rstd is None):
            raise ValueError("population norm needs its scale; batch and layer norm their mean and rstd tables")
        for t in (scale, shift, mean, rstd, var):
            if t is not None and not (t.is_contiguous() and t.device == gamma.device):
                raise ValueError("norm tables must be contiguous and on γ's device")
        self.mode, self.eps = mode, float(eps)
        self.gamma = gamma.contiguous()
        self.beta = beta.contiguous() if beta is not None else None
        self.scale, self.shift, self.mean, self.rstd, self.var = scale, shift, mean, rstd, var
        self.dgamma = torch.zeros_like(self.gamma) if mode == _BATCH else None
        self.dbeta = torch.zeros_like(self.gamma) if mode == _BATCH else None

    def check_fits(self, S: int, T: int, F: int, B: int) -> None:
        """ValueError unless the parameters and tables fit S seeds of F features over T
        steps and B rows in all (the kernels index them without bounds)."""
        need = {"gamma": (self.gamma, S * F)} if self.mode != _NONE else {}
        if self.mode == _POP:
            need.update(scale=(self.scale, T * S * F), shift=(self.shift, T * S * F))
        if self.mode == _BATCH:
            need.update(beta=(self.beta, S * F), mean=(self.mean, T * S * F), rstd=(self.rstd, T * S * F),
                        var=(self.var, T * S * F))
        if self.mode == _LAYER:
            need.update(beta=(self.beta, S * F), mean=(self.mean, T * B), rstd=(self.rstd, T * B))
        for name, (t, n) in need.items():
            if t is not None and t.numel() < n:
                raise ValueError(f"norm {name} has {t.numel()} values; {S} seed(s), {T} steps, {F} features and {B} "
                                 f"rows need {n}")

    def zero_grads(self) -> None:
        if self.dgamma is not None:
            self.dgamma.zero_()
            self.dbeta.zero_()

    def args(self) -> tuple:
        """Pointers in the kernels' order: G, BE, SC, SH, MEAN, RSTD, VAR, DG, DB, eps. Absent
        tensors are stood in for by γ (never read: their ``flags`` are off)."""
        g = self.gamma
        pick = lambda t: t if t is not None else g  # noqa: E731
        return (g, pick(self.beta), pick(self.scale), pick(self.shift), pick(self.mean), pick(self.rstd),
                pick(self.var), pick(self.dgamma), pick(self.dbeta), self.eps)

    def flags(self, cell: bool = False) -> dict:
        """The forward kernels' constexprs for this norm: MODE, HAS_BETA, HAS_SHIFT, HAS_VAR,
        or the LSTM's cell-norm names (``cell``): CMODE, C_BETA, C_SHIFT, C_VAR."""
        names = ("CMODE", "C_BETA", "C_SHIFT", "C_VAR") if cell else ("MODE", "HAS_BETA", "HAS_SHIFT", "HAS_VAR")
        return dict(zip(names, (self.mode, self.beta is not None, self.shift is not None, self.var is not None)))


def _inactive_input(nx: Norm, ux: Tensor | None, wx: Tensor | None = None) -> None:
    if ux is not None or wx is not None or nx.mode != _NONE:
        raise ValueError("the step kernels take no input norm (it runs in the compiled CPU loops only)")


if triton is not None:

    @triton.jit
    def _sigmoid(a):
        return 1.0 / (1.0 + tl.exp(-a))

    @triton.jit
    def _tanh(a):
        """2σ(2a) - 1, and near 0 (where that difference loses its relative accuracy) the
        series a - a³/3 + 2a⁵/15 - 17a⁷/315 + 62a⁹/2835, within float32 rounding for |a| < 0.3."""
        a2 = a * a
        series = a * (1.0 + a2 * (-1.0 / 3.0 + a2 * (2.0 / 15.0 + a2 * (-17.0 / 315.0 + a2 * (62.0 / 2835.0)))))
        return tl.where(tl.abs(a) < 0.3, series, 2.0 * _sigmoid(2.0 * a) - 1.0)

    @triton.jit
    def _tf32(x):
        """x = hi + lo: hi is x rounded to TF32 (10 mantissa bits; to nearest, ties away from
        zero, as cvt.rna.tf32.f32; NaN kept), lo the exact rest (TF32 keeps its top bits).
        As cvt.rna (and so Triton's tf32x3), |x| >= 0x7F7FF000 (3.40199e38, within 2^-11 of
        float32's largest) rounds to an infinity: there hi + lo is NaN, not x."""
        b = x.to(tl.int32, bitcast=True)
        hi = ((b + 4096) & -8192).to(tl.float32, bitcast=True)
        hi = tl.where(x == x, hi, x)
        return hi, x - hi

    @triton.jit
    def _dot(ah, al, w, acc, lo, lo2, PREC: tl.constexpr):
        """acc += A w at PREC. With "split" (``FP32_DOT``): A given as its TF32 parts (ah, al:
        ``_tf32``), the three TF32 products each into its own accumulator (``_dot_sum``
        adds them); else A = ah and one product (lo, lo2 untouched)."""
        if PREC == "split":
            wh, wl = _tf32(w)
            acc = tl.dot(ah, wh, acc, input_precision="tf32")
            lo = tl.dot(al, wh, lo, input_precision="tf32")
            lo2 = tl.dot(ah, wl, lo2, input_precision="tf32")
        else:
            acc = tl.dot(ah, w, acc, input_precision=PREC)
        return acc, lo, lo2

    @triton.jit
    def _dot_sum(acc, lo, lo2, PREC: tl.constexpr):
        """A product of ``_dot``'s accumulators: with "split", the TF32 product plus the
        remainders' (zero where they are NaN, as Triton's tf32x3: an infinite operand's
        remainder is inf - inf), else acc."""
        if PREC == "split":
            rest = lo + lo2
            acc += tl.where(rest == rest, rest, 0.0)
        return acc

    @triton.jit
    def _chunk(A, rb, mb, K, rk, mk, PREC: tl.constexpr):
        """A[rb, rk] (A's rows K apart) as ``_dot``'s left operand: its TF32 parts with
        "split", else itself (twice; the second never read)."""
        a = tl.load(A + rb[:, None] * K + rk[None, :], mask=mb[:, None] & mk[None, :], other=0.0)
        if PREC == "split":
            ah, al = _tf32(a)
        else:
            ah, al = a, a
        return ah, al

    @triton.jit
    def _mm_gates(A, rb, mb, K, W, H, rj, mj, NG: tl.constexpr, BB: tl.constexpr, BJ: tl.constexpr,
                  BK: tl.constexpr, PREC: tl.constexpr):
        """z_k = A[rb] @ W[k H + rj]^T for the NG gates (1, 3 or 4; the rest zeros), one pass over
        A (A's rows K apart, W's rows the outputs)."""
        z0 = tl.zeros((BB, BJ), dtype=tl.float32)
        z1, z2, z3 = z0, z0, z0
        l0, l1, l2, l3 = z0, z0, z0, z0
        m0, m1, m2, m3 = z0, z0, z0, z0
        for k0 in range(0, K, BK):
            rk = k0 + tl.arange(0, BK)
            mk = rk < K
            ah, al = _chunk(A, rb, mb, K, rk, mk, PREC)
            mw = mk[:, None] & mj[None, :]
            w = tl.load(W + rj[None, :] * K + rk[:, None], mask=mw, other=0.0)
            z0, l0, m0 = _dot(ah, al, w, z0, l0, m0, PREC)
            if NG > 1:
                w = tl.load(W + (H + rj)[None, :] * K + rk[:, None], mask=mw, other=0.0)
                z1, l1, m1 = _dot(ah, al, w, z1, l1, m1, PREC)
                w = tl.load(W + (2 * H + rj)[None, :] * K + rk[:, None], mask=mw, other=0.0)
                z2, l2, m2 = _dot(ah, al, w, z2, l2, m2, PREC)
            if NG == 4:
                w = tl.load(W + (3 * H + rj)[None, :] * K + rk[:, None], mask=mw, other=0.0)
                z3, l3, m3 = _dot(ah, al, w, z3, l3, m3, PREC)
        return (_dot_sum(z0, l0, m0, PREC), _dot_sum(z1, l1, m1, PREC), _dot_sum(z2, l2, m2, PREC),
                _dot_sum(z3, l3, m3, PREC))

    @triton.jit
    def _mm_n(A, rb, mb, K, W, N, wcol, mw, BB: tl.constexpr, BJ: tl.constexpr, BK: tl.constexpr,
              PREC: tl.constexpr):
        """(BB, BJ): A[rb, :K] @ W[:K, wcol] (A's rows K apart, W's rows N apart)."""
        acc = tl.zeros((BB, BJ), dtype=tl.float32)
        lo, lo2 = acc, acc
        for k0 in range(0, K, BK):
            rk = k0 + tl.arange(0, BK)
            mk = rk < K
            ah, al = _chunk(A, rb, mb, K, rk, mk, PREC)
            w = tl.load(W + rk[:, None] * N + wcol[None, :], mask=mk[:, None] & mw[None, :], other=0.0)
            acc, lo, lo2 = _dot(ah, al, w, acc, lo, lo2, PREC)
        return _dot_sum(acc, lo, lo2, PREC)

    @triton.jit
    def _table(t, S, F, B, rb, MODE: tl.constexpr):
        """Where step t's statistics are (``_nfwd``'s ``tab``): the offset of its row in the
        (T, S*F) tables of batch norm and population statistics, or, for layer norm, the
        index of each of the program's rows in the (T, B) tables."""
        tab = t * S * F
        if MODE == 3:
            tab = t * B + rb
        return tab

    @triton.jit
    def _layer_rows(m2, mf):
        """Layer norm over a (rows, features) tile: which rows are real, and the number of
        real features (every feature of a row is in the tile)."""
        return tl.sum(m2.to(tl.int32), axis=1) > 0, tl.sum(mf.to(tl.float32), axis=0)

    @triton.jit
    def _nparams(fs, mf, tab, G, BE, SC, SH, MODE: tl.constexpr, HAS_BETA: tl.constexpr, HAS_SHIFT: tl.constexpr):
        """A norm's parameters for the features ``fs`` (as ``_nfwd``), loaded where a step
        starts (``_first``): γ and β for batch and layer norm, the step's scale and shift
        for population statistics (zeros where there is none)."""
        a = tl.zeros(fs.shape, dtype=tl.float32)
        b = a
        if MODE == 1 or MODE == 3:
            a = tl.load(G + fs, mask=mf, other=0.0)
            if HAS_BETA:
                b = tl.load(BE + fs, mask=mf, other=0.0)
        elif MODE == 2:
            a = tl.load(SC + tab + fs, mask=mf, other=0.0)
            if HAS_SHIFT:
                b = tl.load(SH + tab + fs, mask=mf, other=0.0)
        return a, b

    @triton.jit
    def _nfwd(z, ga, gb, mf, m2, tab, fs, B0, MEAN, RSTD, VAR, eps,
              MODE: tl.constexpr, HAS_BETA: tl.constexpr, HAS_SHIFT: tl.constexpr, HAS_VAR: tl.constexpr):
        """N(z) for a (rows, features) tile of one seed's B0 rows, its parameters ga, gb
        loaded (``_nparams``): ``fs`` its features' indices in the seed-major (S*F) tables,
        ``tab`` where the step's statistics are (``_table``). Batch norm writes the step's
        mean, 1/std (and variance) there; layer norm each row's mean and 1/std over the
        tile's features, which must be all of the term's (every unit in this program)."""
        if MODE == 3:
            mr, nf = _layer_rows(m2, mf)
            mean = tl.sum(tl.where(m2, z, 0.0), axis=1) / nf
            d = tl.where(m2, z - mean[:, None], 0.0)
            rstd = 1.0 / tl.sqrt_rn(tl.sum(d * d, axis=1) / nf + eps)
            tl.store(MEAN + tab, mean, mask=mr)
            tl.store(RSTD + tab, rstd, mask=mr)
            y = d * rstd[:, None] * ga[None, :]
            if HAS_BETA:
                y += gb[None, :]
        elif MODE == 2:
            y = z * ga[None, :]
            if HAS_SHIFT:
                y += gb[None, :]
        elif MODE == 1:
            mean = tl.sum(tl.where(m2, z, 0.0), axis=0) / B0
            d = tl.where(m2, z - mean[None, :], 0.0)
            y = _bn_out(d, mean, tl.sum(d * d, axis=0) / B0, ga, gb, mf, tab + fs, MEAN, RSTD, VAR, eps, HAS_BETA,
                        HAS_VAR)
        else:
            y = z
        return y

    @triton.jit
    def _bn_out(d, mean, var, ga, gb, mf, row, MEAN, RSTD, VAR, eps, HAS_BETA: tl.constexpr, HAS_VAR: tl.constexpr):
        """Batch norm of a block from d = z - mean and the rows' mean and variance: writes
        the step's mean, 1/std (and variance) at ``row`` of the tables."""
        rstd = 1.0 / tl.sqrt_rn(var + eps)  # IEEE square root, as the other paths
        tl.store(MEAN + row, mean, mask=mf)
        tl.store(RSTD + row, rstd, mask=mf)
        if HAS_VAR:
            tl.store(VAR + row, var, mask=mf)
        y = d * (rstd * ga)[None, :]
        if HAS_BETA:
            y += gb[None, :]
        return y

    @triton.jit
    def _add2(a0, a1, b0, b1):
        return a0 + b0, a1 + b1

    @triton.jit
    def _add4(a0, a1, a2, a3, b0, b1, b2, b3):
        return a0 + b0, a1 + b1, a2 + b2, a3 + b3

    @triton.jit
    def _add8(a0, a1, a2, a3, a4, a5, a6, a7, b0, b1, b2, b3, b4, b5, b6, b7):
        return a0 + b0, a1 + b1, a2 + b2, a3 + b3, a4 + b4, a5 + b5, a6 + b6, a7 + b7

    @triton.jit
    def _bn_gates(p0, p1, p2, p3, ga0, gb0, ga1, gb1, ga2, gb2, ga3, gb3, ZS, o0, z0, z1, z2, z3, fs, H, mf, m2,
                  tab, B0, MEAN, RSTD, VAR, eps, NG: tl.constexpr, HAS_BETA: tl.constexpr, HAS_VAR: tl.constexpr):
        """``_term`` of the NG gates (3 or 4; the fourth's result is z3 for the GRU) with batch
        norm, each gate's sums over the rows in one reduction for all gates (a program
        holds the whole batch over its warps: each reduction is an exchange between them
        through shared memory, with its barriers; one for the means, one for the
        variances, not one of each a gate). The sums are those ``_nfwd`` takes, gate by gate."""
        s0, s1, s2, s3 = tl.reduce((tl.where(m2, z0, 0.0), tl.where(m2, z1, 0.0), tl.where(m2, z2, 0.0),
                                    tl.where(m2, z3, 0.0)), 0, _add4)
        d0 = tl.where(m2, z0 - (s0 / B0)[None, :], 0.0)
        d1 = tl.where(m2, z1 - (s1 / B0)[None, :], 0.0)
        d2 = tl.where(m2, z2 - (s2 / B0)[None, :], 0.0)
        d3 = tl.where(m2, z3 - (s3 / B0)[None, :], 0.0)
        v0, v1, v2, v3 = tl.reduce((d0 * d0, d1 * d1, d2 * d2, d3 * d3), 0, _add4)
        tl.store(ZS + o0, z0, mask=m2)
        tl.store(ZS + o0 + H, z1, mask=m2)
        tl.store(ZS + o0 + 2 * H, z2, mask=m2)
        a0 = p0 + _bn_out(d0, s0 / B0, v0 / B0, ga0, gb0, mf, tab + fs, MEAN, RSTD, VAR, eps, HAS_BETA, HAS_VAR)
        a1 = p1 + _bn_out(d1, s1 / B0, v1 / B0, ga1, gb1, mf, tab + fs + H, MEAN, RSTD, VAR, eps, HAS_BETA, HAS_VAR)
        a2 = p2 + _bn_out(d2, s2 / B0, v2 / B0, ga2, gb2, mf, tab + fs + 2 * H, MEAN, RSTD, VAR, eps, HAS_BETA,
                          HAS_VAR)
        a3 = z3
        if NG == 4:
            tl.store(ZS + o0 + 3 * H, z3, mask=m2)
            a3 = p3 + _bn_out(d3, s3 / B0, v3 / B0, ga3, gb3, mf, tab + fs + 3 * H, MEAN, RSTD, VAR, eps, HAS_BETA,
                              HAS_VAR)
        return a0, a1, a2, a3

    @triton.jit
    def _bn_bwd_in(dy, X, xoff, fs, mf, m2, row, MEAN, RSTD, G, DG, DB):
        """What batch norm's backward pass of a block reads (every load first, ahead of the
        sums' barriers: ``_first``): dy masked to the real rows, x̂, γ, 1/std, dγ, dβ."""
        mean = tl.load(MEAN + row, mask=mf, other=0.0)
        rstd = tl.load(RSTD + row, mask=mf, other=0.0)
        x = tl.load(X + xoff, mask=m2, other=0.0)
        g = tl.load(G + fs, mask=mf, other=0.0)
        dg = tl.load(DG + fs, mask=mf, other=0.0)
        db = tl.load(DB + fs, mask=mf, other=0.0)
        return tl.where(m2, dy, 0.0), tl.where(m2, (x - mean[None, :]) * rstd[None, :], 0.0), g, rstd, dg, db

    @triton.jit
    def _bn_bwd_out(dy, xh, g, rstd, dg, db, sdy, sdyx, fs, mf, B0, DG, DB):
        """∂L/∂x of a batch-normed block from ``_bn_bwd_in``'s values and the sums over the
        rows of dy and dy x̂; adds them to dβ and dγ."""
        tl.store(DG + fs, dg + sdyx, mask=mf)
        tl.store(DB + fs, db + sdy, mask=mf)
        return (g * rstd)[None, :] * (dy - (sdy / B0)[None, :] - xh * (sdyx / B0)[None, :])

    @triton.jit
    def _nbwd(dy, X, xoff, fs, mf, m2, tab, B0, G, SC, MEAN, RSTD, DG, DB, MODE: tl.constexpr):
        """∂L/∂x from dy = ∂L/∂N(x) for the features ``fs`` (as ``_nfwd``); batch norm reads
        x at X + xoff and adds the step's share of dγ and dβ to DG and DB."""
        if MODE == 3:  # γ's and β's gradients: summed over all steps after the loop (scan.py)
            mr, nf = _layer_rows(m2, mf)
            mean = tl.load(MEAN + tab, mask=mr, other=0.0)
            rstd = tl.load(RSTD + tab, mask=mr, other=0.0)
            xh = tl.where(m2, (tl.load(X + xoff, mask=m2, other=0.0) - mean[:, None]) * rstd[:, None], 0.0)
            gd = tl.where(m2, dy * tl.load(G + fs, mask=mf, other=0.0)[None, :], 0.0)
            sg, sgx = tl.reduce((gd, gd * xh), 1, _add2)  # one reduction for both sums
            dx = rstd[:, None] * (gd - (sg / nf)[:, None] - xh * (sgx / nf)[:, None])
        elif MODE == 2:
            dx = dy * tl.load(SC + tab + fs, mask=mf, other=0.0)[None, :]
        elif MODE == 1:
            dy, xh, g, rstd, dg, db = _bn_bwd_in(dy, X, xoff, fs, mf, m2, tab + fs, MEAN, RSTD, G, DG, DB)
            sdy, sdyx = tl.reduce((dy, dy * xh), 0, _add2)  # one exchange between the warps for both sums
            dx = _bn_bwd_out(dy, xh, g, rstd, dg, db, sdy, sdyx, fs, mf, B0, DG, DB)
        else:
            dx = dy
        return dx

    @triton.jit
    def _term(p, ga, gb, ZS, o, z, fs, mf, m2, tab, B0, MEAN, RSTD, VAR, eps,
              MODE: tl.constexpr, HAS_BETA: tl.constexpr, HAS_SHIFT: tl.constexpr, HAS_VAR: tl.constexpr):
        """One block's pre-activation p (loaded from P[o]) + N(z) for the features fs (the
        norm's parameters ga, gb loaded); with a norm, z goes to ZS[o] for the backward pass."""
        if MODE != 0:
            tl.store(ZS + o, z, mask=m2)
        return p + _nfwd(z, ga, gb, mf, m2, tab, fs, B0, MEAN, RSTD, VAR, eps, MODE, HAS_BETA, HAS_SHIFT, HAS_VAR)

    @triton.jit
    def _first(X, o0, H, m2, NG: tl.constexpr):
        """X's blocks of the NG gates (gate k at X + o0 + k H; the rest zeros), loaded where a
        step starts. Every load of a step that waits on nothing the step computes (the
        pre-activations, c_{t-1}, the norms' parameters, the forward pass's saved values) is
        written before the step's matrix product: written after it, each load was issued
        only after the barriers of the program's warps that come before it (the product's
        chunks, the layout changes of its results, the norms' sums), so the step waited one
        memory round trip per load, in turn (from L2: a grid barrier's acquire empties L1).
        On an H100 (benchmarks/RESULTS.md, 2026-11-26; ms per training step at the
        seq-MNIST shape, loads after -> before the product): lstm-loop 13.31 -> 10.03,
        gru-loop 10.72 -> 8.68, rnn-loop 5.79 -> 5.02, bn-rnn 10.22 -> 9.03, bn-gru 22.74 ->
        19.62, bn-lstm 28.30 -> 23.46. The step kernels do so with EARLY (their default,
        and grid-synchronized launches'); whole-sequence launches pass EARLY=False and
        load after the product, as before: a program there holds every unit of its rows,
        and its forward kernels spilled more with the loads first (untimed)."""
        x0 = tl.load(X + o0, mask=m2, other=0.0)
        x1 = tl.zeros_like(x0)
        x2 = x1
        x3 = x1
        if NG > 1:
            x1 = tl.load(X + o0 + H, mask=m2, other=0.0)
            x2 = tl.load(X + o0 + 2 * H, mask=m2, other=0.0)
        if NG == 4:
            x3 = tl.load(X + o0 + 3 * H, mask=m2, other=0.0)
        return x0, x1, x2, x3

    @triton.jit
    def _gate_inputs(P, o0, fs, tab, H, m2, mj, G, BE, SC, SH, NG: tl.constexpr, MODE: tl.constexpr,
                     HAS_BETA: tl.constexpr, HAS_SHIFT: tl.constexpr):
        """P's blocks of the NG (3 or 4) gates and the norm's parameters of each gate
        (``_nparams``; the fourth gate's the first's for the GRU), but for layer norm over
        the gates (``_layer_gates`` loads its own). One term: ``_term_inputs``."""
        p0, p1, p2, p3 = _first(P, o0, H, m2, NG)
        if MODE != 3:
            ga0, gb0 = _nparams(fs, mj, tab, G, BE, SC, SH, MODE, HAS_BETA, HAS_SHIFT)
            ga1, gb1 = _nparams(fs + H, mj, tab, G, BE, SC, SH, MODE, HAS_BETA, HAS_SHIFT)
            ga2, gb2 = _nparams(fs + 2 * H, mj, tab, G, BE, SC, SH, MODE, HAS_BETA, HAS_SHIFT)
            ga3, gb3 = ga0, gb0
            if NG == 4:
                ga3, gb3 = _nparams(fs + 3 * H, mj, tab, G, BE, SC, SH, MODE, HAS_BETA, HAS_SHIFT)
        else:  # never read
            ga0, gb0, ga1, gb1, ga2, gb2, ga3, gb3 = p0, p0, p0, p0, p0, p0, p0, p0
        return p0, p1, p2, p3, ga0, gb0, ga1, gb1, ga2, gb2, ga3, gb3

    @triton.jit
    def _term_inputs(X, t, B, H, S, rb, rj, mj, m2, s, G, BE, SC, SH, MODE: tl.constexpr,
                     HAS_BETA: tl.constexpr, HAS_SHIFT: tl.constexpr):
        """What a step reads for one term of H features besides the product: the program's
        block at the pointers X (the RNN's u_t, the LSTM cell's c_{t-1}), where the term's
        norm statistics go (``_table``), and the norm's parameters (``_nparams``)."""
        x = tl.load(X, mask=m2, other=0.0)
        tab = _table(t, S, H, B, rb, MODE)
        a, b = _nparams(s * H + rj, mj, tab, G, BE, SC, SH, MODE, HAS_BETA, HAS_SHIFT)
        return x, tab, a, b

    @triton.jit
    def _gate_terms(P, ZS, HP, hoff, W, t, B, H, S, B0, rb, rj, mb, mj, m2, s,
                    G, BE, SC, SH, MEAN, RSTD, VAR, eps, NG: tl.constexpr,
                    MODE: tl.constexpr, HAS_BETA: tl.constexpr, HAS_SHIFT: tl.constexpr, HAS_VAR: tl.constexpr,
                    BB: tl.constexpr, BJ: tl.constexpr, BK: tl.constexpr, PREC: tl.constexpr, EARLY: tl.constexpr):
        """The NG gates' pre-activations P[t] + N(h_{t-1} W_k^T) for the program's units
        (the fourth is zeros for the GRU), and the offset of gate 0's block in P. P's
        blocks and the norm's parameters are loaded before the product with EARLY
        (``_first``), else after it."""
        F = NG * H
        o0 = t * B * F + rb[:, None] * F + rj[None, :]
        fs, tab = s * F + rj, t * S * F
        if EARLY:
            p0, p1, p2, p3, ga0, gb0, ga1, gb1, ga2, gb2, ga3, gb3 = _gate_inputs(
                P, o0, fs, tab, H, m2, mj, G, BE, SC, SH, NG, MODE, HAS_BETA, HAS_SHIFT)
        z0, z1, z2, z3 = _mm_gates(HP + hoff, rb, mb, H, W + s * F * H, H, rj, mj, NG, BB, BJ, BK, PREC)
        if not EARLY and MODE == 3:  # each gate's P block loaded where it is added (``_layer_out``)
            p0, p1, p2, p3 = P, P, P, P
        elif not EARLY:
            p0, p1, p2, p3, ga0, gb0, ga1, gb1, ga2, gb2, ga3, gb3 = _gate_inputs(
                P, o0, fs, tab, H, m2, mj, G, BE, SC, SH, NG, MODE, HAS_BETA, HAS_SHIFT)
        if MODE == 3:  # one layer norm over every gate of a row (no early return: Triton compiles what follows)
            a0, a1, a2, a3 = _layer_gates(p0, p1, p2, p3, ZS, o0, z0, z1, z2, z3, fs, H, mj, m2, t * B + rb, G, BE,
                                          MEAN, RSTD, eps, NG, HAS_BETA, EARLY)
        elif MODE == 1:
            a0, a1, a2, a3 = _bn_gates(p0, p1, p2, p3, ga0, gb0, ga1, gb1, ga2, gb2, ga3, gb3, ZS, o0, z0, z1, z2, z3,
                                       fs, H, mj, m2, tab, B0, MEAN, RSTD, VAR, eps, NG, HAS_BETA, HAS_VAR)
        else:
            a0 = _term(p0, ga0, gb0, ZS, o0, z0, fs, mj, m2, tab, B0, MEAN, RSTD, VAR, eps,
                       MODE, HAS_BETA, HAS_SHIFT, HAS_VAR)
            a1 = _term(p1, ga1, gb1, ZS, o0 + H, z1, fs + H, mj, m2, tab, B0, MEAN, RSTD, VAR, eps,
                       MODE, HAS_BETA, HAS_SHIFT, HAS_VAR)
            a2 = _term(p2, ga2, gb2, ZS, o0 + 2 * H, z2, fs + 2 * H, mj, m2, tab, B0, MEAN, RSTD, VAR, eps,
                       MODE, HAS_BETA, HAS_SHIFT, HAS_VAR)
            a3 = z3
            if NG == 4:
                a3 = _term(p3, ga3, gb3, ZS, o0 + 3 * H, z3, fs + 3 * H, mj, m2, tab, B0, MEAN, RSTD, VAR, eps,
                           MODE, HAS_BETA, HAS_SHIFT, HAS_VAR)
        return a0, a1, a2, a3, o0

    @triton.jit
    def _layer_out(p, ZS, o, z, d, rstd, fs, mf, m2, G, BE, HAS_BETA: tl.constexpr, LOADED: tl.constexpr):
        """P[o] + γ (z - mean) / std (+ β) of one gate's block, d = z - mean, P[o] given as p
        (LOADED) or loaded here from p = P; z goes to ZS[o]."""
        tl.store(ZS + o, z, mask=m2)
        y = d * rstd[:, None] * tl.load(G + fs, mask=mf, other=0.0)[None, :]
        if HAS_BETA:
            y += tl.load(BE + fs, mask=mf, other=0.0)[None, :]
        if LOADED:
            y += p
        else:
            y += tl.load(p + o, mask=m2, other=0.0)
        return y

    @triton.jit
    def _layer_gates(p0, p1, p2, p3, ZS, o0, z0, z1, z2, z3, fs, H, mf, m2, rows, G, BE, MEAN, RSTD, eps,
                     NG: tl.constexpr, HAS_BETA: tl.constexpr, LOADED: tl.constexpr):
        """Layer norm of h W^T over the NG (3 or 4) gates of a row at once, as the cell
        defines it (every unit is in this program): each gate's P[o] + N(z), P[o] given as
        p_k (LOADED) or loaded where it is added from p_k = P (``_layer_out``); each row's
        mean and 1/std go to the (T, B) tables at ``rows``."""
        mr, nf = _layer_rows(m2, mf)
        nf = nf * NG
        # each gate's sum over the row's units, the gates' in one reduction (``_bn_gates``)
        t0, t1, t2, t3 = tl.reduce((tl.where(m2, z0, 0.0), tl.where(m2, z1, 0.0), tl.where(m2, z2, 0.0),
                                    tl.where(m2, z3, 0.0)), 1, _add4)
        tot = t0 + t1 + t2
        if NG == 4:
            tot += t3
        mean = tot / nf
        d0 = tl.where(m2, z0 - mean[:, None], 0.0)
        d1 = tl.where(m2, z1 - mean[:, None], 0.0)
        d2 = tl.where(m2, z2 - mean[:, None], 0.0)
        d3 = tl.where(m2, z3 - mean[:, None], 0.0)
        v0, v1, v2, v3 = tl.reduce((d0 * d0, d1 * d1, d2 * d2, d3 * d3), 1, _add4)
        ss = v0 + v1 + v2
        if NG == 4:
            ss += v3
        rstd = 1.0 / tl.sqrt_rn(ss / nf + eps)
        tl.store(MEAN + rows, mean, mask=mr)
        tl.store(RSTD + rows, rstd, mask=mr)
        a0 = _layer_out(p0, ZS, o0, z0, d0, rstd, fs, mf, m2, G, BE, HAS_BETA, LOADED)
        a1 = _layer_out(p1, ZS, o0 + H, z1, d1, rstd, fs + H, mf, m2, G, BE, HAS_BETA, LOADED)
        a2 = _layer_out(p2, ZS, o0 + 2 * H, z2, d2, rstd, fs + 2 * H, mf, m2, G, BE, HAS_BETA, LOADED)
        a3 = z3
        if NG == 4:
            a3 = _layer_out(p3, ZS, o0 + 3 * H, z3, d3, rstd, fs + 3 * H, mf, m2, G, BE, HAS_BETA, LOADED)
        return a0, a1, a2, a3

    @triton.jit
    def _layer_in(ZS, o, d, mean, rstd, fs, mf, m2, G):
        """One gate's block for ``_layer_dz``: (x̂, γ ∂L/∂N(z))."""
        xh = tl.where(m2, (tl.load(ZS + o, mask=m2, other=0.0) - mean[:, None]) * rstd[:, None], 0.0)
        return xh, tl.where(m2, d * tl.load(G + fs, mask=mf, other=0.0)[None, :], 0.0)

    @triton.jit
    def _layer_dz(DZ, ZS, o0, H, d0, d1, d2, d3, fs, mf, m2, rows, G, MEAN, RSTD, NG: tl.constexpr):
        """The backward pass of ``_layer_gates``: DZ[o] = ∂L/∂z of every gate from
        d_k = ∂L/∂N(z) of gate k (γ's and β's gradients are summed after the loop, scan.py)."""
        mr, nf = _layer_rows(m2, mf)
        nf = nf * NG
        mean = tl.load(MEAN + rows, mask=mr, other=0.0)
        rstd = tl.load(RSTD + rows, mask=mr, other=0.0)
        x0, g0 = _layer_in(ZS, o0, d0, mean, rstd, fs, mf, m2, G)
        x1, g1 = _layer_in(ZS, o0 + H, d1, mean, rstd, fs + H, mf, m2, G)
        x2, g2 = _layer_in(ZS, o0 + 2 * H, d2, mean, rstd, fs + 2 * H, mf, m2, G)
        x3, g3 = tl.zeros_like(x0), tl.zeros_like(x0)
        if NG == 4:
            x3, g3 = _layer_in(ZS, o0 + 3 * H, d3, mean, rstd, fs + 3 * H, mf, m2, G)
        a0, b0, a1, b1, a2, b2, a3, b3 = tl.reduce((g0, g0 * x0, g1, g1 * x1, g2, g2 * x2, g3, g3 * x3), 1,
                                                   _add8)  # the gates' sums in one reduction (``_bn_gates``)
        s1 = a0 + a1 + a2
        s2 = b0 + b1 + b2
        if NG == 4:
            s1 += a3
            s2 += b3
        m1, mx = (s1 / nf)[:, None], (s2 / nf)[:, None]
        r = rstd[:, None]
        tl.store(DZ + o0, r * (g0 - m1 - x0 * mx), mask=m2)
        tl.store(DZ + o0 + H, r * (g1 - m1 - x1 * mx), mask=m2)
        tl.store(DZ + o0 + 2 * H, r * (g2 - m1 - x2 * mx), mask=m2)
        if NG == 4:
            tl.store(DZ + o0 + 3 * H, r * (g3 - m1 - x3 * mx), mask=m2)

    @triton.jit
    def _store_dz(DZ, ZS, o, d, fs, mf, m2, tab, B0, G, SC, MEAN, RSTD, DG, DB, MODE: tl.constexpr):
        """With a norm, DZ[o] = ∂L/∂z from d = ∂L/∂N(z) for the features fs (without one,
        ∂L/∂z is d, already in DA, which the callers pass as DZ)."""
        if MODE != 0:
            tl.store(DZ + o, _nbwd(d, ZS, o, fs, mf, m2, tab, B0, G, SC, MEAN, RSTD, DG, DB, MODE), mask=m2)

    @triton.jit
    def _gate_dz(DZ, ZS, o0, d0, d1, d2, d3, t, B, H, S, B0, rb, rj, mj, m2, s, G, SC, MEAN, RSTD, DG, DB,
                 NG: tl.constexpr, MODE: tl.constexpr):
        """The backward pass of ``_gate_terms``' norms: DZ = ∂L/∂z of the NG gates (3 or 4;
        d3 is not read for the GRU) from d_k = ∂L/∂N(z_k), gate 0's block at o0."""
        F = NG * H
        fs = s * F + rj
        if MODE == 3:
            _layer_dz(DZ, ZS, o0, H, d0, d1, d2, d3, fs, mj, m2, t * B + rb, G, MEAN, RSTD, NG)
        elif MODE == 1:  # the gates' sums over the rows in one reduction (``_bn_gates``)
            row = t * S * F + fs
            y0, x0, g0, r0, dg0, db0 = _bn_bwd_in(d0, ZS, o0, fs, mj, m2, row, MEAN, RSTD, G, DG, DB)
            y1, x1, g1, r1, dg1, db1 = _bn_bwd_in(d1, ZS, o0 + H, fs + H, mj, m2, row + H, MEAN, RSTD, G, DG, DB)
            y2, x2, g2, r2, dg2, db2 = _bn_bwd_in(d2, ZS, o0 + 2 * H, fs + 2 * H, mj, m2, row + 2 * H, MEAN, RSTD, G,
                                                  DG, DB)
            y3, x3, g3, r3, dg3, db3 = y2, x2, g2, r2, dg2, db2
            if NG == 4:
                y3, x3, g3, r3, dg3, db3 = _bn_bwd_in(d3, ZS, o0 + 3 * H, fs + 3 * H, mj, m2, row + 3 * H, MEAN, RSTD,
                                                      G, DG, DB)
            s0, t0, s1, t1, s2, t2, s3, t3 = tl.reduce((y0, y0 * x0, y1, y1 * x1, y2, y2 * x2, y3, y3 * x3), 0, _add8)
            tl.store(DZ + o0, _bn_bwd_out(y0, x0, g0, r0, dg0, db0, s0, t0, fs, mj, B0, DG, DB), mask=m2)
            tl.store(DZ + o0 + H, _bn_bwd_out(y1, x1, g1, r1, dg1, db1, s1, t1, fs + H, mj, B0, DG, DB), mask=m2)
            tl.store(DZ + o0 + 2 * H, _bn_bwd_out(y2, x2, g2, r2, dg2, db2, s2, t2, fs + 2 * H, mj, B0, DG, DB),
                     mask=m2)
            if NG == 4:
                tl.store(DZ + o0 + 3 * H, _bn_bwd_out(y3, x3, g3, r3, dg3, db3, s3, t3, fs + 3 * H, mj, B0, DG, DB),
                         mask=m2)
        else:
            tab = t * S * F
            _store_dz(DZ, ZS, o0, d0, fs, mj, m2, tab, B0, G, SC, MEAN, RSTD, DG, DB, MODE)
            _store_dz(DZ, ZS, o0 + H, d1, fs + H, mj, m2, tab, B0, G, SC, MEAN, RSTD, DG, DB, MODE)
            _store_dz(DZ, ZS, o0 + 2 * H, d2, fs + 2 * H, mj, m2, tab, B0, G, SC, MEAN, RSTD, DG, DB, MODE)
            if NG == 4:
                _store_dz(DZ, ZS, o0 + 3 * H, d3, fs + 3 * H, mj, m2, tab, B0, G, SC, MEAN, RSTD, DG, DB, MODE)

    @triton.jit
    def _tile(B0, H, BB: tl.constexpr, BJ: tl.constexpr):
        """The program's rows (of all S*B0; seed s = program_id(2) owns rows s*B0 to
        (s+1)*B0), hidden units, their masks and the seed."""
        s = tl.program_id(2)
        rl = tl.program_id(1) * BB + tl.arange(0, BB)
        rj = tl.program_id(0) * BJ + tl.arange(0, BJ)
        mb = rl < B0
        mj = rj < H
        return s * B0 + rl, rj, mb, mj, mb[:, None] & mj[None, :], s

    # -- RNN: h_t = act(u_t + N(h_{t-1} W^T)) -------------------------------------------

    @triton.jit(do_not_specialize=["t", "hoff"])
    def _rnn_fwd(HS, ZS, HP, hoff, W, t, B, H, S, B0,
                 G, BE, SC, SH, MEAN, RSTD, VAR, DG, DB, eps,
                 MODE: tl.constexpr, HAS_BETA: tl.constexpr, HAS_SHIFT: tl.constexpr, HAS_VAR: tl.constexpr,
                 RELU: tl.constexpr, BB: tl.constexpr, BJ: tl.constexpr, BK: tl.constexpr, PREC: tl.constexpr,
                 EARLY: tl.constexpr = True):
        rb, rj, mb, mj, m2, s = _tile(B0, H, BB, BJ)
        off = t * B * H + rb[:, None] * H + rj[None, :]
        if EARLY:  # u_t and the norm's parameters before the product (``_first``)
            p, tab, ga, gb = _term_inputs(HS + off, t, B, H, S, rb, rj, mj, m2, s, G, BE, SC, SH, MODE, HAS_BETA,
                                          HAS_SHIFT)
        z, _, _, _ = _mm_gates(HP + hoff, rb, mb, H, W + s * H * H, H, rj, mj, 1, BB, BJ, BK, PREC)
        if not EARLY:
            p, tab, ga, gb = _term_inputs(HS + off, t, B, H, S, rb, rj, mj, m2, s, G, BE, SC, SH, MODE, HAS_BETA,
                                          HAS_SHIFT)
        a = _term(p, ga, gb, ZS, off, z, s * H + rj, mj, m2, tab, B0, MEAN, RSTD, VAR, eps, MODE, HAS_BETA, HAS_SHIFT,
                  HAS_VAR)
        if RELU:
            h = tl.where((a > 0) | (a != a), a, 0.0)
        else:
            h = _tanh(a)
        tl.store(HS + off, h, mask=m2)

    @triton.jit(do_not_specialize=["t"])
    def _rnn_bwd(GH, HS, DA, DZ, ZS, W, t, B, H, S, B0,
                 G, BE, SC, SH, MEAN, RSTD, VAR, DG, DB, eps, MODE: tl.constexpr, RELU: tl.constexpr,
                 HAS_NEXT: tl.constexpr, BB: tl.constexpr, BJ: tl.constexpr, BK: tl.constexpr, PREC: tl.constexpr,
                 EARLY: tl.constexpr = True):
        rb, rj, mb, mj, m2, s = _tile(B0, H, BB, BJ)
        off = t * B * H + rb[:, None] * H + rj[None, :]
        g = tl.load(GH + off, mask=m2, other=0.0)
        if EARLY:  # before the product (``_first``)
            h = tl.load(HS + off, mask=m2, other=0.0)
        if HAS_NEXT:  # ∂L/∂z_{t+1} W: every unit's ∂L/∂z_{t+1} is in DZ since the last launch
            g += _mm_n(DZ + (t + 1) * B * H, rb, mb, H, W + s * H * H, H, rj, mj, BB, BJ, BK, PREC)
        tl.store(GH + off, g, mask=m2)
        if not EARLY:
            h = tl.load(HS + off, mask=m2, other=0.0)
        if RELU:
            d = tl.where(h > 0, g, 0.0)
        else:
            d = g * (1 - h * h)
        tl.store(DA + off, d, mask=m2)
        _store_dz(DZ, ZS, off, d, s * H + rj, mj, m2, _table(t, S, H, B, rb, MODE), B0, G, SC, MEAN, RSTD, DG, DB,
                  MODE)

    # -- LSTM: [i f g o] = u_t + N(h_{t-1} W^T), c_t = σ(f) c_{t-1} + σ(i) tanh(g),
    #    h_t = σ(o) tanh(N_c(c_t)) ----------------------------------------------------------

    @triton.jit(do_not_specialize=["t", "hoff", "coff"])
    def _lstm_fwd(SIG, TG, CS, TC, HS, ZS, HP, hoff, CP, coff, W, t, B, H, S, B0,
                  G, BE, SC, SH, MEAN, RSTD, VAR, DG, DB, eps,
                  CG, CBE, CSC, CSH, CMEAN, CRSTD, CVAR, CDG, CDB, ceps,
                  MODE: tl.constexpr, HAS_BETA: tl.constexpr, HAS_SHIFT: tl.constexpr, HAS_VAR: tl.constexpr,
                  CMODE: tl.constexpr, C_BETA: tl.constexpr, C_SHIFT: tl.constexpr, C_VAR: tl.constexpr,
                  BB: tl.constexpr, BJ: tl.constexpr, BK: tl.constexpr, PREC: tl.constexpr,
                  EARLY: tl.constexpr = True):
        rb, rj, mb, mj, m2, s = _tile(B0, H, BB, BJ)
        if EARLY:  # c_{t-1} and the cell norm's parameters before the product (``_first``)
            cp, ctab, ca, cb = _term_inputs(CP + coff + rb[:, None] * H + rj[None, :], t, B, H, S, rb, rj, mj, m2, s,
                                            CG, CBE, CSC, CSH, CMODE, C_BETA, C_SHIFT)
        a0, a1, a2, a3, o0 = _gate_terms(SIG, ZS, HP, hoff, W, t, B, H, S, B0, rb, rj, mb, mj, m2, s,
                                         G, BE, SC, SH, MEAN, RSTD, VAR, eps, 4, MODE, HAS_BETA, HAS_SHIFT, HAS_VAR,
                                         BB, BJ, BK, PREC, EARLY)
        if not EARLY:
            cp, ctab, ca, cb = _term_inputs(CP + coff + rb[:, None] * H + rj[None, :], t, B, H, S, rb, rj, mj, m2, s,
                                            CG, CBE, CSC, CSH, CMODE, C_BETA, C_SHIFT)
        i = _sigmoid(a0)
        f = _sigmoid(a1)
        g = _tanh(a2)
        o = _sigmoid(a3)
        tl.store(SIG + o0, i, mask=m2)
        tl.store(SIG + o0 + H, f, mask=m2)
        tl.store(SIG + o0 + 2 * H, a2, mask=m2)  # the g block keeps its pre-activation, as the CPU loops'
        tl.store(SIG + o0 + 3 * H, o, mask=m2)
        oh = t * B * H + rb[:, None] * H + rj[None, :]
        tl.store(TG + oh, g, mask=m2)
        c = f * cp + i * g
        tl.store(CS + oh, c, mask=m2)
        tc = _tanh(_nfwd(c, ca, cb, mj, m2, ctab, s * H + rj, B0, CMEAN, CRSTD, CVAR, ceps, CMODE, C_BETA, C_SHIFT,
                         C_VAR))
        tl.store(TC + oh, tc, mask=m2)
        tl.store(HS + oh, o * tc, mask=m2)

    @triton.jit
    def _lstm_saved(SIG, TC, TG, CP, coff, DC, DCL, g, o0, oh, ob, B, H, F, m2, HAS_NEXT: tl.constexpr,
                    HAS_LAST: tl.constexpr):
        """What an LSTM backward step reads besides ∂L/∂z_{t+1}: σ(i), σ(f), σ(o), tanh(N_c(c_t)),
        tanh(g), c_{t-1}, and ∂L/∂c_{t+1} σ(f_{t+1}) plus the incoming ∂L/∂c_T where they apply."""
        i = tl.load(SIG + o0, mask=m2, other=0.0)
        f = tl.load(SIG + o0 + H, mask=m2, other=0.0)
        o = tl.load(SIG + o0 + 3 * H, mask=m2, other=0.0)
        y = tl.load(TC + oh, mask=m2, other=0.0)
        gg = tl.load(TG + oh, mask=m2, other=0.0)
        cp = tl.load(CP + coff + ob, mask=m2, other=0.0)
        dcn = tl.zeros_like(g)
        if HAS_NEXT:
            dcn = tl.load(DC + ob, mask=m2, other=0.0) * tl.load(SIG + o0 + B * F + H, mask=m2, other=0.0)
        if HAS_LAST:
            dcn += tl.load(DCL + ob, mask=m2, other=0.0)
        return i, f, o, y, gg, cp, dcn

    @triton.jit
    def _lstm_gate_grads(DA, DC, o0, ob, H, dc, g, i, f, o, y, gg, cp, m2):
        """∂L/∂(gate pre-activations) of an LSTM step, from ∂L/∂c_t (dc, stored to DC for
        step t-1's carry) and ∂L/∂h_t (g): stored to DA's blocks at o0 and returned."""
        tl.store(DC + ob, dc, mask=m2)
        d0 = dc * (1 - i) * i * gg
        d1 = dc * (1 - f) * f * cp
        d2 = dc * (1 - gg * gg) * i
        d3 = g * (1 - o) * o * y
        tl.store(DA + o0, d0, mask=m2)
        tl.store(DA + o0 + H, d1, mask=m2)
        tl.store(DA + o0 + 2 * H, d2, mask=m2)
        tl.store(DA + o0 + 3 * H, d3, mask=m2)
        return d0, d1, d2, d3

    @triton.jit(do_not_specialize=["t", "coff"])
    def _lstm_bwd(GH, SIG, TG, CS, TC, CP, coff, DA, DZ, DN, ZS, W, DC, DCL, t, B, H, S, B0,
                  G, BE, SC, SH, MEAN, RSTD, VAR, DG, DB, eps,
                  CG, CBE, CSC, CSH, CMEAN, CRSTD, CVAR, CDG, CDB, ceps,
                  MODE: tl.constexpr, CMODE: tl.constexpr, HAS_NEXT: tl.constexpr, HAS_LAST: tl.constexpr,
                  BB: tl.constexpr, BJ: tl.constexpr, BK: tl.constexpr, PREC: tl.constexpr,
                  EARLY: tl.constexpr = True):
        rb, rj, mb, mj, m2, s = _tile(B0, H, BB, BJ)
        F = 4 * H
        oh = t * B * H + rb[:, None] * H + rj[None, :]
        o0 = t * B * F + rb[:, None] * F + rj[None, :]
        ob = rb[:, None] * H + rj[None, :]
        g = tl.load(GH + oh, mask=m2, other=0.0)
        if EARLY:  # what the step reads besides ∂L/∂z_{t+1}, before the product (``_first``)
            i, f, o, y, gg, cp, dcn = _lstm_saved(SIG, TC, TG, CP, coff, DC, DCL, g, o0, oh, ob, B, H, F, m2,
                                                  HAS_NEXT, HAS_LAST)
        if HAS_NEXT:
            g += _mm_n(DZ + (t + 1) * B * F, rb, mb, F, W + s * F * H, H, rj, mj, BB, BJ, BK, PREC)
        tl.store(GH + oh, g, mask=m2)
        if not EARLY:
            i, f, o, y, gg, cp, dcn = _lstm_saved(SIG, TC, TG, CP, coff, DC, DCL, g, o0, oh, ob, B, H, F, m2,
                                                  HAS_NEXT, HAS_LAST)
        dn = g * (1 - y * y) * o  # ∂L/∂N_c(c_t)
        if CMODE != 0:
            tl.store(DN + oh, dn, mask=m2)
        dc = _nbwd(dn, CS, oh, s * H + rj, mj, m2, _table(t, S, H, B, rb, CMODE), B0, CG, CSC, CMEAN, CRSTD, CDG, CDB,
                   CMODE) + dcn
        d0, d1, d2, d3 = _lstm_gate_grads(DA, DC, o0, ob, H, dc, g, i, f, o, y, gg, cp, m2)
        _gate_dz(DZ, ZS, o0, d0, d1, d2, d3, t, B, H, S, B0, rb, rj, mj, m2, s, G, SC, MEAN, RSTD, DG, DB, 4, MODE)

    # -- GRU: r, z = σ(u_{r,z} + a_{r,z}), n = tanh(u_n + r a_n), h_t = (1 - z) n + z h_{t-1},
    #    a = N(h_{t-1} W^T) + (0, 0, b_hn) ------------------------------------------------------

    @triton.jit(do_not_specialize=["t", "hoff"])
    def _gru_fwd(GATES, HW, HS, ZS, HP, hoff, W, t, B, H, S, B0,
                 G, BE, SC, SH, MEAN, RSTD, VAR, DG, DB, eps,
                 MODE: tl.constexpr, HAS_BETA: tl.constexpr, HAS_SHIFT: tl.constexpr, HAS_VAR: tl.constexpr,
                 BB: tl.constexpr, BJ: tl.constexpr, BK: tl.constexpr, PREC: tl.constexpr,
                 EARLY: tl.constexpr = True):
        rb, rj, mb, mj, m2, s = _tile(B0, H, BB, BJ)
        o0 = t * B * 3 * H + rb[:, None] * 3 * H + rj[None, :]
        if EARLY:  # u_t's gates and this program's units of h_{t-1} before the product (``_first``)
            u0, u1, u2, _ = _first(GATES, o0, H, m2, 3)
            hp = tl.load(HP + hoff + rb[:, None] * H + rj[None, :], mask=m2, other=0.0)
        a0, a1, a2, _, _ = _gate_terms(HW, ZS, HP, hoff, W, t, B, H, S, B0, rb, rj, mb, mj, m2, s,
                                        G, BE, SC, SH, MEAN, RSTD, VAR, eps, 3, MODE, HAS_BETA, HAS_SHIFT, HAS_VAR,
                                        BB, BJ, BK, PREC, EARLY)
        if not EARLY:
            u0, u1, u2, _ = _first(GATES, o0, H, m2, 3)
            hp = tl.load(HP + hoff + rb[:, None] * H + rj[None, :], mask=m2, other=0.0)
        tl.store(HW + o0, a0, mask=m2)
        tl.store(HW + o0 + H, a1, mask=m2)
        tl.store(HW + o0 + 2 * H, a2, mask=m2)
        r = _sigmoid(u0 + a0)
        zg = _sigmoid(u1 + a1)
        n = _tanh(u2 + r * a2)
        tl.store(GATES + o0, r, mask=m2)
        tl.store(GATES + o0 + H, zg, mask=m2)
        tl.store(GATES + o0 + 2 * H, n, mask=m2)
        tl.store(HS + t * B * H + rb[:, None] * H + rj[None, :], n + zg * (hp - n), mask=m2)

    @triton.jit
    def _gru_saved(GATES, HW, HP, hoff, o0, rb, rj, H, m2):
        """What a GRU backward step reads besides ∂L/∂z_{t+1} and the carry: r, z, n, this
        program's units of h_{t-1}, and a_n."""
        r, zg, n, _ = _first(GATES, o0, H, m2, 3)
        hp = tl.load(HP + hoff + rb[:, None] * H + rj[None, :], mask=m2, other=0.0)
        an = tl.load(HW + o0 + 2 * H, mask=m2, other=0.0)
        return r, zg, n, hp, an

    @triton.jit
    def _gru_gate_grads(DU, DA, o0, H, g, r, zg, n, hp, an, m2):
        """A GRU step's gradients from ∂L/∂h_t (g): of u_t's three blocks to DU, of the
        recurrent term's (r a_n for the third) to DA; returns the latter."""
        dn = g * (1 - n * n) * (1 - zg)  # ∂L/∂(u_n + r a_n)
        dr = dn * an * r * (1 - r)
        dzg = g * (hp - n) * zg * (1 - zg)
        tl.store(DU + o0, dr, mask=m2)
        tl.store(DU + o0 + H, dzg, mask=m2)
        tl.store(DU + o0 + 2 * H, dn, mask=m2)
        tl.store(DA + o0, dr, mask=m2)
        tl.store(DA + o0 + H, dzg, mask=m2)
        tl.store(DA + o0 + 2 * H, dn * r, mask=m2)  # a_n enters as r a_n
        return dr, dzg, dn * r

    @triton.jit(do_not_specialize=["t", "hoff"])
    def _gru_bwd(GH, GATES, HW, HP, hoff, DA, DU, DZ, ZS, W, t, B, H, S, B0,
                 G, BE, SC, SH, MEAN, RSTD, VAR, DG, DB, eps,
                 MODE: tl.constexpr, HAS_NEXT: tl.constexpr, BB: tl.constexpr, BJ: tl.constexpr,
                 BK: tl.constexpr, PREC: tl.constexpr, EARLY: tl.constexpr = True):
        rb, rj, mb, mj, m2, s = _tile(B0, H, BB, BJ)
        F = 3 * H
        oh = t * B * H + rb[:, None] * H + rj[None, :]
        o0 = t * B * F + rb[:, None] * F + rj[None, :]
        g = tl.load(GH + oh, mask=m2, other=0.0)
        if EARLY:  # what the step reads besides ∂L/∂z_{t+1}, before the product (``_first``)
            r, zg, n, hp, an = _gru_saved(GATES, HW, HP, hoff, o0, rb, rj, H, m2)
        if HAS_NEXT:  # + ∂L/∂h_{t+1} z_{t+1} (the carry) + ∂L/∂z_{t+1} W
            g += tl.load(GH + oh + B * H, mask=m2, other=0.0) * tl.load(GATES + o0 + B * F + H, mask=m2, other=0.0)
            g += _mm_n(DZ + (t + 1) * B * F, rb, mb, F, W + s * F * H, H, rj, mj, BB, BJ, BK, PREC)
        tl.store(GH + oh, g, mask=m2)
        if not EARLY:
            r, zg, n, hp, an = _gru_saved(GATES, HW, HP, hoff, o0, rb, rj, H, m2)
        dr, dzg, drn = _gru_gate_grads(DU, DA, o0, H, g, r, zg, n, hp, an, m2)
        _gate_dz(DZ, ZS, o0, dr, dzg, drn, dr, t, B, H, S, B0, rb, rj, mj, m2, s, G, SC, MEAN, RSTD, DG, DB, 3,
                 MODE)


    # -- whole sequences: every step in one launch, where the rows are independent -------
    # Without batch statistics (no norm, population statistics) each row's recurrence is
    # its own. A program that owns a block of rows and every hidden unit (BJ >= H) then
    # needs no other program's h_{t-1} or ∂L/∂z_{t+1}, so it runs all T steps of the
    # kernels above in one launch: no launch per step, and every step's matrix product
    # reads the weights where the last step left them in cache. Between steps a barrier
    # makes what the program's warps stored visible to all of them. T >= 2.

    # Chosen as the module is imported, as Triton's jit decides then whether a process
    # interprets its kernels (TRITON_INTERPRET=1) or compiles them.
    if interpreting():
        @triton.jit
        def _acquire(CNT):
            """CNT's value, read with acquire semantics (here in Triton's interpreter)."""
            return tl.atomic_add(CNT, 0, sem="acquire", scope="gpu")
    else:
        @triton.jit
        def _acquire(CNT):
            """CNT's value, read by every thread with a load of acquire semantics at GPU
            scope (PTX ``ld.acquire.gpu``; Triton has no such load, and its scalar atomic
            is one thread's, handed to the others through shared memory and two barriers
            of the program's warps each time it is read)."""
            return tl.inline_asm_elementwise("ld.acquire.gpu.global.b32 $0, [$1];", "=r,l", [CNT], dtype=tl.int32,
                                             is_pure=False, pack=1)

    @triton.jit
    def _counter(CNT, GROUP: tl.constexpr):
        """The counter of this program's barrier: GROUP 1 its row group's (the programs that
        share its rows and seed, grid axes 1 and 2), 2 its column group's (those that share
        its units and seed, axes 0 and 2: the rows-split batch norm's exchanges, counters
        after the row groups'), 0 the launch's one (``barrier_counters``)."""
        c = CNT
        if GROUP == 1:
            c = CNT + tl.program_id(2) * tl.num_programs(1) + tl.program_id(1)
        elif GROUP == 2:
            c = (CNT + tl.num_programs(2) * tl.num_programs(1) + tl.program_id(2) * tl.num_programs(0)
                 + tl.program_id(0))
        return c

    @triton.jit
    def _poll(c, POLL: tl.constexpr):
        """The counter c's value for a barrier's wait: with POLL every thread's own acquire
        load (``_acquire``), else one thread's acquire atomic (Triton's)."""
        if POLL:
            n = _acquire(c)
        else:
            n = tl.atomic_add(c, 0, sem="acquire", scope="gpu")
        return n

    @triton.jit
    def _step_sync(CNT, k, NPROG, GRID: tl.constexpr, GROUP: tl.constexpr, POLL: tl.constexpr):
        """Between two steps of a whole-sequence launch: a barrier of the program's warps,
        or with GRID the k-th barrier of NPROG programs: of every program of the launch, or
        with GROUP of the programs that share this one's rows and seed (``_counter``: each
        such group its own counter), the only programs whose
        stores of a step the next step reads here (h_{t-1} or ∂L/∂z_{t+1} of its rows;
        every other value a step reads is its own or was written before the launch). All
        NPROG have arrived when the counter, zero at launch, reaches k * NPROG; none can
        have arrived at the next one before, hence the assert, checked where Triton
        compiles with TRITON_DEBUG=1. One thread of each program releases the program's
        stores of the step as it arrives (PTX: red.release.gpu after bar.sync) and waits
        with acquire loads, which also invalidate the multiprocessor's L1 (sm_90:
        CCTL.IVALL): the next step reads what other programs wrote, some of it in lines
        this program cached before (the RNN forward's u_t beside a neighbour's h_t), so
        the wait must keep its acquire. With POLL every thread polls with its own acquire
        loads (``_poll``), else one thread with Triton's atomic, whose value the others
        get through shared memory. Every program must be resident at once: the launch is
        cooperative (``_start``), and ``grid_programs`` allows at most GRID_PER_SM
        programs per multiprocessor."""
        tl.debug_barrier()
        if GRID:
            c = _counter(CNT, GROUP)
            tl.atomic_add(c, 1, sem="release", scope="gpu")
            n = _poll(c, POLL)
            while n < k * NPROG:
                n = _poll(c, POLL)
            tl.device_assert(n < (k + 1) * NPROG, "grid barriers out of step")
            tl.debug_barrier()

    @triton.jit(do_not_specialize=["T", "NPROG"])
    def _rnn_fwd_seq(HS, ZS, H0, W, T, B, H, S, B0,
                     G, BE, SC, SH, MEAN, RSTD, VAR, DG, DB, eps,
                     CNT, NPROG,
                     MODE: tl.constexpr, HAS_BETA: tl.constexpr, HAS_SHIFT: tl.constexpr, HAS_VAR: tl.constexpr,
                     RELU: tl.constexpr, GRID: tl.constexpr, GROUP: tl.constexpr, POLL: tl.constexpr,
                     BB: tl.constexpr, BJ: tl.constexpr, BK: tl.constexpr, PREC: tl.constexpr):
        _rnn_fwd(HS, ZS, H0, 0, W, 0, B, H, S, B0, G, BE, SC, SH, MEAN, RSTD, VAR, DG, DB, eps,
                 MODE, HAS_BETA, HAS_SHIFT, HAS_VAR, RELU, BB, BJ, BK, PREC, GRID)
        for t in range(1, T):
            _step_sync(CNT, t, NPROG, GRID, GROUP, POLL)
            _rnn_fwd(HS, ZS, HS, (t - 1) * B * H, W, t, B, H, S, B0, G, BE, SC, SH, MEAN, RSTD, VAR, DG, DB, eps,
                     MODE, HAS_BETA, HAS_SHIFT, HAS_VAR, RELU, BB, BJ, BK, PREC, GRID)

    @triton.jit(do_not_specialize=["T", "NPROG"])
    def _rnn_bwd_seq(GH, HS, DA, DZ, ZS, W, T, B, H, S, B0,
                     G, BE, SC, SH, MEAN, RSTD, VAR, DG, DB, eps, CNT, NPROG, MODE: tl.constexpr, RELU: tl.constexpr,
                     GRID: tl.constexpr, GROUP: tl.constexpr, POLL: tl.constexpr,
                     BB: tl.constexpr, BJ: tl.constexpr, BK: tl.constexpr, PREC: tl.constexpr):
        _rnn_bwd(GH, HS, DA, DZ, ZS, W, T - 1, B, H, S, B0, G, BE, SC, SH, MEAN, RSTD, VAR, DG, DB, eps,
                 MODE, RELU, False, BB, BJ, BK, PREC, GRID)
        for i in range(1, T):
            _step_sync(CNT, i, NPROG, GRID, GROUP, POLL)
            _rnn_bwd(GH, HS, DA, DZ, ZS, W, T - 1 - i, B, H, S, B0, G, BE, SC, SH, MEAN, RSTD, VAR, DG, DB, eps,
                     MODE, RELU, True, BB, BJ, BK, PREC, GRID)

    @triton.jit(do_not_specialize=["T", "NPROG"])
    def _lstm_fwd_seq(SIG, TG, CS, TC, HS, ZS, H0, C0, W, T, B, H, S, B0,
                      G, BE, SC, SH, MEAN, RSTD, VAR, DG, DB, eps,
                      CG, CBE, CSC, CSH, CMEAN, CRSTD, CVAR, CDG, CDB, ceps,
                      CNT, NPROG,
                      MODE: tl.constexpr, HAS_BETA: tl.constexpr, HAS_SHIFT: tl.constexpr, HAS_VAR: tl.constexpr,
                      CMODE: tl.constexpr, C_BETA: tl.constexpr, C_SHIFT: tl.constexpr, C_VAR: tl.constexpr,
                      GRID: tl.constexpr, GROUP: tl.constexpr, POLL: tl.constexpr,
                      BB: tl.constexpr, BJ: tl.constexpr, BK: tl.constexpr, PREC: tl.constexpr):
        _lstm_fwd(SIG, TG, CS, TC, HS, ZS, H0, 0, C0, 0, W, 0, B, H, S, B0, G, BE, SC, SH, MEAN, RSTD, VAR, DG, DB,
                  eps, CG, CBE, CSC, CSH, CMEAN, CRSTD, CVAR, CDG, CDB, ceps, MODE, HAS_BETA, HAS_SHIFT, HAS_VAR,
                  CMODE, C_BETA, C_SHIFT, C_VAR, BB, BJ, BK, PREC, GRID)
        for t in range(1, T):
            _step_sync(CNT, t, NPROG, GRID, GROUP, POLL)
            prev = (t - 1) * B * H
            _lstm_fwd(SIG, TG, CS, TC, HS, ZS, HS, prev, CS, prev, W, t, B, H, S, B0, G, BE, SC, SH, MEAN, RSTD, VAR,
                      DG, DB, eps, CG, CBE, CSC, CSH, CMEAN, CRSTD, CVAR, CDG, CDB, ceps, MODE, HAS_BETA, HAS_SHIFT,
                      HAS_VAR, CMODE, C_BETA, C_SHIFT, C_VAR, BB, BJ, BK, PREC, GRID)

    @triton.jit(do_not_specialize=["T", "NPROG"])
    def _lstm_bwd_seq(GH, SIG, TG, CS, TC, C0, DA, DZ, DN, ZS, W, DC, DCL, T, B, H, S, B0,
                      G, BE, SC, SH, MEAN, RSTD, VAR, DG, DB, eps,
                      CG, CBE, CSC, CSH, CMEAN, CRSTD, CVAR, CDG, CDB, ceps,
                      CNT, NPROG, MODE: tl.constexpr, CMODE: tl.constexpr, HAS_LAST: tl.constexpr,
                      GRID: tl.constexpr, GROUP: tl.constexpr, POLL: tl.constexpr,
                      BB: tl.constexpr, BJ: tl.constexpr, BK: tl.constexpr, PREC: tl.constexpr):
        # step T-1 (nothing after it; the incoming ∂L/∂c_T), steps T-2 .. 1, step 0 (c_{-1} = c0)
        _lstm_bwd(GH, SIG, TG, CS, TC, CS, (T - 2) * B * H, DA, DZ, DN, ZS, W, DC, DCL, T - 1, B, H, S, B0,
                  G, BE, SC, SH, MEAN, RSTD, VAR, DG, DB, eps, CG, CBE, CSC, CSH, CMEAN, CRSTD, CVAR, CDG, CDB, ceps,
                  MODE, CMODE, False, HAS_LAST, BB, BJ, BK, PREC, GRID)
        for i in range(2, T):
            _step_sync(CNT, i - 1, NPROG, GRID, GROUP, POLL)
            t = T - i
            _lstm_bwd(GH, SIG, TG, CS, TC, CS, (t - 1) * B * H, DA, DZ, DN, ZS, W, DC, DC, t, B, H, S, B0,
                      G, BE, SC, SH, MEAN, RSTD, VAR, DG, DB, eps, CG, CBE, CSC, CSH, CMEAN, CRSTD, CVAR, CDG, CDB,
                      ceps, MODE, CMODE, True, False, BB, BJ, BK, PREC, GRID)
        _step_sync(CNT, T - 1, NPROG, GRID, GROUP, POLL)
        _lstm_bwd(GH, SIG, TG, CS, TC, C0, 0, DA, DZ, DN, ZS, W, DC, DC, 0, B, H, S, B0,
                  G, BE, SC, SH, MEAN, RSTD, VAR, DG, DB, eps, CG, CBE, CSC, CSH, CMEAN, CRSTD, CVAR, CDG, CDB, ceps,
                  MODE, CMODE, True, False, BB, BJ, BK, PREC, GRID)

    @triton.jit(do_not_specialize=["T", "NPROG"])
    def _gru_fwd_seq(GATES, HW, HS, ZS, H0, W, T, B, H, S, B0,
                     G, BE, SC, SH, MEAN, RSTD, VAR, DG, DB, eps,
                     CNT, NPROG,
                     MODE: tl.constexpr, HAS_BETA: tl.constexpr, HAS_SHIFT: tl.constexpr, HAS_VAR: tl.constexpr,
                     GRID: tl.constexpr, GROUP: tl.constexpr, POLL: tl.constexpr,
                     BB: tl.constexpr, BJ: tl.constexpr, BK: tl.constexpr, PREC: tl.constexpr):
        _gru_fwd(GATES, HW, HS, ZS, H0, 0, W, 0, B, H, S, B0, G, BE, SC, SH, MEAN, RSTD, VAR, DG, DB, eps,
                 MODE, HAS_BETA, HAS_SHIFT, HAS_VAR, BB, BJ, BK, PREC, GRID)
        for t in range(1, T):
            _step_sync(CNT, t, NPROG, GRID, GROUP, POLL)
            _gru_fwd(GATES, HW, HS, ZS, HS, (t - 1) * B * H, W, t, B, H, S, B0, G, BE, SC, SH, MEAN, RSTD, VAR, DG,
                     DB, eps, MODE, HAS_BETA, HAS_SHIFT, HAS_VAR, BB, BJ, BK, PREC, GRID)

    @triton.jit(do_not_specialize=["T", "NPROG"])
    def _gru_bwd_seq(GH, GATES, HW, HS, H0, DA, DU, DZ, ZS, W, T, B, H, S, B0,
                     G, BE, SC, SH, MEAN, RSTD, VAR, DG, DB, eps,
                     CNT, NPROG, MODE: tl.constexpr,
                     GRID: tl.constexpr, GROUP: tl.constexpr, POLL: tl.constexpr, BB: tl.constexpr, BJ: tl.constexpr,
                     BK: tl.constexpr, PREC: tl.constexpr):
        _gru_bwd(GH, GATES, HW, HS, (T - 2) * B * H, DA, DU, DZ, ZS, W, T - 1, B, H, S, B0,
                 G, BE, SC, SH, MEAN, RSTD, VAR, DG, DB, eps, MODE, False, BB, BJ, BK, PREC, GRID)
        for i in range(2, T):
            _step_sync(CNT, i - 1, NPROG, GRID, GROUP, POLL)
            t = T - i
            _gru_bwd(GH, GATES, HW, HS, (t - 1) * B * H, DA, DU, DZ, ZS, W, t, B, H, S, B0,
                     G, BE, SC, SH, MEAN, RSTD, VAR, DG, DB, eps, MODE, True, BB, BJ, BK, PREC, GRID)
        _step_sync(CNT, T - 1, NPROG, GRID, GROUP, POLL)
        _gru_bwd(GH, GATES, HW, H0, 0, DA, DU, DZ, ZS, W, 0, B, H, S, B0,
                 G, BE, SC, SH, MEAN, RSTD, VAR, DG, DB, eps, MODE, True, BB, BJ, BK, PREC, GRID)


# -- launches: the arguments of csrc/scan_loops.cpp's loops ------------------------------

def rows_split(modes: tuple[int, ...], grid: bool) -> bool:
    """Whether batch or layer norm would run with the rows split over programs that
    exchange statistics (``BN_SPLIT``, ``LN_SPLIT``; ``scan_triton_rows``): the hidden
    term's norm (``modes[0]``) takes batch statistics, or is layer norm with no batch
    statistics beside it, in a ``grid``-synchronized launch (where its programs fit:
    ``_grid_plan``), or in a launch per step with BN_SPLIT_STEPS."""
    return _split_norm(modes) != _NONE and (grid or BN_SPLIT_STEPS)


def _split_norm(modes: tuple[int, ...]) -> int:
    """The norm whose statistics ``rows_split`` exchanges: batch norm (BN_SPLIT) or layer
    norm (LN_SPLIT) on the hidden term, with no norm of the other kind beside it (an LSTM
    whose cell norm is the other keeps its launches); else none."""
    if BN_SPLIT and modes[:1] == (_BATCH,) and _LAYER not in modes:
        return _BATCH
    if LN_SPLIT and modes[:1] == (_LAYER,) and _BATCH not in modes:
        return _LAYER
    return _NONE


def _exchange_group(modes: tuple[int, ...], split: bool) -> int:
    """The barriers of the exchanges within a step of a rows-split grid launch
    (``scan_triton_rows``; ``_counter``'s GROUP): with GRID_GROUPS, layer norm's on its
    row groups' counters (1), the programs of a row block being all that exchange a
    row's statistics and all that a step waits for; batch norm's on column groups' (2),
    the programs of a unit block, across row blocks, its steps' on the row groups'; else
    (0) every barrier on the launch's one counter."""
    if not (split and GRID_GROUPS):
        return 0
    return 2 if _split_norm(modes) == _BATCH else 1


def _tiles(B0: int, H: int, modes: tuple[int, ...], seq: bool, grid: bool = False,
           split: bool = False) -> tuple[int, int, int, int]:
    """Rows and units of a program, its chunk of the products and its warps: every unit
    of ROWS_SEQ rows in whole-sequence launches; the whole batch of a seed where batch
    statistics bind the rows, unless they ``split`` (``rows_split``: then the tiles of
    grid-synchronized launches); else ROWS_FREE rows (ROWS_FREE_GRID in ``grid``-
    synchronized launches, with chunks of BK_GRID where H is a multiple of it)."""
    if seq:
        return min(ROWS_SEQ, max(16, triton.next_power_of_2(B0))), max(16, triton.next_power_of_2(H)), BK_SEQ, \
            WARPS_SEQ
    grid = grid or split
    if _BATCH in modes and not split:
        bb = max(16, triton.next_power_of_2(B0))
        if bb > MAX_ROWS:
            raise ValueError(f"batch norm in the step kernels takes at most {MAX_ROWS} rows a seed, got {B0}")
        return bb, BJ_WHOLE_BATCH, BK_WHOLE_BATCH, WARPS_WHOLE_BATCH if bb >= 128 else 4
    if grid:
        bk = BK_GRID if H % BK_GRID == 0 else BK  # then every reduction (H, 3H, 4H) is whole chunks
        return min(ROWS_FREE_GRID, max(16, triton.next_power_of_2(B0))), BJ, bk, WARPS_FREE_GRID
    return min(ROWS_FREE, max(16, triton.next_power_of_2(B0))), BJ, BK, WARPS_FREE


def grid_programs(T: int, B0: int, H: int, S: int, modes: tuple[int, ...], device: torch.device) -> int:
    """The programs of a grid-synchronized launch of this recurrence (``GRID_SYNC``), or
    0 where it runs otherwise: the step kernels' grid at their tiles for such launches
    (``_tiles``), all T >= 2 steps in one launch with a barrier of every program
    between steps (of those that share rows and seed, with GRID_GROUPS), where no launch
    of a whole sequence runs (``whole_sequence``; layer norm always does) and every
    program can be resident at once: at most GRID_PER_SM per multiprocessor on CUDA; in
    Triton's interpreter, which runs programs one after another, where each barrier waits
    for one program alone; not where these launches failed to run here
    (``_grid_runs_here``). Batch norm takes the rows-split tiles where ``rows_split``
    wants them and they fit, else the whole batch's (``_grid_plan``)."""
    return _grid_plan(T, B0, H, S, modes, device)[0]


def _grid_plan(T: int, B0: int, H: int, S: int, modes: tuple[int, ...], device: torch.device) -> tuple[int, bool]:
    """``grid_programs`` and whether batch norm's rows split in that launch: where
    ``rows_split`` wants them split and those programs fit (one model at the seq-MNIST
    shape: 91), else, as without BN_SPLIT, the whole batch (2 to 5 stacked seeds of 25)."""
    layer = rows_split(modes, True) and _split_norm(modes) == _LAYER  # in place of its whole-sequence launches
    if not GRID_SYNC or T < 2 or (_LAYER in modes or whole_sequence(T, modes)) and not layer:
        return 0, False
    for split in (True,) if layer else (True, False) if rows_split(modes, True) else (False,):
        bb, bj, _, _ = _tiles(B0, H, modes, False, grid=True, split=split)
        n = triton.cdiv(H, bj) * triton.cdiv(B0, bb) * S
        if device.type == "cuda":
            fits = n <= torch.cuda.get_device_properties(device).multi_processor_count * GRID_PER_SM
        else:  # Triton's interpreter runs one program after another: a barrier must wait for one alone
            fits = (triton.cdiv(H, bj) if GRID_GROUPS and _exchange_group(modes, split) != 2 else n
                    ) <= INTERPRETER_PROGRAMS
        if fits:
            return (n, split) if _grid_runs_here(device) else (0, False)
    return 0, False


def barrier_counters(grid: tuple[int, int, int], group: bool, exchange: int = 0) -> int:
    """The counters of a grid-synchronized launch's barriers (``_counter``): one for each
    (row block, seed) of the grid (unit blocks, row blocks, seeds) with ``group``
    (GRID_GROUPS), each counting the programs of its group, else one for every program;
    with ``exchange`` 2 (``_exchange_group``) one more for each (unit block, seed)."""
    return (grid[1] * grid[2] if group else 1) + (grid[0] * grid[2] if exchange == 2 else 0)


def _start(T: int, B: int, H: int, w: Tensor, nx: Norm, ux: Tensor | None, wx: Tensor | None, buffers: tuple,
           norms: tuple[tuple[Norm, int], ...], backward: bool = False) -> tuple[Tensor, tuple, tuple, dict, dict]:
    """What every loop does first: refuse an input norm, check the buffers (and W_hh, made
    contiguous as csrc's takes any layout) and each (norm, its features) against the
    seeds, zero the norms' dγ, dβ before a backward loop. Returns W_hh, the grid, the
    kernels' size arguments (B, H, S, B0), the tile constants and, where all steps run in
    one launch, the whole-sequence kernels' sync arguments (CNT, NPROG, GRID, ...; empty: a
    launch per step): a launch of whole sequences (``whole_sequence``) or a
    grid-synchronized one (``grid_programs``). W_hh of shape (S, G*H, H) means S stacked
    seeds, each of B0 = B/S rows (seed-major), on a grid axis of their own; every row of
    a seed is in one program where a norm takes batch statistics (unless ``rows_split``:
    then ``cfg`` has PART, the row blocks' shares of the statistics, and NRB, their number
    rounded up to a power of two, and the launch is scan_triton_rows'), and every unit of
    a row in one program where the whole sequence runs in one launch."""
    _inactive_input(nx, ux, wx)
    w = w.contiguous()
    _check(*buffers, w)
    S = w.shape[0] if w.dim() == 3 else 1
    if B % S:
        raise ValueError(f"{B} rows do not split into {S} seeds")
    B0 = B // S
    for n, F in norms:
        n.check_fits(S, T, F, B)
        if backward:
            n.zero_grads()
    modes = tuple(n.mode for n, _ in norms)
    seq, nprog, split = _plan(T, B0, H, S, modes, w.device)
    if not (seq or split) and _LAYER in modes:
        raise ValueError("layer norm in the step kernels needs whole-sequence launches (see whole_sequence)")
    bb, bj, bk, warps = _tiles(B0, H, modes, seq, grid=nprog > 0, split=split)
    sync = {}
    if seq:
        sync = dict(CNT=w, NPROG=1, GRID=False, GROUP=False, POLL=False)  # CNT: never read
    grid = (triton.cdiv(H, bj), triton.cdiv(B0, bb), S)
    if nprog:  # a cooperative launch: the driver runs every program at once, or refuses
        if nprog != math.prod(grid):  # a barrier waiting for programs never launched would hang
            raise RuntimeError(f"grid-synchronized launch of {math.prod(grid)} programs counted as {nprog}")
        group, xgroup = GRID_GROUPS, _exchange_group(modes, split)
        groups = barrier_counters(grid, group)
        sync = dict(CNT=torch.zeros(barrier_counters(grid, group, xgroup), dtype=torch.int32, device=w.device),
                    NPROG=nprog // groups, GRID=True, GROUP=group, POLL=GRID_POLL, launch_cooperative_grid=True)
        if split:
            sync["XGROUP"] = xgroup
    prec = "tf32" if torch.backends.cuda.matmul.allow_tf32 else FP32_DOT_SEQ if seq else FP32_DOT
    cfg = dict(BB=bb, BJ=bj, BK=bk, PREC=prec, num_warps=warps)
    if split:  # each block's two sums per feature or row, for the gates and the LSTM's cell (scan_triton_rows),
        # twice where batch norm's steps and exchanges wait on other groups: by the step's parity
        nrb = max(2, triton.next_power_of_2(grid[0] if modes[0] == _LAYER else grid[1]))
        copies = 2 if sync.get("XGROUP") == 2 else 1
        cfg.update(PART=w.new_empty(copies * 4 * nrb * max(B, S * max(F for _, F in norms))), NRB=nrb)
    return w, grid, (B, H, S, B0), cfg, sync


def _plan(T: int, B0: int, H: int, S: int, modes: tuple[int, ...], device: torch.device) -> tuple[bool, int, bool]:
    """How a recurrence runs (``_start``, ``path``): whether as whole-sequence launches, the
    programs of a grid-synchronized launch (0: a launch per step), and whether its norm's
    rows split over programs that exchange statistics (``rows_split``: in that grid
    launch, or in a launch per phase with BN_SPLIT_STEPS), which for layer norm takes the
    place of whole sequences."""
    seq = whole_sequence(T, modes)
    nprog, split = _grid_plan(T, B0, H, S, modes, device) if not seq or _LAYER in modes else (0, False)
    split = split or not nprog and rows_split(modes, False) and T >= 2  # a launch per phase (BN_SPLIT_STEPS)
    return seq and not split, nprog, split


def _prev(first: Tensor, seq: Tensor, t: int) -> tuple[Tensor, int]:
    """Step t's h_{t-1} (or c_{t-1}) as a base tensor and an element offset into it."""
    return (first, 0) if t == 0 else (seq, (t - 1) * seq.shape[1] * seq.shape[2])


def _check(*ts: Tensor | None) -> None:
    """The buffers' contract (csrc's ``check``): contiguous float32, on one device."""
    dev = next(t.device for t in ts if t is not None)
    for t in ts:
        if t is not None and not (t.is_contiguous() and t.dtype == torch.float32 and t.device == dev):
            raise ValueError("the step kernels take contiguous float32 tensors on one device")


def rnn_forward(hs: Tensor, zs: Tensor | None, h0: Tensor, w: Tensor, nh: Norm, relu: bool, nx: Norm,
                ux: Tensor | None, wx: Tensor | None = None) -> None:
    """hs (T, B, H) holds u_t (+ folded shift) and becomes h_t; zs gets h W^T (with a norm)."""
    T, B, H = hs.shape
    w, grid, dims, cfg, sync = _start(T, B, H, w, nx, ux, wx, (hs, zs, h0), ((nh, H),))
    if "PART" in cfg:
        _rows().rnn_forward(hs, zs, h0, w, nh, relu, grid, dims, cfg, sync)
        return
    if sync:
        _rnn_fwd_seq[grid](hs, zs if zs is not None else hs, h0, w, T, *dims, *nh.args(), RELU=relu, **nh.flags(),
                           **sync, **cfg)
        return
    for t in range(T):
        hp, off = _prev(h0, hs, t)
        _rnn_fwd[grid](hs, zs if zs is not None else hs, hp, off, w, t, *dims, *nh.args(), RELU=relu, **nh.flags(),
                       **cfg)


def rnn_backward(gh: Tensor, hs: Tensor, da: Tensor, dz: Tensor | None, zs: Tensor | None, w: Tensor, nh: Norm,
                 relu: bool, nx: Norm, ux: Tensor | None, dux: Tensor | None,
                 wx: Tensor | None = None, dwx: Tensor | None = None) -> None:
    """gh (T, B, H): ∂L/∂h_t, completed in place; da = gh act'(h_t); dz = N'(da) (da itself without a norm)."""
    T, B, H = gh.shape
    w, grid, dims, cfg, sync = _start(T, B, H, w, nx, ux, wx, (gh, hs, da, dz, zs), ((nh, H),), backward=True)
    dz = dz if dz is not None and nh.mode else da  # without a norm ∂L/∂z is da, as csrc's
    if "PART" in cfg:
        _rows().rnn_backward(gh, hs, da, dz, zs, w, nh, relu, grid, dims, cfg, sync)
        return
    if sync:
        _rnn_bwd_seq[grid](gh, hs, da, dz, zs if zs is not None else hs, w, T, *dims, *nh.args(), MODE=nh.mode,
                           RELU=relu, **sync, **cfg)
        return
    for t in range(T - 1, -1, -1):
        _rnn_bwd[grid](gh, hs, da, dz, zs if zs is not None else hs, w, t, *dims, *nh.args(), MODE=nh.mode,
                       RELU=relu, HAS_NEXT=t < T - 1, **cfg)


def lstm_forward(sig: Tensor, tg: Tensor, cs: Tensor, tc: Tensor, hs: Tensor, zs: Tensor | None, h0: Tensor,
                 c0: Tensor, w: Tensor, nh: Norm, nc: Norm, nx: Norm, ux: Tensor | None,
                 wx: Tensor | None = None) -> None:
    """sig (T, B, 4H) holds u_t (+ folded shift); its i, f, o blocks become the gates'
    sigmoids and the g block keeps its pre-activation. tg = tanh(g), cs = c_t,
    tc = tanh(N_c(c_t)), hs = h_t, zs = h W^T (with a norm)."""
    T, B, H = hs.shape
    w, grid, dims, cfg, sync = _start(T, B, H, w, nx, ux, wx, (sig, tg, cs, tc, hs, zs, h0, c0), ((nh, 4 * H), (nc, H)))
    if "PART" in cfg:
        _rows().lstm_forward(sig, tg, cs, tc, hs, zs, h0, c0, w, nh, nc, grid, dims, cfg, sync)
        return
    hh, cn = nh.args(), nc.args()
    consts = dict(**nh.flags(), **nc.flags(cell=True), **cfg)
    if sync:
        _lstm_fwd_seq[grid](sig, tg, cs, tc, hs, zs if zs is not None else sig, h0, c0, w, T, *dims, *hh, *cn,
                            **sync, **consts)
        return
    for t in range(T):
        hp, hoff = _prev(h0, hs, t)
        cp, coff = _prev(c0, cs, t)
        _lstm_fwd[grid](sig, tg, cs, tc, hs, zs if zs is not None else sig, hp, hoff, cp, coff, w, t, *dims,
                        *hh, *cn, **consts)


def lstm_backward(gh: Tensor, sig: Tensor, tg: Tensor, cs: Tensor, tc: Tensor, c0: Tensor, da: Tensor,
                  dz: Tensor | None, dn: Tensor | None, zs: Tensor | None, w: Tensor, dc_last: Tensor | None,
                  nh: Norm, nc: Norm, nx: Norm, ux: Tensor | None, dux: Tensor | None,
                  wx: Tensor | None = None, dwx: Tensor | None = None) -> Tensor:
    """The backward loop of ``lstm_forward`` (csrc's ``lstm_backward``): fills da, dz, dn,
    completes gh; returns ∂L/∂c_0 before step 0's forget gate."""
    T, B, H = gh.shape
    w, grid, dims, cfg, sync = _start(T, B, H, w, nx, ux, wx, (gh, sig, tg, cs, tc, c0, da, dz, dn, zs, dc_last),
                                     ((nh, 4 * H), (nc, H)), backward=True)
    hh, cn = nh.args(), nc.args()
    dz = dz if dz is not None and nh.mode else da  # without a norm ∂L/∂z is da, as csrc's
    dc = gh.new_empty(B, H)
    if "PART" in cfg:
        _rows().lstm_backward(gh, sig, tg, cs, tc, c0, da, dz, dn if dn is not None else da, zs, w, dc, dc_last, nh,
                              nc, grid, dims, cfg, sync)
        return dc
    if sync:
        _lstm_bwd_seq[grid](gh, sig, tg, cs, tc, c0, da, dz, dn if dn is not None else da,
                            zs if zs is not None else sig, w, dc, dc_last if dc_last is not None else dc, T, *dims,
                            *hh, *cn, MODE=nh.mode, CMODE=nc.mode, HAS_LAST=dc_last is not None, **sync, **cfg)
        return dc
    for t in range(T - 1, -1, -1):
        cp, coff = _prev(c0, cs, t)
        last = t == T - 1 and dc_last is not None
        _lstm_bwd[grid](gh, sig, tg, cs, tc, cp, coff, da, dz, dn if dn is not None else da,
                        zs if zs is not None else sig, w, dc, dc_last if last else dc, t, *dims, *hh, *cn,
                        MODE=nh.mode, CMODE=nc.mode, HAS_NEXT=t < T - 1, HAS_LAST=last, **cfg)
    return dc


def gru_forward(gates: Tensor, hw: Tensor, hs: Tensor, zs: Tensor | None, h0: Tensor, w: Tensor, nh: Norm,
                nx: Norm, ux: Tensor | None, wx: Tensor | None = None) -> None:
    """gates (T, B, 3H) holds u_t and becomes (r, z, n); hw holds (0, 0, b_hn) (+ folded
    shift) and gets N(h W^T) added; hs = h_t; zs = h W^T (with a norm)."""
    T, B, H = hs.shape
    w, grid, dims, cfg, sync = _start(T, B, H, w, nx, ux, wx, (gates, hw, hs, zs, h0), ((nh, 3 * H),))
    if "PART" in cfg:
        _rows().gru_forward(gates, hw, hs, zs, h0, w, nh, grid, dims, cfg, sync)
        return
    hh = nh.args()
    if sync:
        _gru_fwd_seq[grid](gates, hw, hs, zs if zs is not None else hw, h0, w, T, *dims, *hh, **nh.flags(), **sync,
                           **cfg)
        return
    for t in range(T):
        hp, hoff = _prev(h0, hs, t)
        _gru_fwd[grid](gates, hw, hs, zs if zs is not None else hw, hp, hoff, w, t, *dims, *hh, **nh.flags(), **cfg)


def gru_backward(gh: Tensor, gates: Tensor, hw: Tensor, hs: Tensor, h0: Tensor, da: Tensor, du: Tensor,
                 dz: Tensor | None, zs: Tensor | None, w: Tensor, nh: Norm, nx: Norm, ux: Tensor | None,
                 dux: Tensor | None, wx: Tensor | None = None, dwx: Tensor | None = None) -> None:
    """The backward loop of ``gru_forward`` (csrc's ``gru_backward``): fills du, da, dz and
    completes gh (the carry z_t ∂L/∂h_t and ∂L/∂z_t W reach h_{t-1})."""
    T, B, H = gh.shape
    w, grid, dims, cfg, sync = _start(T, B, H, w, nx, ux, wx, (gh, gates, hw, hs, h0, da, du, dz, zs), ((nh, 3 * H),),
                                     backward=True)
    dz = dz if dz is not None and nh.mode else da  # without a norm ∂L/∂z is da, as csrc's
    if "PART" in cfg:
        _rows().gru_backward(gh, gates, hw, hs, h0, da, du, dz, zs, w, nh, grid, dims, cfg, sync)
        return
    if sync:
        _gru_bwd_seq[grid](gh, gates, hw, hs, h0, da, du, dz, zs if zs is not None else hw, w, T, *dims, *nh.args(),
                           MODE=nh.mode, **sync, **cfg)
        return
    for t in range(T - 1, -1, -1):
        hp, hoff = _prev(h0, hs, t)
        _gru_bwd[grid](gh, gates, hw, hp, hoff, da, du, dz, zs if zs is not None else hw, w, t, *dims,
                       *nh.args(), MODE=nh.mode, HAS_NEXT=t < T - 1, **cfg)
