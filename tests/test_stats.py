"""Tests of reports.stats: against scipy, textbook numbers and tiny hand cases."""

import doctest
import itertools
import math

import numpy as np
import pytest
from scipy import stats as sps

import reports.stats as st

RNG = np.random.default_rng(1234)
A = RNG.normal(1.0, 1.0, size=7)
B = RNG.normal(0.2, 2.0, size=9)


def test_doctests_pass():
    result = doctest.testmod(st, optionflags=doctest.NORMALIZE_WHITESPACE)
    assert result.attempted > 0
    assert result.failed == 0


# --- summarize -------------------------------------------------------------


def test_summarize_point_values_match_numpy():
    s = st.summarize(A, n_resamples=500)
    assert s.n == A.size
    assert s.mean == pytest.approx(np.mean(A))
    assert s.median == pytest.approx(np.median(A))
    assert s.std == pytest.approx(np.std(A, ddof=1))


@pytest.mark.parametrize("method", ["percentile", "BCa"])
def test_summarize_ci_matches_scipy_bootstrap_and_brackets_mean(method):
    s = st.summarize(A, confidence=0.9, n_resamples=500, seed=3, method=method)
    ref = sps.bootstrap(
        (A,), np.mean, n_resamples=500, confidence_level=0.9, method=method,
        rng=np.random.default_rng(3),
    ).confidence_interval  # fmt: skip
    assert (s.ci_low, s.ci_high) == pytest.approx((ref.low, ref.high))
    assert s.ci_low <= s.mean <= s.ci_high


def test_summarize_ci_is_students_t_by_default():
    low, high = sps.t.interval(0.9, A.size - 1, loc=np.mean(A), scale=sps.sem(A))
    s = st.summarize(A, confidence=0.9)
    assert (s.ci_low, s.ci_high) == pytest.approx((low, high))


@pytest.mark.parametrize("n", [2, 3, 5])
def test_t_interval_covers_the_mean_at_its_level_with_few_seeds(n):
    """20,000 normal samples of n seeds: the 95% t interval holds the true mean 95% of the
    time (a percentile bootstrap's covered 50-84% at these sizes)."""
    x = np.random.default_rng(n).normal(3.0, 2.0, (20_000, n))
    low, high = st.t_interval(x.mean(axis=1), x.std(axis=1, ddof=1), n)
    assert np.mean((low <= 3.0) & (3.0 <= high)) == pytest.approx(0.95, abs=0.006)


def test_summarize_is_deterministic_given_seed():
    boot = dict(n_resamples=300, method="percentile")
    assert st.summarize(B, seed=5, **boot) == st.summarize(B, seed=5, **boot)
    assert st.summarize(B, seed=5, **boot) != st.summarize(B, seed=6, **boot)


def test_summarize_wider_confidence_gives_wider_interval():
    narrow = st.summarize(B, confidence=0.5, n_resamples=500)
    wide = st.summarize(B, confidence=0.99, n_resamples=500)
    assert wide.ci_low <= narrow.ci_low <= narrow.ci_high <= wide.ci_high


def test_summarize_small_and_degenerate_samples():
    empty = st.summarize([])
    assert empty.n == 0 and all(math.isnan(v) for v in (empty.mean, empty.ci_low, empty.std))
    one = st.summarize([3.0])
    assert (one.n, one.mean, one.median) == (1, 3.0, 3.0)
    assert math.isnan(one.std) and math.isnan(one.ci_low) and math.isnan(one.ci_high)
    const = st.summarize([2.0, 2.0, 2.0], method="BCa")  # BCa alone would give NaN
    assert (const.std, const.ci_low, const.ci_high) == (0.0, 2.0, 2.0)
    dropped = st.summarize([1.0, np.nan, 3.0], n_resamples=100)
    assert (dropped.n, dropped.mean) == (2, 2.0)


# --- two-sample tests and effect sizes -------------------------------------


def test_welch_and_mwu_match_scipy():
    t = sps.ttest_ind(A, B, equal_var=False)
    assert st.welch_t(A, B) == pytest.approx((t.statistic, t.pvalue))
    u = sps.mannwhitneyu(A, B, alternative="two-sided")
    assert st.mann_whitney(A, B) == pytest.approx((u.statistic, u.pvalue))


