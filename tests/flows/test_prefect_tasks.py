"""In Prefect, every curation stage (and split, train, eval, export, gate) is its own task run."""

from __future__ import annotations

import json
from pathlib import Path
from typing import ClassVar

import pytest
import yaml
from pydantic import BaseModel, ConfigDict

from curation.records import Record
from curation.stage import Stage, StageOutput

REPO = Path(__file__).resolve().parents[2]
DEMO = REPO / "data" / "demo"


def _task_runs(flow_run_id) -> list:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId
    from prefect.client.schemas.sorting import TaskRunSort

    with get_client(sync_client=True) as client:
        return client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])),
                                     sort=TaskRunSort.EXPECTED_START_TIME_ASC)


@pytest.mark.prefect
def test_each_stage_is_a_task_run_named_after_its_folder_and_resume_skips_them(prefect_harness, tmp_path):
    from flows.flows import curate_flow
    from flows.recipe import load_recipe

    lines = (DEMO / "instructions_en.jsonl").read_bytes().splitlines(keepends=True)
    (tmp_path / "a.jsonl").write_bytes(b"".join(lines[:40]))
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump({"name": "per-stage", "sources": ["a.jsonl"],
                                    "stages": [{"quality": {}}, {"dedup": {"threshold": 0.7}}, {"score": {}}],
                                    "export": {"license": "mit"}}))
    recipe = load_recipe(path)
    state = curate_flow(recipe, str(tmp_path / "run"), return_state=True)
    assert state.is_completed()
    runs = _task_runs(state.state_details.flow_run_id)
    assert [t.name for t in runs] == ["00-ingest", "01-quality", "02-dedup", "03-score", "export"]
    assert all(t.state.is_completed() and t.total_run_time is not None for t in runs)
    summary = json.loads((tmp_path / "run" / "curate" / "summary.json").read_text())
    assert [s["stage"] for s in summary["stages"]] == ["ingest", "quality", "dedup", "score"]

    again = curate_flow(recipe, str(tmp_path / "run"), resume=True, return_state=True)
    assert again.is_completed()
    # every stage's fingerprint matched: the project's own resume, no stage ran again
    assert [t.name for t in _task_runs(again.state_details.flow_run_id)] == ["export"]


class FlakyConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    marker: str


class FlakyStage(Stage):
    """Fails the first time it runs (no marker file yet), keeps every row after."""

    name: ClassVar[str] = "flaky"
    Config: ClassVar[type[BaseModel]] = FlakyConfig

    def process(self, batch: list[Record]) -> StageOutput:
        marker = Path(self.config.marker)
        if not marker.exists():
            marker.write_text("failed once")
            raise RuntimeError("flaky: first try fails")
        return StageOutput(kept=list(batch))


@pytest.mark.prefect
def test_a_retried_flow_run_resumes_and_runs_only_the_failed_stage_again(prefect_harness, tmp_path, monkeypatch):
    from curation.registry import STAGES
    from flows.flows import curate_flow
    from flows.recipe import load_recipe

    monkeypatch.setitem(STAGES, "flaky", f"{__name__}:FlakyStage")
    (tmp_path / "a.jsonl").write_text("".join(json.dumps({"instruction": f"q{i}", "output": f"answer {i}"}) + "\n"
                                              for i in range(10)))
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump({"name": "flaky", "sources": ["a.jsonl"],
                                    "stages": [{"flaky": {"marker": str(tmp_path / "marker")}}]}))
    state = curate_flow.with_options(retries=1, retry_delay_seconds=0)(load_recipe(path), str(tmp_path / "run"),
                                                                        return_state=True)
    assert state.is_completed()
    runs = _task_runs(state.state_details.flow_run_id)
    # the retry found 00-ingest finished with the same fingerprint: it did not run again
    assert [(t.name, t.state.type.value) for t in runs] == [("00-ingest", "COMPLETED"), ("01-flaky", "FAILED"),
                                                           ("01-flaky", "COMPLETED")]
    assert json.loads((tmp_path / "run" / "curate" / "summary.json").read_text())["rows_out"] == 10
