"""Model registry: ``baselines.create("lstm", input_size=2, output_size=1)``.

``baselines.names("*lstm*")`` lists models by wildcard. Every module in this folder
is imported on first use, so a new file of ``register_preset`` calls is enough.
"""

from __future__ import annotations

import dataclasses
import importlib
import pkgutil
from typing import Any, Iterable

from torch import nn

from baselines.models import ModelConfig, RecurrentModel
from baselines.registry import MODELS, Preset, register_preset
from suite.errors import UserError
from suite.registry import build_config, describe_params, without_inert

__all__ = ["ModelConfig", "RecurrentModel", "create", "resolve", "names", "get", "register_preset",
           "set_fast_path", "recurrence_path"]

_loaded = False


def _load_all() -> None:
    global _loaded
    if not _loaded:
        _loaded = True
        for mod in pkgutil.iter_modules(__path__):
            if mod.name not in ("registry",):
                importlib.import_module(f"{__name__}.{mod.name}")


def get(name: str) -> Preset:
    _load_all()
    return MODELS.get(name)


def names(pattern: str | Iterable[str] = "*", exclude: Iterable[str] = ()) -> list[str]:
    _load_all()
    return MODELS.names(pattern, exclude)


def resolve(name: str, **overrides: Any) -> dict[str, Any]:
    """The full, validated switch values of model ``name`` with ``overrides`` applied,
    those that change nothing there at their defaults (``ModelConfig.inert``)."""
    preset = get(name)
    cls = preset.config_cls or ModelConfig
    try:
        cfg = build_config(cls, {**preset.values, **overrides}, f"model '{name}'")
    except TypeError as e:  # a required field without a value
        raise UserError(f"model '{name}': {e}") from None
    except UserError as e:  # a combination its config refuses (__post_init__) says whose
        raise UserError(str(e) if str(e).startswith(f"model '{name}'") else f"model '{name}': {e}") from None
    return dataclasses.asdict(without_inert(cfg))


def create(name: str, *, output_size: int, input_size: int | None = None,
           vocab_size: int | None = None, target: str = "last", **overrides: Any) -> nn.Module:
    """Build model ``name``; ``overrides`` change its switches (validated)."""
    preset = get(name)
    cls = preset.config_cls or ModelConfig
    cfg = cls(**resolve(name, **overrides))
    builder = preset.builder or RecurrentModel
    return builder(cfg, output_size=output_size, input_size=input_size,
                   vocab_size=vocab_size, target=target)


def set_fast_path(model: nn.Module, enabled: bool) -> None:
    """Use (or, with False, bypass for the reference loop) the fast recurrences (scan, fused)."""
    for m in model.modules():
        if hasattr(m, "fast"):
            m.fast = enabled


def recurrence_path(model: nn.Module) -> str:
    """How the recurrent cores ran in the last forward pass: cudnn, native (nn.LSTM & co. on
    the CPU), scan, fused, loop (or a mix, joined by '+')."""
    return "+".join(sorted({m.last_path for m in model.modules() if hasattr(m, "last_path")})) or "none"


def describe(name: str) -> tuple[str, dict[str, Any], list]:
    preset = get(name)
    return preset.description, preset.values, describe_params(preset.config_cls or ModelConfig)
