"""The fast recurrences equal the reference math, forward and backward.

Both implementations of one layer's recurrence are checked against plain float64
loops: ``scan`` (PyTorch ops with a hand-written backward pass) in float64, where
only summation order differs, and the Triton kernels in float32. On a machine
without CUDA the kernels run in Triton's interpreter (TRITON_INTERPRET=1, set in
conftest.py before Triton is imported); on CUDA tests/test_gpu.py runs the
compiled kernels against the reference loop.
"""

import contextlib
import copy
import os
import re
from typing import Callable, NamedTuple

import pytest
import torch
import torch.nn.functional as F

import baselines
from baselines import fused, scan, scan_triton
from baselines.norm import SeqNorm, pool
from conftest import split_every_step, use_scan_loops

KERNELS = fused.triton is not None and fused.interpreting()
needs_kernels = pytest.mark.skipif(not KERNELS, reason="the kernel tests run in Triton's interpreter "
                                   "(TRITON_INTERPRET=1, where CUDA is absent, with Triton installed)")


if KERNELS:
    import triton
    import triton.language as tl

    @triton.jit
    def _strict_step_sync(CNT, k, NPROG, GRID: tl.constexpr, GROUP: tl.constexpr, POLL: tl.constexpr):
        """``scan_triton._step_sync`` in the interpreter, where each barrier waits for one
        program alone: counts the barriers reached on the program's counter, and spoils
        the count where the k-th does not say k."""
        if GRID:
            c = scan_triton._counter(CNT, GROUP)
            seen = tl.atomic_add(c, 1)
            tl.atomic_add(c, tl.where(seen + 1 == k * NPROG, 0, 1000000))

    @triton.jit
    def _tf32_parts(X, HI, LO, N: tl.constexpr):
        x = tl.load(X + tl.arange(0, N))
        hi, lo = scan_triton._tf32(x)
        tl.store(HI + tl.arange(0, N), hi)
        tl.store(LO + tl.arange(0, N), lo)


class Impl(NamedTuple):
    rnn: Callable
    lstm: Callable
    gru: Callable
    dtype: torch.dtype  # what it computes in here
    out_tol: float  # relative error bounds against the float64 reference
    grad_tol: float
    compiled: bool = False  # scan: its compiled CPU loops (baselines/scan_cpp.py), not its Python loops
    steps: bool = False  # scan: its CUDA step kernels (baselines/scan_triton.py), in Triton's interpreter
    seq: bool = False  # the step kernels' whole-sequence launches where they apply (scan_triton.SEQUENCE)
    split: bool = False  # the compiled loops' steps split over two threads (conftest.split_every_step)
    grid: bool = False  # the step kernels' grid-synchronized launches (scan_triton.GRID_SYNC), of one program


SCAN = (scan.scan_rnn, scan.scan_lstm, scan.scan_gru)
IMPLS = {"scan": Impl(*SCAN, torch.float64, 1e-12, 1e-10),
         "scan-cpp": Impl(*SCAN, torch.float64, 1e-12, 1e-10, compiled=True),
         # float32: the compiled loops' rational tanh (within 5 ulp) and sigmoid (within 1e-7)
         "scan-cpp-f32": Impl(*SCAN, torch.float32, 1e-5, 1e-4, compiled=True),
         "scan-cpp-split": Impl(*SCAN, torch.float64, 1e-12, 1e-10, compiled=True, split=True),
         # the step kernels run float32 only (else, and for layer norm, the Python loops run)
         "scan-triton": Impl(*SCAN, torch.float32, 1e-5, 1e-4, steps=True),
         "scan-triton-seq": Impl(*SCAN, torch.float32, 1e-5, 1e-4, steps=True, seq=True),
         "scan-triton-grid": Impl(*SCAN, torch.float32, 1e-5, 1e-4, steps=True, grid=True),
         "fused": Impl(fused.fused_rnn, fused.fused_lstm, fused.fused_gru, torch.float32, 1e-5, 1e-4)}


def assert_ran(impl: Impl, *norms: str | None, batch_stats: bool = True) -> None:
    """The last call ran the implementation's own path (no silent fall-back): the Python
    loops, the compiled CPU loops, or the step kernels, whose whole-sequence launches run
    layer norm always and the other cells with ``seq``; batch statistics need a launch
    per step, which leaves layer norm to the Python loops."""
    if impl.rnn is not scan.scan_rnn:
        return  # the one-program kernels record their path elsewhere
    want = "scan-cpp" if impl.compiled else "scan"
    steps = "scan-triton-grid" if impl.grid else "scan-triton"  # the tests' recurrences have T >= 2
    if impl.steps and batch_stats and "batch" in norms:
        want = "scan" if "layer" in norms else steps
    elif impl.steps:
        want = "scan-triton-seq" if impl.seq or "layer" in norms else steps
    assert scan.last_path() == want


def use_step_kernels(monkeypatch, sequence: bool | None = None) -> None:
    """The scan path on its CUDA step kernels, in Triton's interpreter here (not the
    compiled CPU loops, which the CPU would take first), a launch per step (the
    grid-synchronized launches have tests of their own); ``sequence``: ``SEQUENCE`` too."""
    use_scan_loops(monkeypatch, False)
    monkeypatch.setattr(scan_triton, "ALLOW_INTERPRETER", True)
    monkeypatch.setattr(scan_triton, "GRID_SYNC", False)
    if sequence is not None:
        monkeypatch.setattr(scan_triton, "SEQUENCE", sequence)


def interpreter_tiles(monkeypatch) -> None:
    """The step kernels' larger tiles of earlier defaults (16 units a program, chunks of
    32): Triton's interpreter runs a launch's programs one after another, and the
    defaults' smaller tiles (two to four times the programs) made the interpreted tests
    ~100 s slower. The default tiles are tested by test_step_kernels_over_several_
    program_blocks and, compiled on CUDA, by tests/test_gpu.py."""
    for name, value in dict(BJ=16, BK=32, BJ_WHOLE_BATCH=16, BK_WHOLE_BATCH=32).items():
        monkeypatch.setattr(scan_triton, name, value)


def recorded_starts(monkeypatch, keep: Callable) -> list:
    """(T, B, what it returned) of every ``scan_triton._start`` call from now on that
    ``keep(T, B, returned)`` accepts: the launches' grids, tiles and sync arguments."""
    starts, start = [], scan_triton._start

    def recording(T, B, *args, **kwargs):
        out = start(T, B, *args, **kwargs)
        if keep(T, B, out):
            starts.append((T, B, out))
        return out

    monkeypatch.setattr(scan_triton, "_start", recording)
    return starts


def one_program_grid(monkeypatch, request) -> None:
    """Grid-synchronized launches on, with tiles that put a test's recurrence (up to 32
    rows and units a seed) in one program: Triton's interpreter runs a launch's programs
    one after another, so a barrier of two would never open. Several programs are
    tested compiled, on CUDA (tests/test_gpu.py). The barrier is a strict one here: the
    k-th barrier a program reaches must say k, else its counter is spoiled; after the
    test every launch's counter must read T - 1 (every barrier reached, in order)."""
    launches = recorded_starts(monkeypatch, lambda T, B, out: out[4].get("GRID"))

    def check() -> None:
        for T, _, (*_, sync) in launches:
            assert sync["NPROG"] == 1 and sync["CNT"].tolist() == [T - 1] * len(sync["CNT"]), (T, sync)

    monkeypatch.setattr(scan_triton, "GRID_SYNC", True)
    monkeypatch.setattr(scan_triton, "_step_sync", _strict_step_sync)
    for name in ("BJ", "BJ_WHOLE_BATCH", "ROWS_FREE_GRID"):
        monkeypatch.setattr(scan_triton, name, 32)
    request.addfinalizer(check)


@pytest.fixture(params=["scan", "scan-cpp", "scan-cpp-f32", "scan-cpp-split",
                        pytest.param("scan-triton", marks=needs_kernels),
                        pytest.param("scan-triton-seq", marks=needs_kernels),
                        pytest.param("scan-triton-grid", marks=needs_kernels),
                        pytest.param("fused", marks=needs_kernels)])
def impl(request, monkeypatch) -> Impl:
    use_scan_loops(monkeypatch, IMPLS[request.param].compiled)
    if IMPLS[request.param].split:
        split_every_step(request)
    monkeypatch.setattr(scan_triton, "ALLOW_INTERPRETER", IMPLS[request.param].steps)
    monkeypatch.setattr(scan_triton, "SEQUENCE", IMPLS[request.param].seq)
    monkeypatch.setattr(scan_triton, "GRID_SYNC", IMPLS[request.param].grid)
    interpreter_tiles(monkeypatch)
    if IMPLS[request.param].grid:
        one_program_grid(monkeypatch, request)
    return IMPLS[request.param]


def norm_step(a, kind, gamma, beta, batch_stats, pm, pv, t, stats, eps=1e-5):
    """N(a) of one step as SeqNorm.step computes it; appends the batch statistics it used."""
    if kind is None:
        return a
    if kind == "batch":
        if batch_stats:
            var, mean = torch.var_mean(a, 0, correction=0)
            stats.append((mean, var))
        else:
            r = min(t, pm.shape[0] - 1)
            mean, var = pm[r], pv[r]
        out = (a - mean) / torch.sqrt(var + eps) * gamma
    else:
        out = F.layer_norm(a, (a.shape[-1],), eps=eps) * gamma
    return out if beta is None else out + beta


def stacked(stats):
    return (torch.stack([m for m, _ in stats]), torch.stack([v for _, v in stats])) if stats else None


def reference(u, h0, w, g, norm, batch_stats, pm, pv, act, eps=1e-5):
    """The recurrence written plainly, one step at a time (float64 in the tests)."""
    h, outs, stats = h0, [], []
    for t in range(u.shape[1]):
        n = norm_step(h @ w.t(), norm, g, None, batch_stats, pm, pv, t, stats, eps)
        h = torch.tanh(n + u[:, t]) if act == "tanh" else torch.relu(n + u[:, t])
        outs.append(h)
    return torch.stack(outs, 1), stacked(stats)


def rel_err(a, b):
    """‖a − b‖ / ‖b‖: float32 arithmetic lands far under 1e-4 against a float64 reference,
    float64 under 1e-12."""
    return ((a.double() - b).norm() / b.norm().clamp(min=1e-12)).item()


CASES = [(None, True, "tanh"), ("batch", True, "tanh"), ("batch", False, "tanh"),
         ("layer", True, "tanh"), (None, True, "relu"), ("batch", True, "relu")]


