"""Runs trained as one seed stack (runner.train_stacked, rnnbench run --stack-seeds)
record what they record when trained one by one: every metric and diagnostic row,
the test metrics and the best step, within float32 summation-order differences."""

import math

import pytest

from suite import runner
from suite.checkpoint import CheckpointPolicy
from suite.profiles import build_specs
from suite.runner import NotStackable, train_one, train_stacked
from suite.store import Store
from suite_helpers import run_cli


def specs(model="bn-rnn", task="adding", seeds="0-2", task_args=None, **model_args):
    return build_specs(task=[task], model=[model], task_args=task_args or {"T": 8, "n_val": 100, "n_test": 100},
                       model_args={"hidden_size": 8, **model_args},
                       train=dict(max_steps=30, eval_every=10, batch_size=16, eval_batch_size=200, lr=1e-2,
                                  probe_every=20, early_stop=False),
                       seeds=seeds, device="cpu")


def collect(train, group):
    rows = [([], []) for _ in group]
    sinks = [lambda m, d, r=r: (r[0].extend(m), r[1].extend(d)) for r in rows]
    return train(group, sinks), rows


def alone(group, sinks):
    return [train_one(spec, sink) for spec, sink in zip(group, sinks)]


def assert_same_records(got, want, rows_got, rows_want):
    for g, w, (gm, gd), (wm, wd) in zip(got, want, rows_got, rows_want):
        assert g.status == w.status
        for k in ("steps", "best_step", "solved_step", "n_params"):
            assert g.summary[k] == w.summary[k], k
        for k, v in w.summary.items():
            if k.startswith("test_"):
                assert g.summary[k] == pytest.approx(v, rel=1e-4, abs=1e-6), k
        keyed = lambda rows: {r[:3]: r[3] for r in rows if r[2] != "wall_time"}  # noqa: E731
        a, b = keyed(gm), keyed(wm)
        assert a.keys() == b.keys()
        for k in b:
            assert a[k] == pytest.approx(b[k], rel=1e-3, abs=1e-5) or (math.isnan(a[k]) and math.isnan(b[k])), k
        assert [d[:3] for d in gd] == [d[:3] for d in wd]  # the same gradient-flow probes
        assert g.summary["seed_stack"] == 3
    assert len({g.summary["stack_id"] for g in got}) == 1  # one timing, shared (reports.cost._timings)


@pytest.mark.parametrize("model", ["bn-rnn", "ln-lstm", "gru-loop"])
def test_stacked_runs_record_what_they_record_alone(model, scan_loops):
    group = specs(model)
    want, rows_want = collect(alone, group)
    got, rows_got = collect(train_stacked, group)
    assert_same_records(got, want, rows_got, rows_want)
    assert got[0].summary["path"] == f"eager/{scan_loops}"


def test_a_seed_that_stops_early_leaves_the_others_unchanged(monkeypatch):
    group = specs("lstm-loop")
    want, rows_want = collect(alone, group)
    original = runner.RunLoop.at_eval

    def at_eval(self):  # seed 1 "solves" at its first evaluation
        stop = original(self)
        return stop or (self.spec.seed == 1 and self.step == 10)

    monkeypatch.setattr(runner.RunLoop, "at_eval", at_eval)
    got, rows_got = collect(train_stacked, group)
    assert [r.summary["steps"] for r in got] == [30, 10, 30]
    assert_same_records([got[0], got[2]], [want[0], want[2]], [rows_got[0], rows_got[2]],
                        [rows_want[0], rows_want[2]])


def test_what_cannot_be_stacked_is_refused_before_training():
    with pytest.raises(NotStackable, match="cuDNN"):
        train_stacked(specs("lstm"), [lambda m, d: None] * 3)
    with pytest.raises(NotStackable, match="padded"):
        train_stacked(specs("gru-loop", task="listops", task_args={"n_val": 20, "n_test": 20}),
                      [lambda m, d: None] * 3)
    with pytest.raises(NotStackable, match="seed only"):
        train_stacked(specs("bn-rnn", seeds="0") + specs("bn-rnn", seeds="1", hidden_size=5), [None, None])


