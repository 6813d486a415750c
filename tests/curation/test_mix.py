"""General-data replay mixer: share, determinism, stratification, and loud shortfalls."""

from __future__ import annotations

import json
from collections import Counter

import pyarrow.parquet as pq
import pytest

from curation.io import write_records
from curation.mix import MixConfig, MixPoolTooSmall, MixStage, approx_tokens
from curation.records import Record
from curation.runner import apply_stage, run_stage


def task_rows(n: int) -> list[Record]:
    return [
        Record(
            id=f"task{i}",
            messages=[
                {"role": "user", "content": f"Question number {i} about our product?"},
                {"role": "assistant", "content": "Answer " * (1 + i % 7)},
            ],
            lang="en",
            attrs={"task_type": "open_qa"},
        )
        for i in range(n)
    ]


def write_general(path, n: int, prefix: str) -> str:
    """An alpaca-style jsonl with a mix of task types (translation / math / creative writing)."""
    kinds = [
        "Translate into French: good morning number {i}",
        "What is {i} + 17? Solve it.",
        "Write a short poem about autumn leaf {i}",
    ]
    with open(path, "w", encoding="utf-8") as fh:
        for i in range(n):
            fh.write(
                json.dumps(
                    {
                        "instruction": kinds[i % 3].format(i=i),
                        "input": "",
                        "output": f"{prefix} answer {i} " + "word " * (i % 11),
                    }
                )
                + "\n"
            )
    return str(path)


def run(cfg: MixConfig, n_task: int) -> tuple[list[Record], dict]:
    kept, dropped, stats = apply_stage(MixStage(cfg), task_rows(n_task), batch_size=64)
    assert dropped == []
    return kept, stats


def test_ratio_gives_share_within_one_point_and_tags_rows(tmp_path) -> None:
    a = write_general(tmp_path / "a.jsonl", 300, "A")
    b = write_general(tmp_path / "b.jsonl", 300, "B")
    kept, stats = run(MixConfig(general=[a, b], ratio=0.2, seed=1), 403)
    general = [r for r in kept if r.attrs["mix_source"] == "general"]
    task = [r for r in kept if r.attrs["mix_source"] == "task"]
    assert len(task) == 403
    assert abs(len(general) / len(kept) - 0.2) <= 0.01
    assert stats.rows_added == len(general) and stats.rows_out == len(kept)
    assert {r.attrs["mix_origin"] for r in general} == {a, b}
    assert all(r.attrs["mix_origin"] is None for r in task)
    # equal split across sources, and each source's task types all represented
    per_source = Counter(r.attrs["mix_origin"] for r in general)
    assert abs(per_source[a] - per_source[b]) <= 1
    for src in (a, b):
        types = Counter(r.attrs["task_type"] for r in general if r.attrs["mix_origin"] == src)
        assert len(types) == 3 and max(types.values()) - min(types.values()) <= 2
    assert len({r.id for r in kept}) == len(kept)
    assert stats.extra["achieved_ratio"] == pytest.approx(0.2, abs=0.01)


def test_same_seed_same_output_other_seed_other_sample(tmp_path) -> None:
    a = write_general(tmp_path / "a.jsonl", 500, "A")
    ids = {}
    for seed in (7, 7, 8):
        kept, _ = run(MixConfig(general=[a], ratio=0.2, seed=seed), 200)
        ids.setdefault(seed, []).append([r.id for r in kept if r.attrs["mix_source"] == "general"])
    assert ids[7][0] == ids[7][1]
    assert ids[7][0] != ids[8][0] and len(ids[7][0]) == len(ids[8][0]) == 50


def test_ratio_by_tokens(tmp_path) -> None:
    a = write_general(tmp_path / "a.jsonl", 2000, "A")
    kept, stats = run(MixConfig(general=[a], ratio=0.2, by="tokens"), 300)
    tok = Counter()
    for r in kept:
        tok[r.attrs["mix_source"]] += approx_tokens(r.full_text())
    share = tok["general"] / (tok["general"] + tok["task"])
    assert abs(share - 0.2) <= 0.01
    assert stats.extra["achieved_ratio"] == pytest.approx(share, abs=1e-3)


