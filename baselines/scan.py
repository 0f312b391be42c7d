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
and its backward ``native_batch_norm_backward``; layer norm likewise. The backward
pass is not itself differentiable (no double backward). Tests compare it with the
reference loop in float64 (tests/test_fast_recurrence.py, tests/test_fast_models.py).

On the CPU the two loops run compiled (``scan_cpp``, csrc/scan_loops.cpp: per step one
matrix product and one fused elementwise pass, which also computes the gate
derivatives and the norms' statistics and γ/β gradients); everything around them here
is shared by both, and the tests run every case on both loops. On CUDA the loops run as
one Triton kernel per step (``scan_triton``, with the same arguments as the compiled
loops) where it covers the cell's norms. The compiled CPU loops can
also batch-normalize the input term with per-step statistics (``InputNorm``), reading it
where the input projection left it and writing it time-major for the forward loop (and
its gradient back after the backward loop), on PyTorch's CPU threads: that saves a
separate batch norm over the whole (B, T, G*H) term and the copies to and from
time-major order, memory passes over a term larger than the cache. For an input of a
few features they also compute the projection x W_ih^T themselves, in the same passes
(``InputNorm.project``), so that the term is never written whole.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import NamedTuple

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

from baselines import scan_cpp, scan_triton

NORMS = (None, "batch", "layer")
_MODES = {None: 0, "batch": 1, "pop": 2, "layer": 3}  # _Norm.mode as csrc/scan_loops.cpp numbers it


class NormSpec(NamedTuple):
    """How one term is normalized: kind (None, "batch", "layer"), whether batch norm
    uses the batch's statistics, population rows ([S,] R, F) for when it does not, eps."""

    kind: str | None
    batch_stats: bool
    pop_mean: Tensor | None
    pop_var: Tensor | None
    eps: float


# -- seed batching ---------------------------------------------------------------------
# With S > 0 seeds, the rows of every (S*B, F) step tensor are S groups of B (seed-major),
# weights and norm parameters have a leading seed dimension, and each seed's matrix
# products and batch statistics stay within its own rows (``stack.py``).

def _mm_acc_(acc: Tensor, a: Tensor, b: Tensor, S: int) -> Tensor:
    """acc += a @ b, per seed when S > 0 (a: (S*B, K), b: (S, K, N)), in place."""
    if not S:
        return acc.addmm_(a, b)
    acc.view(S, -1, acc.shape[-1]).baddbmm_(a.view(S, -1, a.shape[-1]), b)
    return acc


def _mm(a: Tensor, b: Tensor, S: int, out: Tensor | None = None) -> Tensor:
    """a @ b, per seed when S > 0 (see ``_mm_acc_``)."""
    if not S:
        return torch.mm(a, b, out=out)
    res = torch.bmm(a.view(S, -1, a.shape[-1]), b, out=None if out is None else out.view(S, -1, out.shape[-1]))
    return res.view(-1, res.shape[-1])


def _seed_sum(x: Tensor, S: int) -> Tensor:
    """Sum of a (T, [S*]B, F) tensor over steps and batch: (F,), or (S, F) per seed."""
    if not S:
        return x.sum((0, 1))
    return x.view(x.shape[0], S, -1, x.shape[-1]).sum((0, 2))


def _by_feature(x: Tensor, S: int) -> Tensor:
    """(S*B, F) rows -> (1, S*F, B): batch norm's channels are then (seed, feature) pairs."""
    return x.view(S, -1, x.shape[-1]).transpose(1, 2).reshape(1, -1, x.shape[0] // S)


def _by_row(y: Tensor, S: int) -> Tensor:
    """The inverse of ``_by_feature``: (1, S*F, B) -> (S*B, F)."""
    return y.view(S, -1, y.shape[-1]).transpose(1, 2).reshape(-1, y.shape[1] // S)


class _Norm:
    """N(x_t) = γ x̂_t (+ β) of one term, step by step, and its backward.

    ``mode``: None (no norm), "batch" (the step's batch statistics), "pop"
    (population rows: an affine map per step, precomputed for all steps), "layer".
    ``S``: number of stacked seeds (0: one model).
    """

    def __init__(self, spec: NormSpec, gamma: Tensor, beta: Tensor | None, T: int, S: int = 0) -> None:
        kind = spec.kind
        self.mode = None if kind is None else "layer" if kind == "layer" else "batch" if spec.batch_stats else "pop"
        # contiguous: native_batch_norm_backward on the CPU gives a wrong ∂x for a strided γ
        gamma, beta = gamma.contiguous(), (beta.contiguous() if beta is not None else None)
        self.gamma, self.beta, self.eps, self.S = gamma, beta, spec.eps, S
        self.means: list[Tensor] = []
        self.rstds: list[Tensor] = []
        self.folded = False  # pop: the shift is in the other term (``fold``)
        self.compiled = None  # this norm for the compiled loops (``for_loops``)
        self.stats_all: tuple[Tensor, Tensor] | None = None  # their statistics, all steps
        self.var_all: Tensor | None = None  # and batch norm's variances
        if self.mode == "pop":  # step t uses row min(t, R-1)
            idx = torch.arange(T, device=gamma.device).clamp(max=spec.pop_mean.shape[-2] - 1)
            mean = spec.pop_mean[..., idx, :].to(gamma.dtype)
            rstd = torch.rsqrt(spec.pop_var[..., idx, :].to(gamma.dtype) + self.eps)
            if S:  # (S, T, F) -> (T, S, 1, F), to broadcast over each seed's rows
                mean, rstd = mean.transpose(0, 1).unsqueeze(2), rstd.transpose(0, 1).unsqueeze(2)
                gamma, beta = gamma.unsqueeze(1), (beta.unsqueeze(1) if beta is not None else None)
            self.mean, self.rstd = mean, rstd
            self.scale = gamma * rstd  # (T, F) or (T, S, 1, F)
            self.shift = -mean * self.scale + (beta if beta is not None else 0.0)
            self.scales, self.shifts = self.scale.unbind(0), self.shift.unbind(0)

    def _sv(self, x: Tensor) -> Tensor:
        """A (S*B, F) step as (S, B, F) when seeds are stacked."""
        return x.view(self.S, -1, x.shape[-1]) if self.S else x

    def fold(self, add: Tensor) -> Tensor:
        """The per-step term added after N, (T, [S*]B, F), with population statistics' shift in it."""
        if self.mode != "pop":
            return add
        self.folded = True
        if not self.S:
            return add + self.shift.unsqueeze(1)
        T, rows, F = add.shape
        return (add.view(T, self.S, -1, F) + self.shift).view(T, rows, F)

    def apply(self, x: Tensor, t: int) -> Tensor:
        """N(x_t), shaped as x."""
        S = self.S
        if self.mode == "pop":
            return torch.addcmul(self.shifts[t], self._sv(x), self.scales[t]).view(x.shape)
        if self.mode == "batch" and not S:
            y, mean, rstd = torch.native_batch_norm(x, self.gamma, self.beta, None, None, True, 0.0, self.eps)
        elif self.mode == "batch":
            beta = self.beta.reshape(-1) if self.beta is not None else None
            y, mean, rstd = torch.native_batch_norm(_by_feature(x, S), self.gamma.reshape(-1), beta, None, None,
                                                    True, 0.0, self.eps)
            y = _by_row(y, S)
        elif not S:
            y, mean, rstd = torch.native_layer_norm(x, (x.shape[-1],), self.gamma, self.beta, self.eps)
        else:  # per-seed γ, β: normalize, then scale each seed's rows
            y, mean, rstd = torch.native_layer_norm(x, (x.shape[-1],), None, None, self.eps)
            yv = self._sv(y).mul_(self.gamma.unsqueeze(1))
            if self.beta is not None:
                yv.add_(self.beta.unsqueeze(1))
        self.means.append(mean)
        self.rstds.append(rstd)
        return y

    def term_(self, t: int, h: Tensor, w_t: Tensor, acc: Tensor, z_out: Tensor | None) -> Tensor:
        """acc += N(h W^T) in place (``acc`` holds the ``fold``-ed added term), keeping
        z = h W^T in ``z_out`` (step t's row of a buffer) for the backward pass."""
        if self.mode is None:
            return _mm_acc_(acc, h, w_t, self.S)
        z = _mm(h, w_t, self.S, out=z_out)
        if self.mode == "pop":
            self._sv(acc).addcmul_(self._sv(z), self.scales[t])
            return acc
        return acc.add_(self.apply(z, t))

    def back(self, t: int, dy: Tensor, x: Tensor) -> Tensor:
        """∂L/∂x_t from ∂L/∂N(x_t) (γ and β get theirs from ``param_grads``)."""
        S, mask = self.S, [True, False, False]
        if self.mode is None:
            return dy
        if self.mode == "pop":
            return (self._sv(dy) * self.scales[t]).view(dy.shape)
        if self.mode == "batch" and not S:
            return torch.ops.aten.native_batch_norm_backward(
                dy, x, self.gamma, None, None, self.means[t], self.rstds[t], True, self.eps, mask)[0]
        if self.mode == "batch":
            dx = torch.ops.aten.native_batch_norm_backward(
                _by_feature(dy, S), _by_feature(x, S), self.gamma.reshape(-1), None, None, self.means[t],
                self.rstds[t], True, self.eps, mask)[0]
            return _by_row(dx, S)
        gamma = self.gamma
        if S:  # per-seed γ applied outside the layer norm
            dy, gamma = (self._sv(dy) * self.gamma.unsqueeze(1)).view(dy.shape), None
        return torch.ops.aten.native_layer_norm_backward(
            dy, x, (x.shape[-1],), self.means[t], self.rstds[t], gamma, None, mask)[0]

    def for_loops(self, loops, like: Tensor):
        """This norm as the compiled loops take it (``scan_cpp``), with buffers that
        they fill with every step's statistics; ``like``: a (T, B, F) buffer of the term."""
        T, B, F = like.shape
        stats = (None, None)
        if self.mode in ("batch", "layer"):  # as native_batch_norm / native_layer_norm shape them
            shape = (T, max(self.S, 1) * F) if self.mode == "batch" else (T, B, 1)
            stats = self.stats_all = (like.new_empty(shape), like.new_empty(shape))
        if self.mode == "batch":
            self.var_all = like.new_empty(T, max(self.S, 1) * F)
        pop = self.mode == "pop"
        self.compiled = loops.Norm(_MODES[self.mode], self.gamma, self.beta, self.scale.contiguous() if pop else None,
                                   self.shift.contiguous() if pop and not self.folded else None, *stats,
                                   self.var_all, self.eps)
        return self.compiled

    def _stats(self) -> tuple[Tensor, Tensor]:
        """Mean and 1/std of every step, shaped to broadcast against (T, [S*]B, F), or
        (T, S, B, F) for batch norm of stacked seeds."""
        if self.mode == "pop":
            return (self.mean, self.rstd) if self.S else (self.mean.unsqueeze(1), self.rstd.unsqueeze(1))
        # (T, [S*]F), or layer norm (T, [S*]B, 1)
        mean, rstd = self.stats_all or (torch.stack(self.means), torch.stack(self.rstds))
        if self.mode == "batch":
            shape = (mean.shape[0], self.S, 1, -1) if self.S else (mean.shape[0], 1, -1)
            return mean.view(shape), rstd.view(shape)
        return mean, rstd

    def _seeded(self, x: Tensor) -> Tensor:
        """x (T, S*B, F) as (T, S, B, F) where per-seed statistics broadcast against it."""
        return x.view(x.shape[0], self.S, -1, x.shape[-1]) if self.S and self.mode != "layer" else x

    def param_grads(self, dy: Tensor, x: Tensor) -> tuple[Tensor | None, Tensor | None]:
        """∂L/∂γ and ∂L/∂β over all steps at once, from dy and x (T, [S*]B, F)."""
        if self.mode is None:
            return None, None
        c = self.compiled
        if c is not None and self.mode != "pop" and c.dgamma is not None:  # summed by the compiled backward loop
            # copies: the next backward pass reuses these buffers
            return c.dgamma.clone(), (c.dbeta.clone() if self.beta is not None else None)
        mean, rstd = self._stats()
        xhat = ((self._seeded(x) - mean) * rstd).view(x.shape)
        dgamma = _seed_sum(dy * xhat, self.S)
        return dgamma, (_seed_sum(dy, self.S) if self.beta is not None else None)

    def batch_moments(self, x: Tensor) -> tuple[Tensor, Tensor] | None:
        """The per-step batch mean and biased variance (T, [S,] F) this pass used, detached."""
        if self.mode != "batch":
            return None
        if self.var_all is not None:  # the compiled forward loop kept them; the backward pass reads the means
            mean, var = self.stats_all[0].clone(), self.var_all
            return (mean.view(mean.shape[0], self.S, -1), var.view(var.shape[0], self.S, -1)) if self.S else (mean, var)
        mean, _ = self._stats()  # (T, [S,] 1, F)
        var = (self._seeded(x) - mean).square().mean(-2)
        return mean.squeeze(-2), var


def _time_major(t: Tensor, bias: Tensor | None = None, S: int = 0) -> Tensor:
    """A fresh (T, B, F) copy of a (B, T, F) tensor, the loops below update it in place;
    with ``bias`` (F,), or ([S,] F) per seed's rows, added in the same pass."""
    out, src = t.new_empty(t.shape[1], t.shape[0], *t.shape[2:]), t.transpose(0, 1)
    if bias is None:
        return out.copy_(src)
    if not S:
        return torch.add(src, bias, out=out)
    T, _, F = out.shape
    torch.add(src.view(T, S, -1, F), bias.unsqueeze(1), out=out.view(T, S, -1, F))
    return out


def _bias_grad(ctx, du: Tensor, S: int) -> Tensor | None:
    """∂L/∂bias of a call's ``bias`` (the last input) from ∂L/∂u (T, [S*]B, F)."""
    return _seed_sum(du, S) if ctx.needs_input_grad[-1] else None


def _grad_out(g: Tensor | None, like: Tensor) -> Tensor:
    """The incoming gradient of a (B, T, F) output, time-major and fresh (zeros when it has none)."""
    return _time_major(torch.zeros_like(like) if g is None else g)


def _steps(t: Tensor | None, T: int) -> list:
    """Per-step views of a time-major buffer: one ``unbind`` costs half of T indexing ops."""
    return [None] * T if t is None else list(t.unbind(0))


def _w_grad(dz: Tensor, h0: Tensor, hs: Tensor, S: int) -> Tensor:
    """dW_hh = Σ_t dz_t^T h_{t-1}: one matrix product over all steps (time-major), per seed."""
    hprev = torch.cat([h0.unsqueeze(0), hs[:-1]])
    if not S:
        return dz.reshape(-1, dz.shape[-1]).t() @ hprev.reshape(-1, hprev.shape[-1])
    T = dz.shape[0]
    dz_s = dz.view(T, S, -1, dz.shape[-1]).permute(1, 3, 0, 2).reshape(S, dz.shape[-1], -1)
    return torch.bmm(dz_s, hprev.view(T, S, -1, hprev.shape[-1]).transpose(0, 1).reshape(S, -1, hprev.shape[-1]))


def _no_stats(like: Tensor, T: int, S: int) -> tuple[Tensor, Tensor]:
    z = like.new_zeros(T, *((S,) if S else ()), like.shape[-1])
    return z, z


# The most input features for which the loops project the input themselves (``InputNorm.projects``).
PROJECT_INPUTS = 4


@dataclass
class InputNorm:
    """Batch norm of the input term inside the compiled loops, with per-step batch
    statistics (one model): u_t becomes γ (u_t - μ_t) / σ_t + shift, step by step, from
    u (B, T, G*H) as the input projection left it; ``shift`` holds β and the biases that
    follow the norm. The call sets ``stats`` to the pass's per-step batch mean and biased
    variance (T, G*H), for the running averages. Only the compiled loops take it
    (``available``).

    ``project`` = (x, W_ih): the loops compute u = x W_ih^T themselves, where they use it
    (``projects`` says when: few input features, no gradient for x), and sum W_ih's
    gradient; the recurrence then takes ``stand_in()`` for u. That saves writing the
    (B, T, G*H) term and its gradient and reading both back (benchmarks/RESULTS.md)."""

    gamma: Tensor
    shift: Tensor
    eps: float = 1e-5
    stats: tuple[Tensor, Tensor] | None = None
    project: tuple[Tensor, Tensor] | None = None

    @staticmethod
    def available(u: Tensor) -> bool:
        """Whether a recurrence on ``u`` (one model) can take an input norm."""
        return scan_cpp.for_call(u) is not None

    @staticmethod
    def projects(x: Tensor) -> bool:
        """Whether the loops should project the input ``x`` (B, T, I) themselves: at most
        ``PROJECT_INPUTS`` features (the long-dependency tasks have 1 or 2), and x needs
        no gradient (a first layer's data)."""
        return x.shape[-1] <= PROJECT_INPUTS and not x.requires_grad

    def stand_in(self) -> Tensor:
        """What the recurrence takes as u where the loops project x (``project``)."""
        return _stand_in(*self.project)

    def args(self) -> tuple:
        """What the autograd Functions below take: γ, shift, eps, x and W_ih (or None)."""
        return self.gamma, self.shift, self.eps, *(self.project or (None, None))


@dataclass
class InputProjection:
    """The input term u = x W_ih^T + b_ih left to the recurrence (scan path, one model, no
    input norm): it computes u time-major, as one matrix product straight into the (T, B,
    G*H) buffer its loops update in place, and the gradients of x, W_ih and b_ih from the
    loops' ∂L/∂u, which is time-major too. That saves writing u batch-major, copying it
    time-major, and copying ∂L/∂u back batch-major (benchmarks/RESULTS.md). The
    recurrence takes ``stand_in()`` for u, ``project`` = (x, W_ih), and b_ih added to its
    ``bias``."""

    x: Tensor
    w: Tensor
    b: Tensor | None

    def stand_in(self) -> Tensor:
        return _stand_in(self.x, self.w)


def _stand_in(x: Tensor, w: Tensor) -> Tensor:
    """u's stand-in where the recurrence projects x itself: u's shape (B, T, G*H), dtype
    and device, and no values (one stored zero)."""
    return x.new_zeros(()).expand(x.shape[0], x.shape[1], w.shape[0])


_ran = threading.local()  # which loops the last call on this thread ran (``last_path``)


def _loops(u: Tensor, S: int, cell: str, nx: _Norm | None, nh: _Norm, *others: _Norm):
    """The compiled loops that run a call on ``u``: csrc's on the CPU (``scan_cpp``), the
    Triton step kernels on CUDA where they cover the cell's norms (``scan_triton``), or
    None: the Python loops. An input norm ``nx`` runs in csrc's loops only, for one model
    and without population statistics on the recurrent term (ValueError otherwise)."""
    loops, name = scan_cpp.for_call(u, S), "scan-cpp"
    if loops is None and nx is None:
        modes = tuple(_MODES[n.mode] for n in (nh, *others))
        loops = scan_triton.for_call(u, S, cell, modes)
        name = scan_triton.path(u, S, cell, modes) if loops is not None else "scan"
    _ran.path = name if loops is not None else "scan"
    if nx is not None and (loops is None or S):
        raise ValueError("an input norm runs in the compiled CPU loops, for one model (see InputNorm.available)")
    if nx is not None and nh.mode == "pop":  # its shift would go into the buffer that the input norm writes
        raise ValueError("an input norm (batch statistics) with population statistics on the recurrent term")
    return loops


def _input_norm(gx: Tensor | None, sx: Tensor | None, eps: float, T: int) -> _Norm | None:
    return None if gx is None else _Norm(NormSpec("batch", True, None, None, eps), gx, sx, T)


def _input_buffer(u: Tensor, bias: Tensor | None, S: int, nx: _Norm | None, px: Tensor | None,
                  pw: Tensor | None) -> Tensor:
    """The loops' (T, B, F) buffer of the input term: u copied time-major (``bias`` added);
    x W^T (+ ``bias``) computed time-major where the recurrence projects x itself
    (``InputProjection``); or, where the loops normalize the input term (``nx``), empty:
    they write N_x(u_t) in."""
    if nx is not None:
        return u.new_empty(u.shape[1], u.shape[0], u.shape[2])
    if px is None:
        return _time_major(u, bias, S)
    x2 = _time_major_rows(px)
    out = torch.mm(x2, pw.t()) if bias is None else torch.addmm(bias, x2, pw.t())
    return out.view(px.shape[1], px.shape[0], pw.shape[0])


def _time_major_rows(x: Tensor) -> Tensor:
    """x (B, T, I) as (T*B, I) rows in time-major order: a view where x is a lower layer's
    output (the transpose of a time-major sequence), else a copy."""
    return x.transpose(0, 1).reshape(x.shape[0] * x.shape[1], -1)


def _input_forward(loops, nx: _Norm | None, u: Tensor, buf: Tensor, px: Tensor | None, pw: Tensor | None) -> tuple:
    """The compiled forward loop's input-norm arguments: (norm, u, None); (norm, x, W^T)
    where the loops project x themselves (``InputNorm.project``); or an inactive norm
    where ``buf`` already holds the input term."""
    if nx is None:
        return _inactive(loops, buf), None, None
    return nx.for_loops(loops, buf), *((u, None) if px is None else (px.contiguous(), pw.t().contiguous()))


def _input_backward(loops, nx: _Norm | None, u: Tensor | None, like: Tensor, px: Tensor | None,
                    pw: Tensor | None) -> tuple:
    """The compiled backward loop's input-norm arguments: (norm, u, ∂L/∂u to fill, None,
    None), or (norm, x, None, W^T, ∂L/∂W^T to fill) where the loops project x."""
    if nx is None:
        return _inactive(loops, like), None, None, None, None
    if px is None:
        return nx.compiled, u, torch.empty_like(u), None, None
    wt = pw.t().contiguous()
    return nx.compiled, px.contiguous(), None, wt, torch.empty_like(wt)


def _input_grads(ctx, nx: _Norm | None, x_args: tuple, da: Tensor, px: Tensor | None, pw: Tensor | None) -> tuple:
    """∂L/∂u (batch-major), ∂L/∂γ_x, ∂L/∂shift, ∂L/∂x and ∂L/∂W_ih from what the backward
    loop left, ∂L/∂u = ``da`` (T, B, F) with no input norm: with the input norm, the
    gradients it computed (∂L/∂W_ih where the loops projected x, and then no ∂L/∂u);
    where the recurrence projected x itself (``InputProjection``), those of x and W_ih.
    Every Function here takes x and W_ih third and second from last."""
    if nx is not None:
        dgx, dsx = nx.param_grads(None, None)
        return x_args[2], dgx, dsx, None, (x_args[4].t() if x_args[4] is not None else None)
    if px is None:
        return da.transpose(0, 1), None, None, None, None
    need_x, need_w = ctx.needs_input_grad[-3:-1]
    T, B, F = da.shape
    d2 = da.reshape(T * B, F)
    dx = (d2 @ pw).view(T, B, -1).transpose(0, 1) if need_x else None
    # X^T G, not G^T X: MKL runs the latter's shape (F x I, I small) ~4x slower (cells._Projection)
    dw = (_time_major_rows(px).t() @ d2).t() if need_w else None
    return None, None, None, dx, dw


def _inactive(loops, like: Tensor):
    return loops.Norm(_MODES[None], like.new_ones(1), None, None, None, None, None, None, 0.0)


class ScanRNN(torch.autograd.Function):
    """h_t = act(u_t + N(h_{t-1} W^T)); see ``fused.fused_rnn``."""

    @staticmethod
    def forward(ctx, u, h0, w, gamma, spec: NormSpec, act: str, gx, sx, x_eps: float, px, pw, bias):
        B, T, H = u.shape
        S = w.shape[0] if w.dim() == 3 else 0
        nh, nx = _Norm(spec, gamma, None, T, S), _input_norm(gx, sx, x_eps, T)
        loops = ctx.loops = _loops(u, S, "rnn", nx, nh)
        u = u.contiguous() if nx is not None and px is None else u
        hs = nh.fold(_input_buffer(u, bias, S, nx, px, pw))  # each step's row becomes h_t in place
        zs = u.new_empty(T, B, H) if nh.mode else None
        if loops is not None:
            loops.rnn_forward(hs, zs, h0.contiguous(), w, nh.for_loops(loops, hs), act == "relu",
                              *_input_forward(loops, nx, u, hs, px, pw))
        else:
            h_s, z_s = _steps(hs, T), _steps(zs, T)
            w_t, h = w.transpose(-1, -2), h0
            for t in range(T):
                a = nh.term_(t, h, w_t, h_s[t], z_s[t])
                h = a.tanh_() if act == "tanh" else a.clamp_min_(0.0)
        moments = nh.batch_moments(zs)
        # γ goes through save_for_backward too, so that changing it before the backward
        # pass raises (as autograd does for the loop) instead of giving wrong gradients.
        ctx.save_for_backward(h0, w, hs, zs, gamma, u if nx is not None else None, gx, px, pw)
        ctx.nh, ctx.nx, ctx.act = nh, nx, act
        mean, var = moments if moments is not None else _no_stats(u, T, S)
        xstats = list(nx.batch_moments(None)) if nx is not None else []
        ctx.mark_non_differentiable(mean, var, *xstats)
        return (hs.transpose(0, 1), mean, var, *xstats)

    @staticmethod
    @once_differentiable
    def backward(ctx, dh_out, *_stats):
        h0, w, hs, zs, _gamma, u, _gx, px, pw = ctx.saved_tensors  # unpacking checks that none changed since
        nh: _Norm = ctx.nh
        T = hs.shape[0]
        gh = _grad_out(dh_out, hs.transpose(0, 1))  # becomes ∂L/∂h_t in place
        da = torch.empty_like(hs)
        x_args = ()
        if ctx.loops is not None:
            dz_all = torch.empty_like(da) if nh.mode else da
            x_args = _input_backward(ctx.loops, ctx.nx, u, hs, px, pw)
            ctx.loops.rnn_backward(gh, hs, da, dz_all if nh.mode else None, zs, w, nh.compiled, ctx.act == "relu",
                                   *x_args)
        else:
            dact = hs.square().neg_().add_(1) if ctx.act == "tanh" else (hs > 0).to(hs.dtype)
            gh_s, dact_s, da_s, z_s, dzs = _steps(gh, T), _steps(dact, T), _steps(da, T), _steps(zs, T), []
            for t in range(T - 1, -1, -1):
                dz = nh.back(t, torch.mul(gh_s[t], dact_s[t], out=da_s[t]), z_s[t])
                dzs.append(dz)
                if t > 0:
                    _mm_acc_(gh_s[t - 1], dz, w, nh.S)
            dz_all = da if nh.mode is None else torch.stack(dzs[::-1])
        dgamma, _ = nh.param_grads(da, zs)
        du, dgx, dsx, dpx, dpw = _input_grads(ctx, ctx.nx, x_args, da, px, pw)
        return (du, _mm(dz_all[0], w, nh.S), _w_grad(dz_all, h0, hs, nh.S), dgamma, None, None, dgx, dsx, None,
                dpx, dpw, _bias_grad(ctx, da, nh.S))


class ScanLSTM(torch.autograd.Function):
    """[i f g o] = u_t + N(h_{t-1} W^T), c_t = σ(f) c_{t-1} + σ(i) tanh(g),
    h_t = σ(o) tanh(N_c(c_t)); see ``fused.fused_lstm``."""

    @staticmethod
    def forward(ctx, u, h0, c0, w, g, gc, bc, spec: NormSpec, cspec: NormSpec, gx, sx, x_eps: float, px, pw, bias):
        B, T, GH = u.shape
        H = GH // 4
        S = w.shape[0] if w.dim() == 3 else 0
        nh, nc, nx = _Norm(spec, g, None, T, S), _Norm(cspec, gc, bc, T, S), _input_norm(gx, sx, x_eps, T)
        loops = ctx.loops = _loops(u, S, "lstm", nx, nh, nc)
        u = u.contiguous() if nx is not None and px is None else u
        # each step's row becomes σ of the gates in place (g unused)
        sig = nh.fold(_input_buffer(u, bias, S, nx, px, pw))
        tg, cs, tc, hs = (u.new_empty(T, B, H) for _ in range(4))
        zs = u.new_empty(T, B, GH) if nh.mode else None
        if loops is not None:
            loops.lstm_forward(sig, tg, cs, tc, hs, zs, h0.contiguous(), c0.contiguous(), w, nh.for_loops(loops, sig),
                               nc.for_loops(loops, cs), *_input_forward(loops, nx, u, sig, px, pw))
        else:
            sig_s, z_s = _steps(sig, T), _steps(zs, T)
            si, sf, so, a_g = (_steps(sig[..., k * H:(k + 1) * H], T) for k in (0, 1, 3, 2))
            tg_s, c_s, tc_s, h_s = (_steps(b, T) for b in (tg, cs, tc, hs))
            w_t, h, c = w.transpose(-1, -2), h0, c0
            for t in range(T):
                a = nh.term_(t, h, w_t, sig_s[t], z_s[t])
                torch.tanh(a_g[t], out=tg_s[t])  # before σ overwrites the g block
                a.sigmoid_()
                c = torch.mul(sf[t], c, out=c_s[t]).addcmul_(si[t], tg_s[t])
                torch.tanh(c if nc.mode is None else nc.apply(c, t), out=tc_s[t])
                h = torch.mul(so[t], tc_s[t], out=h_s[t])
        stats = {k: m for k, m in (("hh", nh.batch_moments(zs)), ("c", nc.batch_moments(cs)),
                                   ("x", nx.batch_moments(None) if nx is not None else None)) if m is not None}
        ctx.save_for_backward(h0, c0, w, sig, tg, cs, tc, hs, zs, g, gc, bc, u if nx is not None else None, gx, px, pw)
        ctx.norms = nh, nc, nx  # γ, β: see ScanRNN
        flat = [t for m in stats.values() for t in m]
        ctx.mark_non_differentiable(*flat)
        return (hs.transpose(0, 1), cs[T - 1], *flat)

    @staticmethod
    @once_differentiable
    def backward(ctx, dh_out, dc_last, *_stats):
        h0, c0, w, sig, tg, cs, tc, hs, zs, _g, _gc, _bc, u, _gx, px, pw = ctx.saved_tensors
        nh, nc, nx = ctx.norms
        T, B, H = hs.shape
        gh = _grad_out(dh_out, hs.transpose(0, 1))  # becomes ∂L/∂h_t in place
        sf = sig[..., H:2 * H]
        da = sig.new_empty(T, B, 4 * H)
        dn = hs.new_empty(T, B, H) if nc.mode else None
        x_args = ()
        if ctx.loops is not None:  # the gate derivatives are computed in the loop
            dz_all = torch.empty_like(da) if nh.mode else da
            x_args = _input_backward(ctx.loops, nx, u, da, px, pw)
            dc = ctx.loops.lstm_backward(gh, sig, tg, cs, tc, c0.contiguous(), da, dz_all if nh.mode else None, dn,
                                         zs, w, None if dc_last is None else dc_last.contiguous(), nh.compiled,
                                         nc.compiled, *x_args)
        else:
            dz_all, dc = ScanLSTM._backward_loop(gh, c0, sig, tg, cs, tc, da, dn, zs, w, dc_last, nh, nc)
        dg, _ = nh.param_grads(da, zs)
        dgc, dbc = nc.param_grads(dn, cs) if nc.mode else (None, None)
        du, dgx, dsx, dpx, dpw = _input_grads(ctx, nx, x_args, da, px, pw)
        return (du, _mm(dz_all[0], w, nh.S), dc * sf[0], _w_grad(dz_all, h0, hs, nh.S), dg, dgc,
                dbc, None, None, dgx, dsx, None, dpx, dpw, _bias_grad(ctx, da, nh.S))

    @staticmethod
    def _backward_loop(gh, c0, sig, tg, cs, tc, da, dn, zs, w, dc_last, nh, nc) -> tuple[Tensor, Tensor]:
        """The backward loop in Python ops (see ``backward``): ∂L/∂z of all steps and ∂L/∂c_0
        before step 0's forget gate; fills ``da`` and ``dn`` and completes ``gh``."""
        T, B, H = gh.shape
        si, sf, so = sig[..., :H], sig[..., H:2 * H], sig[..., 3 * H:]
        # Gate derivatives of all steps, written in place into few buffers (allocations
        # of this size cost page faults on the CPU).
        k_o = (1 - so).mul_(so).mul_(tc)  # ∂h/∂a_o
        k_tc = tc.square().neg_().add_(1).mul_(so)  # ∂h/∂N_c(c)
        k_c = sig.new_empty(T, B, 3, H)  # ∂c/∂a_{i,f,g}
        torch.sub(1, si, out=k_c[:, :, 0]).mul_(si).mul_(tg)
        torch.sub(1, sf, out=k_c[:, :, 1]).mul_(sf)
        k_c[1:, :, 1].mul_(cs[:-1])
        k_c[0, :, 1].mul_(c0)
        torch.square(tg, out=k_c[:, :, 2]).neg_().add_(1).mul_(si)
        gh_s, k_o, k_tc, k_c, da_s = _steps(gh, T), _steps(k_o, T), _steps(k_tc, T), _steps(k_c, T), _steps(da, T)
        da_ifg, da_o = _steps(da.view(T, B, 4, H)[:, :, :3], T), _steps(da[..., 3 * H:], T)
        dn_s, c_s, z_s, sf_s = _steps(dn, T), _steps(cs, T), _steps(zs, T), _steps(sf, T)
        dzs = []
        dc = dc_last
        for t in range(T - 1, -1, -1):
            g = gh_s[t]
            dcn = nc.back(t, torch.mul(g, k_tc[t], out=dn_s[t]), c_s[t])
            dc = dcn if dc is None else (dcn + dc if t == T - 1 else torch.addcmul(dcn, dc, sf_s[t + 1]))
            torch.mul(dc.unsqueeze(1), k_c[t], out=da_ifg[t])
            torch.mul(g, k_o[t], out=da_o[t])
            dz = nh.back(t, da_s[t], z_s[t])
            dzs.append(dz)
            if t > 0:
                _mm_acc_(gh_s[t - 1], dz, w, nh.S)
        return (da if nh.mode is None else torch.stack(dzs[::-1])), dc


class ScanGRU(torch.autograd.Function):
    """r, z = σ(u_{r,z} + a_{r,z}), n = tanh(u_n + r (a_n + b_hn)), h_t = (1 - z) n + z h_{t-1},
    a = N(h_{t-1} W^T); see ``fused.fused_gru``."""

    @staticmethod
    def forward(ctx, u, h0, w, b_hn, g, spec: NormSpec, gx, sx, x_eps: float, px, pw, bias):
        B, T, GH = u.shape
        H = GH // 3
        S = w.shape[0] if w.dim() == 3 else 0
        nh, nx = _Norm(spec, g, None, T, S), _input_norm(gx, sx, x_eps, T)
        loops = ctx.loops = _loops(u, S, "gru", nx, nh)
        u = u.contiguous() if nx is not None and px is None else u
        gates = _input_buffer(u, bias, S, nx, px, pw)  # each step's row becomes (r, z, n) in place
        zero = torch.zeros_like(b_hn)
        b3 = torch.cat([zero, zero, b_hn], -1)  # ([S,] 3H)
        hw = u.new_empty(T, B, GH)  # N(h W^T) + (0, 0, b_hn): b_hn stays after N
        if S:
            hw.view(T, S, -1, GH).copy_(b3.unsqueeze(1))
        else:
            hw.copy_(b3)
        hw = nh.fold(hw)
        hs = u.new_empty(T, B, H)
        zs = u.new_empty(T, B, GH) if nh.mode else None
        if loops is not None:
            loops.gru_forward(gates, hw, hs, zs, h0.contiguous(), w, nh.for_loops(loops, hw),
                              *_input_forward(loops, nx, u, gates, px, pw))
        else:
            hw_s, hw_rz, hw_n = _steps(hw, T), _steps(hw[..., :2 * H], T), _steps(hw[..., 2 * H:], T)
            rz_s, r_s = _steps(gates[..., :2 * H], T), _steps(gates[..., :H], T)
            zg_s, n_s = _steps(gates[..., H:2 * H], T), _steps(gates[..., 2 * H:], T)
            h_s, z_s = _steps(hs, T), _steps(zs, T)
            w_t, h = w.transpose(-1, -2), h0
            for t in range(T):
                nh.term_(t, h, w_t, hw_s[t], z_s[t])
                rz_s[t].add_(hw_rz[t]).sigmoid_()
                n = n_s[t].addcmul_(r_s[t], hw_n[t]).tanh_()
                h = torch.addcmul(n, zg_s[t], h - n, out=h_s[t])
        moments = nh.batch_moments(zs)
        ctx.save_for_backward(h0, w, hw, gates, hs, zs, g, u if nx is not None else None, gx, px, pw)  # γ: see ScanRNN
        ctx.nh, ctx.nx = nh, nx
        flat = list(moments) if moments is not None else []
        flat += list(nx.batch_moments(None)) if nx is not None else []
        ctx.mark_non_differentiable(*flat)
        return (hs.transpose(0, 1), *flat)

    @staticmethod
    @once_differentiable
    def backward(ctx, dh_out, *_stats):
        h0, w, hw, gates, hs, zs, _g, u, _gx, px, pw = ctx.saved_tensors
        nh: _Norm = ctx.nh
        T, B, H = hs.shape
        gh_all = _grad_out(dh_out, hs.transpose(0, 1))  # becomes ∂L/∂h_t in place
        zg = gates[..., H:2 * H]
        da = hs.new_empty(T, B, 3 * H)
        x_args = ()
        if ctx.loops is not None:  # the gate derivatives are computed in the loop
            dz_all = torch.empty_like(da) if nh.mode else da
            du = torch.empty_like(da)
            x_args = _input_backward(ctx.loops, ctx.nx, u, da, px, pw)
            ctx.loops.gru_backward(gh_all, gates, hw, hs, h0.contiguous(), da, du, dz_all if nh.mode else None, zs, w,
                                   nh.compiled, *x_args)
        else:
            r, ns = gates[..., :H], gates[..., 2 * H:]
            # ∂h/∂u per gate, written in place (see ScanLSTM._backward_loop): r, z, n
            k_u = hs.new_empty(T, B, 3, H)
            k_n = torch.square(ns, out=k_u[:, :, 2]).neg_().add_(1).mul_(1 - zg)  # ∂h/∂(u_n + r a_n)
            torch.sub(hs[:-1], ns[1:], out=k_u[1:, :, 1])  # h_{t-1} - n_t
            torch.sub(h0, ns[0], out=k_u[0, :, 1])
            k_u[:, :, 1].mul_(zg).mul_(1 - zg)  # ∂h/∂a_z
            torch.mul(k_n, hw[..., 2 * H:], out=k_u[:, :, 0]).mul_(r).mul_(1 - r)  # ∂h/∂a_r
            k_a = k_u.clone()
            k_a[:, :, 2].mul_(r)  # ∂h/∂a: a_n enters as r a_n
            k_a, da_s, da3, gh_s = _steps(k_a, T), _steps(da, T), _steps(da.view(T, B, 3, H), T), _steps(gh_all, T)
            z_s, zg_s = _steps(zs, T), _steps(zg, T)
            dzs = []
            for t in range(T - 1, -1, -1):
                gh = gh_s[t]
                torch.mul(gh.unsqueeze(1), k_a[t], out=da3[t])
                dz = nh.back(t, da_s[t], z_s[t])
                dzs.append(dz)
                if t > 0:
                    _mm_acc_(gh_s[t - 1].addcmul_(gh, zg_s[t]), dz, w, nh.S)
            dz_all = da if nh.mode is None else torch.stack(dzs[::-1])
            du = k_u.mul_(gh_all.unsqueeze(2)).view(T, B, 3 * H)
        dh0 = _mm_acc_(gh_all[0] * zg[0], dz_all[0], w, nh.S)
        dg, _ = nh.param_grads(da, zs)
        du_in, dgx, dsx, dpx, dpw = _input_grads(ctx, ctx.nx, x_args, du, px, pw)
        return (du_in, dh0, _w_grad(dz_all, h0, hs, nh.S), _seed_sum(da[..., 2 * H:], nh.S), dg, None, dgx, dsx,
                None, dpx, dpw, _bias_grad(ctx, du, nh.S))


# -- the functions: arguments and results as baselines/fused.py ------------------------

def last_path() -> str:
    """The recurrence path of the last scan call on this thread, which runs record:
    "scan-cpp" (the compiled CPU loops), "scan-triton" (the CUDA step kernels, a launch per
    step), "scan-triton-seq" (their whole-sequence launches) or "scan" (the Python loops)."""
    return getattr(_ran, "path", "scan")


def seeds_of(w_hh: Tensor) -> int:
    """Stacked seeds S of a call: W_hh is (S, G*H, H) for S seeds, (G*H, H) for one model (0)."""
    return w_hh.shape[0] if w_hh.dim() == 3 else 0


def check_args(u: Tensor, h0: Tensor, gates: int, norms: tuple, seeds: int = 0,
               **others: Tensor | None) -> tuple[int, int, int]:
    """B, T, H of a ``gates``-gate cell's arguments; ValueError when a norm or a shape is
    wrong. With ``seeds`` S > 0, u and h0 hold S*B rows and the others lead with S."""
    for n in norms:
        if n not in NORMS:
            raise ValueError(f"unknown norm {n!r}; allowed: None, 'batch', 'layer'")
    B, T, GH = u.shape
    H = h0.shape[-1]
    if GH != gates * H or h0.shape != (B, H) or (seeds and B % seeds):
        raise ValueError(f"shapes do not fit a {gates}-gate cell{f' of {seeds} seeds' if seeds else ''}: "
                         f"u {tuple(u.shape)}, h0 {tuple(h0.shape)}")
    lead = (seeds,) if seeds else ()
    want = dict(c0=(B, H), w_hh=lead + (GH, H), gamma_hh=lead + (GH,), b_hn=lead + (H,), gamma_c=lead + (H,),
                beta_c=lead + (H,), bias=lead + (GH,), gamma_x=(GH,), shift_x=(GH,))
    for name, t in others.items():
        if t is not None and t.shape != want[name]:
            raise ValueError(f"{name} must be {want[name]}, got {tuple(t.shape)}")
    return B, T, H


def population(norm: str | None, batch_stats: bool, mean: Tensor | None, var: Tensor | None,
               feats: int, like: Tensor, what: str, seeds: int = 0) -> tuple[Tensor, Tensor] | tuple[None, None]:
    """Population rows ([S,] R, feats), detached, in ``like``'s dtype and device; (None,
    None) when they are not used. Like ``SeqNorm``, no rows yet (a never-trained norm)
    means the identity statistics of a fresh BatchNorm."""
    if norm != "batch" or batch_stats:
        return None, None
    if mean is None or var is None:
        raise ValueError(f"{what}: population statistics needed when batch_stats=False")
    lead = (seeds,) if seeds else ()
    if mean.shape != var.shape or mean.shape[:-2] != lead or mean.dim() != 2 + bool(seeds) or mean.shape[-1] != feats:
        raise ValueError(f"{what}: population statistics must be ({'seeds, ' if seeds else ''}rows, {feats}), "
                         f"got {tuple(mean.shape)} and {tuple(var.shape)}")
    if mean.shape[-2] == 0:
        return like.new_zeros(*lead, 1, feats), like.new_ones(*lead, 1, feats)
    return mean.detach().to(like), var.detach().to(like)


def _input_shapes(xn: InputNorm | None) -> dict:
    return {} if xn is None else {"gamma_x": xn.gamma, "shift_x": xn.shift}


def _projected_bias(bias: Tensor | None, project: InputProjection | None, seeds: int) -> Tensor | None:
    """``bias`` with the projection's b_ih added (the recurrence adds both to its buffer)."""
    if project is None:
        return bias
    if seeds:
        raise ValueError("a recurrence projects its input itself for one model only, not stacked seeds")
    if project.x.shape[-1] != project.w.shape[-1]:
        raise ValueError(f"the input projection: x {tuple(project.x.shape)} and W_ih {tuple(project.w.shape)} "
                         "do not fit")
    return project.b if bias is None else (bias if project.b is None else bias + project.b)


def _input_call(xn: InputNorm | None, project: InputProjection | None) -> tuple:
    """The Functions' input-term arguments: the input norm's (γ, shift, eps, x, W_ih), or
    no norm and the projection's x and W_ih (or None)."""
    if xn is not None and project is not None:
        raise ValueError("an input norm's projection goes in InputNorm.project, not in project=")
    if xn is not None and xn.project is not None and xn.project[0].requires_grad:
        raise ValueError("the loops' input projection (InputNorm.project) takes no gradient for x; "
                         "project x first where it needs one (InputNorm.projects)")
    if xn is not None:
        return xn.args()
    return None, None, 0.0, *((project.x, project.w) if project is not None else (None, None))


def _set_stats(xn: InputNorm | None, flat: list) -> None:
    if xn is not None:
        xn.stats = (flat[0], flat[1])


def _spec(norm, batch_stats, mean, var, feats, like, eps, what, seeds) -> NormSpec:
    pops = population(norm, batch_stats, mean, var, feats, like, what, seeds)
    return NormSpec(norm, bool(batch_stats), *pops, eps)


def scan_rnn(u: Tensor, h0: Tensor, w_hh: Tensor, gamma: Tensor | None = None, *,
             norm: str | None = None, batch_stats: bool = True, pop_mean: Tensor | None = None,
             pop_var: Tensor | None = None, act: str = "tanh", eps: float = 1e-5,
             tf32: bool = False, bias: Tensor | None = None, input_norm: InputNorm | None = None,
             project: InputProjection | None = None) -> tuple[Tensor, Tensor, Tensor]:
    """``fused.fused_rnn`` in PyTorch ops (``tf32`` is the global matmul setting here).
    The returned mean and variance are the batch statistics with batch norm, else zeros.
    ``bias`` ([S,] G*H; every function here): added to u, in the pass that copies u.
    ``input_norm`` (every function here): u is normalized in the loops (``InputNorm``).
    ``project`` (every function here): u is a stand-in, the recurrence computes x W_ih^T
    + b_ih itself (``InputProjection``)."""
    S = seeds_of(w_hh)
    bias = _projected_bias(bias, project, S)
    B, _, H = check_args(u, h0, 1, (norm,), S, w_hh=w_hh, gamma_hh=gamma, bias=bias, **_input_shapes(input_norm))
    lead = (S,) if S else ()
    gamma = gamma if gamma is not None else u.new_ones(*lead, H)
    spec = _spec(norm, batch_stats, pop_mean, pop_var, H, u, eps, "recurrent norm", S)
    h, mean, var, *x = ScanRNN.apply(u, h0, w_hh, gamma, spec, act, *_input_call(input_norm, project), bias)
    _set_stats(input_norm, x)
    return h, mean, var


def scan_lstm(u: Tensor, h0: Tensor, c0: Tensor, w_hh: Tensor, gamma_hh: Tensor | None = None, *,
              norm: str | None = None, batch_stats: bool = True, pop_mean: Tensor | None = None,
              pop_var: Tensor | None = None, cell_norm: str | None = None, gamma_c: Tensor | None = None,
              beta_c: Tensor | None = None, cell_pop_mean: Tensor | None = None,
              cell_pop_var: Tensor | None = None, eps: float = 1e-5, tf32: bool = False,
              bias: Tensor | None = None, input_norm: InputNorm | None = None,
              project: InputProjection | None = None) -> tuple[Tensor, Tensor, dict[str, tuple[Tensor, Tensor]]]:
    """``fused.fused_lstm`` in PyTorch ops: h_seq (B, T, H), c_T (B, H), batch statistics."""
    S = seeds_of(w_hh)
    bias = _projected_bias(bias, project, S)
    B, _, H = check_args(u, h0, 4, (norm, cell_norm), S, c0=c0, w_hh=w_hh, gamma_hh=gamma_hh, gamma_c=gamma_c,
                         beta_c=beta_c, bias=bias, **_input_shapes(input_norm))
    lead = (S,) if S else ()
    gamma_hh = gamma_hh if gamma_hh is not None else u.new_ones(*lead, 4 * H)
    gamma_c = gamma_c if gamma_c is not None else u.new_ones(*lead, H)
    beta_c = beta_c if beta_c is not None or cell_norm is None else u.new_zeros(*lead, H)
    spec = _spec(norm, batch_stats, pop_mean, pop_var, 4 * H, u, eps, "recurrent norm", S)
    cspec = _spec(cell_norm, batch_stats, cell_pop_mean, cell_pop_var, H, u, eps, "cell norm", S)
    h, c, *flat = ScanLSTM.apply(u, h0, c0, w_hh, gamma_hh, gamma_c, beta_c, spec, cspec,
                                 *_input_call(input_norm, project), bias)
    keys = [k for k, s in (("hh", spec), ("c", cspec)) if s.kind == "batch" and s.batch_stats]
    _set_stats(input_norm, flat[2 * len(keys):])
    return h, c, {k: (flat[2 * i], flat[2 * i + 1]) for i, k in enumerate(keys)}


def scan_gru(u: Tensor, h0: Tensor, w_hh: Tensor, b_hn: Tensor, gamma_hh: Tensor | None = None, *,
             norm: str | None = None, batch_stats: bool = True, pop_mean: Tensor | None = None,
             pop_var: Tensor | None = None, eps: float = 1e-5, tf32: bool = False, bias: Tensor | None = None,
             input_norm: InputNorm | None = None, project: InputProjection | None = None
             ) -> tuple[Tensor, dict[str, tuple[Tensor, Tensor]]]:
    """``fused.fused_gru`` in PyTorch ops: h_seq (B, T, H) and the batch statistics."""
    S = seeds_of(w_hh)
    bias = _projected_bias(bias, project, S)
    B, _, H = check_args(u, h0, 3, (norm,), S, w_hh=w_hh, b_hn=b_hn, gamma_hh=gamma_hh, bias=bias,
                         **_input_shapes(input_norm))
    gamma_hh = gamma_hh if gamma_hh is not None else u.new_ones(*((S,) if S else ()), 3 * H)
    spec = _spec(norm, batch_stats, pop_mean, pop_var, 3 * H, u, eps, "recurrent norm", S)
    h, *flat = ScanGRU.apply(u, h0, w_hh, b_hn, gamma_hh, spec, *_input_call(input_norm, project), bias)
    recurrent = 2 if spec.kind == "batch" and spec.batch_stats else 0
    _set_stats(input_norm, flat[recurrent:])
    return h, ({"hh": (flat[0], flat[1])} if recurrent else {})
