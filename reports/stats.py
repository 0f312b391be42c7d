"""Statistics for comparing recurrent models over seeds and tasks.

Why this module exists: a benchmark of recurrent nets is run with a handful of
seeds per (task, model), and the differences between models are often smaller
than the spread between seeds. A table of means alone invites reading noise as
signal, so every number the reports print goes through these functions:

* one (task, model) cell: :func:`summarize` -- mean, median, std and a
  Student's t confidence interval over seeds (:func:`t_interval`);
* two models on one task: :func:`welch_t`, :func:`mann_whitney` (named tests),
  :func:`prob_improvement` and :func:`cliffs_delta` (effect sizes), and
  :func:`holm` to correct for the many pairs in :func:`pairwise_table`;
* many models over many tasks: :func:`friedman` (with the Iman--Davenport F),
  :func:`nemenyi_cd` and :func:`cd_groups` for a critical-difference diagram
  (Demsar, "Statistical Comparisons of Classifiers over Multiple Data Sets",
  JMLR 7, 2006);
* a gradient-flow profile ||dL/dh_t|| over t: :func:`slope_loglinear`, its
  decay in decades per time step.

Conventions (restated in each docstring):

* ``values``, ``a``, ``b``: 1-D arrays of one scalar per run (seed),
  shape ``(n_runs,)``. NaN entries are dropped (``nan_policy='omit'``), so a
  diverged run recorded as NaN reduces ``n``; record divergence separately.
* ``scores``: shape ``(n_datasets, n_methods)``, one aggregate score per task
  (row) and method (column). Rank 1 is the best method of a row.
* ``higher_is_better`` says which direction of a score is an improvement
  (accuracy: True; loss, bits per character, steps to solve: False).

Everything is a pure function of numpy arrays; scipy.stats does the work where
it has the test. Results are plain floats, dicts, small frozen dataclasses or a
pandas DataFrame, and randomness (a bootstrap, a Monte Carlo permutation test)
is fixed by ``seed``.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
import warnings
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd
from numpy.typing import ArrayLike
from scipy import stats

__all__ = [
    "Summary",
    "FriedmanResult",
    "t_interval",
    "summarize",
    "welch_t",
    "mann_whitney",
    "prob_improvement",
    "cliffs_delta",
    "holm",
    "friedman_from_ranks",
    "friedman",
    "nemenyi_cd",
    "cd_groups",
    "pairwise_table",
    "PAIRWISE_COLUMNS",
    "slope_loglinear",
]

NAN = float("nan")


def _clean(values: ArrayLike) -> np.ndarray:
    """1-D float array of ``values`` with NaN entries removed."""
    x = np.asarray(values, dtype=float).ravel()
    return x[~np.isnan(x)]


# Permutation tests enumerate every arrangement up to this many (Mann--Whitney
# with ties, Friedman over few tasks); beyond it they draw MONTE_CARLO of them.
EXACT_PERMUTATIONS = 100_000
MONTE_CARLO = 9_999


def _exact_mean_p(x: np.ndarray, y: np.ndarray) -> float:
    """Two-sided p-value of the difference of means of two constant samples of different
    values over every split of their pooled values into groups of their sizes: theirs is
    the one most extreme split, so twice its share (scipy's two-sided convention),
    2 / C(n_a + n_b, n_a)."""
    return min(1.0, 2.0 / math.comb(x.size + y.size, x.size))


def _exact_mwu_p(x: np.ndarray, y: np.ndarray) -> float:
    """Two-sided p-value of Mann--Whitney's U (midranks for ties) over every split of the
    pooled values into groups of their sizes: twice the smaller tail, at most 1 (scipy's
    convention). Any sizes, one run a side included (scipy's permutation method wants
    two)."""
    ranks = stats.rankdata(np.concatenate([x, y]))
    base = x.size * (x.size + 1) / 2.0
    splits = np.fromiter(itertools.chain.from_iterable(itertools.combinations(range(ranks.size), x.size)),
                         dtype=np.intp).reshape(-1, x.size)
    u = ranks[splits].sum(axis=1) - base
    obs = ranks[: x.size].sum() - base
    tol = 1e-9 * max(1.0, abs(obs))
    return float(min(1.0, 2.0 * min(np.mean(u >= obs - tol), np.mean(u <= obs + tol))))


# --------------------------------------------------------------------------
# One (task, model) cell
# --------------------------------------------------------------------------


@dataclass(frozen=True)
class Summary:
    """Summary of one sample of runs; see :func:`summarize`."""

    n: int
    mean: float
    median: float
    std: float
    ci_low: float
    ci_high: float


def geometric(values: ArrayLike, confidence: float = 0.95) -> Summary:
    """Geometric mean of positive values (timings, rates) with the t interval of their
    logarithms' mean, back on the linear scale.

    Why for timings: a run's step time and its throughput are reciprocals, and only
    geometric means keep them so (the arithmetic means of 50 / 27.18 ms and of the
    samples/s disagreed by 2x on a busy machine); a timing's noise is multiplicative, and
    the interval stays positive. ``std`` is the geometric standard deviation (a factor).
    Non-positive and NaN values are dropped.
    """
    x = _clean(values)
    x = x[x > 0]
    s = summarize(np.log(x), confidence)
    if s.n == 0:
        return s
    exp = lambda v: float(np.exp(v)) if np.isfinite(v) else NAN  # noqa: E731
    return Summary(s.n, exp(s.mean), exp(s.median), exp(s.std), exp(s.ci_low), exp(s.ci_high))


def ratio_interval(a: ArrayLike, b: ArrayLike, confidence: float = 0.95) -> tuple[float, float, float]:
    """Ratio of the geometric means of positive samples ``a`` and ``b`` with Welch's t
    interval of the difference of their logarithms' means (``scipy.stats.ttest_ind``),
    back on the linear scale: ``(ratio, low, high)``; NaN ends with fewer than two values
    a side (one timing says nothing of its spread)."""
    la, lb = (np.log(v[v > 0]) for v in (_clean(a), _clean(b)))
    if la.size == 0 or lb.size == 0:
        return NAN, NAN, NAN
    ratio = float(np.exp(la.mean() - lb.mean()))
    if la.size < 2 or lb.size < 2:
        return ratio, NAN, NAN
    if np.ptp(la) == 0 and np.ptp(lb) == 0:
        return ratio, ratio, ratio
    ci = stats.ttest_ind(la, lb, equal_var=False).confidence_interval(confidence)
    return ratio, float(np.exp(ci.low)), float(np.exp(ci.high))


def t_interval(mean: ArrayLike, std: ArrayLike, n: ArrayLike, confidence: float = 0.95,
               ) -> tuple[np.ndarray, np.ndarray]:
    """Student's t interval of a mean: ``mean -+ t(n - 1) std / sqrt(n)``, elementwise.

    Why t and not a bootstrap: with the handful of seeds a benchmark runs, a
    bootstrap resamples too few values to see the spread of the mean. For
    normal samples (4,000 of each size, 2,000 resamples each) the 95%
    percentile-bootstrap interval covered the true mean 50% of the time at 2
    seeds, 75% at 3, 84% at 5 and 90% at 10, the t interval 95% at each
    (``tests/test_stats.py`` checks the t interval's); intervals that narrow
    also make two equal models' intervals miss each other far more often
    than the level says.

    Args:
        mean, std, n: broadcastable arrays; ``std`` with ``ddof=1``.
        confidence: confidence level.

    Returns:
        ``(low, high)``; NaN where ``n < 2``, the point where ``std`` is 0.

    Example:
        >>> low, high = t_interval(2.0, 1.0, 4)
        >>> round(float(low), 4), round(float(high), 4)
        (0.4088, 3.5912)
    """
    mean, std, n = (np.asarray(v, dtype=float) for v in (mean, std, n))
    with np.errstate(all="ignore"):
        half = stats.t.ppf(0.5 + confidence / 2.0, n - 1.0) * std / np.sqrt(n)
    half = np.where(n >= 2, np.where(std == 0, 0.0, half), NAN)
    return mean - half, mean + half


def summarize(
    values: ArrayLike,
    confidence: float = 0.95,
    n_resamples: int = 10_000,
    seed: int = 0,
    method: str = "t",
) -> Summary:
    """Mean, median, std and a confidence interval of the mean.

    Args:
        values: shape ``(n_runs,)``, one score per seed. NaN entries are
            dropped and not counted in ``n``.
        confidence: confidence level of the interval.
        n_resamples: bootstrap resamples (``scipy.stats.bootstrap``).
        seed: seed of the resampling; equal seeds give equal intervals.
        method: ``"t"`` (default: Student's t interval, :func:`t_interval`,
            which keeps its coverage at 2 to 5 seeds where a bootstrap's
            falls far short), or a bootstrap's: ``"percentile"``, ``"basic"``
            or ``"BCa"``.

    Returns:
        ``Summary(n, mean, median, std, ci_low, ci_high)``; ``std`` uses
        ``ddof=1``. Edge cases: ``n == 0`` gives NaN everywhere; ``n == 1``
        gives the point as mean and median and NaN for std and both CI ends
        (one run says nothing about the spread); constant values give the
        degenerate interval ``(value, value)``.

    Example:
        >>> s = summarize([1.0, 2.0, 3.0, 4.0, 10.0])
        >>> s.n, s.mean, s.median, round(s.ci_low, 3), round(s.ci_high, 3)
        (5, 4.0, 3.0, -0.39, 8.39)
        >>> summarize([7.0]).ci_low
        nan
    """
    x = _clean(values)
    n = int(x.size)
    if n == 0:
        return Summary(0, NAN, NAN, NAN, NAN, NAN)
    mean, median = float(np.mean(x)), float(np.median(x))
    if n == 1:
        return Summary(1, mean, median, NAN, NAN, NAN)
    std = float(np.std(x, ddof=1))
    if np.all(x == x[0]):  # every resample is the same; BCa would give NaN
        return Summary(n, mean, median, std, mean, mean)
    if method == "t":
        low, high = t_interval(mean, std, n, confidence)
        return Summary(n, mean, median, std, float(low), float(high))
    res = stats.bootstrap(
        (x,),
        np.mean,
        n_resamples=n_resamples,
        confidence_level=confidence,
        method=method,
        rng=np.random.default_rng(seed),
    )
    ci = res.confidence_interval
    return Summary(n, mean, median, std, float(ci.low), float(ci.high))


# --------------------------------------------------------------------------
# Two models on one task
# --------------------------------------------------------------------------


def welch_t(a: ArrayLike, b: ArrayLike) -> tuple[float, float]:
    """Welch's unequal-variance t-test, two-sided.

    Args:
        a, b: shapes ``(n_a,)`` and ``(n_b,)``, one score per seed; NaN dropped.

    Returns:
        ``(t, pvalue)`` from ``scipy.stats.ttest_ind(a, b, equal_var=False)``;
        ``t > 0`` when ``mean(a) > mean(b)``. ``(nan, nan)`` when either
        sample has fewer than 2 runs. Both samples constant: ``(0.0, 1.0)``
        when the constants are equal (no difference is observed at all);
        when they differ, ``t`` is ``+-inf`` and the p-value, where scipy's
        0 would call any difference certain (two runs at accuracy 1.0
        against two at 0.5: "p < 0.001"), is that of the exact permutation
        test of the difference of means (:func:`_exact_mean_p`), the
        smallest these sizes allow: 1/3 for 2 runs against 2.

    Example:
        >>> t, p = welch_t([1.0, 2.0], [3.0, 4.0])
        >>> round(t, 4), round(p, 4)
        (-2.8284, 0.1056)
        >>> welch_t([1.0, 1.0], [1.0, 1.0])
        (0.0, 1.0)
        >>> welch_t([1.0], [2.0, 3.0])
        (nan, nan)
        >>> welch_t([1.0, 1.0], [0.5, 0.5])
        (inf, 0.3333333333333333)
    """
    x, y = _clean(a), _clean(b)
    if x.size < 2 or y.size < 2:
        return NAN, NAN
    if np.ptp(x) == 0 and np.ptp(y) == 0:
        if x[0] == y[0]:
            return 0.0, 1.0
        return math.copysign(math.inf, x[0] - y[0]), _exact_mean_p(x, y)
    with warnings.catch_warnings(), np.errstate(all="ignore"):
        warnings.simplefilter("ignore", RuntimeWarning)
        res = stats.ttest_ind(x, y, equal_var=False)
    return float(res.statistic), float(res.pvalue)


def mann_whitney(a: ArrayLike, b: ArrayLike) -> tuple[float, float]:
    """Mann--Whitney U test, two-sided, exact wherever ties allow.

    Args:
        a, b: shapes ``(n_a,)`` and ``(n_b,)``, one score per seed; NaN dropped.

    Returns:
        ``(U, pvalue)`` from ``scipy.stats.mannwhitneyu(a, b)``. ``U`` is the
        statistic of ``a``: the number of pairs with ``a > b`` plus half the
        ties, so ``U / (n_a * n_b)`` is :func:`prob_improvement`. scipy uses
        the exact distribution for small samples without ties and the normal
        approximation otherwise, which with ties among a handful of seeds
        (every unsolved run's "steps to solve" is the same) is far too small:
        ``[1, 1, 1]`` against ``[2, 2, 2]`` gets 0.047 where no split of six
        runs can give less than 0.1. So with ties the p-value is the exact
        permutation distribution's wherever it has at most
        ``EXACT_PERMUTATIONS`` splits (10 runs against 10 has 184,756: not
        exact, but the normal approximation holds by then). A single run per
        side still has a valid (large) exact p-value. ``(nan, nan)`` when a
        sample is empty; identical constant samples give ``p = 1``.

    Example:
        >>> mann_whitney([1.0, 2.0], [3.0, 4.0])
        (0.0, 0.3333333333333333)
        >>> mann_whitney([], [1.0])
        (nan, nan)
        >>> mann_whitney([1.0, 1.0, 1.0], [2.0, 2.0, 2.0])
        (0.0, 0.1)
    """
    x, y = _clean(a), _clean(b)
    if x.size == 0 or y.size == 0:
        return NAN, NAN
    with warnings.catch_warnings(), np.errstate(all="ignore"):
        warnings.simplefilter("ignore", RuntimeWarning)
        res = stats.mannwhitneyu(x, y, alternative="two-sided")
    p = float(res.pvalue)
    pooled = np.concatenate([x, y])
    tied = np.unique(pooled).size < pooled.size
    if tied and np.ptp(pooled) > 0 and math.comb(pooled.size, x.size) <= EXACT_PERMUTATIONS:
        p = _exact_mwu_p(x, y)
    if np.isnan(p) and np.ptp(pooled) == 0:
        p = 1.0  # all values tied: no evidence of any difference
    return float(res.statistic), p


def prob_improvement(a: ArrayLike, b: ArrayLike, higher_is_better: bool = True) -> float:
    """Probability that a run of ``a`` beats a run of ``b``.

    ``P(X_a > X_b) + 0.5 * P(X_a == X_b)`` over all ``n_a * n_b`` pairs (the
    "probability of improvement" of rliable; equal to ``U / (n_a * n_b)`` of
    the Mann--Whitney test). With ``higher_is_better=False`` "beats" means
    "is lower". 0.5 means no tendency either way.

    Args:
        a, b: shapes ``(n_a,)`` and ``(n_b,)``, one score per seed; NaN dropped.
        higher_is_better: direction of improvement.

    Returns:
        A float in ``[0, 1]``; NaN when a sample is empty.

    Example:
        >>> prob_improvement([1, 2], [0, 3])
        0.5
        >>> prob_improvement([2, 2], [1, 2])  # ties count half
        0.75
        >>> prob_improvement([2, 2], [1, 2], higher_is_better=False)
        0.25
    """
    d = cliffs_delta(a, b, higher_is_better)
    return (d + 1.0) / 2.0


def cliffs_delta(a: ArrayLike, b: ArrayLike, higher_is_better: bool = True) -> float:
    """Cliff's delta: ``P(a better) - P(b better)`` = ``2 * prob_improvement - 1``.

    Args:
        a, b: shapes ``(n_a,)`` and ``(n_b,)``, one score per seed; NaN dropped.
        higher_is_better: direction of improvement; positive delta means ``a``
            tends to be better.

    Returns:
        A float in ``[-1, 1]``; NaN when a sample is empty.

    Example:
        >>> cliffs_delta([3, 4], [1, 2])
        1.0
        >>> cliffs_delta([3, 4], [1, 2], higher_is_better=False)
        -1.0
    """
    x, y = _clean(a), _clean(b)
    if x.size == 0 or y.size == 0:
        return NAN
    delta = float(np.mean(np.sign(x[:, None] - y[None, :])))
    return delta if higher_is_better else -delta


def holm(pvalues: ArrayLike) -> np.ndarray:
    """Holm--Bonferroni step-down adjusted p-values.

    The i-th smallest of m p-values is multiplied by ``m - i + 1`` (i from 1),
    made monotone by a running maximum and capped at 1; reject where the
    adjusted p-value is below alpha. Controls the family-wise error rate
    under any dependence. (``scipy.stats.false_discovery_control`` is
    Benjamini--Hochberg, a different, FDR-controlling procedure.)

    Args:
        pvalues: any shape; NaN entries stay NaN and do not count toward m.

    Returns:
        Adjusted p-values, same shape as ``pvalues``.

    Example:
        >>> holm([0.01, 0.04, 0.03, 0.005]).tolist()
        [0.03, 0.06, 0.06, 0.02]
        >>> holm([0.01, float("nan"), 0.02]).tolist()
        [0.02, nan, 0.02]
    """
    p = np.asarray(pvalues, dtype=float)
    if np.any((p < 0) | (p > 1)):
        raise ValueError("p-values must lie in [0, 1]")
    flat, out = p.ravel(), np.full(p.size, NAN)
    idx = np.flatnonzero(~np.isnan(flat))
    order = idx[np.argsort(flat[idx], kind="stable")]
    m = order.size
    stepped = (m - np.arange(m)) * flat[order]
    out[order] = np.minimum(np.maximum.accumulate(stepped), 1.0)
    return out.reshape(p.shape)


# --------------------------------------------------------------------------
# Many models over many tasks
# --------------------------------------------------------------------------


@dataclass(frozen=True)
class FriedmanResult:
    """Friedman test over tasks; see :func:`friedman`.

    ``avg_ranks`` has shape ``(n_methods,)`` (1 = best). ``chi2``/``pvalue``
    are Friedman's statistic (df ``k-1``); ``f_stat``/``f_pvalue`` are the
    Iman--Davenport F (df ``k-1`` and ``(k-1)(N-1)``), which Demsar (2006)
    recommends as less conservative; both p-values are asymptotic.
    ``perm_pvalue`` is the permutation test's (:func:`friedman` only; NaN
    from :func:`friedman_from_ranks`), over ``perm_orderings`` orderings of
    each data set's ranks, every one of them where ``perm_exact``.
    """

    avg_ranks: np.ndarray
    chi2: float
    pvalue: float
    f_stat: float
    f_pvalue: float
    n_datasets: int
    n_methods: int
    perm_pvalue: float = NAN
    perm_orderings: int = 0
    perm_exact: bool = False


def friedman_from_ranks(
    avg_ranks: ArrayLike, n_datasets: int, tie_correction: float = 1.0
) -> FriedmanResult:
    """Friedman and Iman--Davenport statistics from average ranks.

    Demsar (2006), eqs. in section 3.2.2, with k methods and N data sets:
    ``chi2_F = 12N / (k(k+1)) * (sum_j R_j^2 - k(k+1)^2 / 4)`` and
    ``F_F = (N-1) chi2_F / (N(k-1) - chi2_F)``. Lets a published table of
    average ranks be checked without the raw scores.

    Args:
        avg_ranks: shape ``(n_methods,)``, average rank of each method (1 = best).
        n_datasets: N, the number of data sets (tasks) the ranks average over.
        tie_correction: divisor of chi2 for tied ranks,
            ``1 - sum(t^3 - t) / (N k (k^2 - 1))``; 1 means no ties.
            :func:`friedman` computes it from the raw ranks.

    Returns:
        :class:`FriedmanResult`. Statistics are NaN when ``k < 2``, ``N < 2``
        or every row is fully tied; ``F_F`` is ``inf`` (p = 0) when all data
        sets rank the methods identically.

    Example (Demsar 2006, section 3.2.4: four C4.5 variants on 14 data sets):
        >>> r = friedman_from_ranks([3.143, 2.000, 2.893, 1.964], 14)
        >>> round(r.chi2, 2), round(r.f_stat, 2)
        (9.28, 3.69)
    """
    ranks = np.asarray(avg_ranks, dtype=float).ravel()
    k, n = int(ranks.size), int(n_datasets)
    if k < 2 or n < 2 or tie_correction <= 0:
        return FriedmanResult(ranks, NAN, NAN, NAN, NAN, n, k)
    chi2 = 12.0 * n / (k * (k + 1)) * (np.sum(ranks**2) - k * (k + 1) ** 2 / 4.0)
    chi2 = max(float(chi2), 0.0) / tie_correction
    pvalue = float(stats.chi2.sf(chi2, k - 1))
    denom = n * (k - 1) - chi2
    df1, df2 = k - 1, (k - 1) * (n - 1)
    if denom <= 1e-12 * n * (k - 1):  # perfect agreement between data sets
        f_stat, f_pvalue = float("inf"), 0.0
    else:
        f_stat = (n - 1) * chi2 / denom
        f_pvalue = float(stats.f.sf(f_stat, df1, df2))
    return FriedmanResult(ranks, chi2, pvalue, float(f_stat), f_pvalue, n, k)


def friedman(scores: ArrayLike, higher_is_better: bool = True, seed: int = 0) -> FriedmanResult:
    """Friedman test of k methods over N data sets, with average ranks.

    Each row is ranked with ``scipy.stats.rankdata`` (rank 1 = best, ties get
    the average rank), ranks are averaged per method and passed to
    :func:`friedman_from_ranks` with scipy's tie correction, so for k >= 3
    ``chi2``/``pvalue`` equal ``scipy.stats.friedmanchisquare`` on the columns.
    Two methods (which scipy refuses) work too: then chi2 is the sign-test
    statistic ``(wins - losses)^2 / N`` on untied rows.

    With the few tasks a suite covers, the chi-squared and F approximations
    give p-values far too small (4 tasks, 3 methods: p = 0.050 and 0.016
    where the exact p is 0.069; 2 methods winning 5 of 5 tasks: 0.025 where
    the sign test's is 0.0625). So ``perm_pvalue`` is the permutation test's:
    under the null hypothesis every ordering of a data set's ranks among the
    methods is equally likely, and the statistic (the sum of the methods'
    squared rank sums, which orders the orderings as chi2 and F both do) is
    compared over all ``(k!)^N`` of them where those are at most
    ``EXACT_PERMUTATIONS`` (``scipy.stats.permutation_test``), else over
    ``MONTE_CARLO`` drawn with ``seed``. Decide on it.

    Args:
        scores: shape ``(n_datasets, n_methods)``. Rows containing NaN are
            dropped (N counts complete rows only).
        higher_is_better: direction of improvement of the scores.
        seed: of the drawn orderings, where they are not all enumerated.

    Returns:
        :class:`FriedmanResult` with ``avg_ranks`` of shape ``(n_methods,)``.

    Example:
        >>> scores = [[0.9, 0.8, 0.7], [0.8, 0.9, 0.6], [0.95, 0.7, 0.5]]
        >>> r = friedman(scores)
        >>> r.avg_ranks.tolist(), round(r.chi2, 4)
        ([1.3333333333333333, 1.6666666666666667, 3.0], 4.6667)
    """
    s = np.asarray(scores, dtype=float)
    if s.ndim != 2:
        raise ValueError(f"scores must be (n_datasets, n_methods), got shape {s.shape}")
    s = s[~np.isnan(s).any(axis=1)]
    n, k = s.shape
    if n == 0 or k == 0:
        return FriedmanResult(np.full(k, NAN), NAN, NAN, NAN, NAN, n, k)
    ranks = stats.rankdata(-s if higher_is_better else s, axis=1)
    # scipy.stats.tiecorrect on one row is 1 - T_i / (k^3 - k); Friedman's
    # correction 1 - sum_i T_i / (N (k^3 - k)) is therefore their mean.
    correction = float(np.mean([stats.tiecorrect(row) for row in ranks])) if k > 1 else 1.0
    res = friedman_from_ranks(ranks.mean(axis=0), n, tie_correction=correction)
    if np.isnan(res.chi2):
        return res
    return dataclasses.replace(res, **_friedman_permutation(ranks, seed))


def _friedman_permutation(ranks: np.ndarray, seed: int) -> dict[str, Any]:
    """``perm_pvalue``, ``perm_orderings`` and ``perm_exact`` of :func:`friedman` for the
    (N, k) within-row ``ranks``."""
    n, k = ranks.shape
    orderings = math.factorial(k) ** n
    exact = orderings <= EXACT_PERMUTATIONS

    def stat(*columns: np.ndarray, axis: int) -> np.ndarray:
        return sum(np.sum(c, axis=axis) ** 2 for c in columns)

    res = stats.permutation_test(tuple(ranks.T), stat, permutation_type="samples", vectorized=True,
                                 n_resamples=np.inf if exact else MONTE_CARLO, alternative="greater",
                                 rng=np.random.default_rng(seed))
    return dict(perm_pvalue=float(res.pvalue), perm_orderings=orderings if exact else MONTE_CARLO,
                perm_exact=exact)


@lru_cache(maxsize=None)
def _nemenyi_q(n_methods: int, alpha: float) -> float:
    """Demsar's q_alpha: studentized range quantile (df = inf) over sqrt(2)."""
    return float(stats.studentized_range.ppf(1.0 - alpha, n_methods, np.inf) / np.sqrt(2.0))


def nemenyi_cd(n_methods: int, n_datasets: int, alpha: float = 0.05) -> float:
    """Critical difference of average ranks for the Nemenyi post-hoc test.

    ``CD = q_alpha * sqrt(k (k + 1) / (6 N))`` with
    ``q_alpha = studentized_range.ppf(1 - alpha, k, inf) / sqrt(2)``
    (Demsar 2006, section 3.2.2 and table 5). Two methods whose average ranks
    differ by at least CD are significantly different.

    Args:
        n_methods: k >= 2.
        n_datasets: N >= 1.
        alpha: family-wise significance level.

    Returns:
        The critical difference, in rank units.

    Example (Demsar 2006: 4 methods, 14 data sets):
        >>> round(nemenyi_cd(4, 14), 2)
        1.25
    """
    if n_methods < 2 or n_datasets < 1 or not 0 < alpha < 1:
        raise ValueError("nemenyi_cd needs n_methods >= 2, n_datasets >= 1, 0 < alpha < 1")
    k = int(n_methods)
    return _nemenyi_q(k, float(alpha)) * float(np.sqrt(k * (k + 1) / (6.0 * n_datasets)))


def cd_groups(avg_ranks: ArrayLike, cd: float, min_size: int = 2) -> list[list[int]]:
    """Groups of methods not significantly different: the bars of a CD diagram.

    Methods are sorted by average rank; a group is a run of consecutive
    methods whose ranks span less than ``cd`` (a difference of at least ``cd``
    is significant). Only maximal groups are returned (none is contained in
    another).

    Args:
        avg_ranks: shape ``(n_methods,)``, 1 = best; NaN entries are ignored.
        cd: critical difference, e.g. from :func:`nemenyi_cd`.
        min_size: smallest group returned; the default 2 drops methods that
            differ from all others (they get no bar); 1 keeps them.

    Returns:
        Lists of indices into ``avg_ranks``. Inside a group indices are in
        order of rank (ties by index); groups are ordered by their best rank.

    Example:
        >>> cd_groups([1.0, 1.5, 3.0, 3.2], cd=1.0)
        [[0, 1], [2, 3]]
        >>> cd_groups([1.0, 1.5, 4.0], cd=1.0, min_size=1)
        [[0, 1], [2]]
        >>> cd_groups([1.0, 1.8, 2.6], cd=1.0)
        [[0, 1], [1, 2]]
    """
    r = np.asarray(avg_ranks, dtype=float).ravel()
    order = [int(i) for i in np.argsort(r, kind="stable") if not np.isnan(r[i])]
    groups: list[list[int]] = []
    last_end = -1
    for start in range(len(order)):
        end = start
        while end + 1 < len(order) and r[order[end + 1]] - r[order[start]] < cd:
            end += 1
        if end > last_end:  # not contained in the previous (maximal) group
            groups.append(order[start : end + 1])
            last_end = end
    return [g for g in groups if len(g) >= min_size]


# --------------------------------------------------------------------------
# Report tables and curves
# --------------------------------------------------------------------------

PAIRWISE_COLUMNS = [
    "a", "b", "n_a", "n_b", "mean_a", "mean_b",
    "welch_t", "welch_p", "mwu_u", "mwu_p",
    "prob_improvement", "cliffs_delta",
    "welch_p_holm", "mwu_p_holm", "significant",
]  # fmt: skip


def pairwise_table(
    groups: Mapping[str, ArrayLike],
    higher_is_better: bool = True,
    alpha: float = 0.05,
) -> pd.DataFrame:
    """All pairwise comparisons of methods on one task, Holm-corrected.

    Args:
        groups: method name -> shape ``(n_runs,)`` scores (one per seed; NaN
            dropped).
        higher_is_better: direction of improvement, for the effect sizes.
        alpha: family-wise level for ``significant``.

    Returns:
        One row per unordered pair ``(a, b)``, names in sorted order, columns
        ``a, b, n_a, n_b, mean_a, mean_b, welch_t, welch_p, mwu_u, mwu_p,
        prob_improvement, cliffs_delta, welch_p_holm, mwu_p_holm,
        significant``. ``prob_improvement`` and ``cliffs_delta`` are of ``a``
        over ``b``. The Holm correction runs over the rows of this table;
        ``significant`` is ``welch_p_holm < alpha`` (False where NaN).

    Example:
        >>> t = pairwise_table({"lstm": [0.9, 0.8, 0.85], "gru": [0.7, 0.6, 0.65]})
        >>> t[["a", "b", "prob_improvement", "cliffs_delta"]].to_dict("records")
        [{'a': 'gru', 'b': 'lstm', 'prob_improvement': 0.0, 'cliffs_delta': -1.0}]
    """
    rows = []
    for name_a, name_b in itertools.combinations(sorted(groups), 2):
        x, y = _clean(groups[name_a]), _clean(groups[name_b])
        t, tp = welch_t(x, y)
        u, up = mann_whitney(x, y)
        rows.append({
            "a": name_a, "b": name_b, "n_a": int(x.size), "n_b": int(y.size),
            "mean_a": float(np.mean(x)) if x.size else NAN,
            "mean_b": float(np.mean(y)) if y.size else NAN,
            "welch_t": t, "welch_p": tp, "mwu_u": u, "mwu_p": up,
            "prob_improvement": prob_improvement(x, y, higher_is_better),
            "cliffs_delta": cliffs_delta(x, y, higher_is_better),
        })  # fmt: skip
    table = pd.DataFrame(rows, columns=PAIRWISE_COLUMNS[:12])
    table["welch_p_holm"] = holm(table["welch_p"].to_numpy(dtype=float))
    table["mwu_p_holm"] = holm(table["mwu_p"].to_numpy(dtype=float))
    table["significant"] = (table["welch_p_holm"] < alpha).astype(bool)
    return table[PAIRWISE_COLUMNS]


def slope_loglinear(t: ArrayLike, values: ArrayLike) -> float:
    """Least-squares slope of ``log10(values)`` against ``t``.

    Summarizes a gradient-flow profile ``||dL/dh_t||`` by its decay: the
    slope is decades per time step (negative: gradients vanish going back in
    time; ``10**slope`` is the per-step factor). Uses
    ``scipy.stats.linregress``.

    Args:
        t: shape ``(T,)``, time steps (or any abscissa).
        values: shape ``(T,)``; points with a non-positive or non-finite value
            (or non-finite ``t``) are ignored.

    Returns:
        The slope; NaN with fewer than 2 usable points or a constant ``t``.

    Example:
        >>> slope_loglinear([0, 1, 2, 3], [1.0, 0.1, 0.01, 0.0])
        -1.0
    """
    x, y = np.asarray(t, dtype=float).ravel(), np.asarray(values, dtype=float).ravel()
    if x.shape != y.shape:
        raise ValueError(f"t and values differ in shape: {x.shape} vs {y.shape}")
    with np.errstate(all="ignore"):
        keep = np.isfinite(x) & np.isfinite(y) & (y > 0)
    x, y = x[keep], y[keep]
    if x.size < 2 or np.ptp(x) == 0:
        return NAN
    return float(stats.linregress(x, np.log10(y)).slope)
