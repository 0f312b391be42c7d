"""The command line: listing, bad input as one line with exit code 2, resume, export."""

import subprocess
import sys

import pandas as pd
import pytest

from suite_helpers import run_cli
from suite.profiles import build_specs, parse_value
from suite.spec import make_spec, parse_seeds
from suite.errors import UserError

TINY = ["--task", "adding", "--task-arg", "T=6", "--task-arg", "n_val=50", "--task-arg", "n_test=50",
        "--train", "max_steps=6", "--train", "eval_every=3", "--train", "batch_size=8",
        "--set", "model.hidden_size=4", "--device", "cpu", "-q"]
RUN = ["run", "--task", "adding", "--model", "lstm"]  # a valid grid, to which a case adds its bad part


@pytest.mark.parametrize("argv,needle", [
    (["run", "--task", "nope", "--model", "lstm"], "unknown task 'nope'; choose from:"),
    (["run", "--task", "adding", "--model", "lstmm"], "unknown model 'lstmm'; choose from:"),
    ([*RUN, "--task-arg", "T=0"], "T=0 is out of range"),
    ([*RUN, "--set", "model.hidden_size=0"], "hidden_size=0 is out of range"),
    ([*RUN, "--seeds", "3-1"], "seeds '3-1'"),
    ([*RUN, "--set", "model.bogus=1"], "has no parameter 'bogus'"),
    ([*RUN, "--set", "optim.lr=1"], "unknown --set key 'optim.lr'"),
    ([*RUN, "--train", "optimizer=adagrad"], "choose from: adam, rmsprop, sgd"),
    ([*RUN, "--train", "lr=-1"], "lr=-1.0 is out of range; it must be > 0"),
    (["run", "--task", "char-lm", "--task-arg", "test_streams=1", "--model", "bn-lstm", "--set",
      "model.norm_eval=batch", "--dry-run"], "test_streams=1 scores the test split as a batch of one"),
    ([*RUN, "--train", "optimizer=rmsprop", "--train", "rmsprop_alpha=1"],
     "rmsprop_alpha=1.0 is out of range; it must be >= 0.0 and < 1.0"),
    (["run", "--profile", "nosuch"], "unknown profile 'nosuch'; choose from:"),
    (["run", "--task", "adding", "--model", "*nomatch*"], "matches no model"),
    ([*RUN, "--device", "tpu"], "device 'tpu' is not valid"),
    (["status", "--store", "/nonexistent/dir/x.sqlite"], "does not exist"),
    (["bench", "--seeds", "0"], "--seeds 0: give 1 or more"),
    (["bench", "--threads", "0"], "--threads 0: give 1 to"),
    (["bench", "--threads", "100000"], "--threads 100000: give 1 to"),  # torch crashed on this many
    (["bench", "--repeats", "0"], "--repeats 0: give 1 or more"),
    (["bench", "--json", "/etc/passwd/x.json"], "--json /etc/passwd/x.json: its folder cannot be made"),
    # not finite: rejected before training, not recorded as failed runs
    ([*RUN, "--train", "lr=nan"], "lr=nan is not a finite number"),
    ([*RUN, "--train", "clip=inf"], "clip=inf is not a finite number"),
    ([*RUN, "--set", "task.T=[]"], "'T' sweeps an empty list"),
    ([*RUN, "--seeds", "²"], "seeds '²' is not valid"),
    ([*RUN, "--seeds", "0-99999999999"], "at most 10000 in one call"),
    ([*RUN, "--store", "/proc/x/y.sqlite"], "its folder cannot be made"),
    ([*RUN, "--checkpoint-dir", "/etc/passwd"],
     "--checkpoint-dir /etc/passwd cannot be made"),
    (["report", "--out", "/etc/passwd", "--store", "/nonexistent.sqlite"], "report folder /etc/passwd is a file"),
    (["nightly", "--date", "2026-13-45", "--root", "/nonexistent/n"], "--date '2026-13-45' is not a date"),
    (["nightly", "--jobs", "0", "--root", "/nonexistent/n"], "--jobs 0 must be >= 1"),
    (["nightly", "--root", "/etc/passwd/x"], "--root /etc/passwd/x cannot be made"),
    (["list", "models", "zzz"], "no model matches 'zzz'; choose from:"),
    (["bench", "--models", ""], "--models '' names no model"),
    (["bench", "--models", "bn-lsmt,rnn"], "unknown model 'bn-lsmt'; choose from:"),  # not dropped silently
    (["bench", "--models", "rnn,nosuch*"], "model pattern 'nosuch*' matches no model"),
    (["bench", "--json", ""], "--json '' names no file"),
    (["bench", "--json", "~nouser-rnnbench/x.json"], "--json ~nouser-rnnbench/x.json: "),
    ([*RUN, "--gpus-per-run", "-1"], "--gpus-per-run -1.0 must be 0 or more"),
    ([*RUN, "--cpus-per-run", "nan"], "--cpus-per-run nan must be more than 0"),
])
def test_bad_input_is_one_line_exit_2(capsys, argv, needle):
    code, out, err = run_cli(capsys, *argv)
    assert code == 2
    assert err.count("\n") == 1 and err.startswith("rnnbench: error: ") and needle in err, err
    assert "Traceback" not in err


