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


def missing_data(specs: list[RunSpec]) -> dict[str, str]:
    """task name -> the one-line reason, for each task configuration whose data is missing.

    Loading a first batch goes through the task's real loading code (and fills the
    on-disk cache, so the runs that follow do not process the data again).
    """
    problems: dict[str, str] = {}
    seen: set[str] = set()
    for spec in specs:
        key = json.dumps([spec.task, spec.task_args], sort_keys=True)
        if key in seen:
            continue
        seen.add(key)
        try:
            task = tasks.create(spec.task, **spec.task_args)
            task.train_batch(1, torch.Generator().manual_seed(0), torch.device("cpu"))
        except UserError as e:
            problems.setdefault(spec.task, str(e))
    return problems


def with_data(specs: list[RunSpec]) -> tuple[list[RunSpec], dict[str, str]]:
    """The specs whose task has data, and task -> reason for the others."""
    problems = missing_data(specs)
    return [s for s in specs if s.task not in problems], problems


def require_data(specs: list[RunSpec]) -> None:
    """Stop before training, with one line, if any task lacks its data."""
    problems = missing_data(specs)
    if problems:
        raise UserError(next(iter(problems.values())))
