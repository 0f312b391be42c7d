"""Batch norm in the CUDA step kernels with the batch's rows split over programs
(baselines/scan_triton_rows.py, ``scan_triton.BN_SPLIT``), run in Triton's interpreter.

The interpreter runs a launch's programs one after another, so the grid-synchronized
launch, whose phases carry their values in registers across barriers of several
programs, runs here with its programs as threads that take turns between barriers
(tests/interpreter_grid.py); the launches per phase (``BN_SPLIT_STEPS``) run as they
are. Compiled, on CUDA: tests/test_gpu.py."""

from __future__ import annotations

import math
import os
import types

import pytest
import torch

from baselines import scan, scan_triton
import interpreter_grid
from test_fast_recurrence import IMPLS, KERNELS, recorded_starts, run_cell_case, use_step_kernels

needs_kernels = pytest.mark.skipif(not KERNELS, reason="the kernel tests run in Triton's interpreter "
                                   "(TRITON_INTERPRET=1, where CUDA is absent, with Triton installed)")


def split_rows(monkeypatch, steps: bool, layer: bool = False) -> list:
    """The step kernels with batch norm's rows split, or with ``layer`` layer norm's (a
    launch per phase with ``steps``); returns the launches' records (``recorded_starts``)
    from now on, the probes' left out. For layer norm, the path a call records is then
    the grid launch's or a launch per step's, not whole sequences'."""
    import test_fast_recurrence

    use_step_kernels(monkeypatch)
    monkeypatch.setattr(scan_triton, "LN_SPLIT" if layer else "BN_SPLIT", True)
    monkeypatch.setattr(scan_triton, "BN_SPLIT_STEPS", steps)
    if layer:
        def ran(impl, *norms, batch_stats=True):
            assert scan.last_path() == ("scan-triton" if steps else "scan-triton-grid")

        monkeypatch.setattr(test_fast_recurrence, "assert_ran", ran)
    return recorded_starts(monkeypatch, lambda T, B, out: B > 1)


@needs_kernels
@pytest.mark.parametrize("cell,norm,cell_norm,B", [("lstm", "batch", "batch", 40), ("gru", "batch", None, 17),
                                                   ("lstm", "layer", "layer", 40), ("gru", "layer", None, 17)])
def test_rows_split_norms_in_launches_per_phase(cell, norm, cell_norm, B, monkeypatch):
    """A launch per phase (``BN_SPLIT_STEPS``): every program normalizes with the
    statistics of all rows of the batch, combined from the row blocks' shares: 40 rows
    are three blocks of 16 rows (the last of 8), 17 rows two (the last a single row, whose
    squares about its own mean sum to 0); 20 units are three blocks of 8. Outputs, the
    steps' batch statistics and every gradient (γ's included, which the first row block's
    program sums) against the float64 reference; a program that used its own rows'
    statistics, or missed a block's share, would be off by far more. Layer norm the same
    way, each row's statistics combined from its three unit blocks' shares."""
    starts = split_rows(monkeypatch, steps=True, layer=norm == "layer")
    run_cell_case(IMPLS["scan-triton"], cell, B, 3, 20, norm, cell_norm, True)
    assert scan.last_path() == "scan-triton"
    assert len(starts) == 2  # forward and backward, each a launch per phase and step
    blocks = 3 if norm == "layer" else math.ceil(B / 16)  # that exchange: unit blocks (layer norm), row blocks
    for _, _, (_, grid, _, cfg, sync) in starts:
        assert grid == (3, math.ceil(B / 16), 1) and cfg["NRB"] == max(2, 1 << (blocks - 1).bit_length())
        assert not sync


@needs_kernels
@pytest.mark.parametrize("cell,norm,cell_norm,B,H", [
    ("rnn", "batch", None, 40, 20), ("gru", "batch", None, 40, 20), ("lstm", "batch", "batch", 40, 20),
    ("lstm", "batch", None, 17, 20), ("lstm", "batch", "batch", 33, 32), ("rnn", "layer", None, 40, 20),
    ("gru", "layer", None, 17, 20), ("lstm", "layer", "layer", 40, 20), ("lstm", "layer", None, 33, 32)])
