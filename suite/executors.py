"""Executors: how runs are scheduled. ``local`` runs in this process (or N worker
processes with ``jobs > 1``); every worker claims a run in the store before
training it, so several suite processes can share one store safely.
"""

from __future__ import annotations

import json
import multiprocessing as mp
import traceback
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path
from typing import Callable, Iterable

from suite.runner import RunResult, train_one
from suite.spec import RunSpec
from suite.store import Store, owner_id

Progress = Callable[[RunSpec, str, dict], None]


def _reason(exc: BaseException) -> str:
    last = traceback.format_exception_only(type(exc), exc)[-1].strip()
    return last[:500]


def execute(spec: RunSpec, store: Store, *, retry_failed: bool = False) -> str | None:
    """Claim, train and record one run. Returns its final status, or None when it was
    not ours to run (done already, or running in another live process)."""
    if not store.claim(spec.run_id, owner_id(), retry_failed=retry_failed):
        return None
    try:
        result: RunResult = train_one(spec, lambda m, d: store.write(spec.run_id, m, d))
    except KeyboardInterrupt:
        store.release(spec.run_id)
        raise
    except Exception as exc:  # a failing run is recorded and the suite goes on
        store.finish(spec.run_id, "failed", None, _reason(exc))
        return "failed"
    store.write(spec.run_id, env=result.env)
    store.finish(spec.run_id, result.status, result.summary, result.reason)
    return result.status


def _worker(spec_json: str, store_path: str, retry_failed: bool) -> tuple[str, str | None]:
    spec = RunSpec.from_json(spec_json)
    store = Store(store_path)
    try:
        return spec.run_id, execute(spec, store, retry_failed=retry_failed)
    finally:
        store.close()


def run_local(specs: Iterable[RunSpec], store_path: str | Path, *, jobs: int = 1,
              retry_failed: bool = False, progress: Progress | None = None) -> dict[str, str | None]:
    """Run ``specs`` here; returns run_id -> final status (None: skipped)."""
    specs = list(specs)
    by_id = {s.run_id: s for s in specs}
    results: dict[str, str | None] = {}
    report = progress or (lambda s, st, info: None)
    if jobs <= 1:
        store = Store(store_path)
        try:
            for spec in specs:
                results[spec.run_id] = status = execute(spec, store, retry_failed=retry_failed)
                report(spec, status or "skipped", _summary(store, spec.run_id))
        finally:
            store.close()
        return results
    # Worker processes are spawned (not forked) so CUDA initialises cleanly in each.
    ctx = mp.get_context("spawn")
    with ProcessPoolExecutor(max_workers=jobs, mp_context=ctx) as pool:
        futures = [pool.submit(_worker, s.to_json(), str(store_path), retry_failed) for s in specs]
        store = Store(store_path)
        try:
            for fut in as_completed(futures):
                run_id, status = fut.result()
                results[run_id] = status
                report(by_id[run_id], status or "skipped", _summary(store, run_id))
        finally:
            store.close()
    return results


def _summary(store: Store, run_id: str) -> dict:
    row = store.db.execute("SELECT summary FROM runs WHERE run_id=?", (run_id,)).fetchone()
    return json.loads(row[0]) if row and row[0] else {}