@pytest.mark.parametrize("norm,batch_stats,act", CASES)
@pytest.mark.parametrize("B,T,H", [(5, 7, 20), (17, 3, 9)])
def test_rnn_matches_reference(impl, norm, batch_stats, act, B, T, H):
    torch.manual_seed(B * 100 + H)
    u = torch.randn(B, T, H, dtype=torch.float64, requires_grad=True)
    h0 = torch.randn(B, H, dtype=torch.float64, requires_grad=True)
    w = (torch.randn(H, H, dtype=torch.float64) / H ** 0.5).requires_grad_()
    g = (torch.rand(H, dtype=torch.float64) + 0.5).requires_grad_()
    pm, pv = torch.randn(3, H, dtype=torch.float64), torch.rand(3, H, dtype=torch.float64) + 0.5
    h_ref, stats = reference(u, h0, w, g, norm, batch_stats, pm, pv, act)
    d = impl.dtype  # the kernel computes in float32; compare with the float64 reference
    h_f, mean_f, var_f = impl.rnn(u.to(d), h0.to(d), w.to(d), g.to(d) if norm else None,
                                  norm=norm, batch_stats=batch_stats, pop_mean=pm.to(d),
                                  pop_var=pv.to(d), act=act)
    assert rel_err(h_f, h_ref) < impl.out_tol
    if stats is not None:
        torch.testing.assert_close(mean_f.double(), stats[0], rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(var_f.double(), stats[1], rtol=1e-4, atol=1e-5)
    dy = torch.randn_like(h_ref)
    params = [u, h0, w] + ([g] if norm else [])
    g_ref = torch.autograd.grad((h_ref * dy).sum(), params)
    uf, h0f, wf, gf = (t.detach().to(d).requires_grad_() for t in (u, h0, w, g))
    h_f, _, _ = impl.rnn(uf, h0f, wf, gf if norm else None, norm=norm, batch_stats=batch_stats,
                         pop_mean=pm.to(d), pop_var=pv.to(d), act=act)
    g_f = torch.autograd.grad((h_f * dy.to(d)).sum(), [uf, h0f, wf] + ([gf] if norm else []))
    for name, a, b in zip(["u", "h0", "w_hh", "gamma"], g_f, g_ref):
        assert rel_err(a, b) < impl.grad_tol, f"grad {name}: relative error {rel_err(a, b):.2e}"
    assert_ran(impl, norm, batch_stats=batch_stats)


@needs_kernels
def test_kernel_population_rows_past_training_length_reuse_last():
    torch.manual_seed(0)
    B, T, H = 4, 6, 16
    u, h0, w, g = torch.randn(B, T, H), torch.randn(B, H), torch.randn(H, H) / 4, torch.ones(H)
    pm, pv = torch.randn(2, H), torch.rand(2, H) + 0.5
    h, mean, _ = fused.fused_rnn(u, h0, w, g, norm="batch", batch_stats=False, pop_mean=pm, pop_var=pv)
    torch.testing.assert_close(mean[0], pm[0])
    for t in range(1, T):
        torch.testing.assert_close(mean[t], pm[1])
    ref, _ = reference(u.double(), h0.double(), w.double(), g.double(), "batch", False,
                       pm.double(), pv.double(), "tanh")
    torch.testing.assert_close(h.double(), ref, rtol=1e-4, atol=2e-5)


def test_shapes_beyond_one_tile_are_not_fused():
    assert not fused.available(torch.device("cuda"), 100, 1000)
    assert not fused.available(torch.device("cpu"), 4, 8)  # interpreter only when a test allows it


# -- LSTM and GRU ----------------------------------------------------------------------

def lstm_reference(u, h0, c0, w, g, gc, bc, pm, pv, cpm, cpv, *, norm, cell_norm, batch_stats):
    """The LSTM of LoopCore.gates with NormLoopCore's norms, plainly, one step at a time."""
    h, c, outs, hh_stats, c_stats = h0, c0, [], [], []
    for t in range(u.shape[1]):
        i, f, gg, o = (u[:, t] + norm_step(h @ w.t(), norm, g, None, batch_stats, pm, pv, t, hh_stats)).chunk(4, -1)
        c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(gg)
        h = torch.sigmoid(o) * torch.tanh(norm_step(c, cell_norm, gc, bc, batch_stats, cpm, cpv, t, c_stats))
        outs.append(h)
    stats = {"hh": stacked(hh_stats), "c": stacked(c_stats)}
    return (torch.stack(outs, 1), c), {k: v for k, v in stats.items() if v is not None}


def gru_reference(u, h0, w, b_hn, g, pm, pv, *, norm, batch_stats):
    """nn.GRU's cell with N on W_hh h and b_hn inside the reset gate's product."""
    h, outs, stats = h0, [], []
    for t in range(u.shape[1]):
        ar, az, an = norm_step(h @ w.t(), norm, g, None, batch_stats, pm, pv, t, stats).chunk(3, -1)
        ur, uz, un = u[:, t].chunk(3, -1)
        r, z = torch.sigmoid(ur + ar), torch.sigmoid(uz + az)
        h = (1 - z) * torch.tanh(un + r * (an + b_hn)) + z * h
        outs.append(h)
    return (torch.stack(outs, 1),), ({"hh": stacked(stats)} if stats else {})


def assert_matches(impl: Impl, run_fused, run_ref, leaves: dict):
    """Outputs, batch statistics and the gradients of every leaf: the implementation in its
    dtype against the reference in float64, for one random cotangent on every output."""
    ref_in = {k: v.clone().requires_grad_() for k, v in leaves.items()}
    f_in = {k: v.detach().to(impl.dtype).requires_grad_() for k, v in leaves.items()}
    ref_out, ref_stats = run_ref(**ref_in)
    f_out, f_stats = run_fused(**f_in)
    for a, b in zip(f_out, ref_out, strict=True):
        assert rel_err(a, b) < impl.out_tol
    assert f_stats.keys() == ref_stats.keys()
    for k, (mean, var) in f_stats.items():
        assert not mean.requires_grad and not var.requires_grad
        torch.testing.assert_close(mean.double(), ref_stats[k][0], rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(var.double(), ref_stats[k][1], rtol=1e-4, atol=1e-5)
    cot = [torch.randn_like(o) for o in ref_out]
    g_ref = torch.autograd.grad(sum((o * c).sum() for o, c in zip(ref_out, cot)), list(ref_in.values()))
    g_f = torch.autograd.grad(sum((o * c.to(impl.dtype)).sum() for o, c in zip(f_out, cot)),
                              list(f_in.values()))
    for name, a, b in zip(leaves, g_f, g_ref):
        assert rel_err(a, b) < impl.grad_tol, f"grad {name}: relative error {rel_err(a, b):.2e}"


def gate_leaves(B, T, H, gates, norm, seed):
    torch.manual_seed(seed)
    d = dict(dtype=torch.float64)
    leaves = dict(u=torch.randn(B, T, gates * H, **d), h0=torch.randn(B, H, **d),
                  w=torch.randn(gates * H, H, **d) / H ** 0.5)
    if norm:
        leaves["g"] = torch.rand(gates * H, **d) + 0.5
    # population rows: fewer than T, so later steps reuse the last row
    pops = (torch.randn(3, gates * H, **d) * 0.3, torch.rand(3, gates * H, **d) + 0.5)
    return leaves, pops


# (recurrent norm, cell norm, batch statistics): every recurrent norm {none, batch with
# batch statistics, batch with population statistics, layer} with every cell norm.
LSTM_CASES = [(n, c, bs) for n, bs0 in ((None, True), ("batch", True), ("batch", False), ("layer", False))
              for c in (None, "batch", "layer") for bs in [bs0 if n == "batch" or c == "batch" else True]]
SHAPES = [(5, 6, 16), (7, 4, 9)]


def run_lstm_case(impl, B, T, H, norm, cell_norm, batch_stats):
    leaves, (pm, pv) = gate_leaves(B, T, H, 4, norm, B * 100 + H)
    leaves["c0"] = torch.randn(B, H, dtype=torch.float64)
    if cell_norm:
        leaves["gc"] = torch.rand(H, dtype=torch.float64) + 0.5
        leaves["bc"] = torch.randn(H, dtype=torch.float64) * 0.1
    cpm, cpv = torch.randn(2, H, dtype=torch.float64), torch.rand(2, H, dtype=torch.float64) + 0.5
    kw = dict(norm=norm, cell_norm=cell_norm, batch_stats=batch_stats)

    def run_ref(u, h0, c0, w, g=None, gc=None, bc=None):
        return lstm_reference(u, h0, c0, w, g, gc, bc, pm, pv, cpm, cpv, **kw)

    def run_fused(u, h0, c0, w, g=None, gc=None, bc=None):
        d = impl.dtype
        h, c, stats = impl.lstm(u, h0, c0, w, g, pop_mean=pm.to(d), pop_var=pv.to(d), gamma_c=gc,
                                beta_c=bc, cell_pop_mean=cpm.to(d), cell_pop_var=cpv.to(d), **kw)
        return (h, c), stats

    assert_matches(impl, run_fused, run_ref, leaves)
    assert_ran(impl, norm, cell_norm, batch_stats=batch_stats)


@pytest.mark.parametrize("norm,cell_norm,batch_stats", LSTM_CASES)
@pytest.mark.parametrize("B,T,H", SHAPES)
def test_lstm_matches_reference(impl, norm, cell_norm, batch_stats, B, T, H):
    run_lstm_case(impl, B, T, H, norm, cell_norm, batch_stats)


def run_gru_case(impl, B, T, H, norm, batch_stats):
    leaves, (pm, pv) = gate_leaves(B, T, H, 3, norm, B * 100 + H + 1)
    leaves["b_hn"] = torch.randn(H, dtype=torch.float64) * 0.5
    kw = dict(norm=norm, batch_stats=batch_stats)

    def run_ref(u, h0, w, b_hn, g=None):
        return gru_reference(u, h0, w, b_hn, g, pm, pv, **kw)

    def run_fused(u, h0, w, b_hn, g=None):
        h, stats = impl.gru(u, h0, w, b_hn, g, pop_mean=pm.to(impl.dtype), pop_var=pv.to(impl.dtype), **kw)
        return (h,), stats

    assert_matches(impl, run_fused, run_ref, leaves)
    assert_ran(impl, norm, batch_stats=batch_stats)


def run_rnn_case(impl, B, T, H, norm, batch_stats, seed=7):
    """A tanh RNN case against the float64 reference: outputs, batch statistics, gradients."""
    leaves, (pm, pv) = gate_leaves(B, T, H, 1, norm, seed)

    def run_ref(u, h0, w, g=None):
        h, stats = reference(u, h0, w, g, norm, batch_stats, pm, pv, "tanh")
        return (h,), ({"hh": stats} if stats else {})

    def run_fused(u, h0, w, g=None):
        h, mean, var = impl.rnn(u, h0, w, g, norm=norm, batch_stats=batch_stats, pop_mean=pm.to(impl.dtype),
                                pop_var=pv.to(impl.dtype))
        return (h,), ({"hh": (mean, var)} if norm == "batch" and batch_stats else {})

    assert_matches(impl, run_fused, run_ref, leaves)
    assert_ran(impl, norm, batch_stats=batch_stats)


def run_cell_case(impl, cell, B, T, H, norm, cell_norm, batch_stats, rnn_seed=7):
    """``run_lstm_case``, ``run_gru_case`` or ``run_rnn_case`` for ``cell``."""
    if cell == "lstm":
        run_lstm_case(impl, B, T, H, norm, cell_norm, batch_stats)
    elif cell == "gru":
        run_gru_case(impl, B, T, H, norm, batch_stats)
    else:
        run_rnn_case(impl, B, T, H, norm, batch_stats, rnn_seed)


@pytest.mark.parametrize("norm,batch_stats", [(None, True), ("batch", True), ("batch", False), ("layer", True)])
@pytest.mark.parametrize("B,T,H", SHAPES)
def test_gru_matches_reference(impl, norm, batch_stats, B, T, H):
    run_gru_case(impl, B, T, H, norm, batch_stats)


@needs_kernels
def test_weights_loaded_every_step_give_the_same_result(monkeypatch):
    """Large tiles reload W_hh each step instead of holding it; that path computes the same."""
    monkeypatch.setattr(fused, "HOIST_LIMIT", 0)
    run_lstm_case(IMPLS["fused"], 5, 4, 16, "layer", "batch", True)
    run_gru_case(IMPLS["fused"], 5, 4, 16, "batch", True)


@needs_kernels
@pytest.mark.filterwarnings("ignore:invalid value encountered")  # inf - inf: an infinity's remainder
def test_tf32_parts_round_to_nearest_and_add_up_exactly():
    """``scan_triton._tf32`` (the "split" product's operands): hi is x rounded to 10
    mantissa bits, to nearest with ties away from zero (cvt.rna.tf32.f32), lo = x - hi
    exactly; infinities and NaN (any payload) stay in hi; from 0x7F7FF000 up, hi is an
    infinity, as cvt.rna's."""
    torch.manual_seed(0)
    base = torch.randn(4000) * torch.logspace(-30, 30, 4000)
    ties = ((base[:8].view(torch.int32) & -8192) | 4096).view(torch.float32)  # halfway between two TF32 values
    payload_nan = torch.tensor([0x7FFFFFFF, -1], dtype=torch.int32).view(torch.float32)  # + 4096 would carry out
    special = torch.cat([torch.tensor([float("inf"), -float("inf"), float("nan")]), payload_nan])
    top = torch.tensor([0x7F7FEFFF, 0x7F7FF000, 0x7F7FFFFF], dtype=torch.int32).view(torch.float32)
    x = torch.cat([base, ties, torch.tensor([0.0, -0.0, 3.4e38, 1e-40]), special, top, -top])
    n = triton.next_power_of_2(x.numel())
    x = torch.cat([x, torch.zeros(n - x.numel())])
    hi, lo = torch.empty_like(x), torch.empty_like(x)
    _tf32_parts[(1,)](x, hi, lo, n)
    at = 4012  # the specials, then the top of the range
    assert hi[at] == float("inf") and hi[at + 1] == -float("inf") and torch.isnan(hi[at + 2:at + 5]).all()
    top_hi = hi[at + 5:at + 11]
    assert torch.isfinite(top_hi[0]) and torch.isinf(top_hi[1:3]).all() and top_hi[3] == -top_hi[0]
    assert torch.isinf(top_hi[4:]).all() and (top_hi[4:] < 0).all()
    finite = torch.isfinite(x) & (x.abs() < top[1])
    assert ((hi[finite].view(torch.int32) & 8191) == 0).all()
    assert torch.equal(hi[finite] + lo[finite], x[finite])  # float32: exact
    down = (x.view(torch.int32) & -8192).view(torch.float32)  # truncated, toward zero
    up = ((x.view(torch.int32) & -8192) + 8192).view(torch.float32)  # the next TF32 value away from zero
    near = torch.where((x - down).abs() < (up - x).abs(), down, up)  # a tie goes away from zero
    assert torch.equal(hi[finite], near[finite])
    assert torch.equal(hi[4000:4008], up[4000:4008])  # the ties


@needs_kernels
@pytest.mark.parametrize("prec", ["split", "tf32x3", "ieee"])
def test_step_product_is_float32_accurate(prec):
    """The step kernels' product (``_mm_n``) at each float32 setting over several chunks
    and a partial one, rows and columns masked: within float32 rounding of the float64
    product. The interpreter's products are float32 whatever the setting, so here this
    checks that "split" adds all three of its products, and every setting's chunks and
    masks; tests/test_gpu.py runs the compiled ones, where TF32 alone is 100 times off."""
    from conftest import step_product

    torch.manual_seed(1)
    a, w = torch.randn(13, 100), torch.randn(100, 5)
    want = a.double() @ w.double()
    got = step_product(a, w, prec)
    assert ((got.double() - want).norm() / want.norm()).item() < 1e-6


def test_scan_at_a_batch_of_one_and_a_single_step(scan_loops):
    """Edge shapes: T = 1 (no carried gradient) and B = 1 (batch statistics of one sample)."""
    impl = IMPLS["scan-cpp" if scan_loops == "scan-cpp" else "scan"]
    for B, T in ((3, 1), (1, 4)):
        run_lstm_case(impl, B, T, 5, "layer", "layer", True)
        run_gru_case(impl, B, T, 5, None, True)
    run_lstm_case(impl, 3, 1, 5, "batch", "batch", True)


def test_gated_cells_reject_bad_arguments(impl):
    u, h0, w = torch.zeros(2, 3, 8), torch.zeros(2, 2), torch.zeros(8, 2)
    with pytest.raises(ValueError, match="population statistics needed"):
        impl.lstm(u, h0, h0, w, norm="batch", batch_stats=False)
    with pytest.raises(ValueError, match="unknown norm"):
        impl.lstm(u, h0, h0, w, cell_norm="group")
    with pytest.raises(ValueError, match="3-gate cell"):
        impl.gru(u, h0, w, torch.zeros(2))
    with pytest.raises(ValueError, match=r"w_hh must be \(8, 2\)"):
        impl.lstm(u, h0, h0, w.t())
    with pytest.raises(ValueError, match="gamma_c must be"):
        impl.lstm(u, h0, h0, w, cell_norm="layer", gamma_c=torch.ones(8))


# -- against the real cores: the contract the fast path is wired by -----------------------

def fused_core(impl, core, x, h0, c0=None):
    """``core(x, state)``'s hidden sequence through the kernels, computed as a wiring of the
    fast path would: the input term as NormLoopCore.input_term, b_hh folded into u (for the
    GRU without b_hn), the norms' own parameters, and the returned batch statistics folded
    into the running ones with one update (pooled over steps with shared statistics), as
    SeqNorm.flush does."""
    _, w_hh, _, b_hh = core.weights(0)
    H = core.hidden_size
    u = core.input_term(0, x, None)
    n_hh = getattr(core, "norm_hh", None)
    n_hh = n_hh[0] if n_hh is not None else None
    n_c = getattr(core, "norm_c", None)
    n_c = n_c[0] if n_c is not None else None
    norms = [n for n in (n_hh, n_c) if n is not None]
    kw = dict(batch_stats=core.training or any(n.eval_stats == "batch" for n in norms),
              eps=norms[0].eps if norms else 1e-5, **norm_args(n_hh, "", "pop_"))
    if core.cell == "lstm":
        h, c, stats = impl.lstm(u + b_hh, h0, c0, w_hh, **kw, **norm_args(n_c, "cell_", "cell_pop_"))
    else:
        b_rz = torch.cat([b_hh[:2 * H], b_hh.new_zeros(H)])
        h, stats = impl.gru(u + b_rz, h0, w_hh, b_hh[2 * H:], **kw)
        c = None
    for name, n in (("hh", n_hh), ("c", n_c)):
        if name in stats and core.training:
            mean, var = stats[name]
            count = mean.new_full((mean.shape[0], 1), float(x.shape[0]))
            if n.stats == "shared":  # one population row: the steps' moments pooled
                mean, var, count = pool(mean, var, count)
            n._update(mean, var, count)
    return h, c


def norm_args(n, prefix, pop_prefix):
    """Keyword arguments of the fused functions for one SeqNorm (or none)."""
    if n is None:
        return {}
    gamma = "gamma_hh" if prefix == "" else "gamma_c"
    kw = {prefix + "norm": n.kind, gamma: n.weight}
    if n.bias is not None:
        kw["beta_c"] = n.bias
    if n.kind == "batch":
        kw[pop_prefix + "mean"], kw[pop_prefix + "var"] = n.running_mean, n.running_var
    return kw


MODULE_CASES = [("bn-lstm", {}), ("ln-lstm", {}), ("lstm-loop", {}), ("bn-gru", {}), ("ln-gru", {}),
                ("gru-loop", {}), ("bn-lstm", {"norm_stats": "shared"}), ("bn-gru", {"norm_eval": "batch"})]


@pytest.mark.parametrize("name,overrides", MODULE_CASES)
def test_fast_equals_model_core(impl, name, overrides):
    """Train mode (outputs, every parameter's gradient, running statistics over two
    batches) and eval mode (before any training: identity population statistics; after:
    population rows, with evaluation longer than training) against model.core."""
    torch.manual_seed(3)
    B, T, H = 6, 4, 16
    ref = baselines.create(name, input_size=3, output_size=2, hidden_size=16, **overrides).core
    lstm = ref.cell == "lstm"
    with torch.no_grad():  # γ and β away from their init, so that a mix-up would show
        for n in ref.modules():
            if isinstance(n, SeqNorm):
                n.weight.uniform_(0.3, 1.5)
                if n.bias is not None:
                    n.bias.uniform_(-0.3, 0.3)
    fast = copy.deepcopy(ref)

    def both(x, h0, c0):
        want, state = ref(x, (h0[None], c0[None]) if lstm else h0[None])
        got, c_last = fused_core(impl, fast, x, h0, c0)
        assert rel_err(got, want.detach().double()) < 1e-5
        if lstm:
            assert rel_err(c_last, state[1][0].detach().double()) < 1e-5
        return want, got, state, c_last

    ref.eval(), fast.eval()
    x = torch.randn(B, T, 3)
    with torch.no_grad():
        both(x, torch.randn(B, H), torch.randn(B, H))
    ref.train(), fast.train()
    for step in range(2):
        x, h0, c0 = torch.randn(B, T, 3), torch.randn(B, H), torch.randn(B, H)
        want, got, state, c_last = both(x, h0, c0)
    dy, dc = torch.randn(B, T, H), torch.randn(B, H)
    ((want * dy).sum() + ((state[1][0] * dc).sum() if lstm else 0)).backward()
    ((got * dy).sum() + ((c_last * dc).sum() if lstm else 0)).backward()
    for (k, p), q in zip(ref.named_parameters(), fast.parameters(), strict=True):
        assert rel_err(q.grad, p.grad.double()) < 1e-4, k
    for (k, a), b in zip(ref.named_buffers(), fast.buffers(), strict=True):
        torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-6, msg=k)
    ref.eval(), fast.eval()
    with torch.no_grad():
        both(torch.randn(B, T + 2, 3), torch.randn(B, H), torch.randn(B, H))


# -- compiled, not interpreted ---------------------------------------------------------------

# The interpreter runs a kernel as Python and misses what only Triton's compiler checks
# (every return of a helper agreeing in type, loop-carried values keeping theirs, shared
# memory): compile the gated kernels for sm_90, which needs no GPU (Triton ships ptxas).
def compile_for_sm90(cases: str, count: int) -> None:
    """Compile each (kernel, constexprs) of ``cases`` (a script that defines CASES,
    SCALARS, TILES and OPTIONS) for sm_90 in a fresh process without the interpreter."""
    import os
    import subprocess
    import sys

    pytest.importorskip("triton.backends.nvidia")
    script = r"""
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
""" + cases + r"""
for fn, consts in CASES:
    consts = dict(TILES, **consts)
    options = OPTIONS(consts)
    names = fn.arg_names
    consts = {k: v for k, v in consts.items() if k in names}  # the tiles a kernel takes
    sig = {n: "constexpr" if n in consts else SCALARS.get(n, "*fp32") for n in names}
    src = ASTSource(fn=fn, signature=sig, constexprs={(names.index(k),): v for k, v in consts.items()})
    k = triton.compile(src, target=GPUTarget("cuda", 90, 32), options=options)
    assert k.metadata.shared <= 227 * 1024, (fn.__name__, consts, k.metadata.shared)
    # a grid barrier's arrival is an atomic that releases at GPU scope; every thread's poll an acquire load
    ptx = k.asm["ptx"].splitlines()
    release = any(("red." in ln or "atom." in ln) and "release" in ln and ".gpu" in ln for ln in ptx)
    assert not (consts.get("GRID") or consts.get("POLL")) or release, (fn.__name__, consts)  # POLL: scan_triton_rows
    assert not consts.get("POLL") or any("ld.acquire.gpu" in ln for ln in ptx), (fn.__name__, consts)
    print(fn.__name__, "ok", flush=True)
"""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env.setdefault("TRITON_DEFAULT_FP_FUSION", "1")
    res = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    assert res.stdout.count(" ok") == count


@pytest.mark.slow
def test_gated_kernels_compile_for_sm90():
    compile_for_sm90(r"""
from baselines import fused

SCALARS = {"B": "i32", "T": "i32", "HN": "i32", "ROWS": "i32", "CROWS": "i32", "eps": "fp32"}
CASES = [  # BB != BH; both statistics layouts; weights held and reloaded; both precisions
    (fused._lstm_fwd, dict(NORM=1, CNORM=2, BATCH_STATS=False, HOIST=True, PREC="ieee")),
    (fused._lstm_bwd, dict(NORM=1, CNORM=2, BATCH_STATS=False, HOIST=True, PREC="ieee")),
    (fused._lstm_fwd, dict(NORM=2, CNORM=1, BATCH_STATS=True, HOIST=False, PREC="tf32")),
    (fused._lstm_bwd, dict(NORM=2, CNORM=1, BATCH_STATS=True, HOIST=False, PREC="tf32")),
    (fused._gru_fwd, dict(NORM=1, BATCH_STATS=True, HOIST=False, PREC="ieee")),
    (fused._gru_bwd, dict(NORM=1, BATCH_STATS=True, HOIST=False, PREC="ieee")),
    (fused._gru_fwd, dict(NORM=2, BATCH_STATS=False, HOIST=True, PREC="tf32")),
    (fused._gru_bwd, dict(NORM=2, BATCH_STATS=False, HOIST=True, PREC="tf32")),
]
TILES = dict(BB=16, BH=32)
OPTIONS = lambda consts: dict(num_warps=4, num_stages=1)
""", 8)


@pytest.mark.slow
def test_step_kernels_compile_for_sm90():
    """The CUDA step kernels (baselines/scan_triton.py, scan_triton_rows.py) and their
    whole-sequence and grid-synchronized launches through Triton's compiler for sm_90,
    with the float32 setting's product (3xTF32, each product in its own accumulator;
    Triton's chained tf32x3 too)."""
    compile_for_sm90(r"""
from baselines import scan_triton as st
from baselines import scan_triton_rows as rows
from benchmarks import grid_barriers

SCALARS = {"B": "i32", "H": "i32", "S": "i32", "B0": "i32", "t": "i32", "T": "i32", "hoff": "i32", "coff": "i32",
           "eps": "fp32", "ceps": "fp32", "CNT": "*i32", "NPROG": "i32", "k": "i32"}
SEQ = dict(BB=st.ROWS_SEQ, BJ=128, BK=st.BK_SEQ, PREC=st.FP32_DOT_SEQ, GRID=False, GROUP=False, POLL=False)
# the step kernels' tiles, a barrier between steps: of the programs that share rows and seed, every thread polling
GRID = dict(GRID=True, GROUP=True, POLL=True, BK=st.BK_WHOLE_BATCH)
ROWS = dict(GROUP=True, XGROUP=2, POLL=True, BJ=st.BJ, BK=st.BK, NRB=8)  # batch norm's: exchanges on column groups
BN = dict(MODE=1, HAS_BETA=False, HAS_SHIFT=False, HAS_VAR=True)
LN = dict(MODE=3, HAS_BETA=False, HAS_SHIFT=False, HAS_VAR=False)
POP = dict(MODE=2, HAS_BETA=False, HAS_SHIFT=True, HAS_VAR=False)
CASES = [  # every kernel; batch norm (the whole batch, 128 rows) and population or no norm (32 rows)
    (st._rnn_fwd, dict(BN, RELU=False, BB=128)), (st._rnn_fwd, dict(POP, RELU=True, BB=32)),
    (st._rnn_bwd, dict(MODE=1, RELU=False, HAS_NEXT=True, BB=128)),
    (st._rnn_bwd, dict(MODE=0, RELU=True, HAS_NEXT=True, BB=32)),
    (st._lstm_fwd, dict(BN, CMODE=1, C_BETA=True, C_SHIFT=False, C_VAR=True, BB=128)),
    (st._lstm_fwd, dict(POP, CMODE=2, C_BETA=True, C_SHIFT=True, C_VAR=False, BB=32)),
    (st._lstm_bwd, dict(MODE=1, CMODE=1, HAS_NEXT=True, HAS_LAST=False, BB=128)),
    (st._lstm_bwd, dict(MODE=0, CMODE=0, HAS_NEXT=False, HAS_LAST=True, BB=32)),
    (st._gru_fwd, dict(BN, BB=128)), (st._gru_fwd, dict(POP, BB=32)),
    (st._gru_bwd, dict(MODE=1, HAS_NEXT=True, BB=128)), (st._gru_bwd, dict(MODE=2, HAS_NEXT=True, BB=32)),
    # other row blocks (a batch of 64 or fewer rows); TF32 products (PyTorch's TF32 setting), Triton's tf32x3
    (st._lstm_fwd, dict(BN, CMODE=1, C_BETA=True, C_SHIFT=False, C_VAR=True, BB=64, PREC="tf32")),
    (st._lstm_bwd, dict(MODE=1, CMODE=0, HAS_NEXT=True, HAS_LAST=True, BB=16, PREC="tf32")),
    (st._lstm_fwd, dict(POP, CMODE=2, C_BETA=True, C_SHIFT=True, C_VAR=False, BB=32, PREC="tf32x3")),
    (st._lstm_bwd, dict(MODE=0, CMODE=0, HAS_NEXT=True, HAS_LAST=False, BB=32, PREC="tf32x3")),
    # fewer units per program than the tensor cores' tile (step_sweep.py --sweep units)
    (st._lstm_fwd, dict(BN, CMODE=1, C_BETA=True, C_SHIFT=False, C_VAR=True, BB=128, BJ=4)),
    (st._lstm_bwd, dict(MODE=1, CMODE=1, HAS_NEXT=True, HAS_LAST=False, BB=128, BJ=4)),
    (st._gru_fwd, dict(BN, BB=128, BJ=8)), (st._gru_bwd, dict(MODE=1, HAS_NEXT=True, BB=128, BJ=8)),
    (st._rnn_fwd, dict(BN, RELU=False, BB=128, BJ=4)),
    (st._rnn_bwd, dict(MODE=1, RELU=False, HAS_NEXT=True, BB=128, BJ=4)),
    # whole sequences in one launch: every unit of ROWS_SEQ rows in a program
    (st._rnn_fwd_seq, dict(POP, RELU=False, **SEQ)), (st._rnn_bwd_seq, dict(MODE=0, RELU=True, **SEQ)),
    (st._lstm_fwd_seq, dict(POP, CMODE=2, C_BETA=True, C_SHIFT=True, C_VAR=False, **SEQ)),
    (st._lstm_bwd_seq, dict(MODE=0, CMODE=0, HAS_LAST=True, **SEQ)),
    (st._gru_fwd_seq, dict(POP, **SEQ)), (st._gru_bwd_seq, dict(MODE=2, **SEQ)),
    # layer norm (whole sequences only): over every gate of a row, and of c_t
    (st._rnn_fwd_seq, dict(LN, RELU=False, **SEQ)), (st._rnn_bwd_seq, dict(MODE=3, RELU=False, **SEQ)),
    (st._lstm_fwd_seq, dict(LN, CMODE=3, C_BETA=True, C_SHIFT=False, C_VAR=False, **SEQ)),
    (st._lstm_bwd_seq, dict(MODE=3, CMODE=3, HAS_LAST=False, **SEQ)),
    (st._gru_fwd_seq, dict(LN, **SEQ)), (st._gru_bwd_seq, dict(MODE=3, **SEQ)),
    # grid-synchronized launches: batch norm's whole batch (4 units a program), no norm (16 rows, 8 units)
    (st._rnn_fwd_seq, dict(BN, RELU=False, BB=128, BJ=4, **GRID)),
    (st._rnn_bwd_seq, dict(MODE=0, RELU=True, BB=16, **GRID)),
    (st._lstm_fwd_seq, dict(BN, CMODE=1, C_BETA=True, C_SHIFT=False, C_VAR=True, BB=128, BJ=4, **GRID)),
    (st._lstm_bwd_seq, dict(MODE=1, CMODE=1, HAS_LAST=True, BB=128, BJ=4, **GRID)),
    (st._lstm_fwd_seq, dict(POP, CMODE=0, C_BETA=False, C_SHIFT=False, C_VAR=False, BB=16, **GRID)),
    (st._lstm_bwd_seq, dict(MODE=0, CMODE=0, HAS_LAST=False, BB=16, **GRID)),
    (st._gru_fwd_seq, dict(BN, BB=128, BJ=4, **GRID)), (st._gru_bwd_seq, dict(MODE=0, BB=16, **GRID)),
    # rows-split grid programs with chunks of 32 (BK_GRID, where H is a multiple of 32)
    (st._lstm_fwd_seq, dict(POP, CMODE=0, C_BETA=False, C_SHIFT=False, C_VAR=False, BB=16, **dict(GRID, BK=32))),
    (st._gru_bwd_seq, dict(MODE=0, BB=16, **dict(GRID, BK=32))),
    # a barrier of every program, one thread polling with Triton's atomic
    (st._lstm_fwd_seq, dict(POP, CMODE=0, C_BETA=False, C_SHIFT=False, C_VAR=False, BB=16,
                            **dict(GRID, GROUP=False, POLL=False))),
    # the barriers alone, as benchmarks/grid_barriers.py times them
    (grid_barriers._barriers, dict(GROUP=True, POLL=True, STORE=1024, BB=16)),
    # batch norm with the rows split (scan_triton_rows): grid launches, steps' barriers of row groups, the
    # exchanges' of column groups (and one counter for every barrier)
    (rows._rnn_fwd_seq, dict(BN, RELU=False, BB=16, **ROWS)),
    (rows._rnn_bwd_seq, dict(MODE=1, RELU=True, BB=16, **ROWS)),
    (rows._lstm_fwd_seq, dict(BN, CMODE=1, C_BETA=True, C_SHIFT=False, C_VAR=True, BB=16, **ROWS)),
    (rows._lstm_bwd_seq, dict(MODE=1, CMODE=1, HAS_LAST=True, BB=16, **ROWS)),
    (rows._lstm_fwd_seq, dict(BN, CMODE=2, C_BETA=True, C_SHIFT=True, C_VAR=False, BB=16, **dict(ROWS, BK=32))),
    (rows._lstm_bwd_seq, dict(MODE=1, CMODE=0, HAS_LAST=False, BB=16, **dict(ROWS, BK=32))),
    (rows._gru_fwd_seq, dict(BN, BB=16, **ROWS)), (rows._gru_bwd_seq, dict(MODE=1, BB=16, **ROWS)),
    (rows._gru_bwd_seq, dict(MODE=1, BB=16, **dict(ROWS, GROUP=False, XGROUP=0))),
    # layer norm the same way (LN_SPLIT): every barrier a row group's
    (rows._rnn_fwd_seq, dict(LN, RELU=False, BB=16, **dict(ROWS, XGROUP=1))),
    (rows._rnn_bwd_seq, dict(MODE=3, RELU=False, BB=16, **dict(ROWS, XGROUP=1))),
    (rows._lstm_fwd_seq, dict(LN, CMODE=3, C_BETA=True, C_SHIFT=False, C_VAR=False, BB=16, **dict(ROWS, XGROUP=1))),
    (rows._lstm_bwd_seq, dict(MODE=3, CMODE=3, HAS_LAST=True, BB=16, **dict(ROWS, XGROUP=1))),
    (rows._gru_fwd_seq, dict(LN, BB=16, **dict(ROWS, BK=32, XGROUP=1))),
    (rows._gru_bwd_seq, dict(MODE=3, BB=16, **dict(ROWS, XGROUP=1))),
    (rows._lstm_fwd_seq, dict(LN, CMODE=0, C_BETA=False, C_SHIFT=False, C_VAR=False, BB=16, **dict(ROWS, XGROUP=1))),
    (rows._lstm_bwd_seq, dict(MODE=3, CMODE=0, HAS_LAST=False, BB=16, **dict(ROWS, XGROUP=1))),
    # and their launches per phase (BN_SPLIT_STEPS: no barrier in them)
    (rows._lstm_fwd, dict(BN, CMODE=1, C_BETA=True, C_SHIFT=False, C_VAR=True, BB=16, PHASE=3,
                          **dict(ROWS, XGROUP=0, POLL=False))),
    (rows._lstm_bwd, dict(MODE=1, CMODE=1, HAS_NEXT=True, HAS_LAST=False, BB=16, PHASE=2,
                          **dict(ROWS, XGROUP=0, POLL=False))),
    (rows._lstm_bwd, dict(MODE=3, CMODE=3, HAS_NEXT=True, HAS_LAST=False, BB=16, PHASE=3,
                          **dict(ROWS, XGROUP=0, POLL=False))),
]
TILES = dict(BJ=st.BJ, BK=st.BK, PREC=st.FP32_DOT, EARLY=True)  # EARLY: a launch per step's order of loads
OPTIONS = lambda consts: dict(num_warps=st.WARPS_SEQ if consts["BJ"] == 128 else
                              st.WARPS_WHOLE_BATCH if consts["BB"] >= 128 else st.WARPS_FREE)
""", 66)


# -- stacked seeds: one call for S independent models ---------------------------------------

STACK_CASES = [("rnn", None, None, True), ("rnn", "batch", None, True), ("rnn", "batch", None, False),
               ("rnn", "layer", None, True), ("lstm", None, None, True), ("lstm", "batch", "batch", True),
               ("lstm", "batch", "batch", False), ("lstm", "layer", "layer", True), ("lstm", None, "batch", False),
               ("gru", None, None, True), ("gru", "batch", None, True), ("gru", "batch", None, False),
               ("gru", "layer", None, True)]


@pytest.mark.parametrize("cell,norm,cell_norm,batch_stats", STACK_CASES)
def test_stacked_seeds_equal_one_by_one(cell, norm, cell_norm, batch_stats, scan_loops):
    """Seeds stacked (rows seed-major, parameters with a leading seed dimension) give each
    seed exactly what a call with its own arguments gives: outputs, batch statistics and
    the gradients of every argument (float64)."""
    S, B, T, H = 3, 4, 5, 6
    G = {"rnn": 1, "gru": 3, "lstm": 4}[cell]
    d = dict(dtype=torch.float64)
    torch.manual_seed(7)
    per_seed = []
    for _ in range(S):
        a = dict(u=torch.randn(B, T, G * H, **d), h0=torch.randn(B, H, **d), w_hh=torch.randn(G * H, H, **d) / 3,
                 gamma_hh=torch.rand(G * H, **d) + 0.5)
        if cell == "lstm":
            a.update(c0=torch.randn(B, H, **d), gamma_c=torch.rand(H, **d) + 0.5, beta_c=torch.randn(H, **d) * 0.1)
        if cell == "gru":
            a["b_hn"] = torch.randn(H, **d)
        per_seed.append(a)
    pops = dict(pop_mean=torch.randn(S, 2, G * H, **d), pop_var=torch.rand(S, 2, G * H, **d) + 0.5,
                cell_pop_mean=torch.randn(S, 3, H, **d), cell_pop_var=torch.rand(S, 3, H, **d) + 0.5)
    rows = ("u", "h0", "c0")  # seed-major rows; the rest stacks on a new seed dimension

    def call(args, pop):
        kw = dict(norm=norm, batch_stats=batch_stats, pop_mean=pop["pop_mean"], pop_var=pop["pop_var"])
        if cell == "rnn":
            h, mean, var = scan.scan_rnn(args["u"], args["h0"], args["w_hh"], args["gamma_hh"], **kw)
            return [h], ({"hh": (mean, var)} if norm == "batch" and batch_stats else {})
        if cell == "gru":
            h, stats = scan.scan_gru(args["u"], args["h0"], args["w_hh"], args["b_hn"], args["gamma_hh"], **kw)
            return [h], stats
        h, c, stats = scan.scan_lstm(args["u"], args["h0"], args["c0"], args["w_hh"], args["gamma_hh"],
                                     cell_norm=cell_norm, gamma_c=args["gamma_c"], beta_c=args["beta_c"],
                                     cell_pop_mean=pop["cell_pop_mean"], cell_pop_var=pop["cell_pop_var"], **kw)
        return [h, c], stats

    cots = [torch.randn(S * B, T, H, **d), torch.randn(S * B, H, **d)]
    want_out, want_stats, want_grads = [], [], []
    for s, a in enumerate(per_seed):
        leaves = {k: v.clone().requires_grad_() for k, v in a.items()}
        outs, stats = call(leaves, {k: v[s] for k, v in pops.items()})
        loss = sum((o * c[s * B:(s + 1) * B]).sum() for o, c in zip(outs, cots))
        want_grads.append(dict(zip(leaves, torch.autograd.grad(loss, list(leaves.values()), allow_unused=True))))
        want_out.append(outs)
        want_stats.append(stats)
    stacked = {k: (torch.cat if k in rows else torch.stack)([a[k] for a in per_seed]).requires_grad_()
               for k in per_seed[0]}
    outs, stats = call(stacked, pops)
    grads = dict(zip(stacked, torch.autograd.grad(sum((o * c).sum() for o, c in zip(outs, cots)),
                                                  list(stacked.values()), allow_unused=True)))
    close = dict(rtol=1e-10, atol=1e-12)
    for s in range(S):
        for o, w in zip(outs, want_out[s]):
            torch.testing.assert_close(o[s * B:(s + 1) * B], w, **close)
        assert stats.keys() == want_stats[s].keys()
        for k, (mean, var) in stats.items():
            torch.testing.assert_close(mean[:, s], want_stats[s][k][0], **close)
            torch.testing.assert_close(var[:, s], want_stats[s][k][1], **close)
        for k, g in grads.items():
            want = want_grads[s][k]
            if g is None or want is None:  # an unused γ (no norm): unused in both
                assert g is None and want is None, k
                continue
            got = g[s * B:(s + 1) * B] if k in rows else g[s]
            torch.testing.assert_close(got, want, **close, msg=f"seed {s}, grad of {k}")


def test_scan_guards_its_saved_parameters(scan_loops):
    """A norm's γ changed between forward and backward raises, as autograd does for the
    loop (rather than giving gradients of the new γ); no double backward."""
    torch.manual_seed(0)
    model = baselines.create("bn-lstm", input_size=3, output_size=2, hidden_size=8)
    y = model(torch.randn(4, 5, 3))
    assert baselines.recurrence_path(model) == scan_loops
    with torch.no_grad():
        model.core.norm_c[0].weight.mul_(2)
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        y.sum().backward()
    y = model(torch.randn(4, 5, 3))
    (g,) = torch.autograd.grad(y.square().sum(), [model.core.rnn.weight_hh_l0], create_graph=True)
    with pytest.raises(RuntimeError, match="once_differentiable"):
        g.sum().backward()


# -- the compiled CPU loops (baselines/scan_cpp.py) -------------------------------------

@pytest.mark.parametrize("cell", ["rnn-tanh", "rnn-relu", "lstm", "gru"])
def test_compiled_loops_carry_nan_forward(monkeypatch, cell):
    """A NaN in the input reaches the outputs (divergence is detected from them): the
    rational tanh's clamp and the ReLU must not turn NaN into a number."""
    use_scan_loops(monkeypatch, True)
    B, T, H = 3, 4, 8
    gates = {"rnn-tanh": 1, "rnn-relu": 1, "lstm": 4, "gru": 3}[cell]
    u = torch.randn(B, T, gates * H)
    u[1, 1, :] = float("nan")
    h0, w = torch.zeros(B, H), torch.randn(gates * H, H) / H ** 0.5
    if cell.startswith("rnn"):
        h = scan.scan_rnn(u, h0, w, act=cell[4:])[0]
    elif cell == "lstm":
        h = scan.scan_lstm(u, h0, h0, w)[0]
    else:
        h = scan.scan_gru(u, h0, w, torch.zeros(H))[0]
    assert h[1, 1:].isnan().all() and not h[1, 0].isnan().any() and not h[[0, 2]].isnan().any()


@pytest.mark.parametrize("norm,cell_norm", [("batch", "batch"), ("layer", "layer")])
def test_compiled_loops_backward_twice(monkeypatch, norm, cell_norm):
    """A second backward pass through the same graph gives the same gradients: the
    buffers where the compiled loops sum ∂L/∂γ and ∂L/∂β start from zero each pass, and
    the gradients handed out are copies."""
    use_scan_loops(monkeypatch, True)
    torch.manual_seed(0)
    B, T, H = 4, 5, 6
    u = torch.randn(B, T, 4 * H, requires_grad=True)
    h0 = torch.zeros(B, H)
    w = (torch.randn(4 * H, H) / H ** 0.5).requires_grad_()
    g, gc, bc = (torch.rand(4 * H) + 0.5).requires_grad_(), (torch.rand(H) + 0.5).requires_grad_(), \
        torch.zeros(H, requires_grad=True)
    h, _, _ = scan.scan_lstm(u, h0, h0, w, g, norm=norm, cell_norm=cell_norm, gamma_c=gc, beta_c=bc)
    first = torch.autograd.grad(h.square().sum(), [u, w, g, gc, bc], retain_graph=True)
    second = torch.autograd.grad(h.square().sum(), [u, w, g, gc, bc])
    for a, b in zip(first, second):
        torch.testing.assert_close(a, b)


def test_compiled_loops_that_cannot_be_built_leave_the_python_loops(monkeypatch):
    """A failed build (no compiler, say) warns once, naming the error, and the scan path
    runs its Python loops and records "scan"."""
    from torch.utils import cpp_extension

    from baselines import scan_cpp

    def fail(*_, **__):
        raise RuntimeError("Error building extension 'x'\nx.cpp:1: error: no compiler here\nninja: stopped")

    monkeypatch.setattr(cpp_extension, "load", fail)
    monkeypatch.setattr(scan_cpp, "_module", None)
    monkeypatch.setattr(scan_cpp, "_failed", None)
    monkeypatch.setenv(scan_cpp.ENV, "1")
    u = torch.randn(2, 3, 4)
    with pytest.warns(RuntimeWarning, match="error: no compiler here"):
        assert scan_cpp.for_call(u) is None
    assert scan_cpp.build_error() is not None and scan_cpp.for_call(u) is None  # tried once
    h, _, _ = scan.scan_rnn(u, torch.zeros(2, 4), torch.eye(4))
    assert h.shape == (2, 3, 4) and scan.last_path() == "scan"


@pytest.mark.parametrize("capability, suffix, isa", [("AVX512", "_avx512", ["-mavx2", "-mfma", "-mavx512f", "-mavx512bw",
                                                                            "-mavx512dq", "-mavx512vl"]),
                                                   ("AVX2", "_avx2", ["-mavx2", "-mfma"]), ("DEFAULT", "", [])])
def test_compiled_loops_use_pytorchs_vector_instructions(capability, suffix, isa, monkeypatch):
    """The loops are built for the vector instructions PyTorch's own CPU kernels use
    (ATEN_CPU_CAPABILITY can lower them), under a name that says which: a shared
    extension cache never hands an AVX-512 build to a CPU without AVX-512."""
    from baselines import scan_cpp

    monkeypatch.setattr(scan_cpp.platform, "machine", lambda: "x86_64")
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: capability)
    name, flags, _ = scan_cpp._flags(False)
    assert name == "rnnbench_scan_loops_" + re.sub(r"\W", "_", torch.__version__) + suffix
    assert [f for f in flags if f.startswith("-m")] == isa