def test_rows_split_grid_launch_of_several_programs(cell, norm, cell_norm, B, H, monkeypatch):
    """The grid-synchronized launch, as it runs on a GPU: each phase's values carried in
    registers across barriers, of every program for batch norm, of a row block's for
    layer norm (whose row blocks drift apart as far as those let them), here 9 or 12
    programs run as threads that take turns between barriers in a random order
    (tests/interpreter_grid.py).
    Against the float64 reference, with three or two row blocks (of 16: 40, 17 and 33
    rows) and three or four unit blocks (20 units; 32 in chunks of 32, BK_GRID); forward
    and backward each pass barriers 1 .. T x phases - 1 in order, in every program. The
    LSTM with and without its cell's norm (three phases a step, or two). Batch norm and
    layer norm (``LN_SPLIT``: in place of whole-sequence launches)."""
    from baselines import scan_triton_rows

    starts = split_rows(monkeypatch, steps=False, layer=norm == "layer")
    monkeypatch.setattr(scan_triton, "GRID_SYNC", True)
    tokens = interpreter_grid.install(monkeypatch, seed=B + H)
    T = 3
    run_cell_case(IMPLS["scan-triton-grid"], cell, B, T, H, norm, cell_norm, True)
    assert scan.last_path() == "scan-triton-grid"
    assert len(starts) == 2 and len(tokens) == 2
    for _, _, (_, grid, _, cfg, sync) in starts:
        assert grid == (math.ceil(H / 8), math.ceil(B / 16), 1) and "PART" in cfg
        # steps wait for a row block's programs; exchanges for a row block's (layer norm) or a unit block's
        assert sync["GROUP"] and sync["XGROUP"] == (1 if norm == "layer" else 2)
        assert sync["CNT"].numel() == grid[1] + (grid[0] if norm == "batch" else 0)
        assert cfg["BK"] == (32 if H == 32 else 16)
    interpreter_grid.check_barriers(tokens)
    n = scan_triton_rows.phases(cell, {None: 0, "batch": 1, "layer": 3}[cell_norm])
    assert all(len(next(iter(t.seen.values()))) == T * n for t in tokens)  # T n - 1 barriers, then the end


@needs_kernels
@pytest.mark.filterwarnings("ignore:overflow encountered", "ignore:invalid value encountered")  # PART's garbage
def test_row_block_barriers_would_not_do_for_batch_norm(monkeypatch):
    """The threads' scheduler (tests/interpreter_grid.py) lets row blocks drift apart as
    far as their barriers allow, so it catches barriers grouped too narrowly: batch
    norm's rows split, whose programs read every row block's shares, run with its
    exchanges on the row blocks' counters (as layer norm's,
    ``scan_triton._exchange_group``) reads shares not yet written, or already
    overwritten, and misses the float64 reference."""
    split_rows(monkeypatch, steps=False)
    monkeypatch.setattr(scan_triton, "GRID_SYNC", True)
    monkeypatch.setattr(scan_triton, "_exchange_group", lambda modes, split: 1)
    interpreter_grid.install(monkeypatch, seed=2)
    with pytest.raises(AssertionError):
        run_cell_case(IMPLS["scan-triton-grid"], "gru", 40, 3, 20, "batch", None, True)


@needs_kernels
def test_a_barrier_that_counts_the_wrong_programs_is_an_error(monkeypatch):
    """A barrier whose NPROG is not the number of programs on its counter (on a GPU: one
    that opens early, or never) stops the launch with that said."""
    split_rows(monkeypatch, steps=False, layer=True)
    monkeypatch.setattr(scan_triton, "GRID_SYNC", True)
    monkeypatch.setattr(scan_triton, "GRID_GROUPS", False)  # one counter, NPROG a row block's
    monkeypatch.setattr(scan_triton, "barrier_counters", lambda grid, group, exchange=0: grid[1] * grid[2])
    interpreter_grid.install(monkeypatch, seed=3)
    with pytest.raises(Exception, match="a barrier counts 3 programs where 9 count on it"):  # or the interpreter's
        run_cell_case(IMPLS["scan-triton-grid"], "rnn", 40, 3, 20, "layer", None, True)


