"""The HTML report in a real browser: headless Chromium (Debian's ``chromium``) opens
``index.html`` from disk, with no network, and must show every figure with no
console error. Run with ``pytest -m browser``; ``.ci/run`` installs chromium."""

import os
import re
import shutil
from pathlib import Path

import pytest

from reports.build import build_report
from test_report_helpers import CHROMIUM, Browser, real_store

pytestmark = pytest.mark.browser


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    if not (Path(CHROMIUM).exists() or shutil.which(CHROMIUM)):
        pytest.skip(f"SKIPPED LOUDLY: no Chromium at {CHROMIUM}; install Debian's chromium "
                    "(apt-get install -y chromium) or set CHROMIUM=/path/to/chromium")
    b = Browser(tmp_path_factory.mktemp("chromium-profile"))
    yield b
    b.close()


@pytest.fixture(scope="module")
def report(tmp_path_factory) -> Path:
    store = real_store(tmp_path_factory.mktemp("store") / "rnnbench.sqlite")
    out = tmp_path_factory.mktemp("report")
    build_report(store, out)
    return out


def _artifacts(tmp_path: Path) -> Path:
    """Where screenshots go: $RNNBENCH_ARTIFACTS (CI keeps it) or the test's tmp folder."""
    folder = Path(os.environ.get("RNNBENCH_ARTIFACTS", tmp_path))
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def test_report_opens_with_every_figure_loaded_and_no_console_errors(browser, report, tmp_path):
    browser.events.clear()
    browser.open((report / "index.html").resolve().as_uri())
    images = browser.evaluate("Array.from(document.images).map(i => ({done: i.complete, w: i.naturalWidth, "
                              "h: i.naturalHeight, alt: i.alt}))")
    figures = re.findall(r"!\[[^\]]*\]\(figures/", (report / "README.md").read_text())
    assert len(images) == len(figures) >= 8
    broken = [i["alt"] for i in images if not (i["done"] and i["w"] > 0 and i["h"] > 0)]
    assert not broken, f"figures that did not load: {broken}"
    assert browser.evaluate("document.querySelectorAll('section h2').length") == 9
    assert browser.problems() == []
    assert browser.console_log() == []
    shot = _artifacts(tmp_path) / "report.png"
    browser.screenshot(shot)
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 50_000
    print(f"screenshot: {shot}")


def test_the_checks_catch_a_broken_page(browser, tmp_path):
    """Guard against a vacuous test: a missing image, a console error and a network
    request must all be reported."""
    page = tmp_path / "broken.html"
    page.write_text('<html><body><img src="missing.png" alt="gone">'
                    '<img src="http://example.invalid/x.png" alt="remote">'
                    '<script>console.error("boom")</script></body></html>')
    browser.events.clear()
    browser.open(page.as_uri())
    widths = browser.evaluate("Array.from(document.images).map(i => i.naturalWidth)")
    assert widths == [0, 0]
    problems = "\n".join(browser.problems())
    assert "boom" in problems and "example.invalid" in problems
    assert any("boom" in line for line in browser.console_log())
