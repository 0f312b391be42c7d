"""seq-digits: scikit-learn's bundled 8x8 handwritten digits as a 64-step task.

A small real data set that works offline (it ships inside scikit-learn: 1797
images of 8x8 pixels with values 0-16, from the UCI "Optical Recognition of
Handwritten Digits" set), so it belongs in the smoke profile. Read like pixel
MNIST: 64 steps of one pixel in scan-line order (or 8 rows of 8), pixels / 16 in
[0, 1], class from the last step.

Splits (state them when reporting): the 1797 images are shuffled by
``data_seed``; the first ``n_test`` (300) are the test set, the next ``n_val``
(300) validation, the remaining 1197 training (or a random ``n_train`` of them).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from suite.registry import param
from tasks.pixels import PixelSequence, Split
from tasks.registry import register

N_IMAGES = 1797


@register("seq-digits")
@dataclass
class SeqDigits(PixelSequence):
    """sklearn's 8x8 digits, one pixel per step (64 steps), classify at the end."""

    pixels_per_step: int = param(1, "pixels per step: 1 (64 steps) or 8 (row by row, 8 steps)", choices=(1, 8))
    n_val: int = param(300, "validation images (held out by data_seed)", min=1, max=N_IMAGES - 2)
    n_test: int = param(300, "test images (held out by data_seed)", min=1, max=N_IMAGES - 2)
    n_train: int = param(0, "training images (0: all 1197 not held out)", min=0, max=N_IMAGES - 2)
    data_seed: int = param(0, "seed of the train/val/test split", min=0)

    description = "scikit-learn 8x8 digits, 64 pixels one per step, classify at the end (acc; offline)"
    n_pixels = 64
    max_value = 16.0

    def raw(self) -> tuple[Split, None]:
        from sklearn.datasets import load_digits  # bundled with scikit-learn: no download

        d = load_digits()
        x = torch.from_numpy(d.images.reshape(len(d.images), 64)).to(torch.uint8)
        return (x, torch.from_numpy(d.target).long()), None
