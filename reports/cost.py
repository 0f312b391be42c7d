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
from scipy import stats

from reports import figures
from reports.blocks import ALPHA, POSITIVE, Section, Text, bounds, figure, fmt, fmt_ci, fmt_peq, note, table
from reports.data import ReportData, numeric
from reports.stats import Summary, geometric, ratio_interval, summarize

REFERENCE = "lstm"


def _timings(runs: pd.DataFrame, col: str) -> pd.Series:
    """``col`` once per timing: the runs of one seed stack share theirs (one measurement,
    not S), so they count once, at their mean."""
    values = numeric(runs, col)
    stack = runs["stack_id"] if "stack_id" in runs else pd.Series(np.nan, index=runs.index)
    return values.groupby(stack.where(stack.notna(), runs["run_id"]), sort=True).mean()


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
    runs = data.runs[numeric(data.runs, "samples_per_s").notna()] if not data.empty else data.runs
    if runs.empty:
        return sec.add(note("No run recorded its throughput."))
    sec.add(Text("Training throughput is the steady state: it excludes evaluation, gradient-flow probes and "
                 "each run's start-up (its first step; with CUDA graphs also the eager warm-up steps and the "
                 "capture), whose time is the 'start-up (s)' column. Runs trained as one seed stack "
                 "(rnnbench run --stack-seeds) are charged their share: 1/S of the stack's time and memory; "
                 "they are one timing, so the intervals count each stack once. "
                 "'step time × lstm' is a model's step time divided by lstm's on the same task setting and "
                 "device (lstm: cuDNN on a GPU, PyTorch's own kernels on a CPU): above 1 is slower. "
                 "timesteps/s counts the steps the batches held, padding included: a padded batch is as "
                 "long as its longest sequence, and that is the work done."))
    for device, dev_runs in runs.groupby("device", sort=True):
        sec.add(Text(f"device: {device}", "heading"))
        per_timing = pd.concat([_timings(g, "samples_per_s").rename("samples_per_s").reset_index(drop=True)
                                .to_frame().assign(task_label=label, variant=variant)
                                for (label, variant), g in dev_runs.groupby(["task_label", "variant"], sort=True)],
                               ignore_index=True)  # a seed stack is one timing, as in the table
        sec.add(figure(figures.cost_points(per_timing, data.colors),
                       f"cost_{device}", f"Training samples per second on {device} per task setting and model "
                                         "(geometric mean over timings, 95% t CI), log scale."))
        for label, g in dev_runs.groupby("task_label", sort=True):
            sec.add(*_cost_table(label, device, g))
        if numeric(dev_runs, "peak_mem_mb").isna().all():
            sec.add(note(f"Peak memory is recorded on CUDA devices only; none for {device}."))
    return sec


