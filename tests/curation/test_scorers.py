"""The scorer seam: a small fake model-backed scorer registered by the test, run by the score stage.

Checks what a real one (IFD) relies on: recipe/CLI configuration by name, per-row cache (hits, only
new rows scored, a weights or settings change misses), length-sorted batches, one model load per
process, and one-line errors.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, ClassVar

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from curation import registry, scorers
from curation.errors import ConfigError
from curation.io import write_records
from curation.records import Record
from curation.registry import SCORERS
from curation.runner import apply_stage, run_stage
from curation.scorers import Scorer, ScorerSettings, model_weights_digest
from curation.stage import build_stage


class FakeSettings(ScorerSettings):
    model: str
    scale: float = 1.0


class FakeScorer(Scorer):
    """Score = weight (read from the model file) x scale x characters of the row."""

    Settings = FakeSettings
    loads: ClassVar[int] = 0
    batches: ClassVar[list[list[int]]] = []

    def columns(self) -> dict[str, pa.DataType]:
        return {"fake_score": pa.float64(), "fake_label": pa.string()}

    def weights_digest(self) -> str:
        return model_weights_digest(self.settings.model)

    def load(self) -> None:
        type(self).loads += 1
        self.weight = float(Path(self.settings.model).read_text())

    def score(self, records: list[Record]) -> dict[str, list[Any]]:
        type(self).batches.append([self.sort_key(r) for r in records])
        values = [self.weight * self.settings.scale * len(r.full_text()) for r in records]
        return {"fake_score": values, "fake_label": ["long" if v > 40 else "short" for v in values]}


@pytest.fixture
def fake(tmp_path, monkeypatch) -> Path:
    """Registers the fake scorer, isolates the cache, and starts a fresh 'process' (no instances)."""
    monkeypatch.setenv("SFTFLOW_CACHE", str(tmp_path / "cache"))
    monkeypatch.setitem(SCORERS, "fake", FakeScorer)
    monkeypatch.setattr(registry, "_INSTANCES", {})
    FakeScorer.loads = 0
    FakeScorer.batches = []
    weights = tmp_path / "weights.txt"
    weights.write_text("1.0")
    return weights


def rows(n: int, start: int = 0) -> list[Record]:
    return [
        Record(
            id=f"r{i}",
            messages=[{"role": "user", "content": f"question {i}"}, {"role": "assistant", "content": "x" * (i % 7)}],
            lang="en",
        )
        for i in range(start, start + n)
    ]


def stage(weights: Path, **settings: Any):
    return build_stage("score", {"fake": {"model": str(weights), **settings}})


def scorer_stats(stats: dict) -> dict:
    return stats.extra["scorers"]["fake"]


def test_configured_by_name_adds_its_columns_and_values(fake, tmp_path) -> None:
    src = tmp_path / "in.parquet"
    write_records(src, rows(10))
    stats = run_stage(stage(fake), src, tmp_path / "out")
    table = pq.read_table(tmp_path / "out" / "output.parquet")
    assert {"complexity", "task_type", "fake_score", "fake_label"} <= set(table.column_names)
    assert table.schema.field("fake_score").type == pa.float64()
    texts = [r.full_text() for r in rows(10)]
    assert table.column("fake_score").to_pylist() == [float(len(t)) for t in texts]
    assert stats.extra["scorer_columns"] == {"fake": ["fake_score", "fake_label"]}
    assert scorer_stats(stats) | {"load_seconds": 0, "score_seconds": 0} == {
        "rows": 10,
        "cache_hits": 0,
        "scored": 10,
        "batches": 1,
        "load_seconds": 0,
        "score_seconds": 0,
    }


def test_rerun_is_served_from_the_cache_with_identical_output(fake, tmp_path) -> None:
    src = tmp_path / "in.parquet"
    write_records(src, rows(10))
    run_stage(stage(fake), src, tmp_path / "a")
    registry._INSTANCES.clear()  # a new process: nothing loaded
    FakeScorer.loads = 0
    stats = run_stage(stage(fake), src, tmp_path / "b")
    assert scorer_stats(stats)["cache_hits"] == 10 and scorer_stats(stats)["scored"] == 0
    assert FakeScorer.loads == 0  # a fully cached run never loads the model
    assert (tmp_path / "a" / "output.parquet").read_bytes() == (tmp_path / "b" / "output.parquet").read_bytes()


def test_only_new_rows_are_scored(fake) -> None:
    apply_stage(stage(fake), rows(8))
    _, _, stats = apply_stage(stage(fake), rows(8) + rows(5, start=100))
    assert scorer_stats(stats)["cache_hits"] == 8
    assert scorer_stats(stats)["scored"] == 5
    # the key is the content, not the id: a renamed copy is a hit
    renamed = rows(3)
    for r in renamed:
        r.id = "copy-" + r.id
    _, _, stats = apply_stage(stage(fake), renamed)
    assert scorer_stats(stats)["cache_hits"] == 3


def test_new_weights_or_settings_miss_but_batch_size_does_not(fake) -> None:
    kept, _, _ = apply_stage(stage(fake), rows(6))
    first = [r.attrs["fake_score"] for r in kept]
    fp = stage(fake).fingerprint()

    fake.write_text("2.0")  # new weights: new fingerprint, every row scored again
    kept, _, stats = apply_stage(stage(fake), rows(6))
    assert scorer_stats(stats)["scored"] == 6
    assert [r.attrs["fake_score"] for r in kept] == [2 * v for v in first]
    assert stage(fake).fingerprint() != fp  # the stage reruns on resume too

    _, _, stats = apply_stage(stage(fake, scale=0.5), rows(6))
    assert scorer_stats(stats)["scored"] == 6
    _, _, stats = apply_stage(stage(fake, scale=0.5, batch_size=2), rows(6))
    assert scorer_stats(stats)["cache_hits"] == 6


def test_misses_are_scored_in_length_sorted_batches(fake) -> None:
    recs = rows(14)
    recs.append(Record(id="dup", messages=recs[3].messages, lang="en"))  # same content: scored once
    _, _, stats = apply_stage(stage(fake, batch_size=4), recs)
    sizes = [len(b) for b in FakeScorer.batches]
    assert sizes == [4, 4, 4, 2] and scorer_stats(stats)["batches"] == 4
    flat = [k for b in FakeScorer.batches for k in b]
    assert flat == sorted(flat, reverse=True)
    assert scorer_stats(stats)["scored"] == 14


def test_model_loads_once_per_process_across_stages_and_shards(fake) -> None:
    for part in (rows(5), rows(5, start=5), rows(5, start=10)):  # three shards / three stage instances
        apply_stage(stage(fake, cache=False), part)
    assert FakeScorer.loads == 1
    assert scorers.get_scorer("fake", FakeSettings(model=str(fake), cache=False)) is stage(
        fake, cache=False
    ).scorers["fake"]


def test_cache_off_scores_every_time(fake) -> None:
    apply_stage(stage(fake, cache=False), rows(4))
    _, _, stats = apply_stage(stage(fake, cache=False), rows(4))
    assert scorer_stats(stats)["scored"] == 4 and scorer_stats(stats)["cache_hits"] == 0
    assert not (Path(scorers.cache_root()) / "scores").exists()


def test_unknown_scorer_and_bad_settings_are_one_line_errors(fake) -> None:
    with pytest.raises(ConfigError, match="unknown scorer 'judge'; known: .*fake"):
        build_stage("score", {"judge": {"model": "m"}})
    with pytest.raises(ConfigError, match=r"score: .*fake\.model: Field required"):
        build_stage("score", {"fake": {}})
    with pytest.raises(ConfigError, match=r"fake\.batch_size: Input should be greater than or equal to 1"):
        build_stage("score", {"fake": {"model": str(fake), "batch_size": 0}})


def test_a_scorer_returning_the_wrong_shape_is_named(fake, monkeypatch) -> None:
    monkeypatch.setattr(FakeScorer, "score", lambda self, records: {"fake_score": [1.0]})
    with pytest.raises(scorers.ScorerError, match="scorer 'fake' returned columns"):
        apply_stage(stage(fake), rows(3))


def test_cli_set_turns_a_scorer_on(fake, tmp_path, monkeypatch, capsys) -> None:
    from flows import cli

    src = tmp_path / "in.parquet"
    write_records(src, rows(6))
    out = tmp_path / "out"
    monkeypatch.setattr(sys, "argv", ["sftflow", "score", str(src), "--out", str(out), "--set", f"fake.model={fake}"])
    with pytest.raises(SystemExit) as e:
        cli.main()
    assert e.value.code == 0
    assert pq.read_table(out / "output.parquet").column("fake_label").to_pylist()[:2] == ["short", "short"]
    monkeypatch.setattr(sys, "argv", ["sftflow", "score", str(src), "--out", str(out), "--set", "fake.scale=2"])
    with pytest.raises(SystemExit) as e:
        cli.main()
    assert e.value.code == 2
    assert "fake.model: Field required" in capsys.readouterr().err


def test_shards_share_the_process_model_and_their_figures_merge(fake, tmp_path) -> None:
    from curation.runner import ShardedExecutor

    src = tmp_path / "in.parquet"
    write_records(src, rows(12))
    serial = run_stage(stage(fake, cache=False), src, tmp_path / "serial")
    sharded = run_stage(stage(fake, cache=False), src, tmp_path / "sharded", executor=ShardedExecutor(3))
    assert sharded.shards == 3 and FakeScorer.loads == 1
    assert (tmp_path / "serial" / "output.parquet").read_bytes() == (tmp_path / "sharded" / "output.parquet").read_bytes()
    assert scorer_stats(sharded)["scored"] == scorer_stats(serial)["scored"] == 12
    assert scorer_stats(sharded)["batches"] == 3  # one per shard
    assert sharded.extra["task_types"] == serial.extra["task_types"]
