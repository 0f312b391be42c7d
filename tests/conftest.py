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


def use_scan_loops(monkeypatch: pytest.MonkeyPatch, compiled: bool) -> str:
    """Make the scan path run its compiled CPU loops (baselines/scan_cpp.py) or its
    Python loops; returns the recurrence path runs then record. Where the compiled
    loops cannot be built the test is skipped, or fails under
    RNNBENCH_REQUIRE_CPU_LOOPS=1 (as in CI, which has a compiler)."""
    from baselines import scan_cpp

    monkeypatch.setenv(scan_cpp.ENV, "1" if compiled else "0")
    if not compiled:
        return "scan"
    if scan_cpp.load() is None:
        why = f"the compiled CPU loops could not be built: {scan_cpp.build_error()}"
        if os.environ.get("RNNBENCH_REQUIRE_CPU_LOOPS") == "1":
            pytest.fail(why)
        pytest.skip(why)
    return "scan-cpp"


@pytest.fixture(params=["python", "compiled"])
def scan_loops(request, monkeypatch) -> str:
    """Runs a test once with the scan path's Python loops and once with its compiled
    CPU loops; the value is the recurrence path that runs record."""
    return use_scan_loops(monkeypatch, request.param == "compiled")
