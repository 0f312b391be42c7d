"""Gradient diagnostics: per-group gradient norms and the gradient-flow profile.

The gradient-flow profile is ‖∂L/∂h_t‖ for every step t on a fixed probe batch:
the total derivative of the loss with respect to the top layer's hidden state,
through the recurrence as well as the head (the quantity in the gradient-flow
figure of Cooijmans et al. 2017, "Recurrent Batch Normalization"). It is measured
by adding a zero tensor to h_t inside the time loop and differentiating with
respect to it. cuDNN models cannot take that perturbation, so they are probed
through their loop twin: the same weights in the explicit-loop implementation,
which computes the same function (tested in tests/test_cells.py). The probe
always runs on a copy, so it never changes the model or its running statistics.
"""

from __future__ import annotations

import copy

import torch
from torch import Tensor, nn

from tasks.base import Batch, Task

GROUPS = ("encoder", "input", "recurrent", "norm", "head")


def param_group(name: str) -> str:
    """Which group a parameter belongs to, from its name.

    Norm gains and biases are "norm" wherever they sit (in the cell or in the
    output stack ``head_stack``); the rest of ``head_stack`` belongs to the head.
    """
    if name.startswith("encoder."):
        return "encoder"
    if "norm" in name or ".bn" in name or ".ln" in name:
        return "norm"
    if name.startswith(("head.", "head_stack.")):
        return "head"
    if "weight_hh" in name or "bias_hh" in name:
        return "recurrent"
    return "input"


def group_norms(model: nn.Module) -> dict[str, Tensor]:
    """L2 norm of the current gradients per parameter group (tensors, no host sync)."""
    sq: dict[str, Tensor] = {}
    for name, p in model.named_parameters():
        if p.grad is not None:
            g = param_group(name)
            v = p.grad.detach().float().pow(2).sum()
            sq[g] = sq[g] + v if g in sq else v
    return {g: v.sqrt() for g, v in sq.items()}


def loop_twin(model: nn.Module) -> nn.Module:
    """A copy of ``model`` whose recurrent core runs as an explicit loop."""
    twin = copy.deepcopy(model)
    cfg = getattr(twin, "cfg", None)
    if cfg is not None and getattr(cfg, "impl", "loop") == "cudnn":
        cfg = copy.copy(cfg)
        cfg.impl = "loop"
        core = twin.make_core(cfg, _core_input_size(twin))
        core.load_state_dict(twin.core.state_dict())
        core.to(next(twin.parameters()).device)
        twin.core, twin.cfg = core, cfg
    return twin


def _core_input_size(model: nn.Module) -> int:
    return model.core.rnn.input_size


def gradient_flow(model: nn.Module, task: Task, batch: Batch) -> Tensor:
    """‖∂L/∂h_t‖ (Frobenius norm over batch and units) for t = 0..T-1, shape (T,).

    A padded batch (``lengths``) is aligned at each sequence's last step: entry T-1-k
    holds the gradient k steps before each sequence's end, over the sequences at least
    k+1 long, scaled to the whole batch (sqrt(B / n_k · Σ_i ‖∂L/∂h_i‖²)). Counted from
    t = 0, a step late in the batch holds only its few longest sequences and every
    shorter one's readout lies at another t, which drew a profile of the lengths.

    The twin runs in the model's mode, so in training it draws what the model would (the
    noise on h_0 of ``h0_noise``, dropout); it is built and draws from a copy of the random
    state (a cuDNN model's twin core initialises weights before it takes the model's), so
    that a probe leaves the training that follows it as it would be without probes."""
    devices = [batch.x.device] if batch.x.device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices), torch.enable_grad():
        twin = loop_twin(model)
        twin.train(model.training)
        B, T = batch.x.shape[:2]
        perturb = torch.zeros(B, T, twin.cfg.hidden_size, device=batch.x.device, requires_grad=True)
        out = twin.run(batch.x, batch.lengths, perturb=perturb)
        loss = task.loss(out.y, batch)
        (grad,) = torch.autograd.grad(loss, perturb)
    sq = grad.detach().float().pow(2).sum(dim=2)  # (B, T)
    if batch.lengths is None:
        return sq.sum(dim=0).sqrt()
    back = batch.lengths.to(sq.device).view(-1, 1) - 1 - torch.arange(T, device=sq.device)  # steps before the end
    live = back >= 0
    at = (T - 1 - back)[live]
    total = sq.new_zeros(T).index_add_(0, at, sq[live])
    count = sq.new_zeros(T).index_add_(0, at, torch.ones_like(sq[live]))
    return (total * B / count.clamp(min=1)).sqrt()  # the longest sequence reaches every entry
