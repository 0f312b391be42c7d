"""Figures of the report. Each function takes plain frames/arrays and returns a
matplotlib Figure; it never saves (``reports.blocks.figure`` renders it).

Bands are 95% Student's t intervals of the mean over seeds, as the tables'
(``reports.stats.t_interval``: a bootstrap's fall far short of their level at a
handful of seeds), computed for every point of a curve at once.
"""

from __future__ import annotations

import warnings
from typing import Any, Mapping, Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import seaborn as sns  # noqa: E402

from reports.stats import geometric, t_interval  # noqa: E402

sns.set_theme(style="whitegrid", context="notebook", font_scale=0.85)


def band(matrix: np.ndarray, geometric: bool = False) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Mean over runs and a 95% Student's t band (``reports.stats.t_interval``), per column.

    Args:
        matrix: shape ``(n_runs, n_points)``; NaN marks a run without a value
            at that point (it is left out there).
        geometric: average ``log10`` values (for quantities spanning decades,
            such as gradient norms) and return them back on the linear scale;
            a value of 0 (or below) has no logarithm and is left out.

    Returns:
        ``(mean, low, high)``, each of shape ``(n_points,)``. Where a point has
        one run the band is the curve itself.
    """
    m = np.asarray(matrix, dtype=float)
    if geometric:
        with np.errstate(divide="ignore", invalid="ignore"):
            m = np.where(m > 0, np.log10(m), np.nan)
    with np.errstate(all="ignore"), warnings.catch_warnings():  # all-NaN columns are expected
        warnings.simplefilter("ignore", RuntimeWarning)
        mean = np.nanmean(m, axis=0)
        n = np.sum(~np.isnan(m), axis=0)
        low, high = t_interval(mean, np.nanstd(m, axis=0, ddof=1), n)
    low, high = np.where(n < 2, mean, low), np.where(n < 2, mean, high)
    if geometric:
        mean, low, high = 10.0**mean, 10.0**low, 10.0**high
    return mean, low, high


def _finish(ax: plt.Axes, xlabel: str, ylabel: str, xscale: str | None = None,
            yscale: str | None = None) -> plt.Figure:
    """Labels, scales, a small legend and a tight layout; returns the axes' figure."""
    if xscale:
        ax.set_xscale(xscale)
    if yscale:
        ax.set_yscale(yscale)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.legend(fontsize=7, loc="best")
    ax.figure.tight_layout()
    return ax.figure


def ci95(values: Any) -> tuple[float, float]:
    """95% t interval of the mean of one group of runs, for seaborn's ``errorbar`` (the
    same as :func:`band`'s and the tables')."""
    _, low, high = band(np.asarray(values, dtype=float)[:, None])
    return float(low[0]), float(high[0])


def _geo_mean(values: Any) -> float:
    """The cost table's geometric mean (``reports.stats.geometric``), for seaborn's ``estimator``."""
    return geometric(values).mean


def geo_ci95(values: Any) -> tuple[float, float]:
    """The cost table's 95% t interval of the geometric mean, for seaborn's ``errorbar``."""
    g = geometric(values)
    return g.ci_low, g.ci_high


def _levels(ax: plt.Axes, values: np.ndarray, chance: float | None, solved: float | None, log: bool) -> None:
    """Chance and solved lines, each drawn only when it lies near the data: a solved
    threshold two decades below every curve would squash the curves into a line."""
    lo, hi = float(np.nanmin(values)), float(np.nanmax(values))
    pad = (hi / lo) ** 0.08 if log and lo > 0 else None
    span = (lo / pad, hi * pad) if pad else (lo - 0.08 * (hi - lo + 1e-12), hi + 0.08 * (hi - lo + 1e-12))
    for level, style in ((chance, dict(color="0.4", ls="--", lw=1, label="chance")),
                         (solved, dict(color="tab:green", ls=":", lw=1.2, label="solved"))):
        if level is None:
            continue
        near = (lo / 10 <= level <= hi * 10) if log and lo > 0 else (lo - (hi - lo) <= level <= hi + (hi - lo))
        if near:
            ax.axhline(level, **style)
            span = (min(span[0], level), max(span[1], level))
    if np.isfinite(span).all() and span[1] > span[0]:
        ax.set_ylim(*span)