@needs_kernels
def test_rows_split_stacked_seeds_keep_their_own_statistics(monkeypatch):
    """Two stacked seeds (rows seed-major, a grid axis each) in one grid launch of 2 x 2
    programs (threads, tests/interpreter_grid.py): each seed's programs combine only that
    seed's row blocks, so the stack gives each seed what it gives alone."""
    split_rows(monkeypatch, steps=False)
    monkeypatch.setattr(scan_triton, "GRID_SYNC", True)
    tokens = interpreter_grid.install(monkeypatch, seed=1)
    torch.manual_seed(3)
    S, B, T, H = 2, 20, 3, 8
    u, h0, c0 = torch.randn(S * B, T, 4 * H), torch.randn(S * B, H), torch.randn(S * B, H)
    w, g, gc = torch.randn(S, 4 * H, H) / 3, torch.rand(S, 4 * H) + 0.5, torch.rand(S, H) + 0.5
    cot = torch.randn(S * B, T, H)

    def run(u, h0, c0, w, g, gc, cot):
        leaves = [x.clone().requires_grad_() for x in (u, w, g, gc)]
        h, c, stats = scan.scan_lstm(leaves[0], h0, c0, leaves[1], leaves[2], norm="batch", cell_norm="batch",
                                     gamma_c=leaves[3], batch_stats=True)
        assert scan.last_path() == "scan-triton-grid"
        grads = torch.autograd.grad((h * cot).sum() + c.sum(), leaves)
        return h.detach(), stats, grads

    h, stats, grads = run(u, h0, c0, w, g, gc, cot)
    assert [t.n for t in tokens] == [4, 4]
    interpreter_grid.check_barriers(tokens)
    for s in range(S):
        rows = slice(s * B, (s + 1) * B)
        h1, stats1, grads1 = run(u[rows], h0[rows], c0[rows], w[s], g[s], gc[s], cot[rows])
        torch.testing.assert_close(h[rows], h1, rtol=1e-5, atol=1e-6)
        for k, (mean, var) in stats.items():
            torch.testing.assert_close(mean[:, s], stats1[k][0], rtol=1e-5, atol=1e-6)
            torch.testing.assert_close(var[:, s], stats1[k][1], rtol=1e-5, atol=1e-6)
        for a, b in zip(grads, grads1, strict=True):
            torch.testing.assert_close(a[rows] if a.shape[0] == S * B else a[s], b, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("value,on", [(None, False), ("1", True), ("0", False), ("yes", False)])
def test_rows_split_is_off_unless_the_environment_says_1(value, on):
    """RNNBENCH_GPU_BN_SPLIT=1 and RNNBENCH_GPU_LN_SPLIT=1 turn them on (read as the module
    is imported: a fresh process)."""
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k not in (scan_triton.ENV_BN_SPLIT, scan_triton.ENV_LN_SPLIT)}
    if value is not None:
        env[scan_triton.ENV_BN_SPLIT] = env[scan_triton.ENV_LN_SPLIT] = value
    code = "from baselines import scan_triton as st; print(st.BN_SPLIT, st.LN_SPLIT)"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert out.stdout.strip() == f"{on} {on}", out.stderr[-2000:]


def test_rows_split_takes_the_rows_split_grid_tiles(monkeypatch):
    """On, a grid-synchronized launch of bn-lstm at the seq-MNIST shape has lstm-loop's 91
    programs (16 rows, 8 units) instead of 25 of the whole batch; where they do not fit
    (2 to 5 stacked seeds) the whole batch's grid launch runs as without it (and a launch
    per step where neither fits: 8 seeds); only the hidden term's batch statistics split
    the rows (a cell norm's alone keeps the whole batch); population statistics split
    them as before."""
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda d: types.SimpleNamespace(multi_processor_count=132))
    monkeypatch.setattr(scan_triton, "_grid_runs_here", lambda d: True)
    monkeypatch.setattr(scan_triton, "GRID_SYNC", True)
    cuda = torch.device("cuda")
    monkeypatch.setattr(scan_triton, "BN_SPLIT", False)
    assert scan_triton.grid_programs(784, 100, 100, 1, (1, 1), cuda) == 25
    monkeypatch.setattr(scan_triton, "BN_SPLIT", True)
    assert scan_triton.grid_programs(784, 100, 100, 1, (1, 1), cuda) == 13 * 7
    assert scan_triton._grid_plan(784, 100, 100, 1, (1, 1), cuda) == (91, True)
    assert scan_triton._tiles(100, 100, (1, 1), False, grid=True, split=True) == (16, 8, 16,
                                                                                  scan_triton.WARPS_FREE_GRID)
    assert scan_triton._tiles(128, 128, (1,), False, grid=True, split=True)[:3] == (16, 8, 32)
    assert scan_triton._tiles(100, 100, (1, 1), False, grid=True)[:2] == (128, scan_triton.BJ_WHOLE_BATCH)
    for seeds in (2, 5):
        assert scan_triton._grid_plan(784, 100, 100, seeds, (1, 1), cuda) == (25 * seeds, False)
    assert scan_triton.grid_programs(784, 100, 100, 8, (1, 1), cuda) == 0
    assert scan_triton.grid_programs(784, 100, 100, 1, (0, 1), cuda) == 25
    assert scan_triton.grid_programs(784, 100, 100, 1, (2, 2), cuda) == 13 * 7
    assert not scan_triton.rows_split((2, 2), True) and not scan_triton.rows_split((1, 1), False)
    monkeypatch.setattr(scan_triton, "BN_SPLIT_STEPS", True)
    assert scan_triton.rows_split((1, 1), False)
    assert scan_triton._tiles(100, 100, (1,), False, split=True)[:2] == (16, 8)


