"""Name registries and typed, validated parameter sets.

Tasks and models are registered by name (one decorator, one dict, one front door,
as in timm) and configured by dataclasses whose fields carry their help text and
allowed range in ``metadata``. ``build_config`` turns a plain dict (from TOML or
the command line) into such a dataclass, or raises a one-line ``UserError``.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import math
import re
import types
import typing
from typing import Any, Callable, Generic, Iterable, TypeVar

from suite.errors import UserError

T = TypeVar("T")


def _natural_key(name: str) -> list:
    return [int(p) if p.isdigit() else p for p in re.split(r"(\d+)", name)]


class Registry(Generic[T]):
    """A name -> entry map with wildcard listing and helpful errors."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._entries: dict[str, T] = {}

    def add(self, name: str, entry: T) -> T:
        if name in self._entries:
            raise RuntimeError(f"{self.kind} '{name}' is registered twice")
        self._entries[name] = entry
        return entry

    def register(self, name: str) -> Callable[[T], T]:
        def deco(entry: T) -> T:
            return self.add(name, entry)

        return deco

    def get(self, name: str) -> T:
        try:
            return self._entries[name]
        except KeyError:
            raise UserError(
                f"unknown {self.kind} '{name}'; choose from: {', '.join(self.names())}"
            ) from None

    def names(self, pattern: str | Iterable[str] = "*", exclude: Iterable[str] = ()) -> list[str]:
        """Registered names matching any of ``pattern`` (fnmatch), naturally sorted."""
        pats = [pattern] if isinstance(pattern, str) else list(pattern)
        excl = list(exclude)
        out = [
            n
            for n in self._entries
            if any(fnmatch.fnmatchcase(n, p) for p in pats)
            and not any(fnmatch.fnmatchcase(n, e) for e in excl)
        ]
        return sorted(out, key=_natural_key)

    def __contains__(self, name: str) -> bool:
        return name in self._entries


def param(default: Any, help: str, *, min: float | None = None, max: float | None = None,
          choices: Iterable[Any] | None = None, min_exclusive: bool = False, max_exclusive: bool = False) -> Any:
    """A dataclass field with help text and an allowed range, checked by ``build_config``."""
    meta = {"help": help, "min": min, "max": max, "min_exclusive": min_exclusive, "max_exclusive": max_exclusive,
            "choices": tuple(choices) if choices is not None else None}
    if isinstance(default, (list, dict, set)):
        return dataclasses.field(default_factory=lambda: type(default)(default), metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


def _base_types(tp: Any) -> tuple[type, ...]:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        return tuple(t for a in typing.get_args(tp) for t in _base_types(a))
    if origin is typing.Literal:
        return tuple({type(a) for a in typing.get_args(tp)})
    if origin is not None:
        return (origin,)
    return (tp,)


def _coerce(value: Any, tp: Any, where: str) -> Any:
    allowed = _base_types(tp)
    if value is None and type(None) in allowed:
        return None
    if isinstance(value, bool):
        if bool in allowed:
            return value
    elif isinstance(value, int) and int in allowed:
        return value
    elif isinstance(value, (int, float)) and float in allowed:
        return float(value)
    elif isinstance(value, str) and str in allowed:
        return value
    elif isinstance(value, (list, tuple)) and (list in allowed or tuple in allowed):
        return list(value)
    elif isinstance(value, dict) and dict in allowed:
        return dict(value)
    names = " or ".join(sorted({getattr(a, "__name__", str(a)).replace("NoneType", "none") for a in allowed}))
    raise UserError(f"{where} must be {names}, got {value!r}")


def _check_range(value: Any, meta: dict, where: str) -> None:
    if value is None:
        return
    choices = meta.get("choices")
    if choices is not None and value not in choices:
        raise UserError(f"{where}={value!r} is not allowed; choose from: {', '.join(map(str, choices))}")
    lo, hi = meta.get("min"), meta.get("max")
    if isinstance(value, float) and not math.isfinite(value):
        raise UserError(f"{where}={value!r} is not a finite number")
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        low = f"{'>' if meta.get('min_exclusive') else '>='} {lo}" if lo is not None else None
        high = f"{'<' if meta.get('max_exclusive') else '<='} {hi}" if hi is not None else None
        rng = " and ".join(b for b in (low, high) if b)
        if lo is not None and (value < lo or (meta.get("min_exclusive") and value == lo)) or \
                hi is not None and (value > hi or (meta.get("max_exclusive") and value == hi)):
            raise UserError(f"{where}={value!r} is out of range; it must be {rng}")


def fields_of(cls: type) -> dict[str, dataclasses.Field]:
    return {f.name: f for f in dataclasses.fields(cls) if f.init}


def without_inert(cfg: T) -> T:
    """``cfg`` with the fields its ``inert()`` names (those that change nothing in this
    configuration, e.g. momentum under Adam) at their defaults: a spec then says what runs,
    and two that run alike share one run id."""
    inert = cfg.inert() if hasattr(cfg, "inert") else set()
    fields = {f.name: f.default for f in dataclasses.fields(cfg) if f.name in inert}
    return dataclasses.replace(cfg, **fields) if fields else cfg


def build_config(cls: type[T], args: dict[str, Any] | None, where: str) -> T:
    """Build dataclass ``cls`` from ``args``, validating names, types and ranges.

    ``None`` sets an option that takes it (``clip=None``: no clipping); for any other
    option it is dropped, so that the option keeps its default (as in timm's
    ``create_model``). ``where`` prefixes error messages, e.g. ``"task 'adding'"``.
    """
    flds = fields_of(cls)
    hints = typing.get_type_hints(cls)
    unknown = sorted(set(args or {}) - set(flds))
    args = {k: v for k, v in (args or {}).items()
            if v is not None or (k in flds and type(None) in _base_types(hints[k]))}
    if unknown:
        raise UserError(
            f"{where} has no parameter '{unknown[0]}'; allowed: {', '.join(flds) or '(none)'}"
        )
    clean = {}
    for name, value in args.items():
        label = f"{where}: {name}"
        value = _coerce(value, hints[name], label)
        _check_range(value, flds[name].metadata, label)
        clean[name] = value
    obj = cls(**clean)
    # Defaults are checked too, and __post_init__ may add cross-field checks.
    for name, f in flds.items():
        _check_range(getattr(obj, name), f.metadata, f"{where}: {name}")
    return obj


def describe_params(cls: type) -> list[tuple[str, str, Any, str]]:
    """(name, type, default, help) for each parameter, for ``rnnbench list``."""
    hints = typing.get_type_hints(cls)
    rows = []
    for name, f in fields_of(cls).items():
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc]
        tp = "|".join(getattr(t, "__name__", str(t)) for t in _base_types(hints[name])).replace("NoneType", "none")
        rows.append((name, tp, default, f.metadata.get("help", "")))
    return rows
