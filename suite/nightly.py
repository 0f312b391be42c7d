"""``rnnbench nightly``: the whole nightly pipeline in one command a cron job can call.

1. Run the ``nightly`` profile into tonight's store ``<root>/<date>.sqlite``
   (rerunning the command the same night resumes it). Tasks whose data is not
   available here are left out with a one-line note each.
2. Render the report with the previous night's store as the baseline, which flags
   metrics and throughputs that regressed beyond their confidence intervals.
3. Run the asv benchmarks for the current commit (machine name includes the GPU
   model), publish the asv site, and compare with the previous benchmarked commit.
4. Exit 1 if anything regressed (report or asv), else 0.

A fresh store per night is deliberate: run identities do not include the git
commit, so a shared store would treat last night's runs as done.
"""

from __future__ import annotations

import datetime as dt
import json
import re
import socket
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import torch

from suite.env import REPO, device_name
from suite.errors import UserError, make_folder
from suite.preflight import with_data


@dataclass
class NightlyResult:
    store: Path
    baseline: Path | None
    skipped_tasks: dict[str, str] = field(default_factory=dict)
    report_regressions: list[str] = field(default_factory=list)
    asv_regressions: list[str] = field(default_factory=list)
    stack_seeds: int = 1  # the most seeds of one spec that trained as one stack

    @property
    def regressed(self) -> bool:
        return bool(self.report_regressions or self.asv_regressions)


def night_store(root: Path, date: str) -> Path:
    return root / f"{date}.sqlite"


def is_date(text: str) -> bool:
    """Whether ``text`` is a calendar date written YYYY-MM-DD."""
    try:
        return bool(re.fullmatch(r"\d{4}-\d{2}-\d{2}", text)) and dt.date.fromisoformat(text) is not None
    except ValueError:
        return False


def previous_store(root: Path, date: str) -> Path | None:
    """The most recent store of a night before ``date`` (names sort by date)."""
    older = sorted(p for p in root.glob("*.sqlite") if is_date(p.stem) and p.stem < date)
    return older[-1] if older else None


def asv_machine_name(device: str) -> str:
    """Host name plus the accelerator model, so results of different GPUs never mix."""
    gpu = device_name(device) if device.startswith("cuda") else "cpu"
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", f"{socket.gethostname()}-{gpu}").strip("-")


def _asv(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "asv", *args], cwd=REPO, capture_output=True, text=True)


def _benchmarked_commits(machine: str) -> list[tuple[float, str]]:
    """(date, commit) of every commit with asv results on ``machine``."""
    out = []
    for f in (REPO / ".asv" / "results" / machine).glob("*.json"):
        if f.name == "machine.json":
            continue
        try:
            data = json.loads(f.read_text())
            out.append((float(data.get("date") or 0), data["commit_hash"]))
        except (OSError, ValueError, KeyError):
            continue
    return sorted(out)


def parse_asv_compare(text: str) -> list[str]:
    """Benchmarks ``asv compare`` shows as worse or newly failing.

    asv marks a larger value '+' and a smaller one '-', and a new failure '!'; every
    benchmark here tracks a number where larger is worse (times, time ratios, memory,
    MSE), so '+' is the regression. asv 0.6 prints a table (``| +  | 1.00ms | 1.50ms |
    1.5 | name |``); older versions print plain rows starting with the mark. Both are
    read.
    """
    worse = []
    for line in text.splitlines():
        if line.lstrip().startswith("|"):
            cells = [c.strip() for c in line.strip().strip("|").split("|")]
        else:
            cells = [line.strip()[:1], line.strip()[1:].strip()]
        if not cells or cells[0] not in ("+", "-", "!"):
            continue
        rest = " ".join(c for c in cells[1:] if c)
        if cells[0] in ("!", "+"):
            worse.append(rest)
    return worse


def run_asv(device: str, factor: float | None = None) -> list[str]:
    """Benchmark HEAD, publish, and return the regressions against the last benchmarked
    commit: slower by more than ``factor`` (the report's ``SPEED_FACTOR`` by default)."""
    from reports.cost import SPEED_FACTOR

    factor = factor or SPEED_FACTOR
    machine = asv_machine_name(device)
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True).stdout.strip()
    if not head:
        raise UserError("asv needs a git checkout (no HEAD commit found); use --no-asv")
    before = [c for _, c in _benchmarked_commits(machine) if c != head]
    _asv("machine", "--machine", machine, "--yes")
    run = _asv("run", "--python=same", "--machine", machine, "--set-commit-hash", head, "--launch-method", "spawn")
    problems = [f"asv run failed: {line}" for line in run.stdout.splitlines() if "failed" in line.lower()]
    _asv("publish")
    if before:
        cmp = _asv("compare", before[-1], head, "--machine", machine, "--factor", str(factor), "--split")
        problems += parse_asv_compare(cmp.stdout)
    return problems


# Seeds of a spec stacked by default on CUDA (``nightly``): measured on an H100, 8 stacked
# seeds train every custom cell at 0.63x to 2.35x cuDNN LSTM's speed per seed, against
# 0.15x to 0.72x one at a time (benchmarks/RESULTS.md); on the CPU stacking costs the
# gated cells a little, so it stays off there.
CUDA_STACK_SEEDS = 8


def nightly(*, root: Path, date: str | None = None, profile: str = "nightly", device: str | None = None,
            jobs: int = 1, report_dir: Path | None = None, asv: bool = True, stack_seeds: int | None = None,
            progress=None) -> NightlyResult:
    """Run (or resume) one night: the profile's runs into ``ROOT/<date>.sqlite``, the
    report against the previous night, asv. ``stack_seeds``: the most seeds of one spec
    trained as one stack where the model allows it (None: ``CUDA_STACK_SEEDS`` where the
    runs are on CUDA, else 1)."""
    from suite.executors import RunOptions, run_local
    from suite.profiles import build_specs
    from suite.store import Store

    date = date or dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d")
    if not is_date(date):
        raise UserError(f"--date '{date}' is not a date; use YYYY-MM-DD")
    if jobs < 1:
        raise UserError(f"--jobs {jobs} must be >= 1")
    make_folder(root, f"--root {root}", "pass another folder")
    store_path, baseline = night_store(root, date), previous_store(root, date)
    from reports.render import check_out

    check_out(report_dir or root / "report")  # before the night's training, not after it
    if baseline is not None:  # the same: a damaged earlier night is said before training
        try:
            Store(baseline, create=False).close()
        except UserError as e:
            raise UserError(f"the last night's store, the report's baseline: {e} (or move it out of {root})") from None
    specs = build_specs(profile=profile, device=device)
    specs, skipped = with_data(specs)
    if stack_seeds is None:
        stack_seeds = CUDA_STACK_SEEDS if any(s.device.startswith("cuda") for s in specs) else 1
    result = NightlyResult(store_path, baseline, skipped, stack_seeds=stack_seeds)
    store = Store(store_path)
    store.add_runs(specs)
    store.close()
    run_local(specs, store_path, jobs=jobs, options=RunOptions(stack_seeds=stack_seeds), progress=progress)
    from reports.build import build_report

    rendered = build_report(store_path, report_dir or root / "report", baseline=baseline)
    result.report_regressions = rendered.regressions
    if asv:
        result.asv_regressions = run_asv(specs[0].device if specs else "cpu")
    return result
