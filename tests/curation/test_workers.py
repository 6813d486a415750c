"""Local worker processes: per-row stages on a pool write the bytes one process writes."""

from __future__ import annotations

import json
import os
import random
from pathlib import Path
from typing import ClassVar

import pyarrow.parquet as pq
import pytest
from pydantic import BaseModel

from curation import registry
from curation.ingest import ingest
from curation.io import ROW_GROUP_ROWS
from curation.registry import SCORERS
from curation.runner import SerialExecutor, run_stage
from curation.stage import Stage, StageOutput, build_stage
from curation.stats import Figures
from curation.workers import PoolExecutor, WorkerDied, WorkerPool, chunks, local_executor, resolve_workers
from tests.curation.test_scorers import FakeScorer

N_ROWS = 2 * ROW_GROUP_ROWS + 777  # three row groups: three chunks of one row group each


@pytest.fixture(scope="module")
def records(tmp_path_factory) -> Path:
    """An ingested records file of varied rows, a few of them junk the quality rules drop."""
    tmp = tmp_path_factory.mktemp("workers")
    rng = random.Random(11)
    words = "river mountain data model answer question because however energy system city history".split()
    with (tmp / "rows.jsonl").open("w") as fh:
        for i in range(N_ROWS):
            answer = " ".join(rng.choices(words, k=rng.randint(8, 60))).capitalize() + "."
            if i % 97 == 0:
                answer = "I'm sorry, but as an AI language model I cannot help with that."
            elif i % 89 == 0:
                answer = "ok"
            fh.write(json.dumps({"instruction": f"Question {i}: tell me about the {rng.choice(words)}?",
                                 "output": answer}) + "\n")
    ingest([str(tmp / "rows.jsonl")], tmp / "ingest")
    return tmp / "ingest" / "output.parquet"


def _bytes(folder: Path) -> dict[str, bytes]:
    return {n: (folder / n).read_bytes() for n in ("output.parquet", "ledger.parquet")}


@pytest.mark.parametrize("stage_name", ["quality", "score"])
def test_two_workers_write_the_bytes_of_one(records, tmp_path, stage_name):
    serial = run_stage(build_stage(stage_name), records, tmp_path / "serial", executor=SerialExecutor())
    with WorkerPool(2) as pool:
        ex = PoolExecutor(pool, min_rows=1, chunk_rows=1)
        pooled = run_stage(build_stage(stage_name), records, tmp_path / "pool", executor=ex, batch_size=1000)
    assert ex.pooled == [stage_name]
    assert _bytes(tmp_path / "pool") == _bytes(tmp_path / "serial")
    assert pooled.fingerprint == serial.fingerprint
    for key in ("rows_in", "rows_out", "rows_dropped", "dropped_by_reason"):
        assert getattr(pooled, key) == getattr(serial, key), key
    if stage_name == "quality":
        assert serial.rows_dropped > 0  # the comparison covered the ledger too
        assert pooled.extra["dropped_examples"] == serial.extra["dropped_examples"]  # in input order


def test_global_stages_and_small_inputs_run_serially(records, tmp_path):
    with WorkerPool(2) as pool:
        ex = PoolExecutor(pool)  # default min_rows: this input is too small to be worth a pool
        run_stage(build_stage("quality"), records, tmp_path / "q", executor=ex)
        ex_small = PoolExecutor(pool, min_rows=1, chunk_rows=1)
        run_stage(build_stage("dedup"), records, tmp_path / "d", executor=ex_small)
        assert ex.pooled == [] and ex_small.pooled == []
        assert not pool.started  # nothing ran on it: no worker was ever started


def test_chunks_are_whole_row_groups_in_order(records):
    assert chunks(records, 1) == [(0,), (1,), (2,)]
    assert chunks(records, ROW_GROUP_ROWS + 1) == [(0, 1), (2,)]
    assert chunks(records, 10**9) == [(0, 1, 2)]


def test_a_scorer_registered_in_the_parent_is_found_and_loaded_once_per_worker(records, tmp_path, monkeypatch):
    monkeypatch.setenv("SFTFLOW_CACHE", str(tmp_path / "cache"))
    monkeypatch.setitem(SCORERS, "fake", FakeScorer)
    monkeypatch.setattr(registry, "_INSTANCES", {})
    weights = tmp_path / "weights.txt"
    weights.write_text("2.0")
    config = {"fake": {"model": str(weights)}}
    run_stage(build_stage("score", config), records, tmp_path / "serial")
    with WorkerPool(2) as pool:
        run_stage(build_stage("score", config), records, tmp_path / "pool",
                  executor=PoolExecutor(pool, min_rows=1, chunk_rows=1))
    assert _bytes(tmp_path / "pool") == _bytes(tmp_path / "serial")
    scores = pq.read_table(tmp_path / "pool" / "output.parquet", columns=["fake_score"]).column(0).to_pylist()
    assert len(scores) == N_ROWS and all(s and s > 0 for s in scores)


class DieConfig(BaseModel):
    marker: str = "die"


class DieOnMarker(Stage):
    """Kills its own process (like the OOM killer) when a row's id contains the marker."""

    name: ClassVar[str] = "die_on_marker"
    Config = DieConfig
    Figures = Figures  # no figures of its own; declared, so the stage is per-row (runs on the pool)

    def process(self, batch):
        for r in batch:
            if self.config.marker in r.id and os.environ.get("SFTFLOW_TEST_PARENT") != str(os.getpid()):
                os.kill(os.getpid(), 9)
        return StageOutput(kept=list(batch))


def test_a_worker_killed_mid_stage_is_a_one_line_error_and_nothing_is_published(records, tmp_path, monkeypatch):
    monkeypatch.setenv("SFTFLOW_TEST_PARENT", str(os.getpid()))
    first_id_of_last_group = pq.read_table(records, columns=["id"]).column(0)[2 * ROW_GROUP_ROWS].as_py()
    out = tmp_path / "out"
    with WorkerPool(2) as pool, pytest.raises(WorkerDied, match="worker process died") as err:
        run_stage(DieOnMarker(DieConfig(marker=first_id_of_last_group)), records, out,
                  executor=PoolExecutor(pool, min_rows=1, chunk_rows=1))
    assert "\n" not in str(err.value)
    assert not (out / "output.parquet").exists() and not (out / "stats.json").exists()
    assert not list(out.glob(".*.tmp"))


def test_workers_setting(monkeypatch):
    monkeypatch.delenv("SFTFLOW_WORKERS", raising=False)
    assert resolve_workers(3) == 3
    assert resolve_workers(None) >= 1
    monkeypatch.setenv("SFTFLOW_WORKERS", "5")
    assert resolve_workers(None) == 5
    monkeypatch.setenv("SFTFLOW_WORKERS", "many")
    with pytest.raises(Exception, match="SFTFLOW_WORKERS"):
        resolve_workers(None)
    with local_executor(1) as ex:
        assert isinstance(ex, SerialExecutor)
