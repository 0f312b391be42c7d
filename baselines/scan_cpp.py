"""The scan path's sequential loops, compiled for the CPU (``csrc/scan_loops.cpp``).

On the CPU the Python loops of ``baselines/scan.py`` spend most of their time on op
dispatch, not arithmetic (an LSTM step is 7 ops forward and 5 backward, each a few
microseconds at the suite's sizes). The compiled loops do one matrix product and one
fused elementwise pass per step. They are built on first use with PyTorch's C++
extension loader (a C++ compiler and ninja are needed; ~30 s once per machine and torch
version, cached in ``TORCH_EXTENSIONS_DIR``, default ``~/.cache/torch_extensions``;
``make setup`` builds them). Where the build fails, the scan path keeps its Python loops
and one warning says why.

``RNNBENCH_CPU_LOOPS=0`` turns them off (the Python loops then run); runs record the
path as "scan-cpp" when the compiled loops ran and "scan" otherwise. On CUDA the loops
run as Triton kernels instead (``scan_triton``).
"""

from __future__ import annotations

import contextlib
import os
import platform
import re
import shutil
import warnings
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import torch
from torch import Tensor

from suite.errors import one_line

SOURCE = Path(__file__).with_name("csrc") / "scan_loops.cpp"
ENV = "RNNBENCH_CPU_LOOPS"

_module: ModuleType | None = None
_failed: str | None = None


def enabled() -> bool:
    """Whether the compiled loops may be used (``RNNBENCH_CPU_LOOPS`` is not "0")."""
    return os.environ.get(ENV, "1") != "0"


def _flags(openmp: bool = True) -> tuple[str, list[str], list[str]]:
    """The module's name, compiler and linker flags. -fno-trapping-math and -fopenmp-simd
    let the compiler vectorise the elementwise loops (no fast-math: NaN and infinities
    keep their meaning). On x86-64, the loops are built for the vector instructions
    PyTorch's own kernels use there (``torch.backends.cpu.get_cpu_capability``, which
    ATEN_CPU_CAPABILITY can lower): AVX2 and FMA (about 3x faster than SSE2 at H=64), or
    AVX-512 (a 3-9% shorter training step than the AVX2 build for every custom cell,
    loop, batch and layer norm, on a 2-core AMD EPYC at B=32, H=64; benchmarks/RESULTS.md), each under a
    name of its own, so a shared cache never hands a build to a CPU without its
    instructions (nor one built against another torch). Where
    PyTorch runs its CPU threads with OpenMP (its Linux builds) and ``openmp`` is on,
    -fopenmp lets the input norm's passes and the layer-norm steps share PyTorch's
    threads (``at::parallel_for``, whose OpenMP version is compiled into the module; the
    OpenMP runtime is the one PyTorch has loaded, found by its library name); else they
    run on one thread."""
    flags, ldflags = ["-O3", "-fno-trapping-math", "-fopenmp-simd"], []
    # the torch version in the name: a build against another torch's headers is not reused
    name = "rnnbench_scan_loops_" + re.sub(r"\W", "_", torch.__version__)
    if platform.machine() in ("x86_64", "AMD64"):
        capability = torch.backends.cpu.get_cpu_capability()
        if capability in ("AVX2", "AVX512"):
            flags += ["-mavx2", "-mfma"]
        if capability == "AVX512":  # what PyTorch's AVX512 kernels require: F, BW, DQ, VL
            flags += ["-mavx512f", "-mavx512bw", "-mavx512dq", "-mavx512vl"]
        name += {"AVX2": "_avx2", "AVX512": "_avx512"}.get(capability, "")
    if openmp and platform.system() == "Linux" and "parallel backend: OpenMP" in torch.__config__.parallel_info():
        flags.append("-fopenmp")
        ldflags.append("-fopenmp")
        name += "_omp"
    return name, flags, ldflags


def _build(openmp: bool) -> ModuleType:
    from torch.utils.cpp_extension import _get_build_directory, load as load_extension

    name, flags, ldflags = _flags(openmp)
    with _build_lock(_get_build_directory(name, verbose=False)):
        return load_extension(name, [str(SOURCE)], extra_cflags=flags, extra_ldflags=ldflags, verbose=False)


