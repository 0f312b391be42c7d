"""Our numbers against outside statements: the published results (ANCHORS.md) and
the seed document's claims about batch norm in RNNs.

The seed document claims that batch norm makes RNN training "more stable and
efficient" and eases vanishing gradients. Each claim is tested on pairs of a
batch-normalized model (``norm=batch``) and its plain counterpart (same cell,
nonlinearity, init, width and depth, no norm) on the same task setting:

* more stable: fewer diverged runs (Fisher's exact test) and a smaller spread of
  the primary metric over seeds (Brown–Forsythe/Levene test);
* faster: fewer steps to reach the task's solved threshold (Mann–Whitney U; runs
  that did not solve within the steps every run had count as one step past them);
* eases vanishing gradients: a flatter gradient-flow profile at the end of
  training (Welch's t on the per-seed log-linear slopes).

p-values are Holm-corrected over all tests of one claim. A claim is *supported*
when some test is significant in its favour and none against it.
"""

from __future__ import annotations

import math
import warnings
from typing import Any

import numpy as np
import pandas as pd
from scipy import stats as sps

from reports.blocks import ALPHA, Section, Text, fmt, fmt_ci, fmt_p, note, table
from reports.data import ReportData, full_settings, numeric
from reports.dynamics import _profiles, slopes
from reports.literature import PUBLISHED, differences, matches, tasks_with_numbers
from reports.stats import holm, mann_whitney, prob_improvement, summarize, welch_t

SAME = ("model.cell", "model.nonlinearity", "model.hidden_size", "model.num_layers", "model.init")


# -- literature --------------------------------------------------------------------


def literature_section(data: ReportData) -> Section:
    sec = Section("literature", "Against the literature")
    rows = []
    for entry in PUBLISHED:
        for (label, variant), g in (data.runs.groupby(["task_label", "variant"], sort=True) if not data.empty else []):
            first = g.iloc[0]
            if not matches(entry, first["task"], first["model"], first["task_args"]):
                continue
            done = g[g["status"] == "done"]
            vals = pd.to_numeric(done[entry.column], errors="coerce") * entry.scale if entry.column in done else []
            s = summarize(vals)
            steps = float(numeric(done, "steps").mean())  # NaN: no finished run recorded its steps
            steps = None if math.isnan(steps) else steps
            diff = differences(entry, full_settings(first), steps)
            if entry.check is not None:
                paper = entry.claim
                verdict = "–" if s.n == 0 else ("agrees" if entry.check(s.mean) else "disagrees")
            else:
                paper, verdict = fmt(entry.value), "–"
            rows.append({"paper": f"{entry.paper_model}, {entry.paper_task}", "published": paper,
                         "source": entry.source, "ours": variant, "our task": label, "unit": entry.unit,
                         "our value [95% CI]": fmt_ci(s, within=(0.0, 100.0 if entry.column.endswith("acc") else None)), "agreement": verdict,
                         "updates": "–" if steps is None else f"{steps:,.0f}",
                         "comparable": ("no: " + ", ".join(diff) if diff else "yes" if entry.recipe
                                        else "task setting: yes; the source's recipe is not encoded here")})
    if not rows:
        return sec.add(note("No run in this store has the task setting of a published number; published numbers "
                            f"exist for: {', '.join(tasks_with_numbers())} (ANCHORS.md)."))
    sec.add(table(rows, "Published numbers next to ours. 'updates': the mean number of training updates of our "
                        "finished runs. 'comparable: no' names what differs from the paper's setting: the task's "
                        "arguments and, for Cooijmans et al.'s numbers, the model, the training settings of their "
                        "paper and public code, and fewer updates than they trained (the 'paper' profile runs "
                        "their recipes). Gaps are expected where it says no."))
    if any(r["our task"].startswith("permuted-mnist") for r in rows):
        sec.add(note("Permuted MNIST results depend on the permutation: Cooijmans et al.'s public code draws its "
                     "positions with replacement (~63% of the pixels kept), which perm_kind=with_replacement "
                     "reproduces; the default is a true permutation."))
    return sec