def test_cli_stacks_what_it_can(tmp_path, capsys):
    store = tmp_path / "s.sqlite"
    code, _, err = run_cli(capsys, "run", "--task", "adding", "--task-arg", "T=8", "--task-arg", "n_val=50",
                           "--task-arg", "n_test=50", "--model", "rnn-loop", "--model", "lstm", "--seeds", "0-2",
                           "--set", "model.hidden_size=8", "--train", "max_steps=20", "--train", "eval_every=10",
                           "--stack-seeds", "3", "--store", str(store), "-q")
    assert code == 0, err
    summaries = Store(store).summaries()
    assert (summaries["status"] == "done").all() and len(summaries) == 6
    stacked = summaries.set_index("model")["seed_stack"]
    assert (stacked["rnn-loop"] == 3).all() and stacked["lstm"].isna().all()
    from reports.build import build_report

    _, md, _ = build_report(store, tmp_path / "report")
    cost_rows = [line for line in md.read_text().splitlines() if line.startswith("| rnn-loop") and "scan" in line]
    assert cost_rows and all("| 3 |" in line for line in cost_rows)


def test_stack_seeds_bad_values_are_one_line(capsys):
    code, _, err = run_cli(capsys, "run", "--task", "adding", "--model", "rnn-loop", "--stack-seeds", "0")
    assert code == 2 and "--stack-seeds 0 must be >= 1" in err and err.count("\n") == 1


def test_stack_groups_keep_unstackable_runs_alone():
    from suite.executors import stack_groups

    runs = specs("bn-rnn", seeds="0-4") + specs("lstm", seeds="0-1")
    asked = []

    def stackable(spec):
        asked.append(spec.model)
        return spec.model != "lstm"

    units = stack_groups(runs, 2, stackable)
    assert [[s.seed for s in u] for u in units] == [[0, 1], [2, 3], [4], [0], [1]]
    assert [u[0].model for u in units] == ["bn-rnn"] * 3 + ["lstm"] * 2
    assert asked == ["bn-rnn", "lstm"]  # once per configuration
    assert [len(u) for u in stack_groups(runs, 1)] == [1] * 7


def test_a_stack_records_each_run_when_it_ends(tmp_path, monkeypatch):
    """Seed 1 stops at step 10 and is recorded done; the stack then fails at step 20:
    the two runs still in it are recorded failed, the finished one stays done. A
    checkpoint an earlier, unstacked attempt left is deleted."""
    from suite.executors import RunOptions, execute_unit
    from suite.checkpoint import checkpoint_path

    group = specs("gru-loop")
    store = Store(tmp_path / "s.sqlite")
    store.add_runs(group)
    options = RunOptions(checkpoint_dir=str(tmp_path / "ck"))
    stale = checkpoint_path(options.checkpoints_for(store.path), group[1].run_id)
    stale.parent.mkdir(parents=True)
    stale.write_bytes(b"left by an interrupted run")
    original = runner.RunLoop.at_eval

    def at_eval(self):
        if self.step == 20:
            raise RuntimeError("eval blew up")
        return original(self) or (self.spec.seed == 1 and self.step == 10)

    monkeypatch.setattr(runner.RunLoop, "at_eval", at_eval)
    statuses = execute_unit(group, store, options)
    assert statuses == {group[0].run_id: "failed", group[1].run_id: "done", group[2].run_id: "failed"}
    assert not stale.exists()
    runs = store.runs().set_index("run_id")
    assert runs.loc[group[0].run_id, "reason"].endswith("eval blew up")


def test_unstackable_units_are_given_back_and_run_one_by_one(tmp_path):
    from suite.executors import execute_unit

    group = specs("lstm")  # cuDNN: not stackable, found out after claiming
    store = Store(tmp_path / "s.sqlite")
    store.add_runs(group)
    assert set(execute_unit(group, store).values()) == {"done"}
    assert "seed_stack" not in store.summaries().columns


def test_a_run_the_store_could_not_record_is_not_left_running(tmp_path, monkeypatch):
    """Recording seed 0's result fails with a store error: that run and the others
    still in the stack are recorded failed, none is left 'running'."""
    import sqlite3

    from suite.executors import execute_unit

    group = specs("rnn-loop")
    store = Store(tmp_path / "s.sqlite")
    store.add_runs(group)
    original = Store.finish
    calls = []

    def finish(self, run_id, status, *args, **kwargs):
        calls.append(run_id)
        if run_id == group[0].run_id and status == "done":
            raise sqlite3.OperationalError("disk I/O error")
        return original(self, run_id, status, *args, **kwargs)

    monkeypatch.setattr(Store, "finish", finish)
    original_eval = runner.RunLoop.at_eval
    monkeypatch.setattr(runner.RunLoop, "at_eval",  # seed 0 ends first, alone
                        lambda self: original_eval(self) or (self.spec.seed == 0 and self.step == 10))
    statuses = execute_unit(group, store)
    assert set(statuses.values()) == {"failed"}
    assert set(store.runs()["status"]) == {"failed"}