@pytest.mark.parametrize("failure", ["build", "second runtime"])
def test_compiled_loops_build_without_openmp_where_it_fails(failure, monkeypatch):
    """Where the build with OpenMP fails (a compiler without it), or loads a second OpenMP
    runtime beside PyTorch's (which would ignore PyTorch's thread count), the loops are
    built once more without -fopenmp, under a name of their own, and one warning says why."""
    from torch.utils import cpp_extension

    from baselines import scan_cpp

    monkeypatch.setattr(scan_cpp.platform, "system", lambda: "Linux")
    monkeypatch.setattr(torch.__config__, "parallel_info", lambda: "ATen parallel backend: OpenMP")
    with_omp, without = scan_cpp._flags(True), scan_cpp._flags(False)
    assert "-fopenmp" in with_omp[1] and "-fopenmp" not in without[1] and with_omp[0] == without[0] + "_omp"
    built, runtimes = [], [{"/torch/lib/libgomp.so.1"}]

    def build(name, sources, extra_cflags, extra_ldflags, verbose):
        built.append(name)
        if "-fopenmp" in extra_cflags and failure == "build":
            raise RuntimeError("x.cpp:1: fatal error: omp.h: No such file or directory")
        if "-fopenmp" in extra_cflags:
            runtimes.append(runtimes[0] | {"/usr/lib/libomp.so.5"})
        return "the module"

    monkeypatch.setattr(scan_cpp, "openmp_runtimes", lambda: runtimes[-1])
    monkeypatch.setattr(cpp_extension, "load", build)
    monkeypatch.setattr(scan_cpp, "_module", None)
    monkeypatch.setattr(scan_cpp, "_failed", None)
    why = "omp.h: No such file" if failure == "build" else "second OpenMP runtime, /usr/lib/libomp.so.5"
    with pytest.warns(RuntimeWarning, match=f"built without OpenMP .*{why}"):
        assert scan_cpp.load() == "the module"
    assert built == [with_omp[0], without[0]] and scan_cpp.build_error() is None


