"""Fuzzing ingest: whatever the bytes, no crash, nothing lost (rows in = rows out + ledger rows), and
every row we know to be bad is ledgered with its precise reason at its line."""

from __future__ import annotations

import csv
import gzip
import io
import json
import os
import re
import tempfile
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from curation.ingest import CANONICAL_FIELDS, IngestConfig, RowError, SourceError, row_to_record
from curation.ingest.readers import _iter_lines
from curation.records import ROLES
from tests.curation.test_ingest import run

KNOWN_REASONS = {
    "bad_json",
    "bad_csv",
    "invalid_utf8",
    "nested_too_deep",
    "not_an_object",
    "unknown_format",
    "unsupported_format",
    "missing_field",
    "null_field",
    "wrong_type",
    "bad_role",
    "empty_content",
    "too_large",
    "duplicate_id",
}
MAX_CHARS = 1000
MAX_LINE = 64 * 1024
CONFIG = IngestConfig(
    max_chars=MAX_CHARS, max_line_bytes=MAX_LINE, batch_size=7
)  # small batches: many flushes
# CI runs a modest number of examples; SFTFLOW_FUZZ_EXAMPLES=2000 for a deep local search
FUZZ = settings(
    max_examples=int(os.environ.get("SFTFLOW_FUZZ_EXAMPLES", "40")),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
BREAKS = re.compile(rb"\r\n|\r|\n")

FIELD_NAMES = [
    "id", "system", "instruction", "input", "output", "messages", "conversations", "text", "question",
    "answer", "std_answer", "prompt", "completion", "response", "context", "instances", "role", "content",
    "from", "value", "category", "tags",
]  # fmt: skip

# any code point, lone surrogates included (JSON can carry them as \ud800 escapes)
any_text = st.text(st.characters(codec=None, exclude_categories=()), max_size=30)
# text ingest must keep: no surrogates, not blank
good_text = st.text(st.characters(exclude_categories=("Cs",)), min_size=1, max_size=40).filter(str.strip)
csv_text = st.text(
    st.characters(exclude_categories=("Cs",), exclude_characters="\x00"), min_size=1, max_size=40
).filter(str.strip)

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats()
    | any_text
    | st.sampled_from(["user", "gpt", "human"]),
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.dictionaries(st.sampled_from(FIELD_NAMES) | any_text, inner, max_size=5)
    ),
    max_leaves=25,
)
json_rows = st.dictionaries(st.sampled_from(FIELD_NAMES), json_values, max_size=6)


@st.composite
def good_rows(draw: st.DrawFn) -> tuple[dict, str, str]:
    """A valid row of a random format, with the instruction and answer it must become."""
    instr, answer = draw(good_text), draw(good_text)
    fmt = draw(st.sampled_from(["alpaca", "dolly", "sharegpt", "openai", "qa", "prompt", "text"]))
    row: dict[str, Any] = {
        "alpaca": {"instruction": instr, "input": "", "output": answer},
        "dolly": {"instruction": instr, "context": "", "response": answer},
        "sharegpt": {"conversations": [{"from": "human", "value": instr}, {"from": "gpt", "value": answer}]},
        "openai": {
            "messages": [{"role": "user", "content": instr}, {"role": "assistant", "content": answer}]
        },
        "qa": {"question": instr, "answer": answer},
        "prompt": {"prompt": instr, "completion": answer},
        "text": {"text": instr},
    }[fmt]
    if draw(st.booleans()):
        row["category"] = draw(any_text.filter(lambda s: not re.search("[\ud800-\udfff]", s)))
    return row, instr, answer if fmt != "text" else ""