def test_two_sample_tests_small_n_and_constants_do_not_raise():
    assert all(math.isnan(v) for v in st.welch_t([1.0], [1.0, 2.0]))
    assert all(math.isnan(v) for v in st.welch_t([], []))
    assert all(math.isnan(v) for v in st.mann_whitney([], [1.0, 2.0]))
    u, p = st.mann_whitney([1.0], [2.0, 3.0])  # valid exact test: P = 2/3
    assert (u, p) == (0.0, pytest.approx(2 / 3))
    assert st.welch_t([1.0, 1.0, 1.0], [1.0, 1.0, 1.0]) == (0.0, 1.0)
    assert st.mann_whitney([1.0, 1.0, 1.0], [1.0, 1.0, 1.0]) == (4.5, 1.0)
    t, p = st.welch_t([1.0, 1.0], [2.0, 2.0])  # no spread to scale by: the exact permutation p
    assert t == -math.inf and p == pytest.approx(2 / math.comb(4, 2))
    t, p = st.welch_t([1.0, 1.0, 1.0], [0.5, 0.5])
    assert t == math.inf and p == pytest.approx(2 / math.comb(5, 2))  # twice the one tail, as scipy


def _enumerated_mwu_p(x, y):
    """Two-sided p of U by brute force, as scipy defines it (twice the smaller tail,
    at most 1): every split of the pooled values, ties counted half."""
    pooled, n = np.concatenate([x, y]), len(x)

    def u(a, b):
        return sum((ai > bi) + 0.5 * (ai == bi) for ai in a for bi in b)

    obs = u(x, y)
    us = np.array([u(pooled[list(c)], np.delete(pooled, list(c))) for c in itertools.combinations(range(len(pooled)), n)])
    return min(1.0, 2 * min(np.mean(us >= obs - 1e-9), np.mean(us <= obs + 1e-9)))


@pytest.mark.parametrize("x,y", [([1, 1, 1], [2, 2, 2]), ([100, 200, 300], [1001, 1001, 1001]),
                                 ([0.9, 0.9, 0.8, 0.7], [0.8, 0.6, 0.6]), ([1, 2, 2, 3, 3], [3, 4, 4, 5])])
def test_mann_whitney_with_ties_is_exact(x, y):
    """With ties among few seeds the p-value is the permutation distribution's, by
    enumerating every split of the runs (scipy's normal approximation gave 0.047 and
    0.064 for the first two, where no split can give less than 0.1), and scipy's own
    permutation method agrees."""
    x, y = np.asarray(x, float), np.asarray(y, float)
    assert st.mann_whitney(x, y)[1] == pytest.approx(_enumerated_mwu_p(x, y))
    assert st.mann_whitney(x, y)[1] > sps.mannwhitneyu(x, y).pvalue  # the approximation was anti-conservative
    exact = sps.mannwhitneyu(x, y, method=sps.PermutationMethod(n_resamples=np.inf)).pvalue
    assert st.mann_whitney(x, y)[1] == pytest.approx(exact)


@pytest.mark.parametrize("x,y", [([200.0], [200.0]), ([0.5], [0.5, 0.7]), ([3.0], [1.0, 3.0, 3.0, 5.0])])
def test_mann_whitney_with_ties_and_one_run_a_side(x, y):
    """One run on a side (a profile of one seed, or the one run left after divergence)
    with a tie: the exact p, where scipy's permutation method refuses samples of one."""
    assert st.mann_whitney(x, y)[1] == pytest.approx(_enumerated_mwu_p(np.asarray(x), np.asarray(y)))
    table = st.pairwise_table({"a": x, "b": y})
    assert table["mwu_p"].iloc[0] == pytest.approx(_enumerated_mwu_p(np.asarray(x), np.asarray(y)))


def test_welch_on_constant_groups_is_closed_form_at_any_size():
    t, p = st.welch_t([1.0] * 40, [0.5] * 40)  # enumerating C(80, 40) splits would never end
    assert t == math.inf and p == pytest.approx(2 / math.comb(80, 40))


