"""Hostile input: each is a ledger row or a one-line source error, in bounded memory, never an OOM.

Scaled-down versions of the cases of issue #17 (the limits are lowered so megabytes play the role of
gigabytes); ``bench/hostile_inputs.py`` runs the full-size ones (a 200 MB JSON line, a 1 GB
unterminated string, ...) and measures their peak RSS. Memory here is what ``tracemalloc`` sees:
every Python object, the file's text included.
"""

from __future__ import annotations

import json
import random
import tracemalloc
from pathlib import Path
from typing import Any
from unittest import mock

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import given
from hypothesis import strategies as st

from curation.ingest import IngestConfig, SourceError
from curation.ingest.readers import _JsonText
from tests.curation.test_ingest import ALPACA_ROWS, reasons_by_line, run, write
from tests.curation.test_ingest_fuzz import FUZZ, json_rows, json_values

LIMIT = 256 * 1024  # max_line_bytes for these tests
CONFIG = IngestConfig(max_line_bytes=LIMIT)


@pytest.fixture(autouse=True, scope="module")
def _warm(tmp_path_factory) -> None:
    """One small ingest first: the modules it imports on first use must not count as the input's memory."""
    tmp = tmp_path_factory.mktemp("warm")
    run(tmp, [write(tmp / "w.json", _array([json.dumps(r) for r in ALPACA_ROWS]))], CONFIG)


def _peak(fn: Any) -> tuple[Any, int]:
    """(fn(), peak bytes of Python allocations while it ran)."""
    tracemalloc.start()
    try:
        out = fn()
        return out, tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def _array(elements: list[str]) -> str:
    return "[\n" + ",\n".join(elements) + "\n]\n"


def test_json_array_with_a_huge_element_streams_past_it(tmp_path: Path) -> None:
    a, b = json.dumps(ALPACA_ROWS[0]), json.dumps(ALPACA_ROWS[1])
    huge = json.dumps({"instruction": "x", "output": "y" * 12_000_000})  # ~47x the limit, one line
    src = write(tmp_path / "big.json", _array([a, huge, b]))
    (_, records, ledger), peak = _peak(lambda: run(tmp_path, [src], CONFIG))
    assert [r.line for r in records] == [2, 4]
    assert reasons_by_line(ledger) == {3: "too_large"}
    assert "element 2" in ledger[0]["detail"]
    # the 12 MB element was never held: a 1 MiB read chunk plus at most the limit of text
    assert peak < 8_000_000, f"peak {peak:,} bytes"


def test_json_array_that_is_one_unterminated_string(tmp_path: Path) -> None:
    src = write(tmp_path / "open.json", '[{"instruction": "Say hi.", "output": "Hi."},\n"' + "a" * 20_000_000)
    (_, records, ledger), peak = _peak(lambda: run(tmp_path, [src], CONFIG))
    assert len(records) == 1
    assert [d["reason"] for d in ledger] == ["too_large"]
    assert "not terminated" in ledger[0]["detail"]
    assert peak < 8_000_000, f"peak {peak:,} bytes"


def test_unterminated_string_in_json_lines_is_one_ledger_row(tmp_path: Path) -> None:
    src = write(tmp_path / "open.jsonl", json.dumps(ALPACA_ROWS[0]) + '\n{"instruction": "' + "a" * 20_000_000)
    (_, records, ledger), peak = _peak(lambda: run(tmp_path, [src], CONFIG))
    assert len(records) == 1
    assert reasons_by_line(ledger) == {2: "too_large"}
    assert peak < 8_000_000, f"peak {peak:,} bytes"


