"""Recurrences with a hand-written backward pass, in plain PyTorch ops (the "scan" path).

The reference loop (``LoopCore.loop_recurrence``) lets autograd record every op of
every step: an LSTM step is ~12 ops forward and ~25 backward, each a kernel launch
on CUDA and a dispatch of several microseconds on the CPU, so at small sizes a
training step costs the overhead of thousands of tiny ops. Here each layer's
recurrence is one ``torch.autograd.Function``:

- the forward loop runs without recording, writing what the backward needs into
  preallocated (T, B, ·) buffers (``out=``), 2 ops per step for an RNN and 7 for an
  LSTM (3 and 10 with batch norm on W_hh h and c_t);
- the backward loop carries only what is sequential, the gradient reaching h_{t-1}
  (and c_{t-1}); every factor that does not depend on it (the gates' derivatives) is
  computed for all steps at once before the loop, and every parameter gradient
  (W_hh, γ, β, the input term's) after it, each as one large op. An LSTM step is 5
  ops backward (7 with both batch norms).

It computes what ``baselines/fused.py`` (the Triton kernels) computes, with the same
arguments and results, so a core uses whichever applies: the math is in one place
(the docstrings of ``fused_rnn``, ``fused_lstm`` and ``fused_gru``). Unlike the
kernels it runs on any device, in float32 or float64, and on any shape; it issues
no host synchronisation, so a CUDA graph captures it. Batch norm of a step is
``torch.native_batch_norm`` (one op that also returns the step's mean and 1/std)
and its backward ``native_batch_norm_backward``; layer norm likewise. Tests compare
it with the reference loop in float64 (tests/test_fused.py, tests/test_fused_models.py).
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor

NORMS = (None, "batch", "layer")


class NormSpec(NamedTuple):
    """How one term is normalized: kind (None, "batch", "layer"), whether batch norm
    uses the batch's statistics, population rows (R, F) for when it does not, eps."""

    kind: str | None
    batch_stats: bool
    pop_mean: Tensor | None
    pop_var: Tensor | None
    eps: float


