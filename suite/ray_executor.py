"""The Ray executor: one Ray task per run (or seed stack); the driver alone writes the store.

Ray (Moritz et al. 2018, "Ray: A Distributed Framework for Emerging AI
Applications") schedules the tasks on whatever cluster ``ray.init`` joins: a
local instance, a cluster started with ``ray start`` (by hand, by the cluster
launcher, or inside a Slurm allocation), each task asking for ``num_gpus``
(fractions let several small runs share one GPU) and ``num_cpus``.

Streaming. A task is a Ray generator: it trains in a thread and yields each batch
of metric rows as the runner flushes it (once per evaluation), then the result.
With ``--stack-seeds N`` a task trains up to N seeds of one spec as one stack
(``runner.train_stacked``) on the resources of one run, and streams every seed's
rows and result as its own run.
The driver waits on all running generators at once (``ray.wait``), writes each
batch in one transaction as it arrives and records the result. So the SQLite
file, which must not be written over a network file system, is only touched on
the driver's machine; rows of runs in flight are in the store as they happen;
and a killed driver loses only its runs in flight, which a restart reclaims
(and resumes from their checkpoints when the checkpoint directory is shared).

Faults. Ray does not retry a task (``max_retries=0``): an exception in training
(CUDA out of memory, a bug) is caught in the worker and recorded as the run's
failure reason, a NaN marks the run diverged (runner), and a worker or node that
dies fails only its run, with Ray's reason. The suite goes on either way, and
``rnnbench run --retry-failed`` reruns those runs.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import queue
import threading
import time
from collections import deque
from typing import Any, Callable, Iterator

from suite.checkpoint import CheckpointPolicy, Checkpointer, checkpoint_path
from suite.env import environment
from suite.errors import UserError
from suite.executors import (Progress, RunOptions, can_stack, drop_ended_stack_checkpoints, failure_reason,
                             train_checkpointed, train_stack_checkpointed, units_to_run)
from suite.runner import NotStackable, RunResult, Sink
from suite.spec import RunSpec
from suite.store import ClaimLost, Store, owner_id

HEARTBEAT_S = 60.0  # how often the driver marks the runs it waits on as alive


def import_ray() -> Any:
    try:
        import ray
    except ImportError:
        raise UserError("--executor ray needs Ray, which is not installed: "
                        "pip install 'rnnbench[ray]'") from None
    return ray


def stream_unit(unit_jsons: list[str], claimed_ids: list[str], directory: str, policy: CheckpointPolicy,
                threads: int) -> Iterator[tuple]:
    """The Ray task for a unit of ``stack_groups``, of which the driver claimed the runs
    ``claimed_ids``: one run, or seeds of one spec trained as one stack
    (``executors.train_stack_checkpointed``, which may resume the unit's stack with runs
    the driver did not claim, unrecorded). It yields, with i the index of a claimed run,
    ``("rows", i, metrics, diagnostics)`` per flush of run i, ``("result", i, status,
    summary, reason, env)`` as run i ends, and ``("failed", reason, env)`` when training
    raised: every run of the unit that had not ended fails. A unit that turns out not to
    be stackable yields ``("unstackable", why)`` before training anything (the driver
    then runs its seeds as units of their own)."""
    import torch

    torch.set_num_threads(threads)
    unit = [RunSpec.from_json(j) for j in unit_jsons]
    specs = [s for s in unit if s.run_id in claimed_ids]
    # Ray shows a task only the GPUs it was given, so the first visible one is ours.
    device = "cuda" if specs[0].device.startswith("cuda") else None
    out: queue.Queue = queue.Queue()

    def sink(i: int) -> Sink:
        return lambda m, d: out.put(("rows", i, m, d))

    def ended(i: int, res: RunResult) -> None:
        if len(unit) > 1:  # a checkpoint an earlier, unstacked attempt left
            Checkpointer(checkpoint_path(directory, specs[i].run_id)).delete()
        out.put(("result", i, res.status, res.summary, res.reason, res.env))

    def work() -> None:
        try:
            if len(unit) == 1:
                ended(0, train_checkpointed(specs[0], sink(0), directory, policy, device))
            else:
                train_stack_checkpointed(unit, specs, [sink(i) for i in range(len(specs))], ended, directory,
                                         policy, device)
        except NotStackable as exc:
            out.put(("unstackable", str(exc)))
        except Exception as exc:
            out.put(("failed", failure_reason(exc), environment(device or specs[0].device)))
        finally:
            out.put(("end",))

    threading.Thread(target=work, name=f"train-{specs[0].run_id}", daemon=True).start()
    while True:
        item = out.get()
        if item[0] == "end":
            return
        yield item


def _ray_reason(exc: BaseException) -> str:
    cause = getattr(exc, "cause", None)
    if isinstance(cause, BaseException):  # RayTaskError: the task itself raised
        return "ray task: " + failure_reason(cause)
    first = (str(exc).strip().splitlines() or [""])[0]
    return f"ray: {type(exc).__name__}: {first}"[:500]


def _resources(specs: list[RunSpec], gpus_per_run: float | None, cpus_per_run: float) -> tuple[float, float]:
    cuda = any(s.device.startswith("cuda") for s in specs)
    gpus = (1.0 if cuda else 0.0) if gpus_per_run is None else gpus_per_run
    if cpus_per_run <= 0:
        raise UserError(f"--cpus-per-run {cpus_per_run} must be > 0")
    if gpus < 0 or (gpus > 1 and gpus != int(gpus)):
        raise UserError(f"--gpus-per-run {gpus} must be a fraction in (0, 1] or a whole number")
    if cuda and gpus == 0:
        raise UserError("--gpus-per-run 0 with runs on cuda; give a GPU share (e.g. 0.25) or use --device cpu")
    return gpus, cpus_per_run


def run_ray(specs: list[RunSpec], store_path: str, *, address: str | None = None, jobs: int | None = None,
            gpus_per_run: float | None = None, cpus_per_run: float = 1.0,
            options: RunOptions = RunOptions(), progress: Progress | None = None,
            grid: list[RunSpec] | None = None) -> dict[str, str | None]:
    """Run ``specs`` as Ray tasks; returns run_id -> final status (None: skipped).
    ``grid``: as ``executors.run_local``'s.

    ``address``: None starts a local Ray instance (or joins ``RAY_ADDRESS``), ``auto``
    joins the cluster running on this machine, ``HOST:PORT`` a remote head. ``jobs``
    caps the runs in flight (default: as many as the cluster's resources hold).
    """
    ray = import_ray()
    specs = list(specs)
    if not specs:
        return {}
    gpus, cpus = _resources(specs, gpus_per_run, cpus_per_run)
    started = not ray.is_initialized()
    if started:
        try:
            ray.init(address=address, include_dashboard=False, logging_level=logging.WARNING)
        except (ConnectionError, ValueError) as exc:
            raise UserError(f"cannot join the Ray cluster at {address or 'RAY_ADDRESS'}: "
                            f"{str(exc).splitlines()[0]}") from None
    try:
        return _drive(ray, specs, store_path, jobs, gpus, cpus, options, progress, grid)
    finally:
        if started:
            ray.shutdown()


def _capacity(ray: Any, gpus: float, cpus: float) -> int:
    """Runs the cluster can hold at once for these per-run resources."""
    total = ray.cluster_resources()
    n = total.get("CPU", 0.0) // cpus
    if gpus:
        if not total.get("GPU"):
            raise UserError("the Ray cluster has no GPU but the runs ask for one; "
                            "use --device cpu or add GPU nodes")
        n = min(n, total["GPU"] // gpus)
    return max(1, int(n))


class _Unit:
    """The runs of one Ray task (claimed by this driver) and which of them have ended."""

    def __init__(self, specs: list[RunSpec]) -> None:
        self.specs = specs
        self.open = [spec.run_id for spec in specs]  # not yet ended, in order

    def end(self, run_id: str) -> None:
        self.open.remove(run_id)

    def open_specs(self) -> list[RunSpec]:
        """The runs not yet ended, as a list of their own (ending one does not disturb it)."""
        return [s for s in self.specs if s.run_id in self.open]


def _record(store: Store, unit: _Unit, item: tuple, owner: str, ended: Callable[[RunSpec, str | None], None]) -> None:
    """Write one message of a unit's stream; ``ended(run, status)`` for each run it ends.
    ``ClaimLost`` from a run's rows or result propagates (the driver gives the unit up);
    a failure of the whole stack fails each open run that is still this driver's."""
    if item[0] == "rows":
        store.write(unit.specs[item[1]].run_id, item[2], item[3], owner=owner)
        return
    if item[0] == "result":
        _, i, status, summary, reason, env = item
        spec = unit.specs[i]
        store.finish(spec.run_id, status, summary, reason, env=env, owner=owner)
        unit.end(spec.run_id)
        ended(spec, status)
        return
    _, reason, env = item
    for spec in unit.open_specs():
        _end(store, unit, spec, "failed", reason, env, owner, ended)


def _end(store: Store, unit: _Unit, spec: RunSpec, status: str | None, reason: str | None, env: dict | None,
         owner: str, ended: Callable[[RunSpec, str | None], None]) -> None:
    """End one open run of ``unit``: recorded with ``status``, or given back (None). A run
    another driver has taken over ends as not ours (None). The run leaves ``unit.open``
    only once the store has it, so an error here leaves it to the driver's cleanup."""
    if status is None:
        store.release(spec.run_id, owner)
    else:
        try:
            store.finish(spec.run_id, status, None, reason, env=env, owner=owner)
        except ClaimLost:
            status = None
    unit.end(spec.run_id)
    ended(spec, status)


def _drive(ray: Any, specs: list[RunSpec], store_path: str, jobs: int | None, gpus: float, cpus: float,
           options: RunOptions, progress: Progress | None, grid: list[RunSpec] | None) -> dict[str, str | None]:
    # RNNBENCH_* settings (data and cache folders) reach workers on other machines too
    forward = {k: v for k, v in os.environ.items() if k.startswith("RNNBENCH_")}
    task = ray.remote(stream_unit).options(num_cpus=cpus, num_gpus=gpus, max_retries=0,
                                           runtime_env={"env_vars": forward} if forward else None)
    directory = options.checkpoints_for(store_path)
    report = progress or (lambda s, st, info: None)
    owner = owner_id()
    store = Store(store_path)
    store.add_runs(specs)
    drop_ended_stack_checkpoints(store, directory)
    todo = deque(units_to_run(specs, options.stack_seeds, grid, can_stack))
    wanted = {s.run_id for s in specs}
    running: dict[Any, _Unit] = {}  # generator -> its runs
    results: dict[str, str | None] = {}

    def ended(spec: RunSpec, status: str | None) -> None:
        if spec.run_id in wanted:  # not the grid's runs done before, trained along in a stack
            results[spec.run_id] = status
            report(spec, status or "skipped", store.summary_of(spec.run_id))

    def give_up(gen: Any, unit: _Unit, status: str | None, reason: str | None = None) -> None:
        """End the unit's open runs: failed with ``reason``, or given back (status None)."""
        for spec in unit.open_specs():
            _end(store, unit, spec, status, reason, None, owner, ended)
        running.pop(gen)

    def split(gen: Any, unit: _Unit) -> None:
        """A unit its task found unstackable (nothing trained): its runs, given back, go
        to the front of the queue as units of their own."""
        for run_id in unit.open[:]:
            store.release(run_id, owner)
            unit.end(run_id)
        running.pop(gen)
        todo.extendleft([spec] for spec in reversed(unit.specs))

    beat = time.monotonic()
    try:
        while todo or running:
            window = (jobs or _capacity(ray, gpus, cpus)) if todo else 0
            while todo and len(running) < window:
                claimed, unit = [], todo.popleft()
                for spec in unit:  # the grid's others train along unrecorded
                    if spec.run_id in wanted and store.claim(spec.run_id, owner, retry_failed=options.retry_failed):
                        claimed.append(spec)
                    else:
                        ended(spec, None)
                if claimed:
                    gen = task.remote([s.to_json() for s in unit], [s.run_id for s in claimed], directory,
                                      options.checkpoint, max(1, int(cpus)))
                    running[gen] = _Unit(claimed)
            if not running:
                continue
            ready, _ = ray.wait(list(running), num_returns=1, timeout=HEARTBEAT_S)
            if time.monotonic() - beat >= HEARTBEAT_S:  # runs between flushes are alive too
                store.heartbeat([r for u in running.values() for r in u.open], owner)
                beat = time.monotonic()
            for gen in ready:
                unit = running[gen]
                try:
                    item = ray.get(next(gen))
                except StopIteration:
                    give_up(gen, unit, "failed", "ray task ended without a result")
                    continue
                except ray.exceptions.RayError as exc:  # the worker or its node died
                    give_up(gen, unit, "failed", _ray_reason(exc))
                    continue
                if item[0] == "unstackable":
                    split(gen, unit)
                    continue
                try:
                    _record(store, unit, item, owner, ended)
                except ClaimLost:  # another driver took a run over; its numbers win
                    ray.cancel(gen)
                    give_up(gen, unit, None)
                    continue
                if not unit.open:
                    running.pop(gen)
        drop_ended_stack_checkpoints(store, directory)  # a unit regrouped after a kill ended with its runs
        return results
    except BaseException:
        for gen, unit in running.items():  # give runs in flight back: pending again
            for run_id in unit.open:
                store.release(run_id, owner)
            try:
                ray.cancel(gen, force=True)
            except Exception:  # already finished, or Ray is going down anyway
                pass
        raise
    finally:
        store.close()
