"""The one stage runner: executors (serial, sharded, a process pool), cache hits, ingest as a source stage."""

from __future__ import annotations

import json
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Annotated

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from pydantic import BaseModel

from curation.ingest import IngestConfig, IngestStage
from curation.io import write_records
from curation.records import Record
from curation.runner import SerialExecutor, ShardedExecutor, run_shard, run_stage
from curation.stage import Drop, Stage, StageOutput
from curation.stats import Concat, Figures, Histogram, Mean, Same, Sum


class LenConfig(BaseModel):
    min_chars: int = 12
    examples: int = 4


class LenFigures(Figures):
    lengths: Annotated[dict[str, int], Sum] = {}
    histogram: Histogram = Histogram(edges=[0, 10, 100, 1000], counts=[0, 0, 0])
    mean_length: Annotated[float | None, Mean] = None
    examples: Annotated[list[str], Concat(cap="examples")] = []
    min_chars: Annotated[int, Same] = 0


class MinLen(Stage):
    """Per-row: drops short responses, scores the rest; typed figures with merge rules."""

    name = "min_len"
    Config = LenConfig
    Figures = LenFigures
    attr_fields = {"resp_len": pa.int64()}

    def __init__(self, config=None):
        super().__init__(config)
        self.fig = LenFigures(min_chars=self.config.min_chars)
        self._total = 0

    def process(self, batch: list[Record]) -> StageOutput:
        out = StageOutput()
        for r in batch:
            n = len(r.response())
            bucket = "short" if n < 10 else "long"
            self.fig.lengths[bucket] = self.fig.lengths.get(bucket, 0) + 1
            self.fig.histogram.counts[0 if n < 10 else 1 if n < 100 else 2] += 1
            self._total += n
            if n < self.config.min_chars:
                if len(self.fig.examples) < self.config.examples:
                    self.fig.examples.append(r.id)
                out.dropped.append(Drop(r, "too_short", f"{n} chars"))
            else:
                r.attrs["resp_len"] = n
                out.kept.append(r)
        return out

    def stats(self) -> LenFigures:
        rows = sum(self.fig.lengths.values())
        self.fig.mean_length = round(self._total / rows, 6) if rows else None
        return self.fig


class Untyped(MinLen):
    """The same stage with a plain-dict ``stats``: nothing says how its figures merge."""

    name = "untyped"
    Figures = None

    def stats(self) -> dict:
        return {"rows_seen": sum(self.fig.lengths.values()), "counts": list(self.fig.histogram.counts)}


def _records(n: int = 50) -> list[Record]:
    return [Record(id=f"r{i}", messages=[{"role": "user", "content": f"q {i}"},
                                         {"role": "assistant", "content": "a" * (i % 23)}]) for i in range(n)]


@pytest.fixture
def src(tmp_path) -> Path:
    path = tmp_path / "in.parquet"
    write_records(path, _records())
    return path


def _bytes(folder: Path) -> dict[str, bytes]:
    return {n: (folder / n).read_bytes() for n in ("output.parquet", "ledger.parquet")}


def test_sharded_executor_writes_the_serial_bytes_and_merges_typed_figures(src, tmp_path):
    serial = run_stage(MinLen(), src, tmp_path / "serial", batch_size=7)
    ex = ShardedExecutor(4)
    sharded = run_stage(MinLen(), src, tmp_path / "sharded", batch_size=7, executor=ex)
    assert ex.sharded == ["min_len"] and sharded.shards == 4
    assert _bytes(tmp_path / "sharded") == _bytes(tmp_path / "serial")
    assert sharded.fingerprint == serial.fingerprint
    for key in ("rows_in", "rows_out", "rows_dropped", "dropped_by_reason"):
        assert getattr(sharded, key) == getattr(serial, key)
    a, b = sharded.figures(LenFigures), serial.figures(LenFigures)
    assert a.lengths == b.lengths and a.histogram == b.histogram and a.min_chars == 12
    assert a.mean_length == pytest.approx(b.mean_length)
    assert a.examples == b.examples[:4] and len(a.examples) == 4  # concatenated in shard order, capped
    assert not (tmp_path / "sharded" / ".shards").exists()