def test_a_run_taken_over_gives_the_others_back(tmp_path, monkeypatch):
    """Another process takes seed 0 over mid-stack: the other runs go back to pending
    (for the next suite run), not failed."""
    import sqlite3

    from suite.executors import execute_unit

    group = specs("rnn-loop")
    path = tmp_path / "s.sqlite"
    store = Store(path)
    store.add_runs(group)
    original_eval = runner.RunLoop.at_eval

    def at_eval(self):
        if self.spec.seed == 0 and self.step == 20:
            db = sqlite3.connect(str(path))
            db.execute("UPDATE runs SET owner='elsewhere:1' WHERE run_id=?", (group[0].run_id,))
            db.commit()
            db.close()
        return original_eval(self)

    monkeypatch.setattr(runner.RunLoop, "at_eval", at_eval)
    statuses = execute_unit(group, store)
    assert set(statuses.values()) == {None}
    runs = store.runs().set_index("run_id")["status"]
    assert runs[group[0].run_id] == "running" and runs[group[1].run_id] == runs[group[2].run_id] == "pending"


# -- checkpoints of stacks --------------------------------------------------------------

EVERY_15 = dict(checkpoint=CheckpointPolicy(every_steps=15, every_s=0.0))
AT_EVAL = runner.RunLoop.at_eval  # as defined, whatever a test patched in since


def stopping(seed: int, at: int, die_at: int | None = None, evals: list | None = None):
    """A RunLoop.at_eval where ``seed`` stops (solved) at step ``at`` and the process
    "dies" (KeyboardInterrupt: the executor gives its runs back) at step ``die_at``;
    ``evals`` collects the steps evaluated."""

    def at_eval(self):
        if evals is not None:
            evals.append(self.step)
        if self.step == die_at:
            raise KeyboardInterrupt
        return AT_EVAL(self) or (self.spec.seed == seed and self.step == at)

    return at_eval


@pytest.mark.parametrize("stop_at", [10, 20])
def test_a_killed_stack_resumes_from_its_checkpoint_bit_for_bit(stop_at, tmp_path, monkeypatch):
    """Checkpoints every 15 steps; seed 1 stops at ``stop_at`` and the process dies at
    step 30's evaluation. The restart claims seeds 0 and 2 and resumes the stack from
    step 15, holding seed 1 as it was there: stopped (10), or still training (20), now
    unrecorded. Every run records what an uninterrupted stack records, bit for bit
    (CPU), and the checkpoint is gone at the end."""
    from suite.executors import RunOptions, execute_unit
    from suite_helpers import results_of

    group = specs("gru-loop")
    stores = {k: Store(tmp_path / f"{k}.sqlite") for k in ("ref", "killed")}
    for store in stores.values():
        store.add_runs(group)
    options = RunOptions(checkpoint_dir=str(tmp_path / "ck"), **EVERY_15)
    monkeypatch.setattr(runner.RunLoop, "at_eval", stopping(1, stop_at))
    assert set(execute_unit(group, stores["ref"], RunOptions(checkpoint_dir=str(tmp_path / "ck-ref"))).values()) \
        == {"done"}
    monkeypatch.setattr(runner.RunLoop, "at_eval", stopping(1, stop_at, die_at=30))
    with pytest.raises(KeyboardInterrupt):
        execute_unit(group, stores["killed"], options)
    status = stores["killed"].runs().set_index("run_id")["status"]
    assert list(status[[s.run_id for s in group]]) == ["pending", "done", "pending"]
    assert len(list((tmp_path / "ck").glob("stack-*.pt"))) == 1
    evals: list[int] = []
    monkeypatch.setattr(runner.RunLoop, "at_eval", stopping(1, stop_at, evals=evals))
    statuses = execute_unit(group, stores["killed"], options)
    assert statuses == {group[0].run_id: "done", group[1].run_id: None, group[2].run_id: "done"}
    assert min(evals) == 20  # resumed after step 15, not from step 0
    assert results_of(tmp_path / "killed.sqlite") == results_of(tmp_path / "ref.sqlite")
    assert not list((tmp_path / "ck").glob("*"))


