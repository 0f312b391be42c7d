"""Run specs: the fully resolved, validated, hashable description of one run.

A ``RunSpec`` is built (and validated) before any training starts. Its ``run_id``
is the hash of its canonical JSON, which includes ``RESULTS_VERSION``: the same
spec run again is recognised as done, and a code change that alters results
(bumping that version) gives new identities instead of mixing numbers.
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import json
import re
from dataclasses import dataclass, field
from typing import Any, Iterable

import torch

import baselines
import tasks
from suite import RESULTS_VERSION
from suite.errors import UserError
from suite.registry import build_config, param, without_inert


@dataclass
class TrainConfig:
    """Optimisation and bookkeeping settings of one run."""

    optimizer: str = param("adam", "optimizer", choices=("adam", "rmsprop", "sgd"))
    lr: float = param(1e-3, "learning rate", min=0.0, min_exclusive=True)
    momentum: float = param(0.0, "momentum (sgd, rmsprop)", min=0.0, max=1.0)
    rmsprop_alpha: float = param(0.99, "rmsprop: decay of the squared-gradient average (PyTorch's alpha; "
                                 "Cooijmans et al.'s decay rate 0.9; 1 would never update it)", min=0.0, max=1.0,
                                 max_exclusive=True)
    eps: float = param(1e-8, "adam, rmsprop: epsilon added to the gradient's root mean square",
                       min=0.0, min_exclusive=True)
    weight_decay: float = param(0.0, "L2 weight decay", min=0.0)
    batch_size: int = param(50, "training batch size", min=1)
    max_steps: int = param(1000, "training steps (optimizer updates)", min=1)
    time_budget_s: float | None = param(None, "stop training after this many seconds of training time",
                                        min=0.0, min_exclusive=True)
    clip: float | None = param(1.0, "max global gradient norm (None: no clipping)",
                               min=0.0, min_exclusive=True)
    eval_every: int = param(100, "evaluate on validation every N steps", min=1)
    eval_batch_size: int = param(500, "batch size for evaluation", min=1)
    early_stop: bool = param(True, "stop once validation reaches the task's solved threshold")
    precision: str = param("fp32", "fp32 (no TF32), tf32, or bf16 autocast",
                           choices=("fp32", "tf32", "bf16"))
    log_every: int = param(1, "store training loss and gradient norm every N steps", min=1)
    recalibrate_batches: int = param(20, "batch norm: before each evaluation, re-estimate population "
                                     "statistics on N training batches (0: use the running averages)", min=0)
    fast_path: bool = param(True, "custom cells' recurrence as one op with a hand-written backward "
                            "(baselines/scan.py; the Triton kernels where RNNBENCH_FUSED=1), and on CUDA "
                            "the training step captured in a CUDA graph (false: the reference loop, eager)")
    probe_every: int = param(0, "gradient-flow probe every N steps (0: only at start and end)", min=0)

    def inert(self) -> set[str]:
        """Settings that change nothing here (``suite.registry.without_inert``)."""
        out = {"momentum"} if self.optimizer == "adam" else set()
        if self.optimizer != "rmsprop":
            out.add("rmsprop_alpha")
        if self.optimizer == "sgd":
            out.add("eps")
        return out


@dataclass(frozen=True)
class RunSpec:
    """One run: task, model and training settings, seed and device, all resolved."""

    task: str
    task_args: dict[str, Any]
    model: str
    model_args: dict[str, Any]
    train: dict[str, Any]
    seed: int
    device: str
    version: str = RESULTS_VERSION

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), sort_keys=True, separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str) -> "RunSpec":
        return cls(**json.loads(text))

    def identity(self) -> str:
        """The spec as its run id hashes it: the device's type without its index, since
        ``cuda:1`` trains what ``cuda`` and ``cuda:0`` do (a run resumed or repeated on
        another GPU of a box is the same run, and matches across stores)."""
        return dataclasses.replace(self, device=self.device.split(":")[0]).to_json()

    @property
    def run_id(self) -> str:
        return hashlib.sha256(self.identity().encode()).hexdigest()[:16]

    @property
    def train_config(self) -> TrainConfig:
        return TrainConfig(**self.train)

    def label(self) -> str:
        """Short human name: the task args that differ from the task's defaults."""
        defaults = tasks.create(self.task).params()
        args = ",".join(f"{k}={v}" for k, v in sorted(self.task_args.items()) if defaults.get(k) != v)
        return f"{self.task}({args}) {self.model} seed={self.seed}"


MAX_SEEDS = 10_000  # seeds one call may name: a typo such as '0-99999999999' is refused, not expanded


