"""Recurrent cores: cuDNN modules and pure-PyTorch time loops with the same math.

A *core* maps an input sequence (B, T, I) to the hidden sequence of its top layer
(B, T, H) and a final state. ``LoopCore`` computes exactly what ``nn.RNN``,
``nn.GRU`` and ``nn.LSTM`` compute (PyTorch's gate order and bias layout), and
keeps its parameters under the same names (``rnn.weight_ih_l0`` …), so a state
dict moves between the cuDNN and the loop version of a cell unchanged. The loop
version is the base that normalized cells extend, and the reference that fast
paths are tested against.

Per-sequence work is done once outside the time loop: the input projection
``x W_ih^T + b_ih`` for all steps is one matrix product.

The loop calls three hooks, ``input_term`` (all steps at once), ``recurrent_term``
and ``cell_out`` (one step each), which normalized cells override
(``baselines.normalized.NormLoopCore``); the gate arithmetic stays in one place.
Both cores take ``lengths`` (B,) for padded batches: the plain cells ignore it
(each sequence's valid outputs never depend on its padding), cells with batch
statistics use it to leave padded steps out of them.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from baselines.norm import step_mask

GATES = {"rnn": 1, "gru": 3, "lstm": 4}
State = Any  # Tensor (L, B, H) for rnn/gru; tuple (h, c) for lstm


class _Projection(torch.autograd.Function):
    """x W^T (+ b) over all steps at once, with W's gradient computed as (X^T G)^T.

    Autograd's G^T X (G: (B*T, G*H), X: (B*T, I)) is a matrix product with two output
    columns for the adding task's two input features, and MKL runs that shape ~4x
    slower than X^T G on the CPU (364 vs 94 us at B*T=1600, G*H=256, I=2), a tenth of
    an LSTM's training step. The two sum the same products in their own order.
    """

    @staticmethod
    def forward(ctx, x: Tensor, w: Tensor, b: Tensor | None) -> Tensor:
        ctx.save_for_backward(x, w)
        ctx.has_bias = b is not None
        return F.linear(x, w, b)

    @staticmethod
    def backward(ctx, g: Tensor):
        x, w = ctx.saved_tensors
        # Under autocast the forward's product ran in g's dtype (bf16): so does the backward,
        # as autograd's would on autocast's casts; autograd casts each gradient back.
        x, w = x.to(g.dtype), w.to(g.dtype)
        need_x, need_w, need_b = ctx.needs_input_grad
        g2 = g.reshape(-1, g.shape[-1])
        gx = (g2 @ w).view(*g.shape[:-1], w.shape[1]) if need_x else None
        gw = (x.reshape(-1, x.shape[-1]).t() @ g2).t() if need_w else None
        gb = g2.sum(0) if ctx.has_bias and need_b else None
        return gx, gw, gb


def project(x: Tensor, w: Tensor, b: Tensor | None = None) -> Tensor:
    """``F.linear(x, w, b)`` for the input projection of every step (see ``_Projection``)."""
    return _Projection.apply(x, w, b)


def run_recurrence(cell: str, act: str, xw: Tensor, h0: Tensor, c0: Tensor | None, w_hh: Tensor, b_hh: Tensor,
                   args: dict, *, kernel: bool = False, input_norm: Any = None) -> tuple[Tensor, Tensor | None, dict]:
    """One layer's recurrence on a fast path: (h sequence, c_T or None, batch statistics).

    ``xw``: the input term W_ih x + b_ih of every step; ``args``: the norms'
    keyword arguments (``LoopCore.fast_norm_args``); ``kernel``: the Triton kernels
    (baselines/fused.py) instead of the scan path (baselines/scan.py). With W_hh of
    shape (S, G*H, H) it runs S stacked seeds (``baselines/stack.py``): xw, h0 and c0
    hold S*B rows seed-major, b_hh and the norms' tensors lead with S. ``input_norm``
    (``scan.InputNorm``, the compiled CPU loops only): xw is the bare projection
    W_ih x, batch-normalized in the loops; its statistics come back under "x". With
    ``scan.InputProjection`` (scan path, one model), xw is a stand-in: the recurrence
    computes W_ih x + b_ih itself.
    """
    from baselines import fused, scan

    rnn, lstm, gru = ((fused.fused_rnn, fused.fused_lstm, fused.fused_gru) if kernel
                      else (scan.scan_rnn, scan.scan_lstm, scan.scan_gru))
    S = scan.seeds_of(w_hh)

    def plus(bias: Tensor) -> tuple[Tensor, dict]:  # xw + b_hh, each seed's rows with its own bias
        if isinstance(input_norm, scan.InputProjection):  # the recurrence projects x itself
            return xw, {"bias": bias, "project": input_norm}
        if input_norm is not None:  # the loops add it with the input norm's shift
            return xw, {"input_norm": dataclasses.replace(input_norm, shift=input_norm.shift + bias)}
        if not kernel:  # the scan path adds it while it copies xw
            return xw, {"bias": bias}
        if not S:
            return xw + bias, {}
        return (xw.view(S, -1, xw.shape[-1]) + bias.unsqueeze(1)).view(xw.shape), {}

    tf32 = torch.backends.cuda.matmul.allow_tf32
    if cell == "rnn":
        rnn_args = {("gamma" if k == "gamma_hh" else k): v for k, v in args.items()}
        u, more = plus(b_hh)
        out, mean, var = rnn(u, h0, w_hh, act=act, tf32=tf32, **rnn_args, **more)
        batch_norm = args.get("norm") == "batch" and args.get("batch_stats", True)
        c, stats = None, ({"hh": (mean, var)} if batch_norm else {})
    elif cell == "lstm":
        u, more = plus(b_hh)
        out, c, stats = lstm(u, h0, c0, w_hh, tf32=tf32, **args, **more)
    else:
        H = h0.shape[-1]  # GRU: b_hn stays inside the reset gate's product, as in nn.GRU
        b_rz = torch.cat([b_hh[..., :2 * H], torch.zeros_like(b_hh[..., 2 * H:])], -1)
        u, more = plus(b_rz)
        (out, stats), c = gru(u, h0, w_hh, b_hh[..., 2 * H:], tf32=tf32, **args, **more), None
    xn = more.get("input_norm")
    return out, c, (stats if xn is None else {**stats, "x": xn.stats})


class CudnnCore(nn.Module):
    """``nn.RNN`` / ``nn.GRU`` / ``nn.LSTM`` (cuDNN on CUDA), batch-first."""

    last_path = "cudnn"  # "native" after a forward pass on the CPU (nn.LSTM's own kernels)

    def __init__(self, cell: str, input_size: int, hidden_size: int, num_layers: int = 1,
                 nonlinearity: str = "tanh") -> None:
        super().__init__()
        self.cell, self.hidden_size, self.num_layers = cell, hidden_size, num_layers
        kw = dict(input_size=input_size, hidden_size=hidden_size, num_layers=num_layers,
                  batch_first=True)
        if cell == "rnn":
            self.rnn = nn.RNN(nonlinearity=nonlinearity, **kw)
        else:
            self.rnn = {"gru": nn.GRU, "lstm": nn.LSTM}[cell](**kw)

    def forward(self, x: Tensor, state: State = None, perturb: Tensor | None = None,
                lengths: Tensor | None = None) -> tuple[Tensor, State]:
        if perturb is not None:
            raise ValueError("cuDNN cores cannot inject per-step perturbations; use the loop twin")
        self.last_path = "cudnn" if x.is_cuda else "native"
        return self.rnn(x, state)


class LoopCore(nn.Module):
    """The same cells as ``CudnnCore``, as an explicit loop over time steps.

    ``perturb`` (B, T, H), if given, is added to the top layer's h_t right after
    the cell computes it, before h_t feeds the next step and the head. Passing
    zeros with ``requires_grad`` gives the total derivative ∂L/∂h_t for every t,
    the gradient-flow profile (Cooijmans et al. 2017, "Recurrent Batch
    Normalization", the gradient-flow figure).
    """

    def __init__(self, cell: str, input_size: int, hidden_size: int, num_layers: int = 1,
                 nonlinearity: str = "tanh") -> None:
        super().__init__()
        if cell not in GATES:
            raise ValueError(f"unknown cell {cell!r}")
        self.cell, self.hidden_size, self.num_layers = cell, hidden_size, num_layers
        self.nonlinearity = nonlinearity
        self.act = torch.tanh if nonlinearity == "tanh" else torch.relu
        g = GATES[cell] * hidden_size
        self.rnn = nn.Module()  # holds parameters under nn.RNN's names
        for layer in range(num_layers):
            in_size = input_size if layer == 0 else hidden_size
            for name, shape in ((f"weight_ih_l{layer}", (g, in_size)), (f"weight_hh_l{layer}", (g, hidden_size)),
                                (f"bias_ih_l{layer}", (g,)), (f"bias_hh_l{layer}", (g,))):
                self.rnn.register_parameter(name, nn.Parameter(torch.empty(shape)))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """PyTorch's RNN init: U(-1/sqrt(H), 1/sqrt(H)) for every weight and bias."""
        bound = 1.0 / math.sqrt(self.hidden_size)
        for p in self.rnn.parameters():
            nn.init.uniform_(p, -bound, bound)

    def weights(self, layer: int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        r = self.rnn
        return (getattr(r, f"weight_ih_l{layer}"), getattr(r, f"weight_hh_l{layer}"),
                getattr(r, f"bias_ih_l{layer}"), getattr(r, f"bias_hh_l{layer}"))

    def init_state(self, x: Tensor) -> State:
        h = x.new_zeros(self.num_layers, x.shape[0], self.hidden_size)
        return (h, h.clone()) if self.cell == "lstm" else h

    def step(self, xw: Tensor, h: Tensor, c: Tensor | None, w_hh: Tensor, b_hh: Tensor
             ) -> tuple[Tensor, Tensor | None]:
        """One time step given the precomputed input term ``xw`` = W_ih x_t + b_ih."""
        return self.gates(xw, torch.addmm(b_hh, h, w_hh.t()), h, c)

    def gates(self, xw: Tensor, hw: Tensor, h: Tensor, c: Tensor | None,
              cell_out=torch.tanh) -> tuple[Tensor, Tensor | None]:
        """The cell update from the input term ``xw`` and the recurrent term ``hw``.

        ``cell_out`` maps the LSTM's c_t to what its output gate multiplies (tanh,
        or tanh of normalized c_t); the recurrent c_t itself is never changed.
        """
        if self.cell == "rnn":
            return self.act(xw + hw), None
        if self.cell == "gru":
            xr, xz, xn = xw.chunk(3, -1)
            hr, hz, hn = hw.chunk(3, -1)
            r = torch.sigmoid(xr + hr)
            z = torch.sigmoid(xz + hz)
            n = torch.tanh(xn + r * hn)
            return (1 - z) * n + z * h, None
        i, f, g, o = (xw + hw).chunk(4, -1)
        c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
        return torch.sigmoid(o) * cell_out(c), c

    def loop_recurrence(self, layer: int, xw_all: Tensor, h: Tensor, c: Tensor | None,
                        mask: Tensor | None, perturb: Tensor | None) -> tuple[Tensor, Tensor, Tensor | None]:
        """The reference: one layer's recurrence, one time step at a time."""
        # unbind, not xw_all[:, t]: the backward of T selects would write T
        # full-size zero tensors, unbind's is one stack.
        xw_steps = xw_all.unbind(1)
        outs = []
        for t in range(len(xw_steps)):
            mask_t = None if mask is None else mask[:, t]
            hw = self.recurrent_term(layer, t, h, mask_t)
            h, c = self.gates(xw_steps[t], hw, h, c,
                              lambda c_t: self.cell_out(layer, t, c_t, mask_t))  # noqa: B023
            if perturb is not None:
                h = h + perturb[:, t]
            outs.append(h)
        return torch.stack(outs, dim=1), h, c

    # -- the fast paths ------------------------------------------------------
    fast = True  # False forces the reference loop (TrainConfig.fast_path=false)
    last_path = "loop"  # the last forward pass's: "fused", "scan", "scan-cpp", "scan-triton(-seq)" or "loop"

    def fast_norm_args(self, layer: int, masked: bool) -> dict | None:
        """How the fast recurrence normalizes ``layer``: keyword arguments of
        ``baselines.fused``/``baselines.scan`` for W_hh h (norm, gamma_hh, batch_stats,
        pop_mean, pop_var, eps) and, for the LSTM, c_t (cell_norm, gamma_c, ...).
        None: it cannot (``masked``: the batch is padded, which the plain cells ignore)."""
        return {}

    def record_fast_stats(self, layer: int, stats: dict, batch: int) -> None:
        """Receive the fast recurrence's per-step batch statistics (running averages)."""

    def fast_recurrence(self, layer: int, xw_all: Tensor, h0: Tensor, c0: Tensor | None, masked: bool,
                        input_norm: Any = None) -> tuple[Tensor, Tensor, Tensor | None, str] | None:
        """One layer's whole recurrence as one autograd op: (h sequence, last h, last c,
        path), or None where only the reference loop applies (``fast`` off, autocast, or
        a norm neither fast path has). The path is "fused" (one Triton kernel,
        baselines/fused.py) where it is enabled and fits the shape, else "scan"
        (PyTorch ops with a hand-written backward pass, baselines/scan.py), "scan-cpp"
        where its loops run compiled (the CPU; baselines/scan_cpp.py), or "scan-triton"
        where they run as one Triton kernel per step (CUDA; baselines/scan_triton.py),
        "scan-triton-seq" where those run every step in one launch (layer norm; the other
        cells with ``scan_triton.SEQUENCE``).
        ``input_norm``: what the recurrence takes of the input term (see
        ``loop_input_term``, which has made sure that this path runs): ``scan.InputNorm``
        (xw_all is the bare projection, or its stand-in where the loops project x
        themselves) or ``scan.InputProjection`` (xw_all is a stand-in)."""
        if not self.fast_enabled(xw_all):
            return None
        args = self.fast_norm_args(layer, masked)
        if args is None:
            return None
        from baselines import scan

        B, kernel = xw_all.shape[0], self.uses_kernel(xw_all)
        _, w_hh, _, b_hh = self.weights(layer)
        out, c, stats = run_recurrence(self.cell, self.nonlinearity, xw_all, h0, c0, w_hh, b_hh, args,
                                       kernel=kernel, input_norm=input_norm)
        self.record_fast_stats(layer, stats, B)
        return out, out[:, -1], c, ("fused" if kernel else scan.last_path())

    def uses_kernel(self, x: Tensor) -> bool:
        """Whether the fast path on input like ``x`` (B, T, ·) is the Triton kernel."""
        from baselines import fused

        return x.dtype == torch.float32 and fused.available(x.device, x.shape[0], self.hidden_size, GATES[self.cell])

    def runs_scan_path(self, layer: int, seq: Tensor, masked: bool) -> bool:
        """Whether ``fast_recurrence`` runs ``layer`` on input like ``seq`` on the scan path
        (on, the layer's norms covered, not the Triton kernel)."""
        return self.fast_enabled(seq) and not self.uses_kernel(seq) and self.fast_norm_args(layer, masked) is not None

    def fast_enabled(self, x: Tensor) -> bool:
        """Whether a fast path may run on input like ``x`` (on, and no autocast); it runs
        where ``fast_norm_args`` also has the layer's norms."""
        return self.fast and not torch.is_autocast_enabled(x.device.type)

    # -- hooks that normalized cells override --------------------------------
    def loop_input_term(self, layer: int, seq: Tensor, mask: Tensor | None) -> tuple[Tensor, Any] | None:
        """(what the recurrence takes as the input term, what computes it) where the fast
        path's recurrence computes the input term itself; None: it is ``input_term``.
        Here: on the scan path, (stand-in, ``scan.InputProjection``): the recurrence
        projects ``seq`` time-major, straight into its loops' buffer."""
        if not self.runs_scan_path(layer, seq, mask is not None):
            return None
        from baselines import scan

        w_ih, _, b_ih, _ = self.weights(layer)
        p = scan.InputProjection(seq, w_ih, b_ih)
        return p.stand_in(), p

    def input_term(self, layer: int, seq: Tensor, mask: Tensor | None) -> Tensor:
        """W_ih x_t + b_ih for every step at once, (B, T, G*H)."""
        w_ih, _, b_ih, _ = self.weights(layer)
        return project(seq, w_ih, b_ih)

    def recurrent_term(self, layer: int, t: int, h: Tensor, mask_t: Tensor | None) -> Tensor:
        """W_hh h_{t-1} + b_hh, (B, G*H)."""
        _, w_hh, _, b_hh = self.weights(layer)
        return torch.addmm(b_hh, h, w_hh.t())

    def cell_out(self, layer: int, t: int, c: Tensor, mask_t: Tensor | None) -> Tensor:
        """What the LSTM output gate multiplies: tanh(c_t)."""
        return torch.tanh(c)

    def begin_pass(self) -> None:
        """Called before each forward pass (normalized cells drop stale step statistics)."""

    def end_pass(self) -> None:
        """Called after each forward pass (normalized cells fold their step statistics
        into the running ones, one update per pass)."""

    def forward(self, x: Tensor, state: State = None, perturb: Tensor | None = None,
                lengths: Tensor | None = None) -> tuple[Tensor, State]:
        self.begin_pass()
        if state is None:
            state = self.init_state(x)
        h0, c0 = state if self.cell == "lstm" else (state, None)
        T = x.shape[1]
        mask = step_mask(lengths, T, x.device)
        hs, cs = [], []
        seq = x
        for layer in range(self.num_layers):
            top_perturb = perturb if layer == self.num_layers - 1 else None
            in_loops = None if top_perturb is not None else self.loop_input_term(layer, seq, mask)
            xw_all, xn = in_loops or (self.input_term(layer, seq, mask), None)  # (B, T, G*H) in one op
            h, c = h0[layer], (c0[layer] if c0 is not None else None)
            fast = None if top_perturb is not None else self.fast_recurrence(layer, xw_all, h, c,
                                                                                mask is not None, xn)
            if xn is not None and fast is None:
                raise RuntimeError("the input norm was left to a fast path that did not run")
            if fast is None:
                self.last_path = "loop"
                seq, h, c = self.loop_recurrence(layer, xw_all, h, c, mask, top_perturb)
            else:
                seq, h, c, self.last_path = fast
            hs.append(h)
            cs.append(c)
        self.end_pass()
        h_n = torch.stack(hs)
        return seq, ((h_n, torch.stack(cs)) if self.cell == "lstm" else h_n)