def test_compiled_loops_share_pytorchs_openmp_runtime(monkeypatch):
    """Where PyTorch's threads are OpenMP's (its Linux builds), the loops are the build with
    OpenMP, and loading them (in a fresh process: other packages bring runtimes of their
    own, scikit-learn's libgomp for one) adds no OpenMP runtime to PyTorch's."""
    import json
    import platform
    import subprocess
    import sys
    from pathlib import Path

    from baselines import scan_cpp

    if platform.system() != "Linux" or "parallel backend: OpenMP" not in torch.__config__.parallel_info():
        pytest.skip("the compiled loops with OpenMP: Linux builds of PyTorch")
    use_scan_loops(monkeypatch, True)
    assert scan_cpp.load().__name__.endswith("_omp")
    script = ("import json, torch\nfrom baselines import scan_cpp\nbefore = scan_cpp.openmp_runtimes()\n"
              "assert scan_cpp.load() is not None\n"
              "print(json.dumps([sorted(before), sorted(scan_cpp.openmp_runtimes())]))")
    res = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300,
                         cwd=Path(__file__).parents[1])
    assert res.returncode == 0, res.stderr[-2000:]
    before, after = json.loads(res.stdout.strip().splitlines()[-1])
    assert after == before and any("torch/lib/libgomp" in p for p in after)