def parse_seeds(text: str | int | Iterable[int]) -> list[int]:
    """'0-4' -> [0..4]; '0,3,7' -> [0, 3, 7]; 5 -> [5]; lists pass through."""
    if isinstance(text, int) and not isinstance(text, bool):
        seeds = [text]
    elif isinstance(text, str):
        seeds = []
        for part in text.split(","):
            part = part.strip()
            m = re.fullmatch(r"([0-9]+)\s*-\s*([0-9]+)", part)
            if m:
                lo, hi = int(m.group(1)), int(m.group(2))
                if lo > hi:
                    raise UserError(f"seeds '{part}': the range is empty (start > end); write e.g. '0-4'")
                if hi - lo + 1 > MAX_SEEDS:
                    raise UserError(f"seeds '{part}' names {hi - lo + 1} seeds; at most {MAX_SEEDS} in one call")
                seeds.extend(range(lo, hi + 1))
            elif re.fullmatch(r"[0-9]+", part):
                seeds.append(int(part))
            else:
                raise UserError(f"seeds '{text}' is not valid; use e.g. '0-4', '0,2,5' or '3'")
    elif isinstance(text, (list, tuple)):
        seeds = list(text)
    else:
        raise UserError(f"seeds {text!r} is not valid; use e.g. '0-4', '0,2,5', 3 or [0, 1, 2]")
    if not all(isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in seeds):
        raise UserError(f"seeds {seeds!r} must be non-negative integers")
    if len(set(seeds)) > MAX_SEEDS:
        raise UserError(f"{len(set(seeds))} seeds given; at most {MAX_SEEDS} in one call")
    if not seeds:
        raise UserError("no seeds given; use e.g. '0-4'")
    return sorted(dict.fromkeys(seeds))


def resolve_device(device: str) -> str:
    if device not in ("auto", "cpu", "cuda") and not re.fullmatch(r"cuda:\d+", device):
        raise UserError(f"device '{device}' is not valid; choose from: auto, cpu, cuda, cuda:N")
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"device '{device}' requested but CUDA is not available here; use --device cpu or auto")
    return device


def grid(values: dict[str, Any]) -> list[dict[str, Any]]:
    """Cartesian product over list-valued entries: {'T': [50, 100], 'x': 1} -> 2 dicts.
    An empty list would sweep nothing, so it is an error, not an empty grid."""
    empty = [k for k, v in values.items() if isinstance(v, list) and not v]
    if empty:
        raise UserError(f"'{empty[0]}' sweeps an empty list; give it one value or a list of values")
    keys = list(values)
    axes = [v if isinstance(v, list) else [v] for v in values.values()]
    return [dict(zip(keys, combo)) for combo in itertools.product(*axes)]


def make_spec(task: str, task_args: dict, model: str, model_args: dict, train: dict,
              seed: int, device: str) -> RunSpec:
    """Validate and resolve one run (names, parameters, ranges) into a ``RunSpec``."""
    task_obj = tasks.create(task, **task_args)
    resolved_model = baselines.resolve(model, **model_args)
    if (task_obj.params().get("test_streams") == 1 and resolved_model.get("norm") == "batch"
            and resolved_model.get("norm_eval") == "batch"):
        raise UserError(f"task.test_streams=1 scores the test split as a batch of one, whose batch statistics "
                        f"are its own sample's, and {model} evaluates with the batch's statistics "
                        f"(norm_eval=batch): use test_streams=0 or >= 2, or norm_eval=population")
    train_cfg = without_inert(build_config(TrainConfig, train, "train"))
    return RunSpec(task=task, task_args=task_obj.params(), model=model,
                   model_args=resolved_model, train=dataclasses.asdict(train_cfg),
                   seed=seed, device=device)


def model_names(entries: Iterable[str]) -> list[str]:
    """A grid entry's models as names, in order: each name as it is (a known one), each
    pattern (``"*lstm*"``) as the names it matches (at least one)."""
    models: list[str] = []
    for pat in entries:
        if any(c in pat for c in "*?["):
            found = baselines.names(pat)
            if not found:
                raise UserError(f"model pattern '{pat}' matches no model; see 'rnnbench list models'")
            models.extend(found)
        else:
            baselines.get(pat)  # an unknown name: its one line, "unknown model ...; choose from: ..."
            models.append(pat)
    return models


def expand(entries: list[dict[str, Any]], seeds: Iterable[int], device: str) -> list[RunSpec]:
    """Expand grid entries (task, task_args, models, model_args, train) into specs.

    List values in ``task_args``, ``model_args`` and ``train`` are sweep axes;
    ``models`` may hold wildcards (``"*lstm*"``). Duplicate specs are dropped.
    """
    device = resolve_device(device)
    specs: dict[str, RunSpec] = {}
    for entry in entries:
        models = model_names(entry["models"])
        for targs in grid(entry.get("task_args", {})):
            for model in models:
                for margs in grid(entry.get("model_args", {})):
                    for targ in grid(entry.get("train", {})):
                        for seed in seeds:
                            s = make_spec(entry["task"], targs, model, margs, targ, seed, device)
                            specs.setdefault(s.run_id, s)
    return list(specs.values())
