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


def split_every_step(request: pytest.FixtureRequest) -> None:
    """For the rest of the test, the compiled CPU loops hand every step with layer
    statistics to two threads in parts of one row upwards, however small the step (by
    default only steps of 1024 elements or more are split)."""
    from baselines import scan_cpp

    loops, threads = scan_cpp.load(), torch.get_num_threads()
    before = loops.step_split()
    loops.set_step_split(0, 1)
    torch.set_num_threads(2)

    def restore() -> None:
        loops.set_step_split(*before)
        torch.set_num_threads(threads)

    request.addfinalizer(restore)


@pytest.fixture(params=["python", "compiled", "compiled-split"])
def scan_loops(request, monkeypatch) -> str:
    """Runs a test with the scan path's Python loops, with its compiled CPU loops, and
    with those splitting every step over two threads (``split_every_step``); the value
    is the recurrence path that runs record."""
    path = use_scan_loops(monkeypatch, request.param != "python")
    if request.param == "compiled-split":
        split_every_step(request)
    return path


try:  # Triton is optional (the step kernels' tests skip without it)
    import triton
    import triton.language as tl

    from baselines import scan_triton as st

    @triton.jit
    def _product_kernel(A, W, OUT, R, K, N, PREC: tl.constexpr):
        """OUT = A @ W through ``scan_triton._mm_n`` (16 rows, 8 columns, chunks of 16)."""
        rb = tl.arange(0, 16)
        col = tl.arange(0, 8)
        z = st._mm_n(A, rb, rb < R, K, W, N, col, col < N, 16, 8, 16, PREC)
        tl.store(OUT + rb[:, None] * N + col[None, :], z, mask=(rb < R)[:, None] & (col < N)[None, :])
except ImportError:  # pragma: no cover - depends on the installation
    triton = None


def step_product(a: torch.Tensor, w: torch.Tensor, prec: str) -> torch.Tensor:
    """a @ w (a: rows x K, w: K x N, float32, at most 16 rows and 8 columns) through the
    CUDA step kernels' product (``scan_triton._mm_n``, chunks of 16) at precision
    ``prec``, in one program: compiled on CUDA, in Triton's interpreter elsewhere."""
    out = torch.empty(a.shape[0], w.shape[1], device=a.device)
    _product_kernel[(1,)](a.contiguous(), w.contiguous(), out, a.shape[0], a.shape[1], w.shape[1], PREC=prec)
    return out