# -- the seed's claims -------------------------------------------------------------


def _is_bn(cfg: dict) -> bool:
    return cfg.get("model.norm") == "batch"


def _is_plain(cfg: dict) -> bool:
    return cfg.get("model.norm", "none") == "none" and not cfg.get("model.out_stack", False)


def _train_diff(a: dict, b: dict) -> int:
    keys = {k for k in (*a, *b) if k.startswith("train.") or k == "device"}
    return sum(a.get(k) != b.get(k) for k in keys)


def bn_pairs(data: ReportData) -> list[tuple[str, str, str]]:
    """(task setting, batch-norm variant, plain counterpart) for every pair in the store."""
    pairs = []
    for label in data.tasks:
        cfgs = {v: g.iloc[0]["settings"] for v, g in data.of_task(label).groupby("variant", sort=True)}
        for bn, cb in cfgs.items():
            if not _is_bn(cb):
                continue
            plain = [v for v, c in cfgs.items() if _is_plain(c) and all(c.get(k) == cb.get(k) for k in SAME)]
            if plain:  # prefer the same training settings, then the cuDNN preset named after the cell
                best = min(plain, key=lambda v: (_train_diff(cfgs[v], cb), v.split(" [")[0] != cb.get("model.cell"), v))
                pairs.append((label, bn, best))
    return pairs


def _runs(data: ReportData, label: str, variant: str) -> pd.DataFrame:
    r = data.of_task(label)
    return r[r["variant"] == variant]


def _evidence(data: ReportData, label: str, bn: str, plain: str) -> dict[str, list[dict[str, Any]]]:
    a, b = _runs(data, label, bn), _runs(data, label, plain)
    info = data.tasks[label]
    out: dict[str, list[dict[str, Any]]] = {"stable": [], "faster": [], "gradients": []}
    base = {"task": label, "bn model": bn, "plain model": plain}

    fin_a, fin_b = a[a["status"] != "failed"], b[b["status"] != "failed"]
    da, db = int((fin_a["status"] == "diverged").sum()), int((fin_b["status"] == "diverged").sum())
    if len(fin_a) and len(fin_b):
        p = sps.fisher_exact([[da, len(fin_a) - da], [db, len(fin_b) - db]]).pvalue
        na, nb = len(fin_a), len(fin_b)  # its smallest p: all of one side diverged, none of the other
        least = min(sps.fisher_exact([[na, 0], [0, nb]]).pvalue, sps.fisher_exact([[0, na], [nb, 0]]).pvalue)
        out["stable"].append({**base, "measure": "diverged runs", "bn": f"{da}/{na}",
                              "plain": f"{db}/{nb}", "test": "Fisher exact", "p": float(p), "min_p": float(least),
                              "favours bn": _sign(db / nb - da / na)})
    xa = a[a["status"] == "done"]["primary"].dropna().to_numpy(float)
    xb = b[b["status"] == "done"]["primary"].dropna().to_numpy(float)
    # Brown–Forsythe compares the runs' distances from their group's median: with two runs
    # a group's two distances are equal, so its spread within groups is 0 and any
    # difference gets p ~ 0. Three runs a side at least.
    if xa.size >= 3 and xb.size >= 3:
        sa, sb = float(np.std(xa, ddof=1)), float(np.std(xb, ddof=1))
        with np.errstate(all="ignore"), warnings.catch_warnings():  # 0/0 when both samples are tiny
            warnings.simplefilter("ignore", RuntimeWarning)
            p = float(sps.levene(xa, xb, center="median").pvalue) if (np.ptp(xa) or np.ptp(xb)) else 1.0
        out["stable"].append({**base, "measure": f"std of test {info.primary} over seeds", "bn": fmt(sa),
                              "plain": fmt(sb), "test": "Brown–Forsythe", "p": p if math.isfinite(p) else 1.0,
                              "min_p": 0.0, "favours bn": _sign(sb - sa)})
    if info.solved is not None:
        horizon = _horizon(pd.concat([a, b]))
        sa_, sb_ = _steps_to_solve(a, horizon), _steps_to_solve(b, horizon)
        if sa_.size and sb_.size and min(sa_.min(), sb_.min()) <= horizon:  # some run solved within it
            _, p = mann_whitney(sa_, sb_)
            out["faster"].append({**base, "measure": f"steps to solve within {horizon:,} (unsolved: {horizon + 1:,})",
                                  "bn": fmt(float(np.median(sa_))) + " (median)",
                                  "plain": fmt(float(np.median(sb_))) + " (median)", "test": "Mann–Whitney U",
                                  "p": p, "min_p": 2.0 / math.comb(sa_.size + sb_.size, sa_.size),  # exact, no ties
                                  "favours bn": _sign(prob_improvement(sa_, sb_, higher_is_better=False) - 0.5)})
    _, late, _ = _profiles(data, label)
    if bn in late and plain in late:  # flatter: a smaller |slope|, whether gradients vanish or explode
        ka, kb = np.abs(slopes(late[bn])), np.abs(slopes(late[plain]))
        _, p = welch_t(ka, kb)
        out["gradients"].append({**base, "measure": "|gradient-flow slope| at end (decades/step back)",
                                 "bn": fmt_ci(summarize(ka)), "plain": fmt_ci(summarize(kb)), "test": "Welch t",
                                 "p": p, "min_p": 0.0,
                                 "favours bn": _sign(float(np.nanmean(kb)) - float(np.nanmean(ka)))})
    return out