def learning_curves(curves: pd.DataFrame, wall: pd.DataFrame, colors: Mapping[str, Any], metric: str,
                    log: bool, chance: float | None, solved: float | None) -> plt.Figure:
    """Validation metric vs training step and vs training wall time, mean and 95% CI per variant.

    ``curves``: columns variant, run_id, step, value. ``wall``: variant, run_id,
    seconds, value (already on a common time grid per variant).
    """
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6), sharey=True)
    for ax, frame, x, xlabel in ((axes[0], curves, "step", "training step"),
                                 (axes[1], wall, "seconds", "training wall time (s)")):
        if not frame.empty:
            sns.lineplot(data=frame, x=x, y="value", hue="variant", palette=dict(colors), ax=ax,
                         errorbar=ci95, marker="o", markersize=3,
                         legend=ax is axes[0])
        ax.set_xlabel(xlabel)
        ax.set_ylabel(f"validation {metric}")
        if log:
            ax.set_yscale("log")
        if not curves.empty:
            _levels(ax, curves["value"].to_numpy(float), chance, solved, log)
    if axes[0].get_legend() is not None:
        axes[0].legend(fontsize=7, loc="best")
    fig.tight_layout()
    return fig


def curve_bands(ax: plt.Axes, x: np.ndarray, matrices: Mapping[str, np.ndarray],
                colors: Mapping[str, Any], geometric: bool = True) -> None:
    """One line per variant (geometric mean over runs) with its t band."""
    for name, mat in matrices.items():
        mean, low, high = band(mat, geometric=geometric)
        ax.plot(x, mean, color=colors.get(name), lw=1.5, label=f"{name} (n={mat.shape[0]})")
        if mat.shape[0] > 1:
            ax.fill_between(x, low, high, color=colors.get(name), alpha=0.2, lw=0)


def gradient_flow(early: Mapping[str, np.ndarray], late: Mapping[str, np.ndarray],
                  colors: Mapping[str, Any], late_label: str) -> plt.Figure:
    """‖∂L/∂h_t‖ vs t on a log scale: at the start of training and at its end.

    ``early``/``late``: variant -> ``(n_runs, T)`` profiles.
    """
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6), sharey=True)
    means = []
    for ax, prof, title in ((axes[0], early, "start of training (step 0)"), (axes[1], late, late_label)):
        if prof:
            T = next(iter(prof.values())).shape[1]
            curve_bands(ax, np.arange(T), prof, colors)
            means += [band(m, geometric=True)[0] for m in prof.values()]
        ax.set_yscale("log")
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("time step t")
    axes[0].set_ylabel("‖∂L/∂h_t‖ (probe batch)")
    shown = np.concatenate(means) if means else np.array([])
    shown = shown[np.isfinite(shown) & (shown > 0)]
    if shown.size:  # the curves' range: the bands of two or three seeds can span hundreds of decades
        axes[0].set_ylim(shown.min() / 10, shown.max() * 10)
    if early or late:
        axes[0 if early else 1].legend(fontsize=7, loc="best")
    fig.tight_layout()
    return fig


def grad_norms(x: np.ndarray, matrices: Mapping[str, np.ndarray], colors: Mapping[str, Any],
               clips: Sequence[float]) -> plt.Figure:
    """Global gradient norm before clipping vs training step (geometric mean per bin),
    with a dashed line at each clipping threshold the runs used."""
    fig, ax = plt.subplots(figsize=(7, 3.4))
    curve_bands(ax, x, matrices, colors)
    for clip in clips:
        ax.axhline(clip, color="0.3", ls="--", lw=1, label=f"clip = {clip:g}")
    return _finish(ax, "training step", "‖∇θ L‖ before clipping", yscale="log")


