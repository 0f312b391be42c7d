"""Executors: how runs are scheduled. ``local`` runs in this process, or with
``jobs > 1`` in N worker processes; ``ray`` (suite/ray_executor.py) runs each as
a Ray task on a cluster.

Locally every worker claims a run in the store before training it and writes its
rows itself, so several suite processes can share one store safely. Each worker
process is its own single-process pool: when one dies (killed by the OOM killer,
a crash in native code) only the run it held is marked failed, with the reason,
and a fresh worker takes its place. A worker exits by itself when the suite
process that started it dies (even by SIGKILL), so a restarted suite finds the
runs it held reclaimable instead of still owned by an orphan.
"""

from __future__ import annotations

import dataclasses
import json
import multiprocessing as mp
import os
import threading
import time
import traceback
import warnings
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path
from typing import Callable, Iterable

from suite.checkpoint import (CheckpointPolicy, Checkpointer, StackCheckpointer, checkpoint_path,
                              stack_checkpoint_path, stack_checkpoints)
from suite.env import environment
from suite.runner import NotStackable, RunResult, Sink, stackable, train_one, train_stacked
from suite.spec import RunSpec
from suite.store import FINISHED, ClaimLost, Store, owner_id

Progress = Callable[[RunSpec, str, dict], None]


@dataclasses.dataclass(frozen=True)
class RunOptions:
    """How runs execute, as opposed to what they compute: none of this is part of a
    run's identity (a resumed run gives the same numbers as an uninterrupted one)."""

    retry_failed: bool = False
    checkpoint: CheckpointPolicy = CheckpointPolicy()
    checkpoint_dir: str | None = None  # None: checkpoints/ beside the store
    stack_seeds: int = 1  # > 1: train up to this many seeds of one spec as one stack

    def checkpoints_for(self, store_path: str | os.PathLike) -> str:
        return str(Path(self.checkpoint_dir or Path(store_path).resolve().parent / "checkpoints"))


def failure_reason(exc: BaseException) -> str:
    """The last line of an exception, as stored in a failed run's ``reason``."""
    last = traceback.format_exception_only(type(exc), exc)[-1].strip()
    return last[:500]


def train_checkpointed(spec: RunSpec, sink: Sink, directory: str, policy: CheckpointPolicy,
                       device: str | None = None) -> RunResult:
    """``train_one`` resuming from and saving to the run's checkpoint file.

    The checkpoint is deleted once the run has a result (done or diverged), before
    the caller records it: a kill in between costs a restart from step 0, never a
    wrong result. A run that raises keeps its checkpoint for ``--retry-failed``.
    ``device`` overrides where it trains (a Ray worker's GPU) without changing its identity.
    """
    ckpt = Checkpointer(checkpoint_path(directory, spec.run_id), spec.identity(), policy)
    run = spec if device is None else dataclasses.replace(spec, device=device)
    result = train_one(run, sink, ckpt)
    ckpt.delete()
    return result


def train_stack_checkpointed(unit: list[RunSpec], claimed: list[RunSpec], sinks: list[Sink],
                             on_result: Callable[[int, RunResult], None], directory: str,
                             policy: CheckpointPolicy, device: str | None = None) -> None:
    """``runner.train_stacked`` of the ``claimed`` runs of a unit of ``stack_groups``
    (``sinks`` and ``on_result``'s index follow ``claimed``), resuming from and saving
    to the unit's checkpoint (``stack_checkpoint_path``).

    Where the checkpoint holds a stack in which every claimed run is still training,
    that stack goes on, with the same seeds: those not claimed now (recorded since the
    checkpoint, or another process's) train on unrecorded. Else the whole unit trains
    from step 0, its runs not claimed unrecorded (a checkpoint of another stack is
    deleted): the claimed runs get the numbers they get in that stack, bit for bit, not
    those of a smaller stack (a kill between two of a stack's records, before its first
    checkpoint, left the rest to retrain as one). The checkpoint is deleted once the stack has ended; a
    stack that raises keeps it for ``--retry-failed``, as one run does. ``device``
    overrides where it trains (a Ray worker's GPU) without changing its identity.
    """
    ids = [s.run_id for s in unit]
    path, identity = stack_checkpoint_path(directory, ids), json.dumps([s.identity() for s in unit])
    mine = [ids.index(s.run_id) for s in claimed]
    if not mine:
        raise NotStackable("no runs to stack")
    saved = StackCheckpointer(path, identity, policy).peek()
    members = list(range(len(unit)))  # a stack's numbers are those of its seeds together
    if saved is not None:
        if set(mine) <= {saved[0][i] for i in saved[1]}:
            members = saved[0]
        else:
            warnings.warn(f"ignoring checkpoint {path} (a run it had ended is to run again); the stack starts "
                          "from step 0")
            StackCheckpointer(path).delete()
    if len(members) < 2:
        raise NotStackable("fewer than two runs to stack")
    ckpt = StackCheckpointer(path, identity, policy, members, ids)
    index = {m: k for k, m in enumerate(mine)}  # unit index -> index in claimed
    specs = [unit[m] if device is None else dataclasses.replace(unit[m], device=device) for m in members]
    train_stacked(specs, [sinks[index[m]] if m in index else None for m in members],
                  on_result=lambda i, res: on_result(index[members[i]], res), checkpoint=ckpt)
    ckpt.delete()