def test_compiled_float32_activations_are_accurate(monkeypatch):
    """The rational tanh and the sigmoid built on it (float32) against torch's, over a
    grid and at ±inf: tanh through an RNN with no recurrent weight (h = tanh(u)),
    sigmoid through a GRU with u_n = 20 (h = (1 - σ(u_z)) tanh(20) = σ(-u_z))."""
    use_scan_loops(monkeypatch, True)
    x = torch.cat([torch.linspace(-20, 20, 4001), torch.tensor([float("inf"), -float("inf"), 0.0])])
    N = x.numel()  # one step of a batch of N
    h = scan.scan_rnn(x.view(N, 1, 1), torch.zeros(N, 1), torch.zeros(1, 1))[0].view(-1)
    assert (h - torch.tanh(x)).abs().max() < 3e-7 and h[-3:].tolist() == [1.0, -1.0, 0.0]
    ug = torch.stack([torch.zeros_like(x), x, torch.full_like(x, 20.0)], -1).view(N, 1, 3)
    s = scan.scan_gru(ug, torch.zeros(N, 1), torch.zeros(3, 1), torch.zeros(1))[0].view(-1)
    assert (s - torch.sigmoid(-x)).abs().max() < 2e-7 and s[-3:].tolist() == [0.0, 1.0, 0.5]


def test_strided_norm_parameters_give_the_contiguous_result(scan_loops):
    """γ and β that are strided views (not what the models pass, but allowed) give the
    gradients of their contiguous copies, on both loops."""
    torch.manual_seed(3)
    B, T, H = 4, 5, 3
    u = torch.randn(B, T, 4 * H, dtype=torch.float64)
    h0 = torch.zeros(B, H, dtype=torch.float64)
    w = torch.randn(4 * H, H, dtype=torch.float64) / 2
    wide = torch.rand(2, 8 * H, dtype=torch.float64) + 0.5
    strided = (wide[0, ::2], wide[1, ::8], wide[1, 1::8])
    grads = []
    for g, gc, bc in (strided, [t.clone() for t in strided]):
        ui, wi = u.clone().requires_grad_(), w.clone().requires_grad_()
        h = scan.scan_lstm(ui, h0, h0, wi, g, norm="batch", cell_norm="batch", gamma_c=gc, beta_c=bc)[0]
        grads.append(torch.autograd.grad(h.square().sum(), [ui, wi]))
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b)


@pytest.mark.parametrize("cell", ["rnn", "lstm", "gru"])
@pytest.mark.parametrize("S", [0, 2])
def test_bias_argument_equals_adding_it_to_u(cell, S, scan_loops):
    """scan_*(u, ..., bias=b) (b added while u is copied) is scan_*(u + b): outputs and the
    gradients of u, W_hh and b, one model or stacked seeds (each seed's rows its own b)."""
    torch.manual_seed(4)
    B, T, H = 3, 4, 5
    G = {"rnn": 1, "gru": 3, "lstm": 4}[cell]
    R, lead = B * max(S, 1), (S,) if S else ()
    d = dict(dtype=torch.float64)
    u = torch.randn(R, T, G * H, **d, requires_grad=True)
    w = (torch.randn(*lead, G * H, H, **d) / 3).requires_grad_()
    b = torch.randn(*lead, G * H, **d, requires_grad=True)
    h0 = torch.zeros(R, H, **d)

    def run(x, **kw):
        if cell == "rnn":
            return scan.scan_rnn(x, h0, w, **kw)[0]
        if cell == "lstm":
            return scan.scan_lstm(x, h0, h0, w, **kw)[0]
        return scan.scan_gru(x, h0, w, torch.zeros(*lead, H, **d), **kw)[0]

    added = u + (b.unsqueeze(1).expand(S, B, G * H).reshape(R, 1, G * H) if S else b)
    want, got = run(added), run(u, bias=b)
    torch.testing.assert_close(got, want)
    g = torch.randn_like(want)
    for x, y in zip(torch.autograd.grad((got * g).sum(), [u, w, b]), torch.autograd.grad((want * g).sum(), [u, w, b])):
        torch.testing.assert_close(x, y)


@pytest.mark.parametrize("cell", ["rnn", "lstm", "gru"])
@pytest.mark.parametrize("norm", [None, "batch", "layer"])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("projected", [False, True], ids=["u", "x W^T"])
def test_input_norm_in_the_loops_equals_batch_norm_before_them(cell, norm, dtype, projected, monkeypatch):
    """scan_*(u, input_norm=InputNorm(γ, shift)) is scan_* of the per-step batch norm of u
    (``F.batch_norm`` over the whole sequence, as ``SeqNorm.seq`` does it): outputs, the
    gradients of u, γ, shift and W_hh, and the per-step statistics it returns; with any
    recurrent norm, the LSTM's cell norm too. Projected: the loops compute u = x W_ih^T
    themselves (``InputNorm.project``, three input features) and W_ih's gradient."""
    use_scan_loops(monkeypatch, True)
    torch.manual_seed(7)
    B, T, H = 6, 5, 4
    G = {"rnn": 1, "gru": 3, "lstm": 4}[cell] * H
    d = dict(dtype=dtype)
    u = (torch.randn(B, T, G, **d) * 2 + 1).requires_grad_()
    gx = (torch.rand(G, **d) + 0.5).requires_grad_()
    sx = torch.randn(G, **d, requires_grad=True)
    w = (torch.randn(G, H, **d) / 2).requires_grad_()
    h0 = torch.randn(B, H, **d) / 2
    x, w_ih = torch.randn(B, T, 3, **d) * 2 + 1, torch.randn(G, 3, **d).requires_grad_()
    if projected:
        u = x @ w_ih.t()
    args = dict(norm=norm) if cell == "rnn" else dict(norm=norm, **({"cell_norm": norm} if cell == "lstm" else {}))

    def run(x, **kw):
        if cell == "rnn":
            return scan.scan_rnn(x, h0, w, **args, **kw)[0]
        if cell == "lstm":
            return scan.scan_lstm(x, h0, h0, w, **args, **kw)[0]
        return scan.scan_gru(x, h0, w, torch.ones(H, **d) / 4, **args, **kw)[0]

    before = F.batch_norm(u.reshape(B, T * G), None, None, gx.repeat(T), sx.repeat(T), True, 0.0, 1e-5)
    want = run(before.view(B, T, G))
    xn = scan.InputNorm(gx, sx, 1e-5, project=(x, w_ih) if projected else None)
    got = run(xn.stand_in() if projected else u, input_norm=xn)
    # float32: γ's and the shift's gradients sum 30 products in another order than the
    # reference's (1e-5 relative apart); float64 checks the arithmetic
    tol = dict(rtol=1e-10, atol=1e-12) if dtype == torch.float64 else dict(rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(got, want, **tol)
    g = torch.randn_like(want)
    params = [w_ih if projected else u, gx, sx, w]
    for a, b in zip(torch.autograd.grad((got * g).sum(), params), torch.autograd.grad((want * g).sum(), params)):
        torch.testing.assert_close(a, b, **tol)
    var, mean = torch.var_mean(u.detach(), 0, correction=0)
    torch.testing.assert_close(xn.stats[0], mean, **tol)
    torch.testing.assert_close(xn.stats[1], var, **tol)


@pytest.mark.parametrize("cell", ["rnn", "lstm", "gru"])
@pytest.mark.parametrize("x_grad", [False, True], ids=["data", "x needs a gradient"])
def test_recurrence_projecting_its_input_equals_the_projection_before_it(cell, x_grad, scan_loops):
    """scan_*(stand-in, project=InputProjection(x, W_ih, b_ih)), which computes the input
    term time-major itself, is scan_* of x W_ih^T + b_ih: outputs, and the gradients of
    x (where it needs one), W_ih, b_ih, the bias b_hh and W_hh, on either kind of loops;
    stacked seeds are refused."""
    torch.manual_seed(5)
    B, T, H, I = 5, 6, 4, 3
    G = {"rnn": 1, "gru": 3, "lstm": 4}[cell] * H
    d = dict(dtype=torch.float64)
    x = torch.randn(B, T, I, **d).requires_grad_(x_grad)
    w_ih, b_ih, b_hh = (torch.randn(*shape, **d).requires_grad_() for shape in ((G, I), (G,), (G,)))
    w = (torch.randn(G, H, **d) / 2).requires_grad_()
    h0 = torch.randn(B, H, **d) / 2

    def run(u, **kw):
        if cell == "rnn":
            return scan.scan_rnn(u, h0, w, bias=b_hh, **kw)[0]
        if cell == "lstm":
            return scan.scan_lstm(u, h0, h0, w, bias=b_hh, **kw)[0]
        return scan.scan_gru(u, h0, w, torch.ones(H, **d) / 4, bias=b_hh, **kw)[0]

    want = run(x @ w_ih.t() + b_ih)
    p = scan.InputProjection(x, w_ih, b_ih)
    got = run(p.stand_in(), project=p)
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)
    g = torch.randn_like(want)
    params = [w_ih, b_ih, b_hh, w] + ([x] if x_grad else [])
    for a, b in zip(torch.autograd.grad((got * g).sum(), params), torch.autograd.grad((want * g).sum(), params)):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)
    if cell == "rnn":
        with pytest.raises(ValueError, match="one model only"):
            scan.scan_rnn(p.stand_in(), h0, w.detach().expand(1, G, H), project=p)
        xn = scan.InputNorm(torch.ones(G, **d), torch.zeros(G, **d), project=(x, w_ih))
        with pytest.raises(ValueError, match="InputNorm.project, not in project="):
            scan.scan_rnn(p.stand_in(), h0, w, project=p, input_norm=xn)
        if x_grad:  # the loops' projection sums no gradient for x: refused, not silently left out
            with pytest.raises(ValueError, match="takes no gradient for x"):
                scan.scan_rnn(p.stand_in(), h0, w, input_norm=xn)


