"""The worked example of docs/architecture.md (adding a stage) runs as written."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import pyarrow.parquet as pq

from curation.io import write_records
from curation.pipeline import curate
from curation.records import Record
from curation.registry import STAGES
from curation.runner import ShardedExecutor, apply_stage, run_stage

REPO = Path(__file__).resolve().parents[1]


def _example_module(tmp_path: Path, monkeypatch) -> str:
    text = (REPO / "docs" / "architecture.md").read_text(encoding="utf-8")
    code = next(b for b in re.findall(r"```python\n(.*?)```", text, re.S) if b.startswith("# curation/min_answer.py"))
    (tmp_path / "min_answer_example.py").write_text(code)
    monkeypatch.syspath_prepend(str(tmp_path))
    sys.modules.pop("min_answer_example", None)
    return "min_answer_example"


def test_the_documented_stage_works_everywhere(tmp_path, monkeypatch):
    module = _example_module(tmp_path, monkeypatch)
    monkeypatch.setitem(STAGES, "min_answer", f"{module}:MinAnswerStage")  # the doc's one registry line
    from min_answer_example import MinAnswerConfig, MinAnswerFigures, MinAnswerStage

    recs = [Record(id=f"r{i}", messages=[{"role": "user", "content": "q"},
                                         {"role": "assistant", "content": "a" * i}]) for i in range(20)]
    kept, dropped, stats = apply_stage(MinAnswerStage(MinAnswerConfig(min_chars=8)), recs)
    assert len(kept) == 12 and {d.reason for d in dropped} == {"too_short"}
    assert stats.figures(MinAnswerFigures).answer_chars == sum(range(8, 20))

    write_records(tmp_path / "in.parquet", recs)
    serial = run_stage(MinAnswerStage(), tmp_path / "in.parquet", tmp_path / "serial")
    sharded = run_stage(MinAnswerStage(), tmp_path / "in.parquet", tmp_path / "sharded", executor=ShardedExecutor(3))
    assert sharded.shards == 3 and sharded.extra == serial.extra
    assert (tmp_path / "serial" / "output.parquet").read_bytes() == (tmp_path / "sharded" / "output.parquet").read_bytes()

    src = tmp_path / "rows.jsonl"
    src.write_text("".join(json.dumps({"instruction": "q", "output": "b" * i}) + "\n" for i in range(10)))
    summary = curate([str(src)], [("min_answer", {"min_chars": 5})], tmp_path / "run")
    assert summary.rows_out == 5 and pq.read_metadata(tmp_path / "run" / "ledger.parquet").num_rows == 5
