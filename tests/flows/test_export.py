"""``sftflow export``: the curated rows as a `datasets`-loadable folder with a dataset card."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import yaml

from flows.export import ExportConfig, ExportError, export_run
from tests.flows.test_report import add_training_and_eval, curated_run

REPO = Path(__file__).resolve().parents[2]
SFTFLOW = str(Path(sys.executable).parent / "sftflow")


@pytest.fixture()
def run(tmp_path_factory, tmp_path) -> Path:
    dst = tmp_path / "demo-20260101-000000"
    shutil.copytree(curated_run(tmp_path_factory), dst)
    return dst


def front_matter(card: str) -> dict:
    assert card.startswith("---\n")
    return yaml.safe_load(card.split("---\n", 2)[1])


def test_load_dataset_returns_exactly_the_curated_rows_and_the_card_shows_the_funnel(run, tmp_path):
    from datasets import load_dataset

    res = subprocess.run([SFTFLOW, "export", str(run), "--out", str(tmp_path / "ds"), "--license", "cc-by-sa-3.0"],
                         capture_output=True, text=True, cwd=REPO, timeout=300)
    assert res.returncode == 0, res.stderr
    ds = load_dataset(str(tmp_path / "ds"))
    assert list(ds) == ["train"]  # a curate-only run: no held-out split
    curated = pq.read_table(run / "curate" / "output.parquet").to_pylist()
    got = ds["train"].to_list()
    assert [r["id"] for r in got] == [r["id"] for r in curated]
    assert [r["messages"] for r in got] == [r["messages"] for r in curated]
    assert "messages" in ds["train"].column_names and "line" not in ds["train"].column_names
    # plain-text replay rows keep their text; no local path leaks into the shared files
    assert any(r["messages"] is None and r["text"] for r in got)
    assert all("/" not in (r["source"] or "") and "/" not in (r["mix_origin"] or "") for r in got)

    card = (tmp_path / "ds" / "README.md").read_text(encoding="utf-8")
    meta = front_matter(card)
    summary = json.loads((run / "curate" / "summary.json").read_text())
    assert meta["license"] == "cc-by-sa-3.0" and set(meta["language"]) == {"en", "zh"}
    assert meta["size_categories"] == ["n<1K"] and meta["task_categories"] == ["text-generation"]
    assert meta["configs"][0]["data_files"] == [{"split": "train", "path": "data/train-00000-of-00001.parquet"}]
    assert f"rows_in = {summary['rows_in']}, rows_out = {summary['rows_out']}" in card
    for st in summary["stages"]:  # the funnel, every stage with its counts
        assert f"| {st['stage']} | {st['rows_in']:,} | {st['rows_added']:,} | {st['rows_out']:,} |" in card
    dedup = json.loads(next(run.glob("curate/*_dedup/stats.json")).read_text())["extra"]
    assert "S-curve false-positive area" in card and f"| {dedup['lsh']['false_negative_area']:.4g} |" in card
    for section in ("## Sources", "## Curation funnel", "## Deduplication", "## Quality rules",
                    "## General-data replay", "## Score distributions"):
        assert section in card
    assert "## Did a model tuned on it get dumber?" not in card  # this run did not train
    assert "dataset:" in res.stdout


def test_jsonl_format_and_held_out_split(run, tmp_path):
    from datasets import load_dataset

    from curation.pipeline import split_heldout

    split_heldout(run / "curate" / "output.parquet", run / "split", fraction=0.2, max_rows=10)
    out = export_run(run, tmp_path / "ds", ExportConfig(format="jsonl", license=["apache-2.0", "cc-by-4.0"]))
    ds = load_dataset(str(out))
    assert sorted(ds) == ["test", "train"] and ds["test"].num_rows == 10
    ids = sorted(list(ds["train"]["id"]) + list(ds["test"]["id"]))
    assert ids == sorted(pq.read_table(run / "curate" / "output.parquet", columns=["id"]).column("id").to_pylist())
    meta = front_matter((out / "README.md").read_text(encoding="utf-8"))
    assert meta["license"] == ["apache-2.0", "cc-by-4.0"]
    assert {f["split"]: f["path"] for f in meta["configs"][0]["data_files"]} == {
        "train": "data/train.jsonl", "test": "data/test.jsonl"}


def test_the_card_of_a_trained_and_evaluated_run_carries_the_verdict_table(run, tmp_path):
    from flows.summary import verdict_rows

    verdict = add_training_and_eval(run)["verdict"]
    card = (export_run(run, tmp_path / "ds") / "README.md").read_text(encoding="utf-8")
    assert "## Did a model tuned on it get dumber?" in card and "Verdict: **REGRESSED** — arc_easy dropped" in card
    assert "| task | status | n | accuracy base → tuned |" in card
    for row in verdict_rows(verdict):  # every task and the suite test, with its status and n
        assert f"| {row['task']} | {row['status']} | {row['n']} |" in card
    assert "**License: unknown**" in card and front_matter(card)["license"] == "unknown"


def test_a_second_export_replaces_the_first_whole(run, tmp_path):
    out = export_run(run, tmp_path / "ds", ExportConfig(format="jsonl"))
    export_run(run, out, ExportConfig(format="hf"))
    assert sorted(p.name for p in (out / "data").iterdir()) == ["train-00000-of-00001.parquet"]


def test_bad_input_is_an_export_error(tmp_path, run):
    with pytest.raises(ExportError, match="not an sftflow run folder"):
        export_run(tmp_path)
    (run / "curate" / "summary.json").unlink()
    with pytest.raises(ExportError, match="its curation did not finish"):
        export_run(run)


def test_push_to_hub_creates_the_repo_and_uploads_the_folder(run, tmp_path, monkeypatch):
    import huggingface_hub

    calls = []

    class FakeApi:
        def create_repo(self, repo_id, **kw):
            calls.append(("create_repo", repo_id, kw))

        def upload_folder(self, **kw):
            calls.append(("upload_folder", kw["repo_id"], kw))
            assert (Path(kw["folder_path"]) / "README.md").exists()

    monkeypatch.setattr(huggingface_hub, "HfApi", FakeApi)
    out = export_run(run, tmp_path / "ds", ExportConfig(push_to_hub="me/curated"))
    assert [c[:2] for c in calls] == [("create_repo", "me/curated"), ("upload_folder", "me/curated")]
    assert calls[0][2] == {"repo_type": "dataset", "private": True, "exist_ok": True}
    assert calls[1][2]["folder_path"] == str(out) and calls[1][2]["repo_type"] == "dataset"
    assert 'load_dataset("me/curated")' in (out / "README.md").read_text(encoding="utf-8")


def test_push_to_hub_offline_is_one_line(run, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    res = subprocess.run([SFTFLOW, "export", str(run), "--out", str(tmp_path / "ds"), "--push-to-hub", "me/curated"],
                         capture_output=True, text=True, cwd=REPO, timeout=300)
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert res.returncode == 2 and len(lines) == 1, res.stderr
    assert lines[0].startswith("error: push to hf://datasets/me/curated failed")
    assert (tmp_path / "ds" / "README.md").exists()  # the local export is kept


def test_recipe_export_key_exports_after_curation(tmp_path):
    from flows import runner
    from flows.recipe import load_recipe

    src = tmp_path / "rows.jsonl"
    src.write_text("".join(json.dumps({"instruction": f"question {i}", "output": f"answer {i}"}) + "\n"
                           for i in range(12)))
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump({"name": "nightly", "sources": [str(src)], "export": {"license": "mit",
                                                                                          "out": "shared"}}))
    out = runner.run(load_recipe(path), tmp_path / "run")
    assert out["export"] == str(tmp_path / "shared")
    assert front_matter((tmp_path / "shared" / "README.md").read_text(encoding="utf-8"))["license"] == "mit"
    info = json.loads((tmp_path / "run" / "run.json").read_text())
    assert info["export"] == str(tmp_path / "shared") and info["recipe"]["export"]["license"] == ["mit"]
