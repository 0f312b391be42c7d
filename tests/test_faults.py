"""Faults: resume from checkpoints bit for bit, a failing or dying run fails alone,
and a suite SIGKILLed at random moments finishes every run exactly once on restart."""

from __future__ import annotations

import os
import signal
import sqlite3
import threading
from pathlib import Path

import pytest
import torch

import suite.executors as executors
from suite.checkpoint import OFF, CheckpointPolicy, Checkpointer, parse_policy
from suite.errors import UserError
from suite.executors import RunOptions, run_local
from suite.profiles import build_specs
from suite.runner import train_one
from suite.store import Store
from suite_helpers import TIMING, kill_loop, result_values, tiny_specs, wait_for

STEPS_15 = CheckpointPolicy(every_steps=15, every_s=0.0)


class Killed(Exception):
    """Stands in for the process dying in the middle of a run."""


def _collect(spec, checkpoint=None, die_at=None):
    metrics, diags = [], []

    def sink(m, d):
        if die_at is not None and any(r[0] == die_at and r[1] == "val" for r in m):
            raise Killed
        metrics.extend(m)
        diags.extend(d)

    return train_one(spec, sink, checkpoint), metrics, diags


def _strip(rows):
    return [r for r in rows if r[2] not in TIMING]


def test_resume_from_checkpoint_is_bit_identical(tmp_path):
    (spec,) = tiny_specs(models=("gru",), seeds="0")
    ref, ref_m, ref_d = _collect(spec)
    path = tmp_path / "run.pt"
    # Checkpoint every 15 steps while evaluating every 10: the state saved after step 15
    # holds steps 11-15 still buffered on the device. Die while flushing step 30.
    with pytest.raises(Killed):
        _collect(spec, Checkpointer(path, spec.to_json(), STEPS_15), die_at=30)
    saved = torch.load(path, weights_only=True)
    assert saved["loop"]["step"] == 15 and [p[0] for p in saved["loop"]["pending"]] == [11, 12, 13, 14, 15]
    res, metrics, diags = _collect(spec, Checkpointer(path, spec.to_json(), STEPS_15))
    assert _strip(metrics) == _strip(ref_m) and diags == ref_d
    assert result_values(res.summary) == result_values(ref.summary)
    assert res.summary["steps"] == 40


def test_a_run_resumed_twice_keeps_the_rows_recorded_between(tmp_path):
    """Killed at step 20 (checkpoint of step 15), resumed, killed again at step 40: the
    checkpoint of step 30 holds the rows the resumed run recorded (16-30) besides those
    it replayed, so the second resume replays all 30 steps' rows and the run's rows
    equal an uninterrupted run's."""
    (spec,) = tiny_specs(models=("gru",), seeds="0")
    _, ref_m, ref_d = _collect(spec)
    path = tmp_path / "run.pt"
    for die_at, saved_at in ((20, 15), (40, 30)):
        with pytest.raises(Killed):
            _collect(spec, Checkpointer(path, spec.to_json(), STEPS_15), die_at=die_at)
        assert torch.load(path, weights_only=True)["loop"]["step"] == saved_at
    res, metrics, diags = _collect(spec, Checkpointer(path, spec.to_json(), STEPS_15))
    assert _strip(metrics) == _strip(ref_m) and diags == ref_d and res.summary["steps"] == 40


@pytest.mark.parametrize("content", ["other-run", "garbage"])
def test_checkpoint_of_another_run_or_damaged_is_ignored(tmp_path, content):
    spec0, spec1 = tiny_specs(models=("gru",), seeds="0-1")
    ref, ref_m, _ = _collect(spec0)
    path = tmp_path / "run.pt"
    if content == "other-run":
        with pytest.raises(Killed):
            _collect(spec1, Checkpointer(path, spec1.to_json(), STEPS_15), die_at=30)
    else:
        path.write_bytes(b"\x00garbage" * 50)
    with pytest.warns(UserWarning, match="ignoring checkpoint"):
        res, metrics, _ = _collect(spec0, Checkpointer(path, spec0.to_json(), STEPS_15))
    assert _strip(metrics) == _strip(ref_m)
    assert result_values(res.summary) == result_values(ref.summary)


