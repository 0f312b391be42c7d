"""Profiles (TOML files in ``suite/profiles/``) and command-line overrides -> RunSpecs.

A profile is data, not code::

    description = "..."
    seeds = "0-2"            # or [0, 1, 2]
    device = "auto"
    [train]                  # TrainConfig defaults for every entry
    max_steps = 600
    [model]                  # model switches for every entry
    hidden_size = 64
    [[runs]]                 # one grid entry; list values are sweep axes
    task = "adding"
    task_args = { T = [50, 100] }
    models = ["rnn", "*lstm*"]
    train = { lr = 1e-2 }    # per-entry overrides
    model_args = { }

Command-line ``--set section.key=value`` (sections: train, model, task) applies
over every entry; values are TOML literals (``1e-3``, ``[1, 2]``, ``true``), or
``none``: None for an option that takes it (``train.clip=none``: no clipping), else
the option's default.
"""

from __future__ import annotations

import fnmatch
import tomllib
from importlib import resources
from pathlib import Path
from typing import Any

from suite.errors import UserError
from suite.spec import RunSpec, expand, model_names, parse_seeds

PROFILE_KEYS = {"description", "seeds", "device", "train", "model", "runs"}
ENTRY_KEYS = {"task", "task_args", "models", "model_args", "train"}
SECTIONS = {"train": "train", "model": "model_args", "task": "task_args"}


def profile_names() -> list[str]:
    folder = resources.files("suite") / "profiles"
    return sorted(p.name[:-5] for p in folder.iterdir() if p.name.endswith(".toml"))


def profile_path(name: str) -> Path:
    path = Path(name)
    if path.suffix == ".toml" or path.exists():
        if not path.exists():
            raise UserError(f"profile file {path} does not exist")
        return path
    candidate = Path(str(resources.files("suite") / "profiles" / f"{name}.toml"))
    if not candidate.exists():
        raise UserError(f"unknown profile '{name}'; choose from: {', '.join(profile_names())} "
                        "(or give a path to a .toml file)")
    return candidate


def load_profile(name: str) -> dict[str, Any]:
    path = profile_path(name)
    try:
        data = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as e:
        raise UserError(f"profile {path} is not valid TOML: {e}") from None
    except (OSError, UnicodeDecodeError) as e:
        raise UserError(f"profile {path} cannot be read: {e}") from None
    unknown = set(data) - PROFILE_KEYS
    if unknown:
        raise UserError(f"profile {path}: unknown key '{sorted(unknown)[0]}'; allowed: {', '.join(sorted(PROFILE_KEYS))}")
    runs = data.get("runs")
    if not isinstance(runs, list) or not runs or not all(isinstance(e, dict) for e in runs):
        raise UserError(f"profile {path} has no [[runs]] entries (tables: [[runs]] with task = ..., models = [...])")
    _check_types(path, "", data, {"description": str, "device": str, "train": dict, "model": dict})
    if "seeds" in data and not isinstance(data["seeds"], (str, int, list)) or isinstance(data.get("seeds"), bool):
        raise UserError(f"profile {path}: seeds must be a string such as \"0-4\", an integer or a list of "
                        f"integers, got {data['seeds']!r}")
    for i, entry in enumerate(runs):
        bad = set(entry) - ENTRY_KEYS
        if bad:
            raise UserError(f"profile {path}: runs[{i}] has unknown key '{sorted(bad)[0]}'; "
                            f"allowed: {', '.join(sorted(ENTRY_KEYS))}")
        if "task" not in entry or "models" not in entry:
            raise UserError(f"profile {path}: runs[{i}] needs 'task' and 'models'")
        if isinstance(entry["models"], str):
            entry["models"] = [entry["models"]]
        _check_types(path, f"runs[{i}].", entry, {"task": str, "models": list, "task_args": dict,
                                                   "model_args": dict, "train": dict})
        if not entry["models"] or not all(isinstance(m, str) for m in entry["models"]):
            raise UserError(f"profile {path}: runs[{i}].models must be a name or a non-empty list of names, "
                            f"got {entry['models']!r}")
    return data


def _check_types(path: Path, prefix: str, table: dict[str, Any], kinds: dict[str, type]) -> None:
    """One line naming the first key of ``table`` whose value is not of its kind."""
    words = {str: "a string", list: "a list", dict: "a table ({ ... } or [section])"}
    for key, kind in kinds.items():
        if key in table and not isinstance(table[key], kind):
            raise UserError(f"profile {path}: {prefix}{key} must be {words[kind]}, got {table[key]!r}")


def parse_value(text: str) -> Any:
    """A TOML literal ('1e-3', '[1, 2]', 'true', '"x"'), 'none' for None, else the raw string."""
    if text.strip().lower() in ("none", "null"):
        return None
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text


def parse_assignments(items: list[str] | None, what: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise UserError(f"{what} '{item}' must look like KEY=VALUE")
        out[key.strip()] = parse_value(value.strip())
    return out


def parse_sets(items: list[str] | None) -> dict[str, dict[str, Any]]:
    """'--set model.hidden_size=64' -> {'model_args': {'hidden_size': 64}}."""
    out: dict[str, dict[str, Any]] = {v: {} for v in SECTIONS.values()}
    for key, value in parse_assignments(items, "--set").items():
        section, dot, name = key.partition(".")
        if not dot or section not in SECTIONS or not name:
            raise UserError(f"unknown --set key '{key}'; use train.NAME, model.NAME or task.NAME")
        out[SECTIONS[section]][name] = value
    return out


def build_specs(*, profile: str | None = None, task: list[str] | None = None,
                model: list[str] | None = None, task_args: dict | None = None,
                model_args: dict | None = None, train: dict | None = None,
                sets: dict[str, dict] | None = None, seeds: Any = None,
                device: str | None = None) -> list[RunSpec]:
    """All RunSpecs for a profile and/or flags, validated before anything runs.

    With a profile, ``task``/``model`` restrict its entries to those names. Without
    one, they define a single grid entry.
    """
    sets = sets or {}
    if profile:
        data = load_profile(profile)
        entries = []
        for e in data["runs"]:  # --task and --model filter by name or pattern, as without a profile
            if task and not any(fnmatch.fnmatchcase(e["task"], t) for t in task):
                continue
            models = e["models"]
            if model:  # the entry's names and patterns as names, then those the filter takes
                models = [m for m in model_names(models) if any(fnmatch.fnmatchcase(m, p) for p in model)]
            if models:
                entries.append({**e, "models": models})
        if not entries:
            raise UserError(f"profile '{profile}' has no runs for the given --task/--model filter")
        base_train, base_model = data.get("train", {}), data.get("model", {})
        seeds = seeds if seeds is not None else data.get("seeds", "0")
        device = device or data.get("device", "auto")
    else:
        if not task or not model:
            raise UserError("give --profile NAME, or --task and --model (see 'rnnbench list tasks|models')")
        entries = [{"task": t, "models": list(model)} for t in task]
        base_train, base_model = {}, {}
        seeds = seeds if seeds is not None else "0"
        device = device or "auto"
    merged = []
    for e in entries:
        merged.append({
            "task": e["task"], "models": e["models"],
            "task_args": {**e.get("task_args", {}), **(task_args or {}), **sets.get("task_args", {})},
            "model_args": {**base_model, **e.get("model_args", {}), **(model_args or {}),
                           **sets.get("model_args", {})},
            "train": {**base_train, **e.get("train", {}), **(train or {}), **sets.get("train", {})},
        })
    return expand(merged, parse_seeds(seeds), device)