def test_proportional_balance_follows_source_sizes(tmp_path) -> None:
    a = write_general(tmp_path / "a.jsonl", 300, "A")
    b = write_general(tmp_path / "b.jsonl", 100, "B")
    kept, _ = run(MixConfig(general=[a, b], ratio=0.5, source_balance="proportional"), 200)
    per_source = Counter(r.attrs["mix_origin"] for r in kept if r.attrs["mix_source"] == "general")
    assert per_source == {a: 150, b: 50}


def test_exhausted_source_hands_its_share_to_the_others(tmp_path) -> None:
    a = write_general(tmp_path / "a.jsonl", 300, "A")
    b = write_general(tmp_path / "b.jsonl", 10, "B")
    kept, _ = run(MixConfig(general=[a, b], ratio=0.5), 100)
    per_source = Counter(r.attrs["mix_origin"] for r in kept if r.attrs["mix_source"] == "general")
    assert per_source == {a: 90, b: 10}


def test_pool_too_small_strict_fails_with_numbers(tmp_path) -> None:
    a = write_general(tmp_path / "a.jsonl", 10, "A")
    with pytest.raises(MixPoolTooSmall, match=r"general pool has 10 rows .* needs 25"):
        run(MixConfig(general=[a], ratio=0.2, strict=True), 100)


def test_pool_too_small_lenient_warns_and_records_shortfall(tmp_path) -> None:
    a = write_general(tmp_path / "a.jsonl", 10, "A")
    with pytest.warns(UserWarning, match="general pool has 10 rows"):
        kept, stats = run(MixConfig(general=[a], ratio=0.2, strict=False), 100)
    assert sum(r.attrs["mix_source"] == "general" for r in kept) == 10
    assert stats.extra["shortfall"] == {"target": 25, "available": 10, "missing": 15}
    assert stats.extra["achieved_ratio"] == pytest.approx(10 / 110, abs=1e-4)


def test_no_general_data_with_a_ratio_is_an_error() -> None:
    with pytest.raises(MixPoolTooSmall, match="no general data"):
        run(MixConfig(general=[], ratio=0.2), 10)


def test_missing_general_file_names_it(tmp_path) -> None:
    with pytest.raises(ValueError, match="nope.jsonl"):
        run(MixConfig(general=[str(tmp_path / "nope.jsonl")], ratio=0.2), 10)


def test_records_parquet_pool_and_run_stage_invariant(tmp_path) -> None:
    general = [
        Record(id=f"g{i}", text=f"General document {i} about the world.", lang="en") for i in range(50)
    ]
    general.append(Record(id="task0", text="same id as a task row", lang="en"))
    write_records(tmp_path / "general.parquet", general)
    write_records(tmp_path / "task.parquet", task_rows(80))
    stats = run_stage(
        MixStage(MixConfig(general=[str(tmp_path / "general.parquet")], ratio=0.2)),
        tmp_path / "task.parquet",
        tmp_path / "out",
        batch_size=32,
    )
    assert stats.rows_in == 80 and stats.rows_added == 20 and stats.rows_out == 100
    out = pq.read_table(tmp_path / "out" / "output.parquet").to_pylist()
    assert Counter(r["mix_source"] for r in out) == {"task": 80, "general": 20}
    assert len({r["id"] for r in out}) == 100  # a colliding general id is renamed, never duplicated


def test_bad_general_rows_are_counted_not_fatal(tmp_path) -> None:
    p = tmp_path / "g.jsonl"
    good = write_general(tmp_path / "good.jsonl", 40, "G")
    p.write_text(
        open(good, encoding="utf-8").read() + "{not json\n" + json.dumps({"foo": 1}) + "\n", encoding="utf-8"
    )
    kept, stats = run(MixConfig(general=[str(p)], ratio=0.2), 40)
    assert sum(r.attrs["mix_source"] == "general" for r in kept) == 10
    assert stats.extra["pool_bad_rows"] == {str(p): {"bad_json": 1, "unknown_format": 1}}
