"""The whole pipeline as a Prefect flow, end to end on the tiny model: curate → SFT → eval → gate."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import yaml

from evals.verdict import Verdict
from flows import runner
from flows.recipe import load_recipe
from tests.evals.factories import make_verdict

REPO = Path(__file__).resolve().parents[2]


def _recipe(tmp_path: Path, shared_data: Path, **gate) -> Path:
    demo = REPO / "data" / "demo"
    data = {
        "name": "e2e-test",
        "sources": [str(demo / "instructions_en.jsonl"), str(demo / "instructions_zh.json")],
        "stages": [
            {"quality": {}},
            {"dedup": {"threshold": 0.7}},
            {"score": {}},
            {"select": {"budget": 120}},
            {"mix": {"general": [str(demo / "general.jsonl")], "ratio": 0.2, "seed": 0}},
        ],
        "heldout": {"fraction": 0.1, "max_rows": 8},
        "train": {"model": "tiny-random-llama", "method": "lora", "precision": "fp32", "max_steps": 3,
                  "batch_size": 2, "seq_len": 128},
        "eval": {"suite": "arc_easy", "data_dir": str(shared_data), "limit": 12, "bootstrap": 200,
                 "rigidity": False},
        "gate": gate or {"on_regressed": "warn", "on_inconclusive": "warn"},
    }
    p = tmp_path / "recipe.yaml"
    p.write_text(yaml.safe_dump(data))
    return p


@pytest.mark.prefect
@pytest.mark.slow
def test_pipeline_flow_end_to_end(tmp_path, shared_data, prefect_harness):
    from flows.flows import pipeline_flow

    recipe = load_recipe(_recipe(tmp_path, shared_data))
    run_dir = tmp_path / "run"
    out = pipeline_flow(recipe, str(run_dir))

    summary = json.loads((run_dir / "curate" / "summary.json").read_text())
    n_out = pq.ParquetFile(run_dir / "curate" / "output.parquet").metadata.num_rows
    n_led = pq.ParquetFile(run_dir / "curate" / "ledger.parquet").metadata.num_rows
    assert summary["rows_in"] + summary["rows_added"] == n_out + n_led
    assert [s["stage"] for s in summary["stages"]] == ["ingest", "quality", "dedup", "score", "select", "mix"]

    train = json.loads((run_dir / "train" / "summary.json").read_text())
    assert train["steps"] == 3
    verdict = Verdict.load(run_dir / "eval" / "verdict.json")
    assert verdict.verdict in {"PASS", "REGRESSED", "INCONCLUSIVE"}
    assert verdict == out["verdict"]
    assert "arc_easy" in verdict.tasks


def test_gate_applies_the_recipe(tmp_path):
    p = tmp_path / "r.yaml"
    p.write_text(yaml.safe_dump({"gate": {"on_regressed": "fail", "on_inconclusive": "warn"}}))
    r = load_recipe(p)
    assert runner.gate(r, make_verdict(verdict="PASS")) == "ok"
    assert runner.gate(r, make_verdict(verdict="INCONCLUSIVE")) == "warn"
    regressed = make_verdict({"arc_easy": -0.05})
    regressed.recommendation = "raise the replay ratio"
    with pytest.raises(runner.GateFailed, match="REGRESSED. raise the replay ratio"):
        runner.gate(r, regressed)
    p.write_text(yaml.safe_dump({"gate": {"on_regressed": "warn"}}))
    assert runner.gate(load_recipe(p), regressed) == "warn"
