"""The exclude stage: copies of reference rows (exact, near) are dropped with the reference row's id."""

from __future__ import annotations

from curation.exclude import ExcludeConfig, ExcludeStage
from curation.io import write_records
from curation.records import Record


def _rec(i: str, q: str, a: str) -> Record:
    return Record(id=i, messages=[{"role": "user", "content": q}, {"role": "assistant", "content": a}])


def test_exact_and_near_copies_of_reference_rows_are_dropped(tmp_path):
    ref = tmp_path / "ref.parquet"
    long = "Explain how photosynthesis turns light, water and carbon dioxide into sugar and oxygen in plant leaves"
    write_records(ref, [_rec("h1", long, "Plants use chlorophyll to capture light energy and make glucose."),
                        _rec("h2", "什么是光合作用？请简单解释。", "光合作用是植物利用光能把二氧化碳和水转化为糖和氧气的过程。")])
    stage = ExcludeStage(ExcludeConfig(reference=str(ref), threshold=0.7))
    batch = [
        _rec("a", long, "Plants use chlorophyll to capture light energy and make glucose."),  # exact
        _rec("b", "  EXPLAIN how photosynthesis turns light, water and carbon dioxide into sugar and oxygen in plant "
             "leaves", "Plants use chlorophyll to capture light energy and make glucose."),  # exact after normalising
        _rec("c", long, "Plants use chlorophyll to capture light energy and make glucose quickly."),  # near
        _rec("d", "Write a haiku about autumn rain", "Cold rain on the roof"),  # unrelated
        _rec("e", "什么是光合作用？请简单解释。", "光合作用是植物利用光能把二氧化碳和水转化为糖和氧气的过程。"),
    ]
    out = stage.process(batch)
    assert [r.id for r in out.kept] == ["d"]
    by = {d.record.id: d for d in out.dropped}
    assert {d.reason for d in out.dropped} == {"excluded_copy"}
    assert by["a"].duplicate_of == "h1" and by["a"].detail == "exact copy" and by["b"].detail == "exact copy"
    assert by["c"].duplicate_of == "h1" and "near copy" in by["c"].detail
    assert by["e"].duplicate_of == "h2"
    f = stage.stats()
    assert (f.reference_rows, f.exact, f.near) == (2, 3, 1)