@pytest.mark.parametrize("cell", ["rnn", "lstm", "gru"])
@pytest.mark.parametrize("projected", [False, True], ids=["u", "x W^T"])
def test_input_norm_passes_give_the_same_bits_on_two_threads(cell, projected, monkeypatch):
    """The compiled loops' input-norm passes split the features over PyTorch's threads
    (40 to 160 features here, more than one chunk): with W_hh = 0, so that no matrix
    product whose sums may follow the thread count takes part, the outputs, the
    gradients of u (or, where the loops project x, of W_ih), γ and the shift, and the
    statistics are the same bits at one thread as at two."""
    use_scan_loops(monkeypatch, True)
    torch.manual_seed(11)
    B, T, H = 6, 5, 40
    G = {"rnn": 1, "gru": 3, "lstm": 4}[cell] * H
    x, w_ih = torch.randn(B, T, 2), torch.randn(G, 2, requires_grad=True)
    u = (torch.randn(B, T, G) * 2 + 1).requires_grad_()
    gx, sx = (torch.rand(G) + 0.5).requires_grad_(), torch.randn(G, requires_grad=True)
    w, h0 = torch.zeros(G, H), torch.randn(B, H) / 2

    def run(threads: int):
        before = torch.get_num_threads()
        torch.set_num_threads(threads)
        try:
            xn = scan.InputNorm(gx, sx, 1e-5, project=(x, w_ih) if projected else None)
            term = xn.stand_in() if projected else u
            if cell == "rnn":
                h = scan.scan_rnn(term, h0, w, input_norm=xn)[0]
            elif cell == "lstm":
                h = scan.scan_lstm(term, h0, h0, w, input_norm=xn)[0]
            else:
                h = scan.scan_gru(term, h0, w, torch.ones(H) / 4, input_norm=xn)[0]
            grads = torch.autograd.grad((h * torch.linspace(-1, 1, H)).sum(), [w_ih if projected else u, gx, sx])
            return [h, *grads, *xn.stats]
        finally:
            torch.set_num_threads(before)

    for a, b in zip(run(1), run(2), strict=True):
        assert torch.equal(a, b)


SPLIT_CASES = [("rnn", "layer", None, 0), ("rnn", "layer", None, 2), ("lstm", "layer", "layer", 0),
               ("lstm", None, "layer", 0), ("lstm", "layer", None, 0), ("lstm", "layer", "layer", 3),
               ("gru", "layer", None, 0), ("gru", "layer", None, 2)]


@pytest.mark.parametrize("cell,norm,cell_norm,seeds", SPLIT_CASES)
def test_compiled_steps_split_over_threads_give_the_same_bits(cell, norm, cell_norm, seeds, request, monkeypatch):
    """The compiled loops' layer-norm steps split over two threads by rows (of one model,
    and of stacked seeds, where a part may end inside a seed's rows) give the same bits
    as the whole steps (float32): outputs and the gradients of every argument. Both runs
    use two threads, so the matrix products between the steps are the same."""
    use_scan_loops(monkeypatch, True)
    from baselines import scan_cpp

    loops = scan_cpp.load()
    split_every_step(request)
    torch.manual_seed(5)
    B, T, H = 5, 4, 10
    G, lead, rows = {"rnn": 1, "gru": 3, "lstm": 4}[cell], ((seeds,) if seeds else ()), B * max(seeds, 1)
    args = dict(u=torch.randn(rows, T, G * H), h0=torch.randn(rows, H) / 2, w_hh=torch.randn(*lead, G * H, H) / 3,
                gamma_hh=torch.rand(*lead, G * H) + 0.5)
    if cell == "lstm":
        args.update(c0=torch.randn(rows, H), gamma_c=torch.rand(*lead, H) + 0.5, beta_c=torch.randn(*lead, H) / 4)
    if cell == "gru":
        args["b_hn"] = torch.randn(*lead, H)

    def run(split: bool):
        loops.set_step_split(0 if split else 1 << 40, 1)
        leaves = {k: v.clone().requires_grad_() for k, v in args.items()}
        if cell == "rnn":
            h, mean, var = scan.scan_rnn(leaves["u"], leaves["h0"], leaves["w_hh"], leaves["gamma_hh"], norm=norm)
            outs, stats = [h], [mean, var]
        elif cell == "gru":
            h, st = scan.scan_gru(leaves["u"], leaves["h0"], leaves["w_hh"], leaves["b_hn"], leaves["gamma_hh"],
                                  norm=norm)
            outs, stats = [h], [t for m in st.values() for t in m]
        else:
            h, c, st = scan.scan_lstm(leaves["u"], leaves["h0"], leaves["c0"], leaves["w_hh"], leaves["gamma_hh"],
                                      norm=norm, cell_norm=cell_norm, gamma_c=leaves["gamma_c"],
                                      beta_c=leaves["beta_c"])
            outs, stats = [h, c], [t for m in st.values() for t in m]
        loss = sum((o * torch.linspace(-1, 1, o.shape[-1])).sum() for o in outs)
        grads = torch.autograd.grad(loss, list(leaves.values()), allow_unused=True)
        return outs + stats + [g for g in grads if g is not None], loops.split_steps()

    loops.split_steps()  # reset the count
    (whole, n_whole), (split, n_split) = run(False), run(True)
    assert scan.last_path() == "scan-cpp"
    assert n_whole == 0 and n_split == 2 * T  # every step of both loops ran split
    for a, b in zip(whole, split, strict=True):
        assert torch.equal(a, b)


def test_compiled_steps_split_by_default_only_with_statistics_and_above_a_size(monkeypatch):
    """By default a step is split where it has layer statistics (and no batch statistics)
    and B * H is 1024 or more (a benchmark's 32 x 64); not at 16 x 32, nor with batch
    statistics or without a norm."""
    use_scan_loops(monkeypatch, True)
    from baselines import scan_cpp

    loops, threads = scan_cpp.load(), torch.get_num_threads()
    assert loops.step_split() == [1024, 8]
    torch.set_num_threads(2)
    try:
        loops.split_steps()
        for B, H, norm, want in [(32, 64, "layer", 2), (32, 64, "batch", 0), (32, 64, None, 0), (16, 32, "layer", 0)]:
            u = torch.randn(B, 1, H, requires_grad=True)
            scan.scan_rnn(u, torch.zeros(B, H), torch.randn(H, H) / 8, norm=norm)[0].sum().backward()
            assert loops.split_steps() == want, (B, H, norm)
    finally:
        torch.set_num_threads(threads)


def test_input_norm_needs_the_compiled_loops_and_one_model(monkeypatch):
    torch.manual_seed(0)
    u, h0 = torch.randn(4, 3, 8), torch.zeros(4, 2)
    xn = scan.InputNorm(torch.ones(8), torch.zeros(8))
    use_scan_loops(monkeypatch, False)
    assert not scan.InputNorm.available(u)
    with pytest.raises(ValueError, match="compiled CPU loops"):
        scan.scan_lstm(u, h0, h0, torch.randn(8, 2), input_norm=xn)
    use_scan_loops(monkeypatch, True)
    assert scan.InputNorm.available(u) and not scan.InputNorm.available(u.double().to(torch.float16))
    with pytest.raises(ValueError, match="one model"):
        scan.scan_lstm(u, h0, h0, torch.randn(2, 8, 2), input_norm=xn)
    with pytest.raises(ValueError, match="population statistics on the recurrent term"):
        scan.scan_lstm(u, h0, h0, torch.randn(8, 2), norm="batch", batch_stats=False, pop_mean=torch.zeros(3, 8),
                       pop_var=torch.ones(3, 8), input_norm=xn)
    with pytest.raises(ValueError, match="shift_x must be"):
        scan.scan_lstm(u, h0, h0, torch.randn(8, 2), input_norm=scan.InputNorm(torch.ones(8), torch.zeros(6)))


def test_compiled_loops_reject_an_input_term_that_does_not_fit(monkeypatch):
    """The C++ loops check u against their buffers (Python callers go through check_args),
    and the input x and W^T they project themselves against u's features."""
    use_scan_loops(monkeypatch, True)
    from baselines import scan_cpp

    loops = scan_cpp.load()
    B, T, H = 3, 4, 2
    hs, h0, w = torch.zeros(T, B, H), torch.zeros(B, H), torch.zeros(H, H)
    none = loops.Norm(0, torch.ones(1), None, None, None, None, None, None, 0.0)
    stats = [torch.zeros(T, H) for _ in range(3)]
    nx = loops.Norm(1, torch.ones(H), torch.zeros(H), None, None, *stats, 1e-5)
    loops.rnn_forward(hs, None, h0, w, none, False, nx, torch.randn(B, T, H), None)  # fits
    for u in (torch.randn(B, T + 1, H), torch.randn(B + 1, T, H), torch.randn(B, T, H).double()):
        with pytest.raises(RuntimeError, match="must fit"):
            loops.rnn_forward(hs, None, h0, w, none, False, nx, u, None)
    x = torch.randn(B, T, 3)
    loops.rnn_forward(hs, None, h0, w, none, False, nx, x, torch.randn(3, H))  # fits
    for wt in (torch.randn(2, H), torch.randn(3, H + 1), torch.randn(3, H).double()):
        with pytest.raises(RuntimeError, match="must fit|projection"):
            loops.rnn_forward(hs, None, h0, w, none, False, nx, x, wt)


@needs_kernels
@pytest.mark.parametrize("cell,norm,cell_norm,batch_stats", [
    ("rnn", None, None, True), ("rnn", "batch", None, True), ("lstm", None, None, True),
    ("lstm", "batch", "batch", True), ("lstm", "batch", "batch", False), ("gru", None, None, True),
    ("gru", "batch", None, True)])
@pytest.mark.parametrize("units", ["defaults", 16])
def test_step_kernels_over_several_program_blocks(cell, norm, cell_norm, batch_stats, units, monkeypatch):
    """The CUDA step kernels (interpreted) where a launch has several programs, at the
    default tiles and at 16 units a program: 44 hidden units are six blocks of 8 units
    where rows are split (eleven of 4 where a program holds the batch; products narrower
    than Triton's tensor-core tile), three of 16, the last one partial, and three chunks
    of 16 of the matrix product, the last one partial; without batch norm 40 rows are
    two blocks of rows. Against the float64 reference, and the path says that the
    kernels ran."""
    impl = IMPLS["scan-triton"]
    use_step_kernels(monkeypatch)
    if units != "defaults":
        monkeypatch.setattr(scan_triton, "BJ", units)
        monkeypatch.setattr(scan_triton, "BJ_WHOLE_BATCH", units)
    B, T, H = 40, 3, 44
    run_cell_case(impl, cell, B, T, H, norm, cell_norm, batch_stats)
    assert scan.last_path() == "scan-triton"


