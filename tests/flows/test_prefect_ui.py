"""The Prefect UI as a person sees it: a real server on 127.0.0.1, a pipeline run, its flow-run page in
headless Chromium — one task run per stage, the artifacts (funnel table, report link, dataset card), and a
report link that opens.

Screenshots go to ``test-artifacts/prefect-flow-run.png`` (the flow run's Artifacts tab) and
``test-artifacts/prefect-funnel.png`` (the funnel table). In CI (``$CI`` set, as ``.ci/run`` does) a
missing browser fails the test; elsewhere it skips.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import yaml

from tests.flows.test_browser import _chromium
from tests.flows.test_deployments import _stop

REPO = Path(__file__).resolve().parents[2]
ARTIFACTS = REPO / "test-artifacts"
BIN = Path(sys.executable).parent
DEMO = REPO / "data" / "demo"
STAGES = ["00-ingest", "01-quality", "02-dedup", "03-score", "04-select"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _get(url: str, timeout: float = 5) -> bytes:
    with urllib.request.urlopen(url, timeout=timeout) as r:
        return r.read()


def _wait_http(url: str, proc: subprocess.Popen, log: Path, timeout: float = 120) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            _get(url)
            return
        except OSError:
            if proc.poll() is not None:
                break
            time.sleep(0.5)
    raise AssertionError(f"{url} not up after {timeout} s\n{log.read_text(errors='replace')[-3000:]}")


@pytest.fixture(scope="module")
def chromium() -> str:
    exe = _chromium()
    if exe is None:
        if os.environ.get("CI"):
            pytest.fail("chromium is not installed: the Prefect UI test must run in CI (.ci/run installs it)")
        pytest.skip("chromium not installed (apt-get install -y chromium; .ci/run does)")
    return exe


@pytest.fixture(scope="module")
def ui(tmp_path_factory):
    """A Prefect server with its UI on a free 127.0.0.1 port, and a folder of runs served over http."""
    base = tmp_path_factory.mktemp("prefect-ui")
    port = _free_port()
    api = f"http://127.0.0.1:{port}/api"
    env = {**os.environ, "PREFECT_HOME": str(base / "home"), "PREFECT_API_URL": api, "PREFECT_UI_API_URL": api,
           "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "PREFECT_LOGGING_LEVEL": "WARNING"}
    runs = base / "runs"
    runs.mkdir()
    files_port = _free_port()
    log = base / "server.log"
    procs = []
    try:
        with open(log, "w") as fh:
            procs.append(subprocess.Popen([str(BIN / "prefect"), "server", "start", "--host", "127.0.0.1", "--port",
                                           str(port)], env=env, stdout=fh, stderr=subprocess.STDOUT,
                                          start_new_session=True))
            procs.append(subprocess.Popen([sys.executable, "-m", "http.server", "--bind", "127.0.0.1", "--directory",
                                           str(runs), str(files_port)], stdout=fh, stderr=subprocess.STDOUT,
                                          start_new_session=True))
        _wait_http(f"{api}/health", procs[0], log)
        _wait_http(f"http://127.0.0.1:{files_port}/", procs[1], log)
        yield {"url": f"http://127.0.0.1:{port}", "api": api, "runs": runs,
               "env": {**env, "SFTFLOW_RUNS_URL": f"http://127.0.0.1:{files_port}"}}
    finally:
        for p in procs:
            _stop(p)


def _latest_flow_run(api: str, flow_name: str) -> dict:
    req = urllib.request.Request(f"{api}/flow_runs/filter", method="POST", headers={"content-type": "application/json"},
                                 data=json.dumps({"flows": {"name": {"any_": [flow_name]}}, "sort": "START_TIME_DESC",
                                                  "limit": 1}).encode())
    with urllib.request.urlopen(req, timeout=10) as r:
        runs = json.load(r)
    assert runs, f"no {flow_name} flow run on the server"
    return runs[0]


@pytest.mark.prefect
@pytest.mark.slow
def test_flow_run_page_shows_a_task_per_stage_and_the_artifacts(chromium, ui, tmp_path):
    from tests.flows.cdp import Browser

    recipe = tmp_path / "ui-demo.yaml"
    recipe.write_text(yaml.safe_dump({
        "name": "ui-demo", "sources": [str(DEMO / "instructions_en.jsonl")],
        "stages": [{"quality": {}}, {"dedup": {"threshold": 0.7}}, {"score": {}},
                   {"select": {"budget": 60, "embeddings": "hashing"}}],
        "heldout": {"fraction": 0.1, "max_rows": 6},
        "train": {"model": "tiny-random-llama", "method": "lora", "max_steps": 2},
        "eval": {"suite": "general_probe", "limit": 20},
        "gate": {"on_regressed": "warn", "on_inconclusive": "warn"},
        "export": {"license": "cc-by-sa-3.0"},
    }))
    run_dir = ui["runs"] / "ui-demo-1"
    res = subprocess.run([str(BIN / "sftflow"), "run", "--recipe", str(recipe), "--out", str(run_dir)],
                         env=ui["env"], capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    fr = _latest_flow_run(ui["api"], "pipeline")
    summary = json.loads((run_dir / "curate" / "summary.json").read_text())
    ARTIFACTS.mkdir(exist_ok=True)

    with Browser(chromium, tmp_path / "profile", 1400, 1700) as b:
        b.goto(f"{ui['url']}/runs/flow-run/{fr['id']}")
        b.wait_for("document.body.innerText.includes('Task Runs')")
        # one task run per stage, then the steps
        assert b.click_text("li.p-tab", "Task Runs")
        names = [*STAGES, "split-heldout", "sft", "regression-eval", "export", "gate"]
        b.wait_for(" && ".join(f"document.body.innerText.includes({json.dumps(n)})" for n in names))
        assert "10 Task runs" in b.text()

        assert b.click_text("li.p-tab", "Artifacts")
        b.wait_for("document.body.innerText.includes('ui-demo-curation-funnel')")
        time.sleep(1)  # the cards' descriptions render after their keys
        text = b.text()
        keys = ["ui-demo-curation-summary", "ui-demo-curation-funnel", "ui-demo-report", "ui-demo-dataset-card",
                "ui-demo-sft-summary", "ui-demo-sft-log", "ui-demo-eval-verdict", "ui-demo-eval-tasks",
                "ui-demo-trend"]
        for key in keys:  # each once: a flow run links its report and trend once, not after every step
            assert text.count(key + "\n") == 1, (key, text.count(key + "\n"))
        shot = b.screenshot(ARTIFACTS / "prefect-flow-run.png", full_page=False)
        assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 50_000
        hrefs = b.eval("Object.fromEntries([...document.querySelectorAll('a')].filter(a => a.href.includes("
                       "'/artifacts/artifact/')).map(a => [a.innerText.split('\\n').find(t => t.startsWith('ui-demo-')),"
                       " a.href]))")

        # the funnel table: every stage with the run's counts
        b.goto(hrefs["ui-demo-curation-funnel"])
        b.wait_for("document.body.innerText.includes('rows_out') && document.body.innerText.includes('select')")
        rows = b.eval("[...document.querySelectorAll('tbody tr')].map(tr => [...tr.cells].map(td => td.innerText.trim()))")
        assert [r[:4] for r in rows] == [[st["stage"], str(st["rows_in"]), str(st["rows_added"]), str(st["rows_out"])]
                                         for st in summary["stages"]], rows
        b.screenshot(ARTIFACTS / "prefect-funnel.png", full_page=False)

        # the report link opens the report (served over http; a file:// link would not open from this page)
        b.goto(hrefs["ui-demo-report"])
        b.wait_for("document.body.innerText.includes('HTML report')")
        link = b.eval("[...document.querySelectorAll('a')].map(a => a.href).find(h => h.endsWith('report.html'))")
        assert link == f"{ui['env']['SFTFLOW_RUNS_URL']}/ui-demo-1/report.html"
        assert f"`{(run_dir / 'report.html').resolve().as_uri()}`" not in b.text()  # shown as text, not markup
        b.goto(link)
        b.wait_for("!!document.querySelector('section#funnel')")
        assert "ui-demo" in b.text()

        b.goto(hrefs["ui-demo-dataset-card"])
        b.wait_for("document.body.innerText.includes('dataset card')")
        card_link = b.eval("[...document.querySelectorAll('a')].map(a => a.href).find(h => h.endsWith('README.md'))")
        assert card_link == f"{ui['env']['SFTFLOW_RUNS_URL']}/ui-demo-1/export/README.md"
        assert b"rows_out = " in _get(card_link)
