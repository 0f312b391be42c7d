"""The store: broken or foreign files give one-line errors, claims survive dead and
reused owners, and a process that lost its claim cannot write into the run."""

from __future__ import annotations

import os
import socket
import sqlite3
import subprocess
import sys
import threading
import time

import pytest

from suite.cli import main
from suite.errors import UserError
from suite.store import SCHEMA_VERSION, STALE_AFTER_S, ClaimLost, Store, owner_dead, owner_id
from suite_helpers import tiny_specs


@pytest.fixture
def filled(tmp_path):
    """A store with two runs, one of them with a few thousand metric rows."""
    path = tmp_path / "s.sqlite"
    store = Store(path)
    specs = tiny_specs(models=("rnn",), seeds="0-1")
    store.add_runs(specs)
    assert store.claim(specs[0].run_id)
    store.write(specs[0].run_id, [(s, "train", "loss", s / 7) for s in range(5000)])
    store.db.execute("PRAGMA wal_checkpoint(TRUNCATE)")  # everything in the main file
    store.close()
    return path, specs


def _one_line_error(capsys, path) -> str:
    assert main(["status", "--store", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err
    return err


def test_garbage_file(tmp_path, capsys):
    path = tmp_path / "g.sqlite"
    path.write_bytes(os.urandom(8192))
    with pytest.raises(UserError, match="not a usable rnnbench store"):
        Store(path)
    assert "not an SQLite file" in _one_line_error(capsys, path)


def test_foreign_sqlite_database(tmp_path, capsys):
    path = tmp_path / "f.sqlite"
    db = sqlite3.connect(path)
    db.execute("CREATE TABLE users (name TEXT)")
    db.commit()
    db.close()
    assert "not an rnnbench store (tables: users)" in _one_line_error(capsys, path)


@pytest.mark.parametrize("version,needle", [(SCHEMA_VERSION + 1, "a newer rnnbench wrote it"),
                                            (0, "an older rnnbench wrote it"), ("x1", "version x1")])
def test_other_schema_version_is_refused_with_the_reason(filled, capsys, version, needle):
    path, _ = filled
    db = sqlite3.connect(path)
    db.execute("UPDATE meta SET value=? WHERE key='schema_version'", (str(version),))
    db.commit()
    db.close()
    err = _one_line_error(capsys, path)
    assert needle in err and f"this rnnbench reads version {SCHEMA_VERSION}" in err


@pytest.mark.parametrize("keep", [0.5, 60])
def test_truncated_file(filled, capsys, keep):
    path, _ = filled
    data = path.read_bytes()
    path.write_bytes(data[:int(len(data) * keep)] if keep < 1 else data[:int(keep)])
    err = _one_line_error(capsys, path)
    assert ("truncated" in err) if keep < 1 else ("not an SQLite file" in err)


def test_damage_found_by_a_query_is_one_line(filled):
    path, specs = filled
    data = bytearray(path.read_bytes())
    page = 4096
    off = len(data) // 2 // page * page
    data[off:off + page] = os.urandom(page)  # a page in the middle of the metrics table
    path.write_bytes(bytes(data))
    store = Store(path)  # the header and size are fine: only reading the page shows it
    with pytest.raises(UserError, match="is damaged"):
        store.metrics()
    store.db.execute("UPDATE runs SET owner=NULL WHERE run_id=?", (specs[0].run_id,))
    with pytest.raises(UserError, match="is damaged"):
        store.claim(specs[0].run_id)  # deletes the run's rows: a write through the damaged page


def test_racing_processes_create_one_schema(tmp_path):
    path = tmp_path / "new.sqlite"
    errors: list[BaseException] = []

    def open_it() -> None:
        try:
            Store(path).close()
        except BaseException as exc:  # pragma: no cover - the failure being tested for
            errors.append(exc)

    threads = [threading.Thread(target=open_it) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert Store(path).status_counts()["pending"] == 0


# -- claims ------------------------------------------------------------------------
def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_owner_liveness():
    host, now = socket.gethostname(), time.time()
    assert not owner_dead(owner_id(), now, now)
    assert owner_dead(f"{host}:{_dead_pid()}:1", now, now)
    start = owner_id().rsplit(":", 1)[1]
    # same pid, another start time: the pid was reused, the owner is gone
    assert owner_dead(f"{host}:{os.getpid()}:{int(start) + 1}", now, now)
    zombie = subprocess.Popen([sys.executable, "-c", "pass"])
    time.sleep(0.5)
    assert owner_dead(f"{host}:{zombie.pid}:", now, now)  # exited, not reaped yet
    zombie.wait()
    # another machine: only the heartbeat tells
    assert not owner_dead("elsewhere:123:4", now - 10, now)
    assert owner_dead("elsewhere:123:4", now - STALE_AFTER_S - 1, now)
    assert owner_dead(None, None, now)


def test_claim_takes_pending_and_dead_owners_runs_and_clears_partial_rows(filled):
    path, (a, b) = filled
    store = Store(path)
    assert not store.claim(a.run_id, "other:1:1")  # running, owned by this live process
    store.db.execute("UPDATE runs SET owner=? WHERE run_id=?",
                     (f"{socket.gethostname()}:{_dead_pid()}:1", a.run_id))
    assert store.claim(a.run_id, "me:1:1")
    assert store.metrics([a.run_id]).empty  # the dead owner's partial rows are gone
    assert store.claim(b.run_id, "me:1:1") and not store.claim(b.run_id, "me:1:1")


def test_a_lost_claim_cannot_write(filled):
    path, (a, _) = filled
    store = Store(path)
    before = len(store.metrics([a.run_id]))
    with pytest.raises(ClaimLost):
        store.write(a.run_id, [(1, "train", "loss", 0.0)], owner="someone:else:1")
    with pytest.raises(ClaimLost):
        store.finish(a.run_id, "done", {}, owner="someone:else:1")
    assert len(store.metrics([a.run_id])) == before and store.status_of(a.run_id) == "running"
    store.heartbeat([a.run_id], owner="someone:else:1")  # a no-op for runs it does not own


def test_fail_orphan_only_fails_runs_of_dead_owners(filled):
    path, (a, b) = filled
    store = Store(path)
    assert not store.fail_orphan(a.run_id, "x")  # owner (this process) alive
    assert not store.fail_orphan(b.run_id, "x")  # pending, not running
    store.db.execute("UPDATE runs SET owner=? WHERE run_id=?",
                     (f"{socket.gethostname()}:{_dead_pid()}:1", a.run_id))
    assert store.fail_orphan(a.run_id, "worker died")
    row = store.runs().set_index("run_id").loc[a.run_id]
    assert row.status == "failed" and row.reason == "worker died"


def test_tidy_frames_tell_the_runs_of_a_sweep_apart(tmp_path):
    """Runs of one task, model and seed at two T differ only in their settings: summaries,
    and metrics and diagnostics where asked (export), carry the settings that vary."""
    from suite.spec import make_spec

    store = Store(tmp_path / "s.sqlite")
    specs = [make_spec("adding", {"T": T}, "rnn", {"hidden_size": 8}, {}, 0, "cpu") for T in (5, 6)]
    store.add_runs(specs)
    for spec in specs:
        assert store.claim(spec.run_id)
        store.write(spec.run_id, [(1, "train", "loss", spec.task_args["T"] / 10)])
        store.finish(spec.run_id, "done", {"test_mse": spec.task_args["T"] / 100})
    summaries = store.summaries().set_index("task.T")
    assert summaries.loc[5, "test_mse"] == 0.05 and summaries.loc[6, "test_mse"] == 0.06
    assert not any(c.startswith(("model.", "train.")) for c in summaries.columns)  # only what varies
    metrics = store.metrics(settings=True)
    assert dict(zip(metrics["task.T"], metrics["value"])) == {5: 0.5, 6: 0.6}
    assert "task.T" not in store.metrics().columns
    store.close()
    out = tmp_path / "m.csv"
    assert main(["export", "--store", str(tmp_path / "s.sqlite"), "--out", str(out)]) == 0
    assert out.read_text().splitlines()[0].split(",")[-1] == "task.T"


def test_a_gpu_index_is_where_a_run_trains_not_what_it_is(tmp_path):
    """cuda:1 trains what cuda and cuda:0 do: one run id, one checkpoint identity, one
    configuration in reports and baseline matching; cpu stays a run of its own, and a
    spec without an index keeps the identity (and checkpoints) it had."""
    import dataclasses

    from reports.data import config_key

    cpu = tiny_specs(models=("rnn",), seeds="0-1")
    gpu = [dataclasses.replace(s, device=d) for s, d in zip(cpu, ("cuda:1", "cuda"))]
    assert cpu[0].identity() == cpu[0].to_json()
    assert gpu[1].identity() == gpu[1].to_json()
    assert gpu[0].identity() == dataclasses.replace(cpu[0], device="cuda:0").identity()
    assert gpu[0].run_id == dataclasses.replace(cpu[0], device="cuda").run_id != cpu[0].run_id
    store = Store(tmp_path / "s.sqlite")
    store.add_runs(gpu)
    runs = store.runs()
    assert list(runs["device"]) == ["cuda", "cuda"]
    assert '"device":"cuda:1"' in runs.iloc[0]["spec"]  # where it ran is kept
    assert config_key(runs.iloc[0]) == config_key(runs.iloc[1])  # seeds 0 and 1, one configuration


def test_release_removes_partial_rows(filled):
    path, (a, _) = filled
    store = Store(path)
    store.release(a.run_id)
    assert store.status_of(a.run_id) == "pending" and store.metrics([a.run_id]).empty


def test_a_file_one_page_short_is_truncated(filled):
    path, _ = filled
    data = path.read_bytes()
    path.write_bytes(data[:-4096])
    with pytest.raises(UserError, match="truncated"):
        Store(path)