@st.composite
def bad_lines(draw: st.DrawFn) -> tuple[bytes, str | None]:
    """(line bytes, the reason ingest must give; None when any reason, or keeping it, is fine)."""
    row, _, _ = draw(good_rows())
    dumped = json.dumps(row, ensure_ascii=draw(st.booleans()))
    kind = draw(
        st.sampled_from(
            [
                "truncated",
                "binary",
                "value",
                "deep",
                "deep_meta",
                "utf8",
                "huge",
                "long_line",
                "null",
                "type",
                "nan",
            ]
        )
    )
    if kind == "truncated":
        return dumped[: draw(st.integers(1, len(dumped) - 1))].encode(), "bad_json"  # cut between characters
    if kind == "binary":
        return draw(st.binary(min_size=1, max_size=60)), None
    if kind == "value":
        return json.dumps(draw(json_values | json_rows)).encode(), None
    if kind == "deep":
        depth = draw(st.integers(3000, 8000))  # deeper than the parser goes, shorter than MAX_LINE
        opener, closer = draw(st.sampled_from([(b"[", b"]"), (b'{"a":', b"}")]))
        return opener * depth + (b"1" if opener != b"[" else b"") + closer * depth, "nested_too_deep"
    if kind == "deep_meta":
        depth = draw(st.integers(3000, 10_000))
        return b'{"text": "t", "tags": ' + b"[" * depth + b"]" * depth + b"}", "nested_too_deep"
    if kind == "utf8":
        bad = draw(
            st.sampled_from(
                [b"\xff", b"\xc3\x28", b"\xed\xa0\x80", b"\xe2\x82", b"\x80", b"\\ud800", b"\\udfff"]
            )
        )
        return b'{"text": "ok ' + bad + b' ok"}', "invalid_utf8"
    if kind == "huge":
        return json.dumps(
            {"instruction": "q", "output": "x" * draw(st.integers(MAX_CHARS, 3 * MAX_CHARS))}
        ).encode(), ("too_large")
    if kind == "long_line":  # skipped unread, whatever it holds
        return b'{"text": "' + b"y" * draw(st.integers(MAX_LINE, 2 * MAX_LINE)) + b'"}', "too_large"
    if kind == "null":
        return json.dumps({"instruction": None, "output": "x"}).encode(), "null_field"
    if kind == "type":
        return json.dumps(
            {"instruction": "q", "output": draw(st.lists(st.integers(), max_size=2))}
        ).encode(), ("wrong_type")
    return b'{"text": NaN}', "wrong_type"


def _ingest_bytes(tmp: Path, name: str, data: bytes, **kw: Any) -> tuple[Any, list, list]:
    path = tmp / name
    path.write_bytes(gzip.compress(data) if name.endswith(".gz") else data)
    return run(tmp, [path], kw.pop("config", CONFIG), **kw)


def _reasons_ok(ledger: list[dict]) -> None:
    for d in ledger:
        assert d["reason"] in KNOWN_REASONS, d
        assert d["detail"].split(": ", 1)[1].strip(), "every drop explains itself"


# --------------------------------------------------------------------------------------------------


@FUZZ
@given(
    row=json_values | json_rows,
    field_map=st.one_of(
        st.just({}),
        st.dictionaries(st.sampled_from(CANONICAL_FIELDS), st.sampled_from(FIELD_NAMES), max_size=3),
    ),
)
def test_row_to_record_only_raises_row_errors(row: Any, field_map: dict[str, str]) -> None:
    config = CONFIG.model_copy(update={"field_map": field_map})
    try:
        rec, fmt = row_to_record(row, "fuzz", 1, config)
    except RowError as e:
        assert e.reason in KNOWN_REASONS and e.detail
        return
    assert fmt != "unknown"
    if rec.messages is not None:
        assert {m["role"] for m in rec.messages} <= set(ROLES)
        assert all(m["content"].strip() for m in rec.messages)
    else:
        assert rec.text.strip()
    assert rec.lang in ("zh", "en", "other")
    rec.full_text().encode("utf-8")  # parquet needs valid UTF-8: no lone surrogates may pass


