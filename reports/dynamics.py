"""Sections on training dynamics: learning curves and gradients.

Learning curves are the validation metric at each evaluation, against steps and
against training wall time. Gradients come in two forms: the gradient-flow
profile ‖∂L/∂h_t‖ over t on a fixed probe batch (recorded at step 0, every
``probe_every`` steps and at the end; suite/diagnostics.py), summarized by its
log-linear slope (``reports.stats.slope_loglinear``), and the global gradient
norm before clipping at every logged step, with per-parameter-group norms.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from reports import figures
from reports.blocks import POSITIVE, Section, Text, bounds, figure, fmt, fmt_ci, note, table
from reports.data import ReportData, TaskInfo, start_up
from reports.stats import slope_loglinear, summarize

GRID = 25  # wall-time grid points per variant
BINS = 60  # step bins of the gradient-norm curves


def _val_curves(data: ReportData, label: str, info: TaskInfo) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Validation curves per run (step, value) and on a wall-time grid (seconds, value).

    A run that stopped early (it solved the task) keeps its last value up to the
    last evaluation of its variant, so the mean is not taken over the slow runs
    only; diverged runs end where they diverged.
    """
    m = data.metrics
    if m.empty:
        return pd.DataFrame(), pd.DataFrame()
    m = m[m["task_label"] == label]
    val = m[(m["split"] == "val") & (m["name"] == info.primary)][["run_id", "variant", "step", "value"]]
    wall = m[(m["split"] == "train") & (m["name"] == "wall_time")][["run_id", "step", "value"]]
    runs = data.runs.set_index("run_id")
    status = runs["status"]
    # start-up (a run's first steps' compilation and warm-up, ``warmup_s``) left out, as in
    # Cost and the time to solve: one run's 52 s C++ build put its whole curve 52 s late
    per_eval = runs.reindex(wall["run_id"]).reset_index(drop=True)
    wall = wall.assign(value=wall["value"].to_numpy() - start_up(per_eval, wall["step"].to_numpy()).to_numpy())
    steps_out, wall_out = [], []
    all_steps = np.sort(val["step"].unique())  # every evaluation step of the task, all models
    for variant, g in val.groupby("variant", sort=True):
        walls = wall[wall["run_id"].isin(g["run_id"])]
        grid = np.linspace(0.0, walls["value"].max(), GRID) if not walls.empty else None
        for run_id, r in g.groupby("run_id", sort=True):
            series = r.set_index("step")["value"].sort_index()
            carry = status.get(run_id) == "done"
            full = series.reindex(all_steps[all_steps <= (all_steps.max() if carry else series.index.max())])
            full = full.ffill() if carry else full
            steps_out.append(pd.DataFrame({"variant": variant, "run_id": run_id, "step": full.index,
                                           "value": full.to_numpy()}))
            w = walls[walls["run_id"] == run_id].set_index("step")["value"].reindex(series.index)
            ok = w.notna().to_numpy()
            if grid is None or ok.sum() == 0:
                continue
            secs, vals = w.to_numpy()[ok], series.to_numpy()[ok]
            on_grid = np.interp(grid, secs, vals, left=np.nan, right=vals[-1] if carry else np.nan)
            on_grid[grid > secs[-1]] = vals[-1] if carry else np.nan
            wall_out.append(pd.DataFrame({"variant": variant, "run_id": run_id, "seconds": grid, "value": on_grid}))
    cat = lambda parts: pd.concat(parts, ignore_index=True).dropna() if parts else pd.DataFrame()  # noqa: E731
    return cat(steps_out), cat(wall_out)


