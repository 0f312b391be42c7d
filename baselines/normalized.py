"""Normalized recurrent models: one config of switches, one core, one model class.

Every normalized variant in ``baselines/zoo.py`` is a preset over ``NormConfig``,
so an ablation is an override (``--set model.norm_stats=shared``):

- ``norm``: batch | layer | none. ``none`` turns every normalization off (in the
  cell, on c_t and in the output stack) and leaves exactly the plain cell.
- ``norm_at``: which terms are normalized. ``input``: W_x x_t only (Laurent et al.
  2016, "Batch Normalized Recurrent Neural Networks"); ``recurrent``: W_h h_{t-1}
  only; ``both``: each separately (Cooijmans et al. 2017, "Recurrent Batch
  Normalization"); ``output``: nothing inside the recurrence, the top layer's
  output sequence before the head (where the seed document puts it).
- ``norm_cell``: LSTM only, normalize c_t before the output tanh,
  h_t = σ(o) ⊙ tanh(N(c_t)); the c_t carried to the next step is not normalized.
- ``norm_stats`` per_step | shared, ``norm_eval`` population | batch,
  ``norm_gamma``, ``norm_eps``, ``norm_momentum``: see ``baselines/norm.py``.
- ``h0_noise``: std of Gaussian noise added to h_0 in training (Cooijmans et al.
  add it on sequential MNIST, whose constant first pixels otherwise give the
  recurrent term zero batch variance and exploding gradients). Their code also
  adds it at evaluation; here evaluation stays deterministic, since population
  statistics already avoid the zero-variance problem there.
- ``out_stack`` and ``relu_in_affine``: the seed document's post-RNN stack
  norm → ReLU → linear → norm → ReLU before the head, and its formula variant
  γ·ReLU(ẑ) + β (instead of ReLU(γ·ẑ + β)).

The normalized W_x x and W_h h terms have no β of their own: the cell's bias
b_ih + b_hh is the one shared bias of Cooijmans et al. (kept as PyTorch's two
vectors, so a state dict moves between plain and normalized cells; for the GRU,
b_hn stays inside the reset gate's product as in ``nn.GRU``). Layer norm follows
the same layout (Ba et al. 2016, "Layer Normalization", give those two terms
their own β, which the shared bias makes redundant); its c_t norm has β.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Iterable

import torch
from torch import Tensor, nn

from baselines.cells import GATES, LoopCore, State, project
from baselines.models import ModelConfig, ModelOutput, RecurrentModel
from baselines.norm import EVAL_STATS, STATS, SeqNorm, add_optional, step_mask
from baselines.scan import InputNorm
from suite.errors import UserError
from suite.registry import param

NormFactory = Callable[[int, bool], SeqNorm]  # (features, with β) -> norm layer
PLACES = ("input", "recurrent", "both", "output")


@dataclass
class NormConfig(ModelConfig):
    """``ModelConfig`` plus the normalization switches (module docstring)."""

    impl: str = param("loop", "implementation: explicit time loop, or cuDNN when the recurrence "
                      "has no norm (norm=none, or norm_at=output without norm_cell)",
                      choices=("cudnn", "loop"))
    norm: str = param("none", "normalization kind (none: the plain cell)", choices=("batch", "layer", "none"))
    norm_at: str = param("both", "what is normalized: W_x x (input), W_h h (recurrent), both, "
                         "or the output sequence before the head (output)", choices=PLACES)
    norm_cell: bool = param(False, "LSTM: normalize c_t before the output tanh (not the recurrent c_t)")
    norm_stats: str = param("per_step", "batch statistics per time step, or shared over time", choices=STATS)
    norm_eval: str = param("population", "statistics at evaluation: population (running average) "
                           "or the evaluation batch's own", choices=EVAL_STATS)
    norm_gamma: float = param(1.0, "initial norm gain γ (Cooijmans et al.: 0.1)", min=0.0)
    norm_eps: float = param(1e-5, "epsilon added to the variance", min=0.0, min_exclusive=True)
    norm_momentum: float = param(0.1, "weight of the newest batch in the running statistics",
                                 min=0.0, max=1.0, min_exclusive=True)
    h0_noise: float = param(0.0, "std of Gaussian noise on h_0 during training", min=0.0)
    out_stack: bool = param(False, "seed stack before the head: norm, ReLU, linear, norm, ReLU")
    relu_in_affine: bool = param(False, "seed formula γ·ReLU(ẑ)+β in the output stack "
                                 "instead of ReLU(γ·ẑ+β)")

    def __post_init__(self) -> None:
        if self.norm_cell and self.cell != "lstm":
            raise UserError(f"norm_cell=true needs cell=lstm (cell={self.cell} has no c_t)")
        if self.relu_in_affine and not self.out_stack:
            raise UserError("relu_in_affine=true changes the output stack; it needs out_stack=true")
        if self.impl == "cudnn" and self.norm_in_cell:
            raise UserError("impl=cudnn cannot normalize inside the recurrence; use impl=loop "
                            "(or norm=none, or norm_at=output without norm_cell)")

    def inert(self) -> set[str]:
        out = super().inert()
        if self.norm != "batch":  # layer norm (or none) keeps no batch or running statistics
            out |= {"norm_stats", "norm_eval", "norm_momentum"}
        elif self.norm_eval == "batch":  # evaluation takes the batch's own: running ones unused
            out.add("norm_momentum")
        if self.norm == "none":
            out |= {"norm_at", "norm_cell", "norm_gamma", "norm_eps"}
        if not self.has_output_norm:  # the output stack's ReLUs without norms have no affine to sit in
            out.add("relu_in_affine")
        return out

    @property
    def norm_in_cell(self) -> bool:
        return self.norm != "none" and (self.norm_at != "output" or self.norm_cell)

    @property
    def has_output_norm(self) -> bool:
        return self.norm != "none" and self.norm_at == "output"

    def norm_factory(self) -> NormFactory | None:
        if self.norm == "none":
            return None

        def make(features: int, beta: bool) -> SeqNorm:
            return SeqNorm(features, self.norm, stats=self.norm_stats, eval_stats=self.norm_eval,
                           gamma=self.norm_gamma, beta=beta, eps=self.norm_eps,
                           momentum=self.norm_momentum)

        return make


class NormLoopCore(LoopCore):
    """``LoopCore`` with normalized input/recurrent terms and c_t (per layer).

    Parameters keep ``LoopCore``'s names (``rnn.weight_ih_l0`` …); the norms are
    ``norm_ih``, ``norm_hh`` and ``norm_c`` (one per layer). With no norm at all it
    computes exactly what ``LoopCore`` computes.
    """

    def __init__(self, cell: str, input_size: int, hidden_size: int, num_layers: int = 1,
                 nonlinearity: str = "tanh", *, make_norm: NormFactory | None = None,
                 norm_at: str = "both", norm_cell: bool = False) -> None:
        super().__init__(cell, input_size, hidden_size, num_layers, nonlinearity)
        gates = GATES[cell] * hidden_size

        def per_layer(on: bool, features: int, beta: bool) -> nn.ModuleList | None:
            if not on or make_norm is None:
                return None
            return nn.ModuleList(make_norm(features, beta) for _ in range(num_layers))

        self.norm_ih = per_layer(norm_at in ("input", "both"), gates, False)
        self.norm_hh = per_layer(norm_at in ("recurrent", "both"), gates, False)
        self.norm_c = per_layer(norm_cell and cell == "lstm", hidden_size, True)
        self._norms = [m for m in self.modules() if isinstance(m, SeqNorm)]

    def loop_input_term(self, layer: int, seq: Tensor, mask: Tensor | None) -> tuple[Tensor, Any] | None:
        """Without an input norm, ``LoopCore``'s. Else the input term's batch norm in the
        compiled loops (``scan.InputNorm``): per-step batch statistics of an unpadded
        batch of two or more, on the fast path, on the CPU. Same values as
        ``input_term``'s norm; its statistics return under "x". The loops normalize every
        step before the forward loop and take the gradient after the backward loop, on
        PyTorch's CPU threads, in place of ``F.batch_norm`` and the copies to and from
        time-major order (benchmarks/RESULTS.md has the A/B). Where the input has few
        features (``InputNorm.projects``) the loops also compute the input projection
        itself, and W_ih's gradient."""
        if self.norm_ih is None:
            return super().loop_input_term(layer, seq, mask)
        n = self.norm_ih[layer]
        if (n.kind != "batch" or n.stats != "per_step" or not n.uses_batch_stats() or mask is not None
                or seq.shape[0] < 2 or not InputNorm.available(seq) or not self.runs_scan_path(layer, seq, False)):
            return None
        w_ih, _, b_ih, _ = self.weights(layer)
        shift = add_optional(n.bias, b_ih)
        xn = InputNorm(n.weight, shift if shift is not None else n.weight.new_zeros(n.features), n.eps)
        if InputNorm.projects(seq):  # the loops compute seq W_ih^T themselves
            xn.project = (seq, w_ih)
            return xn.stand_in(), xn
        return project(seq, w_ih), xn

    def input_term(self, layer: int, seq: Tensor, mask: Tensor | None) -> Tensor:
        """The normalized input term of every step at once, (B, T, G*H). Layer norm's rows
        are independent, so it is projected and normalized time-major, the order in which
        the recurrences read it, and returned as a (B, T, G*H) view: the fast path's copy
        into its time-major buffer (and the gradient's way back) is then a plain one, not
        a transpose."""
        if self.norm_ih is None:
            return super().input_term(layer, seq, mask)
        w_ih, _, b_ih, _ = self.weights(layer)
        n = self.norm_ih[layer]
        if n.kind == "layer":
            return n.seq(project(seq.transpose(0, 1), w_ih), None, shift=b_ih).transpose(0, 1)
        return n.seq(project(seq, w_ih), mask, shift=b_ih)  # all steps at once

    def recurrent_term(self, layer: int, t: int, h: Tensor, mask_t: Tensor | None) -> Tensor:
        if self.norm_hh is None:
            return super().recurrent_term(layer, t, h, mask_t)
        _, w_hh, _, b_hh = self.weights(layer)
        return self.norm_hh[layer].step(h @ w_hh.t(), t, mask_t) + b_hh

    def cell_out(self, layer: int, t: int, c: Tensor, mask_t: Tensor | None) -> Tensor:
        if self.norm_c is None:
            return super().cell_out(layer, t, c, mask_t)
        return torch.tanh(self.norm_c[layer].step(c, t, mask_t))

    def fast_norm_args(self, layer: int, masked: bool) -> dict | None:
        if masked and any(n is not None and n[layer].kind == "batch" for n in (self.norm_hh, self.norm_c)):
            return None  # batch statistics of a padded batch leave the padding out: the loop does that
        args: dict = {}
        for prefix, norms in (("", self.norm_hh), ("cell_", self.norm_c)):
            if norms is None:
                continue
            n = norms[layer]
            suffix = "c" if prefix else "hh"
            args[f"{prefix}norm"] = n.kind
            args[f"gamma_{suffix}"] = n.weight
            if n.bias is not None:
                args[f"beta_{suffix}"] = n.bias
            args["eps"] = n.eps
            if n.kind == "batch":
                args["batch_stats"] = n.uses_batch_stats()
                if not args["batch_stats"]:
                    # population rows; steps past the table reuse its last row (the kernel clamps)
                    args[f"{prefix}pop_mean"], args[f"{prefix}pop_var"] = n.population(max(n.running_mean.shape[0], 1))
        if "beta_hh" in args:  # the recurrent term's norm has no β: the cell's bias is the shared one
            return None
        return args

    def record_fast_stats(self, layer: int, stats: dict, batch: int) -> None:
        for key, norms in (("hh", self.norm_hh), ("c", self.norm_c), ("x", self.norm_ih)):
            if key in stats and norms is not None:
                norms[layer].add_step_stats(*stats[key], batch)

    def begin_pass(self) -> None:
        for norm in self._norms:
            norm.reset()

    def end_pass(self) -> None:
        for norm in self._norms:  # one running-statistics update per forward pass
            norm.flush()


