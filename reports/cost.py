"""Sections on cost, environment, and regressions against a baseline store.

Throughput is the runner's training-only figure (evaluation and probes excluded):
samples/s, timesteps/s and ms per step, with peak memory where the device records
it (CUDA). Ratios are to ``lstm`` (cuDNN) on the same task setting and device, the
yardstick ANCHORS.md uses. A regression is a change beyond the confidence
intervals: the two 95% intervals do not overlap and the current one is worse.
"""

from __future__ import annotations

import datetime as dt
import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from reports import figures
from reports.blocks import Section, Text, figure, fmt, fmt_ci, note, table
from reports.data import ReportData
from reports.stats import Summary, summarize

REFERENCE = "lstm"


def _num(frame: pd.DataFrame, col: str) -> pd.Series:
    return pd.to_numeric(frame[col], errors="coerce") if col in frame else pd.Series(np.nan, index=frame.index)


def _reference(variants: list[str], variant: str) -> str | None:
    """The lstm variant to compare ``variant`` with: the only one, or the one with the same switches."""
    refs = [v for v in variants if v == REFERENCE or v.startswith(REFERENCE + " [")]
    if len(refs) == 1:
        return refs[0]
    suffix = variant[variant.find(" ["):] if " [" in variant else ""
    same = [v for v in refs if v == REFERENCE + suffix]
    return same[0] if same else None


def cost_section(data: ReportData) -> Section:
    sec = Section("cost", "Cost")
    runs = data.runs[_num(data.runs, "samples_per_s").notna()] if not data.empty else data.runs
    if runs.empty:
        return sec.add(note("No run recorded its throughput."))
    sec.add(Text("Training throughput is the steady state: it excludes evaluation, gradient-flow probes and "
                 "each run's start-up (its first step; with CUDA graphs also the eager warm-up steps and the "
                 "capture), whose time is the 'start-up (s)' column. Runs trained as one seed stack "
                 "(rnnbench run --stack-seeds) are charged their share: 1/S of the stack's time and memory. "
                 "'step time × lstm' is the mean step time divided by that of lstm (cuDNN) on the same task "
                 "setting and device: above 1 is slower."))
    for device, dev_runs in runs.groupby("device", sort=True):
        sec.add(Text(f"device: {device}", "heading"))
        sec.add(figure(figures.cost_points(dev_runs.assign(samples_per_s=_num(dev_runs, "samples_per_s")), data.colors),
                       f"cost_{device}", f"Training samples per second on {device} per task setting and model "
                                         "(mean over seeds, 95% t CI), log scale."))
        for label, g in dev_runs.groupby("task_label", sort=True):
            sec.add(*_cost_table(label, device, g))
        if _num(dev_runs, "peak_mem_mb").isna().all():
            sec.add(note(f"Peak memory is recorded on CUDA devices only; none for {device}."))
    return sec


def _cost_table(label: str, device: str, runs: pd.DataFrame) -> list[Any]:
    stats: dict[str, dict[str, Summary]] = {}
    paths: dict[str, str] = {}
    stacks: dict[str, str] = {}  # seeds trained per step (rnnbench run --stack-seeds)
    for variant, g in runs.groupby("variant", sort=True):
        stats[variant] = {c: summarize(_num(g, c))
                          for c in ("samples_per_s", "timesteps_per_s", "step_ms", "warmup_s", "peak_mem_mb")}
        paths[variant] = ", ".join(sorted(g["path"].dropna().astype(str).unique())) if "path" in g else "–"
        stacks[variant] = ", ".join(str(int(n)) for n in sorted(_num(g, "seed_stack").fillna(1).unique()))
    variants = list(stats)
    rows, slow = [], []
    for v in variants:
        s = stats[v]
        ref = _reference(variants, v)
        ratio = s["step_ms"].mean / stats[ref]["step_ms"].mean if ref else float("nan")
        mem = s["peak_mem_mb"].mean / stats[ref]["peak_mem_mb"].mean if ref else float("nan")
        rows.append({"model": v, "runs": s["samples_per_s"].n, "samples/s [95% CI]": fmt_ci(s["samples_per_s"]),
                     "timesteps/s": fmt(s["timesteps_per_s"].mean), "ms/step [95% CI]": fmt_ci(s["step_ms"]),
                     "start-up (s)": fmt(s["warmup_s"].mean, 3), "step time × lstm": fmt(ratio, 3), "peak memory (MB)": fmt(s["peak_mem_mb"].mean),
                     "memory × lstm": fmt(mem, 3), "seeds per step": stacks[v], "path": paths[v] or "–"})
        if math.isfinite(ratio) and v != ref:
            slow.append((ratio, v))
    out: list[Any] = [table(rows, f"Cost on {label}, {device}.")]
    if slow:
        out.append(Text(f"Step time on {label} ({device}) relative to lstm: "
                        + ", ".join(f"{v} {r:.2f}×" for r, v in sorted(slow, reverse=True)) + "."))
    elif not any(_reference(variants, v) for v in variants):
        out.append(note(f"No {REFERENCE} runs on {label} ({device}), so no ratios."))
    return out


# -- environment -------------------------------------------------------------------

ENV_KEYS = ("host", "device_name", "python", "torch", "cuda", "cudnn", "numpy", "threads", "cpu_capability",
            "rnnbench", "switches")


