"""Shared by the store, fault and Ray tests: a tiny grid and store comparisons."""

from __future__ import annotations

import json
import os
import random
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

from suite.checkpoint import OFF
from suite.executors import RunOptions, run_local
from suite.profiles import build_specs
from suite.spec import RunSpec
from suite.store import Store

TIMING = {"wall_time"}  # metric rows that measure time, so they differ between runs
RESULT_KEYS = ("best_val", "best_step", "steps", "solved_step", "n_params")


def tiny_specs(models=("rnn", "gru"), seeds="0-1", **train) -> list[RunSpec]:
    """A grid that trains in well under a second per run on one CPU thread."""
    cfg = dict(max_steps=40, eval_every=10, batch_size=16, eval_batch_size=200, lr=1e-2,
               early_stop=False, probe_every=20)
    cfg.update(train)
    return build_specs(task=["adding"], model=list(models), task_args={"T": 8, "n_val": 100, "n_test": 100},
                       model_args={"hidden_size": 8}, train=cfg, seeds=seeds, device="cpu")


TINY_PROFILE = """
description = "fault-test grid"
seeds = "{seeds}"
device = "cpu"
[train]
max_steps = {max_steps}
eval_every = 10
batch_size = 16
eval_batch_size = 200
lr = 1e-2
early_stop = false
probe_every = 20
[model]
hidden_size = 8
[[runs]]
task = "adding"
task_args = {{ T = 8, n_val = 100, n_test = 100 }}
models = {models}
"""


def write_profile(folder: Path, max_steps: int = 120, seeds: str = "0-2", models=("rnn", "gru")) -> Path:
    path = folder / "tiny.toml"
    path.write_text(TINY_PROFILE.format(max_steps=max_steps, seeds=seeds, models=json.dumps(list(models))))
    return path


def results_of(path: str | Path, run_ids=None) -> dict[str, dict]:
    """Per run: status, result summary values, metric and diagnostic rows (sorted,
    timing rows left out), read with plain sqlite3 so the store code is not trusted."""
    db = sqlite3.connect(str(path))
    out: dict[str, dict] = {}
    for run_id, status, summary in db.execute("SELECT run_id, status, summary FROM runs"):
        if run_ids is not None and run_id not in run_ids:
            continue
        metrics = sorted(r for r in db.execute("SELECT step, split, name, value FROM metrics WHERE run_id=?",
                                                (run_id,)) if r[2] not in TIMING)
        diags = sorted(db.execute("SELECT step, kind, idx, value FROM diagnostics WHERE run_id=?", (run_id,)))
        values = result_values(json.loads(summary)) if summary else None
        out[run_id] = {"status": status, "summary": values, "metrics": metrics, "diagnostics": diags}
    db.close()
    return out


def result_values(summary: dict) -> dict:
    """The summary entries that are results (not timings)."""
    return {k: v for k, v in summary.items() if k.startswith("test_") or k in RESULT_KEYS}


def wait_for(predicate, timeout: float, what: str) -> None:
    end = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > end:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def _suite(profile: Path, store: Path, args: list[str]) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}  # one thread, like the in-process reference
    cmd = [sys.executable, "-m", "suite.cli", "run", "--profile", str(profile), "--store", str(store),
           "--checkpoint-every", "25", "-q", *args]
    return subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def _done_rows(path: Path) -> dict[str, tuple]:
    db = sqlite3.connect(str(path), timeout=30)
    try:
        return {r[0]: r for r in db.execute("SELECT run_id, spec, summary, env, started, ended, attempts "
                                            "FROM runs WHERE status='done'")}
    finally:
        db.close()


def _progress(path: Path) -> int:
    db = sqlite3.connect(str(path), timeout=30)
    try:
        return db.execute("SELECT (SELECT COUNT(*) FROM metrics) + (SELECT COUNT(*) FROM runs "
                          "WHERE status='done')").fetchone()[0]
    except sqlite3.OperationalError:
        return 0
    finally:
        db.close()


def kill_loop(tmp_path: Path, kills: int, seed: int, seeds: str, args: list[str],
              models=("rnn", "gru")) -> dict[str, int]:
    """Kill the suite with SIGKILL at random moments (during start-up, mid-run, while
    recording), restart it each time, and check the invariants after every kill.
    Returns how many kills left a checkpoint to resume from and how many runs ran twice.
    With ``--stack-seeds N`` in ``args`` the reference stacks seeds as the suite does."""
    rng = random.Random(seed)
    profile = write_profile(tmp_path, max_steps=150, seeds=seeds, models=models)
    store = tmp_path / "killed.sqlite"
    ref_store = tmp_path / "ref.sqlite"
    specs = build_specs(profile=str(profile))
    stack = int(args[args.index("--stack-seeds") + 1]) if "--stack-seeds" in args else 1
    run_local(specs, ref_store, options=RunOptions(checkpoint=OFF, stack_seeds=stack))
    reference = results_of(ref_store)
    done_before: dict[str, tuple] = {}
    left_checkpoints = 0
    for i in range(kills):
        proc = _suite(profile, store, args)
        if i % 2 == 0:  # wait for training to be under way, then a random moment later
            start = _progress(store)
            wait_for(lambda: _progress(store) > start or proc.poll() is not None, 120, "progress")
            time.sleep(rng.uniform(0.0, 0.4))
        else:  # any moment, start-up included
            time.sleep(rng.uniform(0.5, 4.0))
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        left_checkpoints += bool(list((tmp_path / "checkpoints").glob("*.pt")))
        now = Store(store)  # opens cleanly after every kill
        assert sum(now.status_counts().values()) == len(specs)
        now.close()
        done_now = _done_rows(store)
        assert all(done_now[k] == v for k, v in done_before.items()), "a done run changed"
        got = results_of(store, done_now)
        assert all(got[k] == reference[k] for k in done_now), "a done run differs from the reference"
        done_before = done_now
    proc = _suite(profile, store, args)
    try:
        _, err = proc.communicate(timeout=300)
    finally:  # a suite that does not finish is not left running after the test
        proc.kill()
    assert proc.returncode == 0, err
    assert _done_rows(store).items() >= done_before.items()
    assert results_of(store) == reference  # every run done, each exactly once, bit-identical
    assert not list((tmp_path / "checkpoints").glob("*"))
    attempts = [row[-1] for row in _done_rows(store).values()]
    return {"left_checkpoints": left_checkpoints, "rerun": sum(a > 1 for a in attempts)}


def run_cli(capsys, *argv):
    """``rnnbench *argv`` in this process: (exit code, stdout, stderr)."""
    from suite.cli import main

    code = main(list(argv))
    out = capsys.readouterr()
    return code, out.out, out.err


def worker_dying_once(spec_jsons: list[str], store_path: str, *args):
    """``executors._worker`` whose first stacked unit's worker process dies before it claims
    anything (as the out-of-memory killer may take it while it imports torch); the file
    named by RNNBENCH_TEST_DIED marks that it did. Importable, so that a spawned worker
    finds it."""
    from suite import executors

    marker = os.environ["RNNBENCH_TEST_DIED"]
    if len(spec_jsons) > 1 and not os.path.exists(marker):
        open(marker, "w").close()
        os._exit(9)
    return executors._worker(spec_jsons, store_path, *args)
