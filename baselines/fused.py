"""Fused recurrence kernels (Triton) for the RNN, LSTM and GRU cells, forward and backward.

The per-step Python loop of a custom cell launches tens of kernels per time step;
at small hidden sizes a training step is launch-bound (ANCHORS.md: a per-step
BN-LSTM trains ~130x slower than cuDNN LSTM at seq-MNIST shape). Here one Triton
program runs the whole recurrence of one layer on chip:

    z_t = h_{t-1} W_hh^T,   a_t = N_t(z_t) + u_t,   h_t = act(a_t)

where ``u_t`` is the input term computed for all steps at once outside (W_ih x_t,
its normalization and both biases), ``N_t`` is nothing, batch norm with per-step
batch statistics (training, or evaluation with ``norm_eval=batch``) or population
statistics (evaluation), or layer norm, always with gain γ and no β (the cell's
shared bias is in ``u``), and ``act`` is tanh or ReLU. The backward kernel runs
the recurrence in reverse, recomputing z_t from the saved h_{t-1} rather than
storing it, and accumulates dW_hh and dγ on chip.

The gated cells (``fused_lstm``, ``fused_gru``, below) follow the same scheme with
one tile per gate and their own norms (see the section comment there).

The whole batch and hidden state are one tile (at most 128 x 128 after padding to
powers of two), which covers the seq-MNIST (B=100, H=100) and adding (B=128,
H=128) shapes; larger shapes use the scan path (baselines/scan.py). Batch statistics need the
whole batch in one program, which is why the batch is not split. The kernel is
tested on the CPU in Triton's interpreter (``TRITON_INTERPRET=1``) against the
reference loop, and on CUDA by tests/test_gpu.py.
"""

from __future__ import annotations

import os
from typing import NamedTuple

import torch
from torch import Tensor

from baselines import scan

try:  # Triton is optional: without it (or without CUDA) the reference loop runs.
    import triton
    import triton.language as tl
except ImportError:  # pragma: no cover - depends on the installation
    triton = None

NORMS = {n: i for i, n in enumerate(scan.NORMS)}  # None: 0, batch: 1, layer: 2
ACTS = {"tanh": 0, "relu": 1}
MAX_TILE = 128
# Gated cells hold 3-4 gate blocks per step: at 128 x 128 their kernels spill heavily
# and take minutes to compile, so they are fused up to 64 x 64 (seen on sm_90 with
# Triton 3.9's ptxas: LSTM forward 97 s at 128, 8 s at 64).
MAX_GATED_TILE = 64


# On the CPU the kernel runs only in Triton's interpreter, for tests: far slower than
# the scan path, so it is used there only when a test switches this on.
ALLOW_INTERPRETER = False
# Opt-in on CUDA (RNNBENCH_FUSED=1): measured on an H200 (benchmarks/device_check.sh),
# the one-program kernels are correct but slower than the CUDA-graphed loop (bn-rnn at
# T=784 B=100 H=100: 490 ms per training step fused, 184 ms for the eager loop), since
# one program does all the arithmetic of a step on one multiprocessor.
ENABLED = os.environ.get("RNNBENCH_FUSED") == "1"


def interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET") == "1"


def available(device: torch.device, batch: int, hidden: int, gates: int = 1) -> bool:
    """Whether the fused kernels can run this shape on this device (``hidden``: H, the
    size of one gate's block for the LSTM and GRU, which have ``gates`` > 1)."""
    if triton is None or max(batch, hidden) > (MAX_TILE if gates == 1 else MAX_GATED_TILE):
        return False
    if device.type == "cuda":
        return ENABLED and not interpreting()
    return device.type == "cpu" and interpreting() and ALLOW_INTERPRETER


if triton is not None:

    @triton.jit
    def _tanh(a):
        return 2.0 * tl.sigmoid(2.0 * a) - 1.0  # no tl.tanh in every Triton version

    @triton.jit
    def _act(a, ACT: tl.constexpr):
        if ACT == 0:
            return _tanh(a)
        return tl.maximum(a, 0.0)

    @triton.jit
    def _rnn_fwd(U, H0, W, G, PM, PV, HOUT, Z, MEAN, VAR, RSTD,
                 B, T, HN, ROWS, eps,
                 NORM: tl.constexpr, BATCH_STATS: tl.constexpr, ACT: tl.constexpr,
                 BB: tl.constexpr, BH: tl.constexpr, PREC: tl.constexpr):
        rb = tl.arange(0, BB)
        rh = tl.arange(0, BH)
        mb = rb < B
        mh = rh < HN
        m2 = mb[:, None] & mh[None, :]
        # wt[k, j] = W[j, k], so that z = h @ wt = h W^T
        wt = tl.load(W + rh[None, :] * HN + rh[:, None], mask=mh[:, None] & mh[None, :], other=0.0)
        g = tl.load(G + rh, mask=mh, other=0.0)
        h = tl.load(H0 + rb[:, None] * HN + rh[None, :], mask=m2, other=0.0)
        seq = rb[:, None] * (T * HN) + rh[None, :]
        for t in range(T):
            z = tl.dot(h, wt, input_precision=PREC)
            if NORM != 0:  # the backward pass reads z_t instead of recomputing it
                tl.store(Z + seq + t * HN, z, mask=m2)
            if NORM == 1:
                if BATCH_STATS:
                    mean = tl.sum(tl.where(m2, z, 0.0), axis=0) / B
                    d = tl.where(m2, z - mean[None, :], 0.0)
                    var = tl.sum(d * d, axis=0) / B
                    tl.store(VAR + t * HN + rh, var, mask=mh)
                else:
                    r = tl.minimum(t, ROWS - 1)  # past the training length: the last row
                    mean = tl.load(PM + r * HN + rh, mask=mh, other=0.0)
                    var = tl.load(PV + r * HN + rh, mask=mh, other=1.0)
                tl.store(MEAN + t * HN + rh, mean, mask=mh)  # the backward pass needs it
                rstd = 1.0 / tl.sqrt(var + eps)
                tl.store(RSTD + t * HN + rh, rstd, mask=mh)
                n = (z - mean[None, :]) * (rstd * g)[None, :]
            elif NORM == 2:
                mean = tl.sum(tl.where(m2, z, 0.0), axis=1) / HN
                d = tl.where(m2, z - mean[:, None], 0.0)
                var = tl.sum(d * d, axis=1) / HN
                rstd = 1.0 / tl.sqrt(var + eps)
                tl.store(MEAN + t * B + rb, mean, mask=mb)
                tl.store(RSTD + t * B + rb, rstd, mask=mb)
                n = (z - mean[:, None]) * rstd[:, None] * g[None, :]
            else:
                n = z
            u = tl.load(U + seq + t * HN, mask=m2, other=0.0)
            h = tl.where(m2, _act(n + u, ACT), 0.0)
            tl.store(HOUT + seq + t * HN, h, mask=m2)

    @triton.jit
    def _rnn_bwd(HOUT, Z, W, G, MEAN, RSTD, DY, DU, DZ, DG, DH0,
                 B, T, HN,
                 NORM: tl.constexpr, BATCH_STATS: tl.constexpr, ACT: tl.constexpr,
                 BB: tl.constexpr, BH: tl.constexpr, PREC: tl.constexpr):
        # Only the sequential part runs here: dz_t and the carry dz_t W_hh. The
        # weight gradient dW_hh = sum_t dz_t^T h_{t-1} is one matmul afterwards,
        # which keeps one (B, H) x (H, H) product per step on chip.
        rb = tl.arange(0, BB)
        rh = tl.arange(0, BH)
        mb = rb < B
        mh = rh < HN
        m2 = mb[:, None] & mh[None, :]
        w = tl.load(W + rh[:, None] * HN + rh[None, :], mask=mh[:, None] & mh[None, :], other=0.0)  # w[j, k]
        g = tl.load(G + rh, mask=mh, other=0.0)
        seq = rb[:, None] * (T * HN) + rh[None, :]
        carry = tl.zeros((BB, BH), dtype=tl.float32)
        dg = tl.zeros((BH,), dtype=tl.float32)
        for i in range(T):
            t = T - 1 - i
            h = tl.load(HOUT + seq + t * HN, mask=m2, other=0.0)
            grad = tl.load(DY + seq + t * HN, mask=m2, other=0.0) + carry
            if ACT == 0:
                da = grad * (1.0 - h * h)
            else:
                da = tl.where(h > 0.0, grad, 0.0)
            da = tl.where(m2, da, 0.0)
            tl.store(DU + seq + t * HN, da, mask=m2)
            if NORM == 0:
                dz = da
            else:
                z = tl.load(Z + seq + t * HN, mask=m2, other=0.0)
                if NORM == 1:
                    mean = tl.load(MEAN + t * HN + rh, mask=mh, other=0.0)
                    rstd = tl.load(RSTD + t * HN + rh, mask=mh, other=0.0)
                    zhat = tl.where(m2, (z - mean[None, :]) * rstd[None, :], 0.0)
                    dg += tl.sum(da * zhat, axis=0)
                    dzh = da * g[None, :]
                    if BATCH_STATS:
                        s1 = tl.sum(dzh, axis=0) / B
                        s2 = tl.sum(dzh * zhat, axis=0) / B
                        dz = rstd[None, :] * (dzh - s1[None, :] - zhat * s2[None, :])
                    else:
                        dz = dzh * rstd[None, :]
                else:
                    mean = tl.load(MEAN + t * B + rb, mask=mb, other=0.0)
                    rstd = tl.load(RSTD + t * B + rb, mask=mb, other=0.0)
                    zhat = tl.where(m2, (z - mean[:, None]) * rstd[:, None], 0.0)
                    dg += tl.sum(da * zhat, axis=0)
                    dzh = da * g[None, :]
                    s1 = tl.sum(dzh, axis=1) / HN
                    s2 = tl.sum(dzh * zhat, axis=1) / HN
                    dz = rstd[:, None] * (dzh - s1[:, None] - zhat * s2[:, None])
                dz = tl.where(m2, dz, 0.0)
            tl.store(DZ + seq + t * HN, dz, mask=m2)
            carry = tl.dot(dz, w, input_precision=PREC)
        tl.store(DG + rh, dg, mask=mh)
        tl.store(DH0 + rb[:, None] * HN + rh[None, :], carry, mask=m2)