class OutputStack(nn.Module):
    """Normalization of the top layer's output sequence, optionally in the seed stack.

    ``stack=False``: N(h_t). ``stack=True``: ReLU(N(W ReLU(N(h_t)) + b)), the seed
    document's "batch norm → ReLU → linear → batch norm → ReLU" applied to the whole
    (B, T, H) sequence (its sketch calls BatchNorm1d on a tuple and on (B, T, H)
    tensors, which normalizes the wrong axis); with ``relu_in_affine`` each
    norm-ReLU pair is γ·ReLU(ẑ) + β, the formula of the seed document. Without
    norms (``make_norm=None``) the stack is ReLU → linear → ReLU.
    """

    def __init__(self, hidden_size: int, make_norm: NormFactory | None, *, stack: bool,
                 relu_in_affine: bool = False) -> None:
        super().__init__()
        self.stack, self.relu_in_affine = stack, relu_in_affine
        self.norm_in = make_norm(hidden_size, True) if make_norm else None
        self.linear = nn.Linear(hidden_size, hidden_size) if stack else None
        self.norm_mid = make_norm(hidden_size, True) if make_norm and stack else None

    def _block(self, norm: SeqNorm | None, z: Tensor, mask: Tensor | None) -> Tensor:
        if norm is None:
            return torch.relu(z) if self.stack else z
        if not self.stack:
            return norm.seq(z, mask)
        if self.relu_in_affine:
            return norm.apply_affine(torch.relu(norm.seq(z, mask, affine=False)))
        return torch.relu(norm.seq(z, mask))

    def forward(self, hidden: Tensor, mask: Tensor | None = None) -> Tensor:
        z = self._block(self.norm_in, hidden, mask)
        if self.linear is None:
            return z
        return self._block(self.norm_mid, self.linear(z), mask)


