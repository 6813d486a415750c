"""The CLI as a user meets it: exit codes and one-line errors instead of tracebacks."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SFTFLOW = [str(Path(sys.executable).parent / "sftflow")]  # the installed console script


def _run(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([*SFTFLOW, *args], capture_output=True, text=True, cwd=cwd or REPO, timeout=300)


def test_ingest_reports_counts_and_a_fully_bad_file_exits_nonzero(tmp_path):
    good = tmp_path / "good.jsonl"
    good.write_text(json.dumps({"instruction": "Say hi", "output": "Hi there!"}) + "\n{oops\n")
    res = _run("ingest", str(good), "--out", str(tmp_path / "a"))
    assert res.returncode == 0, res.stderr
    assert "2 rows in → 1 records" in res.stdout
    assert "bad_json" in res.stdout

    bad = tmp_path / "bad.jsonl"
    bad.write_text("{oops\n[1, 2]\n")
    res = _run("ingest", str(bad), "--out", str(tmp_path / "b"))
    assert res.returncode == 1
    assert "no row could be read" in res.stderr


def test_missing_input_and_bad_field_map_are_one_line_errors(tmp_path):
    res = _run("ingest", str(tmp_path / "nope.jsonl"), "--out", str(tmp_path / "o"))
    assert res.returncode == 2
    assert "nope.jsonl: no such file or directory" in res.stderr
    assert "Traceback" not in res.stderr

    f = tmp_path / "q.jsonl"
    f.write_text(json.dumps({"q": "a", "a": "b"}) + "\n")
    res = _run("ingest", str(f), "--out", str(tmp_path / "o"), "--field-map", "prompt_text=q")
    assert res.returncode == 2
    assert "unknown canonical field" in res.stderr


def test_bad_recipe_names_file_and_key(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("sources: [x.jsonl]\nstages:\n  - dedup: {threshold: high}\n")
    res = _run("curate", "--recipe", str(recipe), "--local", "--out", str(tmp_path / "run"))
    assert res.returncode == 2
    assert "r.yaml: stages[0].dedup.threshold" in res.stderr
    assert "Traceback" not in res.stderr


@pytest.mark.slow
def test_curate_local_on_demo_data_balances(tmp_path):
    res = _run("curate", "--recipe", str(REPO / "configs" / "demo.yaml"), "--local", "--out", str(tmp_path / "run"),
               "--set", "stages.select.budget=150")
    assert res.returncode == 0, res.stderr[-3000:]
    summary = json.loads((tmp_path / "run" / "curate" / "summary.json").read_text())
    assert summary["balanced"] is True
    assert summary["rows_in"] >= 300
    reasons = {r for s in summary["stages"] for r in s["dropped_by_reason"]}
    # the demo data plants malformed lines, duplicates and junk: each stage must find some
    assert {"bad_json", "invalid_utf8", "exact_duplicate"} <= reasons
    assert "Curation funnel" in res.stdout


def _ledger_source(tmp_path: Path) -> Path:
    rows = [{"id": f"q{i}", "instruction": f"Explain topic number {i} in a few words.",
             "output": f"Topic {i} is about {'many ' * (i % 4)}things that matter to people."} for i in range(24)]
    rows.append({"id": "q3", "instruction": "dup id", "output": "x"})  # duplicate_id: an ingest drop
    lines = [json.dumps(r) for r in rows] + ["{oops", json.dumps({"foo": "bar"})]
    path = tmp_path / "rows.jsonl"
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.mark.parametrize("command", [
    ["ingest"], ["dedup"], ["quality"], ["score"], ["select", "--budget", "10", "--set", "embeddings=hashing"],
    ["mix", "--ratio", "0.2"],
])
def test_every_stage_command_has_one_complete_ledger(tmp_path, command):
    """rows in (+ rows added) = rows out + ledger rows, read from the output folder alone; the
    ledger holds ingest's drops too, with the rows' own ids."""
    import pyarrow.parquet as pq

    src = _ledger_source(tmp_path)
    out = tmp_path / "out"
    name, *flags = command
    if name == "mix":
        general = tmp_path / "general.jsonl"
        general.write_text("".join(json.dumps({"text": f"general row {i} about the weather"}) + "\n" for i in range(40)))
        args = [name, "--task", str(src), "--general", str(general), *flags]
    else:
        args = [name, str(src), *flags]
    res = _run(*args, "--out", str(out))
    assert res.returncode == 0, res.stderr[-3000:]
    n_out = pq.read_metadata(out / "output.parquet").num_rows
    ledger = pq.read_table(out / "ledger.parquet").to_pylist()
    counts = json.loads((out / ("stats.json" if name == "ingest" else "summary.json")).read_text())
    assert counts["rows_in"] == 27
    assert counts["rows_in"] + counts.get("rows_added", 0) == n_out + len(ledger)
    ingest_drops = {(d["reason"], d["id"]) for d in ledger if d["stage"] == "ingest"}
    assert ingest_drops == {("duplicate_id", "q3"), ("bad_json", f"{src}:26"), ("unknown_format", f"{src}:27")}


def test_two_runs_into_one_folder_the_second_is_refused_in_one_line(tmp_path):
    """Two real sftflow processes: the second gets "folder in use" (exit 2); once the first is gone
    (killed: its lock file stays behind), the folder is free again."""
    import signal

    src = _ledger_source(tmp_path)
    out = tmp_path / "out"
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time\nfrom curation.io import folder_lock\n"
                               "with folder_lock(sys.argv[1]):\n    print('held', flush=True)\n    time.sleep(120)\n",
                               str(out)], cwd=REPO, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        res = _run("dedup", str(src), "--out", str(out))
        assert res.returncode == 2
        assert "folder in use by another sftflow run" in res.stderr and "Traceback" not in res.stderr
        assert len(res.stderr.strip().splitlines()) == 1
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait(timeout=30)
    res = _run("dedup", str(src), "--out", str(out))
    assert res.returncode == 0, res.stderr[-2000:]
