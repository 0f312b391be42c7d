"""The environment a run executed in: host, device, library versions, git commit, and
the switches that picked its code path."""

from __future__ import annotations

import functools
import os
import platform
import socket
import subprocess
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

import suite

REPO = Path(__file__).resolve().parent.parent
# Environment variables that pick another code path for the same model (the compiled CPU
# loops, the one-program fused kernels, the CUDA step kernels and their launches): its
# numbers then differ in their last bits, and its speed, so a run records those it ran with.
SWITCHES = ("RNNBENCH_CPU_LOOPS", "RNNBENCH_FUSED", "RNNBENCH_GPU_")


@functools.lru_cache(maxsize=1)
def git_commit() -> str | None:
    """HEAD of the checkout the code runs from, with '+dirty' for local changes: to a
    tracked file, or a new file in the four packages (the registries import every module
    there, so an untracked preset or task changes what runs)."""
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True,
                              text=True, timeout=5)
        if head.returncode != 0:
            return None
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO,
                               capture_output=True, text=True, timeout=5).stdout.strip()
        dirty = dirty or subprocess.run(["git", "status", "--porcelain", "--untracked-files=all", "--", *PACKAGES],
                                        cwd=REPO, capture_output=True, text=True, timeout=5).stdout.strip()
        return head.stdout.strip() + ("+dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return None


PACKAGES = ("suite", "tasks", "baselines", "reports")


def device_name(device: str) -> str:
    """The GPU's name, or the CPU's model (``/proc/cpuinfo`` on Linux, where
    ``platform.processor()`` says only "x86_64"), so CPU timings of two machines differ."""
    if device.startswith("cuda") and torch.cuda.is_available():
        return torch.cuda.get_device_name(torch.device(device))
    return _cpu_model() or platform.processor() or platform.machine() or "cpu"


@functools.lru_cache(maxsize=1)
def _cpu_model() -> str | None:
    try:
        text = Path("/proc/cpuinfo").read_text(errors="replace")
    except OSError:
        return None
    names = [line.split(":", 1)[1].strip() for line in text.splitlines() if line.startswith("model name")]
    return names[0] if names and names[0] else None


def cpu_capability() -> str:
    """The vector instructions PyTorch's CPU kernels use (DEFAULT, AVX2, AVX512, ...; set
    lower with ATEN_CPU_CAPABILITY), which the compiled CPU loops are built for too: CPU
    timings of one machine compare only at the same capability."""
    return torch.backends.cpu.get_cpu_capability()


def switches() -> str:
    """The code-path switches (``SWITCHES``) set in this process's environment, as
    "NAME=value" sorted by name and joined by commas; "" where none is (the defaults)."""
    return ",".join(f"{k}={v}" for k, v in sorted(os.environ.items()) if k.startswith(SWITCHES))


def environment(device: str) -> dict[str, Any]:
    return {
        "host": socket.gethostname(),
        "device": device,
        "device_name": device_name(device),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
        "numpy": np.__version__,
        "threads": torch.get_num_threads(),
        "cpu_capability": cpu_capability(),
        "rnnbench": suite.__version__,
        "git_commit": git_commit(),
        "switches": switches(),
        "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
