"""The nightly pipeline: one store per night, last night as the report's baseline,
tasks without data left out with a note, asv regressions read, exit code."""

import json
from pathlib import Path

import pytest

from suite import nightly as nightly_mod
from suite.cli import main
from suite.errors import UserError
from suite.nightly import NightlyResult, asv_machine_name, nightly, parse_asv_compare, previous_store

PROFILE = """
description = "tiny nightly for tests"
seeds = "0-1"
device = "cpu"
[train]
max_steps = 4
eval_every = 2
batch_size = 8
eval_batch_size = 100
[model]
hidden_size = 4
[[runs]]
task = "adding"
task_args = { T = 5, n_val = 40, n_test = 40 }
models = ["rnn", "lstm"]
[[runs]]
task = "pixel-mnist"
models = ["rnn"]
"""


@pytest.fixture
def offline(tmp_path, monkeypatch):
    for var in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"):
        monkeypatch.setenv(var, "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("RNNBENCH_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("RNNBENCH_DATA", raising=False)


def test_two_nights(tmp_path, offline):
    profile = tmp_path / "tiny.toml"
    profile.write_text(PROFILE)
    root = tmp_path / "nightly"
    first = nightly(root=root, date="2026-01-01", profile=str(profile), asv=False)
    assert first.store == root / "2026-01-01.sqlite" and first.store.exists() and first.baseline is None
    assert set(first.skipped_tasks) == {"pixel-mnist"} and "ylecun/mnist" in first.skipped_tasks["pixel-mnist"]
    assert (root / "report" / "index.html").exists()
    second = nightly(root=root, date="2026-01-02", profile=str(profile), asv=False, report_dir=tmp_path / "r2")
    assert second.baseline == first.store
    text = (tmp_path / "r2" / "README.md").read_text()
    assert "Against the baseline" in text and "2026-01-01.sqlite" in text


def test_previous_store_is_the_latest_earlier_night(tmp_path):
    for name in ("2026-01-01", "2026-01-03", "2026-01-05", "notes"):
        (tmp_path / f"{name}.sqlite").touch()
    assert previous_store(tmp_path, "2026-01-05") == tmp_path / "2026-01-03.sqlite"
    assert previous_store(tmp_path, "2026-01-01") is None


def test_parse_asv_compare_both_formats():
    table = """
Benchmarks that have got worse:

| Change   | Before [aaaa]   | After [bbbb]   |   Ratio | Benchmark (Parameter)                              |
|----------|-----------------|----------------|---------|----------------------------------------------------|
| +        | 10.0±0.1ms      | 15.0±0.2ms     |    1.5  | benchmarks.TrainStep.time_train_step('lstm', 'adding') |
|          | 1.00±0ms        | 1.00±0ms       |    1    | benchmarks.TrainStep.time_train_step('rnn', 'adding') |
| -        | 2.00±0ms        | 1.00±0ms       |    0.5  | benchmarks.TrainStep.time_train_step('gru', 'adding') |
"""
    worse = parse_asv_compare(table)
    assert len(worse) == 1 and "'lstm', 'adding'" in worse[0]
    plain = "+     10.0ms     15.0ms  1.5  benchmarks.X.time_a\n-   2ms 1ms 0.5 benchmarks.X.time_b\n"
    assert parse_asv_compare(plain) == ["10.0ms     15.0ms  1.5  benchmarks.X.time_a"]
    # a time ratio to lstm that rose is a regression, stacked or not; one that fell is not;
    # failures always are
    ratio = ("| +  | 1.56 | 3.12 | 2.0 | benchmarks.Ratio.track_time_vs_lstm('bn-lstm', 'adding') |\n"
             "| -  | 2.00 | 1.11 | 0.56 | benchmarks.Ratio.track_time_vs_lstm('gru', 'adding') |\n"
             "| -  | 0.43 | 0.21 | 0.5 | benchmarks.StackedRatio.track_time_per_seed_vs_lstm('rnn-loop', 'adding') |\n"
             "| +  | 2.50 | 5.00 | 2.0 | benchmarks.StackedRatio.track_time_per_seed_vs_lstm('bn-lstm', 'adding') |\n"
             "| !  | 1.00 | failed | n/a | benchmarks.TrainStep.time_train_step('ln-gru', 'adding') |\n")
    worse = parse_asv_compare(ratio)
    assert len(worse) == 3 and "Ratio.track_time_vs_lstm('bn-lstm'" in worse[0]
    assert "StackedRatio.track_time_per_seed_vs_lstm('bn-lstm'" in worse[1] and "'ln-gru'" in worse[2]


def test_machine_name_carries_the_device():
    name = asv_machine_name("cpu")
    assert name.endswith("-cpu") and " " not in name


def test_exit_code_follows_regressions(monkeypatch, capsys, tmp_path):
    result = NightlyResult(Path("s"), None, report_regressions=["test mse of lstm on adding"])
    monkeypatch.setattr(nightly_mod, "nightly", lambda **kw: result)
    assert main(["nightly", "--root", str(tmp_path), "-q", "--no-asv"]) == 1
    assert "regressed: test mse of lstm on adding" in capsys.readouterr().err
    monkeypatch.setattr(nightly_mod, "nightly", lambda **kw: NightlyResult(Path("s"), None))
    assert main(["nightly", "--root", str(tmp_path), "-q"]) == 0



def test_bad_date_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="--date 'yesterday' is not a date"):
        nightly(root=tmp_path, date="yesterday", asv=False)