def _tile(n: int) -> int:
    return max(16, triton.next_power_of_2(n))


def _warps(bb: int, bh: int) -> int:
    return 8 if bb * bh >= 64 * 64 else 4


class FusedRNN(torch.autograd.Function):
    """Autograd wrapper; returns (h_seq, batch_mean, batch_var) — the last two for
    the running-statistics update, not differentiable."""

    @staticmethod
    def forward(ctx, u: Tensor, h0: Tensor, w: Tensor, g: Tensor, pm: Tensor | None, pv: Tensor | None,
                norm: str | None, batch_stats: bool, act: str, eps: float, tf32: bool):
        B, T, H = u.shape
        dev = u.device
        u, h0, w, g = (t.contiguous().float() for t in (u, h0, w, g))
        hout = torch.empty_like(u)
        k = NORMS[norm]
        z = torch.empty_like(u) if k else hout  # pre-norm W_hh h_{t-1}, for the backward pass
        stat_shape = (T, B) if k == 2 else (T, H)
        mean = torch.zeros(stat_shape, device=dev)
        var = torch.zeros(stat_shape, device=dev)
        rstd = torch.zeros(stat_shape, device=dev)
        rows = pm.shape[0] if pm is not None else 1
        pm_ = pm.contiguous().float() if pm is not None else mean
        pv_ = pv.contiguous().float() if pv is not None else var
        bb, bh = _tile(B), _tile(H)
        prec = "tf32" if tf32 else "ieee"
        _rnn_fwd[(1,)](u, h0, w, g, pm_, pv_, hout, z, mean, var, rstd, B, T, H, rows, float(eps),
                       NORM=k, BATCH_STATS=bool(batch_stats), ACT=ACTS[act], BB=bb, BH=bh, PREC=prec,
                       num_warps=_warps(bb, bh), num_stages=1)
        ctx.save_for_backward(hout, z, h0, w, g, mean, rstd)
        ctx.cfg = (k, bool(batch_stats), ACTS[act], bb, bh, prec)
        ctx.mark_non_differentiable(mean, var)
        return hout, mean, var

    @staticmethod
    def backward(ctx, dhout: Tensor, _dmean, _dvar):
        hout, z, h0, w, g, mean, rstd = ctx.saved_tensors
        k, batch_stats, act, bb, bh, prec = ctx.cfg
        B, T, H = hout.shape
        dy = dhout.contiguous().float() if dhout is not None else torch.zeros_like(hout)
        du, dz, dg, dh0 = torch.empty_like(hout), torch.empty_like(hout), torch.empty_like(g), torch.empty_like(h0)
        _rnn_bwd[(1,)](hout, z, w, g, mean, rstd, dy, du, dz, dg, dh0, B, T, H,
                       NORM=k, BATCH_STATS=batch_stats, ACT=act, BB=bb, BH=bh, PREC=prec,
                       num_warps=_warps(bb, bh), num_stages=1)  # pipelining would need > 227 KB of shared memory
        h_prev = torch.cat([h0.unsqueeze(1), hout[:, :-1]], dim=1)
        dw = dz.reshape(-1, H).t() @ h_prev.reshape(-1, H)
        return du, dh0, dw, (dg if k else None), None, None, None, None, None, None, None


def fused_rnn(u: Tensor, h0: Tensor, w_hh: Tensor, gamma: Tensor | None = None, *,
              norm: str | None = None, batch_stats: bool = True, pop_mean: Tensor | None = None,
              pop_var: Tensor | None = None, act: str = "tanh", eps: float = 1e-5,
              tf32: bool = False) -> tuple[Tensor, Tensor, Tensor]:
    """Run one RNN layer's recurrence. ``u`` (B, T, H): input term with both biases;
    ``h0`` (B, H); ``w_hh`` (H, H); ``gamma`` (H,) for ``norm`` in {"batch", "layer"}.
    Returns h (B, T, H) and the per-step mean and biased batch variance (T, H) of
    W_hh h_{t-1} with batch norm (the variance is zeros with population statistics);
    (T, B) with layer norm; zeros without a norm."""
    if gamma is None:
        gamma = torch.ones(u.shape[-1], device=u.device)
    if norm == "batch" and not batch_stats and (pop_mean is None or pop_var is None):
        raise ValueError("population statistics needed when batch_stats=False")
    return FusedRNN.apply(u, h0, w_hh, gamma, pop_mean, pop_var, norm, batch_stats, act, eps, tf32)