def _sign(x: float) -> int:
    """+1: the difference favours batch norm, -1: the plain model, 0: neither."""
    return 0 if not math.isfinite(x) or x == 0 else (1 if x > 0 else -1)


def _solved(value: Any) -> bool:
    return isinstance(value, (bool, np.bool_)) and bool(value)


def _horizon(runs: pd.DataFrame) -> int:
    """The steps every finished run of ``runs`` was given to solve: the smallest step budget,
    and the steps of an unsolved run that stopped sooner (its time budget ran out). Past it
    a run's steps to solve are unknown (censored) for some, so none is compared there: a
    model whose steps are slower gets fewer of them in the same time, and counting its
    unsolved runs as the full budget + 1 would compare what one model did not reach with
    what the other had steps left to reach."""
    ran = runs[runs["status"] != "failed"]
    out = [int(r["settings"].get("train.max_steps", 0) or 0) for _, r in ran.iterrows()]
    out += [int(r["steps"]) for _, r in ran.iterrows()
            if r["status"] == "done" and not _solved(r.get("solved")) and pd.notna(r.get("steps"))]
    return min((v for v in out if v > 0), default=0)


def _steps_to_solve(runs: pd.DataFrame, horizon: int) -> np.ndarray:
    """Steps to solve per finished run, within ``horizon`` (``_horizon``); a run that did
    not solve by then, or diverged, counts as ``horizon + 1``."""
    return np.array([row["solved_step"] if _solved(row.get("solved")) and row["solved_step"] <= horizon
                     else horizon + 1 for _, row in runs[runs["status"] != "failed"].iterrows()], dtype=float)


CLAIMS = {
    "stable": "Batch norm makes RNN training more stable (fewer divergences, less spread over seeds).",
    "faster": "Batch norm makes training faster (fewer steps to reach the solved threshold).",
    "gradients": "Batch norm eases vanishing gradients (flatter ‖∂L/∂h_t‖ profile).",
}


