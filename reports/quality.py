"""Sections on quality: the leaderboards, the significance tests and the ablations.

Every number is the primary test metric of a run (the best-validation
checkpoint's score), one value per seed; means come with 95% Student's t CIs and
comparisons with named tests, Holm-corrected (``reports.stats``).
"""

from __future__ import annotations

import json
import math
from typing import Any

import numpy as np
import pandas as pd

from reports import figures
from reports.blocks import ALPHA, POSITIVE, Section, Text, bounds, figure, fmt, fmt_ci, fmt_p, fmt_peq, note, table
from reports.data import ReportData, TaskInfo, numeric, short_key, start_up
from reports.stats import cd_groups, friedman, nemenyi_cd, pairwise_table, summarize


def _order(frame: pd.DataFrame, info: TaskInfo, col: str = "mean") -> pd.DataFrame:
    """Best first; rows without a value last."""
    return frame.sort_values(col, ascending=not info.higher_is_better, na_position="last", kind="stable")


def _solved_counts(runs: pd.DataFrame) -> str:
    """'solved/finished' over the runs that finished or diverged (a diverged run did not
    solve the task), as every table of the report counts them."""
    ended = runs[runs["status"].isin(["done", "diverged"])]
    if "solved" not in ended or ended.empty:
        return "–"
    return f"{int(ended['solved'].fillna(False).astype(bool).sum())}/{len(ended)}"


def _time_to_solve(solved: pd.DataFrame) -> pd.Series:
    """Training time to the evaluation that found a run solved, its start-up (``warmup_s``:
    the first steps' compilation and warm-up, which Cost reports apart) left out where it
    ended before then (``start_up``): a C++ extension built on a run's first step made it
    20x longer."""
    return numeric(solved, "solved_time_s") - start_up(solved, numeric(solved, "solved_step"))


def leaderboard(data: ReportData, label: str) -> tuple[pd.DataFrame, list[dict[str, Any]]]:
    """Per variant: summary of the primary metric, solving and failure counts (raw, display)."""
    info = data.tasks[label]
    raw, shown = [], []
    for variant, runs in data.of_task(label).groupby("variant", sort=True):
        done = runs[runs["status"] == "done"]
        s = summarize(done["primary"])
        solved = done[done["solved"].fillna(False).astype(bool)] if "solved" in done else done.iloc[:0]
        steps, secs = summarize(numeric(solved, "solved_step")), summarize(_time_to_solve(solved))
        raw.append({"variant": variant, "mean": s.mean, "summary": s, "runs": len(runs),
                    "diverged": int((runs["status"] == "diverged").sum())})
        shown.append({
            "model": variant, "seeds (done)": s.n, f"test {info.primary}: mean [95% CI]": fmt_ci(s, within=bounds(info.primary)),
            "median": fmt(s.median), "std": fmt(s.std),
            "solved": _solved_counts(runs) if info.solved is not None else "–",
            "steps to solve": fmt_ci(steps, within=POSITIVE) if steps.n else "–",
            "time to solve (s)": fmt_ci(secs, within=POSITIVE) if secs.n else "–",
            "diverged": int((runs["status"] == "diverged").sum()),
            "failed": int((runs["status"] == "failed").sum()),
        })
    frame = pd.DataFrame(raw)
    order = _order(frame, info).index
    return frame.loc[order].reset_index(drop=True), [shown[i] for i in order]


def summary_section(data: ReportData) -> Section:
    sec = Section("summary", "Summary")
    for label, info in data.tasks.items():
        raw, shown = leaderboard(data, label)
        sec.add(Text(f"{label}", "heading"))
        if info.note:
            sec.add(note(info.note))
        sec.add(table(shown, f"Leaderboard of {info.describe()}. Mean over seeds with a 95% Student's t "
                             "CI (cut at the metric's range, e.g. an accuracy's [0, 1]); solved: of the runs that finished or diverged (a diverged run counts as not solved); "
                             "steps/time to solve over the runs that solved, judged on validation at each "
                             "evaluation (so to the evaluation interval); time to solve is training time with "
                             "start-up (compilation, warm-up) left out, as in Cost."))
        sec.add(_leader_sentence(raw, info))
        sec.add(_setup_table(data, label))
    return sec


SETUP = (("model.hidden_size", "hidden"), ("model.num_layers", "layers"), ("train.optimizer", "optimizer"),
         ("train.lr", "lr"), ("train.batch_size", "batch"), ("train.clip", "clip"),
         ("train.max_steps", "max steps"), ("train.time_budget_s", "time budget (s)"),
         ("train.early_stop", "early stop"), ("train.eval_every", "eval every"))