# -- gated cells: LSTM and GRU -------------------------------------------------------
#
# The same scheme with one (B, H) tile per gate: W_hh's G row blocks are G (H, H)
# tiles, z_t = h_{t-1} W_hh^T is G tile products per step, and a norm on z_t is batch
# norm per feature (local to a gate tile) or layer norm over all G*H features of a
# sample (sums across the gate tiles). The forward pass stores z_t (B, T, G*H) and,
# for the LSTM, c_t (B, T, H): the backward pass then needs one tile product per gate
# and step (the carried gradient) instead of two, which pays for the extra memory
# traffic. It writes the gradient of every step's pre-norm z_t to a (B, T, G*H) buffer,
# and dW_hh = Σ_t dz_t^T h_{t-1} is then one large matrix product outside the kernel,
# spread over the whole GPU, instead of a (G*H, H) accumulator held by one program.
# The gate weights are loaded once before the time loop when they fit in registers
# (G*BH*BH <= HOIST_LIMIT, about the RNN kernel's budget), and otherwise every step,
# each gate block right before its product (from L2), so that one block at a time
# is staged in shared memory. The gated kernels launch with num_stages=1: Triton's
# software pipeliner would multi-buffer the loop's loads, and at 128 x 128 tiles
# that asked for 576 KB (LSTM forward) to 2 MB (backward) of shared memory, far over
# the 227 KB an H100 block may use; without it both take 128 KB (compiled for sm_90
# with Triton 3.9's ptxas on a machine without a GPU; not yet run on one).

HOIST_LIMIT = 64 * 64 * 4