class _Norm:
    """N(x_t) = γ x̂_t (+ β) of one term, step by step, and its backward.

    ``mode``: None (no norm), "batch" (the step's batch statistics), "pop"
    (population rows: an affine map per step, precomputed for all steps), "layer".
    """

    def __init__(self, spec: NormSpec, gamma: Tensor, beta: Tensor | None, T: int) -> None:
        kind = spec.kind
        self.mode = None if kind is None else "layer" if kind == "layer" else "batch" if spec.batch_stats else "pop"
        self.gamma, self.beta, self.eps = gamma, beta, spec.eps
        self.means: list[Tensor] = []
        self.rstds: list[Tensor] = []
        if self.mode == "pop":  # step t uses row min(t, R-1)
            idx = torch.arange(T, device=gamma.device).clamp(max=spec.pop_mean.shape[0] - 1)
            self.mean = spec.pop_mean[idx].to(gamma.dtype)
            self.rstd = torch.rsqrt(spec.pop_var[idx].to(gamma.dtype) + self.eps)
            self.scale = gamma * self.rstd  # (T, F)
            self.shift = -self.mean * self.scale + (beta if beta is not None else 0.0)
            self.scales, self.shifts = self.scale.unbind(0), self.shift.unbind(0)

    def fold(self, add: Tensor) -> Tensor:
        """The per-step term added after N, (T, B|1, F), with population statistics' shift in it."""
        return add + self.shift.unsqueeze(1) if self.mode == "pop" else add

    def apply(self, x: Tensor, t: int) -> Tensor:
        """N(x_t)."""
        if self.mode == "pop":
            return torch.addcmul(self.shifts[t], x, self.scales[t])
        if self.mode == "batch":
            y, mean, rstd = torch.native_batch_norm(x, self.gamma, self.beta, None, None, True, 0.0, self.eps)
        else:
            y, mean, rstd = torch.native_layer_norm(x, (x.shape[-1],), self.gamma, self.beta, self.eps)
        self.means.append(mean)
        self.rstds.append(rstd)
        return y

    def term_(self, t: int, h: Tensor, w_t: Tensor, acc: Tensor, z_out: Tensor | None) -> Tensor:
        """acc += N(h W^T) in place (``acc`` holds the ``fold``-ed added term), keeping
        z = h W^T in ``z_out`` (step t's row of a buffer) for the backward pass."""
        if self.mode is None:
            return acc.addmm_(h, w_t)
        z = torch.mm(h, w_t, out=z_out)
        if self.mode == "pop":
            return acc.addcmul_(z, self.scales[t])
        return acc.add_(self.apply(z, t))

    def back(self, t: int, dy: Tensor, x: Tensor) -> Tensor:
        """∂L/∂x_t from ∂L/∂N(x_t) (γ and β get theirs from ``param_grads``)."""
        if self.mode is None:
            return dy
        if self.mode == "pop":
            return dy * self.scales[t]
        if self.mode == "batch":
            return torch.ops.aten.native_batch_norm_backward(
                dy, x, self.gamma, None, None, self.means[t], self.rstds[t], True, self.eps,
                [True, False, False])[0]
        return torch.ops.aten.native_layer_norm_backward(
            dy, x, (x.shape[-1],), self.means[t], self.rstds[t], self.gamma, None, [True, False, False])[0]

    def param_grads(self, dy: Tensor, x: Tensor) -> tuple[Tensor | None, Tensor | None]:
        """∂L/∂γ and ∂L/∂β over all steps at once, from dy and x (T, B, F)."""
        if self.mode is None:
            return None, None
        if self.mode == "pop":
            mean, rstd = self.mean.unsqueeze(1), self.rstd.unsqueeze(1)
        elif self.mode == "batch":
            mean, rstd = torch.stack(self.means).unsqueeze(1), torch.stack(self.rstds).unsqueeze(1)
        else:
            mean, rstd = torch.stack(self.means), torch.stack(self.rstds)  # (T, B, 1)
        dgamma = (dy * (x - mean) * rstd).sum((0, 1))
        return dgamma, (dy.sum((0, 1)) if self.beta is not None else None)

    def batch_moments(self, x: Tensor) -> tuple[Tensor, Tensor] | None:
        """The per-step batch mean and biased variance (T, F) this pass used, detached."""
        if self.mode != "batch":
            return None
        mean = torch.stack(self.means)
        return mean, (x - mean.unsqueeze(1)).square().mean(1)


def _time_major(t: Tensor) -> Tensor:
    """A fresh (T, B, F) copy of a (B, T, F) tensor: the loops below update it in place."""
    return t.new_empty(t.shape[1], t.shape[0], *t.shape[2:]).copy_(t.transpose(0, 1))


def _grad_out(g: Tensor | None, like: Tensor) -> Tensor:
    """The incoming gradient of a (B, T, F) output, time-major and fresh (zeros when it has none)."""
    return _time_major(torch.zeros_like(like) if g is None else g)


def _steps(t: Tensor | None, T: int) -> list:
    """Per-step views of a time-major buffer: one ``unbind`` costs half of T indexing ops."""
    return [None] * T if t is None else list(t.unbind(0))


def _w_grad(dz: Tensor, h0: Tensor, hs: Tensor) -> Tensor:
    """dW_hh = Σ_t dz_t^T h_{t-1}: one matrix product over all steps (time-major)."""
    hprev = torch.cat([h0.unsqueeze(0), hs[:-1]])
    return dz.reshape(-1, dz.shape[-1]).t() @ hprev.reshape(-1, hprev.shape[-1])


def _no_stats(like: Tensor, T: int) -> tuple[Tensor, Tensor]:
    z = like.new_zeros(T, like.shape[-1])
    return z, z


