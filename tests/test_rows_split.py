"""Batch norm in the CUDA step kernels with the batch's rows split over programs
(baselines/scan_triton_rows.py, ``scan_triton.BN_SPLIT``), run in Triton's interpreter.

The interpreter runs a launch's programs one after another, so the exchange of
statistics between row blocks runs here through a launch per phase
(``BN_SPLIT_STEPS``), and the grid-synchronized launch, whose phases carry their values
in registers across barriers, where one program holds the recurrence. Several programs
in one grid launch run compiled on CUDA (tests/test_gpu.py)."""

from __future__ import annotations

import math
import os
import types

import pytest
import torch

from baselines import scan, scan_triton
from test_fast_recurrence import (IMPLS, KERNELS, _strict_step_sync, recorded_starts, run_cell_case,
                                  use_step_kernels)

needs_kernels = pytest.mark.skipif(not KERNELS, reason="the kernel tests run in Triton's interpreter "
                                   "(TRITON_INTERPRET=1, where CUDA is absent, with Triton installed)")


def split_rows(monkeypatch, steps: bool) -> list:
    """The step kernels with batch norm's rows split (a launch per phase with ``steps``);
    returns the launches' records (``recorded_starts``) from now on, the probes' left out."""
    use_step_kernels(monkeypatch)
    monkeypatch.setattr(scan_triton, "BN_SPLIT", True)
    monkeypatch.setattr(scan_triton, "BN_SPLIT_STEPS", steps)
    return recorded_starts(monkeypatch, lambda T, B, out: B > 1)


@needs_kernels
@pytest.mark.parametrize("cell,cell_norm,B", [("rnn", None, 40), ("gru", None, 40), ("lstm", "batch", 40),
                                              ("lstm", "batch", 17), ("lstm", None, 17), ("gru", None, 17)])
def test_rows_split_batch_norm_matches_the_reference(cell, cell_norm, B, monkeypatch):
    """Every program normalizes with the statistics of all rows of the batch, combined
    from the row blocks' shares: 40 rows are three blocks of 16 rows (the last of 8), 17
    rows two (the last a single row, whose squares about its own mean sum to 0); 20 units
    are three blocks of 8. Outputs, the steps' batch statistics and every gradient (γ's
    included, which the first row block's program sums) against the float64 reference; a
    program that used its own rows' statistics, or missed a block's share, would be off
    by far more. The LSTM with and without its cell's batch norm (three phases a step, or
    two)."""
    starts = split_rows(monkeypatch, steps=True)
    run_cell_case(IMPLS["scan-triton"], cell, B, 3, 20, "batch", cell_norm, True)
    assert scan.last_path() == "scan-triton"
    assert len(starts) == 2  # forward and backward, each a launch per phase and step
    for _, _, (_, grid, _, cfg, sync) in starts:
        assert grid == (3, math.ceil(B / 16), 1) and cfg["NRB"] == (4 if B == 40 else 2) and not sync


@needs_kernels
def test_rows_split_stacked_seeds_keep_their_own_statistics(monkeypatch):
    """Two stacked seeds (rows seed-major, a grid axis each): each seed's programs combine
    only that seed's row blocks, so the stack gives each seed what it gives alone."""
    split_rows(monkeypatch, steps=True)
    torch.manual_seed(3)
    S, B, T, H = 2, 20, 3, 8
    u, h0, c0 = torch.randn(S * B, T, 4 * H), torch.randn(S * B, H), torch.randn(S * B, H)
    w, g, gc = torch.randn(S, 4 * H, H) / 3, torch.rand(S, 4 * H) + 0.5, torch.rand(S, H) + 0.5
    cot = torch.randn(S * B, T, H)

    def run(u, h0, c0, w, g, gc, cot):
        leaves = [x.clone().requires_grad_() for x in (u, w, g, gc)]
        h, c, stats = scan.scan_lstm(leaves[0], h0, c0, leaves[1], leaves[2], norm="batch", cell_norm="batch",
                                     gamma_c=leaves[3], batch_stats=True)
        grads = torch.autograd.grad((h * cot).sum() + c.sum(), leaves)
        return h.detach(), stats, grads

    h, stats, grads = run(u, h0, c0, w, g, gc, cot)
    for s in range(S):
        rows = slice(s * B, (s + 1) * B)
        h1, stats1, grads1 = run(u[rows], h0[rows], c0[rows], w[s], g[s], gc[s], cot[rows])
        torch.testing.assert_close(h[rows], h1, rtol=1e-5, atol=1e-6)
        for k, (mean, var) in stats.items():
            torch.testing.assert_close(mean[:, s], stats1[k][0], rtol=1e-5, atol=1e-6)
            torch.testing.assert_close(var[:, s], stats1[k][1], rtol=1e-5, atol=1e-6)
        for a, b in zip(grads, grads1, strict=True):
            torch.testing.assert_close(a[rows] if a.shape[0] == S * B else a[s], b, rtol=1e-4, atol=1e-5)


