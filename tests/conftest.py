"""Shared fixtures. Tests run on the CPU with few threads, so they are fast and
deterministic on a 2-core machine."""

import pytest
import torch

torch.set_num_threads(1)


@pytest.fixture
def gen() -> torch.Generator:
    return torch.Generator().manual_seed(1234)