@FUZZ
@given(
    items=st.lists(
        st.one_of(good_rows().map(lambda g: ("good", g)), bad_lines().map(lambda b: ("bad", b))), max_size=12
    ),
    seps=st.lists(st.sampled_from([b"\n", b"\r\n", b"\r", b"\n\n", b"\r\n  \r\n"]), min_size=13, max_size=13),
    bom=st.booleans(),
    last_newline=st.booleans(),
    gz=st.booleans(),
)
def test_jsonl_any_mix_of_good_and_bad_lines(
    items: list, seps: list[bytes], bom: bool, last_newline: bool, gz: bool
) -> None:
    data = b"\xef\xbb\xbf" if bom else b""
    expect_kept: dict[int, str] = {}  # line → answer
    expect_reason: dict[int, str] = {}
    for i, (kind, payload) in enumerate(items):
        line = len(BREAKS.findall(data)) + 1
        if kind == "good":
            row, _, answer = payload
            expect_kept[line] = answer
            data += json.dumps(row, ensure_ascii=i % 2 == 0).encode()
        else:
            raw, reason = payload
            if reason is not None:
                expect_reason[line] = reason
            data += raw
        if i < len(items) - 1 or last_newline:
            data += seps[i]
    with tempfile.TemporaryDirectory() as tmp:
        if data[:2] in (b"\xff\xfe", b"\xfe\xff"):  # a UTF-16 BOM: the file is refused, not misread
            with pytest.raises(SourceError, match="UTF-16"):
                _ingest_bytes(Path(tmp), "f.jsonl", data)
            return
        res, records, ledger = _ingest_bytes(Path(tmp), "f.jsonl.gz" if gz else "f.jsonl", data)
    _reasons_ok(ledger)
    nonblank = [
        i + 1 for i, part in enumerate(BREAKS.split(data)) if part.removeprefix(b"\xef\xbb\xbf").strip()
    ]
    assert sorted([r.line for r in records] + [d["line"] for d in ledger]) == nonblank, "one entry per line"
    got_kept = {r.line: r for r in records}
    for line, answer in expect_kept.items():
        assert line in got_kept, (line, [d for d in ledger if d["line"] == line])
        assert got_kept[line].response() == answer
    got_reason = {d["line"]: d["reason"] for d in ledger}
    assert {ln: got_reason.get(ln) for ln in expect_reason} == expect_reason


@FUZZ
@given(
    rows=st.lists(st.one_of(good_rows().map(lambda g: g[0]), json_values, json_rows), max_size=10),
    indent=st.sampled_from([None, 1, 2, "\t"]),
    damage=st.one_of(
        st.none(), st.tuples(st.floats(0, 1), st.sampled_from(["", ",", "]", "{", '"', "\xff", "[[["]))
    ),
    gz=st.booleans(),
)
def test_json_array_whole_or_damaged(rows: list, indent: Any, damage: Any, gz: bool) -> None:
    text = json.dumps(rows, indent=indent, ensure_ascii=False)
    n_good = sum(1 for r in rows if isinstance(r, dict) and _is_good(r))
    data = text.encode("utf-8", "surrogatepass")
    if damage is not None:
        at, junk = damage
        cut = int(at * len(data))
        data = data[:cut] + junk.encode("latin-1")
    with tempfile.TemporaryDirectory() as tmp:
        res, records, ledger = _ingest_bytes(Path(tmp), "a.json.gz" if gz else "a.json", data)
    _reasons_ok(ledger)
    if damage is None:
        assert res.stats.rows_in == len(rows)
        assert len(records) >= n_good
        # each element is reported at the line it starts on
        starts, line = [], 2
        for r in rows:
            starts.append(1 if indent is None else line)
            line += json.dumps(r, indent=indent).count("\n") + 1
        assert sorted([r.line for r in records] + [d["line"] for d in ledger]) == starts


def _is_good(row: dict) -> bool:
    try:
        row_to_record(row, "x", 1, CONFIG)
    except RowError:
        return False
    rid = row.get("id")  # given ids may repeat: those rows are dropped as duplicates
    return rid is None or (isinstance(rid, str) and not rid.strip())