def test_json_document_over_the_limit_is_a_source_error(tmp_path: Path) -> None:
    doc = json.dumps({"data": [ALPACA_ROWS[0]] * 5000}, indent=2)
    src = write(tmp_path / "doc.json", doc)
    with pytest.raises(SourceError, match="max_document_bytes"):
        run(tmp_path, [src], IngestConfig(max_document_bytes=len(doc) // 2))
    _, records, _ = run(tmp_path, [src], IngestConfig(max_document_bytes=len(doc)))
    assert len(records) == 5000


def test_csv_with_a_million_column_header_is_a_source_error(tmp_path: Path) -> None:
    header = ",".join(f"c{i}" for i in range(1_000_000))
    src = write(tmp_path / "wide.csv", header + "\n" + ",".join("x" * 1_000_000) + "\n")
    with pytest.raises(SourceError, match="1,000,000 columns") as err:
        _peak(lambda: run(tmp_path, [src]))
    assert "\n" not in str(err.value)
    # refused from the raw line: never a list of a million strings (~60 MB)
    _, peak = _peak(lambda: pytest.raises(SourceError, run, tmp_path, [src]))
    assert peak < 4 * len(header) + 2_000_000, f"peak {peak:,} bytes for a {len(header):,}-byte header"


def test_csv_header_with_quoted_commas_is_not_miscounted(tmp_path: Path) -> None:
    src = write(tmp_path / "q.csv", '"instruction, the question",output\n"Say hi.",Hi.\n')
    _, records, _ = run(tmp_path, [src], IngestConfig(max_columns=2,
                                                      field_map={"instruction": "instruction, the question"}))
    assert [r.instruction() for r in records] == ["Say hi."]


def test_csv_line_over_the_limit_is_a_ledger_row_and_reading_goes_on(tmp_path: Path) -> None:
    rows = "instruction,output\nSay hi.,Hi.\n" + "Long," + "z" * 2_000_000 + "\nName a colour.,Blue.\n"
    src = write(tmp_path / "long.csv", rows)
    (_, records, ledger), peak = _peak(lambda: run(tmp_path, [src], CONFIG))
    assert [r.line for r in records] == [2, 4]
    assert reasons_by_line(ledger) == {3: "too_large"}
    assert peak < 4_000_000, f"peak {peak:,} bytes"


def test_csv_header_line_over_the_limit_is_a_source_error(tmp_path: Path) -> None:
    src = write(tmp_path / "h.csv", "a" * 2_000_000 + "\nx\n")
    with pytest.raises(SourceError, match="header line is longer than max_line_bytes"):
        run(tmp_path, [src], CONFIG)


def test_parquet_with_many_row_groups_is_read_and_a_huge_footer_refused(tmp_path: Path) -> None:
    n = 5000
    table = pa.table({"instruction": [f"Say hi number {i}." for i in range(n)],
                      "output": [f"Hi there, {i}." for i in range(n)]})
    src = tmp_path / "rg.parquet"
    pq.write_table(table, src, row_group_size=1)
    assert pq.ParquetFile(src).metadata.num_row_groups == n
    _, records, ledger = run(tmp_path, [src])
    assert len(records) == n and not ledger
    with pytest.raises(SourceError, match="max_parquet_footer_bytes"):
        run(tmp_path, [src], IngestConfig(max_parquet_footer_bytes=64 * 1024))


# ------------------------------------------------------------------------------------------------
# the streamed JSON array reads the same rows whatever the chunk size (chunk boundaries anywhere)


def _ingest_with_chunk(tmp: Path, data: bytes, chunk: int) -> tuple[list, list]:
    with mock.patch.object(_JsonText, "CHUNK", chunk):
        _, records, ledger = run(tmp, [write(tmp / "a.json", data)], IngestConfig(max_line_bytes=1024))
    return ([(r.id, r.line, r.messages, r.text) for r in records],
            [(d["reason"], d["line"], d["detail"]) for d in ledger])


@FUZZ
@given(
    rows=st.lists(st.one_of(json_values, json_rows), max_size=8),
    indent=st.sampled_from([None, 1, "\t"]),
    damage=st.one_of(st.none(), st.tuples(st.floats(0, 1), st.sampled_from(["", ",", "]", "{", '"', "\\", "[[["]))),
    crlf=st.booleans(),
    chunk=st.integers(1, 64),
)
def test_json_array_same_rows_at_any_chunk_size(tmp_path_factory, rows, indent, damage, crlf, chunk) -> None:
    text = json.dumps(rows, indent=indent, ensure_ascii=False)
    if crlf:
        text = text.replace("\n", "\r\n")
    data = text.encode("utf-8", "surrogatepass")
    if damage is not None:
        at, junk = damage
        data = data[: int(at * len(data))] + junk.encode()
    tmp = tmp_path_factory.mktemp("chunks")
    assert _ingest_with_chunk(tmp, data, chunk) == _ingest_with_chunk(tmp, data, 1 << 20)


def test_json_array_elements_straddling_chunks_keep_their_lines(tmp_path: Path) -> None:
    rng = random.Random(3)
    rows = [{"instruction": f"Question {i}: " + "word " * rng.randint(1, 60), "output": "答" * rng.randint(1, 40)}
            for i in range(300)]
    data = json.dumps(rows, indent=2, ensure_ascii=False).encode()
    assert _ingest_with_chunk(tmp_path, data, 97) == _ingest_with_chunk(tmp_path, data, 1 << 20)
