"""Variable-length token sequences, right-padded, classified from the last valid step.

The shared base of ``sentiment`` and ``listops``. Each split is stored as a
padded id matrix (N, L) with ``PAD`` after each sequence, the valid lengths (N,)
and the labels (N,). A batch is cut to its longest sequence and carries
``lengths``, so the model reads its prediction at step ``lengths - 1``; steps past
a sequence's end come after that position in a unidirectional model and cannot
change its output (tested in tests/test_data_tasks.py).
"""

from __future__ import annotations

from typing import Iterator

import torch
from torch import Tensor

from tasks.base import Batch, Task
from tasks.data import memo

Padded = tuple[Tensor, Tensor, Tensor]  # ids (N, L), lengths (N,), labels (N,)


def pad(seqs: list[list[int]], pad_id: int) -> tuple[Tensor, Tensor]:
    """Right-pad id lists into an int32 matrix; returns (ids, lengths)."""
    lengths = torch.tensor([len(s) for s in seqs], dtype=torch.long)
    ids = torch.full((len(seqs), int(lengths.max()) if seqs else 1), pad_id, dtype=torch.int32)
    for i, s in enumerate(seqs):
        ids[i, :len(s)] = torch.tensor(s, dtype=torch.int32)
    return ids, lengths


class PaddedTokens(Task):
    """Base class; subclasses implement ``token_splits()`` (CPU tensors per split)."""

    target = "last"
    loss_kind = "ce"
    primary = "acc"
    higher_is_better = True

    def token_splits(self) -> dict[str, Padded]:
        """train / val / test token sequences; each subclass builds its own."""
        raise NotImplementedError(f"{type(self).__name__}.token_splits")

    def _on(self, split: str, device: torch.device) -> Padded:
        return memo(self, (split, str(device)),
                    lambda: tuple(t.to(device) for t in self.token_splits()[split]))

    @staticmethod
    def to_batch(ids: Tensor, lengths: Tensor, labels: Tensor) -> Batch:
        longest = int(lengths.max())
        return Batch(ids[:, :longest].long(), labels, lengths)

    def train_batch(self, batch_size: int, gen: torch.Generator, device: torch.device) -> Batch:
        ids, lengths, labels = self._on("train", device)
        idx = torch.randint(0, len(labels), (batch_size,), generator=gen, device=device)
        return self.to_batch(ids[idx], lengths[idx], labels[idx])

    def eval_batches(self, split: str, batch_size: int, device: torch.device) -> Iterator[Batch]:
        ids, lengths, labels = self._on(split, device)
        for i in range(0, len(labels), batch_size):
            j = i + batch_size
            yield self.to_batch(ids[i:j], lengths[i:j], labels[i:j])

    @property
    def chance(self) -> float:  # type: ignore[override]
        """Test accuracy of always answering the training split's most frequent class."""
        splits = self.token_splits()
        majority = int(torch.bincount(splits["train"][2]).argmax())
        return float((splits["test"][2] == majority).float().mean())