class ScanRNN(torch.autograd.Function):
    """h_t = act(u_t + N(h_{t-1} W^T)); see ``fused.fused_rnn``."""

    @staticmethod
    def forward(ctx, u, h0, w, gamma, spec: NormSpec, act: str):
        B, T, H = u.shape
        nh = _Norm(spec, gamma, None, T)
        hs = nh.fold(_time_major(u))  # each step's row becomes h_t in place
        zs = u.new_empty(T, B, H) if nh.mode else None
        h_s, z_s = _steps(hs, T), _steps(zs, T)
        w_t, h = w.t(), h0
        for t in range(T):
            a = nh.term_(t, h, w_t, h_s[t], z_s[t])
            h = a.tanh_() if act == "tanh" else a.clamp_min_(0.0)
        moments = nh.batch_moments(zs)
        ctx.save_for_backward(h0, w, hs, zs)
        ctx.nh, ctx.act = nh, act
        mean, var = moments if moments is not None else _no_stats(u, T)
        ctx.mark_non_differentiable(mean, var)
        return hs.transpose(0, 1), mean, var

    @staticmethod
    def backward(ctx, dh_out, *_stats):
        h0, w, hs, zs = ctx.saved_tensors
        nh: _Norm = ctx.nh
        T = hs.shape[0]
        gh_s = _steps(_grad_out(dh_out, hs.transpose(0, 1)), T)  # becomes ∂L/∂h_t in place
        dact = _steps(1 - hs * hs if ctx.act == "tanh" else (hs > 0).to(hs.dtype), T)
        da = torch.empty_like(hs)
        da_s, z_s, dzs = _steps(da, T), _steps(zs, T), []
        for t in range(T - 1, -1, -1):
            dz = nh.back(t, torch.mul(gh_s[t], dact[t], out=da_s[t]), z_s[t])
            dzs.append(dz)
            if t > 0:
                gh_s[t - 1].addmm_(dz, w)
        dz_all = da if nh.mode is None else torch.stack(dzs[::-1])
        dgamma, _ = nh.param_grads(da, zs)
        return da.transpose(0, 1), dzs[-1] @ w, _w_grad(dz_all, h0, hs), dgamma, None, None


class ScanLSTM(torch.autograd.Function):
    """[i f g o] = u_t + N(h_{t-1} W^T), c_t = σ(f) c_{t-1} + σ(i) tanh(g),
    h_t = σ(o) tanh(N_c(c_t)); see ``fused.fused_lstm``."""

    @staticmethod
    def forward(ctx, u, h0, c0, w, g, gc, bc, spec: NormSpec, cspec: NormSpec):
        B, T, GH = u.shape
        H = GH // 4
        nh, nc = _Norm(spec, g, None, T), _Norm(cspec, gc, bc, T)
        sig = nh.fold(_time_major(u))  # each step's row becomes σ of the gates in place (g unused)
        tg, cs, tc, hs = (u.new_empty(T, B, H) for _ in range(4))
        zs = u.new_empty(T, B, GH) if nh.mode else None
        sig_s, z_s = _steps(sig, T), _steps(zs, T)
        si, sf, so, a_g = (_steps(sig[..., k * H:(k + 1) * H], T) for k in (0, 1, 3, 2))
        tg_s, c_s, tc_s, h_s = (_steps(b, T) for b in (tg, cs, tc, hs))
        w_t, h, c = w.t(), h0, c0
        for t in range(T):
            a = nh.term_(t, h, w_t, sig_s[t], z_s[t])
            torch.tanh(a_g[t], out=tg_s[t])  # before σ overwrites the g block
            a.sigmoid_()
            c = torch.addcmul(sf[t] * c, si[t], tg_s[t], out=c_s[t])
            torch.tanh(c if nc.mode is None else nc.apply(c, t), out=tc_s[t])
            h = torch.mul(so[t], tc_s[t], out=h_s[t])
        stats = {k: m for k, m in (("hh", nh.batch_moments(zs)), ("c", nc.batch_moments(cs))) if m is not None}
        ctx.save_for_backward(h0, c0, w, sig, tg, cs, tc, hs, zs)
        ctx.norms = nh, nc
        flat = [t for m in stats.values() for t in m]
        ctx.mark_non_differentiable(*flat)
        return (hs.transpose(0, 1), cs[T - 1], *flat)

    @staticmethod
    def backward(ctx, dh_out, dc_last, *_stats):
        h0, c0, w, sig, tg, cs, tc, hs, zs = ctx.saved_tensors
        nh, nc = ctx.norms
        T, B, H = hs.shape
        gh_s = _steps(_grad_out(dh_out, hs.transpose(0, 1)), T)  # becomes ∂L/∂h_t in place
        si, sf, so = sig[..., :H], sig[..., H:2 * H], sig[..., 3 * H:]
        cprev = torch.cat([c0.unsqueeze(0), cs[:-1]])
        k_o = _steps(tc * so * (1 - so), T)  # ∂h/∂a_o
        k_tc = _steps(so * (1 - tc * tc), T)  # ∂h/∂N_c(c)
        # ∂c/∂a_{i,f,g}, (T, B, 3, H)
        k_c = _steps(torch.stack([tg * si * (1 - si), cprev * sf * (1 - sf), si * (1 - tg * tg)], 2), T)
        da = sig.new_empty(T, B, 4 * H)
        da_s = _steps(da, T)
        da_ifg, da_o = _steps(da.view(T, B, 4, H)[:, :, :3], T), _steps(da[..., 3 * H:], T)
        dn = hs.new_empty(T, B, H) if nc.mode else None
        dn_s, c_s, z_s, sf_s = _steps(dn, T), _steps(cs, T), _steps(zs, T), _steps(sf, T)
        dzs = []
        dc = dc_last
        for t in range(T - 1, -1, -1):
            gh = gh_s[t]
            dcn = nc.back(t, torch.mul(gh, k_tc[t], out=dn_s[t]), c_s[t])
            dc = dcn if dc is None else (dcn + dc if t == T - 1 else torch.addcmul(dcn, dc, sf_s[t + 1]))
            torch.mul(dc.unsqueeze(1), k_c[t], out=da_ifg[t])
            torch.mul(gh, k_o[t], out=da_o[t])
            dz = nh.back(t, da_s[t], z_s[t])
            dzs.append(dz)
            if t > 0:
                gh_s[t - 1].addmm_(dz, w)
        dz_all = da if nh.mode is None else torch.stack(dzs[::-1])
        dg, _ = nh.param_grads(da, zs)
        dgc, dbc = nc.param_grads(dn, cs) if nc.mode else (None, None)
        return (da.transpose(0, 1), dzs[-1] @ w, dc * sf_s[0], _w_grad(dz_all, h0, hs), dg, dgc, dbc,
                None, None)