def test_malformed_profile(tmp_path, capsys):
    bad = tmp_path / "bad.toml"
    bad.write_text("seeds = [0\n[[runs]]\n")
    code, _, err = run_cli(capsys, "run", "--profile", str(bad))
    assert code == 2 and "is not valid TOML" in err and err.count("\n") == 1
    unknown = tmp_path / "unknown.toml"
    unknown.write_text('sedes = "0"\n[[runs]]\ntask = "adding"\nmodels = ["lstm"]\n')
    code, _, err = run_cli(capsys, "run", "--profile", str(unknown))
    assert code == 2 and "unknown key 'sedes'" in err


@pytest.mark.parametrize("text,needle", [
    ('seeds = 1.5\n', "seeds must be a string"), ("seeds = true\n", "seeds must be a string"),
    ("seeds = -3\n", "seeds [-3] must be non-negative"), ("train = 5\n", "train must be a table"),
    ('device = 5\n', "device must be a string"), ('model = [1]\n', "model must be a table"),
])
def test_profile_values_of_the_wrong_kind_are_one_line(tmp_path, capsys, text, needle):
    bad = tmp_path / "bad.toml"
    bad.write_text(text + '[[runs]]\ntask = "adding"\nmodels = ["rnn"]\n')
    code, _, err = run_cli(capsys, "run", "--profile", str(bad), "--dry-run", "--store", str(tmp_path / "s.sqlite"))
    assert code == 2 and needle in err and err.count("\n") == 1, err


@pytest.mark.parametrize("runs,needle", [
    ("runs = [1, 2]\n", "has no [[runs]] entries"),
    ('[[runs]]\ntask = ["adding", "copy"]\nmodels = ["rnn"]\n', "runs[0].task must be a string"),
    ('[[runs]]\ntask = "adding"\nmodels = [1]\n', "runs[0].models must be a name or a non-empty list"),
    ('[[runs]]\ntask = "adding"\nmodels = 5\n', "runs[0].models must be a list"),
    ('[[runs]]\ntask = "adding"\nmodels = ["rnn"]\ntask_args = [1]\n', "runs[0].task_args must be a table"),
])
def test_profile_entries_of_the_wrong_kind_are_one_line(tmp_path, capsys, runs, needle):
    bad = tmp_path / "bad.toml"
    bad.write_text(runs)
    code, _, err = run_cli(capsys, "run", "--profile", str(bad), "--dry-run", "--store", str(tmp_path / "s.sqlite"))
    assert code == 2 and needle in err and err.count("\n") == 1, err


def test_none_sets_an_option_that_takes_it_else_keeps_the_default():
    """'--train clip=none' turns clipping off (its help: "None: no clipping"), where it kept
    the default 1.0 and the default's run id; none for an option that does not take None
    keeps its default."""
    default, = build_specs(task=["adding"], model=["lstm"], device="cpu")
    off, = build_specs(task=["adding"], model=["lstm"], train={"clip": None}, device="cpu")
    assert default.train["clip"] == 1.0 and off.train["clip"] is None and off.run_id != default.run_id
    same, = build_specs(task=["adding"], model=["lstm"], train={"lr": None}, device="cpu")
    assert same.run_id == default.run_id


def test_a_profile_is_filtered_by_model_and_task_patterns(tmp_path):
    specs = build_specs(profile="smoke", model=["l*"], task=["add*", "copy"], device="cpu")
    assert {(s.task, s.model) for s in specs} == {("adding", "lstm"), ("copy", "lstm")}
    typo = tmp_path / "typo.toml"  # a name that is no model is said, filter or not
    typo.write_text('[[runs]]\ntask = "adding"\nmodels = ["lstm", "lstmm"]\n')
    for model in (None, ["lstm"]):
        with pytest.raises(UserError, match="unknown model 'lstmm'"):
            build_specs(profile=str(typo), model=model, device="cpu")


