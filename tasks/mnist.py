"""Sequential (pixel) MNIST and permuted MNIST, exactly as in ANCHORS.md.

784 steps of one pixel in scan-line order (or 28 steps of one 28-pixel row with
``pixels_per_step=28``), pixels scaled to [0, 1] by dividing by 255, the class
read from the last step (Le et al. 2015, "A Simple Way to Initialize Recurrent
Networks of Rectified Linear Units"; Cooijmans et al. 2017, "Recurrent Batch
Normalization"). Validation: ``n_val`` images (default 10k, Cooijmans' 50k/10k)
held out of the 60k training set by ``data_seed``; test: the official 10k test
set. The runner reports test accuracy of the best-validation checkpoint.

``permuted-mnist`` applies one true permutation of the 784 pixel positions,
``torch.randperm(784)`` under ``perm_seed`` (a parameter, so it is part of every
run's spec), to train, validation and test alike. The public code of Cooijmans et
al. draws its "permutation" with replacement (``np.random.randint(0, 784, 784)``:
about 63% of the pixels kept, some seen twice); ``perm_kind=with_replacement``
draws one that way (``torch.randint`` under ``perm_seed``), so their published
permuted-MNIST numbers can be compared like with like. Results differ by
permutation, so its kind and seed are always recorded.

Data: the IDX files in the data directory (``train-images-idx3-ubyte[.gz]`` …, at
its top level or in ``mnist/``, ``MNIST/raw/``), else the hub data set
``ylecun/mnist``.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from suite.errors import UserError
from suite.registry import param
from tasks.data import fetch, find_all, read_bytes
from tasks.pixels import PixelSequence, Split
from tasks.registry import register

HUB_ID = "ylecun/mnist"
IDX_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte",
             "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")
SUBDIRS = ("mnist", "MNIST", "MNIST/raw")
N_TRAIN, N_TEST = 60_000, 10_000


def read_idx(path: Path, ndim: int) -> np.ndarray:
    """An IDX file of unsigned bytes (LeCun's MNIST format) as an array of ``ndim`` dims.

    Header: two zero bytes, the type code 0x08 (ubyte), the number of dimensions,
    then each dimension as a big-endian uint32; the data follow.
    """
    raw = read_bytes(path)
    if len(raw) < 4 + 4 * ndim or raw[:2] != b"\0\0" or raw[2] != 0x08 or raw[3] != ndim:
        raise UserError(f"{path} is not an IDX file of unsigned bytes with {ndim} dimensions")
    dims = struct.unpack(f">{ndim}I", raw[4:4 + 4 * ndim])
    data = np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim)
    if data.size != int(np.prod(dims)):
        raise UserError(f"{path}: header says {dims} but holds {data.size} bytes of data")
    return data.reshape(dims)


def _pair(images: np.ndarray, labels: np.ndarray, where: str) -> tuple[torch.Tensor, torch.Tensor]:
    if images.ndim != 3 or images.shape[1:] != (28, 28) or len(images) != len(labels):
        raise UserError(f"MNIST {where}: expected N 28x28 images and N labels, got images "
                        f"{images.shape} and labels {labels.shape}")
    if labels.size and labels.max() > 9:
        raise UserError(f"MNIST {where}: labels must be digits 0-9, found {int(labels.max())}")
    return torch.from_numpy(images.reshape(len(images), 784).copy()), torch.from_numpy(labels.astype(np.int64))


def _read_local(paths: list[Path]) -> dict[str, Any]:
    tx, ty = _pair(read_idx(paths[0], 3), read_idx(paths[1], 1), f"training files {paths[0].parent}")
    sx, sy = _pair(read_idx(paths[2], 3), read_idx(paths[3], 1), f"test files {paths[2].parent}")
    return {"train_x": tx, "train_y": ty, "test_x": sx, "test_y": sy}


def _read_hub(ds: Any) -> dict[str, Any]:
    out = {}
    for split, prefix in (("train", "train"), ("test", "test")):
        part = ds[split]
        images = np.stack([np.asarray(im, dtype=np.uint8) for im in part["image"]])
        out[f"{prefix}_x"], out[f"{prefix}_y"] = _pair(images, np.asarray(part["label"]), f"hub split {split}")
    return out


def load_mnist(task: str) -> dict[str, Any]:
    """MNIST as uint8 (N, 784) images and int64 labels, from the data directory or the hub."""
    local = find_all([(n, n + ".gz") for n in IDX_FILES], SUBDIRS)
    accepted = ", ".join(f"{n}[.gz]" for n in IDX_FILES) + f" (top level or {'/, '.join(SUBDIRS)}/)"
    return fetch(task, "MNIST", options={"format": 1}, local=local, read_local=_read_local,
                 hub_id=HUB_ID, read_hub=_read_hub, accepted=accepted)


@register("pixel-mnist")
@dataclass
class PixelMNIST(PixelSequence):
    """Sequential MNIST: 784 steps of one pixel in [0, 1], class from the last step."""

    pixels_per_step: int = param(1, "pixels per step: 1 (784 steps) or 28 (row by row, 28 steps)",
                                 choices=(1, 28))
    n_val: int = param(10_000, "validation images held out of the 60k training set (by data_seed)",
                       min=1, max=N_TRAIN - 1)
    n_train: int = param(0, "training images used (0: all not held out); a subset for quick runs",
                         min=0, max=N_TRAIN - 1)
    n_test: int = param(0, "test images used, the first N of the test set (0: all 10k)", min=0, max=N_TEST)
    data_seed: int = param(0, "seed of the validation hold-out and of the training subset", min=0)

    description = "sequential MNIST: 784 pixels one per step, classify at the end (acc)"
    n_pixels = 784
    max_value = 255.0

    def __post_init__(self) -> None:
        if self.n_val + self.n_train > N_TRAIN:
            raise UserError(f"task '{self.name}': n_val + n_train = {self.n_val + self.n_train} "  # type: ignore[attr-defined]
                            f"exceeds the {N_TRAIN} MNIST training images")

    def raw(self) -> tuple[Split, Split]:
        d = load_mnist(self.name)  # type: ignore[attr-defined]
        return (d["train_x"], d["train_y"]), (d["test_x"], d["test_y"])


@register("permuted-mnist")
@dataclass
class PermutedMNIST(PixelMNIST):
    """Permuted MNIST: one fixed random permutation of the 784 pixels (randperm under perm_seed)."""

    perm_seed: int = param(0, "seed of the pixel permutation (torch.randperm(784))", min=0)  # type: ignore[assignment]
    perm_kind: str = param("randperm", "randperm: a true permutation; with_replacement: 784 positions drawn "  # type: ignore[assignment]
                           "with replacement (Cooijmans et al.'s public code)", choices=("randperm", "with_replacement"))

    description = "permuted MNIST: pixels in one fixed random order (perm_seed), classify at the end (acc)"