def _setup_table(data: ReportData, label: str) -> Any:
    """How each model on ``label`` was trained: what a reader needs to judge the leaderboard
    (sizes and parameter counts differ by cell; early stopping ends runs at their first
    solving evaluation, so their test scores are of that checkpoint; a time budget gives a
    slower model fewer updates)."""
    rows = []
    for variant, runs in data.of_task(label).groupby("variant", sort=True):
        cfgs = list(runs["settings"])

        def one(key: str) -> str:
            values = sorted({json.dumps(c.get(key)) for c in cfgs})
            return " / ".join("none" if v == "null" else v.strip('"') for v in values)

        done = runs[runs["status"] == "done"]
        rows.append({"model": variant, "parameters": fmt(numeric(runs, "n_params").mean()),
                     **{name: one(key) for key, name in SETUP},
                     "updates run (mean)": fmt(numeric(done, "steps").mean()) if len(done) else "–"})
    return table(rows, f"Training setup on {label}: each model's settings and parameter count, and the "
                       "updates its finished runs made. With early stopping a run ends at the first evaluation "
                       "that finds it solved, and its test score is that checkpoint's; with a time budget a "
                       "slower model makes fewer updates.")


def _leader_sentence(raw: pd.DataFrame, info: TaskInfo) -> Text:
    scored = raw[raw["mean"].notna()]
    if scored.empty:
        return note(f"No run of {info.label} finished with a test {info.primary}.")
    best = scored.iloc[0]
    text = f"Best on {info.label}: {best['variant']} with test {info.primary} {fmt_ci(best['summary'], within=bounds(info.primary))}"
    if info.chance is not None:
        text += f" (chance {fmt(info.chance)})"
    if best["diverged"]:
        text += (f", over the {best['summary'].n} of its {best['runs']} runs that finished ({best['diverged']} "
                 f"diverged and have no test score)")
    if len(scored) > 1:
        nxt = scored.iloc[1]
        s, t = best["summary"], nxt["summary"]
        overlap = not (math.isnan(s.ci_low) or math.isnan(t.ci_low)) and s.ci_low <= t.ci_high and t.ci_low <= s.ci_high
        text += (f"; runner-up {nxt['variant']} at {fmt(nxt['mean'])}"
                 + (", and their intervals overlap" if overlap else "") + ".")
    else:
        text += "."
    return Text(text)


# -- significance ------------------------------------------------------------------


def _min_mwu_p(n_a: int, n_b: int) -> float:
    """Smallest two-sided exact Mann–Whitney p-value possible with these sample sizes."""
    return min(1.0, 2.0 / math.comb(n_a + n_b, n_a)) if n_a and n_b else float("nan")


def significance_section(data: ReportData) -> Section:
    sec = Section("significance", "Significance")
    sec.add(Text(f"Pairs of models on each task setting: Welch's t-test and the Mann–Whitney U test "
                 f"(two-sided) on the per-seed primary test metric, Holm-corrected over the pairs of "
                 f"that task; 'P(a better)' is the probability that a run of a beats a run of b "
                 f"(ties count half). A difference is called significant when Welch's Holm-adjusted "
                 f"p < {ALPHA}."))
    for label, info in data.tasks.items():
        done = data.done(label)
        groups = {v: g["primary"].to_numpy(float) for v, g in done.groupby("variant", sort=True)
                  if g["primary"].notna().any()}
        sec.add(Text(f"{label}", "heading"))
        if len(groups) < 2:
            sec.add(note(f"{label}: fewer than two models with finished runs; nothing to compare."))
            continue
        pt = pairwise_table(groups, info.higher_is_better, ALPHA)
        sec.add(table([_pair_row(r) for r in pt.itertuples()],
                      f"Pairwise comparisons on {label} (test {info.primary}, "
                      f"{'higher' if info.higher_is_better else 'lower'} is better). MWU U counts the pairs "
                      f"of runs where a's {info.primary} is the larger (ties half), whichever direction is "
                      f"better; P(a better) and Cliff's δ follow the task's direction."))
        sec.add(*_pair_sentences(pt, info))
        runs = data.of_task(label)
        lost = {v: (int((g["status"] == "diverged").sum()), len(g)) for v, g in runs.groupby("variant", sort=True)}
        lost = {v: c for v, c in lost.items() if c[0] and v in groups}
        if lost:
            sec.add(note("Diverged runs have no test score, so these tests compare the runs that finished: "
                         + ", ".join(f"{v} lost {d} of {n}" for v, (d, n) in lost.items())
                         + " (the claims section tests the divergence counts themselves)."))
    sec.add(*friedman_blocks(data))
    return sec