def _utc(ts: float | None) -> str:
    if ts is None or (isinstance(ts, float) and math.isnan(ts)):
        return "–"
    return dt.datetime.fromtimestamp(float(ts), dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")


def environment_section(data: ReportData) -> Section:
    sec = Section("environment", "Environment")
    if data.empty:
        return sec.add(note("No finished runs, so no environment to report."))
    env = pd.DataFrame([{k: r["env"].get(k) for k in ENV_KEYS + ("git_commit",)} | {"device": r["device"]}
                        for _, r in data.runs.iterrows()])
    env = env.map(lambda v: "–" if v is None or (isinstance(v, float) and math.isnan(v)) else str(v) or "defaults")
    keys = ["device", *ENV_KEYS]
    combos = env.groupby(keys, sort=True).size().reset_index(name="runs")
    sec.add(table(combos.to_dict("records"), "Where the runs ran ('–': not recorded; a run that failed "
                                             "before training has no environment; switches: the RNNBENCH_ "
                                             "variables that picked another code path, suite/env.py)."))
    commits = env.groupby("git_commit", sort=True).size().reset_index(name="runs")
    sec.add(table(commits.to_dict("records"), "Code version of the runs (git commit of the checkout; '+dirty' "
                                              "means uncommitted changes)."))
    if env["git_commit"].str.endswith("+dirty").any():
        sec.add(note("Some runs came from a checkout with uncommitted changes; their code is not reproducible "
                     "from the commit alone."))
    started, ended = _num(data.runs, "started"), _num(data.runs, "ended")
    sec.add(Text(f"Runs started between {_utc(started.min())} and {_utc(started.max())}; the last ended "
                 f"{_utc(ended.max())}. {len(data.runs)} finished runs are in this report"
                 + (f"; {data.unfinished} pending or running runs are not." if data.unfinished else ".")))
    return sec


# -- baseline ----------------------------------------------------------------------


def compare(cur: Summary, base: Summary, higher_is_better: bool) -> str:
    """'regressed' / 'improved' when the 95% CIs do not overlap; 'no CI' with fewer than two runs."""
    if any(math.isnan(x) for x in (cur.ci_low, cur.ci_high, base.ci_low, base.ci_high)):
        return "no CI"
    if cur.ci_low > base.ci_high:
        return "improved" if higher_is_better else "regressed"
    if cur.ci_high < base.ci_low:
        return "regressed" if higher_is_better else "improved"
    return "within CI"


@dataclass
class Comparison:
    """This store against a baseline: one row per (configuration, metric), the
    regressions among them in words, and how many configurations are new or gone."""

    rows: list[dict] = field(default_factory=list)
    regressions: list[str] = field(default_factory=list)
    new: int = 0
    gone: int = 0


def compare_to_baseline(data: ReportData, base: ReportData) -> Comparison:
    """Primary test metric and training throughput of every configuration in both stores."""
    out = Comparison()
    if data.empty or base.empty:
        return out
    base_keys = set(base.runs["config_key"])
    for key, g in data.runs.groupby("config_key", sort=True):
        if key not in base_keys:
            continue
        b = base.runs[base.runs["config_key"] == key]
        first = g.iloc[0]
        info = data.tasks[first["task_label"]]
        checks = ((f"test {info.primary}", "primary", info.higher_is_better, g["status"] == "done", b["status"] == "done"),
                  ("samples/s", "samples_per_s", True, g.index == g.index, b.index == b.index))
        for name, col, hib, gm, bm in checks:
            cur, old = summarize(_num(g[gm], col)), summarize(_num(b[bm], col))
            if cur.n == 0 and old.n == 0:
                continue
            verdict = compare(cur, old, hib)
            change = (cur.mean - old.mean) / abs(old.mean) * 100 if old.mean else float("nan")
            out.rows.append({"task": first["task_label"], "model": first["variant"], "device": first["device"],
                             "metric": name, "now [95% CI]": fmt_ci(cur), "baseline [95% CI]": fmt_ci(old),
                             "change %": fmt(change, 3), "verdict": verdict.upper() if verdict == "regressed" else verdict})
            if verdict == "regressed":
                out.regressions.append(f"{name} of {first['variant']} on {first['task_label']} ({first['device']}): "
                                       f"{fmt(cur.mean)} now vs {fmt(old.mean)}")
    out.new = len(set(data.runs["config_key"]) - base_keys)
    out.gone = len(base_keys - set(data.runs["config_key"]))
    return out


def baseline_section(data: ReportData, base: ReportData, base_path: str, comparison: Comparison) -> Section:
    sec = Section("baseline", "Against the baseline")
    if data.empty or base.empty:
        return sec.add(note(f"Nothing to compare: {'this store' if data.empty else base_path} has no finished runs."))
    if not comparison.rows:
        return sec.add(note(f"No configuration of this store is in the baseline {base_path}."))
    sec.add(Text(f"Baseline: {base_path}. Configurations are matched by their full spec without seed and "
                 "code version; a change is flagged when the two 95% t intervals do not overlap."))
    flagged = comparison.regressions
    if flagged:
        sec.add(Text(f"{len(flagged)} regression(s) beyond the CI: " + "; ".join(flagged) + ".", "alert"))
    else:
        sec.add(Text("No metric or throughput regressed beyond its confidence interval."))
    sec.add(table(comparison.rows, "Primary test metric and training throughput, now and in the baseline."))
    if comparison.new or comparison.gone:
        sec.add(note(f"{comparison.new} configuration(s) are new in this store and {comparison.gone} "
                     "of the baseline are absent."))
    return sec