def test_outputs_never_overwrite_a_store_or_foreign_files(tmp_path, capsys):
    """export --out refuses the store itself (or any SQLite file) and a folder; report --out
    refuses a folder that holds other files and no earlier report (it would replace its
    README.md), and writes again where a report is."""
    store = str(tmp_path / "s.sqlite")
    assert run_cli(capsys, "run", *TINY, "--model", "rnn", "--store", store)[0] == 0
    before = (tmp_path / "s.sqlite").read_bytes()[:16]
    for out in (store, str(tmp_path)):
        code, _, err = run_cli(capsys, "export", "--store", store, "--out", out)
        assert code == 2 and err.count("\n") == 1 and ("store itself" in err or "is a folder" in err), err
    other = tmp_path / "other.sqlite"
    other.write_bytes((tmp_path / "s.sqlite").read_bytes())
    code, _, err = run_cli(capsys, "export", "--store", store, "--out", str(other))
    assert code == 2 and "is an SQLite file" in err
    assert (tmp_path / "s.sqlite").read_bytes()[:16] == before == b"SQLite format 3\x00"
    mine = tmp_path / "project"
    mine.mkdir()
    (mine / "README.md").write_text("my project\n")
    code, _, err = run_cli(capsys, "report", "--store", store, "--out", str(mine))
    assert code == 2 and "holds other files and no earlier report" in err
    assert (mine / "README.md").read_text() == "my project\n"
    out = tmp_path / "report"
    for _ in range(2):  # a new folder, then the folder of that report
        code, _, err = run_cli(capsys, "report", "--store", store, "--out", str(out))
        assert code == 0, err


def test_report_filters_repeat(tmp_path, capsys, monkeypatch):
    """'--models a --models b' (the README's example) keeps both, as '--models a b' does."""
    import reports.build

    seen = {}
    monkeypatch.setattr(reports.build, "build_report",
                        lambda store, out, **kw: seen.update(kw) or (tmp_path / "i.html", tmp_path / "r.md", []))
    run_cli(capsys, "report", "--models", "bn-*", "--models", "lstm", "--tasks", "adding", "--tasks", "copy")
    assert seen["models"] == ["bn-*", "lstm"] and seen["tasks"] == ["adding", "copy"]


def test_dry_run_writes_nothing(tmp_path, capsys):
    """--dry-run lists what would run, from the store where there is one, and neither
    creates a store nor registers runs in one."""
    store = tmp_path / "s.sqlite"
    code, out, err = run_cli(capsys, "run", *TINY, "--model", "rnn", "--seeds", "0-1", "--store", str(store),
                             "--dry-run")
    assert code == 0 and "2 runs in grid (2 new), 0 already done, 2 to run" in err and not store.exists()
    assert len(out.splitlines()) == 2
    run_cli(capsys, "run", *TINY, "--model", "rnn", "--seeds", "0", "--store", str(store))
    code, out, err = run_cli(capsys, "run", *TINY, "--model", "rnn", "--seeds", "0-2", "--store", str(store),
                             "--dry-run")
    assert "3 runs in grid (2 new), 1 already done, 2 to run" in err
    code, out, _ = run_cli(capsys, "status", "--store", str(store))
    assert "pending: 0" in out and "done: 1" in out
    empty = tmp_path / "empty.sqlite"
    empty.touch()
    assert run_cli(capsys, "run", *TINY, "--model", "rnn", "--store", str(empty), "--dry-run")[0] == 0
    assert empty.stat().st_size == 0  # an empty file stays empty


def test_status_lists_runs_without_a_reason_plainly(tmp_path, capsys):
    store = str(tmp_path / "s.sqlite")
    run_cli(capsys, "run", *TINY, "--model", "rnn", "--store", store)
    code, out, _ = run_cli(capsys, "status", "--store", store, "-v")
    assert code == 0 and "done" in out and "(nan)" not in out and "(None)" not in out


