"""The HTML report: every section from a real curation run, escaping, offline, absent parts, trend."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from curation.io import write_json
from curation.pipeline import curate
from flows.report import SECTION_FAILED, SECTIONS, build_report, history_path, read_history, record_history
from tests.evals.factories import make_verdict

REPO = Path(__file__).resolve().parents[2]
DEMO = REPO / "data" / "demo"
EVIL = '<img src=x onerror="alert(1)">'


def curated_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A run folder curated by the real stages on the demo data, built once per test session."""
    base = tmp_path_factory.getbasetemp() / "report-run"
    run = base / "demo-20260101-000000"
    if not (run / "curate" / "summary.json").exists():
        stages = [("quality", {}), ("dedup", {"threshold": 0.7}), ("score", {}),
                  ("select", {"budget": 150, "embeddings": "hashing"}),
                  ("mix", {"general": [str(DEMO / "general.jsonl")], "ratio": 0.15, "seed": 0})]
        summary = curate([str(DEMO / "instructions_en.jsonl"), str(DEMO / "instructions_zh.json")], stages,
                         run / "curate")
        write_json(run / "run.json", {"recipe": {"name": "demo", "stages": [{n: c} for n, c in stages],
                                                 "train": {"model": "tiny-random-llama", "method": "lora"}},
                                      "curate": summary})
    return run


def add_training_and_eval(run: Path) -> dict:
    """train/ and eval/ files in the shapes training.sft and evals.run write (numbers made up here)."""
    log = [{"step": s, "loss": 2.5 / s ** 0.3, "lr": 2e-4 * (1 - s / 12), "grad_norm": 1.0 + 0.1 * s,
            "trained_tokens": 300, "tokens_per_s": 900.0 + s, "loss_scale": None, "skipped": False, "epoch": 0}
           for s in range(1, 13)]
    (run / "train").mkdir(parents=True, exist_ok=True)
    (run / "train" / "train_log.jsonl").write_text("".join(json.dumps(r) + "\n" for r in log) + '{"step": 13, "lo')
    write_json(run / "train" / "summary.json", {
        "model": "tiny-random-llama", "method": "lora", "precision": "fp32", "steps": 12,
        "first_loss": log[0]["loss"], "final_loss": log[-1]["loss"], "tokens_per_s": 905.5,
        "trainable_params": 12345, "total_params": 987654})
    verdict = make_verdict({"arc_easy": -0.06, EVIL: 0.02})
    verdict.reason = "arc_easy dropped"
    verdict.margin = 0.02
    verdict.write(run / "eval" / "verdict.json")
    return {"log": log, "verdict": verdict}


def section(html: str, sid: str) -> str:
    m = re.search(rf'<section id="{sid}">(.*?)</section>', html, re.S)
    assert m, f"section {sid} missing"
    return m.group(1)


