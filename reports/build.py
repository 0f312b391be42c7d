"""``build_report``: store in, report out (``rnnbench report``).

A pure function of the store (and an optional baseline store): nothing in the
output depends on when or where it is rendered — no "generated at" time, fixed
random seeds, PNGs without timestamps — so the same store gives the same
files byte for byte, and a report can be diffed against last night's.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any, NamedTuple

from reports.blocks import Section, Text, note, table
from reports.claims import claims_section, literature_section
from reports.cost import Comparison, baseline_section, compare_to_baseline, cost_section, environment_section
from reports.data import ReportData, load
from reports.dynamics import gradient_section, learning_curves_section
from reports.quality import ablation_section, significance_section, summary_section

DEFAULT_OUT = "results/report"


def overview(data: ReportData, store: str) -> list[Any]:
    """What the report covers and what is missing, ahead of the leaderboards."""
    if data.empty:
        return [note(f"The store {store} has no finished runs"
                     + (f" ({data.unfinished} pending or running)" if data.unfinished else "")
                     + " matching the filters; every section below is empty. Run e.g. "
                       "'rnnbench run --profile smoke' first.")] + [note(n) for n in data.notes]
    counts = Counter(data.runs["status"])
    out: list[Any] = [Text(f"{len(data.runs)} finished runs from {store}: " + ", ".join(
        f"{counts.get(s, 0)} {s}" for s in ("done", "diverged", "failed"))
        + f", over {len(data.tasks)} task setting(s) and {data.runs['variant'].nunique()} model(s).")]
    out += [note(n) for n in data.notes]
    if data.unfinished:
        out.append(note(f"{data.unfinished} runs are still pending or running and are left out."))
    failed = data.runs[data.runs["status"] == "failed"]
    if not failed.empty:
        reasons = Counter(zip(failed["task_label"], failed["variant"], failed["reason"].fillna("no reason recorded")))
        out.append(Text(f"{len(failed)} run(s) failed; they count in the 'failed' columns and nowhere else.", "alert"))
        out.append(table([{"task": t, "model": v, "reason": r, "runs": n} for (t, v, r), n in sorted(reasons.items())],
                         "Failed runs by reason."))
    done = data.done()
    seeds = done.groupby(["task_label", "variant"]).size() if not done.empty else None
    if seeds is not None and (seeds < 2).any():
        cells = [f"{v} on {t}" for (t, v), n in seeds.items() if n < 2]
        out.append(note(f"Only one finished seed for {', '.join(cells)}: no confidence interval or test is "
                        "possible there; run more seeds (--seeds 0-4)."))
    missing = [(t, v) for t in data.tasks for v in data.variants(t) if seeds is None or (t, v) not in seeds.index]
    if missing:
        out.append(note("No run finished successfully for " + ", ".join(f"{v} on {t}" for t, v in missing) + "."))
    return out


def sections(data: ReportData, store: str, baseline: ReportData | None = None,
             baseline_path: str | None = None, comparison: Comparison | None = None) -> list[Section]:
    summary = summary_section(data)
    summary.blocks[:0] = overview(data, store)
    out = [summary]
    if baseline is not None:
        comparison = comparison or compare_to_baseline(data, baseline)
        out.append(baseline_section(data, baseline, baseline_path or "baseline", comparison))
    out += [significance_section(data), learning_curves_section(data), gradient_section(data),
            ablation_section(data), cost_section(data), literature_section(data), claims_section(data),
            environment_section(data)]
    return out


class Rendered(NamedTuple):
    html: Path
    markdown: Path
    regressions: list[str]  # against the baseline, in words (empty without one)


def build_report(store: str | Path, out: str | Path = DEFAULT_OUT, *, tasks: list[str] | None = None,
                 models: list[str] | None = None, since: str | None = None,
                 baseline: str | Path | None = None) -> Rendered:
    """Render the report of ``store`` into ``out``; returns the HTML and Markdown paths
    and the regressions against ``baseline``.

    ``tasks``/``models`` are names or wildcard patterns; ``since`` a date
    (YYYY-MM-DD, UTC); ``baseline`` another store whose runs of the same
    configurations are compared (regressions beyond the CI are flagged).
    """
    from reports import render

    render.check_out(out)  # before any work: a folder it may not write into is said at once
    data = load(store, tasks=tasks, models=models, since=since)
    base = load(baseline, tasks=tasks, models=models) if baseline is not None else None
    filters = [f"tasks {' '.join(tasks)}" if tasks else "", f"models {' '.join(models)}" if models else "",
               f"runs created since {since}" if since else ""]
    subtitle = f"Store: {store}" + "".join(f"; {f}" for f in filters if f) + "."
    comparison = compare_to_baseline(data, base) if base is not None else Comparison()
    html, md = render.write(sections(data, str(store), base, str(baseline) if baseline else None, comparison),
                            out, "rnnbench report", subtitle)
    return Rendered(html, md, comparison.regressions)