def learning_curves_section(data: ReportData) -> Section:
    sec = Section("curves", "Learning curves")
    for label, info in data.tasks.items():
        sec.add(Text(label, "heading"))
        steps, wall = _val_curves(data, label, info)
        if steps.empty:
            sec.add(note(f"No validation metrics recorded for {label}."))
            continue
        vals = steps["value"]
        log = not info.higher_is_better and bool((vals > 0).all()) and vals.max() > 10 * vals.min()
        sec.add(figure(figures.learning_curves(steps, wall, data.colors, info.primary, log, info.chance, info.solved),
                       f"curves_{label}",
                       f"Validation {info.primary} on {label} against training steps (left) and training wall "
                       f"time (right, evaluation and start-up excluded): mean over seeds with a 95% t band. A run that "
                       f"has finished (solved early, or simply faster) keeps its last value; dashed: chance, "
                       f"dotted: solved (drawn when near the curves)."))
        rows, first_step, last_step = [], int(steps["step"].min()), int(steps["step"].max())
        runs = data.of_task(label)
        for variant, g in steps.groupby("variant", sort=True):
            best = summarize(runs[runs["variant"] == variant].get("best_val", pd.Series(dtype=float)))
            rows.append({"model": variant, "runs": g["run_id"].nunique(),
                         f"first eval (step {first_step})": fmt(g[g["step"] == first_step]["value"].mean()),
                         f"at step {last_step}": fmt(g[g["step"] == last_step]["value"].mean()),
                         f"best validation {info.primary} [95% CI]": fmt_ci(best, within=bounds(info.primary))})
        sec.add(table(rows, f"Validation {info.primary} on {label}: mean at the first and last evaluation, "
                            "and each run's best (the checkpoint whose test score is reported)."))
    if not data.tasks:
        sec.add(note("No finished runs."))
    return sec


# -- gradients ---------------------------------------------------------------------


def _profiles(data: ReportData, label: str) -> tuple[dict, dict, dict]:
    """variant -> (n_runs, T) profiles at each run's first and last probe, and the last probe steps."""
    d = data.diagnostics
    if d.empty:
        return {}, {}, {}
    d = d[(d["task_label"] == label) & (d["kind"] == "grad_flow")]
    early: dict[str, list] = {}
    late: dict[str, list] = {}
    late_steps: dict[str, list] = {}
    for (variant, run_id), g in d.groupby(["variant", "run_id"], sort=True):
        first, last = g["step"].min(), g["step"].max()
        prof = lambda s: g[g["step"] == s].sort_values("idx")["value"].to_numpy(float)  # noqa: E731
        early.setdefault(variant, []).append(prof(first))
        if last > first:
            late.setdefault(variant, []).append(prof(last))
            late_steps.setdefault(variant, []).append(int(last))

    def stack(profiles: dict[str, list]) -> dict[str, np.ndarray]:
        out = {}
        for k, v in profiles.items():
            T = max(len(p) for p in v)
            out[k] = np.vstack([np.pad(p, (0, T - len(p)), constant_values=np.nan) for p in v])
        return out

    return stack(early), stack(late), late_steps


def slopes(profiles: np.ndarray) -> np.ndarray:
    """Per-run decay of a profile: decades of ‖∂L/∂h_t‖ per step back from the last step."""
    T = profiles.shape[1]
    back = np.arange(T)[::-1]  # steps back from the last step
    return np.array([slope_loglinear(back, p) for p in profiles])


def gradient_section(data: ReportData) -> Section:
    sec = Section("gradients", "Gradient flow")
    sec.add(Text("‖∂L/∂h_t‖ is the total derivative of the loss on a fixed probe batch with respect to the "
                 "top layer's hidden state at step t (through the recurrence and the head; cuDNN models are "
                 "probed through an explicit-loop copy with the same weights). Its slope is in decades per "
                 "step back from the last step: negative means the gradient vanishes going back in time, "
                 "−0.1 means a factor 10 lost every 10 steps."))
    for label, info in data.tasks.items():
        sec.add(Text(label, "heading"))
        sec.add(*_flow_blocks(data, label, info))
        sec.add(*_norm_blocks(data, label))
    if not data.tasks:
        sec.add(note("No finished runs."))
    return sec