def drop_ended_stack_checkpoints(store: Store, directory: str) -> None:
    """Delete the stack checkpoints whose runs have all ended done or diverged: a kill
    after a stack recorded its last run (before it deleted its checkpoint) leaves one, and
    so does a change of ``--stack-seeds`` or of the seeds that regroups the runs. So does
    a kill between two of a stack's records where the next suite is given only the rest,
    not the grid (``run_local(grid=)``): it runs them as a unit of their own, with its own
    checkpoint, and the old unit's ends with them; hence this runs as a suite ends as well
    as when it starts. Where a run failed the checkpoint stays,
    for ``--retry-failed``. Each checkpoint names its runs in a file beside it
    (``checkpoint.runs_path``)."""
    for path, run_ids in stack_checkpoints(directory):
        if run_ids and all(store.status_of(r) in ("done", "diverged") for r in run_ids):
            StackCheckpointer(path).delete()


def execute(spec: RunSpec, store: Store, options: RunOptions = RunOptions()) -> str | None:
    """Claim, train and record one run. Returns its final status, or None when it was
    not ours to run (done already, running in another live process, or taken over)."""
    owner = owner_id()
    if not store.claim(spec.run_id, owner, retry_failed=options.retry_failed):
        return None
    return _train_claimed(spec, store, options, owner)


def _fail(store: Store, spec: RunSpec, exc: BaseException, owner: str) -> str | None:
    try:
        store.finish(spec.run_id, "failed", None, failure_reason(exc), env=environment(spec.device), owner=owner)
    except ClaimLost:
        return None
    return "failed"


def _train_claimed(spec: RunSpec, store: Store, options: RunOptions, owner: str) -> str | None:
    try:
        result = train_checkpointed(spec, lambda m, d: store.write(spec.run_id, m, d, owner=owner),
                                    options.checkpoints_for(store.path), options.checkpoint)
        store.finish(spec.run_id, result.status, result.summary, result.reason, env=result.env, owner=owner)
        return result.status
    except ClaimLost:
        return None
    except KeyboardInterrupt:
        store.release(spec.run_id, owner)
        raise
    except Exception as exc:  # a failing run is recorded and the suite goes on
        return _fail(store, spec, exc, owner)


def units_to_run(specs: list[RunSpec], size: int, grid: list[RunSpec] | None = None,
                 stackable: Callable[[RunSpec], bool] | None = None) -> list[list[RunSpec]]:
    """``stack_groups`` of the whole ``grid`` (by default ``specs``, the runs to run),
    keeping the units that hold a run of ``specs`` (a run of ``specs`` outside the grid,
    a unit of its own): where the grid and ``size`` are those of the suite that first
    trained them, a unit keeps the seeds its stack had, those done since training along
    unrecorded (``train_stack_checkpointed``), so that the others get the numbers they
    would have had in an uninterrupted suite."""
    if grid is None or size < 2:
        return stack_groups(specs, size, stackable or can_stack)
    todo = {s.run_id for s in specs}
    units = [u for u in stack_groups(grid, size, stackable or can_stack) if any(s.run_id in todo for s in u)]
    inside = {s.run_id for u in units for s in u}
    return units + [[s] for s in specs if s.run_id not in inside]


def stack_groups(specs: Iterable[RunSpec], size: int,
                 stackable: Callable[[RunSpec], bool] = lambda spec: True) -> list[list[RunSpec]]:
    """``specs`` as units of work: with ``size`` > 1, runs that differ only in their
    seed and can be stacked (``stackable``, asked once per configuration) in groups of
    up to ``size``, in order of first appearance; every other run alone."""
    units: list[list[RunSpec]] = []
    open_group: dict[str, list[RunSpec]] = {}
    verdicts: dict[str, bool] = {}
    for spec in specs:
        key = dataclasses.replace(spec, seed=0).to_json()
        if size > 1 and key not in verdicts:
            verdicts[key] = stackable(spec)
        group = open_group.get(key)
        if size < 2 or not verdicts[key] or group is None or len(group) >= size:
            group = open_group[key] = []
            units.append(group)
        group.append(spec)
    return units