@needs_kernels
def test_grid_synchronized_launches_where_their_programs_fit(monkeypatch):
    """On by default: one launch of every step where each program can sit on its own
    multiprocessor (here a GPU of 132, as an H100), with rows split finer than a launch
    per step splits them (ROWS_FREE_GRID, not ROWS_FREE); batch-norm programs keep the
    whole batch; not where the programs outnumber the multiprocessors (8 stacked seeds),
    not with GRID_SYNC off, not for one step or layer norm (whole sequences)."""
    import types

    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda d: types.SimpleNamespace(multi_processor_count=132))
    monkeypatch.setattr(scan_triton, "_grid_runs_here", lambda d: True)
    cuda = torch.device("cuda")
    assert scan_triton.GRID_SYNC is (os.environ.get(scan_triton.ENV_GRID_SYNC, "1") != "0")
    monkeypatch.setattr(scan_triton, "GRID_SYNC", True)
    assert (scan_triton.ROWS_FREE_GRID, scan_triton.ROWS_FREE) == (16, 32)
    assert scan_triton._tiles(100, 100, (0,), False, grid=True)[:2] == (16, 8)
    assert scan_triton._tiles(100, 100, (0,), False)[:2] == (32, 8)
    assert scan_triton._tiles(100, 100, (1,), False, grid=True)[:2] == (128, 4)
    assert scan_triton.grid_programs(784, 100, 100, 1, (0, 0), cuda) == 13 * 7  # lstm-loop, seq-MNIST
    assert scan_triton.grid_programs(784, 100, 100, 1, (1, 1), cuda) == 25  # bn-lstm: the whole batch, 4 units
    assert scan_triton.grid_programs(1000, 128, 128, 1, (0,), cuda) == 16 * 8  # adding shape
    assert scan_triton.grid_programs(784, 100, 100, 8, (1, 1), cuda) == 0  # 200 programs: a launch per step
    assert scan_triton.grid_programs(1, 100, 100, 1, (0,), cuda) == 0
    assert scan_triton.grid_programs(784, 100, 100, 1, (3,), cuda) == 0
    monkeypatch.setattr(scan_triton, "GRID_PER_SM", 2)  # two programs a multiprocessor: 264 at most
    assert scan_triton.grid_programs(784, 100, 100, 8, (1, 1), cuda) == 200  # 8 stacked seeds
    assert scan_triton.grid_programs(784, 100, 100, 8, (0, 0), cuda) == 0  # 8 x 91
    monkeypatch.setattr(scan_triton, "ROWS_FREE_GRID", 8)
    assert scan_triton.grid_programs(784, 100, 100, 1, (0, 0), cuda) == 13 * 13
    monkeypatch.setattr(scan_triton, "GRID_SYNC", False)
    assert scan_triton.grid_programs(784, 100, 100, 1, (0,), cuda) == 0


@pytest.mark.parametrize("raw,want", [(None, 1), ("2", 2), (" 3 ", 3), ("0", 1), ("two", 1), ("-1", 1)])
def test_grid_programs_per_multiprocessor_from_the_environment(raw, want, monkeypatch):
    """RNNBENCH_GPU_GRID_PER_SM: a whole number of at least 1; anything else warns, naming
    the variable and the value, and keeps 1."""
    if raw is None:
        monkeypatch.delenv(scan_triton.ENV_GRID_PER_SM, raising=False)
    else:
        monkeypatch.setenv(scan_triton.ENV_GRID_PER_SM, raw)
    bad = raw is not None and want == 1
    with pytest.warns(RuntimeWarning, match=f"RNNBENCH_GPU_GRID_PER_SM='{raw}' is not a whole number") if bad \
            else contextlib.nullcontext():
        assert scan_triton._env_count(scan_triton.ENV_GRID_PER_SM, 1) == want


@needs_kernels
def test_grid_launches_run_on_their_own_tiles_forward_and_backward(monkeypatch):
    """A recurrence's forward and backward launches take the grid-synchronized launches'
    rows per program (ROWS_FREE_GRID; swapped with ROWS_FREE here, so that one program of
    32 rows holds the 20 rows in a grid launch and two of 16 in a launch per step), and
    the barrier counts exactly the programs launched; the results equal a launch per
    step's."""
    import math

    use_step_kernels(monkeypatch)
    monkeypatch.setattr(scan_triton, "ROWS_FREE", 16)
    monkeypatch.setattr(scan_triton, "ROWS_FREE_GRID", 32)
    starts = recorded_starts(monkeypatch, lambda T, B, out: B == 20)  # this test's launches, not the probes'
    torch.manual_seed(0)
    B, T, H = 20, 3, 8
    u, h0, w = torch.randn(B, T, H), torch.randn(B, H), torch.randn(H, H) / 3
    results = {}
    for grid in (True, False):
        monkeypatch.setattr(scan_triton, "GRID_SYNC", grid)
        starts.clear()
        uu, ww = u.clone().requires_grad_(), w.clone().requires_grad_()
        h = scan.scan_rnn(uu, h0, ww)[0]
        assert scan.last_path() == ("scan-triton-grid" if grid else "scan-triton")
        h.square().sum().backward()
        results[grid] = (h.detach(), uu.grad, ww.grad)
        assert len(starts) == 2  # the forward launch and the backward one
        for *_, (_, launched, _, cfg, sync) in starts:
            assert cfg["BB"] == (32 if grid else 16) and math.prod(launched) == (1 if grid else 2)
            assert sync.get("NPROG") == (1 if grid else None)
    for a, b in zip(results[True], results[False]):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-6)
    monkeypatch.setattr(scan_triton, "GRID_SYNC", True)
    monkeypatch.setattr(scan_triton, "_grid_plan", lambda *a: (2, False))  # counted wrong: refused, never launched
    with pytest.raises(RuntimeError, match="1 programs counted as 2"):
        scan.scan_rnn(u, h0, w)


@pytest.mark.skipif(scan_triton.triton is None, reason="needs Triton")
def test_grid_launches_take_the_longer_chunk_where_it_pads_nothing():
    """Rows-split programs of a grid-synchronized launch reduce over chunks of BK_GRID (32)
    where H is a multiple of it, else of BK (16: H=100 in 4 chunks of 32 would be 128
    units, in 7 of 16 it is 112; H=20's LSTM backward, 4H=80, would be 96 in chunks of
    32); a launch per step and whole-batch programs keep theirs."""
    tiles = scan_triton._tiles
    assert tiles(128, 128, (0,), False, grid=True) == (16, scan_triton.BJ, 32, scan_triton.WARPS_FREE_GRID)
    assert tiles(100, 100, (0,), False, grid=True)[2] == 16 and tiles(100, 96, (0,), False, grid=True)[2] == 32
    assert tiles(100, 20, (0,), False, grid=True)[2] == 16
    assert tiles(128, 128, (0,), False)[2] == scan_triton.BK == 16
    assert tiles(128, 128, (1,), False, grid=True)[2] == scan_triton.BK_WHOLE_BATCH


@needs_kernels
@pytest.mark.parametrize("cell,norm,cell_norm", [("lstm", None, None), ("lstm", "batch", "batch"), ("gru", None, None),
                                                 ("rnn", "batch", None)])
def test_grid_launches_of_several_programs(cell, norm, cell_norm, monkeypatch):
    """The default grid-synchronized launches as they run on a GPU, several programs at
    once: here as threads that take turns between barriers in a random order
    (tests/interpreter_grid.py). 40 rows and 20 units are 3 x 3 rows-split programs
    without batch norm, 5 whole-batch programs of 4 units with it; against the float64
    reference, every program passing barriers 1 .. T - 1 in order, forward and backward."""
    import interpreter_grid

    use_step_kernels(monkeypatch)
    monkeypatch.setattr(scan_triton, "GRID_SYNC", True)
    tokens = interpreter_grid.install(monkeypatch, seed=5)
    T = 3
    run_cell_case(IMPLS["scan-triton-grid"], cell, 40, T, 20, norm, cell_norm, True)
    assert scan.last_path() == "scan-triton-grid"
    assert [t.n for t in tokens] == [5 if norm else 9] * 2
    interpreter_grid.check_barriers(tokens)
    assert all(len(next(iter(t.seen.values()))) == T for t in tokens)


@needs_kernels
@pytest.mark.parametrize("norm", [None, "batch"])
def test_grid_barriers_wait_for_the_programs_that_share_rows_and_seed(norm, monkeypatch, request):
    """With GRID_GROUPS each (row block, seed) of a grid-synchronized launch has a barrier,
    and a counter, of its own. Triton's interpreter runs one program after another, so a
    launch of three row blocks (40 rows, 16 a program) or, with batch norm, two stacked
    seeds (a seed's whole batch a program) runs here only because each program waits for
    itself alone: every counter must reach T - 1, barrier by barrier (the strict barrier
    of ``one_program_grid``), and the results must equal a launch per step's, forward and
    backward, which they could not if a step read the stores of another group (a program
    not yet run). Without GRID_GROUPS the barrier would wait for every program: a launch
    per step runs."""
    use_step_kernels(monkeypatch)
    one_program_grid(monkeypatch, request)
    monkeypatch.setattr(scan_triton, "ROWS_FREE_GRID", 16)
    starts = recorded_starts(monkeypatch, lambda T, B, out: B == 40)  # this test's launches, not the probes'
    torch.manual_seed(0)
    S = 2 if norm else 0
    B, T, H = 40, 4, 8
    u, h0, c0 = torch.randn(B, T, 4 * H), torch.randn(B, H), torch.randn(B, H)
    w = torch.randn(*(S,) * bool(S), 4 * H, H) / 3
    results = {}
    for grid, groups in ((True, True), (True, False), (False, False)):
        monkeypatch.setattr(scan_triton, "GRID_SYNC", grid)
        monkeypatch.setattr(scan_triton, "GRID_GROUPS", groups)
        starts.clear()
        uu, ww = u.clone().requires_grad_(), w.clone().requires_grad_()
        h, c, _ = scan.scan_lstm(uu, h0, c0, ww, norm=norm, cell_norm=norm)
        assert scan.last_path() == ("scan-triton-grid" if grid and groups else "scan-triton")
        (h.square().sum() + c.sum()).backward()
        results[grid, groups] = (h.detach(), c.detach(), uu.grad, ww.grad)
        if grid and groups:
            assert len(starts) == 2  # the forward launch and the backward one
            for *_, (_, launched, _, _, sync) in starts:
                assert launched == ((1, 1, 2) if norm else (1, 3, 1)) and sync["GROUP"]
                assert sync["CNT"].numel() == (2 if norm else 3)
    for a, b in zip(results[True, True], results[False, False], strict=True):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-6)


def test_step_kernels_leave_what_they_do_not_cover_to_the_python_loops(monkeypatch):
    """Layer norm outside whole-sequence launches (one step, or beside batch statistics),
    float64, more than MAX_HIDDEN units and batch norm over more rows (of a seed) than
    one program holds keep the Python loops; layer norm runs in whole-sequence launches
    with ``SEQUENCE`` off too; on the CPU the kernels run only when a test allows the
    interpreter."""
    monkeypatch.setattr(scan_triton, "ALLOW_INTERPRETER", True)
    x = torch.zeros(4, 3, 8)
    interp = scan_triton.interpreting() and scan_triton.triton is not None
    assert (scan_triton.for_call(x, 0, "lstm", (0, 1)) is not None) == interp
    assert (scan_triton.for_call(x, 0, "gru", (2,)) is not None) == interp
    for sequence in (False, True):
        monkeypatch.setattr(scan_triton, "SEQUENCE", sequence)
        assert (scan_triton.for_call(x, 0, "lstm", (3, 3)) is not None) == interp
        assert (scan_triton.for_call(x, 0, "lstm", (3, 0)) is not None) == interp
        assert scan_triton.for_call(x[:, :1], 0, "lstm", (3, 3)) is None  # one step: no whole-sequence launch
        assert scan_triton.for_call(x, 0, "lstm", (1, 3)) is None  # batch statistics bind the rows
    monkeypatch.setattr(scan_triton, "SEQUENCE", False)
    assert scan_triton.for_call(x.double(), 0, "rnn", (0,)) is None
    wide = torch.zeros(4, 3, 4 * (scan_triton.MAX_HIDDEN + 1))  # H = MAX_HIDDEN + 1
    assert scan_triton.for_call(wide, 0, "lstm", (0, 0)) is None
    assert (scan_triton.for_call(wide[..., :4 * scan_triton.MAX_HIDDEN], 0, "lstm", (0, 0)) is not None) == interp
    big = torch.zeros(scan_triton.MAX_ROWS + 1, 3, 8)
    assert scan_triton.for_call(big, 0, "rnn", (1,)) is None
    assert (scan_triton.for_call(big, 0, "rnn", (0,)) is not None) == interp  # rows split over programs
    stacked = torch.zeros(2 * scan_triton.MAX_ROWS, 3, 8)  # two seeds: each seed's rows in one program
    assert (scan_triton.for_call(stacked, 2, "rnn", (1,)) is not None) == interp
    assert scan_triton.for_call(torch.zeros(2 * scan_triton.MAX_ROWS + 2, 3, 8), 2, "rnn", (1,)) is None
    monkeypatch.setenv(scan_triton.ENV, "0")
    assert scan_triton.for_call(x, 0, "rnn", (0,)) is None
    monkeypatch.setattr(scan_triton, "ALLOW_INTERPRETER", False)
    monkeypatch.delenv(scan_triton.ENV)
    assert scan_triton.for_call(x, 0, "rnn", (0,)) is None
    with pytest.raises(ValueError, match="norm modes"):
        scan_triton.Norm(4, torch.ones(8), None, None, None, None, None, None, 1e-5)
    with pytest.raises(ValueError, match="layer norm their mean and rstd"):
        scan_triton.Norm(3, torch.ones(8), None, None, None, None, None, None, 1e-5)
    one_model = scan_triton.Norm(2, torch.ones(8), None, torch.ones(3, 8), None, None, None, None, 1e-5)
    one_model.check_fits(1, 3, 8, 4)
    with pytest.raises(ValueError, match="gamma has 8 values; 2 seed"):  # parameters of one model, W_hh of two
        one_model.check_fits(2, 3, 8, 4)
    layer = scan_triton.Norm(3, torch.ones(8), None, None, None, torch.zeros(3, 4, 1), torch.zeros(3, 4, 1), None, 0.0)
    layer.check_fits(1, 3, 8, 4)
    with pytest.raises(ValueError, match="mean has 12 values"):  # tables of 4 rows, 5 rows in the call
        layer.check_fits(1, 3, 8, 5)