def test_checkpoint_policy_parsing():
    assert parse_policy("500") == CheckpointPolicy(every_steps=500, every_s=0.0)
    assert parse_policy("10m") == CheckpointPolicy(every_steps=0, every_s=600.0)
    assert parse_policy("1.5h").every_s == 5400.0 and parse_policy("30s").every_s == 30.0
    assert parse_policy("0") == OFF and not OFF.enabled
    for bad in ("abc", "1.5", "-3", "10d"):
        with pytest.raises(UserError, match="--checkpoint-every"):
            parse_policy(bad)


def test_checkpoints_are_deleted_when_runs_finish(tmp_path, monkeypatch):
    specs = tiny_specs(models=("rnn",), seeds="0-1")
    seen: list[int] = []
    real = executors.train_one

    def spying(spec, sink, ckpt):  # count files while runs are in flight
        out = real(spec, sink, ckpt)
        seen.append(len(list((tmp_path / "checkpoints").glob("*.pt"))))
        return out

    monkeypatch.setattr(executors, "train_one", spying)
    run_local(specs, tmp_path / "s.sqlite", options=RunOptions(checkpoint=STEPS_15))
    assert seen == [1, 1]  # saved while running ...
    assert not list((tmp_path / "checkpoints").glob("*"))  # ... and gone once recorded


def test_failing_and_diverging_runs_fail_alone_and_retry(tmp_path, monkeypatch):
    store_path = tmp_path / "s.sqlite"
    specs = tiny_specs(models=("rnn", "gru"), seeds="0")
    bad = tiny_specs(models=("irnn",), seeds="0", optimizer="sgd", lr=1e12, clip=None)
    oom_id = specs[1].run_id
    real = executors.train_one

    def flaky(spec, sink, ckpt):
        if spec.run_id == oom_id:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return real(spec, sink, ckpt)

    monkeypatch.setattr(executors, "train_one", flaky)
    statuses = run_local(specs + bad, store_path)
    assert statuses == {specs[0].run_id: "done", oom_id: "failed", bad[0].run_id: "diverged"}
    runs = Store(store_path).runs().set_index("run_id")
    assert "OutOfMemoryError: CUDA out of memory" in runs.loc[oom_id, "reason"]
    assert runs.loc[oom_id, "env"]["host"]  # where it failed
    assert "non-finite" in runs.loc[bad[0].run_id, "reason"]
    monkeypatch.setattr(executors, "train_one", real)
    assert run_local(specs + bad, store_path) == dict.fromkeys(statuses)  # nothing to do without the flag
    again = run_local(specs + bad, store_path, options=RunOptions(retry_failed=True))
    assert again == {specs[0].run_id: None, oom_id: "done", bad[0].run_id: "diverged"}
    assert Store(store_path).runs().set_index("run_id").loc[oom_id, "attempts"] == 2


def _owners_with_rows(path: Path) -> list[tuple[str, str]]:
    db = sqlite3.connect(str(path), timeout=30)
    try:
        return db.execute("SELECT run_id, owner FROM runs r WHERE status='running' AND EXISTS "
                          "(SELECT 1 FROM metrics m WHERE m.run_id=r.run_id)").fetchall()
    except sqlite3.OperationalError:  # the store is not created yet
        return []
    finally:
        db.close()


def test_a_killed_worker_fails_only_its_run(tmp_path):
    store_path = tmp_path / "s.sqlite"
    specs = tiny_specs(models=("rnn", "gru"), seeds="0", max_steps=300)
    victims: list[str] = []

    def kill_one() -> None:  # what the kernel's out-of-memory killer would do
        wait_for(lambda: _owners_with_rows(store_path), 120, "a run in progress")
        run_id, owner = _owners_with_rows(store_path)[0]
        victims.append(run_id)
        os.kill(int(owner.split(":")[1]), signal.SIGKILL)

    killer = threading.Thread(target=kill_one)
    killer.start()
    statuses = run_local(specs, store_path, jobs=2)
    killer.join()
    (victim,) = victims
    assert statuses.pop(victim) == "failed" and set(statuses.values()) == {"done"}
    reason = Store(store_path).runs().set_index("run_id").loc[victim, "reason"]
    assert reason.startswith("worker process died")
    retried = run_local(specs, store_path, options=RunOptions(retry_failed=True))
    assert retried == {**dict.fromkeys(statuses), victim: "done"}