class NormModel(RecurrentModel):
    """``RecurrentModel`` built from a ``NormConfig``: normalized core, h_0 noise, output stack."""

    cfg: NormConfig

    def __init__(self, cfg: NormConfig, **kwargs) -> None:
        super().__init__(cfg, **kwargs)
        make_norm = cfg.norm_factory() if cfg.has_output_norm else None
        self.head_stack = (OutputStack(cfg.hidden_size, make_norm, stack=cfg.out_stack,
                                       relu_in_affine=cfg.relu_in_affine)
                           if cfg.out_stack or make_norm else None)

    def run(self, x: Tensor, lengths: Tensor | None = None, state: State = None,
            perturb: Tensor | None = None, offset: int = 0) -> ModelOutput:
        """As ``RecurrentModel.run``; with ``offset`` its norms take the population
        statistics of steps offset.. in evaluation (past the training length: the last
        step's), as one long sequence would, not those of steps 0.. again."""
        norms = [n for n in self.modules() if isinstance(n, SeqNorm)] if offset else []
        for n in norms:
            n.offset = offset
        try:
            return super().run(x, lengths, state, perturb)
        finally:
            for n in norms:
                n.offset = 0

    @staticmethod
    def make_core(cfg: NormConfig, input_size: int) -> nn.Module:  # type: ignore[override]
        if cfg.impl == "cudnn":
            return RecurrentModel.make_core(cfg, input_size)
        return NormLoopCore(cfg.cell, input_size, cfg.hidden_size, cfg.num_layers, cfg.nonlinearity,
                            make_norm=cfg.norm_factory(), norm_at=cfg.norm_at, norm_cell=cfg.norm_cell)

    def initial_state(self, x: Tensor) -> State:
        if not (self.training and self.cfg.h0_noise > 0):
            return None
        shape = (self.cfg.num_layers, x.shape[0], self.cfg.hidden_size)
        h0 = torch.randn(shape, dtype=x.dtype, device=x.device) * self.cfg.h0_noise
        return (h0, torch.zeros_like(h0)) if self.cfg.cell == "lstm" else h0

    @torch.no_grad()
    def recalibrate(self, batches: Iterable[tuple[Tensor, Tensor | None]]) -> int:
        """Re-estimate the population statistics with the current, frozen weights.

        The running averages gathered in training mix statistics of older weights.
        Cooijmans et al. therefore recomputed population statistics after training
        for their test results (their ``nowwithpopulationstatistics.py``: the plain
        average of batch statistics over the training data with frozen weights).
        Here every batch-norm row becomes the plain average of the batch statistics
        of ``batches`` ((x, lengths) pairs) that reach its step with two samples or
        more (padded batches end at different steps); a row none reaches keeps its
        running average. Nothing else changes (no h_0 noise, no gradient). Returns the
        number of batches used.
        """
        norms = [n for n in self.modules() if isinstance(n, SeqNorm) and n.kind == "batch"]
        was_training = self.training
        count = 0
        self.eval()
        for n in norms:
            n.train()  # batch statistics and running updates inside the norms only
            n.average(True)
        try:
            for x, lengths in batches:
                count += 1
                self.run(x, lengths)
        finally:
            for n in norms:
                n.average(False)
            self.train(was_training)
        return count

    def features(self, hidden: Tensor, lengths: Tensor | None) -> Tensor:
        if self.head_stack is None:
            return hidden
        return self.head_stack(hidden, step_mask(lengths, hidden.shape[1], hidden.device))
