"""A fused recurrence kernel (Triton) for the RNN family, forward and backward.

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

The whole batch and hidden state are one tile (at most 128 x 128 after padding to
powers of two), which covers the seq-MNIST (B=100, H=100) and adding (B=128,
H=128) shapes; larger shapes use the reference loop. Batch statistics need the
whole batch in one program, which is why the batch is not split. The kernel is
tested on the CPU in Triton's interpreter (``TRITON_INTERPRET=1``) against the
reference loop, and on CUDA by tests/test_gpu.py.
"""

from __future__ import annotations

import os

import torch
from torch import Tensor

try:  # Triton is optional: without it (or without CUDA) the reference loop runs.
    import triton
    import triton.language as tl
except ImportError:  # pragma: no cover - depends on the installation
    triton = None

NORMS = {None: 0, "batch": 1, "layer": 2}
ACTS = {"tanh": 0, "relu": 1}
MAX_TILE = 128


# On the CPU the kernel runs only in Triton's interpreter, for tests: far slower than
# the reference loop, so it is used there only when a test switches this on.
ALLOW_INTERPRETER = False


def interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET") == "1"


def available(device: torch.device, batch: int, hidden: int) -> bool:
    """Whether the fused kernel can run this shape on this device."""
    if triton is None or max(batch, hidden) > MAX_TILE:
        return False
    if device.type == "cuda":
        return not interpreting()
    return device.type == "cpu" and interpreting() and ALLOW_INTERPRETER


if triton is not None:

    @triton.jit
    def _act(a, ACT: tl.constexpr):
        if ACT == 0:
            return 2.0 * tl.sigmoid(2.0 * a) - 1.0  # tanh
        return tl.maximum(a, 0.0)

    @triton.jit
    def _rnn_fwd(U, H0, W, G, PM, PV, HOUT, MEAN, VAR, RSTD,
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
    def _rnn_bwd(HOUT, H0, W, G, MEAN, RSTD, DY, DU, DW, DG, DH0,
                 B, T, HN,
                 NORM: tl.constexpr, BATCH_STATS: tl.constexpr, ACT: tl.constexpr,
                 BB: tl.constexpr, BH: tl.constexpr, PREC: tl.constexpr):
        rb = tl.arange(0, BB)
        rh = tl.arange(0, BH)
        mb = rb < B
        mh = rh < HN
        m2 = mb[:, None] & mh[None, :]
        mw = mh[:, None] & mh[None, :]
        w = tl.load(W + rh[:, None] * HN + rh[None, :], mask=mw, other=0.0)  # w[j, k]
        wt = tl.load(W + rh[None, :] * HN + rh[:, None], mask=mw, other=0.0)  # wt[k, j]
        g = tl.load(G + rh, mask=mh, other=0.0)
        seq = rb[:, None] * (T * HN) + rh[None, :]
        h0 = tl.load(H0 + rb[:, None] * HN + rh[None, :], mask=m2, other=0.0)
        carry = tl.zeros((BB, BH), dtype=tl.float32)
        dw = tl.zeros((BH, BH), dtype=tl.float32)
        dg = tl.zeros((BH,), dtype=tl.float32)
        for i in range(T):
            t = T - 1 - i
            h = tl.load(HOUT + seq + t * HN, mask=m2, other=0.0)
            prev = tl.load(HOUT + seq + tl.maximum(t - 1, 0) * HN, mask=m2, other=0.0)
            hp = tl.where(t > 0, prev, h0)
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
                z = tl.dot(hp, wt, input_precision=PREC)
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
            dw += tl.dot(tl.trans(dz), hp, input_precision=PREC)
            carry = tl.dot(dz, w, input_precision=PREC)
        tl.store(DW + rh[:, None] * HN + rh[None, :], dw, mask=mw)
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
        stat_shape = (T, B) if k == 2 else (T, H)
        mean = torch.zeros(stat_shape, device=dev)
        var = torch.zeros(stat_shape, device=dev)
        rstd = torch.zeros(stat_shape, device=dev)
        rows = pm.shape[0] if pm is not None else 1
        pm_ = pm.contiguous().float() if pm is not None else mean
        pv_ = pv.contiguous().float() if pv is not None else var
        bb, bh = _tile(B), _tile(H)
        prec = "tf32" if tf32 else "ieee"
        _rnn_fwd[(1,)](u, h0, w, g, pm_, pv_, hout, mean, var, rstd, B, T, H, rows, float(eps),
                       NORM=k, BATCH_STATS=bool(batch_stats), ACT=ACTS[act], BB=bb, BH=bh, PREC=prec,
                       num_warps=_warps(bb, bh))
        ctx.save_for_backward(hout, h0, w, g, mean, rstd)
        ctx.cfg = (k, bool(batch_stats), ACTS[act], bb, bh, prec)
        ctx.mark_non_differentiable(mean, var)
        return hout, mean, var

    @staticmethod
    def backward(ctx, dhout: Tensor, _dmean, _dvar):
        hout, h0, w, g, mean, rstd = ctx.saved_tensors
        k, batch_stats, act, bb, bh, prec = ctx.cfg
        B, T, H = hout.shape
        dy = dhout.contiguous().float() if dhout is not None else torch.zeros_like(hout)
        du, dw, dg, dh0 = torch.empty_like(hout), torch.empty_like(w), torch.empty_like(g), torch.empty_like(h0)
        _rnn_bwd[(1,)](hout, h0, w, g, mean, rstd, dy, du, dw, dg, dh0, B, T, H,
                       NORM=k, BATCH_STATS=batch_stats, ACT=act, BB=bb, BH=bh, PREC=prec,
                       num_warps=_warps(bb, bh))
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
