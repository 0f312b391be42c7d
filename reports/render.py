"""Write sections as one self-contained HTML file and as Markdown with figure files.

``index.html`` embeds every figure as a base64 PNG and its style inline: it opens
from a mail attachment or a CI artifact with no network. ``README.md`` holds the
same blocks in the same order, its figures as PNG files in ``figures/``.
Both come from jinja2 templates in ``reports/templates``.
"""

from __future__ import annotations

import base64
import hashlib
import html
import re
from pathlib import Path
from typing import Sequence

import jinja2

from reports.blocks import Figure, Section, Table
from suite.errors import UserError, make_folder

TEMPLATES = Path(__file__).parent / "templates"
FIGURES = "figures"


SLUG_CHARS = 80  # a figure's file stem (before a "_2" that tells repeats apart); names carry task labels


def _slug(name: str) -> str:
    """``name`` as a file stem: safe characters only, and at most ``SLUG_CHARS`` of them,
    a longer one cut and told apart from others cut alike by a hash of the whole name."""
    slug = re.sub(r"[^A-Za-z0-9_.-]+", "_", name).strip("_") or "figure"
    if len(slug) <= SLUG_CHARS:
        return slug
    return f"{slug[:SLUG_CHARS - 9]}_{hashlib.sha1(name.encode()).hexdigest()[:8]}"


def name_figures(sections: Sequence[Section]) -> None:
    """Give every figure a unique, file-safe name (in place), in document order."""
    seen: dict[str, int] = {}
    for sec in sections:
        for b in sec.blocks:
            if isinstance(b, Figure):
                base = _slug(b.name)
                seen[base] = seen.get(base, 0) + 1
                b.name = base if seen[base] == 1 else f"{base}_{seen[base]}"


def _md(text: str) -> str:
    """``text`` with HTML (``<``, ``&``), emphasis (``*``) and code spans (backticks)
    escaped, so a model or task name holding them shows as written, as in the HTML.
    (Intraword ``_`` is literal in GitHub's Markdown; the report's text starts no line
    with a heading's ``#`` or a list's number.)"""
    return re.sub(r"([\\`*])", r"\\\1", html.escape(str(text), quote=False))


def _md_cell(text: str) -> str:
    return _md(text).replace("|", "\\|").replace("\n", " ")


def _env() -> jinja2.Environment:
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(str(TEMPLATES)), autoescape=jinja2.select_autoescape(
        enabled_extensions=("html", "html.j2")), keep_trailing_newline=True, trim_blocks=True, lstrip_blocks=True,
        undefined=jinja2.StrictUndefined)
    env.filters["b64"] = lambda data: base64.b64encode(data).decode("ascii")
    env.filters["md_cell"] = _md_cell
    env.filters["md"] = _md
    env.tests["table"] = lambda b: isinstance(b, Table)
    env.tests["figure"] = lambda b: isinstance(b, Figure)
    return env


GENERATOR = '<meta name="generator" content="rnnbench report">'  # in index.html: an earlier report's folder


def check_out(out: str | Path) -> Path:
    """``out`` as a folder a report may write into (its README.md and index.html replaced,
    the PNGs of its figures/ folder deleted): new, empty, or holding an earlier report
    (``GENERATOR`` in its index.html, or a <title> of one written before that tag);
    else one line saying why not, before any work."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise UserError(f"report folder {out} is a file; pass --out with a folder")
    if out.is_dir() and any(p.name != FIGURES or not p.is_dir() or any(p.iterdir()) for p in out.iterdir()):
        html = out / "index.html"
        head = html.read_text(encoding="utf-8", errors="replace")[:4000] if html.is_file() else ""
        if GENERATOR not in head and "<title>rnnbench report</title>" not in head:
            raise UserError(f"report folder {out} holds other files and no earlier report (writing would replace "
                            "its README.md and figures/*.png); pass --out with a new or empty folder")
    make_folder(out / FIGURES, f"report folder {out}", "pass --out with another folder")
    return out


def write(sections: Sequence[Section], out: str | Path, title: str, subtitle: str) -> tuple[Path, Path]:
    """Render ``sections`` into ``out/index.html`` and ``out/README.md`` (+ ``out/figures``),
    ``out`` a folder that ``check_out`` passed and made (``build_report`` does, first)."""
    out = Path(out)
    figdir = out / FIGURES
    for old in figdir.glob("*.png"):  # figures of an earlier report of another store
        old.unlink()
    name_figures(sections)
    env = _env()
    ctx = dict(sections=sections, title=title, subtitle=subtitle, figdir=FIGURES)
    for sec in sections:  # first, so that the text never links to figures not written
        for b in sec.blocks:
            if isinstance(b, Figure):
                (figdir / f"{b.name}.png").write_bytes(b.png)
    page = out / "index.html"
    page.write_text(env.get_template("report.html.j2").render(**ctx), encoding="utf-8")
    md = out / "README.md"
    md.write_text(env.get_template("report.md.j2").render(**ctx), encoding="utf-8")
    return page, md
