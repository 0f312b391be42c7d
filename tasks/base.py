"""The task contract: what a task declares and how it makes and scores batches.

A task is a dataclass whose fields are its parameters (validated when built). It
owns its data, its loss and its metric reduction; the runner never sees the data
format. Tasks know nothing of models: ``evaluate`` only calls ``model(x, lengths)``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Callable, ClassVar, Iterator

import torch
from torch import Tensor
import torch.nn.functional as F


@dataclass
class Batch:
    """One batch. ``x``: (B, T, input_size) float or (B, T) long token ids.

    ``y``: (B,) class ids or (B, O) regression targets for ``last``-step tasks,
    (B, T) class ids for ``every``-step tasks. ``lengths``: (B,) valid steps for
    padded batches (None when every sequence has length T).
    """

    x: Tensor
    y: Tensor
    lengths: Tensor | None = None

    def to(self, device: torch.device | str) -> "Batch":
        return Batch(*(t.to(device, non_blocking=True) if t is not None else None
                       for t in (self.x, self.y, self.lengths)))

    def __len__(self) -> int:
        return self.x.shape[0]


class Task:
    """Base class. Subclasses are dataclasses registered with ``tasks.register``.

    Class-level declarations (fixed for the task):
      description: one line for ``rnnbench list tasks``.
      target: ``"last"`` (one prediction from the last valid step) or ``"every"``.
      loss_kind: ``"mse"`` or ``"ce"``.
      primary: name of the primary metric; ``higher_is_better`` its direction.
    Instance properties (may depend on parameters): ``input_size`` (real-valued
    features per step) or ``vocab_size`` (token inputs), ``output_size``,
    ``seq_len``, ``chance`` (primary metric of a memoryless predictor) and
    ``solved`` (threshold on the primary metric, None where none is standard).
    """

    description: ClassVar[str] = ""
    target: ClassVar[str] = "last"
    loss_kind: ClassVar[str] = "ce"
    primary: ClassVar[str] = "acc"
    higher_is_better: ClassVar[bool] = True

    input_size: int | None = None
    vocab_size: int | None = None
    output_size: int = 1
    seq_len: int = 1
    chance: float = float("nan")
    solved: float | None = None

    # -- data ---------------------------------------------------------------
    def train_batch(self, batch_size: int, gen: torch.Generator, device: torch.device) -> Batch:
        """A fresh training batch drawn from ``gen`` (a generator on ``device``)."""
        raise NotImplementedError(f"{type(self).__name__}.train_batch")

    def eval_batches(self, split: str, batch_size: int, device: torch.device) -> Iterator[Batch]:
        """The fixed ``split`` ("val" or "test") set, in batches, on ``device``."""
        raise NotImplementedError(f"{type(self).__name__}.eval_batches")

    def params(self) -> dict:
        """The task's resolved parameters (part of a run's identity)."""
        return dataclasses.asdict(self)  # type: ignore[call-overload]

    # -- scoring ------------------------------------------------------------
    def loss(self, out: Tensor, batch: Batch) -> Tensor:
        """Mean training loss of model outputs ``out`` on ``batch``."""
        if self.loss_kind == "mse":
            return F.mse_loss(out.float(), batch.y.float())
        return F.cross_entropy(out.float().reshape(-1, out.shape[-1]), batch.y.reshape(-1))

    def metric_sums(self, out: Tensor, batch: Batch) -> dict[str, tuple[float, float]]:
        """Per-batch (sum, count) for each metric, so means over batches are exact.

        The default covers ``loss`` and, for classification, ``acc``.
        """
        if self.loss_kind == "mse":
            se = (out.float() - batch.y.float()).pow(2)
            return {"loss": (se.sum().item(), se.numel()), "mse": (se.sum().item(), se.numel())}
        logits = out.float().reshape(-1, out.shape[-1])
        y = batch.y.reshape(-1)
        ce = F.cross_entropy(logits, y, reduction="sum").item()
        correct = (logits.argmax(-1) == y).sum().item()
        return {"loss": (ce, y.numel()), "acc": (correct, y.numel())}

    @torch.no_grad()
    def evaluate(self, model: Callable[..., Tensor], split: str, device: torch.device,
                 batch_size: int = 500) -> dict[str, float]:
        """Mean of every metric over the whole ``split``; ``model`` is in eval mode."""
        totals: dict[str, list[float]] = {}
        for batch in self.eval_batches(split, batch_size, device):
            out = model(batch.x, batch.lengths)
            for name, (s, n) in self.metric_sums(out, batch).items():
                acc = totals.setdefault(name, [0.0, 0.0])
                acc[0] += s
                acc[1] += n
        return {name: s / n for name, (s, n) in totals.items() if n > 0}


def split_seed(data_seed: int, split: str) -> int:
    """A stable seed per (data seed, split) so val and test never share samples."""
    return data_seed * 1000 + {"train": 1, "val": 2, "test": 3}[split]


EVAL_CHUNK = 1000  # samples generated per draw of a fixed set, whatever the batch size


def fixed_batches(make: Callable[[int, torch.Generator], Batch], n: int, seed: int,
                  batch_size: int, device: torch.device) -> Iterator[Batch]:
    """Yield a fixed set of ``n`` samples generated on the CPU from ``seed``.

    Generating on the CPU makes the evaluation sets identical on every device, so
    CPU and GPU runs are scored on the same samples. The samples are drawn in
    chunks of ``EVAL_CHUNK`` and only then cut into batches, so the set does not
    depend on the evaluation batch size either.
    """
    gen = torch.Generator().manual_seed(seed)
    done = 0
    while done < n:
        chunk = make(min(EVAL_CHUNK, n - done), gen)
        done += len(chunk)
        for i in range(0, len(chunk), batch_size):
            part = [t[i:i + batch_size] if t is not None else None for t in (chunk.x, chunk.y, chunk.lengths)]
            yield Batch(*part).to(device)