@needs_kernels
@pytest.mark.parametrize("cell,cell_norm", [("rnn", None), ("gru", None), ("lstm", "batch"), ("lstm", None)])
def test_rows_split_grid_launch_passes_every_barrier_in_order(cell, cell_norm, monkeypatch):
    """A grid-synchronized launch carries each phase's values in registers across its
    barriers: here one program (the interpreter runs programs one after another), against
    the float64 reference, with the strict barrier of tests/test_fast_recurrence.py (the
    k-th barrier a program reaches must say k): forward and backward each reach the
    launch's counter T x phases - 1 times, a step's barriers and the one between steps."""
    from baselines import scan_triton_rows

    starts = split_rows(monkeypatch, steps=False)
    monkeypatch.setattr(scan_triton, "GRID_SYNC", True)
    monkeypatch.setattr(scan_triton, "_step_sync", _strict_step_sync)
    monkeypatch.setattr(scan_triton, "BJ", 32)
    monkeypatch.setattr(scan_triton, "ROWS_FREE_GRID", 32)
    T = 4
    run_cell_case(IMPLS["scan-triton-grid"], cell, 17, T, 20, "batch", cell_norm, True)
    assert scan.last_path() == "scan-triton-grid"
    n = scan_triton_rows.phases(cell, 1 if cell_norm else 0)
    assert len(starts) == 2
    for _, _, (_, grid, _, cfg, sync) in starts:
        assert grid == (1, 1, 1) and "PART" in cfg and not sync["GROUP"]
        assert sync["CNT"].tolist() == [T * n - 1]


def test_rows_split_takes_the_rows_split_grid_tiles(monkeypatch):
    """Off by default (RNNBENCH_GPU_BN_SPLIT=1 turns it on). On, a grid-synchronized
    launch of bn-lstm at the seq-MNIST shape has lstm-loop's 91 programs (16 rows, 8
    units) instead of 25 of the whole batch; where they do not fit (8 stacked seeds) a
    launch per step keeps the whole batch; only the hidden term's batch statistics split
    the rows (a cell norm's alone keeps the whole batch); population statistics split
    them as before."""
    assert scan_triton.BN_SPLIT is (os.environ.get(scan_triton.ENV_BN_SPLIT) == "1")
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda d: types.SimpleNamespace(multi_processor_count=132))
    monkeypatch.setattr(scan_triton, "_grid_runs_here", lambda d: True)
    monkeypatch.setattr(scan_triton, "GRID_SYNC", True)
    cuda = torch.device("cuda")
    monkeypatch.setattr(scan_triton, "BN_SPLIT", False)
    assert scan_triton.grid_programs(784, 100, 100, 1, (1, 1), cuda) == 25
    monkeypatch.setattr(scan_triton, "BN_SPLIT", True)
    assert scan_triton.grid_programs(784, 100, 100, 1, (1, 1), cuda) == 13 * 7
    assert scan_triton._tiles(100, 100, (1, 1), False, grid=True) == (16, 8, 16, scan_triton.WARPS_FREE_GRID)
    assert scan_triton._tiles(128, 128, (1,), False, grid=True)[:3] == (16, 8, 32)
    assert scan_triton.grid_programs(784, 100, 100, 8, (1, 1), cuda) == 0
    assert scan_triton._tiles(100, 100, (1, 1), False)[:2] == (128, scan_triton.BJ_WHOLE_BATCH)
    assert scan_triton.grid_programs(784, 100, 100, 1, (0, 1), cuda) == 25
    assert scan_triton.grid_programs(784, 100, 100, 1, (2, 2), cuda) == 13 * 7
    assert not scan_triton.rows_split((2, 2), True) and not scan_triton.rows_split((1, 1), False)
    monkeypatch.setattr(scan_triton, "BN_SPLIT_STEPS", True)
    assert scan_triton.rows_split((1, 1), False) and scan_triton._tiles(100, 100, (1,), False)[:2] == (16, 8)


@needs_kernels
def test_grid_probe_runs_the_rows_split_kernels_where_they_are_on(monkeypatch):
    """The once-a-process probe of grid-synchronized launches runs batch norm's rows-split
    kernels where BN_SPLIT is on, so that a Triton that cannot build them turns the grid
    launches off with one line saying why (a launch per step, whole-batch programs, runs
    then), rather than failing the first training step."""
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

    monkeypatch.setattr(scan_triton_rows, "_rnn_fwd_seq", {(1, 1, 1): broken})  # kernel[grid] -> broken
    assert scan_triton._probe(cpu, 2, grid=True) == "RuntimeError: PassManager::run failed"
    monkeypatch.setattr(scan_triton, "BN_SPLIT", False)
    assert scan_triton._probe(cpu, 2, grid=True) is None