if triton is not None:

    @triton.jit
    def _tile_masks(B, HN, BB: tl.constexpr, BH: tl.constexpr):
        """Row and column indices of a (BB, BH) tile and the masks of its valid part."""
        rb = tl.arange(0, BB)
        rh = tl.arange(0, BH)
        mb = rb < B
        mh = rh < HN
        return rb, rh, mb, mh, mb[:, None] & mh[None, :], mh[:, None] & mh[None, :]

    @triton.jit
    def _wtile(W, k, HN, rh, mw, TRANS: tl.constexpr):
        """Gate k's (H, H) block of W (G*H, H): w[j, i] = W[k*H + j, i], or its transpose."""
        base = W + k * HN * HN
        if TRANS:
            w = tl.load(base + rh[None, :] * HN + rh[:, None], mask=mw, other=0.0)
        else:
            w = tl.load(base + rh[:, None] * HN + rh[None, :], mask=mw, other=0.0)
        return w

    @triton.jit
    def _rsum(x, m2):
        return tl.sum(tl.where(m2, x, 0.0), axis=1)

    @triton.jit
    def _rsq(x, mean, m2):
        d = tl.where(m2, x - mean[:, None], 0.0)
        return tl.sum(d * d, axis=1)

    @triton.jit
    def _bn_fwd(z, off, t, FEAT, B, m2, mh, PM, PV, ROWS, MEAN, VAR, RSTD, eps,
                BATCH_STATS: tl.constexpr):
        """Batch-normalized (no γ) tile of features ``off`` of a FEAT-feature term at step t;
        stores the statistics (the variance only when it is the batch's)."""
        if BATCH_STATS:
            mean = tl.sum(tl.where(m2, z, 0.0), axis=0) / B
            d = tl.where(m2, z - mean[None, :], 0.0)
            var = tl.sum(d * d, axis=0) / B
            tl.store(VAR + t * FEAT + off, var, mask=mh)
        else:
            r = tl.minimum(t, ROWS - 1)  # past the training length: the last row
            mean = tl.load(PM + r * FEAT + off, mask=mh, other=0.0)
            var = tl.load(PV + r * FEAT + off, mask=mh, other=1.0)
        rstd = 1.0 / tl.sqrt(var + eps)
        tl.store(MEAN + t * FEAT + off, mean, mask=mh)
        tl.store(RSTD + t * FEAT + off, rstd, mask=mh)
        return tl.where(m2, (z - mean[None, :]) * rstd[None, :], 0.0)

    @triton.jit
    def _ln_rstd(mean, sq, count, t, B, rb, mb, MEAN, RSTD, eps):
        """Layer norm: 1/std of every row from Σ(x - mean)²; stores mean and 1/std (T, B)."""
        rstd = 1.0 / tl.sqrt(sq / count + eps)
        tl.store(MEAN + t * B + rb, mean, mask=mb)
        tl.store(RSTD + t * B + rb, rstd, mask=mb)
        return rstd

    @triton.jit
    def _saved_stats(off, t, FEAT, B, rb, mb, mh, MEAN, RSTD, KIND: tl.constexpr):
        """The forward pass's statistics of step t: per feature (batch) or per row (layer)."""
        if KIND == 1:
            mean = tl.load(MEAN + t * FEAT + off, mask=mh, other=0.0)
            rstd = tl.load(RSTD + t * FEAT + off, mask=mh, other=0.0)
        else:
            mean = tl.load(MEAN + t * B + rb, mask=mb, other=0.0)
            rstd = tl.load(RSTD + t * B + rb, mask=mb, other=0.0)
        return mean, rstd

    @triton.jit
    def _zhat(z, mean, rstd, m2, KIND: tl.constexpr):
        if KIND == 1:
            zhat = tl.where(m2, (z - mean[None, :]) * rstd[None, :], 0.0)
        else:
            zhat = tl.where(m2, (z - mean[:, None]) * rstd[:, None], 0.0)
        return zhat

    @triton.jit
    def _bn_bwd(dzh, zhat, rstd, B, m2, BATCH_STATS: tl.constexpr):
        """Batch norm backward from dzh = d(normalized)·γ; batch statistics depend on z."""
        if BATCH_STATS:
            s1 = tl.sum(dzh, axis=0) / B
            s2 = tl.sum(dzh * zhat, axis=0) / B
            dz = rstd[None, :] * (dzh - s1[None, :] - zhat * s2[None, :])
        else:
            dz = dzh * rstd[None, :]
        return tl.where(m2, dz, 0.0)

    @triton.jit
    def _ln_bwd(dzh, zhat, s1, s2, rstd, m2):
        """Layer norm backward for one tile; s1, s2: row means of dzh and dzh·zhat over all features."""
        return tl.where(m2, rstd[:, None] * (dzh - s1[:, None] - zhat * s2[:, None]), 0.0)

    # Helpers have one return statement: Triton checks every return of a function
    # against the others, also one inside an `if` on a constexpr that is not taken.
    #
    # Gate helpers take and return four per-gate values (tiles or vectors) in PyTorch's
    # gate order; with NG == 3 (GRU) the fourth is a placeholder, passed through unread.

    @triton.jit
    def _gates_load(P, HN, mask, NG: tl.constexpr):
        """Gate k's block at P + k*HN, for every gate (P: a pointer tile or vector)."""
        x0 = tl.load(P, mask=mask, other=0.0)
        x1 = tl.load(P + HN, mask=mask, other=0.0)
        x2 = tl.load(P + 2 * HN, mask=mask, other=0.0)
        x3 = x2
        if NG == 4:
            x3 = tl.load(P + 3 * HN, mask=mask, other=0.0)
        return x0, x1, x2, x3

    @triton.jit
    def _gates_store(P, x0, x1, x2, x3, HN, mask, NG: tl.constexpr):
        tl.store(P, x0, mask=mask)
        tl.store(P + HN, x1, mask=mask)
        tl.store(P + 2 * HN, x2, mask=mask)
        if NG == 4:
            tl.store(P + 3 * HN, x3, mask=mask)

    @triton.jit
    def _gates_w(W, HN, rh, mw, TRANS: tl.constexpr, NG: tl.constexpr, HOIST: tl.constexpr):
        """The gate blocks of W to hold on chip for the whole recurrence (HOIST), or
        placeholders: then ``_w_at`` loads each block right before its product, so that
        one block at a time takes shared memory (four 128x128 fp32 blocks do not fit)."""
        if HOIST:
            w0 = _wtile(W, 0, HN, rh, mw, TRANS)
            w1 = _wtile(W, 1, HN, rh, mw, TRANS)
            w2 = _wtile(W, 2, HN, rh, mw, TRANS)
            w3 = w2
            if NG == 4:
                w3 = _wtile(W, 3, HN, rh, mw, TRANS)
        else:
            w0 = rh
            w1 = rh
            w2 = rh
            w3 = rh
        return w0, w1, w2, w3

    @triton.jit
    def _w_at(W, k, HN, rh, mw, wk, TRANS: tl.constexpr, HOIST: tl.constexpr):
        if HOIST:
            w = wk
        else:
            w = _wtile(W, k, HN, rh, mw, TRANS)
        return w

    @triton.jit
    def _gates_dot(h, W, HN, rh, mw, w0, w1, w2, w3, NG: tl.constexpr, HOIST: tl.constexpr,
                   PREC: tl.constexpr):
        """z = h W^T per gate (w: the transposed gate blocks, or placeholders)."""
        z0 = tl.dot(h, _w_at(W, 0, HN, rh, mw, w0, True, HOIST), input_precision=PREC)
        z1 = tl.dot(h, _w_at(W, 1, HN, rh, mw, w1, True, HOIST), input_precision=PREC)
        z2 = tl.dot(h, _w_at(W, 2, HN, rh, mw, w2, True, HOIST), input_precision=PREC)
        z3 = z2
        if NG == 4:
            z3 = tl.dot(h, _w_at(W, 3, HN, rh, mw, w3, True, HOIST), input_precision=PREC)
        return z0, z1, z2, z3

    @triton.jit
    def _gates_carry(acc, d0, d1, d2, d3, W, HN, rh, mw, w0, w1, w2, w3, NG: tl.constexpr,
                     HOIST: tl.constexpr, PREC: tl.constexpr):
        """acc + Σ_k dz_k W_k: the gradient reaching h_{t-1} through z_t."""
        acc = tl.dot(d0, _w_at(W, 0, HN, rh, mw, w0, False, HOIST), acc, input_precision=PREC)
        acc = tl.dot(d1, _w_at(W, 1, HN, rh, mw, w1, False, HOIST), acc, input_precision=PREC)
        acc = tl.dot(d2, _w_at(W, 2, HN, rh, mw, w2, False, HOIST), acc, input_precision=PREC)
        if NG == 4:
            acc = tl.dot(d3, _w_at(W, 3, HN, rh, mw, w3, False, HOIST), acc, input_precision=PREC)
        return acc

    @triton.jit
    def _gates_norm(z0, z1, z2, z3, g0, g1, g2, g3, t, HN, B, rb, rh, mb, mh, m2,
                    PM, PV, ROWS, MEAN, VAR, RSTD, eps,
                    NG: tl.constexpr, NORM: tl.constexpr, BATCH_STATS: tl.constexpr):
        """N(z)·γ of every gate tile (z itself without a norm), storing step t's statistics:
        batch norm per feature, layer norm over all NG*H features of a row."""
        FEAT = NG * HN
        if NORM == 1:
            z0 = _bn_fwd(z0, rh, t, FEAT, B, m2, mh, PM, PV, ROWS, MEAN, VAR, RSTD, eps, BATCH_STATS)
            z1 = _bn_fwd(z1, HN + rh, t, FEAT, B, m2, mh, PM, PV, ROWS, MEAN, VAR, RSTD, eps, BATCH_STATS)
            z2 = _bn_fwd(z2, 2 * HN + rh, t, FEAT, B, m2, mh, PM, PV, ROWS, MEAN, VAR, RSTD, eps, BATCH_STATS)
            if NG == 4:
                z3 = _bn_fwd(z3, 3 * HN + rh, t, FEAT, B, m2, mh, PM, PV, ROWS, MEAN, VAR, RSTD, eps,
                             BATCH_STATS)
        elif NORM == 2:
            s = _rsum(z0, m2) + _rsum(z1, m2) + _rsum(z2, m2)
            if NG == 4:
                s += _rsum(z3, m2)
            mean = s / FEAT
            q = _rsq(z0, mean, m2) + _rsq(z1, mean, m2) + _rsq(z2, mean, m2)
            if NG == 4:
                q += _rsq(z3, mean, m2)
            rstd = _ln_rstd(mean, q, FEAT, t, B, rb, mb, MEAN, RSTD, eps)
            z0 = _zhat(z0, mean, rstd, m2, 2)
            z1 = _zhat(z1, mean, rstd, m2, 2)
            z2 = _zhat(z2, mean, rstd, m2, 2)
            z3 = _zhat(z3, mean, rstd, m2, 2)
        if NORM != 0:
            z0 = z0 * g0[None, :]
            z1 = z1 * g1[None, :]
            z2 = z2 * g2[None, :]
            z3 = z3 * g3[None, :]
        return z0, z1, z2, z3

    @triton.jit
    def _gates_zhat(z0, z1, z2, z3, t, HN, B, rb, rh, mb, mh, m2, MEAN, RSTD,
                    NG: tl.constexpr, NORM: tl.constexpr):
        """ẑ of every gate tile from the forward pass's statistics (NORM 1 or 2), and the
        1/std vectors: one per gate (batch norm) or the row vector, four times (layer norm)."""
        FEAT = NG * HN
        if NORM == 1:
            mean, r0 = _saved_stats(rh, t, FEAT, B, rb, mb, mh, MEAN, RSTD, 1)
            z0 = _zhat(z0, mean, r0, m2, 1)
            mean, r1 = _saved_stats(HN + rh, t, FEAT, B, rb, mb, mh, MEAN, RSTD, 1)
            z1 = _zhat(z1, mean, r1, m2, 1)
            mean, r2 = _saved_stats(2 * HN + rh, t, FEAT, B, rb, mb, mh, MEAN, RSTD, 1)
            z2 = _zhat(z2, mean, r2, m2, 1)
            r3 = r2
            if NG == 4:
                mean, r3 = _saved_stats(3 * HN + rh, t, FEAT, B, rb, mb, mh, MEAN, RSTD, 1)
                z3 = _zhat(z3, mean, r3, m2, 1)
        else:
            mean, r0 = _saved_stats(rh, t, FEAT, B, rb, mb, mh, MEAN, RSTD, 2)
            z0 = _zhat(z0, mean, r0, m2, 2)
            z1 = _zhat(z1, mean, r0, m2, 2)
            z2 = _zhat(z2, mean, r0, m2, 2)
            z3 = _zhat(z3, mean, r0, m2, 2)
            r1 = r0
            r2 = r0
            r3 = r0
        return z0, z1, z2, z3, r0, r1, r2, r3

    @triton.jit
    def _gates_norm_bwd(d0, d1, d2, d3, z0, z1, z2, z3, r0, r1, r2, r3, g0, g1, g2, g3, B, HN, m2,
                        NG: tl.constexpr, NORM: tl.constexpr, BATCH_STATS: tl.constexpr):
        """From the gradients d of N(z)·γ (NORM 1 or 2) and ẑ: the gradients of the pre-norm
        z and this step's dγ terms Σ_b d·ẑ, per gate."""
        e0 = tl.sum(d0 * z0, axis=0)
        e1 = tl.sum(d1 * z1, axis=0)
        e2 = tl.sum(d2 * z2, axis=0)
        e3 = tl.sum(d3 * z3, axis=0)
        d0 = d0 * g0[None, :]
        d1 = d1 * g1[None, :]
        d2 = d2 * g2[None, :]
        d3 = d3 * g3[None, :]
        if NORM == 1:
            d0 = _bn_bwd(d0, z0, r0, B, m2, BATCH_STATS)
            d1 = _bn_bwd(d1, z1, r1, B, m2, BATCH_STATS)
            d2 = _bn_bwd(d2, z2, r2, B, m2, BATCH_STATS)
            d3 = _bn_bwd(d3, z3, r3, B, m2, BATCH_STATS)
        else:
            s1 = _rsum(d0, m2) + _rsum(d1, m2) + _rsum(d2, m2)
            s2 = _rsum(d0 * z0, m2) + _rsum(d1 * z1, m2) + _rsum(d2 * z2, m2)
            if NG == 4:
                s1 += _rsum(d3, m2)
                s2 += _rsum(d3 * z3, m2)
            s1 = s1 / (NG * HN)
            s2 = s2 / (NG * HN)
            d0 = _ln_bwd(d0, z0, s1, s2, r0, m2)
            d1 = _ln_bwd(d1, z1, s1, s2, r0, m2)
            d2 = _ln_bwd(d2, z2, s1, s2, r0, m2)
            d3 = _ln_bwd(d3, z3, s1, s2, r0, m2)
        return d0, d1, d2, d3, e0, e1, e2, e3

    @triton.jit
    def _lstm_fwd(U, H0, C0, W, G, PM, PV, GC, BC, CPM, CPV,
                  HOUT, COUT, Z, MEAN, VAR, RSTD, CMEAN, CVAR, CRSTD,
                  B, T, HN, ROWS, CROWS, eps,
                  NORM: tl.constexpr, CNORM: tl.constexpr, BATCH_STATS: tl.constexpr,
                  HOIST: tl.constexpr, BB: tl.constexpr, BH: tl.constexpr, PREC: tl.constexpr):
        rb, rh, mb, mh, m2, mw = _tile_masks(B, HN, BB, BH)
        GH = 4 * HN
        wi, wf, wg, wo = _gates_w(W, HN, rh, mw, True, 4, HOIST)
        gi, gf, gg, go = _gates_load(G + rh, HN, mh, 4)
        gc = tl.load(GC + rh, mask=mh, other=0.0)
        bc = tl.load(BC + rh, mask=mh, other=0.0)
        st = rb[:, None] * HN + rh[None, :]
        h = tl.load(H0 + st, mask=m2, other=0.0)
        c = tl.load(C0 + st, mask=m2, other=0.0)
        sq = rb[:, None] * (T * HN) + rh[None, :]
        gq = rb[:, None] * (T * GH) + rh[None, :]
        for t in range(T):
            o = gq + t * GH
            zi, zf, zg, zo = _gates_dot(h, W, HN, rh, mw, wi, wf, wg, wo, 4, HOIST, PREC)
            _gates_store(Z + o, zi, zf, zg, zo, HN, m2, 4)
            zi, zf, zg, zo = _gates_norm(zi, zf, zg, zo, gi, gf, gg, go, t, HN, B, rb, rh, mb, mh, m2,
                                         PM, PV, ROWS, MEAN, VAR, RSTD, eps, 4, NORM, BATCH_STATS)
            ui, uf, ug, uo = _gates_load(U + o, HN, m2, 4)
            c = tl.where(m2, tl.sigmoid(zf + uf) * c + tl.sigmoid(zi + ui) * _tanh(zg + ug), 0.0)
            tl.store(COUT + sq + t * HN, c, mask=m2)
            if CNORM == 1:
                cn = _bn_fwd(c, rh, t, HN, B, m2, mh, CPM, CPV, CROWS, CMEAN, CVAR, CRSTD, eps,
                             BATCH_STATS) * gc[None, :] + bc[None, :]
            elif CNORM == 2:
                cm = _rsum(c, m2) / HN
                cr = _ln_rstd(cm, _rsq(c, cm, m2), HN, t, B, rb, mb, CMEAN, CRSTD, eps)
                cn = _zhat(c, cm, cr, m2, 2) * gc[None, :] + bc[None, :]
            else:
                cn = c
            h = tl.where(m2, tl.sigmoid(zo + uo) * _tanh(cn), 0.0)
            tl.store(HOUT + sq + t * HN, h, mask=m2)

    @triton.jit
    def _lstm_bwd(U, Z, HOUT, H0, COUT, C0, W, G, GC, BC, MEAN, RSTD, CMEAN, CRSTD, DY, DCN,
                  DU, DZ, DG, DGC, DBC, DH0, DC0,
                  B, T, HN,
                  NORM: tl.constexpr, CNORM: tl.constexpr, BATCH_STATS: tl.constexpr,
                  HOIST: tl.constexpr, BB: tl.constexpr, BH: tl.constexpr, PREC: tl.constexpr):
        rb, rh, mb, mh, m2, mw = _tile_masks(B, HN, BB, BH)
        GH = 4 * HN
        wi, wf, wg, wo = _gates_w(W, HN, rh, mw, False, 4, HOIST)
        gi, gf, gg, go = _gates_load(G + rh, HN, mh, 4)
        gc = tl.load(GC + rh, mask=mh, other=0.0)
        bc = tl.load(BC + rh, mask=mh, other=0.0)
        st = rb[:, None] * HN + rh[None, :]
        c0 = tl.load(C0 + st, mask=m2, other=0.0)
        dc = tl.load(DCN + st, mask=m2, other=0.0)
        dh = tl.zeros((BB, BH), dtype=tl.float32)
        dgi = tl.zeros((BH,), dtype=tl.float32)
        dgf = tl.zeros((BH,), dtype=tl.float32)
        dgg = tl.zeros((BH,), dtype=tl.float32)
        dgo = tl.zeros((BH,), dtype=tl.float32)
        dgc = tl.zeros((BH,), dtype=tl.float32)
        dbc = tl.zeros((BH,), dtype=tl.float32)
        sq = rb[:, None] * (T * HN) + rh[None, :]
        gq = rb[:, None] * (T * GH) + rh[None, :]
        for i in range(T):
            t = T - 1 - i
            o = gq + t * GH
            zi, zf, zg, zo = _gates_load(Z + o, HN, m2, 4)  # with a norm: then ẑ
            ni, nf, ng, no = zi, zf, zg, zo  # the gates' recurrent terms N(z)·γ
            if NORM != 0:
                zi, zf, zg, zo, ri, rf, rg, ro = _gates_zhat(zi, zf, zg, zo, t, HN, B, rb, rh, mb, mh, m2,
                                                             MEAN, RSTD, 4, NORM)
                ni, nf, ng, no = zi * gi[None, :], zf * gf[None, :], zg * gg[None, :], zo * go[None, :]
            ui, uf, ug, uo = _gates_load(U + o, HN, m2, 4)
            si = tl.sigmoid(ni + ui)
            sf = tl.sigmoid(nf + uf)
            tg = _tanh(ng + ug)
            so = tl.sigmoid(no + uo)
            c = tl.load(COUT + sq + t * HN, mask=m2, other=0.0)
            prev = tl.load(COUT + sq + tl.maximum(t - 1, 0) * HN, mask=m2, other=0.0)
            cp = tl.where(t > 0, prev, c0)
            if CNORM == 0:
                tc = _tanh(c)
            else:
                cm, cr = _saved_stats(rh, t, HN, B, rb, mb, mh, CMEAN, CRSTD, CNORM)
                chat = _zhat(c, cm, cr, m2, CNORM)
                tc = _tanh(chat * gc[None, :] + bc[None, :])
            grad = tl.load(DY + sq + t * HN, mask=m2, other=0.0) + dh
            dao = tl.where(m2, grad * tc * so * (1.0 - so), 0.0)
            dcn = tl.where(m2, grad * so * (1.0 - tc * tc), 0.0)
            if CNORM != 0:
                dgc += tl.sum(dcn * chat, axis=0)
                dbc += tl.sum(dcn, axis=0)
                dch = dcn * gc[None, :]
                if CNORM == 1:
                    dcn = _bn_bwd(dch, chat, cr, B, m2, BATCH_STATS)
                else:
                    dcn = _ln_bwd(dch, chat, _rsum(dch, m2) / HN, _rsum(dch * chat, m2) / HN, cr, m2)
            dc = dc + dcn
            dai = tl.where(m2, dc * tg * si * (1.0 - si), 0.0)
            daf = tl.where(m2, dc * cp * sf * (1.0 - sf), 0.0)
            dag = tl.where(m2, dc * si * (1.0 - tg * tg), 0.0)
            dc = tl.where(m2, dc * sf, 0.0)
            _gates_store(DU + o, dai, daf, dag, dao, HN, m2, 4)
            if NORM != 0:
                dai, daf, dag, dao, ei, ef, eg, eo = _gates_norm_bwd(
                    dai, daf, dag, dao, zi, zf, zg, zo, ri, rf, rg, ro, gi, gf, gg, go, B, HN, m2,
                    4, NORM, BATCH_STATS)
                dgi += ei
                dgf += ef
                dgg += eg
                dgo += eo
            _gates_store(DZ + o, dai, daf, dag, dao, HN, m2, 4)
            dh = _gates_carry(tl.zeros((BB, BH), dtype=tl.float32), dai, daf, dag, dao, W, HN, rh, mw,
                              wi, wf, wg, wo, 4, HOIST, PREC)
        _gates_store(DG + rh, dgi, dgf, dgg, dgo, HN, mh, 4)
        tl.store(DGC + rh, dgc, mask=mh)
        tl.store(DBC + rh, dbc, mask=mh)
        tl.store(DH0 + st, dh, mask=m2)
        tl.store(DC0 + st, dc, mask=m2)

    @triton.jit
    def _gru_fwd(U, H0, W, G, BHN, PM, PV, HOUT, Z, MEAN, VAR, RSTD,
                 B, T, HN, ROWS, eps,
                 NORM: tl.constexpr, BATCH_STATS: tl.constexpr,
                 HOIST: tl.constexpr, BB: tl.constexpr, BH: tl.constexpr, PREC: tl.constexpr):
        rb, rh, mb, mh, m2, mw = _tile_masks(B, HN, BB, BH)
        GH = 3 * HN
        wr, wq, wn, w_ = _gates_w(W, HN, rh, mw, True, 3, HOIST)
        gr, gq, gn, g_ = _gates_load(G + rh, HN, mh, 3)
        bhn = tl.load(BHN + rh, mask=mh, other=0.0)
        h = tl.load(H0 + rb[:, None] * HN + rh[None, :], mask=m2, other=0.0)
        sq = rb[:, None] * (T * HN) + rh[None, :]
        oq = rb[:, None] * (T * GH) + rh[None, :]
        for t in range(T):
            o = oq + t * GH
            zr, zq, zn, z_ = _gates_dot(h, W, HN, rh, mw, wr, wq, wn, w_, 3, HOIST, PREC)
            _gates_store(Z + o, zr, zq, zn, zn, HN, m2, 3)
            zr, zq, zn, z_ = _gates_norm(zr, zq, zn, zn, gr, gq, gn, gn, t, HN, B, rb, rh, mb, mh, m2,
                                        PM, PV, ROWS, MEAN, VAR, RSTD, eps, 3, NORM, BATCH_STATS)
            ur, uq, un, u_ = _gates_load(U + o, HN, m2, 3)
            r = tl.sigmoid(zr + ur)
            q = tl.sigmoid(zq + uq)
            n = _tanh(un + r * (zn + bhn[None, :]))
            h = tl.where(m2, (1.0 - q) * n + q * h, 0.0)
            tl.store(HOUT + sq + t * HN, h, mask=m2)

    @triton.jit
    def _gru_bwd(U, Z, HOUT, H0, W, G, BHN, MEAN, RSTD, DY, DU, DZ, DG, DBHN, DH0,
                 B, T, HN,
                 NORM: tl.constexpr, BATCH_STATS: tl.constexpr,
                 HOIST: tl.constexpr, BB: tl.constexpr, BH: tl.constexpr, PREC: tl.constexpr):
        rb, rh, mb, mh, m2, mw = _tile_masks(B, HN, BB, BH)
        GH = 3 * HN
        wr, wq, wn, w_ = _gates_w(W, HN, rh, mw, False, 3, HOIST)
        gr, gq, gn, g_ = _gates_load(G + rh, HN, mh, 3)
        bhn = tl.load(BHN + rh, mask=mh, other=0.0)
        h0 = tl.load(H0 + rb[:, None] * HN + rh[None, :], mask=m2, other=0.0)
        dh = tl.zeros((BB, BH), dtype=tl.float32)
        dgr = tl.zeros((BH,), dtype=tl.float32)
        dgq = tl.zeros((BH,), dtype=tl.float32)
        dgn = tl.zeros((BH,), dtype=tl.float32)
        dbhn = tl.zeros((BH,), dtype=tl.float32)
        sq = rb[:, None] * (T * HN) + rh[None, :]
        oq = rb[:, None] * (T * GH) + rh[None, :]
        for i in range(T):
            t = T - 1 - i
            o = oq + t * GH
            zr, zq, zn, z_ = _gates_load(Z + o, HN, m2, 3)  # with a norm: then ẑ
            nr, nq, nn = zr, zq, zn  # the gates' recurrent terms N(z)·γ
            if NORM != 0:
                zr, zq, zn, z_, rr, rq, rn, r_ = _gates_zhat(zr, zq, zn, zn, t, HN, B, rb, rh, mb, mh, m2,
                                                           MEAN, RSTD, 3, NORM)
                nr, nq, nn = zr * gr[None, :], zq * gq[None, :], zn * gn[None, :]
            ur, uq, un, u_ = _gates_load(U + o, HN, m2, 3)
            r = tl.sigmoid(nr + ur)
            q = tl.sigmoid(nq + uq)
            hn = nn + bhn[None, :]
            n = _tanh(un + r * hn)
            prev = tl.load(HOUT + sq + tl.maximum(t - 1, 0) * HN, mask=m2, other=0.0)
            hp = tl.where(t > 0, prev, h0)
            grad = tl.load(DY + sq + t * HN, mask=m2, other=0.0) + dh
            dan = tl.where(m2, grad * (1.0 - q) * (1.0 - n * n), 0.0)
            daq = tl.where(m2, grad * (hp - n) * q * (1.0 - q), 0.0)
            dar = tl.where(m2, dan * hn * r * (1.0 - r), 0.0)
            dhn = dan * r  # the gradient of N(z_n)·γ_n + b_hn
            dbhn += tl.sum(dhn, axis=0)
            _gates_store(DU + o, dar, daq, dan, dan, HN, m2, 3)
            if NORM != 0:
                dar, daq, dhn, d_, er, eq, en, e_ = _gates_norm_bwd(
                    dar, daq, dhn, dhn, zr, zq, zn, zn, rr, rq, rn, rn, gr, gq, gn, gn, B, HN, m2,
                    3, NORM, BATCH_STATS)
                dgr += er
                dgq += eq
                dgn += en
            _gates_store(DZ + o, dar, daq, dhn, dhn, HN, m2, 3)
            # h_t = (1 - q) n + q h_{t-1}: q·grad reaches h_{t-1} directly
            dh = _gates_carry(tl.where(m2, grad * q, 0.0), dar, daq, dhn, dhn, W, HN, rh, mw,
                              wr, wq, wn, w_, 3, HOIST, PREC)
        _gates_store(DG + rh, dgr, dgq, dgn, dgn, HN, mh, 3)
        tl.store(DBHN + rh, dbhn, mask=mh)
        tl.store(DH0 + rb[:, None] * HN + rh[None, :], dh, mask=m2)