# -- SIGKILL at random moments ---------------------------------------------------
def test_sigkill_at_random_moments_short(tmp_path):
    stats = kill_loop(tmp_path, kills=2, seed=0, seeds="0-1", args=["--jobs", "1"])
    assert stats["rerun"] >= 1  # at least one kill hit a run in flight


def test_sigkill_at_random_moments_stacked(tmp_path):
    """Seeds stacked three at a time (rnn-loop, gru-loop): a killed stack resumes from its
    checkpoint, and every run ends once, bit-identical to an uninterrupted stacked suite."""
    stats = kill_loop(tmp_path, kills=3, seed=3, seeds="0-2", args=["--jobs", "1", "--stack-seeds", "3"],
                      models=("rnn-loop", "gru-loop"))
    assert stats["rerun"] >= 1 and stats["left_checkpoints"] >= 1


@pytest.mark.slow
@pytest.mark.parametrize("jobs", [1, 2])
def test_sigkill_at_random_moments_long(tmp_path, jobs):
    stats = kill_loop(tmp_path, kills=8, seed=jobs, seeds="0-2", args=["--jobs", str(jobs)])
    assert stats["rerun"] >= 2 and stats["left_checkpoints"] >= 2  # resumed from checkpoints


def test_a_build_lock_left_by_a_killed_process_does_not_hang_the_next_load(tmp_path):
    """PyTorch's lock file of the compiled CPU loops' build (``lock`` in its directory),
    left by a process killed while it loaded them, is taken for stale by the next
    process, which removes it (one warning) and loads the loops: it does not wait for
    it forever, as every start of the suite did after a SIGKILL at start-up. Runs on a
    copy of this machine's build, in a process of its own."""
    import shutil
    import subprocess
    import sys

    from torch.utils.cpp_extension import _get_build_directory

    from baselines import scan_cpp

    if scan_cpp.load() is None:
        pytest.skip(f"the compiled CPU loops cannot be built here ({scan_cpp.build_error()})")
    name = scan_cpp.load().__name__  # the build a process loads here (with OpenMP where it can be)
    root = tmp_path / "extensions"
    shutil.copytree(_get_build_directory(name, verbose=False), root / name,
                    ignore=shutil.ignore_patterns("lock", "*.flock"))
    (root / name / "lock").touch()  # what a killed loader leaves
    env = dict(os.environ, TORCH_EXTENSIONS_DIR=str(root), PYTHONWARNINGS="default")
    code = "from baselines import scan_cpp; print(scan_cpp.load() is not None)"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120,
                         cwd=Path(__file__).parents[1])
    assert out.returncode == 0 and out.stdout.split() == ["True"], out.stderr[-2000:]
    assert "left by a process killed while it loaded the compiled CPU loops" in out.stderr
    assert not list(root.glob("*/lock"))


def test_one_line_names_the_type_and_one_line_of_the_message():
    """A multi-line failure (a compiler's output, a hub client's) as one line: the type,
    then the first line (or the last), cut to the limit; an empty message leaves the type."""
    from suite.errors import one_line

    e = RuntimeError("  PTX error: out of resources\nin kernel _lstm_fwd\nerror: build failed  ")
    assert one_line(e) == "RuntimeError: PTX error: out of resources"
    assert one_line(e, last=True) == "RuntimeError: error: build failed"
    assert one_line(e, 9) == "RuntimeError: PTX error"
    assert one_line(ValueError()) == "ValueError: "


def test_resume_restores_the_global_torch_generator(tmp_path):  #(h0 noise draws from it)
    (s,) = build_specs(task=["adding"], model=["bn-rnn"], task_args={"T": 8, "n_val": 100, "n_test": 100},
                       model_args={"hidden_size": 8, "h0_noise": 0.1},
                       train=dict(max_steps=40, eval_every=10, batch_size=16, eval_batch_size=200, lr=1e-2,
                                  early_stop=False, probe_every=20), seeds="0", device="cpu")
    torch.manual_seed(123)
    _, ref_m, _ = _collect(s)
    path = tmp_path / "run.pt"
    policy = CheckpointPolicy(every_steps=15, every_s=0.0)
    torch.manual_seed(123)
    with pytest.raises(Killed):
        _collect(s, Checkpointer(path, s.to_json(), policy), die_at=30)
    _, metrics, _ = _collect(s, Checkpointer(path, s.to_json(), policy))
    assert _strip(metrics) == _strip(ref_m)