def test_a_stage_without_figures_is_never_sharded(src, tmp_path):
    """No guessing how plain-dict figures would merge: such a stage runs whole."""
    ex = ShardedExecutor(3)
    serial = run_stage(Untyped(), src, tmp_path / "serial")
    whole = run_stage(Untyped(), src, tmp_path / "whole", executor=ex)
    assert ex.sharded == [] and whole.shards is None and whole.extra == serial.extra


def test_a_process_pool_is_a_drop_in_map(src, tmp_path):
    """The local process-pool executor is ``ProcessPoolExecutor.map``: same bytes as one worker."""
    run_stage(MinLen(), src, tmp_path / "serial")
    with ProcessPoolExecutor(2) as pool:
        ex = ShardedExecutor(3, lambda jobs: list(pool.map(run_shard, jobs)))
        stats = run_stage(MinLen(), src, tmp_path / "pool", executor=ex)
    assert stats.shards == 3
    assert _bytes(tmp_path / "pool") == _bytes(tmp_path / "serial")


def test_a_global_stage_runs_whole(tmp_path, src):
    class Keep(Stage):
        name = "keep"
        Config = LenConfig
        needs_fit = True

        def fit(self, batches):
            self.n = sum(len(b) for b in batches)

        def process(self, batch):
            return StageOutput(kept=list(batch))

    ex = ShardedExecutor(4)
    stats = run_stage(Keep(), src, tmp_path / "out", executor=ex)
    assert ex.sharded == [] and stats.shards is None and stats.rows_out == 50


def test_a_disagreeing_figure_without_a_merge_rule_fails_loudly():
    class F(Figures):
        threshold: float = 0.5

    with pytest.raises(ValueError, match="F.threshold: shards differ"):
        F.merge([F(threshold=0.5), F(threshold=0.6)], [1, 1])
    assert F.merge([F(), F()], [1, 1]).threshold == 0.5


@pytest.mark.parametrize("executor", [None, ShardedExecutor(3)], ids=["serial", "sharded"])
def test_cache_hit_needs_the_published_files(src, tmp_path, executor):
    """Every executor gets the same cache check: stats.json + files with the counts it names."""
    out = tmp_path / "out"
    first = run_stage(MinLen(), src, out, executor=executor)
    again = run_stage(MinLen(), src, out, resume=True, executor=executor)
    assert again.cached and not first.cached
    (out / "ledger.parquet").unlink()
    rebuilt = run_stage(MinLen(), src, out, resume=True, executor=executor)
    assert not rebuilt.cached and (out / "ledger.parquet").exists()
    assert json.loads((out / "stats.json").read_text())["fingerprint"] == first.fingerprint


def test_ingest_is_a_stage_like_the_others(tmp_path):
    src = tmp_path / "rows.jsonl"
    src.write_text('{"id": "a", "instruction": "q", "output": "x"}\n{oops\n')
    stage = IngestStage(IngestConfig(), [str(src)])
    first = run_stage(stage, None, tmp_path / "ing", executor=SerialExecutor())
    assert (first.rows_in, first.rows_out, first.dropped_by_reason) == (2, 1, {"bad_json": 1})
    again = run_stage(IngestStage(IngestConfig(), [str(src)]), None, tmp_path / "ing", resume=True)
    assert again.cached
    src.write_text(src.read_text() + '{"instruction": "q2", "output": "y"}\n')
    changed = run_stage(IngestStage(IngestConfig(), [str(src)]), None, tmp_path / "ing", resume=True)
    assert not changed.cached and changed.rows_in == 3
    assert pq.read_metadata(tmp_path / "ing" / "output.parquet").num_rows == 2