class _Launch(NamedTuple):
    """What a gated-cell launch is compiled for (constexprs) and its scalars."""

    norm: int
    cell_norm: int
    batch_stats: bool
    eps: float
    prec: str
    bb: int
    bh: int
    hoist: bool
    warps: int

    @property
    def consts(self) -> dict:
        return dict(NORM=self.norm, BATCH_STATS=self.batch_stats, HOIST=self.hoist, BB=self.bb, BH=self.bh,
                    PREC=self.prec, num_warps=self.warps, num_stages=1)


def _launch(gates: int, B: int, H: int, norm: str | None, cell_norm: str | None, batch_stats: bool,
            eps: float, tf32: bool) -> _Launch:
    bb, bh = _tile(B), _tile(H)
    return _Launch(NORMS[norm], NORMS[cell_norm], bool(batch_stats), float(eps), "tf32" if tf32 else "ieee",
                   bb, bh, gates * bh * bh <= HOIST_LIMIT, _warps(bb, bh))


def _stat_buffers(kind: int, T: int, B: int, feats: int, dev: torch.device) -> tuple[Tensor, Tensor, Tensor]:
    """Mean, biased variance, 1/std per step: (T, feats) for batch norm, (T, B) for layer norm."""
    shape = (T, B) if kind == 2 else (T, feats) if kind == 1 else (1,)
    return torch.zeros(shape, device=dev), torch.zeros(shape, device=dev), torch.zeros(shape, device=dev)


