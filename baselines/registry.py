"""The model registry: name -> (description, preset switch values, config class)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

from suite.registry import Registry


@dataclass(frozen=True)
class Preset:
    name: str
    description: str
    values: dict[str, Any] = field(default_factory=dict)
    config_cls: type | None = None  # None: baselines.models.ModelConfig
    builder: Callable[..., Any] | None = None  # None: baselines.models.RecurrentModel


MODELS: Registry[Preset] = Registry("model")


def register_preset(name: str, description: str, *, config_cls: type | None = None,
                    builder: Callable[..., Any] | None = None, **values: Any) -> Preset:
    """Register model ``name`` as switch values over a config dataclass."""
    return MODELS.add(name, Preset(name, description, dict(values), config_cls, builder))