def _flow_blocks(data: ReportData, label: str, info: TaskInfo) -> list[Any]:
    early, late, late_steps = _profiles(data, label)
    if not early:
        return [note(f"No gradient-flow probes recorded for {label}.")]
    steps = sorted(s for v in late_steps.values() for s in v)
    late_label = (f"end of training (step {steps[0]})" if steps and steps[0] == steps[-1]
                  else f"end of training (steps {steps[0]}–{steps[-1]})" if steps else "end of training")
    zeros = {v: _zero_runs(p) for v, p in late.items()}
    caption = (f"‖∂L/∂h_t‖ against t on {label}, log scale: geometric mean over seeds with a 95% t band, at "
               f"step 0 (left) and at each run's last probe (right); the axis spans the curves, not the bands.")
    if any(zeros.values()) or any(_zero_runs(p) for p in early.values()):
        caption += (" Some seeds' gradients reach exactly 0 (below float32's smallest value): a point's mean "
                    "leaves those seeds out, so where the curve goes on it shows the other seeds.")
    out: list[Any] = [figure(figures.gradient_flow(early, late, data.colors, late_label), f"gradflow_{label}",
                             caption)]
    rows, sentences = [], []
    for variant in sorted(early):
        s0 = summarize(slopes(early[variant]))
        s1 = summarize(slopes(late[variant])) if variant in late else summarize([])
        ratio = _first_last_ratio(late[variant]) if variant in late else float("nan")
        row = {"model": variant, "runs": early[variant].shape[0], "slope at start [95% CI]": fmt_ci(s0),
               "slope at end [95% CI]": fmt_ci(s1), "‖∂L/∂h_0‖ / ‖∂L/∂h_T−1‖ at end": fmt(ratio)}
        if any(zeros.values()):
            row["seeds reaching 0 at end"] = f"{zeros.get(variant, 0)} of {late[variant].shape[0]}" \
                if variant in late else "–"
        rows.append(row)
        n_zero = int((late[variant][:, 0] == 0).sum()) if variant in late else 0  # 0 at t = 0
        n = late[variant].shape[0] if variant in late else 0
        if n_zero and ratio == 0:
            rest = _first_last_ratio(late[variant], positive=True)
            others = (f", and {fmt(rest)}× the gradient at the last step in the other"
                      f"{'s' if n - n_zero > 1 else ''}" if np.isfinite(rest) else "")
            sentences.append(f"{variant}: by the end of training the gradient at t = 0 is 0 (below float32's "
                             f"smallest value) in {n_zero} of {n} seeds{others}")
        elif np.isfinite(ratio):
            sentences.append(f"{variant}: by the end of training the gradient at t = 0 is {fmt(ratio)}× "
                             f"the gradient at the last step")
    caption = f"Gradient-flow slopes on {label} (decades per step back; mean over seeds, 95% CI)."
    if any(zeros.values()):
        caption += (" A seed's slope is fitted over the steps where its gradient is above 0; one that reaches "
                    "exactly 0 vanishes faster than its slope says.")
    out.append(table(rows, caption))
    if sentences:
        out.append(Text("; ".join(sentences) + "."))
    unprobed = sorted(set(early) - set(late))
    if unprobed:
        out.append(note(f"No probe after step 0 for {', '.join(unprobed)} on {label} (its runs ended before the "
                        "next probe, e.g. diverged), so nothing at the end of training."))
    if info.padded:
        out.append(note(f"{label}'s sequences differ in length: t is aligned at each sequence's last step (t = "
                        "T−1 is every sequence's readout, t = T−1−k the step k before it), over the sequences "
                        "that long, scaled to the whole batch; the earliest t hold only the longest sequences."))
    if info.target == "every":
        out.append(note(f"{label} puts a loss on every step, so ∂L/∂h_t includes a direct term at each t; "
                        "the profile shows vanishing less clearly than on last-step tasks."))
    return out