def test_a_stack_checkpoint_whose_stopped_run_must_run_again_is_not_resumed(tmp_path, monkeypatch):
    """The checkpoint (step 15) holds seed 1 stopped at step 10; a retry that claims all
    three runs cannot resume it (seed 1 would have no training to record): it says so
    once and trains a new stack from step 0."""
    from suite.executors import RunOptions, train_stack_checkpointed

    group = specs("rnn-loop")
    directory = str(tmp_path / "ck")
    monkeypatch.setattr(runner.RunLoop, "at_eval", stopping(1, 10, die_at=30))
    sinks = [lambda m, d: None] * 3
    with pytest.raises(KeyboardInterrupt):
        train_stack_checkpointed(group, group, sinks, lambda i, r: None, directory, EVERY_15["checkpoint"])
    monkeypatch.setattr(runner.RunLoop, "at_eval", stopping(1, 40))
    rows = [[] for _ in group]
    ended = {}
    with pytest.warns(UserWarning, match="a run it had ended is to run again"):
        train_stack_checkpointed(group, group, [lambda m, d, r=r: r.extend(m) for r in rows],
                                 lambda i, res: ended.update({i: res.summary["steps"]}), directory,
                                 EVERY_15["checkpoint"])
    assert ended == {0: 30, 1: 30, 2: 30} and min(r[0] for r in rows[1]) == 1  # from step 0 again
    assert not list((tmp_path / "ck").glob("*"))


def test_stack_checkpoints_whose_runs_all_ended_are_deleted_unless_one_failed(tmp_path):
    """A kill after a stack recorded its last run, before it deleted its checkpoint, or
    a regrouping of the runs (another --stack-seeds) leaves a checkpoint: the next suite
    run deletes every one whose runs are all done or diverged, and keeps it where one
    failed (for --retry-failed) or one is still to run."""
    from suite.checkpoint import runs_path, stack_checkpoint_path
    from suite.executors import RunOptions, run_local

    group = specs("rnn-loop")
    options = RunOptions(checkpoint_dir=str(tmp_path / "ck"))
    ids = [s.run_id for s in group]
    (tmp_path / "ck").mkdir()
    for case, (status, ended, kept) in {"failed": ("failed", 3, True), "diverged": ("diverged", 3, False),
                                        "to run": ("done", 2, True), "regrouped": ("done", 3, False)}.items():
        store_path = tmp_path / f"{case}.sqlite"
        store = Store(store_path)
        store.add_runs(group)
        unit = ids if case != "regrouped" else ids[:2]  # --stack-seeds 2 before: the unit of seeds 0 and 1
        path = stack_checkpoint_path(options.checkpoints_for(store_path), unit)
        path.write_bytes(b"left by a killed stack")
        runs_path(path).write_text(__import__("json").dumps(unit))
        for i, spec in enumerate(group[:ended]):
            assert store.claim(spec.run_id)
            store.finish(spec.run_id, status if i == 1 else "done", {}, None)
        store.close()
        run_local(group[:ended], store_path, options=RunOptions(checkpoint_dir=options.checkpoint_dir, stack_seeds=3))
        assert path.exists() == runs_path(path).exists() == kept, case
        for leftover in (path, runs_path(path)):
            leftover.unlink(missing_ok=True)


def test_a_stack_checkpoint_regrouped_after_a_kill_is_deleted_as_its_runs_end(tmp_path):
    """A kill between two of a stack's records leaves one run done and its checkpoint;
    a next suite given only the runs still to run (not the grid, which ``rnnbench run``
    also gives) stacks them as a unit of their own, with a checkpoint of their own. The old unit's
    checkpoint ends with their last run: deleted as that suite ends, not left behind."""
    from suite.checkpoint import runs_path, stack_checkpoint_path
    from suite.executors import RunOptions, run_local

    group = specs("rnn-loop")
    options = RunOptions(checkpoint_dir=str(tmp_path / "ck"), stack_seeds=3)
    store_path = tmp_path / "s.sqlite"
    store = Store(store_path)
    store.add_runs(group)
    assert store.claim(group[0].run_id)
    store.finish(group[0].run_id, "done", {}, None)
    store.close()
    (tmp_path / "ck").mkdir()
    path = stack_checkpoint_path(options.checkpoints_for(store_path), [s.run_id for s in group])
    path.write_bytes(b"left by a stack killed between its records")
    runs_path(path).write_text(__import__("json").dumps([s.run_id for s in group]))
    assert run_local(group[1:], store_path, options=options) == {s.run_id: "done" for s in group[1:]}
    assert not list((tmp_path / "ck").glob("*"))


