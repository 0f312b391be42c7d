"""The Ray executor on a real local Ray cluster: the local executor's numbers, faults
that fail only their run, and a one-line error where Ray is not installed."""

from __future__ import annotations

import dataclasses
import os
import sys

import pytest

import suite.ray_executor as ray_executor
from suite.checkpoint import checkpoint_path
from suite.cli import main
from suite.errors import UserError
from suite.executors import RunOptions, run_local
from suite.store import Store
from suite_helpers import kill_loop, results_of, tiny_specs


@pytest.fixture(scope="module")
def ray():
    ray = pytest.importorskip("ray")
    ray.init(num_cpus=2, include_dashboard=False, logging_level="WARNING")
    yield ray
    ray.shutdown()


def test_ray_gives_the_local_executors_numbers(tmp_path, ray):
    specs = tiny_specs()  # CPU, one thread per run in both executors: deterministic
    local = run_local(specs, tmp_path / "local.sqlite")
    seen: list[tuple[str, str]] = []
    remote = ray_executor.run_ray(specs, str(tmp_path / "ray.sqlite"),
                                  progress=lambda spec, status, summary: seen.append((spec.run_id, status)))
    assert local == remote == dict.fromkeys(local, "done")
    assert sorted(seen) == sorted(remote.items())  # progress as each run finished
    assert results_of(tmp_path / "ray.sqlite") == results_of(tmp_path / "local.sqlite")
    assert ray.is_initialized()  # a cluster it did not start is left running


def test_ray_task_failures_fail_only_their_run_and_retry(tmp_path, ray, monkeypatch):
    specs = tiny_specs(models=("rnn",), seeds="0-2")
    crash, boom = specs[1].run_id, specs[2].run_id
    real = ray_executor.stream_unit

    def faulty(unit_jsons, claimed_ids, directory, policy, threads):  # shipped to the workers by value
        (run_id,) = claimed_ids
        if run_id == crash:
            os._exit(1)  # the worker process dies, as on a segfault or a lost node
        if run_id == boom:  # says what it sees of the driver's RNNBENCH_* environment
            raise RuntimeError("CUDA error: an illegal memory access" + os.environ["RNNBENCH_PROBE"])
        yield from real(unit_jsons, claimed_ids, directory, policy, threads)

    store = tmp_path / "s.sqlite"
    monkeypatch.setattr(ray_executor, "stream_unit", faulty)
    monkeypatch.setenv("RNNBENCH_PROBE", " was encountered")
    statuses = ray_executor.run_ray(specs, str(store))
    assert statuses == {specs[0].run_id: "done", crash: "failed", boom: "failed"}
    reasons = Store(store).runs().set_index("run_id").reason
    assert reasons[crash].startswith("ray: WorkerCrashedError")
    assert reasons[boom] == "ray task: RuntimeError: CUDA error: an illegal memory access was encountered"
    monkeypatch.setattr(ray_executor, "stream_unit", real)
    again = ray_executor.run_ray(specs, str(store), options=RunOptions(retry_failed=True))
    assert again == {specs[0].run_id: None, crash: "done", boom: "done"}


def test_ray_stacks_seeds_as_the_local_executor_does(tmp_path, ray):
    """--stack-seeds 3: the three seeds of rnn-loop train as one stack in one Ray task
    and are recorded as three runs, as the local executor records them; cuDNN gru runs
    one task per seed."""
    specs = tiny_specs(models=("rnn-loop", "gru"), seeds="0-2")
    options = RunOptions(stack_seeds=3)
    local = run_local(specs, tmp_path / "local.sqlite", options=options)
    assert specs[1].model == "rnn-loop"
    stale = checkpoint_path(options.checkpoints_for(tmp_path / "ray.sqlite"), specs[1].run_id)
    stale.parent.mkdir(parents=True, exist_ok=True)
    stale.write_bytes(b"left by an interrupted, unstacked attempt")
    seen: list[str] = []
    remote = ray_executor.run_ray(specs, str(tmp_path / "ray.sqlite"), options=options,
                                  progress=lambda spec, status, summary: seen.append(spec.run_id))
    assert local == remote == dict.fromkeys(local, "done")
    assert sorted(seen) == sorted(remote)
    assert results_of(tmp_path / "ray.sqlite") == results_of(tmp_path / "local.sqlite")
    stacked = Store(tmp_path / "ray.sqlite").summaries().set_index("model")["seed_stack"]
    assert (stacked["rnn-loop"] == 3).all() and stacked["gru"].isna().all()
    assert not stale.exists()