def _pair_row(r: Any) -> dict[str, Any]:
    return {"a": r.a, "b": r.b, "n a/b": f"{r.n_a}/{r.n_b}", "mean a": fmt(r.mean_a), "mean b": fmt(r.mean_b),
            "Welch t": fmt(r.welch_t, 3), "Welch p": fmt_p(r.welch_p), "Welch p (Holm)": fmt_p(r.welch_p_holm),
            "MWU U": fmt(r.mwu_u), "MWU p": fmt_p(r.mwu_p), "MWU p (Holm)": fmt_p(r.mwu_p_holm),
            "P(a better)": fmt(r.prob_improvement, 3), "Cliff's δ": fmt(r.cliffs_delta, 3),
            "significant": "yes" if r.significant else "no"}


def _pair_sentences(pt: pd.DataFrame, info: TaskInfo) -> list[Text]:
    out = []
    for r in pt[pt["significant"]].itertuples():
        a_wins = info.better(r.mean_a, r.mean_b)
        win, lose = (r.a, r.b) if a_wins else (r.b, r.a)
        mw, ml = (r.mean_a, r.mean_b) if a_wins else (r.mean_b, r.mean_a)
        p_imp = r.prob_improvement if a_wins else 1.0 - r.prob_improvement
        out.append(Text(f"On {info.label}, {win} is significantly better than {lose}: test {info.primary} "
                        f"{fmt(mw)} vs {fmt(ml)} (Welch Holm-adjusted {fmt_peq(r.welch_p_holm)}, "
                        f"Mann–Whitney Holm-adjusted {fmt_peq(r.mwu_p_holm)}, "
                        f"P({win} better) = {p_imp:.2f})."))
    if not out:
        out.append(Text(f"On {info.label}, no difference is significant at α = {ALPHA} after Holm "
                        f"correction over {len(pt)} pair(s)."))
    small = pt[[(_min_mwu_p(a, b) >= ALPHA) for a, b in zip(pt["n_a"], pt["n_b"])]]
    if not small.empty:
        r = small.iloc[0]
        out.append(note(f"With {r['n_a']} and {r['n_b']} seeds the Mann–Whitney test cannot reach "
                        f"p < {ALPHA} (its smallest possible p is {_min_mwu_p(r['n_a'], r['n_b']):.2f}); "
                        "more seeds are needed for a rank-based verdict."))
    return out


def friedman_scores(data: ReportData) -> pd.DataFrame:
    """Mean primary metric per (task setting, variant), signed so that higher is better,
    restricted to variants measured on every kept task (complete rows)."""
    done = data.done()
    if done.empty:
        return pd.DataFrame()
    means = done.groupby(["task_label", "variant"])["primary"].mean().unstack()
    sign = pd.Series({t: 1.0 if data.tasks[t].higher_is_better else -1.0 for t in means.index})
    scores = means.mul(sign, axis=0)
    cols = [c for c in scores.columns if scores[c].notna().sum() >= 2]
    while len(cols) >= 2:
        rows = scores[cols].dropna().index
        if len(rows) >= 2:
            return scores.loc[rows, cols]
        counts = scores[cols].notna().sum()
        cols.remove(counts.sort_values(kind="stable").index[0])
    return pd.DataFrame()