class ScanGRU(torch.autograd.Function):
    """r, z = σ(u_{r,z} + a_{r,z}), n = tanh(u_n + r (a_n + b_hn)), h_t = (1 - z) n + z h_{t-1},
    a = N(h_{t-1} W^T); see ``fused.fused_gru``."""

    @staticmethod
    def forward(ctx, u, h0, w, b_hn, g, spec: NormSpec):
        B, T, GH = u.shape
        H = GH // 3
        nh = _Norm(spec, g, None, T)
        gates = _time_major(u)  # each step's row becomes (r, z, n) in place
        hw = u.new_empty(T, B, GH)  # N(h W^T) + (0, 0, b_hn): b_hn stays after N
        hw.copy_(nh.fold(torch.cat([b_hn.new_zeros(2 * H), b_hn]).expand(T, 1, GH)))
        hs = u.new_empty(T, B, H)
        zs = u.new_empty(T, B, GH) if nh.mode else None
        hw_s, hw_rz, hw_n = _steps(hw, T), _steps(hw[..., :2 * H], T), _steps(hw[..., 2 * H:], T)
        rz_s, r_s, zg_s = _steps(gates[..., :2 * H], T), _steps(gates[..., :H], T), _steps(gates[..., H:2 * H], T)
        n_s, h_s, z_s = _steps(gates[..., 2 * H:], T), _steps(hs, T), _steps(zs, T)
        w_t, h = w.t(), h0
        for t in range(T):
            nh.term_(t, h, w_t, hw_s[t], z_s[t])
            rz_s[t].add_(hw_rz[t]).sigmoid_()
            n = n_s[t].addcmul_(r_s[t], hw_n[t]).tanh_()
            h = torch.addcmul(n, zg_s[t], h - n, out=h_s[t])
        moments = nh.batch_moments(zs)
        ctx.save_for_backward(h0, w, hw, gates, hs, zs)
        ctx.nh = nh
        flat = list(moments) if moments is not None else []
        ctx.mark_non_differentiable(*flat)
        return (hs.transpose(0, 1), *flat)

    @staticmethod
    def backward(ctx, dh_out, *_stats):
        h0, w, hw, gates, hs, zs = ctx.saved_tensors
        nh: _Norm = ctx.nh
        T, B, H = hs.shape
        gh_all = _grad_out(dh_out, hs.transpose(0, 1))  # becomes ∂L/∂h_t in place
        r, zg, ns = gates[..., :H], gates[..., H:2 * H], gates[..., 2 * H:]
        hprev = torch.cat([h0.unsqueeze(0), hs[:-1]])
        k_n = (1 - zg) * (1 - ns * ns)  # ∂h/∂(u_n + r a_n)
        k_z = (hprev - ns) * zg * (1 - zg)  # ∂h/∂a_z
        k_r = k_n * hw[..., 2 * H:] * r * (1 - r)  # ∂h/∂a_r
        k_a = _steps(torch.stack([k_r, k_z, k_n * r], 2), T)  # ∂h/∂a
        da = hs.new_empty(T, B, 3 * H)
        da_s, da3, gh_s = _steps(da, T), _steps(da.view(T, B, 3, H), T), _steps(gh_all, T)
        z_s, zg_s = _steps(zs, T), _steps(zg, T)
        dzs = []
        for t in range(T - 1, -1, -1):
            gh = gh_s[t]
            torch.mul(gh.unsqueeze(1), k_a[t], out=da3[t])
            dz = nh.back(t, da_s[t], z_s[t])
            dzs.append(dz)
            if t > 0:
                gh_s[t - 1].addcmul_(gh, zg_s[t]).addmm_(dz, w)
        dh0 = torch.addmm(gh_s[0] * zg_s[0], dzs[-1], w)
        du = (gh_all.unsqueeze(2) * torch.stack([k_r, k_z, k_n], 2)).view(T, B, 3 * H)
        dz_all = da if nh.mode is None else torch.stack(dzs[::-1])
        dg, _ = nh.param_grads(da, zs)
        return (du.transpose(0, 1), dh0, _w_grad(dz_all, h0, hs), da[..., 2 * H:].sum((0, 1)), dg, None)