def test_a_store_locked_past_the_wait_is_one_line(tmp_path):
    import sqlite3

    from suite.store import Store

    path = tmp_path / "s.sqlite"
    Store(path).close()
    holder = sqlite3.connect(str(path), isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")  # another writer that never lets go
    store = Store(path)
    store.db.execute("PRAGMA busy_timeout=200")  # the minute it waits, shortened
    with pytest.raises(UserError, match="stayed locked by another process"):
        store.add_runs(build_specs(task=["adding"], model=["rnn"], device="cpu"))
    holder.rollback()


def test_run_on_a_damaged_store_is_one_line(tmp_path, capsys):
    """A store whose runs table is damaged past its header: 'run' (and --dry-run) say so in
    one line, as 'status' does."""
    import sqlite3

    from suite.store import Store

    path = tmp_path / "c.sqlite"
    store = Store(path)
    store.add_runs(build_specs(task=["adding"], model=["rnn"], seeds="0-599", device="cpu"))
    store.db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    try:
        leaf = store.db.execute("SELECT max(pageno) FROM dbstat WHERE name='runs' AND pagetype='leaf'").fetchone()[0]
    except sqlite3.OperationalError:
        pytest.skip("this SQLite has no dbstat table to find the runs table's pages with")
    page = store.db.execute("PRAGMA page_size").fetchone()[0]
    store.close()
    data = bytearray(path.read_bytes())
    data[(leaf - 1) * page:(leaf - 1) * page + 12] = b"\xff" * 12  # a leaf page's header of the runs table
    path.write_bytes(bytes(data))
    for extra in ([], ["--dry-run"]):
        code, _, err = run_cli(capsys, "run", *TINY, "--model", "rnn", "--store", str(path), *extra)
        assert code == 2 and "is damaged" in err and err.count("\n") == 1, err


def test_corrupt_store_is_one_line(tmp_path, capsys):
    store = tmp_path / "garbage.sqlite"
    store.write_bytes(b"this is not a database" * 100)
    code, _, err = run_cli(capsys, "status", "--store", str(store))
    assert code == 2 and "not a usable rnnbench store" in err and err.count("\n") == 1


def test_argparse_errors_are_one_line():
    p = subprocess.run([sys.executable, "-m", "suite.cli", "run", "--jobs", "x"], capture_output=True, text=True)
    assert p.returncode == 2 and p.stderr.count("\n") == 1 and "invalid int value" in p.stderr


def test_run_resume_status_export(tmp_path, capsys):
    store = str(tmp_path / "s.sqlite")
    code, _, err = run_cli(capsys, "run", *TINY, "--model", "rnn", "--model", "gru", "--seeds", "0-1",
                           "--store", store)
    assert code == 0 and "4 to run" in err and "done=4" in err
    # the same grid again trains nothing
    code, _, err = run_cli(capsys, "run", *TINY, "--model", "rnn", "--model", "gru", "--seeds", "0-1",
                           "--store", store)
    assert code == 0 and "4 already done, 0 to run" in err
    # a larger grid runs only the new runs
    code, _, err = run_cli(capsys, "run", *TINY, "--model", "rnn", "--model", "gru", "--seeds", "0-2",
                           "--store", store)
    assert "4 already done, 2 to run" in err
    code, out, _ = run_cli(capsys, "status", "--store", store)
    assert "done: 6" in out and "failed: 0" in out
    for fmt in ("csv", "parquet"):
        path = tmp_path / f"m.{fmt}"
        assert run_cli(capsys, "export", "--format", fmt, "--store", store, "--out", str(path))[0] == 0
        df = pd.read_csv(path) if fmt == "csv" else pd.read_parquet(path)
        assert {"run_id", "step", "split", "name", "value", "task", "model", "seed"} <= set(df.columns)
        assert set(df["model"]) == {"rnn", "gru"} and len(df["run_id"].unique()) == 6
    path = tmp_path / "summary.csv"
    run_cli(capsys, "export", "--what", "summary", "--store", store, "--out", str(path))
    summary = pd.read_csv(path)
    assert len(summary) == 6 and summary["test_mse"].notna().all()


def test_list(capsys):
    code, out, _ = run_cli(capsys, "list", "tasks")
    assert code == 0 and "adding" in out and "copy" in out
    code, out, _ = run_cli(capsys, "list", "models", "lstm")
    assert "forget_bias" in out and "hidden_size" in out
    code, out, _ = run_cli(capsys, "list", "profiles")
    assert "smoke" in out


def test_seeds_and_values():
    assert parse_seeds("0-4") == [0, 1, 2, 3, 4]
    assert parse_seeds("5,1,1") == [1, 5]
    assert parse_seeds(3) == [3]
    with pytest.raises(UserError):
        parse_seeds("a-b")
    assert parse_value("1e-3") == 1e-3 and parse_value("[1, 2]") == [1, 2]
    assert parse_value("none") is None and parse_value("adam") == "adam" and parse_value("true") is True


def test_grid_sweeps_and_identity():
    specs = build_specs(task=["adding"], model=["rnn", "gru"], sets={"task_args": {"T": [5, 10]}},
                        seeds="0-1", device="cpu")
    assert len(specs) == 8 and len({s.run_id for s in specs}) == 8
    again = build_specs(task=["adding"], model=["rnn", "gru"], sets={"task_args": {"T": [5, 10]}},
                        seeds="0-1", device="cpu")
    assert [s.run_id for s in specs] == [s.run_id for s in again]
    # every default is resolved into the spec, so its identity covers it
    assert specs[0].model_args["hidden_size"] == 128 and specs[0].train["optimizer"] == "adam"


def test_smoke_profile_expands():
    specs = build_specs(profile="smoke", device="cpu")
    tasks_models = {(s.task, s.model) for s in specs}
    assert {("adding", "lstm"), ("copy", "gru")} <= tasks_models
    assert all(len([s for s in specs if (s.task, s.model) == tm]) == 3 for tm in tasks_models)


def test_missing_data_stops_before_training(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("RNNBENCH_CACHE", str(tmp_path / "cache"))
    store = tmp_path / "s.sqlite"
    code, _, err = run_cli(capsys, "run", "--task", "pixel-mnist", "--model", "lstm", "--device", "cpu",
                           "--data-dir", str(tmp_path), "--store", str(store))
    assert code == 2 and err.count("\n") == 1
    assert "task 'pixel-mnist' needs MNIST" in err and "ylecun/mnist" in err and "train-images-idx3-ubyte" in err
    assert not store.exists()  # nothing was registered or trained


def test_preflight_is_per_task_configuration(tmp_path, monkeypatch):
    from suite.preflight import with_data

    monkeypatch.setenv("RNNBENCH_CACHE", str(tmp_path / "cache"))
    text = tmp_path / "corpus.txt"
    text.write_text("the quick brown fox jumps over the lazy dog. " * 400)
    specs = build_specs(task=["char-lm"], model=["rnn"], seeds="0", device="cpu",
                        task_args={"corpus": "local", "window": 20},
                        sets={"task_args": {"path": [str(text), str(tmp_path / "missing.txt")]}})
    kept, skipped = with_data(specs)
    assert len(specs) == 2 and [s.task_args["path"] for s in kept] == [str(text)]
    assert set(skipped) == {"char-lm"} and "missing.txt" in skipped["char-lm"]


def _train_spec(**train):
    return make_spec("adding", {}, "lstm", {}, train, 0, "cpu")


def test_sgd_eps_is_inert():
    assert _train_spec(optimizer="sgd", eps=1e-3).run_id == _train_spec(optimizer="sgd").run_id


@pytest.mark.parametrize("train,needle", [({"lr": 0.0}, "lr=0.0 is out of range; it must be > 0"),
                                          ({"optimizer": "sgd", "momentum": 1.5}, "momentum=1.5 is out of range")])
def test_range_edges_are_refused(train, needle):
    with pytest.raises(UserError, match=needle):
        _train_spec(**train)


def test_range_maximum_is_allowed():
    assert _train_spec(optimizer="sgd", momentum=1.0).train["momentum"] == 1.0


def test_an_int_for_a_float_is_the_same_run():
    one, other = _train_spec(lr=1), _train_spec(lr=1.0)
    assert isinstance(one.train["lr"], float) and one.run_id == other.run_id


PRECEDENCE_PROFILE = """
seeds = "0-2"
device = "cuda"
[train]
max_steps = 7
[model]
hidden_size = 16
[[runs]]
task = "adding"
task_args = { T = 8 }
models = ["rnn"]
model_args = { hidden_size = 8 }
train = { max_steps = 5 }
"""


def test_profile_precedence_profile_then_entry_then_command_line(tmp_path):
    path = tmp_path / "p.toml"
    path.write_text(PRECEDENCE_PROFILE)
    specs = build_specs(profile=str(path), device="cpu")
    assert {(s.model_args["hidden_size"], s.train["max_steps"], s.task_args["T"], s.device) for s in specs} == \
        {(8, 5, 8, "cpu")}
    assert len(specs) == 3
    cli = build_specs(profile=str(path), device="cpu", seeds="1", task_args={"T": 6},
                      model_args={"hidden_size": 4}, train={"max_steps": 3})
    assert [(s.seed, s.task_args["T"], s.model_args["hidden_size"], s.train["max_steps"]) for s in cli] == \
        [(1, 6, 4, 3)]