def _population(norm: str | None, batch_stats: bool, mean: Tensor | None, var: Tensor | None,
                feats: int, dev: torch.device, what: str) -> tuple[Tensor, Tensor, int]:
    """Population rows (R, feats) as the kernel reads them (float32, contiguous), and R;
    a one-row dummy when they are not used. Checked as ``scan.population`` checks them."""
    pm, pv = scan.population(norm, batch_stats, mean, var, feats, torch.empty(0, device=dev, dtype=torch.float32),
                              what)
    if pm is None:
        dummy = torch.zeros(1, device=dev)
        return dummy, dummy, 1
    return pm.contiguous(), pv.contiguous(), pm.shape[0]


_check = scan.check_args


def _batch_stats_dict(**terms: tuple[int, bool, Tensor, Tensor]) -> dict[str, tuple[Tensor, Tensor]]:
    return {name: (mean, var) for name, (kind, batch, mean, var) in terms.items() if kind == 1 and batch}


def _dw(dz: Tensor, h0: Tensor, hout: Tensor) -> Tensor:
    """dW_hh = Σ_t dz_t^T h_{t-1}: one matrix product over all steps."""
    hprev = torch.cat([h0.unsqueeze(1), hout[:, :-1]], 1)
    return dz.reshape(-1, dz.shape[-1]).t() @ hprev.reshape(-1, hprev.shape[-1])