# -- the functions: arguments and results as baselines/fused.py ------------------------

def check_args(u: Tensor, h0: Tensor, gates: int, norms: tuple, **others: Tensor | None) -> tuple[int, int, int]:
    """B, T, H of a ``gates``-gate cell's arguments; ValueError when a norm or a shape is wrong."""
    for n in norms:
        if n not in NORMS:
            raise ValueError(f"unknown norm {n!r}; allowed: None, 'batch', 'layer'")
    B, T, GH = u.shape
    H = h0.shape[-1]
    if GH != gates * H or h0.shape != (B, H):
        raise ValueError(f"shapes do not fit a {gates}-gate cell: u {tuple(u.shape)}, h0 {tuple(h0.shape)}")
    want = dict(c0=(B, H), w_hh=(GH, H), gamma_hh=(GH,), b_hn=(H,), gamma_c=(H,), beta_c=(H,))
    for name, t in others.items():
        if t is not None and t.shape != want[name]:
            raise ValueError(f"{name} must be {want[name]}, got {tuple(t.shape)}")
    return B, T, H


def population(norm: str | None, batch_stats: bool, mean: Tensor | None, var: Tensor | None,
               feats: int, like: Tensor, what: str) -> tuple[Tensor, Tensor] | tuple[None, None]:
    """Population rows (R, feats), detached, in ``like``'s dtype and device; (None, None)
    when they are not used. Like ``SeqNorm``, no rows yet (a never-trained norm) means
    the identity statistics of a fresh BatchNorm."""
    if norm != "batch" or batch_stats:
        return None, None
    if mean is None or var is None:
        raise ValueError(f"{what}: population statistics needed when batch_stats=False")
    if mean.shape != var.shape or mean.dim() != 2 or mean.shape[1] != feats:
        raise ValueError(f"{what}: population statistics must be (rows, {feats}), got "
                         f"{tuple(mean.shape)} and {tuple(var.shape)}")
    if mean.shape[0] == 0:
        return like.new_zeros(1, feats), like.new_ones(1, feats)
    return mean.detach().to(like), var.detach().to(like)