@pytest.fixture()
def full_run(tmp_path_factory, tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("SFTFLOW_HISTORY_DIR", str(tmp_path / "history"))
    import shutil

    run = tmp_path / "demo-20260101-000000"
    shutil.copytree(curated_run(tmp_path_factory), run)
    add_training_and_eval(run)
    return run


def test_every_section_shows_the_runs_numbers(full_run):
    html = build_report(full_run).read_text(encoding="utf-8")
    summary = json.loads((full_run / "curate" / "summary.json").read_text())
    assert SECTION_FAILED not in html
    for sid, _ in SECTIONS:
        if sid in ("replay", "arms", "curation", "ifd"):  # only experiment runs / runs that scored IFD
            assert f'id="{sid}"' not in html
            continue
        assert "not run" not in section(html, sid), sid
    funnel = section(html, "funnel")
    for st in summary["stages"]:
        assert f">{st['rows_out']:,}<" in funnel
        for reason in st["dropped_by_reason"]:
            assert reason in funnel
    # dropped examples come from the ledger, with the row's text
    ledger = pq.read_table(full_run / "curate" / "ledger.parquet").to_pylist()
    drops = section(html, "drops")
    first_dup = next(r for r in ledger if r["reason"] == "exact_duplicate")
    assert first_dup["id"] in drops and f"{len(ledger):,} dropped rows" in drops
    # duplicate clusters with their texts, diversity before/after, mixture, training, eval with CIs
    dedup_extra = json.loads((full_run / "curate" / "02_dedup" / "stats.json").read_text())["extra"]
    cluster_id = dedup_extra["largest_clusters"][0]["members"][0]["id"]
    assert cluster_id in section(html, "dedup")
    div = json.loads((full_run / "curate" / "04_select" / "stats.json").read_text())["extra"]["diversity"]
    assert str(div["after"]["distinct_2"]) in section(html, "diversity")
    assert "general (replay)" in section(html, "mix")
    assert "fig-" in section(html, "training") and "905.5" in section(html, "training")
    ev = section(html, "eval")
    assert "REGRESSED" in ev and "[-0.08, -0.04]" in ev and "same_opening_share" in ev
    assert "p Holm" in ev and "suite (2 tasks, equal weights)" in ev
    assert html.count('class="plotly-graph-div"') >= 10


def test_report_is_self_contained_and_escapes_user_text(full_run):
    html = build_report(full_run).read_text(encoding="utf-8")
    # one inline copy of plotly.js, no external script, stylesheet or font
    assert html.count("plotly.js v") >= 1 and len(re.findall(r"<script[^>]*\bsrc=", html)) == 0
    assert not re.search(r"<link\b", html) and "@import" not in html
    assert "default-src 'none'" in html
    # the demo data has a dropped '<script>alert(1)</script>' row; the verdict a hostile task name
    assert "<script>alert(1)" not in html and "&lt;script&gt;alert(1)" in html
    assert EVIL not in html and "&lt;img src=x onerror=&quot;alert(1)&quot;&gt;" in html


def test_absent_parts_say_not_run(tmp_path, tmp_path_factory, monkeypatch):
    monkeypatch.setenv("SFTFLOW_HISTORY_DIR", str(tmp_path / "history"))
    empty = tmp_path / "empty"
    empty.mkdir()
    html = build_report(empty).read_text(encoding="utf-8")
    assert SECTION_FAILED not in html
    for sid in ("funnel", "dedup", "mix", "training", "eval", "trend"):
        assert "not run" in section(html, sid)
    # a curation-only run with an unexpected stage figure and a crashed stage folder still renders
    import shutil

    run = tmp_path / "curation-only"
    shutil.copytree(curated_run(tmp_path_factory), run)
    stats_path = run / "curate" / "03_score" / "stats.json"
    stats = json.loads(stats_path.read_text())
    stats["extra"] = {"complexity_histogram": "oops", "task_types": None, "new_figure": [1, "a", {"b": None}]}
    stats_path.write_text(json.dumps(stats))
    (run / "curate" / "06_extra").mkdir()
    html = build_report(run).read_text(encoding="utf-8")
    assert "not run" in section(html, "training") and "not run" in section(html, "eval")
    assert "new_figure" in section(html, "stage-details")
    assert "not run" not in section(html, "funnel") and SECTION_FAILED not in html


def test_a_section_that_fails_is_reported_in_place(tmp_path, tmp_path_factory, monkeypatch):
    import shutil

    from flows import report

    monkeypatch.setenv("SFTFLOW_HISTORY_DIR", str(tmp_path / "history"))
    run = tmp_path / "run"
    shutil.copytree(curated_run(tmp_path_factory), run)

    def broken(*_):
        raise KeyError("<b>bad</b>")

    monkeypatch.setattr(report, "_dedup", broken)
    html = build_report(run).read_text(encoding="utf-8")
    assert SECTION_FAILED in section(html, "dedup") and "&lt;b&gt;bad&lt;/b&gt;" in section(html, "dedup")
    assert SECTION_FAILED not in section(html, "funnel") and "plotly-graph-div" in section(html, "mix")


def test_history_records_each_run_once_and_draws_the_trend(tmp_path, tmp_path_factory, monkeypatch):
    monkeypatch.setenv("SFTFLOW_HISTORY_DIR", str(tmp_path / "history"))
    import shutil

    src = curated_run(tmp_path_factory)
    runs = [tmp_path / f"demo-2026010{i}-000000" for i in (1, 2)]
    for r in runs:
        shutil.copytree(src, r)
    build_report(runs[0])
    build_report(runs[0])  # a rebuild with nothing new adds no line
    hp = history_path(runs[0], "demo")
    assert len(hp.read_text().splitlines()) == 1
    add_training_and_eval(runs[0])
    build_report(runs[0])  # new figures (loss, verdict): a newer line supersedes the old one
    html = build_report(runs[1]).read_text(encoding="utf-8")
    hist = read_history(hp)
    assert [Path(h["run_dir"]).name for h in hist] == [r.name for r in runs]
    assert hist[0]["verdict"] == "REGRESSED" and hist[1]["verdict"] is None
    summary = json.loads((src / "curate" / "summary.json").read_text())
    assert all(h["rows_in"] == summary["rows_in"] and h["rows_out"] == summary["rows_out"] for h in hist)
    dedup = json.loads((src / "curate" / "02_dedup" / "stats.json").read_text())
    assert hist[0]["duplicate_rate"] == round(dedup["rows_dropped"] / dedup["rows_in"], 4)
    assert 0 < hist[0]["task_type_entropy"] <= 5 and 0 <= hist[0]["mean_quality"] <= 1
    trend = section(html, "trend")
    assert "2 run(s)" in trend and "fig-" in trend


def test_history_appends_from_many_writers_stay_whole_lines(tmp_path, tmp_path_factory):
    run = {"run_dir": tmp_path, "name": "x", "stages": [], "summary": None, "output": {"scores": {}, "counts": {}},
           "train": None, "verdict": None}
    hp = tmp_path / "h.jsonl"
    hp.write_text('{"run_dir": "/killed-mid-li')  # a writer killed mid-line

    def writer(i: int) -> None:
        for j in range(20):
            record_history({**run, "run_dir": tmp_path / f"r{i}-{j}"}, hp)

    threads = [threading.Thread(target=writer, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    lines = hp.read_text().splitlines()[1:]
    assert len(lines) == 80 and all(json.loads(line)["run_dir"] for line in lines)
    assert len(read_history(hp)) == 80


def test_cli_report_prints_the_run_and_serves_it_on_localhost(tmp_path, tmp_path_factory):
    import shutil

    run = tmp_path / "demo-20260101-000000"
    shutil.copytree(curated_run(tmp_path_factory), run)
    add_training_and_eval(run)
    env = {**os.environ, "SFTFLOW_HISTORY_DIR": str(tmp_path / "history"), "COLUMNS": "160"}
    proc = subprocess.Popen([sys.executable, "-c", "from flows.cli import main; main()", "report", str(run), "--serve", "--port", "0"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, cwd=REPO)
    try:
        out, url = [], None
        deadline = time.time() + 120
        while time.time() < deadline and url is None:
            line = proc.stdout.readline()
            if not line:
                break
            out.append(line)
            m = re.search(r"(http://127\.0\.0\.1:\d+/report\.html)", line)
            url = m.group(1) if m else None
        text = "".join(out)
        assert url, text
        assert "Curation funnel" in text and "REGRESSED" in text and "SFT: lora 12 steps" in text
        body = urllib.request.urlopen(url, timeout=30).read().decode("utf-8")
        assert body == (run / "report.html").read_text(encoding="utf-8")
    finally:
        proc.kill()
        proc.wait(timeout=30)


@pytest.mark.parametrize("garbage", [None, "oops", [1, "a", None], {"x": {"y": None}}, 7])
def test_unexpected_figures_never_break_the_report(tmp_path, tmp_path_factory, monkeypatch, garbage):
    import shutil

    monkeypatch.setenv("SFTFLOW_HISTORY_DIR", str(tmp_path / "history"))
    run = tmp_path / "run"
    shutil.copytree(curated_run(tmp_path_factory), run)
    add_training_and_eval(run)
    for stats_path in (run / "curate").glob("*/stats.json"):
        stats = json.loads(stats_path.read_text())
        stats["extra"] = {k: garbage for k in stats.get("extra") or {}}
        stats_path.write_text(json.dumps(stats))
    verdict_path = run / "eval" / "verdict.json"
    verdict = json.loads(verdict_path.read_text())
    verdict.update(tasks={"arc_easy": {"base": garbage, "delta": garbage}}, rigidity=garbage, target=garbage)
    verdict_path.write_text(json.dumps(verdict))
    (run / "train" / "summary.json").write_text(json.dumps({"final_loss": garbage, "steps": garbage}))
    html = build_report(run).read_text(encoding="utf-8")
    funnel = section(html, "funnel")
    summary = json.loads((run / "curate" / "summary.json").read_text())
    assert f">{summary['rows_out']:,}<" in funnel
    # a verdict.json that is not a valid verdict is named in one line, the rest of the report still renders
    assert "not a valid verdict" in section(html, "eval")
    assert SECTION_FAILED not in html


def test_ifd_section_before_after_selection_with_examples(tmp_path, monkeypatch):
    """A run that scored IFD (tiny random model: its IFDs sit around 1, so some rows are misaligned)."""
    import flows  # noqa: F401  (registers the ifd scorer)

    monkeypatch.setenv("SFTFLOW_HISTORY_DIR", str(tmp_path / "history"))
    monkeypatch.setenv("SFTFLOW_CACHE", str(tmp_path / "cache"))
    run = tmp_path / "ifd-20260101-000000"
    stages = [("score", {"ifd": {"model": "tiny-random-llama", "max_length": 256}}),
              ("select", {"budget": 20, "rank_by": "ifd", "embeddings": "hashing"})]
    summary = curate([str(DEMO / "instructions_en.jsonl")], stages, run / "curate")
    write_json(run / "run.json", {"recipe": {"name": "ifd", "stages": [{n: c} for n, c in stages]},
                                  "curate": summary})
    html = build_report(run).read_text(encoding="utf-8")
    sec = section(html, "ifd")
    figures = json.loads((run / "curate" / "02_select" / "stats.json").read_text())["extra"]
    f = figures["ifd"]
    assert f["after"]["rows"] == 20 and figures["misaligned"] > 0
    assert "before selection" in sec and "after selection" in sec and "fig-" in sec
    assert f"{figures['misaligned']:,}" in sec
    for kind in ("lowest", "highest_kept", "misaligned"):
        assert f["examples"][kind][0]["id"] in sec
    assert "Dropped as misaligned" in sec
    ledger = pq.read_table(run / "curate" / "ledger.parquet").to_pylist()
    assert sum(r["reason"] == "misaligned" for r in ledger) == figures["misaligned"]

