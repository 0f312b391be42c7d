"""Checkpoints of a run in progress, so a killed run resumes where it stopped.

A checkpoint holds everything ``train_one``'s loop needs to continue exactly as
an uninterrupted run would: model and optimizer state, every random state
(Python, NumPy, torch CPU and CUDA, and the training-data ``torch.Generator``),
the step, the loop's bookkeeping (best validation value and weights, solved step,
training time, per-step metrics buffered since the last evaluation) and the
metric rows already sent to the sink. Those rows are replayed on resume because
the store deletes a reclaimed run's partial rows, so the stored series of a
resumed run is the same set of rows as that of an uninterrupted one, whichever
executor and process wrote it. On CPU the final metrics are bit-identical
(tests/test_faults.py); timings (``wall_time``, ``train_time_s``) naturally differ.

Checkpoint settings are executor options, not part of a run's spec or identity:
they decide when state is saved, never what is computed. A checkpoint is saved
between steps, when the policy says so (every N steps and/or every S seconds),
to a temporary file that replaces the previous one atomically, so a kill while
saving leaves the last good checkpoint.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import re
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, NamedTuple

import numpy as np
import torch

from suite.errors import UserError

FORMAT = 1
Sink = Callable[[list[tuple], list[tuple]], None]


def _tee(sink: Sink, kept: Callable[[], tuple[list, list]]) -> Sink:
    """``sink``, which also appends every row it is sent to the (metrics, diagnostics)
    lists that ``kept()`` returns, looked up at each call: a resume replaces them."""

    def recording(metrics: list[tuple], diagnostics: list[tuple]) -> None:
        sink(metrics, diagnostics)
        kept_metrics, kept_diagnostics = kept()
        kept_metrics.extend(metrics)
        kept_diagnostics.extend(diagnostics)

    return recording


@dataclass(frozen=True)
class CheckpointPolicy:
    """When to checkpoint: every ``every_steps`` steps and/or every ``every_s`` seconds (0: never)."""

    every_steps: int = 0
    every_s: float = 600.0

    @property
    def enabled(self) -> bool:
        return self.every_steps > 0 or self.every_s > 0


OFF = CheckpointPolicy(0, 0.0)
_UNITS = {"": None, "s": 1.0, "m": 60.0, "h": 3600.0}


def parse_policy(text: str) -> CheckpointPolicy:
    """'500' -> every 500 steps; '30s', '10m', '2h' -> by wall-clock time; '0' -> off."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smh]?)\s*", str(text))
    if not m or (m.group(2) == "" and "." in m.group(1)):
        raise UserError(f"--checkpoint-every '{text}' is not valid; give steps (e.g. 500), "
                        "a duration (30s, 10m, 2h) or 0 for off")
    value, unit = float(m.group(1)), _UNITS[m.group(2)]
    if value == 0:
        return OFF
    return CheckpointPolicy(every_steps=int(value), every_s=0.0) if unit is None else \
        CheckpointPolicy(every_steps=0, every_s=value * unit)


class LoopState(NamedTuple):
    """The training loop's variables between two steps (see ``runner.train_one``)."""

    step: int
    pending: list
    best_val: float | None
    best_step: int
    best_state: dict | None
    solved_step: int | None
    solved_time: float | None
    train_time: float

    @classmethod
    def fresh(cls) -> "LoopState":
        return cls(0, [], None, 0, None, None, None, 0.0)


def checkpoint_path(directory: str | os.PathLike, run_id: str) -> Path:
    return Path(directory) / f"{run_id}.pt"


