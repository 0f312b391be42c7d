"""`rnnbench report`: a report rendered from a store made by a real short suite run,
checked against the store's numbers; determinism; partial stores; baseline flags."""

import base64
import json
import os
import re
import sqlite3
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import baselines

from reports import dynamics, figures
from reports.blocks import Table, Text, fmt, fmt_ci, fmt_p, fmt_peq
from reports.build import build_report
from reports.claims import bn_pairs, claims_section, verdict
from reports.cost import SPEED_FACTOR, _cost_table, _finished_share, _reference, baseline_section, compare, compare_to_baseline
from reports.data import ReportData, TaskInfo, config_key, load
from reports.literature import PUBLISHED, differences, matches
from reports.quality import friedman_scores
from reports.stats import Summary, friedman, pairwise_table, summarize
from suite.cli import main
from suite.errors import UserError
from suite.store import Store
from test_report_helpers import add_failed, copy_store, edit_summaries, real_store, specs

SECTIONS = ["Summary", "Significance", "Learning curves", "Gradient flow", "Ablations", "Cost",
            "Against the literature", "The seed's claims", "Environment"]


@pytest.fixture(scope="session")
def store(tmp_path_factory) -> Path:
    return real_store(tmp_path_factory.mktemp("store") / "rnnbench.sqlite")