def _f32(*ts: Tensor) -> list[Tensor]:
    return [t.contiguous().float() for t in ts]


class FusedLSTM(torch.autograd.Function):
    """Autograd wrapper of ``_lstm_fwd`` / ``_lstm_bwd``; see ``fused_lstm``."""

    @staticmethod
    def forward(ctx, u, h0, c0, w, g, gc, bc, pops, cfg: _Launch):
        B, T, GH = u.shape
        H = GH // 4
        dev = u.device
        u, h0, c0, w, g, gc, bc = _f32(u, h0, c0, w, g, gc, bc)
        pm, pv, rows, cpm, cpv, crows = pops
        hout = u.new_empty(B, T, H)
        cout = u.new_empty(B, T, H)
        z = torch.empty_like(u)
        mean, var, rstd = _stat_buffers(cfg.norm, T, B, GH, dev)
        cmean, cvar, crstd = _stat_buffers(cfg.cell_norm, T, B, H, dev)
        _lstm_fwd[(1,)](u, h0, c0, w, g, pm, pv, gc, bc, cpm, cpv, hout, cout, z,
                        mean, var, rstd, cmean, cvar, crstd, B, T, H, rows, crows, cfg.eps,
                        CNORM=cfg.cell_norm, **cfg.consts)
        ctx.save_for_backward(u, z, hout, h0, cout, c0, w, g, gc, bc, mean, rstd, cmean, crstd)
        ctx.cfg = cfg
        ctx.mark_non_differentiable(mean, var, cmean, cvar)
        return hout, cout[:, -1].clone(), mean, var, cmean, cvar

    @staticmethod
    def backward(ctx, dhout, dc_last, *_stats):
        u, z, hout, h0, cout, c0, w, g, gc, bc, mean, rstd, cmean, crstd = ctx.saved_tensors
        cfg = ctx.cfg
        B, T, H = hout.shape
        dy = dhout.contiguous().float() if dhout is not None else torch.zeros_like(hout)
        dcn = dc_last.contiguous().float() if dc_last is not None else torch.zeros_like(h0)
        du, dz = torch.empty_like(u), torch.empty_like(u)
        dg, dgc, dbc = torch.empty_like(g), torch.empty_like(gc), torch.empty_like(bc)
        dh0, dc0 = torch.empty_like(h0), torch.empty_like(c0)
        _lstm_bwd[(1,)](u, z, hout, h0, cout, c0, w, g, gc, bc, mean, rstd, cmean, crstd, dy, dcn,
                        du, dz, dg, dgc, dbc, dh0, dc0, B, T, H, CNORM=cfg.cell_norm, **cfg.consts)
        cell = cfg.cell_norm != 0
        return (du, dh0, dc0, _dw(dz, h0, hout), dg if cfg.norm else None, dgc if cell else None,
                dbc if cell else None, None, None)


