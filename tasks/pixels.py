"""Images read as sequences of pixels: the shared base of pixel-MNIST, permuted
MNIST and seq-digits.

An image of ``P`` pixels becomes ``P / k`` steps of ``k`` pixels in scan-line
order (row by row, left to right), each pixel scaled to [0, 1] by the data set's
maximum value; the class is read from the last step (Le et al. 2015, "A Simple
Way to Initialize Recurrent Networks of Rectified Linear Units"; Cooijmans et al.
2017, "Recurrent Batch Normalization"). A permuted variant applies one fixed,
true permutation of the ``P`` pixel positions (``torch.randperm`` under a named
seed) to every image of every split, before the pixels are grouped into steps.

Images are kept as uint8 on the run's device and scaled per batch. Training
batches draw images uniformly with replacement from the training split (fresh
indices every step, from the run's generator); validation and test sets are fixed.
"""

from __future__ import annotations

from typing import ClassVar, Iterator

import torch
from torch import Tensor

from suite.errors import UserError
from tasks.base import Batch, Task
from tasks.data import memo, split_indices

Split = tuple[Tensor, Tensor]  # (N, P) uint8 pixels, (N,) int64 labels


class PixelSequence(Task):
    """Base class; subclasses are dataclasses with fields ``pixels_per_step``,
    ``n_val``, ``n_train``, ``n_test``, ``data_seed`` and optionally ``perm_seed``,
    and implement ``raw()``."""

    target = "last"
    loss_kind = "ce"
    primary = "acc"
    higher_is_better = True
    output_size = 10
    chance = 0.1  # uniform guessing over 10 classes (class frequencies are close to uniform)
    solved = None

    n_pixels: ClassVar[int]
    max_value: ClassVar[float]
    perm_seed: int | None = None  # subclasses with a permutation declare it as a field
    perm_kind: str = "randperm"  # and may declare this one: "with_replacement" (module docstring)

    @property
    def input_size(self) -> int:  # type: ignore[override]
        return self.pixels_per_step  # type: ignore[attr-defined]

    @property
    def seq_len(self) -> int:  # type: ignore[override]
        return self.n_pixels // self.pixels_per_step  # type: ignore[attr-defined]

    @property
    def permutation(self) -> Tensor | None:
        """The pixel order of the permuted variant (None: scan-line order): a true
        permutation, or P positions drawn with replacement (``perm_kind``)."""
        if self.perm_seed is None:
            return None
        gen = torch.Generator().manual_seed(self.perm_seed)
        if self.perm_kind == "with_replacement":
            return torch.randint(0, self.n_pixels, (self.n_pixels,), generator=gen)
        return torch.randperm(self.n_pixels, generator=gen)

    def raw(self) -> tuple[Split, Split | None]:
        """(train pool, test set or None) as flattened uint8 images and labels; each subclass reads its own."""
        raise NotImplementedError(f"{type(self).__name__}.raw")

    def splits(self) -> dict[str, Split]:
        """train / val / test on the CPU, permuted when the task is; built once."""
        return memo(self, "splits", self._build_splits)

    def _build_splits(self) -> dict[str, Split]:
        (px, py), test = self.raw()
        n_val, n_train, n_test = self.n_val, self.n_train, self.n_test  # type: ignore[attr-defined]
        name = getattr(self, "name", type(self).__name__)
        seed = self.data_seed  # type: ignore[attr-defined]
        if test is None:  # no separate test set: hold it out of the pool too
            need, what = n_test + n_val + max(n_train, 1), "n_test + n_val + n_train"
        else:
            need, what = n_val + max(n_train, 1), "n_val + n_train"
        if need > len(py):
            raise UserError(f"task '{name}': {what} = {need} exceeds the {len(py)} training images available")
        sizes = ([n_test] if test is None else []) + [n_val] + ([n_train] if n_train else [])
        chunks = split_indices(len(py), sizes, seed)  # a random train subset when n_train > 0
        if test is None:
            test_idx = chunks.pop(0)
            test = (px[test_idx], py[test_idx])
        elif n_test:
            test = (test[0][:n_test], test[1][:n_test])
        val_idx, train_idx = chunks[0], chunks[1]
        out = {"train": (px[train_idx], py[train_idx]), "val": (px[val_idx], py[val_idx]), "test": test}
        perm = self.permutation
        if perm is not None:
            out = {k: (x[:, perm], y) for k, (x, y) in out.items()}
        return out

    def _on(self, split: str, device: torch.device) -> Split:
        return memo(self, (split, str(device)),
                    lambda: tuple(t.to(device) for t in self.splits()[split]))

    def to_batch(self, x: Tensor, y: Tensor) -> Batch:
        """uint8 (B, P) -> float (B, P/k, k) in [0, 1]."""
        return Batch(x.float().div_(self.max_value).view(x.shape[0], self.seq_len, self.input_size), y)

    def train_batch(self, batch_size: int, gen: torch.Generator, device: torch.device) -> Batch:
        x, y = self._on("train", device)
        idx = torch.randint(0, len(y), (batch_size,), generator=gen, device=device)
        return self.to_batch(x[idx], y[idx])

    def eval_batches(self, split: str, batch_size: int, device: torch.device) -> Iterator[Batch]:
        x, y = self._on(split, device)
        for i in range(0, len(y), batch_size):
            yield self.to_batch(x[i:i + batch_size], y[i:i + batch_size])