def test_stack_seeds_reaches_the_executor(tmp_path, offline, monkeypatch):
    import suite.executors

    seen = {}
    monkeypatch.setattr(suite.executors, "run_local", lambda specs, path, **kw: seen.update(kw))
    profile = tmp_path / "tiny.toml"
    profile.write_text(PROFILE)
    nightly(root=tmp_path / "n", date="2026-01-01", profile=str(profile), asv=False, stack_seeds=4)
    assert seen["options"].stack_seeds == 4


@pytest.mark.parametrize("device,stack", [("cpu", 1), ("cuda", nightly_mod.CUDA_STACK_SEEDS)])
def test_nightly_stacks_seeds_by_default_on_cuda_only(device, stack, tmp_path, offline, monkeypatch, capsys):
    """Without --stack-seeds a night on CUDA stacks up to 8 seeds of a spec (and says
    so), one on the CPU trains one run at a time."""
    import suite.executors

    seen = {}
    monkeypatch.setattr(suite.executors, "run_local", lambda specs, path, **kw: seen.update(kw))
    monkeypatch.setattr("torch.cuda.is_available", lambda: device == "cuda")  # nothing here touches the GPU
    profile = tmp_path / "tiny.toml"
    profile.write_text(PROFILE)
    assert main(["nightly", "--profile", str(profile), "--root", str(tmp_path / "n"), "--date", "2026-01-01",
                 "--device", device, "--no-asv", "-q"]) == 0
    assert seen["options"].stack_seeds == stack
    assert ("up to 8 seeds of a spec stacked" in capsys.readouterr().err) == (stack > 1)


def test_asv_compares_with_the_latest_other_benchmarked_commit(monkeypatch, tmp_path):
    machine = "m"
    results = tmp_path / ".asv" / "results" / machine
    results.mkdir(parents=True)
    for name, date, commit in (("a", 300, "head"), ("b", 100, "old"), ("c", 200, "newer"), ("machine", 0, "x")):
        (results / f"{name}.json").write_text(json.dumps({"date": date, "commit_hash": commit}))
    calls = []

    class Done:
        stdout = ""

    monkeypatch.setattr(nightly_mod, "REPO", tmp_path)
    monkeypatch.setattr(nightly_mod, "asv_machine_name", lambda device: machine)
    monkeypatch.setattr(nightly_mod, "_asv", lambda *a: calls.append(a) or Done())
    monkeypatch.setattr(nightly_mod.subprocess, "run", lambda *a, **k: type("P", (), {"stdout": "head\n"})())
    nightly_mod.run_asv("cpu")
    (cmp,) = [c for c in calls if c[0] == "compare"]
    assert cmp[1:3] == ("newer", "head") and "1.2" in cmp


def test_benchmarked_commits_are_in_date_order(monkeypatch, tmp_path):
    results = tmp_path / ".asv" / "results" / "m"
    results.mkdir(parents=True)
    for i in range(10):  # file names in the reverse order of their dates
        (results / f"r{i}.json").write_text(json.dumps({"date": 1000 - i, "commit_hash": f"c{i}"}))
    monkeypatch.setattr(nightly_mod, "REPO", tmp_path)
    assert [c for _, c in nightly_mod._benchmarked_commits("m")] == [f"c{i}" for i in reversed(range(10))]