def test_layer_norm_split_takes_the_place_of_whole_sequences_where_it_fits(monkeypatch):
    """LN_SPLIT (off by default): ln-lstm at the seq-MNIST shape in one grid launch of 91
    rows-split programs instead of whole-sequence launches; where those do not fit (8
    stacked seeds), or beside batch statistics, or with the layer norm on the cell alone,
    whole sequences (or the Python loops) as before; the path a run records says which."""
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda d: types.SimpleNamespace(multi_processor_count=132))
    monkeypatch.setattr(scan_triton, "_grid_runs_here", lambda d: True)
    monkeypatch.setattr(scan_triton, "GRID_SYNC", True)
    cuda = torch.device("cuda")
    plan = scan_triton._plan
    assert plan(784, 100, 100, 1, (3, 3), cuda) == (True, 0, False)
    monkeypatch.setattr(scan_triton, "LN_SPLIT", True)
    assert plan(784, 100, 100, 1, (3, 3), cuda) == (False, 91, True)
    assert plan(784, 100, 100, 1, (3,), cuda) == (False, 91, True)
    assert plan(784, 100, 100, 8, (3, 3), cuda) == (True, 0, False)
    assert plan(784, 100, 100, 1, (0, 3), cuda) == (True, 0, False)
    assert plan(784, 100, 100, 1, (1, 3), cuda) == (False, 0, False)  # the Python loops (for_call says None)
    monkeypatch.setattr(scan_triton, "BN_SPLIT", True)  # both on: a norm of each kind still splits nothing
    assert plan(784, 100, 100, 1, (1, 3), cuda) == (False, 0, False) and not scan_triton.rows_split((1, 3), True)
    assert plan(784, 100, 100, 1, (3, 1), cuda) == (False, 0, False) and not scan_triton.rows_split((3, 1), True)
    monkeypatch.setattr(scan_triton, "BN_SPLIT_STEPS", True)
    assert plan(784, 100, 100, 1, (1, 3), cuda) == (False, 0, False)
    monkeypatch.setattr(scan_triton, "BN_SPLIT", False)
    monkeypatch.setattr(scan_triton, "BN_SPLIT_STEPS", False)
    assert plan(1, 100, 100, 1, (3, 3), cuda) == (False, 0, False)
    x = types.SimpleNamespace(shape=(100, 784, 400), device=cuda)  # what path() reads of ln-lstm's input term
    assert scan_triton.path(x, 0, "lstm", (3, 3)) == "scan-triton-grid"
    stacked = types.SimpleNamespace(shape=(800, 784, 400), device=cuda)  # 8 seeds of 100 rows: 8 x 91 programs
    assert scan_triton.path(stacked, 8, "lstm", (3, 3)) == "scan-triton-seq"
    monkeypatch.setattr(scan_triton, "GRID_SYNC", False)
    assert plan(784, 100, 100, 1, (3, 3), cuda) == (True, 0, False)


@needs_kernels
def test_grid_probe_runs_the_rows_split_kernels_where_they_are_on(monkeypatch):
    """The once-a-process probe of grid-synchronized launches runs batch norm's rows-split
    kernels where BN_SPLIT is on, and layer norm's where LN_SPLIT is, so that a Triton
    that cannot build them turns the grid launches off with one line saying why (a launch
    per step with whole-batch programs, or whole sequences, runs then), rather than
    failing the first training step."""
    from baselines import scan_triton_rows

    split_rows(monkeypatch, steps=False)
    monkeypatch.setattr(scan_triton, "GRID_SYNC", True)
    monkeypatch.setattr(scan_triton, "_grid_runs_here", lambda d: True)  # the probe itself, called directly
    starts = recorded_starts(monkeypatch, lambda T, B, out: True)  # the probe's, of one row
    cpu = torch.device("cpu")
    assert scan_triton._probe(cpu, 2, grid=True) is None
    assert [("PART" in cfg, sync["GRID"]) for *_, (_, _, _, cfg, sync) in starts] == [(True, True)]

    def broken(*args, **kwargs):
        raise RuntimeError("PassManager::run failed\nmore detail")

    monkeypatch.setattr(scan_triton, "LN_SPLIT", True)  # both: each probed, layer norm's through its tables of rows
    starts.clear()
    assert scan_triton._probe(cpu, 2, grid=True) is None
    assert [(cfg.get("NRB"), sync["GRID"]) for *_, (_, _, _, cfg, sync) in starts] == [(2, True), (2, True)]
    monkeypatch.setattr(scan_triton, "BN_SPLIT", False)
    monkeypatch.setattr(scan_triton_rows, "_rnn_fwd_seq", {(1, 1, 1): broken})  # kernel[grid] -> broken
    assert scan_triton._probe(cpu, 2, grid=True) == "RuntimeError: PassManager::run failed"
    monkeypatch.setattr(scan_triton, "LN_SPLIT", False)
    assert scan_triton._probe(cpu, 2, grid=True) is None