def test_a_failing_stack_on_ray_fails_only_its_open_runs(tmp_path, ray, monkeypatch):
    """Inside the Ray task, seed 1 ends at step 10 (done) and the stack then raises at
    step 20: the two runs still in it are failed with the error; a unit whose worker
    dies fails all its runs."""
    ok = tiny_specs(models=("gru-loop",), seeds="0-2")
    dies = tiny_specs(models=("rnn-loop",), seeds="0-1")
    real = ray_executor.stream_unit
    doomed = {s.run_id for s in dies}

    def faulty(unit_jsons, claimed_ids, directory, policy, threads):  # runs in the worker process
        from suite import runner

        if claimed_ids[0] in doomed:
            os._exit(1)
        original = runner.RunLoop.at_eval

        def at_eval(self):
            if self.step == 20:
                raise RuntimeError("eval blew up")
            return original(self) or (self.spec.seed == 1 and self.step == 10)

        runner.RunLoop.at_eval = at_eval
        try:
            yield from real(unit_jsons, claimed_ids, directory, policy, threads)
        finally:
            runner.RunLoop.at_eval = original

    monkeypatch.setattr(ray_executor, "stream_unit", faulty)
    store = tmp_path / "s.sqlite"
    statuses = ray_executor.run_ray(ok + dies, str(store), options=RunOptions(stack_seeds=3))
    assert statuses == {ok[0].run_id: "failed", ok[1].run_id: "done", ok[2].run_id: "failed",
                        **dict.fromkeys(doomed, "failed")}
    reasons = Store(store).runs().set_index("run_id").reason
    assert reasons[ok[0].run_id] == reasons[ok[2].run_id] == "RuntimeError: eval blew up"
    assert all(reasons[r].startswith("ray: WorkerCrashedError") for r in doomed)


def test_a_unit_that_cannot_stack_is_split_into_runs_of_their_own(tmp_path, ray, monkeypatch):
    """The driver thought the cuDNN gru seeds stackable; their task finds out before
    training, and each seed then runs as a task of its own: a worker that dies in one
    fails that run only, the other trains as the local executor trains it."""
    monkeypatch.setattr(ray_executor, "can_stack", lambda spec: True)
    specs = tiny_specs(models=("gru",), seeds="0-1")
    real = ray_executor.stream_unit
    log, crash = tmp_path / "tasks.log", specs[0].run_id

    def logged(unit_jsons, claimed_ids, directory, policy, threads):  # runs in the worker process
        ids = list(claimed_ids)
        with open(log, "a") as f:
            f.write(f"{len(ids)}\n")
        if ids == [crash]:
            os._exit(1)
        yield from real(unit_jsons, claimed_ids, directory, policy, threads)

    monkeypatch.setattr(ray_executor, "stream_unit", logged)
    statuses = ray_executor.run_ray(specs, str(tmp_path / "ray.sqlite"), options=RunOptions(stack_seeds=2))
    assert statuses == {crash: "failed", specs[1].run_id: "done"}
    assert sorted(log.read_text().split()) == ["1", "1", "2"]  # one unit of two, then one task per seed
    run_local(specs[1:], tmp_path / "local.sqlite")
    got = results_of(tmp_path / "ray.sqlite", {specs[1].run_id})
    assert got == results_of(tmp_path / "local.sqlite") and "seed_stack" not in got[specs[1].run_id]["summary"]


def test_cli_runs_on_ray(tmp_path, ray, capsys):
    store = tmp_path / "s.sqlite"
    argv = ["run", "--task", "adding", "--task-arg", "T=6", "--task-arg", "n_val=50", "--task-arg",
            "n_test=50", "--model", "gru", "--seeds", "0-1", "--train", "max_steps=6", "--train",
            "eval_every=3", "--set", "model.hidden_size=4", "--device", "cpu", "-q",
            "--store", str(store), "--executor", "ray", "--cpus-per-run", "1"]
    assert main(argv) == 0
    assert "done=2" in capsys.readouterr().err
    assert main(argv) == 0 and "0 to run" in capsys.readouterr().err


def test_without_ray_the_error_says_how_to_install(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray now raises ImportError
    code = main(["run", "--task", "adding", "--model", "gru", "--device", "cpu", "--train", "max_steps=2",
                 "--store", str(tmp_path / "s.sqlite"), "--executor", "ray", "-q"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 2  # the grid summary line, then the error
    assert err.splitlines()[-1].endswith("pip install 'rnnbench[ray]'")


def test_gpu_requests_are_checked():
    (spec,) = tiny_specs(models=("gru",), seeds="0")
    cuda = dataclasses.replace(spec, device="cuda")
    assert ray_executor._resources([cuda], None, 1.0) == (1.0, 1.0)
    assert ray_executor._resources([cuda], 0.25, 2.0) == (0.25, 2.0)
    assert ray_executor._resources([spec], None, 1.0) == (0.0, 1.0)
    for gpus, cpus, needle in [(0, 1.0, "--gpus-per-run 0 with runs on cuda"),
                               (1.5, 1.0, "fraction in"), (1, 0.0, "--cpus-per-run")]:
        with pytest.raises(UserError, match=needle):
            ray_executor._resources([cuda], gpus, cpus)


@pytest.mark.slow
def test_sigkill_the_ray_driver_at_random_moments(tmp_path):
    pytest.importorskip("ray")
    stats = kill_loop(tmp_path, kills=3, seed=7, seeds="0-1", args=["--executor", "ray", "--cpus-per-run", "1"])
    assert stats["rerun"] >= 1
