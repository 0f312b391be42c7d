"""Shared fixtures. Tests run on the CPU with few threads, so they are fast and
deterministic on a 2-core machine."""

import os

import torch

# Triton kernels run in its interpreter on machines without CUDA; the variable must
# be set before Triton is first imported.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402

torch.set_num_threads(1)


@pytest.fixture
def gen() -> torch.Generator:
    return torch.Generator().manual_seed(1234)