class Checkpointer:
    """Saves and restores one run's state at ``path``; a no-op when disabled.

    ``identity`` (the spec's JSON) is stored with the state; a checkpoint whose
    identity differs is ignored, never loaded into another run.
    """

    def __init__(self, path: str | os.PathLike | None, identity: str = "",
                 policy: CheckpointPolicy = OFF) -> None:
        self.path = Path(path) if path is not None else None
        self.identity, self.policy = identity, policy
        self.enabled = self.path is not None and policy.enabled
        self._sink: Sink | None = None
        self._metrics: list[tuple] = []
        self._diags: list[tuple] = []
        self._last_step = 0
        self._last_time = time.monotonic()

    def record(self, sink: Sink) -> Sink:
        """Wrap ``sink`` so the rows it is sent can be saved with the state."""
        if not self.enabled:
            return sink
        self._sink = sink
        return _tee(sink, lambda: (self._metrics, self._diags))

    def due(self, step: int) -> bool:
        """Whether to save after ``step`` completed steps."""
        if not self.enabled or step <= self._last_step:
            return False
        p = self.policy
        return bool((p.every_steps and step % p.every_steps == 0)
                    or (p.every_s and time.monotonic() - self._last_time >= p.every_s))

    def save(self, model: torch.nn.Module, opt: torch.optim.Optimizer, gen: torch.Generator,
             state: LoopState) -> None:
        self._write({"model": model.state_dict(), "optimizer": opt.state_dict(), "rng": _rng_state(gen.get_state()),
                     "loop": state._asdict(), "metrics": self._metrics, "diagnostics": self._diags}, state.step)

    def _write(self, payload: dict[str, Any], step: int) -> None:
        """Save ``payload`` (with the format and identity) after ``step`` steps."""
        assert self.path is not None
        payload = {"format": FORMAT, "identity": self.identity, **payload}
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(f"{self.path.name}.{os.getpid()}.tmp")
        with open(tmp, "wb") as f:
            torch.save(payload, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.path)  # atomic: a kill leaves the old or the new checkpoint
        self._last_step, self._last_time = step, time.monotonic()

    def _load(self) -> dict[str, Any] | None:
        """The saved payload, or None: there is none, or it is damaged, of another
        format or of another run (then it is deleted, with a warning)."""
        if not self.enabled or not self.path.exists():
            return None
        try:
            payload = torch.load(self.path, map_location="cpu", weights_only=True)
            ok = isinstance(payload, dict) and payload.get("format") == FORMAT
        except Exception as exc:  # a damaged file (e.g. a disk filled up): start over
            ok, payload = False, f"{type(exc).__name__}: {exc}".splitlines()[0]
        if not ok or payload.get("identity") != self.identity:
            why = payload if isinstance(payload, str) else "another run or format"
            warnings.warn(f"ignoring checkpoint {self.path} ({why}); the run starts from step 0")
            self.delete()
            return None
        return payload

    def _restore(self, payload: dict[str, Any], model: torch.nn.Module, opt: torch.optim.Optimizer,
                 gens: list[torch.Generator], data: list) -> Any:
        """Load the payload's model, optimizer and random states (``data``: the states of
        ``gens``); returns its loop state(s) on the model's device."""
        device = next(iter(model.state_dict().values())).device
        try:
            model.load_state_dict(payload["model"])
            opt.load_state_dict(payload["optimizer"])
            _set_rng_state(payload["rng"])
            for gen, state in zip(gens, data, strict=True):
                gen.set_state(state)
        except Exception:
            self.delete()  # half-loaded state cannot be trusted; a retry starts from step 0
            raise
        return _to_device(payload["loop"], device)

    def resume(self, model: torch.nn.Module, opt: torch.optim.Optimizer,
               gen: torch.Generator) -> LoopState | None:
        """Load the saved state into ``model``, ``opt``, ``gen`` and the RNGs, replay the
        saved rows into the sink, and return the loop state; None when there is none."""
        payload = self._load()
        if payload is None:
            return None
        loop = self._restore(payload, model, opt, [gen], [payload["rng"]["data"]])
        self._metrics, self._diags = list(payload["metrics"]), list(payload["diagnostics"])
        assert self._sink is not None
        self._sink(self._metrics, self._diags)
        self._last_step, self._last_time = loop["step"], time.monotonic()
        return LoopState(**loop)

    def delete(self) -> None:
        """Remove the checkpoint and any temporary file a kill left while saving."""
        if self.path is not None:
            self.path.unlink(missing_ok=True)
            for tmp in self.path.parent.glob(f"{self.path.name}.*.tmp"):
                tmp.unlink(missing_ok=True)


class StackState(NamedTuple):
    """A seed stack's loop between two steps (see ``runner.train_stacked``): the stack's
    step and training time, the stack indices of the seeds still training, and their
    loop states."""

    step: int
    train_time: float
    active: list[int]
    loops: dict[int, LoopState]


def stack_checkpoint_path(directory: str | os.PathLike, run_ids: list[str]) -> Path:
    """One file per unit of stacked runs, named after all of its runs."""
    return Path(directory) / f"stack-{hashlib.sha256(','.join(run_ids).encode()).hexdigest()[:24]}.pt"


def runs_path(path: Path) -> Path:
    """The file beside a stack's checkpoint that lists its unit's run ids (JSON), so that
    what is left of an ended unit can be found (``executors.drop_ended_stack_checkpoints``)."""
    return path.with_name(path.name.removesuffix(".pt") + ".runs.json")


def stack_checkpoints(directory: str | os.PathLike) -> list[tuple[Path, list[str]]]:
    """(checkpoint path, its unit's run ids) of every stack checkpoint in ``directory``
    that names its runs (an unreadable list is skipped)."""
    found = []
    for names in sorted(Path(directory).glob("stack-*.runs.json")):
        try:
            ids = json.loads(names.read_text())
        except (OSError, ValueError):
            continue
        if isinstance(ids, list):
            found.append((names.with_name(names.name.removesuffix(".runs.json") + ".pt"), [str(i) for i in ids]))
    return found