def fused_lstm(u: Tensor, h0: Tensor, c0: Tensor, w_hh: Tensor, gamma_hh: Tensor | None = None, *,
               norm: str | None = None, batch_stats: bool = True, pop_mean: Tensor | None = None,
               pop_var: Tensor | None = None, cell_norm: str | None = None, gamma_c: Tensor | None = None,
               beta_c: Tensor | None = None, cell_pop_mean: Tensor | None = None,
               cell_pop_var: Tensor | None = None, eps: float = 1e-5, tf32: bool = False
               ) -> tuple[Tensor, Tensor, dict[str, tuple[Tensor, Tensor]]]:
    """Run one LSTM layer's recurrence (PyTorch gate order i, f, g, o):

        z_t = h_{t-1} W_hh^T,   [i f g o] = u_t + N(z_t)
        c_t = σ(f) c_{t-1} + σ(i) tanh(g),   h_t = σ(o) tanh(N_c(c_t))

    ``u`` (B, T, 4H): the input term of every step *with both biases* (for
    ``NormLoopCore``: ``input_term(layer, x, None) + b_hh``, b_hh being added after
    N in ``recurrent_term``); ``h0``, ``c0`` (B, H); ``w_hh`` (4H, H).
    ``norm`` on z_t: None, "batch" (per feature over the batch, γ = ``gamma_hh``
    (4H,), no β) or "layer" (over all 4H features of a sample, γ, no β).
    ``cell_norm`` on c_t before the output tanh: None, "batch" (per feature, H) or
    "layer" (over H), each with ``gamma_c`` and ``beta_c`` (H,); the c_t carried to
    the next step is never normalized. Batch norms use the step's batch statistics
    when ``batch_stats`` (training, or evaluation with norm_eval=batch), else the
    population rows ``pop_mean``/``pop_var`` (R, 4H) and ``cell_pop_mean``/
    ``cell_pop_var`` (R', H): row min(t, R-1) at step t; zero rows means mean 0,
    variance 1. ``eps`` is added to every variance; ``tf32`` lets the tile products
    use TF32 (CUDA).

    Returns h_seq (B, T, H) (its last step is h_T), c_T (B, H) and a dict of the
    per-step batch statistics for the running-statistics update, detached:
    ``"hh"``: (mean, biased var), each (T, 4H), when norm="batch" with batch_stats;
    ``"c"``: (mean, biased var), each (T, H), when cell_norm="batch" with batch_stats.
    Differentiable in u, h0, c0, w_hh, gamma_hh, gamma_c, beta_c. No padding mask
    (``lengths``) and no per-step perturbation: callers needing them use the loop.
    """
    B, _, H = _check(u, h0, 4, (norm, cell_norm), c0=c0, w_hh=w_hh, gamma_hh=gamma_hh, gamma_c=gamma_c,
                     beta_c=beta_c)
    dev = u.device
    one = torch.ones(H, device=dev)
    gamma_hh = gamma_hh if gamma_hh is not None else one.repeat(4)
    gamma_c = gamma_c if gamma_c is not None else one
    beta_c = beta_c if beta_c is not None else torch.zeros(H, device=dev)
    pops = (*_population(norm, batch_stats, pop_mean, pop_var, 4 * H, dev, "recurrent norm"),
            *_population(cell_norm, batch_stats, cell_pop_mean, cell_pop_var, H, dev, "cell norm"))
    cfg = _launch(4, B, H, norm, cell_norm, batch_stats, eps, tf32)
    h, c, mean, var, cmean, cvar = FusedLSTM.apply(u, h0, c0, w_hh, gamma_hh, gamma_c, beta_c, pops, cfg)
    return h, c, _batch_stats_dict(hh=(cfg.norm, cfg.batch_stats, mean, var),
                                   c=(cfg.cell_norm, cfg.batch_stats, cmean, cvar))


class FusedGRU(torch.autograd.Function):
    """Autograd wrapper of ``_gru_fwd`` / ``_gru_bwd``; see ``fused_gru``."""

    @staticmethod
    def forward(ctx, u, h0, w, b_hn, g, pops, cfg: _Launch):
        B, T, GH = u.shape
        H = GH // 3
        u, h0, w, b_hn, g = _f32(u, h0, w, b_hn, g)
        pm, pv, rows = pops
        hout = u.new_empty(B, T, H)
        z = torch.empty_like(u)
        mean, var, rstd = _stat_buffers(cfg.norm, T, B, GH, u.device)
        _gru_fwd[(1,)](u, h0, w, g, b_hn, pm, pv, hout, z, mean, var, rstd, B, T, H, rows, cfg.eps,
                       **cfg.consts)
        ctx.save_for_backward(u, z, hout, h0, w, b_hn, g, mean, rstd)
        ctx.cfg = cfg
        ctx.mark_non_differentiable(mean, var)
        return hout, mean, var

    @staticmethod
    def backward(ctx, dhout, *_stats):
        u, z, hout, h0, w, b_hn, g, mean, rstd = ctx.saved_tensors
        cfg = ctx.cfg
        B, T, H = hout.shape
        dy = dhout.contiguous().float() if dhout is not None else torch.zeros_like(hout)
        du, dz = torch.empty_like(u), torch.empty_like(u)
        dg, dbhn, dh0 = torch.empty_like(g), torch.empty_like(b_hn), torch.empty_like(h0)
        _gru_bwd[(1,)](u, z, hout, h0, w, g, b_hn, mean, rstd, dy, du, dz, dg, dbhn, dh0, B, T, H,
                       **cfg.consts)
        return du, dh0, _dw(dz, h0, hout), dbhn, (dg if cfg.norm else None), None, None


def fused_gru(u: Tensor, h0: Tensor, w_hh: Tensor, b_hn: Tensor, gamma_hh: Tensor | None = None, *,
              norm: str | None = None, batch_stats: bool = True, pop_mean: Tensor | None = None,
              pop_var: Tensor | None = None, eps: float = 1e-5, tf32: bool = False
              ) -> tuple[Tensor, dict[str, tuple[Tensor, Tensor]]]:
    """Run one GRU layer's recurrence (PyTorch gate order r, z, n, as ``nn.GRU``):

        a_t = N(h_{t-1} W_hh^T)   (3H: a_r, a_z, a_n)
        r = σ(u_r + a_r),  z = σ(u_z + a_z),  n = tanh(u_n + r ⊙ (a_n + b_hn))
        h_t = (1 - z) n + z h_{t-1}

    ``u`` (B, T, 3H): the input term of every step with b_ih and the r, z parts of
    b_hh (for ``NormLoopCore``: ``input_term(layer, x, None) + cat(b_hr, b_hz, 0)``);
    ``b_hn`` (H,): the n part of b_hh, which stays inside the reset gate's product
    (also with a norm: ``recurrent_term`` adds b_hh after N). ``h0`` (B, H);
    ``w_hh`` (3H, H). ``norm``, ``batch_stats``, population rows, ``eps`` and
    ``tf32`` as in ``fused_lstm`` (layer norm is over all 3H features of a sample).

    Returns h_seq (B, T, H) and the dict of batch statistics (``"hh"``: mean and
    biased variance (T, 3H) when norm="batch" with batch_stats). Differentiable in
    u, h0, w_hh, b_hn, gamma_hh.
    """
    B, _, H = _check(u, h0, 3, (norm,), w_hh=w_hh, b_hn=b_hn, gamma_hh=gamma_hh)
    dev = u.device
    gamma_hh = gamma_hh if gamma_hh is not None else torch.ones(3 * H, device=dev)
    pops = _population(norm, batch_stats, pop_mean, pop_var, 3 * H, dev, "recurrent norm")
    cfg = _launch(3, B, H, norm, None, batch_stats, eps, tf32)
    h, mean, var = FusedGRU.apply(u, h0, w_hh, b_hn, gamma_hh, pops, cfg)
    return h, _batch_stats_dict(hh=(cfg.norm, cfg.batch_stats, mean, var))