def test_prob_improvement_hand_cases():
    # pairs (1,0) win, (1,3) lose, (2,0) win, (2,3) lose -> 2/4
    assert st.prob_improvement([1, 2], [0, 3]) == 0.5
    # (2,1) win, (2,2) tie, (2,1) win, (2,2) tie -> (2 + 2 * 0.5) / 4
    assert st.prob_improvement([2, 2], [1, 2]) == 0.75
    assert st.prob_improvement([2, 2], [1, 2], higher_is_better=False) == 0.25
    assert st.prob_improvement([5, 6], [1, 2]) == 1.0
    assert st.prob_improvement([1, 1], [1, 1]) == 0.5
    assert math.isnan(st.prob_improvement([], [1]))


def test_prob_improvement_is_normalized_mann_whitney_u():
    u = sps.mannwhitneyu(A, B).statistic
    assert st.prob_improvement(A, B) == pytest.approx(u / (A.size * B.size))
    assert st.prob_improvement(A, B) + st.prob_improvement(B, A) == pytest.approx(1.0)


def test_cliffs_delta_relation_and_sign():
    for hib in (True, False):
        pi = st.prob_improvement(A, B, higher_is_better=hib)
        assert st.cliffs_delta(A, B, higher_is_better=hib) == pytest.approx(2 * pi - 1)
    assert st.cliffs_delta([3, 4], [1, 2]) == 1.0
    assert st.cliffs_delta([3, 4], [1, 2], higher_is_better=False) == -1.0
    assert st.cliffs_delta(A, B) == pytest.approx(-st.cliffs_delta(B, A))


# --- Holm ------------------------------------------------------------------


def test_holm_textbook_examples():
    # Wikipedia "Holm-Bonferroni method", worked example: p = .01, .04, .03, .005
    # at alpha .05 rejects H1 and H4 only. Adjusted values by hand (sorted
    # .005, .01, .03, .04 times 4, 3, 2, 1 = .02, .03, .06, .04, running max);
    # statsmodels multipletests(method="holm") and R p.adjust give the same.
    adj = st.holm([0.01, 0.04, 0.03, 0.005])
    np.testing.assert_allclose(adj, [0.03, 0.06, 0.06, 0.02])
    assert (adj < 0.05).tolist() == [True, False, False, True]
    # R p.adjust(c(.01, .04, .20, .03, .005, .07), "holm"), by hand: sorted
    # times 6..1 = .03, .05, .12, .12, .14, .20 (already monotone).
    np.testing.assert_allclose(
        st.holm([0.01, 0.04, 0.20, 0.03, 0.005, 0.07]), [0.05, 0.12, 0.20, 0.12, 0.03, 0.14]
    )


def test_holm_caps_at_one_is_monotone_and_keeps_shape():
    np.testing.assert_allclose(st.holm([0.6, 0.7]), [1.0, 1.0])
    np.testing.assert_allclose(st.holm([[0.2, 0.4], [0.6, 0.01]]), [[0.6, 0.8], [0.8, 0.04]])
    p = RNG.uniform(size=20)
    adj = st.holm(p)
    order = np.argsort(p)
    assert np.all(np.diff(adj[order]) >= 0) and np.all(adj >= p) and np.all(adj <= 1)


def test_holm_nan_stays_nan_and_does_not_count():
    adj = st.holm([0.01, np.nan, 0.02, np.nan])
    assert np.isnan(adj[[1, 3]]).all()
    np.testing.assert_allclose(adj[[0, 2]], st.holm([0.01, 0.02]))
    assert st.holm([]).shape == (0,)
    with pytest.raises(ValueError):
        st.holm([0.5, 1.5])


def test_holm_equals_closed_testing_with_bonferroni():
    # Holm is the closed test of Bonferroni local tests: adjusted p_i is the
    # max over subsets S containing i of min(1, |S| * min_{j in S} p_j).
    p = RNG.uniform(0, 0.3, size=5)
    brute = [
        max(
            min(1.0, len(s) * min(p[list(s)]))
            for r in range(1, 6)
            for s in itertools.combinations(range(5), r)
            if i in s
        )
        for i in range(5)
    ]
    np.testing.assert_allclose(st.holm(p), brute)


# --- Friedman, Nemenyi, CD groups ------------------------------------------

# Demsar (2006), JMLR 7:1-30, table 5: q_0.05 for k = 2..10.
DEMSAR_Q05 = [1.960, 2.343, 2.569, 2.728, 2.850, 2.949, 3.031, 3.102, 3.164]


