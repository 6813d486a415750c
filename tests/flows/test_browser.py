"""The report in a real browser: headless Chromium draws every chart offline, with no script error.

Saves ``test-artifacts/report.png`` (a full-page screenshot) and ``test-artifacts/report.dom.html``.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from flows.report import SECTIONS, build_report
from tests.flows.test_report import add_training_and_eval, curated_run

REPO = Path(__file__).resolve().parents[2]
ARTIFACTS = REPO / "test-artifacts"


def _chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable"):
        path = shutil.which(name)
        if path:
            return path
    return "/usr/bin/chromium" if os.path.exists("/usr/bin/chromium") else None


def _run_chromium(exe: str, profile: Path, *args: str) -> subprocess.CompletedProcess:
    cmd = [
        exe, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-default-apps",
        f"--user-data-dir={profile}",
        # any host name fails to resolve: the page must draw without the network
        "--host-resolver-rules=MAP * ~NOTFOUND",
        "--enable-logging=stderr", "--v=0", "--virtual-time-budget=20000", *args,
    ]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=180)


@pytest.mark.skipif(_chromium() is None, reason="chromium not installed (apt-get install -y chromium; .ci/run does)")
def test_report_draws_every_chart_in_headless_chromium(tmp_path, tmp_path_factory, monkeypatch):
    monkeypatch.setenv("SFTFLOW_HISTORY_DIR", str(tmp_path / "history"))
    run = tmp_path / "demo-20260101-000000"
    shutil.copytree(curated_run(tmp_path_factory), run)
    add_training_and_eval(run)
    report = build_report(run)
    page = report.read_text(encoding="utf-8")
    n_figures = page.count('class="plotly-graph-div"')
    exe = _chromium()

    dom = _run_chromium(exe, tmp_path / "profile-dom", "--dump-dom", report.as_uri())
    assert dom.returncode == 0, dom.stderr[-2000:]
    html = dom.stdout
    ARTIFACTS.mkdir(exist_ok=True)
    (ARTIFACTS / "report.dom.html").write_text(html, encoding="utf-8")
    for sid, _ in SECTIONS:
        if sid in ("replay", "arms", "curation", "ifd"):  # only experiment runs / runs that scored IFD have these
            continue
        assert f'<section id="{sid}">' in html, sid
    # plotly turns each figure div into a drawn plot: a js-plotly-plot div holding <svg class="main-svg">
    drawn = len(re.findall(r'class="[^"]*\bjs-plotly-plot\b', html))
    assert n_figures >= 10 and drawn == n_figures, (drawn, n_figures)
    assert html.count('class="main-svg"') >= n_figures
    assert re.search(r'<g class="trace bars"|class="bars"', html)  # bars were drawn, not just axes
    console = "\n".join(line for line in dom.stderr.splitlines() if "CONSOLE" in line)
    assert "Uncaught" not in console and "Refused to" not in console, console
    assert "Failed to load resource" not in console and "ERR_NAME_NOT_RESOLVED" not in console, console

    shot = ARTIFACTS / "report.png"
    shot.unlink(missing_ok=True)
    res = _run_chromium(exe, tmp_path / "profile-shot", "--hide-scrollbars", "--window-size=1300,14000",
                        f"--screenshot={shot}", report.as_uri())
    assert res.returncode == 0 and shot.exists(), res.stderr[-2000:]
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 50_000
