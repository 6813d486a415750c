"""The stage runner and the curation pipeline: ledger invariant, resume, fingerprints."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from pydantic import BaseModel

from curation import pipeline
from curation.errors import ConfigError
from curation.io import iter_record_batches, read_json
from curation.records import Record
from curation.registry import STAGES
from curation.runner import apply_stage, run_stage
from curation.stage import Drop, Stage, StageOutput, build_stage
from curation.stats import LedgerBalanceError


class LengthConfig(BaseModel):
    min_chars: int = 10


class MinLength(Stage):
    """A toy stage: drop records whose response is shorter than min_chars; score the rest."""

    name = "min_length"
    Config = LengthConfig
    attr_fields = {"resp_len": pa.int64()}
    calls = 0

    def process(self, batch: list[Record]) -> StageOutput:
        type(self).calls += 1
        out = StageOutput()
        for r in batch:
            n = len(r.response())
            if n < self.config.min_chars:
                out.dropped.append(Drop(r, "too_short", f"{n} < {self.config.min_chars}"))
            else:
                r.attrs["resp_len"] = n
                out.kept.append(r)
        return out


class Leaky(MinLength):
    name = "leaky"

    def process(self, batch: list[Record]) -> StageOutput:
        out = super().process(batch)
        out.kept = out.kept[:-1]  # loses a row: the runner must refuse
        return out


@pytest.fixture(autouse=True)
def _register(monkeypatch):
    monkeypatch.setitem(STAGES, "min_length", f"{__name__}:MinLength")
    monkeypatch.setitem(STAGES, "leaky", f"{__name__}:Leaky")


def _write_source(path: Path, n: int = 30) -> Path:
    rows = []
    for i in range(n):
        answer = "ok" if i % 3 == 0 else f"a long enough answer number {i}"
        rows.append({"instruction": f"question {i}", "output": answer})
    rows.append({"instruction": "broken"})  # unknown format → ingest ledger
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n{not json\n")
    return path


def test_apply_stage_balances_and_stores_scores():
    recs = [Record(id=str(i), messages=[{"role": "user", "content": "q"}, {"role": "assistant", "content": "x" * i}])
            for i in range(20)]
    kept, dropped, stats = apply_stage(MinLength(LengthConfig(min_chars=5)), recs, batch_size=7)
    assert len(kept) + len(dropped) == 20
    assert {d.reason for d in dropped} == {"too_short"}
    assert all(r.attrs["resp_len"] >= 5 for r in kept)
    assert stats.dropped_by_reason == {"too_short": 5}


def test_runner_refuses_a_stage_that_loses_rows(tmp_path):
    recs = [Record(id=str(i), messages=[{"role": "user", "content": "q"}, {"role": "assistant", "content": "long answer"}])
            for i in range(5)]
    with pytest.raises(LedgerBalanceError):
        apply_stage(Leaky(), recs)


def test_curate_ledger_balances_end_to_end(tmp_path):
    src = _write_source(tmp_path / "src.jsonl")
    summary = pipeline.curate([str(src)], [("min_length", {"min_chars": 5})], tmp_path / "run")
    run = tmp_path / "run"
    n_out = pq.ParquetFile(run / "output.parquet").metadata.num_rows
    ledger = pq.read_table(run / "ledger.parquet").to_pylist()
    assert summary.rows_in == 32  # 30 good + 1 unknown format + 1 bad JSON
    assert summary.rows_in == n_out + len(ledger)
    by_stage = {(r["stage"], r["reason"]) for r in ledger}
    assert by_stage == {("ingest", "unknown_format"), ("ingest", "bad_json"), ("min_length", "too_short")}
    # output ids are unique and carry the stage's score column
    out = [r for b in iter_record_batches(run / "output.parquet") for r in b]
    assert len({r.id for r in out}) == len(out) == 20
    assert all(r.attrs["resp_len"] >= 5 for r in out)
    assert read_json(run / "summary.json")["balanced"] is True


def test_resume_skips_finished_stages_and_reruns_changed_ones(tmp_path):
    src = _write_source(tmp_path / "src.jsonl")
    run = tmp_path / "run"
    MinLength.calls = 0
    first = pipeline.curate([str(src)], [("min_length", {"min_chars": 5})], run)
    assert MinLength.calls > 0
    before = (run / "output.parquet").read_bytes()

    MinLength.calls = 0
    again = pipeline.curate([str(src)], [("min_length", {"min_chars": 5})], run, resume=True)
    assert MinLength.calls == 0  # same input + config: cached
    assert all(s.cached for s in again.stages)
    assert (run / "output.parquet").read_bytes() == before
    assert again.rows_out == first.rows_out

    # a changed threshold reruns that stage (ingest stays cached)
    changed = pipeline.curate([str(src)], [("min_length", {"min_chars": 100})], run, resume=True)
    assert MinLength.calls > 0
    assert [s.cached for s in changed.stages] == [True, False]
    assert changed.rows_out == 0

    # changed input content invalidates everything
    src.write_text(src.read_text().replace("question 1", "question one"))
    again = pipeline.curate([str(src)], [("min_length", {"min_chars": 100})], run, resume=True)
    assert [s.cached for s in again.stages] == [False, False]


def test_run_stage_publishes_atomically(tmp_path):
    recs = tmp_path / "in.parquet"
    from curation.io import write_records

    write_records(recs, [Record(id=str(i), messages=[{"role": "user", "content": "q"},
                                                     {"role": "assistant", "content": "answer " * i}])
                         for i in range(10)])
    out = tmp_path / "stage"
    stats = run_stage(MinLength(), recs, out, batch_size=3)
    assert stats.rows_in == 10
    assert sorted(p.name for p in out.iterdir()) == ["ledger.parquet", "output.parquet", "stats.json"]


def test_unknown_stage_and_bad_config_are_clear():
    with pytest.raises(ConfigError, match="unknown stage 'nope'"):
        build_stage("nope", {})
    with pytest.raises(ConfigError, match=r"stages\.min_length\.min_chars: Input should be a valid integer"):
        build_stage("min_length", {"min_chars": "many"}, where="stages.")


def test_split_heldout_is_stable_and_keeps_general_rows_for_training(tmp_path):
    from curation.io import write_records

    recs = [Record(id=f"r{i}", messages=[{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}],
                   attrs={"mix_source": "general" if i % 2 else "task"}) for i in range(200)]
    write_records(tmp_path / "in.parquet", recs)
    t1, h1, n1 = pipeline.split_heldout(tmp_path / "in.parquet", tmp_path / "a", fraction=0.2, max_rows=100)
    t2, h2, n2 = pipeline.split_heldout(tmp_path / "in.parquet", tmp_path / "b", fraction=0.2, max_rows=100)
    held = pq.read_table(h1).to_pylist()
    assert n1 == n2 == len(held) > 0
    assert [r["id"] for r in held] == [r["id"] for r in pq.read_table(h2).to_pylist()]
    assert all(r["mix_source"] == "task" for r in held)
    assert pq.ParquetFile(t1).metadata.num_rows + n1 == 200