def test_friedman_from_ranks_reproduces_demsar_example():
    # Section 3.2.4: C4.5, C4.5+m, C4.5+cf, C4.5+m+cf on 14 data sets.
    r = st.friedman_from_ranks([3.143, 2.000, 2.893, 1.964], 14)
    assert r.chi2 == pytest.approx(9.28, abs=0.01)
    assert r.f_stat == pytest.approx(3.69, abs=0.01)
    assert (r.n_datasets, r.n_methods) == (14, 4)
    # F(3, 39) critical value at 0.05 is 2.85 in the paper; F_F exceeds it.
    assert sps.f.ppf(0.95, 3, 39) == pytest.approx(2.85, abs=0.01)
    assert r.f_pvalue < 0.05 and r.pvalue < 0.05


def test_nemenyi_cd_demsar_table_and_example():
    for k, q in zip(range(2, 11), DEMSAR_Q05):
        cd_one = st.nemenyi_cd(k, 1)  # q * sqrt(k(k+1)/6)
        assert cd_one / math.sqrt(k * (k + 1) / 6) == pytest.approx(q, abs=1e-3)
    assert st.nemenyi_cd(4, 14) == pytest.approx(1.25, abs=0.005)
    with pytest.raises(ValueError):
        st.nemenyi_cd(1, 10)


def test_demsar_example_cd_groups():
    # Section 3.2.4: at alpha 0.05 (CD 1.25) no pair differs (largest rank
    # difference 3.143 - 1.964 = 1.179); at alpha 0.10 (CD 1.12) C4.5+m and
    # C4.5+m+cf are significantly better than C4.5.
    ranks = [3.143, 2.000, 2.893, 1.964]
    assert st.cd_groups(ranks, st.nemenyi_cd(4, 14)) == [[3, 1, 2, 0]]
    cd10 = st.nemenyi_cd(4, 14, alpha=0.10)
    assert cd10 == pytest.approx(1.12, abs=0.005)
    assert st.cd_groups(ranks, cd10) == [[3, 1, 2], [2, 0]]


@pytest.mark.parametrize("higher_is_better", [True, False])
def test_friedman_matches_scipy_with_and_without_ties(higher_is_better):
    untied = RNG.normal(size=(12, 4))
    tied = np.round(RNG.normal(size=(12, 4)))  # many ties within rows
    for scores in (untied, tied):
        r = st.friedman(scores, higher_is_better=higher_is_better)
        ref = sps.friedmanchisquare(*scores.T)
        assert r.chi2 == pytest.approx(ref.statistic)
        assert r.pvalue == pytest.approx(ref.pvalue)
        # Iman-Davenport from the (tie-corrected) chi2
        n, k = scores.shape
        f = (n - 1) * ref.statistic / (n * (k - 1) - ref.statistic)
        assert r.f_stat == pytest.approx(f)
        assert r.f_pvalue == pytest.approx(sps.f.sf(f, k - 1, (k - 1) * (n - 1)))
        assert r.avg_ranks.sum() == pytest.approx(k * (k + 1) / 2)


def _enumerated_friedman_p(scores):
    """P(sum of squared rank sums >= observed) over every ordering of every row's ranks."""
    ranks = sps.rankdata(-np.asarray(scores, float), axis=1)
    obs = np.sum(ranks.sum(axis=0) ** 2)
    hits = total = 0
    for perms in itertools.product(*[list(itertools.permutations(row)) for row in ranks]):
        total += 1
        hits += np.sum(np.sum(perms, axis=0) ** 2) >= obs - 1e-9
    return hits / total


@pytest.mark.parametrize("scores", [
    [[3, 2, 1], [3, 2, 1], [3, 1, 2], [3, 1, 2]],  # chi2 p 0.050, F p 0.016: exact 0.069
    [[2, 1]] * 5,  # sign test, 5 wins of 5: 0.0625 (chi2 p 0.025)
    [[0.9, 0.8, 0.8], [0.7, 0.9, 0.6], [0.5, 0.5, 0.4]],  # ties within rows
    [[4, 3, 2, 1], [1, 2, 4, 3], [4, 1, 3, 2]],
])
def test_friedman_permutation_p_enumerates_every_ordering(scores):
    """Over few tasks the χ² and F p-values are far too small; the permutation p is the
    share of all (k!)^N orderings of the tasks' ranks whose statistic is at least the
    observed one, counted here by brute force (k = 2: the exact sign test)."""
    r = st.friedman(scores)
    assert r.perm_exact and r.perm_orderings == math.factorial(len(scores[0])) ** len(scores)
    assert r.perm_pvalue == pytest.approx(_enumerated_friedman_p(scores))
    if len(scores[0]) == 2:
        assert r.perm_pvalue == pytest.approx(sps.binomtest(5, 5).pvalue)