@FUZZ
@given(
    cells=st.lists(
        st.tuples(csv_text, st.one_of(st.just(""), csv_text), st.one_of(st.just(" "), csv_text)), max_size=10
    ),
    quoting=st.sampled_from([csv.QUOTE_MINIMAL, csv.QUOTE_ALL, csv.QUOTE_NONNUMERIC]),
    bom=st.booleans(),
    gz=st.booleans(),
)
def test_csv_quoting_and_line_numbers(cells: list, quoting: int, bom: bool, gz: bool) -> None:
    buf = io.StringIO()
    # "\r\n" as terminator makes the writer quote any field holding \r or \n
    w = csv.writer(buf, quoting=quoting, lineterminator="\r\n")
    w.writerow(["instruction", "input", "output"])
    expect: dict[int, tuple[str, str, str]] = {}
    for instr, inp, out in cells:
        line = len(BREAKS.findall(buf.getvalue().encode())) + 1
        expect[line] = (instr, inp, out)
        w.writerow([instr, inp, out])
    data = (b"\xef\xbb\xbf" if bom else b"") + buf.getvalue().encode()
    with tempfile.TemporaryDirectory() as tmp:
        res, records, ledger = _ingest_bytes(Path(tmp), "c.csv.gz" if gz else "c.csv", data)
    _reasons_ok(ledger)
    assert res.stats.rows_in == len(cells)
    for r in records:
        instr, inp, out = expect[r.line]
        assert r.response() == out and r.instruction() == (f"{instr}\n\n{inp}" if inp.strip() else instr)
    assert {d["line"]: d["reason"] for d in ledger} == {
        ln: "empty_content" for ln, (_, _, out) in expect.items() if not out.strip()
    }


@FUZZ
@given(
    cells=st.lists(st.tuples(csv_text, csv_text), min_size=1, max_size=8),
    junk=st.lists(
        st.tuples(
            st.floats(0, 1), st.binary(min_size=1, max_size=8) | st.sampled_from([b'"', b'""', b"\r", b",,"])
        ),
        min_size=1,
        max_size=4,
    ),
)
def test_csv_damaged_bytes_never_crash(cells: list, junk: list) -> None:
    buf = io.StringIO()
    csv.writer(buf, lineterminator="\r\n").writerows([("instruction", "output"), *cells])
    data = buf.getvalue().encode()
    for at, b in junk:
        cut = int(at * len(data))
        data = data[:cut] + b + data[cut:]
    with tempfile.TemporaryDirectory() as tmp:
        try:
            _, _, ledger = _ingest_bytes(Path(tmp), "d.csv", data)
        except SourceError as e:
            # junk landed in the header, or made the file look UTF-16: it is rejected as a whole
            assert "CSV header" in str(e) or "UTF-16" in str(e)
            return
    _reasons_ok(ledger)


column_types = st.sampled_from(["string", "int", "null", "list", "struct"])


@FUZZ
@given(types=st.tuples(column_types, column_types), n=st.integers(0, 12), data=st.data())
def test_parquet_any_column_types(types: tuple[str, str], n: int, data: st.DataObject) -> None:
    value = {
        "string": st.one_of(st.none(), st.text(max_size=10)),
        "int": st.one_of(st.none(), st.integers(-(2**63), 2**63 - 1)),
        "null": st.none(),
        "list": st.one_of(st.none(), st.lists(st.text(max_size=5), max_size=3)),
        "struct": st.one_of(st.none(), st.fixed_dictionaries({"role": st.text(max_size=5)})),
    }
    arrow = {"string": pa.string(), "int": pa.int64(), "null": pa.null(), "list": pa.list_(pa.string()),
             "struct": pa.struct([("role", pa.string())])}  # fmt: skip
    names = data.draw(
        st.sampled_from([("instruction", "output"), ("messages", "id"), ("text", "id"), ("a", "b")])
    )
    cols = {
        name: pa.array(data.draw(st.lists(value[t], min_size=n, max_size=n)), arrow[t])
        for name, t in zip(names, types, strict=True)
    }
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "p.parquet"
        pq.write_table(pa.table(cols), path)
        res, _, ledger = run(Path(tmp), [path], CONFIG)
    _reasons_ok(ledger)
    assert res.stats.rows_in == n