def _first_last_ratio(profiles: np.ndarray, positive: bool = False) -> float:
    """Geometric mean over seeds of ‖∂L/∂h_0‖ / ‖∂L/∂h_T−1‖: 0 where a seed's gradient at
    t = 0 is exactly 0 (float32 underflow: it vanished), unless ``positive`` asks for
    the mean of the other seeds."""
    first, last = profiles[:, 0], profiles[:, -1]
    ok = np.isfinite(first) & np.isfinite(last) & (last > 0) & (first >= 0)
    if not positive and (ok & (first == 0)).any():
        return 0.0
    ok &= first > 0
    return float(10 ** np.mean(np.log10(first[ok] / last[ok]))) if ok.any() else float("nan")


def _zero_runs(profiles: np.ndarray) -> int:
    """Seeds whose profile reaches exactly 0 somewhere (float32 underflow)."""
    return int((profiles == 0).any(axis=1).sum())


def _norm_blocks(data: ReportData, label: str) -> list[Any]:
    m = data.metrics
    if m.empty:
        return []
    m = m[(m["task_label"] == label) & (m["split"] == "train")]
    gn = m[m["name"] == "grad_norm"]
    if gn.empty:
        return [note(f"No gradient norms recorded for {label}.")]
    clip_of = {r["run_id"]: r["settings"].get("train.clip") for _, r in data.of_task(label).iterrows()}
    clips = sorted({c for c in clip_of.values() if c is not None})
    edges = np.linspace(0, gn["step"].max(), min(BINS, gn["step"].nunique()) + 1)
    centers = (edges[:-1] + edges[1:]) / 2
    mats = {}
    for variant, g in gn.groupby("variant", sort=True):
        rows = []
        for _, r in g.groupby("run_id", sort=True):
            b = np.clip(np.digitize(r["step"], edges[1:-1]), 0, len(centers) - 1)
            with np.errstate(divide="ignore"):
                logs = pd.Series(np.log10(r["value"].to_numpy(float))).replace(-np.inf, np.nan)
            binned = logs.groupby(b).mean().reindex(range(len(centers)))
            rows.append(10 ** binned.to_numpy())
        mats[variant] = np.vstack(rows)
    dashed = ("dashed: the clipping threshold" + ("s" if len(clips) > 1 else "") if clips
              else "no run clipped its gradient")
    out: list[Any] = [figure(figures.grad_norms(centers, mats, data.colors, clips), f"gradnorm_{label}",
                             f"Global gradient norm before clipping on {label} (geometric mean per step bin and "
                             f"over seeds, 95% t band); {dashed}.")]
    groups = sorted(n.split("/", 1)[1] for n in m["name"].unique() if n.startswith("grad_norm/"))
    rows = []
    for variant, g in m.groupby("variant", sort=True):
        per_run = g.pivot_table(index=["run_id", "step"], columns="name", values="value").reset_index()
        if "grad_norm" not in per_run:
            continue
        med = per_run.groupby("run_id")["grad_norm"].median()
        limit = per_run["run_id"].map(lambda r: clip_of.get(r) or np.inf).astype(float)  # each run's own clip
        post = per_run.assign(post=np.minimum(per_run["grad_norm"], limit)).groupby("run_id")["post"].median()
        row = {"model": variant, "median norm before clip [95% CI]": fmt_ci(summarize(med), within=POSITIVE),
               "median after clip": fmt(post.mean())}
        if "clipped" in per_run:
            row["fraction of steps clipped [95% CI]"] = fmt_ci(summarize(per_run.groupby("run_id")["clipped"].mean()), within=(0.0, 1.0))
        for grp in groups:
            col = f"grad_norm/{grp}"
            row[f"{grp} (median)"] = fmt(per_run.groupby("run_id")[col].median().mean()) if col in per_run else "–"
        rows.append(row)
    out.append(table(rows, f"Gradient norms on {label}: per run the median over logged steps, then the mean over "
                           "seeds. The norm after clipping is min(norm, clip); per-group columns are the norms "
                           "of each parameter group (input, recurrent, norm, head, encoder)."))
    return out