def test_friedman_permutation_p_draws_orderings_beyond_the_exact_limit(monkeypatch):
    """Past EXACT_PERMUTATIONS orderings, MONTE_CARLO drawn ones, the same for the same
    seed, near the exact p."""
    scores = RNG.normal(size=(5, 4))  # 24^5 orderings
    exact = _enumerated_friedman_p(scores[:3])
    monkeypatch.setattr(st, "EXACT_PERMUTATIONS", 10)
    drawn = st.friedman(scores[:3])
    assert not drawn.perm_exact and drawn.perm_orderings == st.MONTE_CARLO
    assert drawn.perm_pvalue == pytest.approx(exact, abs=0.02)
    assert st.friedman(scores[:3]).perm_pvalue == drawn.perm_pvalue
    assert st.friedman(scores[:3], seed=1).perm_pvalue != drawn.perm_pvalue
    monkeypatch.undo()
    assert not st.friedman(scores).perm_exact  # 24^5 > EXACT_PERMUTATIONS


def test_friedman_ranks_direction_and_untied_equals_from_ranks():
    scores = np.array([[0.9, 0.5, 0.1], [0.8, 0.6, 0.2], [0.7, 0.9, 0.3]])
    assert st.friedman(scores).avg_ranks.tolist() == pytest.approx([4 / 3, 5 / 3, 3.0])
    low = st.friedman(scores, higher_is_better=False)
    assert low.avg_ranks.tolist() == pytest.approx([8 / 3, 7 / 3, 1.0])
    ref = st.friedman_from_ranks(low.avg_ranks, 3)
    assert (low.chi2, low.f_stat) == pytest.approx((ref.chi2, ref.f_stat))


def test_friedman_two_methods_is_sign_test_statistic():
    # a beats b on 3 of 4 data sets: chi2 = (wins - losses)^2 / N = 1.
    scores = np.array([[2.0, 1.0], [3.0, 1.0], [4.0, 1.0], [0.0, 1.0]])
    r = st.friedman(scores)
    assert r.avg_ranks.tolist() == [1.25, 1.75]
    assert r.chi2 == pytest.approx(1.0)
    assert r.pvalue == pytest.approx(sps.chi2.sf(1.0, 1))


def test_friedman_degenerate_inputs():
    perfect = st.friedman(np.tile([3.0, 2.0, 1.0], (5, 1)))
    assert perfect.chi2 == pytest.approx(10.0) and perfect.f_stat == math.inf
    assert perfect.f_pvalue == 0.0
    all_tied = st.friedman(np.ones((5, 3)))
    assert math.isnan(all_tied.chi2) and all_tied.avg_ranks.tolist() == [2.0, 2.0, 2.0]
    with_nan = st.friedman([[1.0, 2.0, 3.0], [np.nan, 1.0, 2.0], [1.0, 3.0, 2.0]])
    assert with_nan.n_datasets == 2
    assert math.isnan(st.friedman(np.ones((1, 3))).pvalue)
    with pytest.raises(ValueError):
        st.friedman([1.0, 2.0])


def test_cd_groups_cases():
    assert st.cd_groups([1.0, 1.5, 3.0, 3.2], 1.0) == [[0, 1], [2, 3]]
    assert st.cd_groups([1.0, 1.8, 2.6], 1.0) == [[0, 1], [1, 2]]
    assert st.cd_groups([1.0, 1.8, 2.6], 2.0) == [[0, 1, 2]]
    assert st.cd_groups([1.0, 3.0, 5.0], 1.0) == []
    assert st.cd_groups([1.0, 3.0, 5.0], 1.0, min_size=1) == [[0], [1], [2]]
    # a difference of exactly cd is significant: no shared bar
    assert st.cd_groups([1.0, 2.0], 1.0) == []
    # input order does not matter; indices refer to the input
    assert st.cd_groups([3.2, 1.5, 3.0, 1.0], 1.0) == [[3, 1], [2, 0]]
    assert st.cd_groups([1.0, np.nan, 1.5], 1.0) == [[0, 2]]