class StackCheckpointer(Checkpointer):
    """Saves and restores a seed stack (``runner.train_stacked``) at ``path``: the
    stack's model and optimizer, every random state with each seed's data generator,
    the ``StackState``, which of the unit's runs the stack holds (``members``, indices
    into the unit that ``identity`` names) and the rows each recorded seed was sent.

    A checkpoint is of the whole unit; a stack resumed after some of its runs were
    recorded (done, or taken by another process) holds them again, trained but no
    longer recorded (``runner.train_stacked``'s runs without a sink)."""

    def __init__(self, path: str | os.PathLike | None, identity: str = "", policy: CheckpointPolicy = OFF,
                 members: list[int] | None = None, run_ids: list[str] | None = None) -> None:
        super().__init__(path, identity, policy)
        self.members = list(members or [])
        self.run_ids = list(run_ids or [])  # the unit's runs, named beside the checkpoint (``runs_path``)
        self._rows: dict[int, tuple[list, list]] = {}  # stack index -> the rows its seed was sent
        self._sinks: list[Sink | None] = []

    def peek(self) -> tuple[list[int], list[int]] | None:
        """(members, stack indices still training) of the saved stack, or None."""
        payload = self._load()
        return None if payload is None else (list(payload["members"]), list(payload["loop"]["active"]))

    def record_runs(self, sinks: list[Sink | None]) -> list[Sink | None]:
        """Wrap each seed's sink (None: a seed not recorded) so its rows are saved too."""
        if not self.enabled:
            return sinks
        self._sinks = sinks
        return [None if sink is None else _tee(sink, lambda i=i: self._rows.setdefault(i, ([], [])))
                for i, sink in enumerate(sinks)]

    def save_stack(self, model: torch.nn.Module, opt: torch.optim.Optimizer, gens: list[torch.Generator],
                   state: StackState) -> None:
        loop = state._replace(loops={i: s._asdict() for i, s in state.loops.items()})._asdict()
        self._write({"model": model.state_dict(), "optimizer": opt.state_dict(),
                     "rng": _rng_state([g.get_state() for g in gens]), "loop": loop, "members": self.members,
                     "rows": self._rows}, state.step)
        names = runs_path(self.path)
        if self.run_ids and not names.exists():
            names.write_text(json.dumps(self.run_ids))

    def delete(self) -> None:
        super().delete()
        if self.path is not None:
            runs_path(self.path).unlink(missing_ok=True)

    def resume_stack(self, model: torch.nn.Module, opt: torch.optim.Optimizer,
                     gens: list[torch.Generator]) -> StackState | None:
        """Load the saved stack into ``model``, ``opt``, ``gens`` and the RNGs, replay
        the saved rows of each recorded seed into its sink, and return the stack's loop
        state; None when there is none, or when it holds other runs than ``members`` or
        had stopped a seed that is to be recorded (another process sharing the store
        saved it since ``executors.train_stack_checkpointed`` chose it: nothing is
        loaded, and the stack starts from step 0)."""
        payload = self._load()
        if payload is None:
            return None
        recorded = {i for i, sink in enumerate(self._sinks) if sink is not None}
        if list(payload["members"]) != self.members or not recorded <= set(payload["loop"]["active"]):
            warnings.warn(f"ignoring checkpoint {self.path} (it holds other runs, or stopped one to be recorded); "
                          "the stack starts from step 0")
            return None
        loop = self._restore(payload, model, opt, gens, payload["rng"]["data"])
        for i, sink in enumerate(self._sinks):
            if sink is not None:  # rows of seeds recorded no longer are not replayed, nor kept
                self._rows[i] = tuple(list(r) for r in payload["rows"].get(i, ([], [])))
                sink(*self._rows[i])
        self._last_step, self._last_time = loop["step"], time.monotonic()
        return StackState(loop["step"], loop["train_time"], list(loop["active"]),
                          {int(i): LoopState(**s) for i, s in loop["loops"].items()})


def _rng_state(data: Any) -> dict[str, Any]:
    """Every random state: Python's, NumPy's, torch's (CPU and CUDA), and ``data``: the
    state of the data generator (a list of them for a stack)."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    return {"python": random.getstate(), "numpy": (kind, keys.tolist(), pos, has_gauss, gauss),
            "torch": torch.get_rng_state(), "data": data,
            # only a process that already uses CUDA has CUDA generators worth saving
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else []}


def _set_rng_state(rng: dict[str, Any]) -> None:
    """The process-wide random states of ``_rng_state`` (the data generators: ``_restore``)."""
    version, internal, gauss_next = rng["python"]
    random.setstate((version, tuple(internal), gauss_next))
    kind, keys, pos, has_gauss, gauss = rng["numpy"]
    np.random.set_state((kind, np.asarray(keys, dtype=np.uint32), pos, has_gauss, gauss))
    torch.set_rng_state(rng["torch"])
    if rng["cuda"]:
        torch.cuda.set_rng_state_all(rng["cuda"])


def _to_device(obj: Any, device: torch.device) -> Any:
    """Tensors inside lists, tuples and dicts moved to ``device`` (buffered step metrics
    are stacked with new ones, so they must live where the new ones do)."""
    if isinstance(obj, torch.Tensor):
        return obj.to(device)
    if isinstance(obj, dict):
        return {k: _to_device(v, device) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_to_device(v, device) for v in obj)
    return obj