def friedman_blocks(data: ReportData) -> list[Any]:
    scores = friedman_scores(data)
    head = Text("Across tasks", "heading")
    if scores.empty:
        return [head, note("The Friedman test needs at least two task settings on which the same two or "
                           "more models have finished runs; this store does not have them.")]
    res = friedman(scores.to_numpy(), higher_is_better=True)
    names = list(scores.columns)
    n, k = res.n_datasets, res.n_methods
    cd = nemenyi_cd(k, n, ALPHA)
    # The χ² and F distributions' p-values are far too small over the few tasks a suite
    # has (reports.stats.friedman), so the decision is the permutation test's.
    p_decide = res.perm_pvalue
    significant = bool(p_decide < ALPHA)
    if significant:
        groups = cd_groups(res.avg_ranks, cd)
        bars = f"models joined by a bar are not significantly different (Nemenyi, α = {ALPHA}, CD = {cd:.2f})"
    else:  # no post-hoc test without a significant omnibus test (Demšar 2006): one bar joins them all
        groups = [[int(i) for i in np.argsort(res.avg_ranks, kind="stable")]]
        bars = (f"one bar joins every model, since the Friedman test finds no significant difference "
                f"(so no Nemenyi post-hoc test; its CD would be {cd:.2f})")
    fig = figure(figures.cd_diagram(names, list(res.avg_ranks), cd, groups), "critical_difference",
                 f"Critical-difference diagram: average rank of each model over {n} task settings "
                 f"(1 = best); {bars}.")
    rows = [{"model": m, "average rank": f"{r:.2f}"} for m, r in sorted(zip(names, res.avg_ranks), key=lambda x: x[1])]
    out: list[Any] = [head, fig, table(rows, f"Average ranks over {', '.join(scores.index)}.")]
    how = (f"exact over all {res.perm_orderings:,} orderings of each task's ranks" if res.perm_exact
           else f"over {res.perm_orderings:,} random orderings of each task's ranks")
    stat = (f"Friedman χ² = {fmt(res.chi2, 3)} (df {k - 1}), "
            + (f"Iman–Davenport F = {fmt(res.f_stat, 3)}" if np.isfinite(res.f_stat)
               else "Iman–Davenport F infinite (every task ranks the models identically)")
            + f"; permutation {fmt_peq(res.perm_pvalue)} ({how}; {k} models, {n} task settings). The "
            + f"decision is the permutation test's: the χ² and F approximations ({fmt_peq(res.pvalue)}, "
            + f"{fmt_peq(res.f_pvalue)}) are asymptotic, and too small over few task settings.")
    if np.isnan(res.chi2):
        out.append(Text(f"Every task setting ties all {k} models, so the Friedman test has nothing to rank "
                        f"({n} task settings)."))
    elif not significant:
        out.append(Text(stat + " The test finds no significant difference among the models, so the "
                               "ranks above are not evidence of an ordering."))
    else:
        pairs = [(names[i], names[j]) for i in range(k) for j in range(k)
                 if res.avg_ranks[j] - res.avg_ranks[i] >= cd]
        out.append(Text(stat + " The models differ. " + (
            "By the Nemenyi post-hoc test: " + "; ".join(f"{a} ranks better than {b}" for a, b in pairs) + "."
            if pairs else f"No pair's ranks differ by the critical difference {cd:.2f}.")))
    if n < 5:
        out.append(note(f"Only {n} task settings: rank tests over so few tasks have little power."))
    done = data.done()
    left = [(what, sorted(set(done[col].dropna()) - set(kept)))
            for what, col, kept in (("models", "variant", names), ("task settings", "task_label", scores.index))]
    if any(dropped for _, dropped in left):
        out.append(note("Left out of this test for lacking finished runs where the others have them: "
                        + "; ".join(f"{what} {', '.join(dropped)}" for what, dropped in left if dropped) + "."))
    tasks = pd.Series([data.tasks[label].name for label in scores.index])
    shared = sorted(tasks[tasks.duplicated(keep=False)].unique())
    if shared:
        out.append(note(f"Several settings of one task ({', '.join(shared)}) count as separate data sets here; "
                        "they are not independent, so the test's p-value is smaller than over independent tasks."))
    return out


# -- ablations ---------------------------------------------------------------------


def _axis_order(values: list[Any]) -> list[str]:
    nums = [v for v in values if isinstance(v, (int, float)) and not isinstance(v, bool)]
    ordered = sorted(values, key=lambda v: (0, v) if len(nums) == len(values) else (1, str(v)))
    return [str(v) for v in dict.fromkeys(ordered)]


def ablation_section(data: ReportData) -> Section:
    sec = Section("ablations", "Ablations")
    found = False
    for task_name in sorted(data.runs["task"].unique()) if not data.empty else []:
        runs = data.runs[(data.runs["task"] == task_name)]
        axes = sorted({a for ax in runs["axes"] for a in ax})
        info = data.tasks[runs["task_label"].iloc[0]]
        for axis in axes:
            sub = runs[runs["axes"].map(lambda ax: axis in ax)].copy()
            if sub.empty:
                continue
            found = True
            lines = sub.apply(lambda r: (_line_label(r, axis), json.dumps(r["settings"].get(axis))), axis=1)
            if lines.map(lambda x: x[0]).value_counts().max() < 2 or not _separable(lines):
                sec.add(note(f"{task_name}: {short_key(axis)} never changes with the other switches fixed, "
                             "so its effect cannot be separated; compare the variants in the Summary."))
                continue
            sec.add(*_one_axis(data, task_name, axis, sub, info))
    if not found:
        sec.add(note("No switch was swept: every task and model was run with one configuration "
                     "(seeds aside). Sweep one with e.g. --set model.hidden_size=[32,64]."))
    return sec


def _separable(lines: pd.Series) -> bool:
    """Whether some model line was run at two or more values of the axis."""
    values: dict[str, set] = {}
    for line, value in lines:
        values.setdefault(line, set()).add(value)
    return any(len(v) > 1 for v in values.values())