# --- pairwise table, slope ---------------------------------------------------


def test_pairwise_table_columns_rows_and_values():
    groups = {"gru": A, "lstm": B, "rnn": A + 3.0}
    t = st.pairwise_table(groups, higher_is_better=True)
    assert list(t.columns) == st.PAIRWISE_COLUMNS
    assert list(zip(t.a, t.b)) == [("gru", "lstm"), ("gru", "rnn"), ("lstm", "rnn")]
    row = t.iloc[0]
    assert (row.n_a, row.n_b) == (A.size, B.size)
    assert (row.welch_t, row.welch_p) == pytest.approx(st.welch_t(A, B))
    assert (row.mwu_u, row.mwu_p) == pytest.approx(st.mann_whitney(A, B))
    assert row.prob_improvement == pytest.approx(st.prob_improvement(A, B))
    np.testing.assert_allclose(t.welch_p_holm, st.holm(t.welch_p.to_numpy()))
    np.testing.assert_allclose(t.mwu_p_holm, st.holm(t.mwu_p.to_numpy()))
    assert t.significant.tolist() == (t.welch_p_holm < 0.05).tolist()
    assert t.significant.iloc[1]  # gru vs gru + 3: a shift of 3 sd
    low = st.pairwise_table(groups, higher_is_better=False)
    np.testing.assert_allclose(low.prob_improvement, 1 - t.prob_improvement)
    # significance is the Holm-adjusted p's: a raw p of 0.032 among three tests is not significant
    a = np.arange(5.0)
    close = st.pairwise_table({"a": a, "b": a + 2.6, "c": a + 1.3})
    first = close.iloc[0]
    assert first.welch_p < 0.05 < first.welch_p_holm and not first.significant


def test_pairwise_table_small_inputs():
    assert len(st.pairwise_table({"only": [1.0, 2.0]})) == 0
    assert list(st.pairwise_table({}).columns) == st.PAIRWISE_COLUMNS
    t = st.pairwise_table({"x": [1.0], "y": [2.0, 3.0]})
    assert math.isnan(t.welch_p.iloc[0]) and not t.significant.iloc[0]


def test_slope_loglinear():
    steps = np.arange(10)
    profile = 3.0 * 0.5**steps  # halves every step
    assert st.slope_loglinear(steps, profile) == pytest.approx(math.log10(0.5))
    ref = sps.linregress(steps, np.log10(profile)).slope
    assert st.slope_loglinear(steps, profile) == pytest.approx(ref)
    noisy = profile.copy()
    noisy[[2, 5, 7]] = [0.0, np.nan, -1.0]  # ignored
    assert st.slope_loglinear(steps, noisy) == pytest.approx(math.log10(0.5))
    assert math.isnan(st.slope_loglinear([0, 1], [1.0, 0.0]))
    assert math.isnan(st.slope_loglinear([2, 2], [1.0, 0.1]))


def test_geometric_mean_and_ratio_interval_against_scipy():
    """Timings are summarized by their geometric mean (the reciprocal of the rates'), with
    the t interval of the logs; the ratio of two models' is Welch's on the logs."""
    from reports.stats import geometric, ratio_interval

    ms = np.array([27.0, 34.6, 21.4, 149.9])
    g = geometric(ms)
    assert g.mean == pytest.approx(sps.gmean(ms))
    assert geometric(50_000 / ms).mean == pytest.approx(50_000 / g.mean)  # samples/s of batch 50
    logs = np.log(ms)
    lo, hi = sps.t.interval(0.95, logs.size - 1, loc=logs.mean(), scale=sps.sem(logs))
    assert (g.ci_low, g.ci_high) == pytest.approx((np.exp(lo), np.exp(hi)))
    ref = np.array([3.5, 3.4, 3.9])
    r, low, high = ratio_interval(ms, ref)
    assert r == pytest.approx(sps.gmean(ms) / sps.gmean(ref))
    ci = sps.ttest_ind(np.log(ms), np.log(ref), equal_var=False).confidence_interval()
    assert (low, high) == pytest.approx((np.exp(ci.low), np.exp(ci.high)))
    assert np.isnan(ratio_interval([2.0], ref)[1]) and ratio_interval([2.0], ref)[0] == pytest.approx(2 / sps.gmean(ref))