def can_stack(spec: RunSpec) -> bool:
    """``runner.stackable``, False where asking fails (the runs then fail one by one)."""
    try:
        return stackable(spec)
    except Exception:
        return False


def execute_unit(specs: list[RunSpec], store: Store, options: RunOptions = RunOptions(),
                 wanted: set[str] | None = None) -> dict[str, str | None]:
    """Claim and train a unit of ``stack_groups``: one run as ``execute`` does; several
    as one seed stack (``train_stack_checkpointed``; a run's own checkpoint, which an
    earlier, unstacked attempt left, is deleted as the run ends). Only the runs in
    ``wanted`` (default: all) are claimed; the others train along unrecorded. Each run is
    recorded as soon as it ends; if the stack fails, the runs it had not finished fail
    with it. Where the runs turn out not to be stackable, they are given back and run one
    after another. Returns run_id -> final status (None: not ours)."""
    if len(specs) == 1:
        return {specs[0].run_id: execute(specs[0], store, options)}
    owner = owner_id()
    statuses: dict[str, str | None] = {s.run_id: None for s in specs}
    claimed = [s for s in specs if (wanted is None or s.run_id in wanted)
               and store.claim(s.run_id, owner, retry_failed=options.retry_failed)]
    ended: set[str] = set()
    directory = options.checkpoints_for(store.path)
    if not claimed:
        return statuses

    def record(i: int, res: RunResult) -> None:
        spec = claimed[i]
        try:
            store.finish(spec.run_id, res.status, res.summary, res.reason, env=res.env, owner=owner)
            statuses[spec.run_id] = res.status
        except ClaimLost:
            pass
        ended.add(spec.run_id)  # recorded (or no longer ours); any other error: still ours
        Checkpointer(checkpoint_path(directory, spec.run_id)).delete()

    def give_back() -> None:
        for spec in claimed:
            if spec.run_id not in ended:
                store.release(spec.run_id, owner)

    sinks = [lambda m, d, rid=spec.run_id: store.write(rid, m, d, owner=owner) for spec in claimed]
    try:
        train_stack_checkpointed(specs, claimed, sinks, record, directory, options.checkpoint)
    except NotStackable:  # found out before training: nothing has ended yet
        give_back()
        for spec in claimed:
            statuses[spec.run_id] = execute(spec, store, options)
    except KeyboardInterrupt:
        give_back()
        raise
    except ClaimLost:  # one run was taken over by another process: give the others back
        give_back()
    except Exception as exc:  # the runs still in the stack are recorded failed
        for spec in claimed:
            if spec.run_id not in ended:
                statuses[spec.run_id] = _fail(store, spec, exc, owner)
    return statuses


# -- worker processes ---------------------------------------------------------
def _exit_with_parent(parent: int) -> None:
    """Worker-process initializer: quit when the suite process dies (SIGKILL included),
    so no orphan keeps training and holding runs that a restarted suite should take."""
    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(0.2)
        os._exit(1)

    threading.Thread(target=watch, name="exit-with-parent", daemon=True).start()


def _init_worker(parent: int, threads: int) -> None:
    import torch

    torch.set_num_threads(threads)  # N workers share the cores instead of oversubscribing them
    _exit_with_parent(parent)


def _worker(spec_jsons: list[str], store_path: str, options: RunOptions,
            wanted: set[str] | None = None) -> dict[str, str | None]:
    specs = [RunSpec.from_json(j) for j in spec_jsons]
    store = Store(store_path)
    try:
        return execute_unit(specs, store, options, wanted)
    finally:
        store.close()


def _untaken(unit: list[RunSpec], statuses: dict[str, str | None], claimable: set[str]) -> set[str]:
    """The runs of ``unit`` a worker that died left pending (it had not claimed them) and
    that may run again (``claimable``). They go back in their whole unit, the unit's
    other runs training along unrecorded, not as a smaller stack: their seeds then get the
    numbers of the stack they belong to."""
    return {s.run_id for s in unit if statuses[s.run_id] == "pending" and s.run_id in claimable}


