"""Checks made before any training: does every task of a grid have its data here?

A real-data task whose files are not in the data directory and whose hub id
cannot be reached would fail in every one of its runs; asking once per task
configuration, before training, turns that into one line for the user.
"""

from __future__ import annotations

import json

import torch

import tasks
from suite.errors import UserError
from suite.spec import RunSpec


def _key(spec: RunSpec) -> str:
    return json.dumps([spec.task, spec.task_args], sort_keys=True)


def missing_data(specs: list[RunSpec]) -> dict[str, str]:
    """One-line reason for each task configuration (task and its arguments, as a JSON
    key) whose data is missing.

    Loading a first batch goes through the task's real loading code (and fills the
    on-disk cache, so the runs that follow do not process the data again).
    """
    problems: dict[str, str] = {}
    seen: set[str] = set()
    for spec in specs:
        key = _key(spec)
        if key in seen:
            continue
        seen.add(key)
        try:
            task = tasks.create(spec.task, **spec.task_args)
            task.train_batch(1, torch.Generator().manual_seed(0), torch.device("cpu"))
        except UserError as e:
            problems[key] = str(e)
    return problems


def with_data(specs: list[RunSpec]) -> tuple[list[RunSpec], dict[str, str]]:
    """The specs whose task configuration has data, and task name -> reason for the
    others (the first reason per task name)."""
    problems = missing_data(specs)
    skipped: dict[str, str] = {}
    for key, why in problems.items():
        skipped.setdefault(json.loads(key)[0], why)
    return [s for s in specs if _key(s) not in problems], skipped


def require_data(specs: list[RunSpec]) -> None:
    """Stop before training, with one line, if any task configuration lacks its data."""
    problems = missing_data(specs)
    if problems:
        raise UserError(next(iter(problems.values())))