@contextlib.contextmanager
def _build_lock(build_dir: str) -> Iterator[None]:
    """Holds an flock on ``rnnbench.flock`` in the build's directory while PyTorch loads
    (or builds) the module there. PyTorch's own lock is a file (``lock``) that it creates
    and deletes, and every process that loads the module, even one that builds nothing,
    takes it for a moment: a process killed then (SIGKILL at start-up, a preempted job)
    leaves the file, and every later load waits for it forever. An flock goes with its
    holder, so a process that holds this one and finds ``lock`` knows no live process
    of this suite holds it, deletes it and says so in a warning. (No flock, as on
    Windows: PyTorch's lock alone.)"""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - not POSIX
        yield
        return
    with open(os.path.join(build_dir, "rnnbench.flock"), "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            stale = os.path.join(build_dir, "lock")
            if os.path.exists(stale):
                os.remove(stale)
                warnings.warn(f"rnnbench: removed {stale}, left by a process killed while it loaded the compiled "
                              "CPU loops", RuntimeWarning, stacklevel=4)
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def openmp_runtimes() -> set[str]:
    """The OpenMP runtime libraries this process has loaded (from /proc/self/maps; empty
    where that is not readable)."""
    try:
        with open("/proc/self/maps") as f:
            paths = {ln.split()[-1] for ln in f if len(ln.split()) >= 6}
    except OSError:
        return set()
    return {p for p in paths if re.search(r"/lib(g|i)?omp[^/]*\.so", p)}


def _build_threaded() -> ModuleType:
    """The build with OpenMP, where that is what PyTorch's threads use; the one without
    it (the input norm's passes and layer-norm steps then on one thread, said once in a
    warning) where that
    build fails or brings a second OpenMP runtime into the process (a compiler whose
    runtime has another library name than PyTorch's), which would ignore PyTorch's
    thread count."""
    if _flags(True)[0] == _flags(False)[0]:
        return _build(openmp=False)
    before = openmp_runtimes()
    try:
        module = _build(openmp=True)
        extra = openmp_runtimes() - before if before else set()
        if not extra:
            return module
        why = f"it loaded a second OpenMP runtime, {', '.join(sorted(extra))}"
    except Exception as e:  # e.g. a compiler without OpenMP
        why = one_line(e, last=True)
    module = _build(openmp=False)  # where this fails too, ``load`` says why
    warnings.warn(f"rnnbench: the compiled CPU loops are built without OpenMP ({why}); their input norm's passes "
                  "and layer-norm steps run on one thread.", RuntimeWarning, stacklevel=3)
    return module


def load() -> ModuleType | None:
    """The compiled module, building it the first time (with OpenMP where it can,
    ``_build_threaded``); None where it cannot be built."""
    global _module, _failed
    if _module is not None or _failed is not None:
        return _module
    try:
        if shutil.which("ninja") is None:  # the ninja wheel's binary sits beside this venv's python
            import ninja

            os.environ["PATH"] = ninja.BIN_DIR + os.pathsep + os.environ.get("PATH", "")
        _module = _build_threaded()
    except Exception as e:  # a missing compiler or ninja, a failed build: keep the Python loops
        lines = str(e).strip().splitlines() or [""]
        _failed = f"{type(e).__name__}: {next((ln for ln in lines if 'error' in ln), lines[-1]).strip()}"
        warnings.warn(f"rnnbench: the compiled CPU loops could not be built ({_failed}); the scan path runs its "
                      f"Python loops (slower on the CPU). Set {ENV}=0 to skip the attempt.", RuntimeWarning,
                      stacklevel=2)
    return _module


def build_error() -> str | None:
    """Why the compiled loops could not be built (None: they were, or were not tried)."""
    return _failed


def for_call(x: Tensor, seeds: int = 0) -> ModuleType | None:
    """The compiled loops where they apply to a recurrence on ``x`` (of one model, or of
    ``seeds`` stacked seeds): CPU, float32 or float64; else None."""
    if x.device.type != "cpu" or x.dtype not in (torch.float32, torch.float64) or not enabled():
        return None
    return load()
