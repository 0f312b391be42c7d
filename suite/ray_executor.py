"""The Ray executor: every run is one Ray task; the driver is the only store writer.

Ray (Moritz et al. 2018, "Ray: A Distributed Framework for Emerging AI
Applications") schedules the tasks on whatever cluster ``ray.init`` joins: a
local instance, a cluster started with ``ray start`` (by hand, by the cluster
launcher, or inside a Slurm allocation), each task asking for ``num_gpus``
(fractions let several small runs share one GPU) and ``num_cpus``.

Streaming. A task is a Ray generator: it trains in a thread and yields each batch
of metric rows as the runner flushes it (once per evaluation), then the result.
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

import logging
import os
import queue
import threading
import time
from collections import deque
from typing import Any, Iterator

from suite.checkpoint import CheckpointPolicy
from suite.env import environment
from suite.errors import UserError
from suite.executors import Progress, RunOptions, failure_reason, train_checkpointed
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


def stream_run(spec_json: str, directory: str, policy: CheckpointPolicy, threads: int) -> Iterator[tuple]:
    """The Ray task: ``("rows", metrics, diagnostics)`` per flush, then
    ``("result", status, summary, reason, env)`` or ``("failed", reason, env)``."""
    import torch

    torch.set_num_threads(threads)
    spec = RunSpec.from_json(spec_json)
    # Ray shows a task only the GPUs it was given, so the first visible one is ours.
    device = "cuda" if spec.device.startswith("cuda") else None
    out: queue.Queue = queue.Queue()

    def work() -> None:
        try:
            res = train_checkpointed(spec, lambda m, d: out.put(("rows", m, d)), directory, policy, device)
            out.put(("result", res.status, res.summary, res.reason, res.env))
        except Exception as exc:
            out.put(("failed", failure_reason(exc), environment(device or spec.device)))

    threading.Thread(target=work, name=f"train-{spec.run_id}", daemon=True).start()
    while True:
        item = out.get()
        yield item
        if item[0] != "rows":
            return


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
            options: RunOptions = RunOptions(), progress: Progress | None = None) -> dict[str, str | None]:
    """Run ``specs`` as Ray tasks; returns run_id -> final status (None: skipped).

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
        return _drive(ray, specs, store_path, jobs, gpus, cpus, options, progress)
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


def _record(store: Store, run_id: str, item: tuple, owner: str) -> str | None:
    """Write one message of a run's stream; returns the run's final status once it has one."""
    if item[0] == "rows":
        store.write(run_id, item[1], item[2], owner=owner)
        return None
    if item[0] == "result":
        _, status, summary, reason, env = item
    else:
        (_, reason, env), status, summary = item, "failed", None
    store.finish(run_id, status, summary, reason, env=env, owner=owner)
    return status


def _drive(ray: Any, specs: list[RunSpec], store_path: str, jobs: int | None, gpus: float, cpus: float,
           options: RunOptions, progress: Progress | None) -> dict[str, str | None]:
    # RNNBENCH_* settings (data and cache folders) reach workers on other machines too
    forward = {k: v for k, v in os.environ.items() if k.startswith("RNNBENCH_")}
    task = ray.remote(stream_run).options(num_cpus=cpus, num_gpus=gpus, max_retries=0,
                                          runtime_env={"env_vars": forward} if forward else None)
    directory = options.checkpoints_for(store_path)
    report = progress or (lambda s, st, info: None)
    owner = owner_id()
    store = Store(store_path)
    store.add_runs(specs)
    todo, running = deque(specs), {}  # generator -> spec
    results: dict[str, str | None] = {}

    def done(gen: Any, status: str | None) -> None:
        spec = running.pop(gen)
        results[spec.run_id] = status
        report(spec, status or "skipped", store.summary_of(spec.run_id))

    beat = time.monotonic()
    try:
        while todo or running:
            window = (jobs or _capacity(ray, gpus, cpus)) if todo else 0
            while todo and len(running) < window:
                spec = todo.popleft()
                if not store.claim(spec.run_id, owner, retry_failed=options.retry_failed):
                    results[spec.run_id] = None
                    report(spec, "skipped", store.summary_of(spec.run_id))
                    continue
                running[task.remote(spec.to_json(), directory, options.checkpoint, max(1, int(cpus)))] = spec
            if not running:
                continue
            ready, _ = ray.wait(list(running), num_returns=1, timeout=HEARTBEAT_S)
            if time.monotonic() - beat >= HEARTBEAT_S:  # runs between flushes are alive too
                store.heartbeat([s.run_id for s in running.values()], owner)
                beat = time.monotonic()
            for gen in ready:
                run_id = running[gen].run_id
                try:
                    item = ray.get(next(gen))
                except StopIteration:
                    item = ("failed", "ray task ended without a result", None)
                except ray.exceptions.RayError as exc:  # the worker or its node died
                    item = ("failed", _ray_reason(exc), None)
                try:
                    status = _record(store, run_id, item, owner)
                    if status is not None:
                        done(gen, status)
                except ClaimLost:  # another driver took the run over; its numbers win
                    ray.cancel(gen)
                    done(gen, None)
        return results
    except BaseException:
        for gen, spec in running.items():  # give runs in flight back: pending again
            store.release(spec.run_id, owner)
            try:
                ray.cancel(gen, force=True)
            except Exception:  # already finished, or Ray is going down anyway
                pass
        raise
    finally:
        store.close()