def _fail_dead_worker_runs(store: Store, run_ids: list[str], wait_s: float = 10.0) -> None:
    """Mark the runs a worker that just died held failed. Its pool reports the death as
    the process closes its files, a moment before the kernel shows it as exited, so
    wait (at most ``wait_s`` in all) for the store's liveness check to agree; once it
    does for one run, the others of that worker fail at once and runs that another,
    live process holds are left alone."""
    reason = "worker process died while running (killed, e.g. by the out-of-memory killer, or crashed)"
    deadline = time.monotonic() + wait_s
    running = [r for r in run_ids if store.status_of(r) == "running"]
    while running:
        if any([store.fail_orphan(r, reason) for r in running]):
            return
        if time.monotonic() > deadline:
            return
        time.sleep(0.05)
        running = [r for r in running if store.status_of(r) == "running"]


def _new_slot(threads: int) -> ProcessPoolExecutor:
    # Spawned (not forked) so CUDA initialises cleanly in each worker.
    return ProcessPoolExecutor(max_workers=1, mp_context=mp.get_context("spawn"),
                               initializer=_init_worker, initargs=(os.getpid(), threads))


def run_local(specs: Iterable[RunSpec], store_path: str | Path, *, jobs: int = 1,
              options: RunOptions = RunOptions(), progress: Progress | None = None,
              grid: list[RunSpec] | None = None) -> dict[str, str | None]:
    """Run ``specs`` here; returns run_id -> final status (None: skipped: done already,
    failed without ``retry_failed``, or running in another live process). ``grid``: the
    whole grid ``specs`` come from, which seed stacks are formed over (``units_to_run``)."""
    specs = list(specs)
    wanted = {s.run_id for s in specs}
    results: dict[str, str | None] = {}
    report = progress or (lambda s, st, info: None)
    store = Store(store_path)
    store.add_runs(specs)  # registers new ones as pending; a no-op for known runs
    drop_ended_stack_checkpoints(store, options.checkpoints_for(store_path))
    units = units_to_run(specs, options.stack_seeds, grid)

    def record(statuses: dict[str, str | None], unit: list[RunSpec]) -> None:
        for spec in unit:
            # not the grid's other runs, trained along in a stack; once each (a unit put
            # back after its worker died comes back whole)
            if spec.run_id in wanted and spec.run_id not in results:
                results[spec.run_id] = status = statuses[spec.run_id]
                report(spec, status or "skipped", store.summary_of(spec.run_id))

    try:
        if jobs <= 1:
            for unit in units:
                record(execute_unit(unit, store, options, wanted), unit)
            drop_ended_stack_checkpoints(store, options.checkpoints_for(store_path))
            return results
        threads = max(1, (os.cpu_count() or 1) // jobs)
        slots = [_new_slot(threads) for _ in range(min(jobs, len(units)))]
        queue = [(unit, wanted) for unit in reversed(units)]  # a unit and the runs of it to claim
        running: dict[Future, tuple[int, list[RunSpec]]] = {}
        requeued: set[str] = set()

        def submit(i: int, unit: list[RunSpec], claim: set[str]) -> None:
            jsons = [spec.to_json() for spec in unit]
            try:
                fut = slots[i].submit(_worker, jsons, str(store_path), options, claim)
            except BrokenProcessPool:  # its worker died while idle: replace it
                slots[i] = _new_slot(threads)
                fut = slots[i].submit(_worker, jsons, str(store_path), options, claim)
            running[fut] = (i, unit)

        try:
            while queue or running:
                busy = {i for i, _ in running.values()}
                for i in range(len(slots)):
                    if i not in busy and queue:
                        submit(i, *queue.pop())
                finished, _ = wait(running, return_when=FIRST_COMPLETED)
                for fut in finished:
                    i, unit = running.pop(fut)
                    try:
                        statuses = fut.result()
                    except BrokenProcessPool:  # the worker died: only its runs fail
                        slots[i].shutdown(wait=False)
                        slots[i] = _new_slot(threads)
                        _fail_dead_worker_runs(store, [spec.run_id for spec in unit])
                        statuses = {spec.run_id: store.status_of(spec.run_id) for spec in unit}
                        again = _untaken(unit, statuses, wanted - requeued)
                        if again:  # it died before taking these runs: not their fault, run them again
                            requeued |= again
                            queue.append((unit, again))
                        unit = [s for s in unit if s.run_id not in again]
                        statuses = {k: (st if st in FINISHED else None) for k, st in statuses.items()}
                    record(statuses, unit)
        finally:
            for slot in slots:
                slot.shutdown(wait=True, cancel_futures=True)
        drop_ended_stack_checkpoints(store, options.checkpoints_for(store_path))
        return results
    finally:
        store.close()