def _spec(norm, batch_stats, mean, var, feats, like, eps, what) -> NormSpec:
    return NormSpec(norm, bool(batch_stats), *population(norm, batch_stats, mean, var, feats, like, what), eps)


def scan_rnn(u: Tensor, h0: Tensor, w_hh: Tensor, gamma: Tensor | None = None, *,
             norm: str | None = None, batch_stats: bool = True, pop_mean: Tensor | None = None,
             pop_var: Tensor | None = None, act: str = "tanh", eps: float = 1e-5,
             tf32: bool = False) -> tuple[Tensor, Tensor, Tensor]:
    """``fused.fused_rnn`` in PyTorch ops (``tf32`` is the global matmul setting here).
    The returned mean and variance are the batch statistics with batch norm, else zeros."""
    B, _, H = check_args(u, h0, 1, (norm,), w_hh=w_hh, gamma_hh=gamma)
    gamma = gamma if gamma is not None else u.new_ones(H)
    spec = _spec(norm, batch_stats, pop_mean, pop_var, H, u, eps, "recurrent norm")
    return ScanRNN.apply(u, h0, w_hh, gamma, spec, act)


def scan_lstm(u: Tensor, h0: Tensor, c0: Tensor, w_hh: Tensor, gamma_hh: Tensor | None = None, *,
              norm: str | None = None, batch_stats: bool = True, pop_mean: Tensor | None = None,
              pop_var: Tensor | None = None, cell_norm: str | None = None, gamma_c: Tensor | None = None,
              beta_c: Tensor | None = None, cell_pop_mean: Tensor | None = None,
              cell_pop_var: Tensor | None = None, eps: float = 1e-5, tf32: bool = False
              ) -> tuple[Tensor, Tensor, dict[str, tuple[Tensor, Tensor]]]:
    """``fused.fused_lstm`` in PyTorch ops: h_seq (B, T, H), c_T (B, H), batch statistics."""
    B, _, H = check_args(u, h0, 4, (norm, cell_norm), c0=c0, w_hh=w_hh, gamma_hh=gamma_hh, gamma_c=gamma_c,
                         beta_c=beta_c)
    gamma_hh = gamma_hh if gamma_hh is not None else u.new_ones(4 * H)
    gamma_c = gamma_c if gamma_c is not None else u.new_ones(H)
    beta_c = beta_c if beta_c is not None or cell_norm is None else u.new_zeros(H)
    spec = _spec(norm, batch_stats, pop_mean, pop_var, 4 * H, u, eps, "recurrent norm")
    cspec = _spec(cell_norm, batch_stats, cell_pop_mean, cell_pop_var, H, u, eps, "cell norm")
    h, c, *flat = ScanLSTM.apply(u, h0, c0, w_hh, gamma_hh, gamma_c, beta_c, spec, cspec)
    keys = [k for k, s in (("hh", spec), ("c", cspec)) if s.kind == "batch" and s.batch_stats]
    return h, c, {k: (flat[2 * i], flat[2 * i + 1]) for i, k in enumerate(keys)}


def scan_gru(u: Tensor, h0: Tensor, w_hh: Tensor, b_hn: Tensor, gamma_hh: Tensor | None = None, *,
             norm: str | None = None, batch_stats: bool = True, pop_mean: Tensor | None = None,
             pop_var: Tensor | None = None, eps: float = 1e-5, tf32: bool = False
             ) -> tuple[Tensor, dict[str, tuple[Tensor, Tensor]]]:
    """``fused.fused_gru`` in PyTorch ops: h_seq (B, T, H) and the batch statistics."""
    B, _, H = check_args(u, h0, 3, (norm,), w_hh=w_hh, b_hn=b_hn, gamma_hh=gamma_hh)
    gamma_hh = gamma_hh if gamma_hh is not None else u.new_ones(3 * H)
    spec = _spec(norm, batch_stats, pop_mean, pop_var, 3 * H, u, eps, "recurrent norm")
    h, *flat = ScanGRU.apply(u, h0, w_hh, b_hn, gamma_hh, spec)
    return h, ({"hh": (flat[0], flat[1])} if flat else {})
