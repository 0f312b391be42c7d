"""The task registry (see ``tasks/__init__.py`` for the front door)."""

from __future__ import annotations

from typing import Callable

from suite.registry import Registry

TASKS: Registry[type] = Registry("task")


def register(name: str) -> Callable[[type], type]:
    """Class decorator: register a task dataclass under ``name``."""

    def deco(cls: type) -> type:
        cls.name = name  # type: ignore[attr-defined]
        return TASKS.add(name, cls)

    return deco
