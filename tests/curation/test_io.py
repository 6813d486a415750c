"""The column-wise record conversions every stage reads and writes through equal the per-row ones."""

from __future__ import annotations

import pyarrow as pa

from curation.io import batch_records, record_schema, records_table, rows_table
from curation.records import Record

RECORDS = [
    Record("a", [{"role": "user", "content": "Say hi."}, {"role": "assistant", "content": "Hi."}], None, "s.jsonl",
           "en", 1, {}, {"quality": 0.5, "flags": "x"}),
    Record("b", None, "plain text 中文", "t.jsonl", "zh", None, {"category": "qa", "n": 3}, {"quality": None}),
    Record("c", [{"role": "system", "content": ""}, {"role": "user", "content": "?"}], None, "", "other", 7,
           {"nested": {"k": [1, 2]}}, {}),
]
SCHEMA = record_schema({"quality": pa.float64(), "flags": pa.string()})


def test_records_table_is_rows_table_of_to_row():
    assert records_table(RECORDS, SCHEMA).equals(rows_table([r.to_row() for r in RECORDS], SCHEMA))


def test_batch_records_is_from_row_of_each_row():
    table = records_table(RECORDS, SCHEMA)
    expected = [Record.from_row(r) for r in table.to_pylist()]
    got = batch_records(table)
    assert got == expected
    # attributes: every schema column, null where a record had none (as from_row gives)
    assert got[2].attrs == {"quality": None, "flags": None}
    assert got[1].meta == {"category": "qa", "n": 3} and got[0].meta == {}
