"""The notebook API: stages and recipes on pandas DataFrames and datasets.Datasets, the CLI's code path."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq
import pytest
import yaml

import sftflow
from curation.pipeline import curate as cli_curate

REPO = Path(__file__).resolve().parents[2]
DEMO = REPO / "data" / "demo"


@pytest.fixture(scope="module")
def frame() -> pd.DataFrame:
    """The demo's English rows that parse as JSON objects, plus five exact duplicates."""
    rows = []
    for line in (DEMO / "instructions_en.jsonl").read_bytes().decode("utf-8", "replace").splitlines()[:60]:
        try:
            row = json.loads(line)
        except ValueError:
            continue
        if isinstance(row, dict) and isinstance(row.get("instruction"), str) and isinstance(row.get("output"), str):
            rows.append({k: row.get(k) or "" for k in ("instruction", "input", "output")})
    df = pd.DataFrame(rows)
    return pd.concat([df, df.head(5)], ignore_index=True)


def test_a_stage_on_a_dataframe_returns_a_dataframe_and_the_ledger(frame, tmp_path):
    kept, ledger = sftflow.stage("dedup", frame, threshold=0.7)
    assert isinstance(kept, pd.DataFrame) and isinstance(ledger, pd.DataFrame)
    assert len(kept) + len(ledger) == len(frame)  # nothing lost
    assert (ledger["reason"] == "exact_duplicate").sum() >= 5
    assert set(ledger["stage"]) <= {"ingest", "dedup"} and set(kept["source"]) == {"dataframe"}
    assert {"id", "messages", "lang"} <= set(kept.columns)
    # the same rows and drops as the stage command's code path on the same file
    src = tmp_path / "dataframe.parquet"
    frame.to_parquet(src)
    cli_curate([str(src)], [("dedup", {"threshold": 0.7})], tmp_path / "cli")
    cli_out = pq.read_table(tmp_path / "cli" / "output.parquet").to_pandas()
    cli_ledger = pq.read_table(tmp_path / "cli" / "ledger.parquet").to_pandas()
    assert list(kept["id"]) == list(cli_out["id"])
    assert sorted(zip(ledger["id"], ledger["reason"], strict=True)) == sorted(
        zip(cli_ledger["id"], cli_ledger["reason"], strict=True))


def test_calls_chain_and_a_dataset_comes_back_a_dataset(frame):
    import datasets

    kept, _ = sftflow.stage("quality", frame)
    ds = datasets.Dataset.from_pandas(kept, preserve_index=False)
    kept2, ledger2 = sftflow.stages([("dedup", {"threshold": 0.7}), ("score", {})], ds)
    assert isinstance(kept2, datasets.Dataset)
    assert "complexity" in kept2.column_names and len(kept2) + len(ledger2) == len(kept)
    assert "ingest" not in set(ledger2["stage"])  # records are used as they are, not ingested again


def test_a_recipe_on_a_dataframe_uses_its_stages(frame, tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text(yaml.safe_dump({"name": "nb", "sources": ["not-used.jsonl"],
                                      "stages": [{"quality": {}}, {"dedup": {"threshold": 0.7}}],
                                      "export": {"license": "mit"}}))
    kept, ledger = sftflow.curate(frame, recipe, overrides=["stages.dedup.threshold=0.9"], out=tmp_path / "work")
    assert isinstance(kept, pd.DataFrame) and len(kept) + len(ledger) == len(frame)
    assert {"quality", "dedup"} & set(ledger["stage"])
    run = next((tmp_path / "work").glob("run"))
    info = json.loads((run / "run.json").read_text())
    assert info["recipe"]["stages"][1]["dedup"]["threshold"] == 0.9
    assert not (run / "export").exists()  # the API returns the rows; it does not export


def test_the_readme_example_runs_as_written(tmp_path, monkeypatch):
    import re

    text = (REPO / "README.md").read_text(encoding="utf-8")
    code = next(b for b in re.findall(r"```python\n(.*?)```", text, re.S) if "import sftflow" in b)
    monkeypatch.chdir(REPO)
    scope: dict = {}
    exec(compile(code, "README.md", "exec"), scope)  # noqa: S102 - the project's own README
    assert isinstance(scope["kept"], pd.DataFrame) and set(scope["ledger"]["stage"]) <= {
        "ingest", "decontam", "quality", "dedup", "score", "select", "mix"}
    assert len(scope["kept_ds"]) > 0 and "messages" in scope["kept_ds"].column_names


def test_bad_input_is_one_clear_error():
    from curation.errors import SftflowError

    with pytest.raises(SftflowError, match="expected a pandas DataFrame"):
        sftflow.stage("dedup", [{"instruction": "q", "output": "a"}])
    with pytest.raises(SftflowError, match="unknown stage"):
        sftflow.stage("nope", pd.DataFrame({"instruction": ["q"], "output": ["a"]}))


def test_importing_the_api_imports_neither_prefect_nor_pandas():
    import subprocess
    import sys

    code = "import sys, sftflow; print(any(m.split('.')[0] in ('prefect', 'pandas') for m in sys.modules))"
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert res.stdout.strip() == "False", res.stderr
