"""Task registry: ``tasks.create("adding", T=200)``, ``tasks.names()``.

Every module in this folder is imported on first use, so adding a file with a
``@register``-ed task is enough to make it available.
"""

from __future__ import annotations

import importlib
import pkgutil
from typing import Any, Iterable

from suite.registry import build_config, describe_params
from tasks.base import Batch, Task
from tasks.registry import TASKS, register

__all__ = ["Batch", "Task", "create", "get", "names", "register", "describe"]

_loaded = False


def _load_all() -> None:
    global _loaded
    if not _loaded:
        _loaded = True
        for mod in pkgutil.iter_modules(__path__):
            if mod.name not in ("base", "registry"):
                importlib.import_module(f"{__name__}.{mod.name}")


def get(name: str) -> type:
    _load_all()
    return TASKS.get(name)


def names(pattern: str | Iterable[str] = "*", exclude: Iterable[str] = ()) -> list[str]:
    _load_all()
    return TASKS.names(pattern, exclude)


def create(name: str, **args: Any) -> Task:
    """Build task ``name`` with validated parameters (one-line UserError otherwise)."""
    return build_config(get(name), args, f"task '{name}'")


def describe(name: str) -> tuple[str, list]:
    cls = get(name)
    return cls.description, describe_params(cls)
