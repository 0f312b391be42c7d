"""Seed stacking: S seeds of one model configuration trained as one.

At the sizes this suite studies, a custom cell's training step is bound by the
number of sequential ops of its recurrence, not by arithmetic: each op of a step
works on a (B, H) tile that leaves a GPU mostly idle and costs a CPU mostly
dispatch. S seeds of the same spec can share those ops: ``SeedStack`` runs their
recurrences as one stacked call of the scan path (``baselines/scan.py``; rows
seed-major, per-seed matrix products and batch statistics), so S seeds issue about
as many ops per step as one.

Everything outside the recurrence (encoder, input projection and its norm, head,
loss, gradient clipping, optimizer, evaluation, running statistics) runs on each
seed's own model with that model's code, so a stacked seed computes what it would
alone, up to the summation order of batched matrix products. The parameters stay
in the seeds' own models: each forward pass gathers W_hh, b_hh and the norms' γ, β
and population rows with ``torch.stack`` (S small copies), and autograd returns
each seed its own gradient.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from baselines import scan
from baselines.cells import LoopCore, run_recurrence
from baselines.models import RecurrentModel


def stack_problem(model: nn.Module) -> str | None:
    """Why ``model`` cannot train in a seed stack, or None when it can."""
    if not isinstance(model, RecurrentModel):
        return "it is not a RecurrentModel"
    core = model.core
    if not isinstance(core, LoopCore):
        return "its recurrence is a cuDNN module (impl=cudnn)"
    if not core.fast:
        return "its fast path is off (train.fast_path=false)"
    if any(core.fast_norm_args(layer, False) is None for layer in range(core.num_layers)):
        return "its recurrent norm has no fast path"
    if getattr(model.cfg, "h0_noise", 0.0):
        return "h0 noise draws from the global generator, which stacked seeds would share"
    return None


def stack_args(per_seed: list[dict[str, Any]]) -> dict[str, Any]:
    """The seeds' norm arguments (``LoopCore.fast_norm_args``) as one stacked set:
    tensors stacked on a leading seed dimension, settings the seeds share."""
    out: dict[str, Any] = {}
    for key, first in per_seed[0].items():
        values = [a[key] for a in per_seed]
        if isinstance(first, Tensor):
            out[key] = torch.stack(values)
        elif any(v != first for v in values):
            raise ValueError(f"stacked seeds disagree on {key}: {values}")
        else:
            out[key] = first
    return out


class SeedStack(nn.Module):
    """S models of one configuration (one per seed) whose recurrences run stacked.

    ``run(xs)`` maps the seeds' input batches (a list of S equally sized batches) to
    their outputs; ``forward(x)`` takes and returns them concatenated (seed-major).
    The models are the seeds' own modules, trained in place.
    """

    def __init__(self, models: list[nn.Module]) -> None:
        super().__init__()
        problems = sorted({p for p in map(stack_problem, models) if p})
        if problems:
            raise ValueError(f"these models cannot be stacked: {'; '.join(problems)}")
        if len({type(m) for m in models}) != 1 or any(m.cfg != models[0].cfg for m in models):
            raise ValueError("stacked models must share one configuration")
        self.models = nn.ModuleList(models)

    def forward(self, x: Tensor, lengths: Tensor | None = None) -> Tensor:
        if lengths is not None:
            raise ValueError("padded batches are not stacked")
        return torch.cat(self.run(list(x.chunk(len(self.models)))))

    def run(self, xs: list[Tensor]) -> list[Tensor]:
        models: list[RecurrentModel] = list(self.models)  # type: ignore[arg-type]
        cores: list[LoopCore] = [m.core for m in models]  # type: ignore[misc]
        first = cores[0]
        seqs = [m.encoder(x) for m, x in zip(models, xs)]
        if any(m.initial_state(s) is not None for m, s in zip(models, seqs)):
            raise ValueError("stacked seeds start from zero states")
        B = seqs[0].shape[0]
        for core in cores:
            core.begin_pass()
        for layer in range(first.num_layers):
            xw = torch.cat([c.input_term(layer, seq, None) for c, seq in zip(cores, seqs)])
            args = stack_args([c.fast_norm_args(layer, False) for c in cores])
            w_hh = torch.stack([c.weights(layer)[1] for c in cores])
            b_hh = torch.stack([c.weights(layer)[3] for c in cores])
            h0 = xw.new_zeros(xw.shape[0], first.hidden_size)
            c0 = h0.clone() if first.cell == "lstm" else None
            out, _, stats = run_recurrence(first.cell, first.nonlinearity, xw, h0, c0, w_hh, b_hh, args)
            path = scan.last_path()
            for s, core in enumerate(cores):
                core.record_fast_stats(layer, {k: (m[:, s], v[:, s]) for k, (m, v) in stats.items()}, B)
                core.last_path = path
            seqs = list(out.split(B))
        for core in cores:
            core.end_pass()
        return [m.readout(h) for m, h in zip(models, seqs)]