def cd_diagram(names: Sequence[str], ranks: Sequence[float], cd: float,
               groups: Sequence[Sequence[int]]) -> plt.Figure:
    """Critical-difference diagram (Demšar 2006): average ranks on an axis, the CD as
    a scale bar, and thick bars joining methods that are not significantly different."""
    k = len(names)
    order = list(np.argsort(ranks, kind="stable"))
    height = 1.2 + 0.28 * ((k + 1) // 2) + 0.15 * len(groups)
    fig, ax = plt.subplots(figsize=(8, height))
    lo, hi = 1, max(k, 2)
    ax.set_xlim(lo - 0.6, hi + 0.6)
    ax.plot([lo, hi], [0, 0], color="k", lw=1)
    for r in range(lo, hi + 1):
        ax.plot([r, r], [0, 0.08], color="k", lw=1)
        ax.text(r, 0.12, str(r), ha="center", va="bottom", fontsize=8)
    ax.plot([lo, lo + cd], [0.45, 0.45], color="k", lw=1.5)
    for end in (lo, lo + cd):
        ax.plot([end, end], [0.4, 0.5], color="k", lw=1.5)
    ax.text(lo + cd / 2, 0.52, f"CD = {cd:.2f}", ha="center", va="bottom", fontsize=8)
    gap = 0.14
    base = -0.2 - gap * len(groups)
    half = (k + 1) // 2
    for pos, i in enumerate(order):
        left = pos < half
        level = base - 0.28 * (pos if left else k - 1 - pos)
        edge = lo - 0.5 if left else hi + 0.5
        ax.plot([ranks[i], ranks[i], edge], [0, level, level], color="0.2", lw=0.9)
        ax.text(edge + (-0.03 if left else 0.03), level, f"{names[i]} ({ranks[i]:.2f})",
                ha="right" if left else "left", va="center", fontsize=8)
    for j, g in enumerate(groups):
        rs = [ranks[i] for i in g]
        y = -0.12 - gap * j
        ax.plot([min(rs) - 0.03, max(rs) + 0.03], [y, y], color="k", lw=3, solid_capstyle="round")
    ax.set_ylim(base - 0.28 * half - 0.1, 0.75)
    ax.axis("off")
    fig.tight_layout()
    return fig


def pointplot(frame: pd.DataFrame, x: str, y: str, hue: str, colors: Mapping[str, Any], xlabel: str,
              ylabel: str, log: bool, order: Sequence[str]) -> plt.Figure:
    """Mean and 95% CI of ``y`` per value of an ablation axis ``x``, one line per ``hue``."""
    fig, ax = plt.subplots(figsize=(6.5, 3.4))
    palette = {h: colors.get(h, "0.3") for h in frame[hue].unique()}
    sns.pointplot(data=frame, x=x, y=y, hue=hue, order=list(order), palette=palette, ax=ax,
                  errorbar=ci95, dodge=0.2 if frame[hue].nunique() > 1 else False, markersize=4, linewidth=1.2)
    return _finish(ax, xlabel, ylabel, yscale="log" if log else None)


def cost_points(frame: pd.DataFrame, colors: Mapping[str, Any]) -> plt.Figure:
    """Training throughput (samples/s, log scale) per task setting and variant: geometric
    mean and 95% CI, as the cost table's.

    Points rather than bars: on a log axis a bar's length is meaningless."""
    n = frame["variant"].nunique() * max(frame["task_label"].nunique(), 1)
    fig, ax = plt.subplots(figsize=(7, 1.4 + 0.25 * n))
    sns.pointplot(data=frame, y="task_label", x="samples_per_s", hue="variant", ax=ax,
                  palette={v: colors.get(v, "0.3") for v in frame["variant"].unique()},
                  estimator=_geo_mean, errorbar=geo_ci95, orient="h", dodge=0.4 if frame["variant"].nunique() > 1 else False,
                  linestyle="none", markersize=5)
    return _finish(ax, "training samples per second (log scale)", "", xscale="log")