def _line_label(row: pd.Series, axis: str) -> str:
    others = [k for k in row["axes"] if k != axis]
    inner = ", ".join(f"{short_key(k)}={row['settings'].get(k)}" for k in others)
    return f"{row['model']} [{inner}]" if inner else row["model"]


def _one_axis(data: ReportData, task_name: str, axis: str, sub: pd.DataFrame, info: TaskInfo) -> list[Any]:
    sub["value"] = sub["settings"].map(lambda s: s.get(axis))
    sub["line"] = [_line_label(r, axis) for _, r in sub.iterrows()]
    order = _axis_order(list(sub["value"]))
    sub["value"] = sub["value"].astype(str)
    done = sub[sub["status"] == "done"]
    name = short_key(axis)
    out: list[Any] = [Text(f"{task_name}: {name}", "heading")]
    rows, sentences = [], []
    for line, g in sub.groupby("line", sort=True):
        d = g[g["status"] == "done"]
        per_value = {v: d[d["value"] == v]["primary"].to_numpy(float) for v in order if (g["value"] == v).any()}
        for v in per_value:
            s = summarize(per_value[v])
            gv = g[g["value"] == v]
            rows.append({"model": line, name: v, "seeds (done)": s.n,
                         f"test {info.primary}: mean [95% CI]": fmt_ci(s, within=bounds(info.primary)),
                         "solved": _solved_counts(gv) if info.solved is not None else "–",
                         "diverged": int((gv["status"] == "diverged").sum())})
        sentences.append(_axis_sentence(line, name, per_value, info))
    colors = dict(zip(sorted(sub["line"].unique()), figures.sns.color_palette("tab10", sub["line"].nunique())))
    if not done.empty and done["primary"].notna().any():
        log = not info.higher_is_better and bool((done["primary"] > 0).all())
        out.append(figure(figures.pointplot(done, "value", "primary", "line", colors, name, f"test {info.primary}",
                                            log, order),
                          f"ablation_{task_name}_{name}",
                          f"Test {info.primary} on {task_name} against {name}: mean over seeds and 95% "
                          f"t CI per model."))
    out.append(table(rows, f"Effect of {name} on {task_name} (test {info.primary}, "
                           f"{'higher' if info.higher_is_better else 'lower'} is better)."))
    out.extend(sentences)
    if axis == "task.T":
        out.extend(_largest_t(sub, info))
    return out


def _axis_sentence(line: str, name: str, per_value: dict[str, np.ndarray], info: TaskInfo) -> Text:
    scored = {v: x for v, x in per_value.items() if np.isfinite(x).any()}
    if len(scored) < 2:
        return note(f"{line}: fewer than two values of {name} with finished runs.")
    means = {v: float(np.nanmean(x)) for v, x in scored.items()}
    best = sorted(means, key=lambda v: means[v], reverse=info.higher_is_better)[0]
    pt = pairwise_table(scored, info.higher_is_better, ALPHA)
    sig = pt[pt["significant"] & ((pt["a"] == best) | (pt["b"] == best))]
    worse = [f"{name}={r.b if r.a == best else r.a} (Holm {fmt_peq(r.welch_p_holm)})" for r in sig.itertuples()]
    text = f"{line}: best at {name}={best} ({fmt(means[best])})"
    text += ("; significantly better than " + ", ".join(worse) + "." if worse
             else f"; no value differs significantly from it (Welch, Holm over {len(pt)} pairs).")
    return Text(text)


def _largest_t(sub: pd.DataFrame, info: TaskInfo) -> list[Any]:
    if info.solved is None:
        return [note(f"{info.name} has no solved threshold, so no 'largest T solved' is given.")]
    rows = []
    for line, g in sub.groupby("line", sort=True):
        d = g[g["status"].isin(["done", "diverged"])]
        solved_at = {}
        for v, gv in d.groupby("value"):
            ok = gv["solved"].fillna(False).astype(bool) if "solved" in gv else pd.Series(False, index=gv.index)
            solved_at[int(v)] = (int(ok.sum()), len(gv))
        good = [t for t, (k, n) in solved_at.items() if n and k * 2 >= n]
        rows.append({"model": line, "largest T solved": max(good) if good else "none",
                     "solved per T": ", ".join(f"T={t}: {k}/{n}" for t, (k, n) in sorted(solved_at.items()))})
    return [table(rows, "Largest sequence length T at which at least half of the seeds reached the solved "
                        f"threshold ({'≥' if info.higher_is_better else '≤'} {fmt(info.solved)} validation "
                        f"{info.primary}); diverged runs count as not solved.")]
