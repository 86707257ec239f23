"""`workbench report --smoke` end to end, and the HTML rendered in real headless Chromium."""

from __future__ import annotations

import re
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

from workbench.report import ReportError, render_report

ROOT = Path(__file__).resolve().parent.parent
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
# Offline, as root, no first-run noise (see FIELD-NOTES).
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-quic",
         "--virtual-time-budget=20000"]


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    out = tmp_path_factory.mktemp("reports")
    html = render_report(ROOT / "scenarios" / "chat.yaml", out, smoke=True, progress=False)
    return html


def test_report_is_self_contained(report):
    text = report.read_text()
    # plotly.js is embedded (its source is megabytes), not loaded from a CDN
    assert len(text) > 3_000_000 and "Plotly.newPlot" in text
    assert not re.search(r'<script[^>]+src="https?://[^"]*plot\.ly', text)
    assert "<h1" in text and "Design review" in text
    assert "from workbench" not in text  # code cells are hidden
    assert (report.parent / "chat.ipynb").exists()  # the executed notebook is kept


@pytest.mark.skipif(CHROMIUM is None, reason="chromium not installed (make test installs "
                                            "Debian's chromium when run as root)")
def test_report_figures_render_in_headless_chromium(report):
    with tempfile.TemporaryDirectory() as profile:
        dom = subprocess.run([CHROMIUM, *FLAGS, f"--user-data-dir={profile}", "--dump-dom",
                              report.as_uri()], capture_output=True, text=True, timeout=180,
                             check=True).stdout
    figures = dom.count('class="main-svg"')
    traces = len(re.findall(r'class="(?:scatter|bars?|trace)[^"]*"', dom))
    assert figures >= 8, f"only {figures} plotly SVG layers rendered"
    assert traces > 0 and "<path" in dom, "figures rendered without traces"
    shots = ROOT / "reports"
    with tempfile.TemporaryDirectory() as profile:
        subprocess.run([CHROMIUM, *FLAGS, f"--user-data-dir={profile}", "--window-size=1280,900",
                        f"--screenshot={shots / 'chat-first-screen.png'}", report.as_uri()],
                       capture_output=True, timeout=180, check=True)
    assert (shots / "chat-first-screen.png").stat().st_size > 10_000


def test_failing_cell_is_named(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: bad\narrival: {kind: poisson, rate: -1}\nnum_requests: 2\n"
                   "prompt_tokens: {dist: fixed, value: 4}\n"
                   "output_tokens: {dist: fixed, value: 2}\n")
    with pytest.raises(ReportError, match=r"cell \d+ of 00-design-review.ipynb failed for "
                                          r"bad.yaml: ScenarioError: .*arrival.rate"):
        render_report(bad, tmp_path / "out", smoke=True, progress=False)
    assert (tmp_path / "out" / "bad.ipynb").exists()
