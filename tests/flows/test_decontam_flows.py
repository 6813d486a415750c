"""Decontamination from the top layer: the `sftflow decontam` command and the recipe wiring."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq

from flows.recipe import load_recipe

REPO = Path(__file__).resolve().parents[2]
SFTFLOW = [str(Path(sys.executable).parent / "sftflow")]


def _run(*args: str, env_cache: Path) -> subprocess.CompletedProcess:
    import os

    env = {**os.environ, "SFTFLOW_CACHE": str(env_cache)}
    return subprocess.run([*SFTFLOW, *args], capture_output=True, text=True, cwd=REPO, timeout=300, env=env)


def _benchmarks(root: Path) -> Path:
    (root / "arc").mkdir(parents=True)
    row = {"query": "Question: Which gas do plants take in from the air to make their food?",
           "choices": ["oxygen", "nitrogen", "carbon dioxide", "helium"], "gold": 2}
    (root / "arc" / "arc_easy.jsonl").write_text(json.dumps(row) + "\n")
    return root


def test_decontam_command_drops_names_and_balances(tmp_path):
    data = _benchmarks(tmp_path / "bench")
    src = tmp_path / "in.jsonl"
    rows = [
        {"instruction": "Write a haiku about rain.", "output": "Drops."},
        {"instruction": "Help with homework", "input": "which gas do plants take in from the air to make their food",
         "output": "Carbon dioxide."},
        {"instruction": "What is 2+2?", "output": "4"},
    ]
    src.write_text("".join(json.dumps(r) + "\n" for r in rows))
    res = _run("decontam", str(src), "--out", str(tmp_path / "out"), "--suite", "arc_easy", "--data-dir", str(data),
               env_cache=tmp_path / "cache")
    assert res.returncode == 0, res.stderr
    assert "contaminated=1" in res.stdout and "1 rows removed (arc_easy 1)" in res.stdout
    out = tmp_path / "out"
    assert pq.read_metadata(out / "output.parquet").num_rows == 2
    led = pq.read_table(out / "ledger.parquet").to_pylist()
    assert [r["reason"] for r in led] == ["contaminated"] and led[0]["detail"].startswith("arc_easy item 0 question")
    stats = json.loads((out / "01_decontam" / "stats.json").read_text())
    assert stats["extra"]["removed_per_benchmark"] == {"arc_easy": 1}


def test_decontam_command_missing_benchmark_is_one_line(tmp_path):
    src = tmp_path / "in.jsonl"
    src.write_text(json.dumps({"instruction": "hi", "output": "yo"}) + "\n")
    res = _run("decontam", str(src), "--out", str(tmp_path / "out"), "--suite", "general_probe,cmmlu",
               "--data-dir", str(tmp_path / "none"), env_cache=tmp_path / "cache")
    assert res.returncode == 2
    assert str(tmp_path / "none" / "cmmlu" / "test") in res.stderr and "Traceback" not in res.stderr
    res = _run("decontam", str(src), "--out", str(tmp_path / "out2"), "--suite", "general_probe,cmmlu",
               "--data-dir", str(tmp_path / "none"), "--skip-missing", env_cache=tmp_path / "cache")
    assert res.returncode == 0, res.stderr
    assert "skipped cmmlu" in res.stdout


def test_recipe_decontam_uses_eval_data_and_checks_the_mix_pool(tmp_path):
    (tmp_path / "bench").mkdir()
    recipe = tmp_path / "r.yaml"
    recipe.write_text(
        "sources: [x.jsonl]\n"
        "stages:\n  - decontam: {}\n  - mix: {general: [g.jsonl], ratio: 0.1}\n"
        "eval: {suite: quick, data_dir: bench}\n"
    )
    r = load_recipe(recipe)
    stages = dict(r.stage_list())
    assert stages["decontam"].data_dir == str(tmp_path / "bench")  # the eval's copies, resolved
    assert stages["mix"].decontam == stages["decontam"]  # the general pool: the same benchmarks, same index
    # an explicit null turns the pool check off; an explicit data_dir resolves against the recipe folder
    recipe.write_text(
        "sources: [x.jsonl]\n"
        "stages:\n  - decontam: {data_dir: other, suite: quick}\n  - mix: {general: [g.jsonl], decontam: null}\n"
    )
    stages = dict(load_recipe(recipe).stage_list())
    assert stages["decontam"].data_dir == str(tmp_path / "other") and stages["mix"].decontam is None


def test_report_contamination_section(tmp_path, monkeypatch):
    """Rows removed per benchmark (training data and general pool), examples with spans, and the verdict's coverage."""
    import flows  # noqa: F401
    from curation.pipeline import curate
    from flows.report import build_report
    from tests.evals.factories import make_verdict

    monkeypatch.setenv("SFTFLOW_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("SFTFLOW_HISTORY_DIR", str(tmp_path / "history"))
    data = _benchmarks(tmp_path / "bench")
    src, pool = tmp_path / "in.jsonl", tmp_path / "pool.jsonl"
    src.write_text("".join(json.dumps({"instruction": q, "output": "ok"}) + "\n" for q in (
        "Which gas do plants take in from the air to make their food? <b>", "Write a limerick.", "Name a river.")))
    pool.write_text("".join(json.dumps({"instruction": q, "output": "ok"}) + "\n" for q in (
        "which gas do plants take in from the air to make their food", "Say hello.", "Count to three.")))
    dc = {"suite": "arc_easy", "data_dir": str(data)}
    run = tmp_path / "run-1"
    curate([str(src)], [("decontam", dc), ("mix", {"general": [str(pool)], "ratio": 0.3, "decontam": dc})],
           run / "curate")
    make_verdict({"arc_easy": 0.0, "piqa": 0.0}).write(run / "eval" / "verdict.json")
    html = build_report(run).read_text(encoding="utf-8")
    sec = html.split('<section id="contamination">')[1].split("</section>")[0]
    assert "1 of 3 training rows removed" in sec and "1 rows of the general pool left out" in sec
    assert "which gas do plants take in from the air to make their food" in sec  # the matched span
    assert "not checked against piqa" in sec  # the eval ran a task the data was not checked against
    # a run without a decontam stage warns
    plain = tmp_path / "run-2"
    curate([str(src)], [("quality", {})], plain / "curate")
    make_verdict({"arc_easy": 0.0}).write(plain / "eval" / "verdict.json")
    sec = build_report(plain).read_text(encoding="utf-8").split('<section id="contamination">')[1]
    assert "not decontaminated" in sec.split("</section>")[0]


def test_verdict_records_contamination_and_warns(tmp_path, monkeypatch):
    """step_eval (every run's eval) adds the contamination block to verdict.json; the CLI summary warns."""
    import io

    from rich.console import Console

    import evals.run
    from curation.pipeline import curate
    from curation.rundir import RunDir
    from evals.verdict import Verdict
    from flows import runner
    from flows.summary import print_verdict
    from tests.evals.factories import make_verdict

    monkeypatch.setenv("SFTFLOW_CACHE", str(tmp_path / "cache"))
    data = _benchmarks(tmp_path / "bench")
    src = tmp_path / "in.jsonl"
    src.write_text("".join(json.dumps({"instruction": q, "output": "ok"}) + "\n" for q in (
        "Which gas do plants take in from the air to make their food?", "Write a limerick.")))

    def fake_evaluate(cfg, base, adapter, out_dir, progress=None):
        verdict = make_verdict({t: 0.0 for t in cfg.suite.split(",")})
        verdict.write(Path(out_dir) / "verdict.json")
        return verdict

    monkeypatch.setattr(evals.run, "evaluate", fake_evaluate)
    for name, stages, suite in (("checked", [("decontam", {"suite": "arc_easy", "data_dir": str(data)})], "arc_easy"),
                                ("partial", [("decontam", {"suite": "arc_easy", "data_dir": str(data)})],
                                 "arc_easy,piqa"),
                                ("unchecked", [], "arc_easy")):
        rd = RunDir(tmp_path / name)
        curate([str(src)], stages, rd.curate.root)
        recipe = load_recipe_text(tmp_path, f"train: {{model: tiny-random-llama}}\neval: {{suite: '{suite}'}}\n")
        verdict = runner.step_eval(recipe, rd, None)
        on_disk = json.loads(rd.eval.verdict.read_text())
        block = on_disk["contamination"]
        assert block == verdict.contamination.model_dump(mode="json")
        out = io.StringIO()
        print_verdict(Verdict.load(rd.eval.verdict), Console(file=out, width=200))
        if name == "checked":
            assert block["covers_eval"] and block["rows_removed"] == 1 and block["warning"] is None
            assert "decontaminated against every eval task" in out.getvalue()
        elif name == "partial":
            assert not block["covers_eval"] and block["eval_tasks_not_checked"] == ["piqa"]
            assert "not checked against piqa" in out.getvalue()
        else:
            assert not block["decontaminated"] and "not decontaminated" in out.getvalue()


def load_recipe_text(folder: Path, text: str):
    path = folder / "recipe.yaml"
    path.write_text(text)
    return load_recipe(path)