@settings(max_examples=25, deadline=None)
@given(
    name=st.sampled_from(["e.jsonl", "e.ndjson", "e.json", "e.csv", "e.jsonl.gz", "e.json.gz", "e.csv.gz"]),
    content=st.sampled_from([b"", b"\n", b"\r\n\r\n", b"\xef\xbb\xbf", b"  \t\r", b"\xef\xbb\xbf\n \n"]),
    n_dirs=st.integers(0, 2),
)
def test_empty_files_and_directories(name: str, content: bytes, n_dirs: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        tmp_path = Path(tmp)
        dirs = [tmp_path / f"empty{i}" / "nested" for i in range(n_dirs)]
        for d in dirs:
            d.mkdir(parents=True)
        path = tmp_path / name
        path.write_bytes(gzip.compress(content) if name.endswith(".gz") else content)
        res, records, ledger = run(tmp_path, [path, *[d.parent for d in dirs]], CONFIG)
    assert not records and not ledger
    assert len(res.figures.empty_sources) == 1 + n_dirs
    assert res.stats.rows_out == 0 and res.problems()


@settings(max_examples=15, deadline=None)
@given(n=st.integers(2, 6), data=st.data())
def test_duplicate_ids_keep_the_first_and_name_it(n: int, data: st.DataObject) -> None:
    ids = data.draw(st.lists(st.sampled_from(["a", "b", "7", 7]), min_size=n, max_size=n))
    rows = [{"id": i, "text": f"row {k}"} for k, i in enumerate(ids)]
    with tempfile.TemporaryDirectory() as tmp:
        _, records, ledger = _ingest_bytes(
            Path(tmp), "ids.jsonl", "".join(json.dumps(r) + "\n" for r in rows).encode()
        )
    first_line: dict[str, int] = {}
    for line, i in enumerate(ids, start=1):
        first_line.setdefault(str(i), line)
    assert {r.id: r.line for r in records} == first_line
    assert {d["line"]: d["duplicate_of"] for d in ledger} == {
        line: str(i) for line, i in enumerate(ids, start=1) if first_line[str(i)] != line
    }
    assert {d["reason"] for d in ledger} <= {"duplicate_id"}


@settings(max_examples=int(os.environ.get("SFTFLOW_FUZZ_EXAMPLES", "150")), deadline=None)
@given(
    parts=st.lists(
        st.tuples(
            st.binary(max_size=12).map(lambda b: b.translate(None, b"\r\n")),
            st.sampled_from([b"\n", b"\r", b"\r\n"]),
        )
    ),
    tail=st.binary(max_size=5).map(lambda b: b.translate(None, b"\r\n")),
    limit=st.integers(1, 10),
    buffer_size=st.sampled_from([1, 2, 3, 7, 4096]),
)
def test_line_splitting_matches_universal_newlines(
    parts: list, tail: bytes, limit: int, buffer_size: int
) -> None:
    """Line numbers everywhere rest on this: LF, CRLF and CR each end one line; over-long lines are None."""
    data = b"".join(p + sep for p, sep in parts) + tail
    got = list(_iter_lines(io.BufferedReader(io.BytesIO(data), buffer_size=buffer_size), limit))
    lines = BREAKS.split(data)
    if not lines[-1]:
        lines.pop()  # the break at the very end starts no new line
    assert got == [(i, p if len(p) <= limit else None) for i, p in enumerate(lines, start=1)]