def _cost_table(label: str, device: str, runs: pd.DataFrame) -> list[Any]:
    stats: dict[str, dict[str, Summary]] = {}
    paths: dict[str, str] = {}
    stacks: dict[str, str] = {}  # seeds trained per step (rnnbench run --stack-seeds)
    counts: dict[str, int] = {}
    timings: dict[str, pd.Series] = {}
    for variant, g in runs.groupby("variant", sort=True):
        counts[variant] = len(g)
        timings[variant] = _timings(g, "step_ms")  # a seed stack's runs: one timing
        stats[variant] = {c: (geometric if c in RATES else summarize)(_timings(g, c))
                          for c in (*RATES, "warmup_s", "peak_mem_mb")}
        paths[variant] = ", ".join(sorted(g["path"].dropna().astype(str).unique())) if "path" in g else "–"
        stacks[variant] = ", ".join(str(int(n)) for n in sorted(numeric(g, "seed_stack").fillna(1).unique()))
    variants = list(stats)
    rows, slow, noisy = [], [], []
    for v in variants:
        s = stats[v]
        ref = _reference(variants, v)
        ratio = (ratio_interval(timings[v], timings[ref]) if ref and v != ref else
                 (1.0, float("nan"), float("nan")) if ref else (float("nan"),) * 3)
        mem = s["peak_mem_mb"].mean / stats[ref]["peak_mem_mb"].mean if ref else float("nan")
        rows.append({"model": v, "runs": counts[v], "samples/s [95% CI]": fmt_ci(s["samples_per_s"], "timing"),
                     "timesteps/s": fmt(s["timesteps_per_s"].mean), "ms/step [95% CI]": fmt_ci(s["step_ms"], "timing"),
                     "start-up (s)": fmt(s["warmup_s"].mean, 3),
                     "step time × lstm [95% CI]": "1 (reference)" if v == ref else _fmt_ratio(ratio),
                     "peak memory (MB)": fmt(s["peak_mem_mb"].mean),
                     "memory × lstm": fmt(mem, 3), "seeds per step": stacks[v], "path": paths[v] or "–"})
        if math.isfinite(ratio[0]) and v != ref:
            slow.append((ratio, v))
        if s["step_ms"].n > 1 and s["step_ms"].std > NOISY:
            noisy.append(f"{v} (×{s['step_ms'].std:.2f})")
    out: list[Any] = [table(rows, f"Cost on {label}, {device}: geometric means over timings (a seed stack is one), "
                                  "with 95% t intervals on the log scale; the ratio to lstm is that of the geometric "
                                  "means, with Welch's interval.")]
    if slow:
        out.append(Text(f"Step time on {label} ({device}) relative to lstm: "
                        + ", ".join(f"{v} {_fmt_ratio(r)}×" for r, v in sorted(slow, reverse=True)) + "."))
    elif not any(_reference(variants, v) for v in variants):
        out.append(note(f"No {REFERENCE} runs on {label} ({device}), so no ratios."))
    if noisy:
        out.append(note(f"Step times on {label} vary from run to run by a geometric standard deviation above "
                        f"×{NOISY}: {', '.join(noisy)}. The machine was likely shared (or the runs' paths "
                        "differ): treat these timings and ratios as rough."))
    return out


RATES = ("samples_per_s", "timesteps_per_s", "step_ms")  # timings: geometric means (reports.stats.geometric)
NOISY = 1.5  # a geometric standard deviation of step times above this is flagged


def _fmt_ratio(r: tuple[float, float, float]) -> str:
    ratio, low, high = r
    if not math.isfinite(ratio):
        return "–"
    return fmt(ratio, 3) if not math.isfinite(low) else f"{fmt(ratio, 3)} [{fmt(low, 3)}, {fmt(high, 3)}]"


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
    started, ended = numeric(data.runs, "started"), numeric(data.runs, "ended")
    sec.add(Text(f"Runs started between {_utc(started.min())} and {_utc(started.max())}; the last ended "
                 f"{_utc(ended.max())}. {len(data.runs)} finished runs are in this report"
                 + (f"; {data.unfinished} pending or running runs are not." if data.unfinished else ".")))
    return sec


# -- baseline ----------------------------------------------------------------------


# Where a side has one timing (one run, or one seed stack) there is no interval: a
# throughput is then called regressed when the time it implies grew by more than this
# factor, as `asv compare --factor 1.2` (suite/nightly.py) calls a benchmark slower.
SPEED_FACTOR = 1.2


def compare(cur: Summary, base: Summary, higher_is_better: bool, factor: float | None = None) -> str:
    """'regressed' / 'improved' when the 95% CIs do not overlap; with fewer than two
    values on a side, 'no CI', or with ``factor`` a ratio of the two means beyond it
    (worse: base / current above it where higher is better, current / base where not)."""
    if any(math.isnan(x) for x in (cur.ci_low, cur.ci_high, base.ci_low, base.ci_high)):
        if factor is None or not (cur.n and base.n and cur.mean > 0 and base.mean > 0):
            return "no CI"
        worse = base.mean / cur.mean if higher_is_better else cur.mean / base.mean
        return "regressed" if worse > factor else "improved" if worse < 1 / factor else "within factor"
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


def _finished_share(ok_now: int, n_now: int, ok_base: int, n_base: int) -> tuple[str, float]:
    """'regressed' with Fisher's one-sided p where fewer of the runs finished (done, not
    diverged or failed: ``ok`` of ``n``) now than in the baseline: significantly, or none
    of them where at least half did."""
    counts = [[ok_now, n_now - ok_now], [ok_base, n_base - ok_base]]
    p, p_better = (float(stats.fisher_exact(counts, alternative=side).pvalue) for side in ("less", "greater"))
    # None finishing where most did is flagged even where the seeds are too few for the
    # test (0 of 3 against 3 of 3 is p = 0.05); 0 of 8 against 1 of 8 is chance.
    worse = p < ALPHA or (ok_now == 0 and 2 * ok_base >= n_base)
    better = p_better < ALPHA or (ok_base == 0 and 2 * ok_now >= n_now)
    return ("regressed" if worse else "improved" if better else "within chance"), p


