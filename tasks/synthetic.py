"""Synthetic long-dependency tasks: the adding problem and copy memory.

Definitions follow ANCHORS.md: the adding problem in its modern form (Arjovsky et
al. 2016, "Unitary Evolution Recurrent Neural Networks"; Li et al. 2018,
"Independently Recurrent Neural Network") and copy memory (Arjovsky et al. 2016,
variable delay after Henaff et al. 2016, "Recurrent Orthogonal Networks and
Long-Memory Tasks"). Training batches are drawn fresh every step on the run's
device (IndRNN's and coRNN's protocol), or for the adding problem with ``n_train``
from one fixed training set (uRNN's 1e5 samples); validation and test sets are fixed
by ``data_seed``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterator

import torch

from suite.registry import param
from tasks.base import EVAL_CHUNK, Batch, Task, fixed_batches, split_seed
from tasks.data import memo
from tasks.registry import register


def _eval_size(self, split: str) -> int:
    return self.n_val if split == "val" else self.n_test


@register("adding")
@dataclass
class Adding(Task):
    """Sum of the two marked values of a length-T sequence, read at the last step.

    Channel 0 holds values ~ U[0, 1]; channel 1 a mask with exactly two ones, one
    uniform in the first half [0, T//2) and one in the second half [T//2, T).
    Always predicting 1.0 gives MSE = Var(U1 + U2) = 1/6 ≈ 0.167 (chance). Solved:
    MSE below 0.01 (a common bar; 6% of chance), judged on validation at each evaluation. Training batches are fresh
    samples every step (Li et al. 2018), or with ``n_train`` > 0 drawn uniformly, with
    replacement, from one fixed set of that many samples made from ``data_seed``
    (Arjovsky et al. 2016: 1e5 training, 1e4 test samples), the same for every seed
    of a run; which samples a step draws follows the run's seed.
    """

    T: int = param(100, "sequence length", min=2, max=100_000)
    n_train: int = param(0, "0: fresh training samples every step (IndRNN); N: one fixed set of N (uRNN: 100000)",
                         min=0)
    n_val: int = param(1000, "validation samples (fixed by data_seed)", min=1)
    n_test: int = param(5000, "test samples (fixed by data_seed)", min=1)
    data_seed: int = param(0, "seed of the fixed validation/test (and n_train training) sets", min=0)

    description = "adding problem: sum of two marked U[0,1] values (MSE, chance 1/6)"
    target = "last"
    loss_kind = "mse"
    primary = "mse"
    higher_is_better = False
    input_size = 2
    output_size = 1
    chance = 1.0 / 6.0
    solved = 0.01

    @property
    def seq_len(self) -> int:  # type: ignore[override]
        return self.T

    def make(self, batch_size: int, gen: torch.Generator, device: torch.device | str = "cpu") -> Batch:
        T, half = self.T, self.T // 2
        values = torch.rand(batch_size, T, generator=gen, device=device)
        first = torch.randint(0, half, (batch_size,), generator=gen, device=device)
        second = torch.randint(half, T, (batch_size,), generator=gen, device=device)
        mask = torch.zeros(batch_size, T, device=device)
        rows = torch.arange(batch_size, device=device)
        mask[rows, first] = 1.0
        mask[rows, second] = 1.0
        x = torch.stack([values, mask], dim=-1)
        y = (values * mask).sum(dim=1, keepdim=True)
        return Batch(x, y)

    def train_batch(self, batch_size: int, gen: torch.Generator, device: torch.device) -> Batch:
        if not self.n_train:
            return self.make(batch_size, gen, device)
        x, y = memo(self, ("train", str(device)), lambda: self._train_set(device))
        idx = torch.randint(0, self.n_train, (batch_size,), generator=gen, device=gen.device).to(device)
        return Batch(x[idx], y[idx])

    def _train_set(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """The fixed training set (``n_train``), made on the CPU as the evaluation sets are,
        so that it is the same on every device, and kept on ``device``."""
        parts = list(fixed_batches(self.make, self.n_train, split_seed(self.data_seed, "train"), EVAL_CHUNK,
                                   torch.device("cpu")))
        return torch.cat([b.x for b in parts]).to(device), torch.cat([b.y for b in parts]).to(device)

    def eval_batches(self, split: str, batch_size: int, device: torch.device) -> Iterator[Batch]:
        return fixed_batches(self.make, _eval_size(self, split), split_seed(self.data_seed, split),
                             batch_size, device)


BLANK, DELIM, N_DATA = 8, 9, 8


@register("copy")
@dataclass
class Copy(Task):
    """Copy memory: recall n data symbols after a delay of T steps.

    Symbols 0-7 are data, 8 blank, 9 delimiter. Input (length T + 2n): n data
    symbols drawn with replacement from 0-7, T-1 blanks, the delimiter, n blanks.
    Target: T+n blanks, then the n data symbols. Loss: cross-entropy averaged over
    all steps; the memoryless baseline loss is n·ln(8)/(T+2n). Primary metric:
    accuracy on the n recalled symbols (chance 1/8; solved at 0.99).
    With ``variable_delay`` the delimiter comes after a delay d ~ U{1..T} (Henaff et
    al. 2016): recall follows it directly and the rest of the sequence is blank.
    """

    T: int = param(100, "delay between the data and the delimiter", min=1, max=100_000)
    n_copy: int = param(10, "number of data symbols to copy", min=1, max=1000)
    variable_delay: bool = param(False, "draw the delay uniformly in [1, T] per sample")
    n_val: int = param(1000, "validation samples (fixed by data_seed)", min=1)
    n_test: int = param(5000, "test samples (fixed by data_seed)", min=1)
    data_seed: int = param(0, "seed of the fixed validation/test sets", min=0)

    description = "copy memory: recall 10 symbols after T blanks (acc on recall, chance 1/8)"
    target = "every"
    loss_kind = "ce"
    primary = "acc"
    higher_is_better = True
    vocab_size = 10
    output_size = N_DATA + 1  # data symbols and blank; the delimiter is never a target
    chance = 1.0 / N_DATA
    solved = 0.99

    @property
    def seq_len(self) -> int:  # type: ignore[override]
        return self.T + 2 * self.n_copy

    @property
    def baseline_loss(self) -> float:
        """Cross-entropy of the memoryless strategy: blanks, then uniform over data."""
        return self.n_copy * math.log(N_DATA) / self.seq_len

    def make(self, batch_size: int, gen: torch.Generator, device: torch.device | str = "cpu") -> Batch:
        n, L = self.n_copy, self.seq_len
        data = torch.randint(0, N_DATA, (batch_size, n), generator=gen, device=device)
        if self.variable_delay:
            delay = torch.randint(1, self.T + 1, (batch_size,), generator=gen, device=device)
        else:
            delay = torch.full((batch_size,), self.T, device=device)
        x = torch.full((batch_size, L), BLANK, dtype=torch.long, device=device)
        y = torch.full((batch_size, L), BLANK, dtype=torch.long, device=device)
        x[:, :n] = data
        rows = torch.arange(batch_size, device=device)
        delim_pos = n + delay - 1
        x[rows, delim_pos] = DELIM
        recall = delim_pos[:, None] + 1 + torch.arange(n, device=device)[None, :]
        y[rows[:, None], recall] = data
        return Batch(x, y)

    def train_batch(self, batch_size: int, gen: torch.Generator, device: torch.device) -> Batch:
        return self.make(batch_size, gen, device)

    def eval_batches(self, split: str, batch_size: int, device: torch.device) -> Iterator[Batch]:
        return fixed_batches(self.make, _eval_size(self, split), split_seed(self.data_seed, split),
                             batch_size, device)

    def metric_sums(self, out: torch.Tensor, batch: Batch) -> dict[str, tuple[float, float]]:
        sums = super().metric_sums(out, batch)
        loss_sum, count = sums["loss"]
        recall = batch.y != BLANK
        correct = (out.argmax(-1) == batch.y)[recall].sum().item()
        return {
            "loss": (loss_sum, count),
            "acc": (correct, recall.sum().item()),
            "loss_ratio": (loss_sum / self.baseline_loss, count),
        }