def verdict(rows: list[dict[str, Any]]) -> str:
    """supported / contradicted / mixed / not shown, from Holm-adjusted p-values."""
    if not rows:
        return "not enough evidence"
    pro = any(r["p_holm"] < ALPHA and r["favours bn"] > 0 for r in rows)
    con = any(r["p_holm"] < ALPHA and r["favours bn"] < 0 for r in rows)
    return "mixed" if pro and con else "supported" if pro else "contradicted" if con else "not shown"


def claims_section(data: ReportData) -> Section:
    sec = Section("claims", "The seed's claims")
    pairs = bn_pairs(data) if not data.empty else []
    sec.add(Text("The seed document claims that batch norm makes RNN training more stable and efficient and "
                 "eases vanishing gradients. Each claim is tested on pairs of a batch-normalized model and its "
                 "plain counterpart on the same task; p-values are Holm-corrected over the tests of a claim, "
                 f"α = {ALPHA}."))
    if not pairs:
        sec.add(note("Not enough evidence for any claim: the store has no batch-normalized model (norm=batch) "
                     "together with a plain model of the same cell and size on the same task. Run e.g. "
                     "'rnnbench run --profile bn' first."))
    evidence: dict[str, list[dict[str, Any]]] = {k: [] for k in CLAIMS}
    for pair in pairs:
        for k, rows in _evidence(data, *pair).items():
            evidence[k].extend(rows)
    summary, underpowered = [], {}
    for key, claim in CLAIMS.items():
        rows = evidence[key]
        tested = [r for r in rows if math.isfinite(r["p"])]  # a test without a p (one run a side) is none
        for r in rows:
            r["p_holm"] = float("nan")
        for r, p in zip(tested, holm([r["p"] for r in tested]) if tested else []):
            r["p_holm"] = float(p)
        # Holm's smallest adjusted p is the smallest p times the number of tests: where even
        # the most extreme runs could not get it below α, "no significant difference" would
        # read as evidence of none.
        least = min(1.0, min((r["min_p"] for r in tested), default=1.0) * max(len(tested), 1))
        v = verdict(tested) if least < ALPHA else "not enough evidence"
        if tested and least >= ALPHA:
            underpowered[key] = least
        summary.append({"claim": claim, "verdict": v, "tests": len(rows),
                        "significant for / against bn": f"{sum(r['p_holm'] < ALPHA and r['favours bn'] > 0 for r in rows)}"
                                                        f" / {sum(r['p_holm'] < ALPHA and r['favours bn'] < 0 for r in rows)}"})
    sec.add(table(summary, "Verdict per claim: supported (a significant test in favour, none against), "
                           "contradicted, mixed, not shown (no significant difference where one could have been "
                           "found) or not enough evidence (no pair, or too few runs for any of the claim's tests "
                           "to reach α after Holm's correction)."))
    for key, claim in CLAIMS.items():
        rows = evidence[key]
        if not rows and not pairs:
            continue
        if not rows:
            why = ("no pair has a task with a solved threshold on which a run solved within the steps every "
                   "run of the pair had (the smallest step budget, or where an unsolved run's time budget "
                   "stopped it: past it, steps to solve are unknown for that run)" if key == "faster" and pairs
                   else "no gradient-flow probes after training for both models" if key == "gradients"
                   else "no run finished on both sides of a pair")
            sec.add(note(f"{claim} — not enough evidence: {why}."))
            continue
        if key in underpowered:
            sec.add(note(f"{claim} — not enough evidence: with these runs the smallest Holm-adjusted p the tests "
                         f"below could give is {fmt_p(underpowered[key])} ≥ α = {ALPHA}; more seeds are needed."))
        shown = [{**{k: v for k, v in r.items() if k not in ("p", "p_holm", "favours bn", "min_p")},
                  "p": fmt_p(r["p"]), "p (Holm)": fmt_p(r["p_holm"]),
                  "direction": {1: "favours bn", -1: "favours plain", 0: "no difference"}[r["favours bn"]]}
                 for r in rows]
        sec.add(table(shown, f"Evidence: {claim}"))
    return sec