def test_a_stack_checkpoint_changed_since_it_was_chosen_is_not_loaded(tmp_path, monkeypatch):
    """Another process sharing the store may save the unit's checkpoint between the
    choice (``train_stack_checkpointed``) and the load: a saved stack that stopped a seed
    to be recorded is then not loaded (one warning) and the stack trains from step 0."""
    from suite.checkpoint import StackCheckpointer
    from suite.executors import train_stack_checkpointed

    group = specs("rnn-loop")
    directory = tmp_path / "ck"
    monkeypatch.setattr(runner.RunLoop, "at_eval", stopping(1, 10, die_at=30))
    with pytest.raises(KeyboardInterrupt):
        train_stack_checkpointed(group, group, [lambda m, d: None] * 3, lambda i, r: None, str(directory),
                                 EVERY_15["checkpoint"])
    (path,) = directory.glob("stack-*.pt")
    monkeypatch.setattr(runner.RunLoop, "at_eval", stopping(1, 40))
    ckpt = StackCheckpointer(path, __import__("json").dumps([s.to_json() for s in group]), EVERY_15["checkpoint"],
                             [0, 1, 2])
    with pytest.warns(UserWarning, match="stopped one to be recorded"):
        results = train_stacked(group, [lambda m, d: None] * 3, checkpoint=ckpt)
    assert [r.summary["steps"] for r in results] == [30, 30, 30]


@pytest.mark.parametrize("done,worker_dies", [(1, False), (2, False), (2, True)])
def test_the_rest_of_a_stack_trains_in_the_whole_stack_again(tmp_path, monkeypatch, done, worker_dies):
    """A kill between two of a stack's records, before its first checkpoint, leaves some
    seeds done and the rest to run: given the grid (as rnnbench run gives it), the rest
    train in the unit's whole stack again, the done seeds along unrecorded, and get the
    numbers of an uninterrupted stacked suite bit for bit (as a stack of their own, or
    alone, they differed in the last bits). With --jobs 2 and a worker that dies before
    it claims them, they go back in the whole unit too."""
    import json
    import sqlite3

    from suite.checkpoint import CheckpointPolicy
    from suite.executors import RunOptions, run_local
    from suite_helpers import results_of

    group = specs("rnn-loop")
    options = RunOptions(checkpoint=CheckpointPolicy(every_steps=0, every_s=0.0), stack_seeds=3,
                         checkpoint_dir=str(tmp_path / "ck"))
    ref = tmp_path / "ref.sqlite"
    run_local(group, ref, options=options)
    want = results_of(ref)
    store_path = tmp_path / "s.sqlite"
    store = Store(store_path)
    store.add_runs(group)
    db = sqlite3.connect(str(ref))
    for spec in group[:done]:  # recorded before the kill, with the stack's numbers
        (summary,) = db.execute("SELECT summary FROM runs WHERE run_id=?", (spec.run_id,)).fetchone()
        assert store.claim(spec.run_id)
        store.finish(spec.run_id, "done", json.loads(summary), None)
    store.close()
    rest = group[done:]
    if worker_dies:
        from suite import executors
        from suite_helpers import worker_dying_once

        monkeypatch.setenv("RNNBENCH_TEST_DIED", str(tmp_path / "died"))
        monkeypatch.setattr(executors, "_worker", worker_dying_once)
    jobs = 2 if worker_dies else 1
    assert run_local(rest, store_path, options=options, grid=group, jobs=jobs) == {s.run_id: "done" for s in rest}
    assert (tmp_path / "died").exists() == worker_dies
    got = results_of(store_path, {s.run_id for s in rest})
    assert got == {s.run_id: want[s.run_id] for s in rest}


def test_a_grid_widens_the_stacks_not_the_runs(tmp_path):
    """``grid=`` forms the stacks; only the runs asked for are claimed and recorded (the
    grid's other pending runs train along unrecorded and stay pending), and a run outside
    the grid runs as a unit of its own."""
    from suite.checkpoint import CheckpointPolicy
    from suite.executors import RunOptions, run_local

    group, other = specs("rnn-loop"), specs("gru-loop", seeds="0")
    options = RunOptions(checkpoint=CheckpointPolicy(every_steps=0, every_s=0.0), stack_seeds=3,
                         checkpoint_dir=str(tmp_path / "ck"))
    store_path = tmp_path / "s.sqlite"
    Store(store_path).add_runs(group)
    asked = [group[2], other[0]]
    assert run_local(asked, store_path, options=options, grid=group) == {s.run_id: "done" for s in asked}
    statuses = Store(store_path).statuses()
    assert [statuses[s.run_id] for s in group] == ["pending", "pending", "done"]