@pytest.fixture(scope="session")
def report(store, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("report")
    build_report(store, out)
    return out


def _readme(out: Path) -> str:
    return (out / "README.md").read_text()


def test_html_is_one_self_contained_file_with_every_section(report):
    html = (report / "index.html").read_text()
    titles = re.findall(r"<h2>\d+\. ([^<]+)</h2>", html)
    assert [t.replace("&#39;", "'") for t in titles] == SECTIONS
    srcs = re.findall(r'<img src="([^"]+)"', html)
    assert len(srcs) >= 8  # CD diagram, 2 tasks x (curves, flow, norms), cost
    for src in srcs:
        assert src.startswith("data:image/png;base64,")
        assert base64.b64decode(src.split(",", 1)[1])[:8] == b"\x89PNG\r\n\x1a\n"
    assert not re.search(r"(src|href)=\"(https?:)?//", html), "the report must not load anything from the network"


def test_markdown_has_the_same_sections_and_the_same_figures_as_files(report):
    md, html = _readme(report), (report / "index.html").read_text()
    assert re.findall(r"^## \d+\. (.+)$", md, flags=re.M) == SECTIONS
    links = re.findall(r"!\[[^\]]*\]\((figures/[^)]+\.png)\)", md)
    inline = re.findall(r'<img src="data:image/png;base64,([^"]+)"', html)
    assert len(links) == len(inline)
    for link, b64 in zip(links, inline):
        assert (report / link).read_bytes() == base64.b64decode(b64)


def test_leaderboard_numbers_are_the_store_numbers(store, report):
    md = _readme(report)
    summ = Store(store, create=False).summaries()
    for task, metric in (("adding", "test_mse"), ("copy", "test_acc")):
        for model in ("rnn", "lstm"):
            vals = summ[(summ.task == task) & (summ.model == model)][metric]
            assert len(vals) == 3
            row = f"| {model} | 3 | {fmt_ci(summarize(vals), within=(0.0, 1.0 if metric == 'test_acc' else None))} |"
            assert row in md, row


def test_significance_table_is_the_pairwise_table_of_the_store(store, report):
    summ = Store(store, create=False).summaries()
    groups = {m: summ[(summ.task == "adding") & (summ.model == m)]["test_mse"] for m in ("lstm", "rnn")}
    r = pairwise_table(groups, higher_is_better=False).iloc[0]
    md = _readme(report)
    assert f"| lstm | rnn | 3/3 |" in md and f"| {fmt_p(r.welch_p_holm)} |" in md
    verdict_line = ("significantly better" if r.significant else "no difference is significant")
    assert verdict_line in md.split("### adding", 2)[2].split("###")[0]


def test_friedman_ranks_respect_each_tasks_direction(store):
    data = load(store)
    scores = friedman_scores(data)  # signed so that higher is better on every task
    assert list(scores.index) == ["adding", "copy"]
    means = data.done().groupby(["task_label", "variant"])["primary"].mean()
    assert scores.loc["adding"].idxmax() == means["adding"].idxmin()  # MSE: lower is better
    assert scores.loc["copy"].idxmax() == means["copy"].idxmax()  # accuracy: higher is better
    ranks = friedman(scores.to_numpy()).avg_ranks
    assert ranks.sum() == pytest.approx(3.0)  # two models: ranks 1 and 2 on each task


@pytest.mark.parametrize("rows,verdict", [
    ([[3, 2, 1], [3, 2, 1], [3, 1, 2], [3, 1, 2]], "finds no significant difference"),  # χ² p 0.050, F p 0.016
    ([[2, 1]] * 5, "finds no significant difference"),  # χ² p 0.025; the sign test's 0.0625
    ([[2, 1]] * 6, "The models differ."),  # 6 of 6: 0.03125
    ([[1, 1, 1]] * 3, "ties all 3 models"),
])
def test_across_tasks_decides_on_the_permutation_p(rows, verdict, monkeypatch):
    """The across-tasks sentence states and decides on the Friedman permutation p (the χ²
    and F approximations call 4 or 5 tasks significant where the exact test does not).
    Settings of one task (here the first two) are said not to be independent."""
    from types import SimpleNamespace

    from reports import quality

    labels = [f"task{i}" for i in range(len(rows))]
    scores = pd.DataFrame(rows, index=labels, columns=["lstm", "gru", "rnn"][:len(rows[0])], dtype=float)
    monkeypatch.setattr(quality, "friedman_scores", lambda data: scores)
    ran = pd.DataFrame([(t, m) for t in labels for m in scores.columns], columns=["task_label", "variant"])
    data = SimpleNamespace(tasks={t: SimpleNamespace(name="adding" if i < 2 else t) for i, t in enumerate(labels)},
                           done=lambda: ran)
    blocks = quality.friedman_blocks(data)
    text = " ".join(b.text for b in blocks if hasattr(b, "text"))
    assert verdict in text
    # no post-hoc bars without a significant Friedman test (Demšar 2006): one bar joins all
    caption = next(b.caption for b in blocks if hasattr(b, "png"))
    assert ("joined by a bar are not significantly different" in caption) == (verdict == "The models differ.")
    assert "Left out of this test" not in text
    assert "Several settings of one task (adding) count as separate data sets" in text
    res = friedman(scores.to_numpy())
    if not np.isnan(res.chi2):
        assert f"permutation {fmt_peq(res.perm_pvalue)} (exact over all" in text
        assert f"the χ² and F approximations ({fmt_peq(res.pvalue)}, {fmt_peq(res.f_pvalue)})" in text


def test_every_figure_has_a_table_or_sentence_beside_it(report):
    html = (report / "index.html").read_text()
    blocks = re.findall(r'<figure>|<div class="table-wrap">|<p class="(?:text|note|alert)">|<h[23]', html)
    for i, b in enumerate(blocks):
        if b == "<figure>":
            near = blocks[i - 1:i] + blocks[i + 1:i + 2]
            assert any(n.startswith(("<div", "<p")) for n in near), f"figure {i} stands alone"
    assert len(re.findall(r"<figcaption>[^<]{20,}</figcaption>", html)) == blocks.count("<figure>")


def test_same_store_gives_a_byte_identical_report(store, report, tmp_path):
    build_report(store, tmp_path)
    for name in ("index.html", "README.md"):
        assert (tmp_path / name).read_bytes() == (report / name).read_bytes(), name
    figs = sorted(p.name for p in (report / "figures").iterdir())
    assert figs == sorted(p.name for p in (tmp_path / "figures").iterdir())
    assert all((tmp_path / "figures" / f).read_bytes() == (report / "figures" / f).read_bytes() for f in figs)


def test_empty_store_renders_with_a_note(tmp_path):
    Store(tmp_path / "empty.sqlite").close()
    html, md, _ = build_report(tmp_path / "empty.sqlite", tmp_path / "out")
    assert "has no finished runs" in md.read_text() and "has no finished runs" in html.read_text()
    assert "not enough evidence" in md.read_text()


def test_partial_store_failed_run_one_seed_and_missing_task(tmp_path):
    path = real_store(tmp_path / "s.sqlite", seeds="0", tasks=(("adding", {"T": 8, "n_val": 64, "n_test": 64}),),
                      train={"max_steps": 20})
    (gru,) = specs(models=("gru",), seeds="0", tasks=(("adding", {"T": 8, "n_val": 64, "n_test": 64}),),
                   train={"max_steps": 20})
    add_failed(path, gru, "RuntimeError: CUDA out of memory")
    _, md_path, _ = build_report(path, tmp_path / "out", tasks=["adding", "copy"])
    md = md_path.read_text()
    assert "RuntimeError: CUDA out of memory" in md and "1 run(s) failed" in md
    assert "Only one finished seed" in md and "(one run, no CI)" in md
    assert "Task 'copy' was asked for but the store has no runs of it" in md
    assert "| gru | 0 | – |" in md  # the failed model keeps its row, with nothing to average


def test_bad_filters_and_missing_store_are_user_errors(store, tmp_path):
    with pytest.raises(UserError, match="--tasks 'nope' matches no task"):
        build_report(store, tmp_path, tasks=["nope"])
    with pytest.raises(UserError, match="--models 'x\\*' matches no model"):
        build_report(store, tmp_path, models=["x*"])
    with pytest.raises(UserError, match="--since 'last week' is not a date"):
        build_report(store, tmp_path, since="last week")
    with pytest.raises(UserError, match="does not exist"):
        build_report(tmp_path / "missing.sqlite", tmp_path)


def test_since_filters_by_creation_date(store):
    assert load(store, since="2000-01-01").runs.shape[0] == 12
    assert load(store, since="2999-01-01").empty


def test_cli_report_with_filters(store, tmp_path, capsys):
    assert main(["report", "--store", str(store), "--out", str(tmp_path), "--tasks", "adding",
                 "--models", "lstm"]) == 0
    md = (tmp_path / "README.md").read_text()
    assert "### adding" in md and "### copy" not in md and "| rnn |" not in md
    assert main(["report", "--store", str(tmp_path / "none.sqlite"), "--out", str(tmp_path)]) == 2
    assert "does not exist" in capsys.readouterr().err


# -- baseline ----------------------------------------------------------------------


def test_compare_needs_non_overlapping_intervals():
    s = lambda lo, hi, n=3: Summary(n, (lo + hi) / 2, (lo + hi) / 2, 1.0, lo, hi)  # noqa: E731
    assert compare(s(0.3, 0.4), s(0.1, 0.2), higher_is_better=False) == "regressed"
    assert compare(s(0.3, 0.4), s(0.1, 0.2), higher_is_better=True) == "improved"
    assert compare(s(0.15, 0.4), s(0.1, 0.2), higher_is_better=False) == "within CI"
    one = Summary(1, 0.5, 0.5, float("nan"), float("nan"), float("nan"))
    assert compare(one, s(0.1, 0.2), higher_is_better=False) == "no CI"


def test_baseline_flags_exactly_the_regressed_metric_and_throughput(store, tmp_path):
    current = copy_store(store, tmp_path / "now.sqlite")
    assert edit_summaries(current, "task='adding' AND model='lstm'", test_mse=3.0, samples_per_s=0.2) == 3
    now, base = load(current), load(store)
    comparison = compare_to_baseline(now, base)
    assert len(comparison.regressions) == 2 and all("lstm" in r for r in comparison.regressions)
    sec = baseline_section(now, base, "last-night.sqlite", comparison)
    (tab,) = [b for b in sec.blocks if isinstance(b, Table)]
    verdicts = {(r[0], r[1], r[3]): r[-1] for r in tab.rows}
    assert verdicts[("adding", "lstm", "test mse")] == "REGRESSED"
    assert verdicts[("adding", "lstm", "samples/s")] == "REGRESSED"
    assert sum(v == "REGRESSED" for v in verdicts.values()) == 2
    assert len(verdicts) == 8  # 2 tasks x 2 models x (metric, throughput)
    alerts = [b.text for b in sec.blocks if isinstance(b, Text) and b.kind == "alert"]
    assert alerts and "2 regression(s)" in alerts[0]


def _edit_runs(path: Path, where: str, status: str | None = None, spec=None, summary=None) -> None:
    """Rewrite the runs matching the SQL ``where``: their status, and their spec and summary
    through functions of the parsed JSON."""
    s = Store(path)
    for run_id, spec_text, summary_text in s.db.execute(f"SELECT run_id, spec, summary FROM runs WHERE {where}"):
        new_spec, new_summary = json.loads(spec_text), json.loads(summary_text)
        if spec:
            spec(new_spec)
        if summary:
            summary(new_summary)
        s.db.execute("UPDATE runs SET spec=?, summary=?, status=COALESCE(?, status) WHERE run_id=?",
                     (json.dumps(new_spec), json.dumps(new_summary), status, run_id))
    s.close()


def test_baseline_flags_a_configuration_whose_runs_no_longer_finish(store, tmp_path):
    """All runs diverged (no test metric, so no CI) is a regression, not a pass."""
    current = copy_store(store, tmp_path / "now.sqlite")
    _edit_runs(current, "task='adding' AND model='lstm'", status="diverged")
    comparison = compare_to_baseline(load(current), load(store))
    assert comparison.regressions == ["runs finished of lstm on adding (cpu): 0/3 now vs 3/3"]
    row = next(r for r in comparison.rows if r["metric"].startswith("runs finished"))
    assert (row["now [95% CI]"], row["baseline [95% CI]"], row["verdict"]) == ("0/3", "3/3", "REGRESSED")
    # one of three diverging is within chance (Fisher one-sided p = 0.5), and said so
    _edit_runs(current, "task='adding' AND model='lstm' AND seed>0", status="done")
    comparison = compare_to_baseline(load(current), load(store))
    assert comparison.regressions == []
    row = next(r for r in comparison.rows if r["metric"].startswith("runs finished"))
    assert (row["now [95% CI]"], row["verdict"]) == ("2/3", "within chance") and "p = 0.5" in row["change %"]


@pytest.mark.parametrize("now,base,verdict", [((0, 3), (3, 3), "regressed"), ((0, 8), (1, 8), "within chance"),
                                              ((2, 8), (8, 8), "regressed"), ((3, 3), (0, 3), "improved")])
def test_finished_runs_are_flagged_by_fisher_or_when_none_finish_where_most_did(now, base, verdict):
    from reports.cost import _finished_share

    assert _finished_share(*now, *base)[0] == verdict


def test_a_seed_stack_is_one_timing_in_the_baseline_comparison(store, tmp_path):
    """The runs of one stack share their throughput: they count once, so the interval is
    not zero-width (any slowdown flagged) and a single timing is judged by the tolerance."""
    def stacked(factor):
        def edit(summary):
            summary.update(stack_id="s0", seed_stack=3, samples_per_s=1000.0 * factor)
        return edit

    base = copy_store(store, tmp_path / "base.sqlite")
    _edit_runs(base, "task='adding' AND model='rnn'", summary=stacked(1.0))
    verdicts = {}
    for factor in (0.999, 0.85, 0.82, 1.3):  # 1 / 0.82 = 1.22: slower by more than the factor
        current = copy_store(store, tmp_path / f"now{factor}.sqlite")
        _edit_runs(current, "task='adding' AND model='rnn'", summary=stacked(factor))
        comparison = compare_to_baseline(load(current), load(base))
        row = next(r for r in comparison.rows if (r["task"], r["model"], r["metric"]) == ("adding", "rnn", "samples/s"))
        verdicts[factor] = row["verdict"]
        assert row["now [95% CI]"] == f"{fmt(1000.0 * factor)} (one timing, no CI)"  # one value, no interval
    assert verdicts == {0.999: "within factor", 0.85: "within factor", 0.82: "REGRESSED", 1.3: "improved"}
    assert SPEED_FACTOR == 1.2


def test_baseline_matches_a_store_written_before_a_switch_existed(store, tmp_path):
    """A spec without a key that this rnnbench has at its default is the same configuration;
    a store that matches nothing is said to have compared nothing (the gate fails)."""
    old = copy_store(store, tmp_path / "old.sqlite")
    _edit_runs(old, "1", spec=lambda spec: (spec["train"].pop("weight_decay"), spec["model_args"].pop("init")))
    comparison = compare_to_baseline(load(store), load(old))
    assert comparison.regressions == [] and comparison.new == comparison.gone == 0 and len(comparison.rows) == 8
    _edit_runs(old, "1", spec=lambda spec: spec["train"].update(weight_decay=0.5))
    comparison = compare_to_baseline(load(store), load(old))
    assert comparison.rows == [] and comparison.new == comparison.gone == 4
    assert comparison.regressions == ["no configuration of this store is in the baseline, so nothing was compared "
                                      "(a changed profile or switch?)"]


def test_report_with_baseline_has_the_section(store, tmp_path):
    _, md, regressions = build_report(store, tmp_path, baseline=store, models=["rnn"], tasks=["adding"])
    text = md.read_text()
    assert "## 2. Against the baseline" in text
    assert "No metric or throughput regressed beyond its confidence interval." in text
    assert regressions == []


# -- claims and literature ----------------------------------------------------------


def test_claims_without_bn_models_say_not_enough_evidence(store):
    sec = claims_section(load(store))
    (tab,) = [b for b in sec.blocks if isinstance(b, Table)]
    assert [r[1] for r in tab.rows] == ["not enough evidence"] * 3


def test_verdict_rules():
    row = lambda p, fav: {"p_holm": p, "favours bn": fav}  # noqa: E731
    assert verdict([]) == "not enough evidence"
    assert verdict([row(0.01, 1), row(0.5, -1)]) == "supported"
    assert verdict([row(0.01, -1)]) == "contradicted"
    assert verdict([row(0.01, 1), row(0.02, -1)]) == "mixed"
    assert verdict([row(0.2, 1), row(0.01, 0)]) == "not shown"


@pytest.fixture(scope="module")
def bn_store(tmp_path_factory) -> Path:
    """rnn and bn-rnn on adding T=8, three seeds."""
    if "bn-rnn" not in baselines.names():
        pytest.skip("no bn-rnn model registered")
    return real_store(tmp_path_factory.mktemp("bn") / "bn.sqlite", models=("rnn", "bn-rnn"), seeds="0-2",
                      tasks=(("adding", {"T": 8, "n_val": 64, "n_test": 64}),), train={"max_steps": 20})


def test_claims_compare_bn_rnn_with_rnn(bn_store):
    data = load(bn_store)
    assert bn_pairs(data) == [("adding", "bn-rnn", "rnn")]
    sec = claims_section(data)
    tables = [b for b in sec.blocks if isinstance(b, Table)]
    evidence = [r for t in tables[1:] for r in t.rows]
    measures = {r[3] for r in evidence}
    assert {"diverged runs", "std of test mse over seeds", "|gradient-flow slope| at end (decades/step back)"} <= measures


def test_claims_need_three_runs_for_spread_and_call_a_smaller_slope_flatter(bn_store, monkeypatch):
    """Two runs a side give no spread test (Brown–Forsythe's distances from the median are
    then equal within a group: p ~ 0 for any difference); a gradient-flow profile that
    grows 10^0.1 a step back is steeper than one that decays 10^-0.02 a step, so it does
    not favour batch norm however significant."""
    from reports import claims

    data = load(bn_store)
    data.runs = data.runs[data.runs["seed"] < 2]  # two runs a side
    monkeypatch.setattr(claims, "_profiles", lambda data, label: ({}, {"bn-rnn": 0.1, "rnn": -0.02}, {}))
    monkeypatch.setattr(claims, "slopes", lambda slope: slope + np.array([0.001, -0.001]))  # two runs' slopes
    ev = claims._evidence(data, "adding", "bn-rnn", "rnn")
    assert [r["measure"] for r in ev["stable"]] == ["diverged runs"]
    (grad,) = ev["gradients"]
    assert grad["p"] < 0.05 and grad["favours bn"] == -1


def test_literature_matching_and_comparability():
    """The paper's setting is the task's arguments and, for Cooijmans et al.'s numbers,
    their model and training recipe and the updates they trained; a scaled-down run (the
    nightly profile's) is said to differ in each of them."""
    from suite.profiles import build_specs
    from reports.data import settings as flat

    def cfg(spec):
        return flat(pd.Series({"task_args": spec.task_args, "model_args": spec.model_args, "train": spec.train,
                               "device": spec.device, "spec": spec.to_json()}))

    lstm_mnist = next(e for e in PUBLISHED if e.task == "pixel-mnist" and e.paper_model == "LSTM"
                      and e.source.startswith("Cooijmans"))
    paper = {s.model: cfg(s) for s in build_specs(profile="paper", device="cpu", task=["pixel-mnist"])}
    full = paper["lstm"]
    assert matches(lstm_mnist, "pixel-mnist", "lstm", {}) and not matches(lstm_mnist, "pixel-mnist", "gru", {})
    assert differences(lstm_mnist, full, steps=100_000) == []
    assert differences(lstm_mnist, {**full, "task.n_train": 1000}) == ["n_train=1000 (paper: 0)"]
    assert differences(lstm_mnist, full, steps=4000) == ["trained 4,000 updates (paper: 100,000)"]
    bn = next(e for e in PUBLISHED if e.task == "pixel-mnist" and e.paper_model == "BN-LSTM")
    assert differences(bn, paper["bn-lstm"], steps=100_000) == []
    assert differences(bn, {**paper["bn-lstm"], "model.norm_gamma": 1.0}) == ["norm_gamma=1.0 (paper: 0.1)"]
    nightly = {(s.task, s.model): cfg(s) for s in build_specs(profile="nightly", device="cpu", model=["lstm"])}
    night = differences(lstm_mnist, nightly[("pixel-mnist", "lstm")])
    assert "init=default (paper: cooijmans-id)" in night
    assert differences(lstm_mnist, {**full, "train.rmsprop_alpha": 0.99}) == ["rmsprop_alpha=0.99 (paper: 0.9)"]
    for task, model in (("permuted-mnist", "bn-lstm"), ("char-lm", "lstm"), ("char-lm", "bn-lstm")):
        specs = [s for s in build_specs(profile="paper", device="cpu", task=[task], model=[model])]
        assert specs, (task, model)
        for spec in specs:
            (entry,) = [e for e in PUBLISHED if e.source.startswith("Cooijmans") and
                        matches(e, task, model, spec.task_args)]
            assert differences(entry, cfg(spec), steps=entry.steps) == [], (task, model, spec.task_args)
    le = next(e for e in PUBLISHED if e.paper_model == "iRNN")
    assert not le.recipe and "Le et al." in le.source
    ptb = [e for e in PUBLISHED if e.task == "char-lm" and e.when == {"corpus": "ptb"}]
    assert sorted(e.value for e in ptb) == [1.32, 1.38]
    copy100 = next(e for e in PUBLISHED if e.task == "copy" and e.when == {"T": 100})
    assert copy100.check(0.5) and not copy100.check(1.0)


def test_steps_to_solve_compare_within_the_steps_every_run_had():
    """A run stopped unsolved by its time budget at step 500 bounds what is known of every
    run: each counts as solved at its step up to 500, else 501 (a diverged run too), not
    as its full budget + 1 (which compared the slower model's missing steps)."""
    from reports.claims import _horizon, _steps_to_solve

    def run(status, steps, solved_step=None, max_steps=1000):
        return {"status": status, "steps": steps, "solved": solved_step is not None,
                "solved_step": solved_step, "settings": {"train.max_steps": max_steps}}

    bn = pd.DataFrame([run("done", 500), run("done", 300, 300), run("done", 900, 900)])
    plain = pd.DataFrame([run("done", 200, 200), run("done", 1000), run("diverged", 40), run("failed", 0)])
    horizon = _horizon(pd.concat([bn, plain]))
    assert horizon == 500
    assert _steps_to_solve(bn, horizon).tolist() == [501, 300, 501]
    assert _steps_to_solve(plain, horizon).tolist() == [200, 501, 501]
    assert _horizon(pd.DataFrame([run("done", 1000), run("done", 70, 70, max_steps=800)])) == 800


# -- figures ----------------------------------------------------------------------


def test_band_is_the_t_interval_of_each_point():
    """Each point's band is Student's t interval of its runs' mean, a run missing there
    left out (scipy's interval of the column's values)."""
    import scipy.stats as sps

    rng = np.random.default_rng(0)
    m = rng.normal(size=(5, 7))
    m[0, 3] = np.nan
    mean, lo, hi = figures.band(m)
    np.testing.assert_allclose(mean, np.nanmean(m, axis=0))
    for j in range(7):
        col = m[~np.isnan(m[:, j]), j]
        ref = sps.t.interval(0.95, col.size - 1, loc=col.mean(), scale=sps.sem(col))
        np.testing.assert_allclose((lo[j], hi[j]), ref)
    assert figures.ci95(m[:, 0]) == pytest.approx((lo[0], hi[0]))
    gmean, glo, ghi = figures.band(np.exp(m), geometric=True)
    np.testing.assert_allclose(np.log10(gmean), np.nanmean(np.log10(np.exp(m)), axis=0))
    assert np.all(glo > 0) and np.all(glo <= gmean) and np.all(gmean <= ghi)
    one = figures.band(m[:1])
    np.testing.assert_allclose(one[1], one[0])


def test_environment_records_the_code_path_switches(monkeypatch):
    """A run records the RNNBENCH_ switches that picked its code path (sorted, with their
    values; none: ""), not other variables."""
    from suite.env import environment

    for k in [k for k in os.environ if k.startswith("RNNBENCH_")]:
        monkeypatch.delenv(k)
    assert environment("cpu")["switches"] == ""
    monkeypatch.setenv("RNNBENCH_GPU_BN_SPLIT", "1")
    monkeypatch.setenv("RNNBENCH_CPU_LOOPS", "0")
    monkeypatch.setenv("RNNBENCH_DATA", "/tmp/data")  # a place, not a code path
    assert environment("cpu")["switches"] == "RNNBENCH_CPU_LOOPS=0,RNNBENCH_GPU_BN_SPLIT=1"


def test_environment_names_the_runs_cpu_capability(report):
    """The environment table names the vector instructions the runs' CPU kernels used (the
    compiled loops are built for them), so CPU timings are compared only like for like."""
    import torch

    env = _readme(report).rsplit("Environment", 1)[1]
    header = next(line for line in env.splitlines() if line.startswith("|"))
    assert "cpu_capability" in header and "switches" in header
    assert f"| {torch.backends.cpu.get_cpu_capability()} |" in env


def test_p_values_print_on_their_side_of_alpha():
    """Three decimals, more where three would round a p-value across 0.05 (a 'significant'
    verdict beside 'p = 0.050')."""
    assert [fmt_p(p) for p in (0.0496, 0.04996, 0.0504, 0.05, 0.1056, 0.0004, float("nan"))] == [
        "0.0496", "0.04996", "0.050", "0.050", "0.106", "<0.001", "–"]
    assert fmt_peq(0.0496) == "p = 0.0496" and fmt_peq(0.0002) == "p < 0.001"


def test_diverged_runs_left_out_of_scores_are_said(store):
    """A diverged run has no test score: the leader sentence and the significance section
    say how many of a model's runs its numbers leave out."""
    from reports.quality import significance_section, summary_section

    data = load(store)
    runs = data.runs
    for variant in runs[runs["task_label"] == "adding"]["variant"].unique():  # the best model loses a run
        hit = runs.index[(runs["task_label"] == "adding") & (runs["variant"] == variant)][:1]
        data.runs.loc[hit, "status"] = "diverged"
        data.runs.loc[hit, "primary"] = np.nan
    text = lambda sec: " ".join(b.text for b in sec.blocks if hasattr(b, "text"))  # noqa: E731
    assert "over the 2 of its 3 runs that finished (1 diverged and have no test score)" in text(summary_section(data))
    sig = text(significance_section(data))
    assert "these tests compare the runs that finished: " in sig and "lstm lost 1 of 3, rnn lost 1 of 3" in sig


def test_gradient_ratio_at_end_needs_a_probe_after_step_0(store):
    """A model whose runs ended before their next probe (e.g. diverged) has no end-of-
    training ratio: not step 0's passed off as the end's, and a note says why."""
    from reports.dynamics import _flow_blocks

    data = load(store)
    d = data.diagnostics
    first = d.groupby("run_id")["step"].transform("min")
    data.diagnostics = d[~((d["variant"] == "rnn") & (d["task_label"] == "adding") & (d["step"] > first))]
    blocks = _flow_blocks(data, "adding", data.tasks["adding"])
    (tab,) = [b for b in blocks if isinstance(b, Table)]
    ratio = dict(zip(tab.frame["model"], tab.frame["‖∂L/∂h_0‖ / ‖∂L/∂h_T−1‖ at end"]))
    assert ratio["rnn"] == "–" and ratio["lstm"] != "–"
    text = " ".join(b.text for b in blocks if hasattr(b, "text"))
    assert "No probe after step 0 for rnn on adding" in text and "rnn: by the end" not in text


def test_norm_after_clipping_takes_each_runs_own_clip(store):
    from reports.dynamics import _norm_blocks

    data = load(store)
    runs = data.runs
    for i in runs.index[runs["task_label"] == "adding"]:
        runs.at[i, "settings"] = {**runs.at[i, "settings"], "train.clip": 1e-6 if runs.at[i, "variant"] == "lstm" else None}
    blocks = _norm_blocks(data, "adding")
    (tab,) = [b for b in blocks if isinstance(b, Table)]
    rows = {r["model"]: r for r in tab.frame.to_dict("records")}
    assert rows["lstm"]["median after clip"] == fmt(1e-6)
    m = data.metrics
    norms = m[(m["task_label"] == "adding") & (m["variant"] == "rnn") & (m["name"] == "grad_norm")]
    assert rows["rnn"]["median after clip"] == fmt(norms.groupby("run_id")["value"].median().mean())  # no clip
    assert "dashed: the clipping threshold)" not in blocks[0].caption and "dashed: the clipping threshold." in blocks[0].caption


def test_a_configuration_has_one_label_on_every_task(tmp_path):
    """lstm at hidden size 8 is 'lstm [hidden_size=8]' on copy too, where it is lstm's only
    size, so the across-tasks test keeps it; the size run on one task only is named as
    left out."""
    from reports.quality import friedman_blocks
    from suite.spec import make_spec

    store = Store(tmp_path / "s.sqlite")
    todo = [(task, model, hidden, seed) for task in ("adding", "copy") for seed in (0, 1)
            for model, hidden in (("lstm", 8), ("rnn", 8), ("lstm", 16)) if (task, hidden) != ("copy", 16)]
    for task, model, hidden, seed in todo:
        spec = make_spec(task, {}, model, {"hidden_size": hidden}, {}, seed, "cpu")
        store.add_runs([spec])
        assert store.claim(spec.run_id)
        store.finish(spec.run_id, "done", {"test_mse": 0.1 * hidden + seed, "test_acc": 0.5 - 0.01 * hidden})
    store.close()
    data = load(tmp_path / "s.sqlite")
    labels = data.runs.groupby("task")["variant"].unique().map(sorted).to_dict()
    assert labels == {"adding": ["lstm [hidden_size=16]", "lstm [hidden_size=8]", "rnn"],
                      "copy": ["lstm [hidden_size=8]", "rnn"]}
    assert sorted(friedman_scores(data).columns) == ["lstm [hidden_size=8]", "rnn"]
    text = " ".join(b.text for b in friedman_blocks(data) if hasattr(b, "text"))
    assert "Left out of this test for lacking finished runs where the others have them: models lstm [hidden_size=16]." in text


def test_solved_counts_diverged_runs_as_not_solved(store):
    from reports.quality import leaderboard

    data = load(store)
    runs = data.runs
    hit = runs.index[(runs["task_label"] == "adding") & (runs["variant"] == "lstm")][:1]
    runs.loc[hit, "status"] = "diverged"
    shown = {r["model"]: r for r in leaderboard(data, "adding")[1]}
    assert shown["lstm"]["solved"].endswith("/3") and shown["lstm"]["seeds (done)"] == 2


def test_figure_names_stay_short_and_markdown_shows_names_as_written(tmp_path):
    """A task label holding a long path gives a figure file the file system takes, told
    apart from another cut alike; Markdown escapes what it would read as markup."""
    import matplotlib.pyplot as plt

    from reports import render
    from reports.blocks import Section, figure

    long = "curves_char-lm(path=/data/" + "corpora/" * 40
    names = [render._slug(long + "a"), render._slug(long + "b")]
    assert all(len(n) <= render.SLUG_CHARS for n in names) and names[0] != names[1]
    sec = Section("s", "S & <T>").add(Text("model <b>x</b> & *y* `z`"), figure(plt.figure(), long + "a", "cap*"))
    html, md = render.write([sec], render.check_out(tmp_path / "report"), "title", "sub")
    text = md.read_text()
    assert "model &lt;b&gt;x&lt;/b&gt; &amp; \\*y\\* \\`z\\`" in text and "*cap\\**" in text
    assert "model &lt;b&gt;x&lt;/b&gt; &amp; *y*" in html.read_text()
    (png,) = (tmp_path / "report" / "figures").glob("*.png")
    assert f"figures/{png.name}" in text


def test_cost_table_counts_a_seed_stack_once(store):
    """A stack's runs share one timing: no zero-width interval from S equal values."""
    from reports.cost import _cost_table

    data = load(store)
    runs = data.runs[data.runs["task_label"] == "adding"].copy()
    rnn = runs["variant"] == "rnn"
    runs.loc[rnn, "stack_id"], runs.loc[rnn, "samples_per_s"], runs.loc[rnn, "step_ms"] = "s0", 1000.0, 2.0
    (tab,) = [b for b in _cost_table("adding", "cpu", runs) if isinstance(b, Table)]
    row = dict(zip(tab.frame["model"], tab.frame.to_dict("records")))["rnn"]
    assert row["runs"] == "3" and row["samples/s [95% CI]"] == "1000 (one timing, no CI)"


def test_a_chance_level_that_needs_the_data_is_the_one_its_runs_recorded(tmp_path):
    """ListOps' chance level comes from its generated test classes (a property): the
    runner records it, and the report, which reads only the store, shows it."""
    import tasks

    args = {"min_length": 4, "max_length": 20, "n_train": 40, "n_val": 20, "n_test": 30}
    path = real_store(tmp_path / "l.sqlite", models=("rnn",), seeds="0", tasks=(("listops", args),),
                      train={"max_steps": 2})
    data = load(path)
    (info,) = data.tasks.values()
    assert info.chance == pytest.approx(tasks.create("listops", **args).chance)
    from reports import dynamics  # and its gradient-flow profile says how padded sequences are aligned

    assert info.padded and any("aligned at each sequence's last step" in getattr(b, "text", "")
                               for b in dynamics._flow_blocks(data, info.label, info))
    _edit_runs(path, "1", summary=lambda s: s.pop("chance"))  # a store from before: no level, no guess
    (info,) = load(path).tasks.values()
    assert info.chance is None


def test_a_gradient_that_underflows_to_zero_is_said_not_dropped(store, monkeypatch, tmp_path):
    """Seeds whose ‖∂L/∂h_t‖ reaches exactly 0 (float32 underflow) are the most vanished:
    the ratio at t = 0 is 0, not the other seeds' ratio; the table counts them and the
    sentence names both; the figure's axis spans the curves."""
    from reports import dynamics

    T = 6
    late = np.array([[0.0, 0.0, 1e-8, 1e-4, 1e-2, 1.0],
                     [0.0, 1e-12, 1e-9, 1e-6, 1e-3, 1.0],
                     [1e-5, 1e-4, 1e-3, 1e-2, 1e-1, 1.0]])
    early = np.full((3, T), 1.0)
    assert dynamics._first_last_ratio(late) == 0.0
    elsewhere = late.copy()
    elsewhere[2, 1] = 0.0  # a third seed reaches 0 at t = 1, not at t = 0: the sentence counts t = 0
    assert dynamics._first_last_ratio(late, positive=True) == pytest.approx(1e-5)
    assert dynamics._zero_runs(late) == 2
    data = load(store)
    label = sorted(data.tasks)[0]
    monkeypatch.setattr(dynamics, "_profiles", lambda d, lab: ({"rnn": early}, {"rnn": late}, {"rnn": [40]}))
    blocks = dynamics._flow_blocks(data, label, data.tasks[label])
    (tab,) = [b for b in blocks if isinstance(b, Table)]
    row = dict(zip(tab.columns, tab.rows[0]))
    assert row["‖∂L/∂h_0‖ / ‖∂L/∂h_T−1‖ at end"] == fmt(0.0) and row["seeds reaching 0 at end"] == "2 of 3"
    text = " ".join(b.text for b in blocks if isinstance(b, Text))
    assert "is 0 (below float32's smallest value) in 2 of 3 seeds, and " + fmt(1e-5) + "× the gradient" in text
    monkeypatch.setattr(dynamics, "_profiles", lambda d, lab: ({"rnn": early}, {"rnn": elsewhere}, {"rnn": [40]}))
    blocks = dynamics._flow_blocks(data, label, data.tasks[label])
    text = " ".join(b.text for b in blocks if isinstance(b, Text))
    assert "in 2 of 3 seeds, and " + fmt(1e-5) + "× the gradient at the last step in the other." in text
    fig = figures.gradient_flow({"rnn": early}, {"rnn": late}, {"rnn": "C0"}, "end")
    low, high = fig.axes[0].get_ylim()
    assert low >= 1e-14 and high <= 100  # the curves' range (1e-13 .. 1), not a band of 3 seeds


def test_time_to_solve_leaves_out_the_start_up():
    """A run whose first steps built a C++ extension (warmup_s 51.75 s) solved 2.59 s of
    training later; one that solved within its start-up keeps its whole time."""
    from reports.quality import _time_to_solve

    runs = pd.DataFrame({"solved_time_s": [54.34, 3.0], "warmup_s": [51.75, 10.0],
                         "warmup_steps": [5, 5], "solved_step": [100, 3]})
    assert _time_to_solve(runs).tolist() == pytest.approx([2.59, 3.0])  # a store without warmup_end_step
    # solved at step 500 in 3 s, then resumed at step 1000 with a 10 s start-up that ended at
    # step 1001: that start-up came after, and is not taken from the time to solve
    resumed = pd.DataFrame({"solved_time_s": [3.0], "warmup_s": [10.0], "warmup_steps": [1],
                            "warmup_end_step": [1001], "solved_step": [500]})
    assert _time_to_solve(resumed).tolist() == [3.0]


def test_literature_section_names_the_settings_it_lacks(store):
    """The store has adding and copy, at other T than the published numbers': the note says
    which settings those are, not that the tasks have none."""
    from reports.claims import literature_section

    (block,) = literature_section(load(store)).blocks
    assert "No run in this store has the task setting of a published number" in block.text
    assert "adding (T=1000)" in block.text and "copy (T=100/200/300/500)" in block.text


def test_a_claim_no_test_could_support_is_not_enough_evidence(bn_store, monkeypatch):
    """Two runs a side: Fisher's test cannot go below p = 1/3 and Mann–Whitney's below 1/3,
    so the stability claim has not enough evidence, not 'not shown'; a test without a p
    (Welch with one run a side) is no test: it is not Holm-corrected as p = 1."""
    from reports import claims

    data = load(bn_store)
    data.runs = data.runs[data.runs["seed"] < 2]
    monkeypatch.setattr(claims, "_profiles", lambda data, label: ({}, {"bn-rnn": np.ones((1, 4)),
                                                                      "rnn": np.ones((1, 4))}, {}))
    sec = claims_section(data)
    tables = [b for b in sec.blocks if isinstance(b, Table)]
    verdicts = {r[0]: r[1] for r in tables[0].rows}
    assert verdicts[claims.CLAIMS["stable"]] == "not enough evidence"
    assert verdicts[claims.CLAIMS["gradients"]] == "not enough evidence"
    notes = " ".join(b.text for b in sec.blocks if isinstance(b, Text))
    assert "the smallest Holm-adjusted p the tests below could give is 0.333" in notes
    grad = next(t for t in tables[1:] if "gradients" in t.caption)
    assert [r[-2] for r in grad.rows] == ["–"]  # p (Holm) of a test with no p
    assert claims.verdict([{"p_holm": 0.01, "favours bn": 1}]) == "supported"


def test_intervals_are_cut_at_the_metric_range():
    """Three accuracies near 1 have a t interval past 1; it is shown cut at [0, 1], as MSE's
    at 0; slopes keep theirs."""
    from reports.blocks import POSITIVE, bounds

    s = summarize([0.99, 1.0, 0.93])
    assert s.ci_high > 1.0
    assert fmt_ci(s, within=bounds("acc")) == f"{fmt(s.mean)} [{fmt(s.ci_low)}, {fmt(1.0)}]"
    m = summarize([0.001, 0.02, 0.0005])
    assert m.ci_low < 0 and fmt_ci(m, within=bounds("mse")) == f"{fmt(m.mean)} [{fmt(0.0)}, {fmt(m.ci_high)}]"
    assert bounds("test_acc") == (0.0, 1.0) and bounds("bpc") == bounds("loss_ratio") == POSITIVE
    assert fmt_ci(m) == f"{fmt(m.mean)} [{fmt(m.ci_low)}, {fmt(m.ci_high)}]"


def test_each_task_says_how_its_models_were_trained(store):
    """The summary shows each model's size, parameter count, optimizer, budget and early
    stopping beside the leaderboard: the store's settings, not a description of them."""
    from reports.quality import summary_section

    data = load(store)
    sec = summary_section(data)
    setup = [b for b in sec.blocks if isinstance(b, Table) and b.caption.startswith("Training setup on adding")]
    (tab,) = setup
    rows = {r[0]: dict(zip(tab.columns, r)) for r in tab.rows}
    runs = data.of_task("adding")
    lstm = runs[runs["variant"] == "lstm"]
    assert rows["lstm"]["parameters"] == fmt(lstm["n_params"].mean())
    assert rows["lstm"]["hidden"] == "16" and rows["lstm"]["optimizer"] == "adam" and rows["lstm"]["lr"] == "0.01"
    assert rows["lstm"]["max steps"] == "40" and rows["lstm"]["time budget (s)"] == "none"
    assert rows["rnn"]["parameters"] != rows["lstm"]["parameters"]


def test_cost_ratio_has_welch_interval_and_noisy_timings_are_flagged(store):
    """The step-time ratio to lstm is that of geometric means with Welch's interval on the
    logs; samples/s and ms/step agree (B / step time); timings spread by more than x1.5
    are flagged."""
    import scipy.stats as sps

    from reports.cost import _cost_table

    runs = load(store).runs
    runs = runs[runs["task_label"] == "adding"].copy()
    gru, lstm = [34.6, 21.4, 149.9], [3.5, 3.4, 3.9]
    runs.loc[runs["variant"] == "rnn", "step_ms"] = gru
    runs.loc[runs["variant"] == "lstm", "step_ms"] = lstm
    runs["samples_per_s"] = 16_000.0 / runs["step_ms"]
    blocks = _cost_table("adding", "cpu", runs)
    (tab,) = [b for b in blocks if isinstance(b, Table)]
    row = dict(zip(tab.frame["model"], tab.frame.to_dict("records")))["rnn"]
    ci = sps.ttest_ind(np.log(gru), np.log(lstm), equal_var=False).confidence_interval()
    ratio = sps.gmean(gru) / sps.gmean(lstm)
    assert row["step time × lstm [95% CI]"] == f"{fmt(ratio, 3)} [{fmt(np.exp(ci.low), 3)}, {fmt(np.exp(ci.high), 3)}]"
    assert row["samples/s [95% CI]"].split(" [")[0] == fmt(16_000.0 / sps.gmean(gru))
    assert row["ms/step [95% CI]"].split(" [")[0] == fmt(sps.gmean(gru))
    text = " ".join(b.text for b in blocks if isinstance(b, Text))
    assert "treat these timings and ratios as rough" in text and "rnn (×" in text and "lstm (×" not in text
    lstm_row = dict(zip(tab.frame["model"], tab.frame.to_dict("records")))["lstm"]
    assert lstm_row["step time × lstm [95% CI]"] == "1 (reference)"


def test_cost_figure_counts_a_seed_stack_once(store, monkeypatch):
    """The figure's points are the table's: a stack's runs are one timing."""
    from reports import cost

    data = load(store)
    rnn = (data.runs["variant"] == "rnn") & (data.runs["task_label"] == "adding")
    data.runs.loc[rnn, "stack_id"] = "s0"
    seen = {}

    def points(frame, colors):
        seen["f"] = frame
        return figures.plt.figure()

    monkeypatch.setattr(cost.figures, "cost_points", points)
    cost.cost_section(data)
    frame = seen["f"]
    assert len(frame[(frame["variant"] == "rnn") & (frame["task_label"] == "adding")]) == 1
    assert len(frame[(frame["variant"] == "lstm") & (frame["task_label"] == "adding")]) == 3


def test_literature_reads_an_older_store_at_the_defaults_it_trained_with():
    """A run stored before rmsprop_alpha, eps and perm_kind existed trained with their
    defaults; it is not said to have 'None'."""
    from reports.data import full_settings

    row = pd.Series({"task": "permuted-mnist", "model": "lstm",
                     "settings": {"train.optimizer": "rmsprop", "model.hidden_size": 100}})
    full = full_settings(row)
    assert full["train.rmsprop_alpha"] == 0.99 and full["train.eps"] == 1e-8
    assert full["task.perm_kind"] == "randperm" and full["model.hidden_size"] == 100
    entry = next(e for e in PUBLISHED if e.task == "permuted-mnist" and e.paper_model == "LSTM"
                 and e.source.startswith("Cooijmans"))
    assert "rmsprop_alpha=0.99 (paper: 0.9)" in differences(entry, full)
    assert not any("None" in d for d in differences(entry, full))


def test_wall_time_curves_leave_out_the_start_up(store):
    """A run whose start-up took 50 s more has the same wall-time curve: its evaluations'
    training times less its warmup_s (those after its start-up)."""
    from reports import dynamics

    data = load(store)
    info = data.tasks["adding"]
    _, before = dynamics._val_curves(data, "adding", info)
    first = data.runs[data.runs["task_label"] == "adding"].index[0]
    run_id, warm_steps = data.runs.at[first, "run_id"], int(data.runs.at[first, "warmup_steps"])
    late = (data.metrics["run_id"] == run_id) & (data.metrics["name"] == "wall_time") & \
        (data.metrics["step"] > warm_steps)
    data.metrics.loc[late, "value"] += 50.0
    data.runs.at[first, "warmup_s"] += 50.0
    _, after = dynamics._val_curves(data, "adding", info)
    pd.testing.assert_frame_equal(before, after)


def _claim_runs(variant, statuses, primary, solved_steps, max_steps=1000):
    return pd.DataFrame([{"variant": variant, "status": st, "primary": pr, "steps": max_steps,
                          "solved": ss is not None, "solved_step": ss, "settings": {"train.max_steps": max_steps}}
                         for st, pr, ss in zip(statuses, primary, solved_steps)])


@pytest.mark.parametrize("mirror", [False, True])
def test_claim_evidence_directions_and_tests_are_scipys(monkeypatch, mirror):
    """Batch norm with no divergence, a tight spread and fast solving against a plain model
    with 7 of 14 diverged, a wide spread and slow solving: every measure favours batch norm
    (mirrored: the plain model), with Fisher's, Brown–Forsythe's (Levene about the median)
    and Mann–Whitney's p; where nobody solves within the horizon there is no speed test."""
    from types import SimpleNamespace

    import scipy.stats as sps

    from reports import claims
    from reports.stats import mann_whitney

    good = _claim_runs("x", ["done"] * 8, [0.100, 0.101, 0.099, 0.1005, 0.0995, 0.1002, 0.0998, 0.1001],
                       [100, 120, 110, 130, 140, 150, 160, 170])
    bad = _claim_runs("y", ["done"] * 7 + ["diverged"] * 7, [0.05, 0.3, 0.12, 0.4, 0.02, 0.25, 0.6] + [np.nan] * 7,
                      [600, 700, 800, None, None, None, None] + [None] * 7)
    bn, plain = (bad, good) if mirror else (good, bad)
    bn, plain = bn.assign(variant="bn"), plain.assign(variant="plain")
    runs = pd.concat([bn, plain], ignore_index=True)
    info = SimpleNamespace(primary="mse", solved=0.01)
    data = SimpleNamespace(of_task=lambda label: runs, tasks={"t": info})
    monkeypatch.setattr(claims, "_profiles", lambda d, label: ({}, {}, {}))
    ev = claims._evidence(data, "t", "bn", "plain")
    sign = -1 if mirror else 1
    (div, spread), (fast,) = ev["stable"], ev["faster"]
    assert [div["favours bn"], spread["favours bn"], fast["favours bn"]] == [sign] * 3
    d_bn, d_plain = int((bn["status"] == "diverged").sum()), int((plain["status"] == "diverged").sum())
    assert div["p"] == pytest.approx(sps.fisher_exact([[d_bn, len(bn) - d_bn], [d_plain, len(plain) - d_plain]]).pvalue)
    xa, xb = (f[f["status"] == "done"]["primary"].to_numpy() for f in (bn, plain))
    assert spread["p"] == pytest.approx(sps.levene(xa, xb, center="median").pvalue)
    horizon = claims._horizon(runs)
    assert fast["p"] == pytest.approx(mann_whitney(claims._steps_to_solve(bn, horizon),
                                                   claims._steps_to_solve(plain, horizon))[1])
    late = runs.assign(solved_step=runs["solved_step"].where(runs["solved_step"].isna(), 5000))
    data.of_task = lambda label: late
    assert claims._evidence(data, "t", "bn", "plain")["faster"] == []


def test_claims_are_holm_corrected(monkeypatch, store):
    """Two tests of one claim with p 0.033 and 0.878: Holm makes the first 0.066, so the
    claim is 'not shown'."""
    from reports import claims
    from reports.stats import holm

    rows = [{"task": "t", "bn model": "bn", "plain model": "p", "measure": m, "bn": "", "plain": "", "test": "x",
             "p": p, "min_p": 0.0, "favours bn": 1} for m, p in (("a", 0.033), ("b", 0.878))]
    monkeypatch.setattr(claims, "bn_pairs", lambda data: [("t", "bn", "p")])
    monkeypatch.setattr(claims, "_evidence", lambda data, *pair: {"stable": [dict(r) for r in rows],
                                                                   "faster": [], "gradients": []})
    sec = claims_section(load(store))
    tables = [b for b in sec.blocks if isinstance(b, Table)]
    assert dict((r[0], r[1]) for r in tables[0].rows)[claims.CLAIMS["stable"]] == "not shown"
    stable = next(t for t in tables[1:] if "stable" in t.caption)
    assert [r[list(stable.columns).index("p (Holm)")] for r in stable.rows] == [fmt_p(p) for p in holm([0.033, 0.878])]


def test_none_finishing_where_exactly_half_did_is_a_regression():
    assert _finished_share(0, 4, 2, 4)[0] == "regressed"


def test_ratio_reference_is_the_lstm_with_the_same_switches():
    variants = ["lstm [hidden_size=16]", "lstm [hidden_size=8]", "rnn [hidden_size=16]", "rnn [hidden_size=8]"]
    assert _reference(variants, "rnn [hidden_size=8]") == "lstm [hidden_size=8]"
    assert _reference(variants, "rnn [hidden_size=16]") == "lstm [hidden_size=16]"


def test_new_and_gone_configurations_are_counted_apart(store, tmp_path):
    base = copy_store(store, tmp_path / "base.sqlite")
    db = sqlite3.connect(base)
    db.execute("DELETE FROM runs WHERE task='copy'")
    db.commit()
    db.close()
    comparison = compare_to_baseline(load(store), load(base))
    assert (comparison.new, comparison.gone) == (2, 0)


def test_runs_that_finish_again_get_their_row(store, tmp_path):
    base = copy_store(store, tmp_path / "base.sqlite")
    _edit_runs(base, "task='adding' AND model='lstm' AND seed=0", status="diverged")
    comparison = compare_to_baseline(load(store), load(base))
    rows = [r for r in comparison.rows if r["metric"].startswith("runs finished")]
    assert [(r["model"], r["now [95% CI]"], r["baseline [95% CI]"]) for r in rows] == [("lstm", "3/3", "2/3")]


def test_memory_ratio_is_model_over_lstm(store):
    runs = load(store).runs
    runs = runs[runs["task_label"] == "adding"].copy()
    runs["peak_mem_mb"] = np.where(runs["variant"] == "rnn", 200.0, 100.0)
    (tab,) = [b for b in _cost_table("adding", "cpu", runs) if isinstance(b, Table)]
    row = dict(zip(tab.frame["model"], tab.frame.to_dict("records")))["rnn"]
    assert row["memory × lstm"] == fmt(2.0, 3)


def test_config_key_leaves_out_the_code_version(store):
    row = load(store).runs.iloc[0]
    other = json.loads(row["spec"])
    other["version"] = "some-other-version"
    assert config_key(pd.Series({"spec": json.dumps(other)})) == config_key(row)


def test_gradient_slope_is_negative_where_gradients_vanish_back_in_time():
    profile = np.array([[1e-5, 1e-4, 1e-3, 1e-2, 1e-1, 1.0]])  # ‖∂L/∂h_t‖, t = 0..5
    assert dynamics.slopes(profile) == pytest.approx([-1.0])


def test_done_runs_carry_their_last_value_and_diverged_ones_end():
    runs = pd.DataFrame({"run_id": ["a", "b", "c"], "status": ["done", "done", "diverged"]})
    rows = [(r, s, "val", "loss", v) for r, steps in (("a", (10, 20, 30)), ("b", (10,)), ("c", (10, 20)))
            for s, v in zip(steps, (3.0, 2.0, 1.0))]
    rows += [(r, s, "train", "wall_time", s / 10) for r, s, *_ in rows]
    metrics = pd.DataFrame(rows, columns=["run_id", "step", "split", "name", "value"])
    metrics["task_label"], metrics["variant"] = "t", "m"
    info = TaskInfo("t", "t", {}, "loss", False)
    steps, _ = dynamics._val_curves(ReportData(runs, metrics, pd.DataFrame(), {"t": info}), "t", info)
    got = {r: g.set_index("step")["value"].to_dict() for r, g in steps.groupby("run_id")}
    assert got == {"a": {10: 3.0, 20: 2.0, 30: 1.0}, "b": {10: 3.0, 20: 3.0, 30: 3.0}, "c": {10: 3.0, 20: 2.0}}


def test_runs_that_recorded_different_chance_levels_give_none(tmp_path):
    from test_report_helpers import real_store

    args = {"min_length": 4, "max_length": 20, "n_train": 40, "n_val": 20, "n_test": 30}
    path = real_store(tmp_path / "l.sqlite", models=("rnn",), seeds="0-1", tasks=(("listops", args),),
                      train={"max_steps": 2})
    _edit_runs(path, "seed=1", summary=lambda s: s.update(chance=0.5))
    (info,) = load(path).tasks.values()
    assert info.chance is None


def test_since_keeps_runs_created_at_that_instant(store, tmp_path):
    import datetime as dt

    path = copy_store(store, tmp_path / "s.sqlite")
    t = dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc).timestamp()
    db = sqlite3.connect(path)
    db.execute("UPDATE runs SET created=?", (t,))
    db.commit()
    db.close()
    assert load(path, since="2026-01-01").runs.shape[0] == 12
