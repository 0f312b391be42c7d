"""The environment a run executed in: host, device, library versions, git commit."""

from __future__ import annotations

import functools
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


@functools.lru_cache(maxsize=1)
def git_commit() -> str | None:
    """HEAD of the checkout the code runs from, with '+dirty' for local changes."""
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True,
                              text=True, timeout=5)
        if head.returncode != 0:
            return None
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO,
                               capture_output=True, text=True, timeout=5).stdout.strip()
        return head.stdout.strip() + ("+dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return None


def device_name(device: str) -> str:
    if device.startswith("cuda") and torch.cuda.is_available():
        return torch.cuda.get_device_name(torch.device(device))
    return platform.processor() or platform.machine() or "cpu"


def cpu_capability() -> str:
    """The vector instructions PyTorch's CPU kernels use (DEFAULT, AVX2, AVX512, ...; set
    lower with ATEN_CPU_CAPABILITY), which the compiled CPU loops are built for too: CPU
    timings of one machine compare only at the same capability."""
    return torch.backends.cpu.get_cpu_capability()


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
        "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