def compare_to_baseline(data: ReportData, base: ReportData) -> Comparison:
    """Finished runs, primary test metric and training throughput of every configuration
    in both stores."""
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
        where = f"of {first['variant']} on {first['task_label']} ({first['device']})"
        row = {"task": first["task_label"], "model": first["variant"], "device": first["device"]}
        ok_now, ok_base = int((g["status"] == "done").sum()), int((b["status"] == "done").sum())
        if ok_now < len(g) or ok_base < len(b):  # a row only where some run did not finish
            verdict, p = _finished_share(ok_now, len(g), ok_base, len(b))
            out.rows.append({**row, "metric": "runs finished (not diverged or failed)",
                             "now [95% CI]": f"{ok_now}/{len(g)}", "baseline [95% CI]": f"{ok_base}/{len(b)}",
                             "change %": f"Fisher one-sided {fmt_peq(p)}", "verdict": _verdict(verdict)})
            if verdict == "regressed":
                out.regressions.append(f"runs finished {where}: {ok_now}/{len(g)} now vs {ok_base}/{len(b)}")
        checks = ((f"test {info.primary}", info.higher_is_better, numeric(g[g["status"] == "done"], "primary"),
                   numeric(b[b["status"] == "done"], "primary"), None, "run", bounds(info.primary)),
                  ("samples/s", True, _timings(g, "samples_per_s"), _timings(b, "samples_per_s"), SPEED_FACTOR,
                   "timing", POSITIVE))
        for name, hib, now_values, base_values, factor, unit, within in checks:
            stat = geometric if unit == "timing" else summarize  # timings as in the Cost table
            cur, old = stat(now_values), stat(base_values)
            if cur.n == 0 and old.n == 0:
                continue
            verdict = compare(cur, old, hib, factor)
            change = (cur.mean - old.mean) / abs(old.mean) * 100 if old.mean else float("nan")
            out.rows.append({**row, "metric": name, "now [95% CI]": fmt_ci(cur, unit, within),
                             "baseline [95% CI]": fmt_ci(old, unit, within),
                             "change %": fmt(change, 3), "verdict": _verdict(verdict)})
            if verdict == "regressed":
                out.regressions.append(f"{name} {where}: {fmt(cur.mean)} now vs {fmt(old.mean)}"
                                       + ("" if cur.n > 1 and old.n > 1 else
                                          f" (one timing on a side: slower by more than a factor {SPEED_FACTOR})"))
    out.new = len(set(data.runs["config_key"]) - base_keys)
    out.gone = len(base_keys - set(data.runs["config_key"]))
    if not out.rows:
        out.regressions.append("no configuration of this store is in the baseline, so nothing was compared "
                               "(a changed profile or switch?)")
    return out


def _verdict(verdict: str) -> str:
    return verdict.upper() if verdict == "regressed" else verdict


def baseline_section(data: ReportData, base: ReportData, base_path: str, comparison: Comparison) -> Section:
    sec = Section("baseline", "Against the baseline")
    if data.empty or base.empty:
        return sec.add(note(f"Nothing to compare: {'this store' if data.empty else base_path} has no finished runs."))
    if not comparison.rows:
        return sec.add(Text(f"No configuration of this store is in the baseline {base_path}, so nothing was "
                            "compared.", "alert"))
    sec.add(Text(f"Baseline: {base_path}. Configurations are matched by their full spec without seed and "
                 "code version (settings at their defaults left out, so a switch added since matches where "
                 "it is at its default); a change is flagged when the two 95% t intervals do not overlap. "
                 "The runs of one seed stack share one timing, so they count once. Where a side has a single "
                 f"timing, a throughput whose time per sample grew by more than a factor {SPEED_FACTOR} (asv "
                 "compare's) is flagged. Fewer finished runs (the rest diverged or failed) are flagged where "
                 f"Fisher's exact test (one-sided) gives p < {ALPHA}, or where none finished and at least half "
                 "did in the baseline."))
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
