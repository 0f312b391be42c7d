"""The report's building blocks and number formatting.

A report is a list of :class:`Section`, each a list of blocks: :class:`Text`
(a sentence or a note), :class:`Table` (cells already formatted as strings) and
:class:`Figure` (PNG bytes). Sections are built from the store without knowing
the output format; ``reports.render`` writes the same blocks as one
self-contained HTML file and as Markdown, so the two outputs cannot drift apart.
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass, field
from typing import Any, Sequence

import matplotlib

matplotlib.use("Agg")  # files only, no display; must precede pyplot imports
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402

from reports.stats import Summary  # noqa: E402


@dataclass
class Text:
    """A paragraph. ``kind``: "text" (a finding), "note" (missing data, caveats) or "alert"."""

    text: str
    kind: str = "text"


@dataclass
class Table:
    """A table of formatted strings with a caption that says what it shows."""

    frame: pd.DataFrame
    caption: str = ""

    @property
    def columns(self) -> list[str]:
        return [str(c) for c in self.frame.columns]

    @property
    def rows(self) -> list[list[str]]:
        return [[str(v) for v in row] for row in self.frame.itertuples(index=False)]


@dataclass
class Figure:
    """A rendered figure: ``name`` is its file stem (unique in the report), ``png`` its bytes."""

    name: str
    png: bytes
    caption: str
    alt: str = ""


@dataclass
class Section:
    key: str
    title: str
    blocks: list[Any] = field(default_factory=list)

    def add(self, *blocks: Any) -> "Section":
        self.blocks.extend(b for b in blocks if b is not None)
        return self


def note(text: str) -> Text:
    return Text(text, "note")


def figure(fig: matplotlib.figure.Figure, name: str, caption: str, alt: str = "") -> Figure:
    """Render ``fig`` to PNG bytes and close it.

    The PNG is byte-for-byte reproducible: no creation time, no software tag,
    fixed DPI, so the same store gives the same report.
    """
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, metadata={"Software": None})
    plt.close(fig)
    return Figure(name, buf.getvalue(), caption, alt or caption)


def table(rows: Sequence[dict[str, Any]], caption: str = "", columns: Sequence[str] | None = None) -> Table:
    frame = pd.DataFrame(list(rows), columns=list(columns) if columns else None)
    return Table(frame.fillna("–").astype(str), caption)


# -- number formatting -------------------------------------------------------


def isnum(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def fmt(x: Any, digits: int = 4) -> str:
    """4 significant digits; scientific for very small or large values; '–' for missing."""
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "–"
    if isinstance(x, bool):
        return "yes" if x else "no"
    if not isinstance(x, (int, float)):
        return str(x)
    if isinstance(x, int) or (float(x).is_integer() and abs(x) < 1e6):
        return f"{int(x)}" if abs(x) >= 1 or x == 0 else f"{x:.{digits}g}"
    if x != 0 and (abs(x) < 1e-3 or abs(x) >= 1e5):
        return f"{x:.{digits - 1}e}"
    return f"{x:.{digits}g}"


def fmt_ci(s: Summary, one: str = "run", within: tuple[float | None, float | None] = (None, None)) -> str:
    """'mean [low, high]'; a single run (or ``one`` other thing, e.g. a timing) has no interval.
    ``within``: the quantity's range (``bounds``), where the t interval is cut: a
    symmetric interval of few seeds reaches past it (an accuracy's to 1.007)."""
    if s.n == 0:
        return "–"
    if s.n == 1 or math.isnan(s.ci_low):
        return f"{fmt(s.mean)} (one {one}, no CI)"
    lo, hi = within
    low = s.ci_low if lo is None else max(s.ci_low, lo)
    high = s.ci_high if hi is None else min(s.ci_high, hi)
    return f"{fmt(s.mean)} [{fmt(low)}, {fmt(high)}]"


POSITIVE: tuple[float | None, float | None] = (0.0, None)


def bounds(metric: str) -> tuple[float | None, float | None]:
    """The range of a metric the tasks report: accuracies in [0, 1], losses, MSE and bits
    per character (and their ratios to a baseline) at least 0."""
    return (0.0, 1.0) if metric.split("_")[-1] == "acc" else POSITIVE


ALPHA = 0.05  # the reports' significance level


def fmt_p(p: float) -> str:
    """A p-value to three decimals, or more where three would round it across ALPHA
    (0.0496 is "0.0496", not "0.050" beside a verdict of significant)."""
    if p is None or math.isnan(p):
        return "–"
    if p < 1e-3:
        return "<0.001"
    for digits in range(3, 8):
        text = f"{p:.{digits}f}"
        if (float(text) < ALPHA) == (p < ALPHA):
            break
    return text


def fmt_peq(p: float) -> str:
    """'p = 0.032' or 'p < 0.001', for sentences."""
    text = fmt_p(p)
    return f"p {text[0]} {text[1:]}" if text.startswith("<") else f"p = {text}"