@needs_kernels
def test_step_kernels_edge_routing(monkeypatch):
    """Offsets past int32 keep the Python loops; a strided W_hh runs on the kernels with
    the contiguous result; an input norm (csrc's loops only) is refused with its own
    message; kernels that cannot run here warn once and leave the Python loops."""
    use_step_kernels(monkeypatch)
    huge = torch.zeros(1).expand(2**16, 2**8, 2**7)  # 2**31 elements, no memory
    assert scan_triton.for_call(huge, 0, "rnn", (0,)) is None
    assert scan_triton.for_call(huge[:, :, :64], 0, "rnn", (0,)) is not None
    torch.manual_seed(0)
    B, T, H = 3, 4, 16
    u, h0, c0, w = torch.randn(B, T, 4 * H), torch.randn(B, H), torch.randn(B, H), torch.randn(H, 4 * H) / 4
    strided, _, _ = scan.scan_lstm(u, h0, c0, w.t())
    assert scan.last_path() == "scan-triton"
    torch.testing.assert_close(strided, scan.scan_lstm(u, h0, c0, w.t().contiguous())[0], rtol=0, atol=0)
    xn = scan.InputNorm(torch.ones(H), torch.zeros(H))
    with pytest.raises(ValueError, match="compiled CPU loops"):
        scan.scan_rnn(torch.randn(B, T, H), h0, torch.eye(H), input_norm=xn)

    def broken(*_, **__):
        raise RuntimeError("Failed to compile the launcher\nno C compiler")

    monkeypatch.setattr(scan_triton, "_tried", False)
    monkeypatch.setattr(scan_triton, "_failed", None)
    monkeypatch.setattr(scan_triton, "rnn_forward", broken)
    with pytest.warns(RuntimeWarning, match="could not run .*Failed to compile the launcher"):
        assert scan_triton.for_call(u, 0, "lstm", (0, 0)) is None
    assert scan_triton.for_call(u, 0, "lstm", (0, 0)) is None  # tried once
    scan.scan_lstm(u, h0, c0, w.t())
    assert scan.last_path() == "scan"


@needs_kernels
def test_step_kernels_tanh_is_accurate_near_zero_and_far_out(monkeypatch):
    """h = tanh(u) through an RNN with no recurrent weight, against torch.tanh: relative
    error at float32 rounding from 1e-6 to 20 (2σ(2a) - 1 alone loses it near zero)."""
    use_step_kernels(monkeypatch)
    a = torch.logspace(-6, 1.3, 64)
    u = torch.cat([a, -a]).view(1, -1, 1).expand(16, -1, 16).contiguous()
    h, _, _ = scan.scan_rnn(u, torch.zeros(16, 16), torch.zeros(16, 16))
    assert scan.last_path() == "scan-triton"
    want = torch.tanh(u.double())
    assert ((h.double() - want).abs() / want.abs()).max() < 5e-7


@needs_kernels
@pytest.mark.parametrize("cell,norm,cell_norm,batch_stats", [
    ("rnn", None, None, True), ("rnn", "batch", None, False), ("rnn", "layer", None, True),
    ("lstm", None, None, True), ("lstm", "batch", "batch", False), ("lstm", None, "batch", False),
    ("lstm", "layer", "layer", True), ("lstm", None, "layer", True), ("gru", None, None, True),
    ("gru", "batch", None, False), ("gru", "layer", None, True)])
@pytest.mark.parametrize("rows", [16, 8])
def test_whole_sequence_launches_match_the_reference(cell, norm, cell_norm, batch_stats, rows, monkeypatch):
    """Where no batch statistics bind the rows (no norm, population statistics, layer
    norm), the step kernels run every step in one launch (``scan_triton.SEQUENCE``): 40
    rows are three programs of 16 (the last partly masked) or five of 8, each with all
    40 hidden units (a tile of 64), so layer norm's statistics (over every gate of a row)
    are the program's own. Against the float64 reference, and the path says that the
    whole-sequence launches ran."""
    impl = IMPLS["scan-triton-seq"]
    use_step_kernels(monkeypatch, True)
    monkeypatch.setattr(scan_triton, "ROWS_SEQ", rows)
    B, T, H = 40, 4, 40
    run_cell_case(impl, cell, B, T, H, norm, cell_norm, batch_stats)
    assert scan.last_path() == "scan-triton-seq"


@needs_kernels
@pytest.mark.parametrize("cell,norm,cell_norm", [("rnn", "layer", None), ("lstm", None, None), ("lstm", "layer", None),
                                                 ("gru", "layer", None)])
def test_whole_sequence_launches_at_two_steps_and_a_full_tile(cell, norm, cell_norm, monkeypatch):
    """T=2 (the backward launch's middle loop empty) and H=32 (every unit of the tile real),
    17 rows (three programs of ROWS_SEQ = 8 rows, the last of one row), against the
    float64 reference."""
    impl = IMPLS["scan-triton-seq"]
    use_step_kernels(monkeypatch, True)
    B, T, H = 17, 2, 32
    run_cell_case(impl, cell, B, T, H, norm, cell_norm, True, rnn_seed=5)
    assert scan.last_path() == "scan-triton-seq"


@needs_kernels
@pytest.mark.parametrize("sequence", [False, True])
def test_whole_sequence_launches_that_cannot_run_here_leave_the_other_paths(sequence, monkeypatch):
    """Where the whole-sequence launches fail to run (tried once, on two steps, in a
    whole-sequence launch with ``SEQUENCE`` off too, as layer norm runs), one warning
    says why; a layer-norm cell then keeps the Python loops and the others a launch per
    step, with their results."""
    use_step_kernels(monkeypatch, sequence)
    monkeypatch.setattr(scan_triton, "_seq_tried", False)
    monkeypatch.setattr(scan_triton, "_seq_failed", None)

    class Broken:
        def __getitem__(self, grid):
            raise RuntimeError("PTX error: out of resources\nmore")

    monkeypatch.setattr(scan_triton, "_rnn_fwd_seq", Broken())
    torch.manual_seed(0)
    u, h0, w, g = torch.randn(4, 3, 8), torch.randn(4, 8), torch.randn(8, 8) / 4, torch.rand(8) + 0.5
    with pytest.warns(RuntimeWarning, match="whole-sequence launches could not run .RuntimeError: PTX error"):
        h_ln = scan.scan_rnn(u, h0, w, g, norm="layer")[0]
    assert scan.last_path() == "scan" and scan_triton._seq_failed == "RuntimeError: PTX error: out of resources"
    assert scan_triton.SEQUENCE is sequence  # the probe's switch put back
    h = scan.scan_rnn(u, h0, w)[0]
    assert scan.last_path() == "scan-triton"
    monkeypatch.setattr(scan_triton, "SEQUENCE", False)
    use_scan_loops(monkeypatch, False)
    monkeypatch.setenv(scan_triton.ENV, "0")
    torch.testing.assert_close(h, scan.scan_rnn(u, h0, w)[0], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(h_ln, scan.scan_rnn(u, h0, w, g, norm="layer")[0], rtol=1e-5, atol=1e-6)


def test_whole_sequence_launches_only_where_rows_are_independent(monkeypatch):
    """One launch per sequence needs the setting (or a layer norm), two steps or more and
    no batch statistics in any of the cell's norms; else a launch per step."""
    monkeypatch.setattr(scan_triton, "SEQUENCE", True)
    assert scan_triton.whole_sequence(2, (0, 2)) and scan_triton.whole_sequence(100, (0,))
    assert not scan_triton.whole_sequence(1, (0,))  # one step: the step kernel itself
    assert not scan_triton.whole_sequence(10, (2, 1)) and not scan_triton.whole_sequence(10, (1,))
    monkeypatch.setattr(scan_triton, "SEQUENCE", False)
    assert not scan_triton.whole_sequence(10, (0,)) and not scan_triton.whole_sequence(10, (2,))
    assert scan_triton.whole_sequence(10, (3, 0)) and scan_triton.whole_sequence(2, (3, 3))
    assert not scan_triton.whole_sequence(1, (3,)) and not scan_triton.whole_sequence(10, (3, 1))


@needs_kernels
@pytest.mark.parametrize("cell,norm,cell_norm,batch_stats,B", [
    ("rnn", "batch", None, True, 5), ("rnn", None, None, True, 40), ("rnn", "batch", None, False, 5),
    ("lstm", "batch", "batch", True, 5), ("lstm", "batch", "batch", False, 5), ("lstm", None, None, True, 40),
    ("gru", "batch", None, True, 5), ("gru", None, None, True, 40)])
@pytest.mark.parametrize("seq", [False, True])
def test_step_kernels_stack_seeds_as_one_by_one(cell, norm, cell_norm, batch_stats, B, seq, monkeypatch):
    """Stacked seeds on the step kernels, a launch per step or whole sequences (``seq``)."""
    check_stacked_seeds(cell, norm, cell_norm, batch_stats, B, seq, monkeypatch)


@needs_kernels
@pytest.mark.parametrize("cell,B", [("lstm", 40), ("gru", 5), ("rnn", 40)])
def test_whole_sequence_layer_norm_stacks_seeds_as_one_by_one(cell, B, monkeypatch):
    """Layer norm (whole-sequence launches only) with three seeds stacked: each seed's γ
    and β, its rows' statistics."""
    check_stacked_seeds(cell, "layer", "layer" if cell == "lstm" else None, True, B, True, monkeypatch)


def check_stacked_seeds(cell, norm, cell_norm, batch_stats, B, seq, monkeypatch):
    """Three seeds stacked in one call of the step kernels (a grid axis per seed) give each
    seed what the kernels give it alone: outputs, batch statistics, every gradient; with
    40 rows a seed, each seed's rows span two programs (five in whole-sequence launches,
    ``seq``, which run where there are no batch statistics)."""
    use_step_kernels(monkeypatch, seq)
    interpreter_tiles(monkeypatch)
    impl = IMPLS["scan-triton-seq" if seq else "scan-triton"]
    S, T, H = 3, 4, 20
    G = {"rnn": 1, "gru": 3, "lstm": 4}[cell]
    torch.manual_seed(3)
    per_seed = []
    for _ in range(S):
        a = dict(u=torch.randn(B, T, G * H), h0=torch.randn(B, H), w_hh=torch.randn(G * H, H) / 4,
                 gamma_hh=torch.rand(G * H) + 0.5)
        if cell == "lstm":
            a.update(c0=torch.randn(B, H), gamma_c=torch.rand(H) + 0.5, beta_c=torch.randn(H) * 0.1)
        if cell == "gru":
            a["b_hn"] = torch.randn(H)
        per_seed.append(a)
    pops = dict(pop_mean=torch.randn(S, 2, G * H), pop_var=torch.rand(S, 2, G * H) + 0.5,
                cell_pop_mean=torch.randn(S, 3, H), cell_pop_var=torch.rand(S, 3, H) + 0.5)

    def call(a, pop):
        kw = dict(norm=norm, batch_stats=batch_stats, pop_mean=pop["pop_mean"], pop_var=pop["pop_var"])
        if cell == "rnn":
            h, mean, var = scan.scan_rnn(a["u"], a["h0"], a["w_hh"], a["gamma_hh"], **kw)
            out = [h], [mean, var]
        elif cell == "gru":
            h, stats = scan.scan_gru(a["u"], a["h0"], a["w_hh"], a["b_hn"], a["gamma_hh"], **kw)
            out = [h], [t for k in sorted(stats) for t in stats[k]]
        else:
            h, c, stats = scan.scan_lstm(a["u"], a["h0"], a["c0"], a["w_hh"], a["gamma_hh"], cell_norm=cell_norm,
                                         gamma_c=a["gamma_c"], beta_c=a["beta_c"], cell_pop_mean=pop["cell_pop_mean"],
                                         cell_pop_var=pop["cell_pop_var"], **kw)
            out = [h, c], [t for k in sorted(stats) for t in stats[k]]
        assert_ran(impl, norm, cell_norm, batch_stats=batch_stats)
        return out

    cots = [torch.randn(S * B, T, H), torch.randn(S * B, H)]
    stacked = {k: (torch.cat if k in ("u", "h0", "c0") else torch.stack)([a[k] for a in per_seed]).requires_grad_()
               for k in per_seed[0]}
    outs, stats = call(stacked, pops)
    grads = torch.autograd.grad(sum((o * c).sum() for o, c in zip(outs, cots)), list(stacked.values()),
                                allow_unused=True)
    close = dict(rtol=1e-5, atol=1e-6)  # the kernels' results are equal to the bit; the sums after them are not
    for s, a in enumerate(per_seed):
        leaves = {k: v.clone().requires_grad_() for k, v in a.items()}
        want, want_stats = call(leaves, {k: v[s] for k, v in pops.items()})
        rows = slice(s * B, (s + 1) * B)
        want_grads = torch.autograd.grad(sum((o * c[rows]).sum() for o, c in zip(want, cots)), list(leaves.values()),
                                         allow_unused=True)
        for o, w in zip(outs, want):
            torch.testing.assert_close(o[rows], w, **close)
        if norm == "batch" and batch_stats or cell_norm == "batch" and batch_stats:
            for got, w in zip(stats, want_stats):  # (T, S, F) against (T, F)
                torch.testing.assert_close(got[:, s], w, **close)
        for k, g, w in zip(leaves, grads, want_grads):
            if w is not None:
                torch.testing.assert_close(g[rows] if k in ("u", "h0", "c0") else g[s], w, **close, msg=k)
