"""Ingest: every format and container, the ledger contract (rows in = rows out + ledger rows) and clear errors."""

from __future__ import annotations

import csv
import gzip
import io
import json
import os
import subprocess
import sys
import tracemalloc
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from curation.ingest import (
    IngestConfig,
    IngestResult,
    RowError,
    SourceError,
    detect_format,
    expand_sources,
    ingest,
    iter_raw_rows,
    row_to_record,
)
from curation.io import read_records
from curation.records import Record

NASTY = Path(__file__).resolve().parents[1] / "data" / "nasty"

ALPACA_ROWS = [
    {"instruction": "Name a colour.", "input": "", "output": "Blue."},
    {"instruction": "Translate to French.", "input": "Good morning", "output": "Bonjour"},
    {"instruction": "把这句话翻译成英文。", "input": "今天天气很好", "output": "The weather is nice today."},
]
ALPACA_MESSAGES = [
    [{"role": "user", "content": "Name a colour."}, {"role": "assistant", "content": "Blue."}],
    [
        {"role": "user", "content": "Translate to French.\n\nGood morning"},
        {"role": "assistant", "content": "Bonjour"},
    ],
    [
        {"role": "user", "content": "把这句话翻译成英文。\n\n今天天气很好"},
        {"role": "assistant", "content": "The weather is nice today."},
    ],
]


def run(
    tmp_path: Path, sources: list[str | Path], config: IngestConfig | None = None, **kw: Any
) -> tuple[IngestResult, list[Record], list[dict]]:
    """Ingest and check the contract that holds for every input: nothing lost, ids unique, reasons counted."""
    out = tmp_path / f"out{len(list(tmp_path.glob('out*')))}"
    res = ingest([str(s) for s in sources], out, config, **kw)
    records = read_records(res.output)
    ledger = pq.read_table(res.ledger).to_pylist()
    st = res.stats
    assert st.rows_in == len(records) + len(ledger) == st.rows_out + st.rows_dropped
    assert st.rows_out == len(records)
    assert len({r.id for r in records}) == len(records), "output ids must be unique"
    assert sum(st.dropped_by_reason.values()) == len(ledger)
    for d in ledger:
        assert d["stage"] == "ingest" and d["reason"] and d["line"] >= 1
        assert f"line {d['line']}:" in d["detail"], d["detail"]
    assert json.loads((out / "stats.json").read_text())["rows_in"] == st.rows_in
    return res, records, ledger


def write(path: Path, content: str | bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".gz":
        data = content.encode() if isinstance(content, str) else content
        path.write_bytes(gzip.compress(data))
    elif isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content, encoding="utf-8")
    return path


def jsonl(rows: list[Any]) -> str:
    return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)


def reasons_by_line(ledger: list[dict]) -> dict[int, str]:
    return {d["line"]: d["reason"] for d in ledger}


# --------------------------------------------------------------------------------------------------
# formats


SYS = "You are terse."
FORMAT_CASES = [
    (
        "alpaca",
        {"instruction": "Add 2 and 3.", "input": "", "output": "5", "system": SYS},
        [("system", SYS), ("user", "Add 2 and 3."), ("assistant", "5")],
    ),
    (
        "dolly",
        {
            "instruction": "Summarise.",
            "context": "Cats sleep a lot.",
            "response": "Cats nap.",
            "category": "summ",
        },
        [("user", "Summarise.\n\nCats sleep a lot."), ("assistant", "Cats nap.")],
    ),
    (
        "sharegpt",
        {
            "system": SYS,
            "conversations": [
                {"from": "human", "value": "Hi"},
                {"from": "gpt", "value": "Hello!"},
                {"from": "human", "value": "Bye"},
                {"from": "gpt", "value": "Bye!"},
            ],
        },
        [("system", SYS), ("user", "Hi"), ("assistant", "Hello!"), ("user", "Bye"), ("assistant", "Bye!")],
    ),
    (
        "alpaca",
        {"instruction": "And 3?", "output": "9", "history": [["Square 2", "4"]]},
        [("user", "Square 2"), ("assistant", "4"), ("user", "And 3?"), ("assistant", "9")],
    ),
    (
        "sharegpt",
        {"conversations": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Yo"}]},
        [("user", "Hi"), ("assistant", "Yo")],
    ),
    (
        "openai",
        {
            "messages": [
                {"role": "system", "content": SYS},
                {
                    "role": "user",
                    "content": [{"type": "text", "text": "What is "}, {"type": "text", "text": "2+2?"}],
                },
                {"role": "assistant", "content": "4"},
            ]
        },
        [("system", SYS), ("user", "What is 2+2?"), ("assistant", "4")],
    ),
    (
        "qa",
        {"question": "中国的首都是哪里？", "answer": "北京。"},
        [("user", "中国的首都是哪里？"), ("assistant", "北京。")],
    ),
    (
        "qa",
        {"question": "写一首诗", "std_answer": "春眠不觉晓", "class": "generation"},
        [("user", "写一首诗"), ("assistant", "春眠不觉晓")],
    ),
    (
        "self_instruct",
        {"id": "seed_1", "instruction": "Rhyme with", "instances": [{"input": "cat", "output": "hat"}]},
        [("user", "Rhyme with\n\ncat"), ("assistant", "hat")],
    ),
    (
        "prompt_completion",
        {"prompt": "Tell me a joke.", "completion": "No."},
        [("user", "Tell me a joke."), ("assistant", "No.")],
    ),
    (
        "prompt_completion",
        {
            "prompt": "Below is an instruction that describes a task. Write a response that appropriately "
            "completes the request.\n\n### Instruction:\nwhat is kangen water?\n\n### Response:\n",
            "response": "Alkaline water.",
        },
        [("user", "what is kangen water?"), ("assistant", "Alkaline water.")],
    ),
    (
        "prompt_completion",
        {
            "prompt": "Below is an instruction that describes a task, paired with an input.\n\n"
            "### Instruction:\nSort these.\n\n### Input:\nb, a\n\n### Response:\n",
            "response": "a, b",
        },
        [("user", "Sort these.\n\nb, a"), ("assistant", "a, b")],
    ),
]


@pytest.mark.parametrize(("fmt", "row", "turns"), FORMAT_CASES, ids=[c[0] for c in FORMAT_CASES])
def test_each_format_becomes_the_same_message_shape(tmp_path: Path, fmt: str, row: dict, turns: list) -> None:
    src = write(tmp_path / "data.jsonl", jsonl([row]))
    res, records, ledger = run(tmp_path, [src])
    assert not ledger, ledger
    (rec,) = records
    assert [(m["role"], m["content"]) for m in rec.messages] == turns
    assert rec.text is None and rec.line == 1 and rec.source.endswith("data.jsonl")
    assert res.stats.extra["formats"] == {fmt: 1}


def test_plain_text_rows_and_metadata(tmp_path: Path) -> None:
    src = write(
        tmp_path / "t.jsonl", jsonl([{"text": "The quick brown fox.", "tags": ["a"], "category": "doc"}])
    )
    _, (rec,), _ = run(tmp_path, [src])
    assert rec.messages is None and rec.text == "The quick brown fox."
    assert rec.meta == {"tags": ["a"], "category": "doc"}


def test_given_ids_are_kept_and_missing_ones_are_content_hashes(tmp_path: Path) -> None:
    rows = [{"id": 7, **ALPACA_ROWS[0]}, {"id": "x-1", **ALPACA_ROWS[1]}, ALPACA_ROWS[2]]
    _, records, _ = run(tmp_path, [write(tmp_path / "a.jsonl", jsonl(rows))])
    assert [r.id for r in records[:2]] == ["7", "x-1"]
    assert len(records[2].id) == 20  # 10-byte blake2b hex
    _, again, _ = run(tmp_path, [write(tmp_path / "b.jsonl", jsonl([ALPACA_ROWS[2]]))])
    assert again[0].id == records[2].id, "content ids are stable across runs and files"


def test_field_map_overrides_detection_and_names_the_source_field(tmp_path: Path) -> None:
    rows = [
        {"q": "Capital of France?", "a": "Paris", "uid": "r1", "text": "ignored"},
        {"q": "Capital of Spain?", "uid": "r2"},
    ]
    src = write(tmp_path / "m.jsonl", jsonl(rows))
    cfg = IngestConfig(field_map={"instruction": "q", "output": "a", "id": "uid"})
    _, records, ledger = run(tmp_path, [src], cfg)
    assert [(r.id, r.instruction(), r.response()) for r in records] == [("r1", "Capital of France?", "Paris")]
    assert ledger[0]["reason"] == "missing_field" and ledger[0]["line"] == 2
    assert "'a' (mapped to output)" in ledger[0]["detail"]


def test_field_map_rejects_unknown_canonical_fields() -> None:
    with pytest.raises(ValueError, match="unknown canonical field"):
        IngestConfig(field_map={"answer": "a"})


def test_language_is_detected_per_record(tmp_path: Path) -> None:
    rows = [
        {"instruction": "Explain photosynthesis briefly.", "output": "Plants turn light into sugar."},
        {"instruction": "解释一下光合作用。", "output": "植物利用光能把二氧化碳和水转化为糖。"},
        {"instruction": "2 + 2 = ?", "output": "4"},
        {"instruction": "Объясни фотосинтез.", "output": "Растения превращают свет в сахар."},
    ]
    _, records, _ = run(tmp_path, [write(tmp_path / "l.jsonl", jsonl(rows))])
    assert [r.lang for r in records] == ["en", "zh", "other", "other"]


def test_detect_format_names() -> None:
    assert detect_format({"messages": []}) == "openai"
    assert detect_format({"instruction": 1, "response": 2}) == "dolly"
    assert detect_format({"foo": 1}) == "unknown"


# --------------------------------------------------------------------------------------------------
# containers


def _containers(tmp_path: Path) -> dict[str, Path]:
    rows = ALPACA_ROWS
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=["instruction", "input", "output"], lineterminator="\r\n")
    w.writeheader()
    w.writerows(rows)
    table = pa.Table.from_pylist(rows)
    pq.write_table(table, tmp_path / "rows.parquet")
    return {
        "jsonl": write(tmp_path / "rows.jsonl", jsonl(rows)),
        "ndjson.gz": write(tmp_path / "rows.ndjson.gz", jsonl(rows)),
        "json array": write(tmp_path / "arr.json", json.dumps(rows, ensure_ascii=False, indent=2)),
        "json array.gz": write(tmp_path / "arr.json.gz", json.dumps(rows)),
        "json lines named .json": write(tmp_path / "lines.json", jsonl(rows)),
        "json wrapper": write(tmp_path / "wrap.json", json.dumps({"version": 1, "data": rows}, indent=1)),
        "csv": write(tmp_path / "rows.csv", buf.getvalue()),
        "csv.gz": write(tmp_path / "rows.csv.gz", buf.getvalue()),
        "parquet": tmp_path / "rows.parquet",
    }


def test_every_container_gives_the_same_records(tmp_path: Path) -> None:
    for name, path in _containers(tmp_path).items():
        _, records, ledger = run(tmp_path, [path])
        assert not ledger, (name, ledger)
        assert [r.messages for r in records] == ALPACA_MESSAGES, name
        assert [r.lang for r in records] == ["en", "en", "zh"], name


def test_line_numbers_per_container(tmp_path: Path) -> None:
    c = _containers(tmp_path)
    assert [ln for ln, _, _ in iter_raw_rows(str(c["json array"]), IngestConfig())] == [2, 7, 12]
    assert [ln for ln, _, _ in iter_raw_rows(str(c["csv"]), IngestConfig())] == [2, 3, 4]
    assert [ln for ln, _, _ in iter_raw_rows(str(c["parquet"]), IngestConfig())] == [1, 2, 3]


def test_directories_and_globs_expand_to_data_files_once(tmp_path: Path) -> None:
    d = tmp_path / "d"
    write(d / "a.jsonl", jsonl(ALPACA_ROWS[:1]))
    write(d / "sub" / "b.json", json.dumps(ALPACA_ROWS[1:]))
    write(d / "README.md", "# not data")
    write(d / ".cache" / "c.jsonl", jsonl(ALPACA_ROWS))  # hidden: skipped
    files = expand_sources([str(d), str(d / "a.jsonl")])
    assert [Path(f).relative_to(d).as_posix() for f in files] == ["a.jsonl", "sub/b.json"]
    _, records, _ = run(tmp_path, [d])
    assert len(records) == 3
    _, records, _ = run(tmp_path, [f"{d}/**/*"])  # the glob also matches README.md: skipped
    assert len(records) == 3
    _, records, _ = run(tmp_path, [f"{d}/*.jsonl"])
    assert len(records) == 1


def test_same_ids_in_two_sources_are_qualified_not_dropped(tmp_path: Path) -> None:
    a = write(tmp_path / "a.jsonl", jsonl([{"id": 1, **ALPACA_ROWS[0]}, {"id": 2, **ALPACA_ROWS[1]}]))
    b = write(tmp_path / "b.jsonl", jsonl([{"id": 1, **ALPACA_ROWS[2]}]))
    res, records, ledger = run(tmp_path, [a, b])
    assert not ledger
    assert [r.id for r in records] == ["1", "2", f"{b}#1"]
    assert records[2].meta["given_id"] == "1"
    assert res.stats.extra["ids_qualified"] == 1


def test_ledger_rows_keep_their_own_id(tmp_path: Path) -> None:
    """A dropped row is found again by the id it gave itself; where it was stays in source/line."""
    src = write(tmp_path / "own.jsonl", jsonl([
        {"id": "q-1", "instruction": "Say hi", "output": ""},         # empty_content
        {"id": 7, "instruction": "Say hi", "output": "Hi"},
        {"id": 7, "instruction": "Say hello", "output": "Hello"},     # duplicate_id
        {"uid": "x", "instruction": "Say hi", "output": "   "},       # no id of its own
        {"id": {"nested": 1}, "instruction": "q"},                   # an id that is no id
    ]) + "{oops\n")
    _, records, ledger = run(tmp_path, [src])
    assert [r.id for r in records] == ["7"]
    by_line = {d["line"]: d for d in ledger}
    assert (by_line[1]["id"], by_line[1]["reason"]) == ("q-1", "empty_content")
    assert (by_line[3]["id"], by_line[3]["reason"], by_line[3]["duplicate_of"]) == ("7", "duplicate_id", "7")
    assert by_line[4]["id"] == f"{src}:4" and by_line[5]["id"] == f"{src}:5" and by_line[6]["id"] == f"{src}:6"
    assert all(d["source"] == str(src) for d in ledger)
    # a field map that names the id field is followed for dropped rows too
    _, _, ledger = run(tmp_path, [src], IngestConfig(field_map={"id": "uid"}))
    assert {d["line"]: d["id"] for d in ledger}[4] == "x"


def test_identical_content_gets_distinct_ids(tmp_path: Path) -> None:
    _, records, _ = run(tmp_path, [write(tmp_path / "d.jsonl", jsonl([ALPACA_ROWS[0]] * 3))])
    base = records[0].id
    assert [r.id for r in records] == [base, f"{base}~1", f"{base}~2"]


def test_progress_is_called_with_every_row(tmp_path: Path) -> None:
    seen: list[int] = []
    rows = ALPACA_ROWS * 5 + ["not an object"]
    run(
        tmp_path, [write(tmp_path / "p.jsonl", jsonl(rows))], IngestConfig(batch_size=4), progress=seen.append
    )
    assert sum(seen) == 16 and max(seen) <= 4


# --------------------------------------------------------------------------------------------------
# bad rows: one ledger row each, with a precise reason and line


def test_each_bad_row_has_a_precise_reason_and_line(tmp_path: Path) -> None:
    good = json.dumps(ALPACA_ROWS[0])
    lines = [
        good,  # 1
        '{"instruction": "hi", "output": ',  # 2 bad JSON
        '{"instruction": ["a"], "output": "x"}',  # 3 wrong type
        '{"instruction": null, "output": "x"}',  # 4 null
        '{"instruction": "only half"}',  # 5 no output: not a known format
        '{"instruction": "x", "input": "", "output": "   "}',  # 6 empty content
        '{"messages": [{"role": "user", "content": "q"}]}',  # 7 missing assistant turn
        '{"id": "dup", "text": "first"}',  # 8
        '{"id": "dup", "text": "second"}',  # 9 duplicate id
        '{"foo": 1, "bar": 2}',  # 10 unknown format
        '{"text": "' + "x" * 300 + '"}',  # 11 too large (max_chars=200)
        "[1, 2, 3]",  # 12 not an object
        '{"messages": [{"role": "wizard", "content": "q"}, {"role": "assistant", "content": "a"}]}',  # 13
        '{"text": "lone \\ud800 surrogate"}',  # 14 from a JSON escape
        "[" * 100_000 + "]" * 100_000,  # 15 nested too deeply for the parser
        '{"text": "ok", "id": true}',  # 16 wrong id type
        '{"conversations": null}',  # 17 null turns
        '{"text": "fine", "tags": ' + "[" * 5000 + "]" * 5000 + "}",  # 18 metadata nested too deeply
        '{"text": 1e999}',  # 19 Infinity is not text
    ]
    data = ("\n".join(lines) + "\n").encode() + b'{"text": "caf\xe9"}\n'  # 20 latin-1 byte
    src = write(tmp_path / "bad.jsonl", data)
    res, records, ledger = run(tmp_path, [src], IngestConfig(max_chars=200))
    assert [r.line for r in records] == [1, 8]
    expected = {
        2: "bad_json",
        3: "wrong_type",
        4: "null_field",
        5: "unknown_format",
        6: "empty_content",
        7: "missing_field",
        9: "duplicate_id",
        10: "unknown_format",
        11: "too_large",
        12: "not_an_object",
        13: "bad_role",
        14: "invalid_utf8",
        15: "nested_too_deep",
        16: "wrong_type",
        17: "null_field",
        18: "nested_too_deep",
        19: "wrong_type",
        20: "invalid_utf8",
    }
    assert reasons_by_line(ledger) == expected
    by_line = {d["line"]: d for d in ledger}
    assert "'instruction' is list" in by_line[3]["detail"]
    assert "'instruction' is null" in by_line[4]["detail"]
    assert "fields: bar, foo" in by_line[10]["detail"]
    assert by_line[9]["duplicate_of"] == "dup"
    assert "U+D800" in by_line[14]["detail"]
    assert "byte 0xe9 at column 14" in by_line[20]["detail"]
    # the dropped row's text is kept in the ledger for inspection
    assert '"output": ' in json.loads(by_line[2]["record"])["text"]
    assert res.figures.sources_all_bad == []


def test_line_numbers_survive_crlf_cr_bom_and_blank_lines(tmp_path: Path) -> None:
    a = json.dumps(ALPACA_ROWS[0]).encode()
    data = (
        b"\xef\xbb\xbf"
        + a
        + b"\r\n\r\n"
        + a
        + b"\r"
        + b"oops"
        + b"\r"
        + a
        + b"\n\n  \n"
        + b"\xef\xbb\xbf"
        + a
    )
    _, records, ledger = run(tmp_path, [write(tmp_path / "nl.jsonl", data)])
    assert [r.line for r in records] == [1, 3, 5, 8]
    assert reasons_by_line(ledger) == {4: "bad_json"}


def test_over_long_line_is_skipped_without_reading_it_whole(tmp_path: Path) -> None:
    big = json.dumps({"instruction": "x", "output": "y" * 8_000_000})
    data = jsonl(ALPACA_ROWS[:1]) + big + "\n" + jsonl(ALPACA_ROWS[1:2])
    src = write(tmp_path / "big.jsonl", data)
    tracemalloc.start()
    try:
        _, records, ledger = run(tmp_path, [src], IngestConfig(max_line_bytes=64 * 1024))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert [r.line for r in records] == [1, 3]
    assert reasons_by_line(ledger) == {2: "too_large"}
    assert peak < 4_000_000, f"peak {peak} bytes: the 8 MB line was held in memory"


def test_json_array_bad_elements_are_ledgered_and_reading_goes_on(tmp_path: Path) -> None:
    a = json.dumps(ALPACA_ROWS[0])
    text = (
        "[\n"
        + ",\n".join([a, '{"instruction": "x", "output": }', "[" * 50_000 + "]" * 50_000, "7", a])
        + "\n]\n"
    )
    _, records, ledger = run(tmp_path, [write(tmp_path / "arr.json", text)])
    assert [r.line for r in records] == [2, 6]
    assert reasons_by_line(ledger) == {3: "bad_json", 4: "nested_too_deep", 5: "not_an_object"}
    assert "element 2" in ledger[0]["detail"]


def test_truncated_json_array_keeps_the_complete_elements(tmp_path: Path) -> None:
    text = json.dumps(ALPACA_ROWS, indent=2)
    cut = text[: text.index('"Bonjour"') + 4]
    _, records, ledger = run(tmp_path, [write(tmp_path / "cut.json", cut)])
    assert [r.instruction() for r in records] == ["Name a colour."]
    assert [d["reason"] for d in ledger] == ["bad_json"]
    assert "not terminated" in ledger[0]["detail"]


def test_csv_quoting_multiline_fields_and_bad_rows(tmp_path: Path) -> None:
    data = (
        b"instruction,input,output\r\n"
        b'"Say ""hi"", politely","",Hi!\r\n'  # 2: quotes and commas
        b'"Write two lines",,"line one\r\nline two"\r\n'  # 3-4: a field over two lines
        b"Too,many,fields,here\r\n"  # 5
        b"Empty output,,\r\n"  # 6
        b'"Count, please",,"1,2,3"\r\n'  # 7
    ) + b"Caf\xe9,,x\r\n"  # 8
    src = write(tmp_path / "q.csv", data)
    _, records, ledger = run(tmp_path, [src])
    assert [(r.line, r.instruction(), r.response()) for r in records] == [
        (2, 'Say "hi", politely', "Hi!"),
        (3, "Write two lines", "line one\r\nline two"),
        (7, "Count, please", "1,2,3"),
    ]
    assert reasons_by_line(ledger) == {5: "bad_csv", 6: "empty_content", 8: "invalid_utf8"}
    assert "4 fields, the header has 3" in ledger[0]["detail"]


def test_csv_can_carry_messages_as_json(tmp_path: Path) -> None:
    msgs = [{"role": "user", "content": "a, b?"}, {"role": "assistant", "content": "c"}]
    buf = io.StringIO()
    csv.writer(buf).writerows([["id", "messages"], ["m1", json.dumps(msgs)], ["m2", "[not json"]])
    _, records, ledger = run(tmp_path, [write(tmp_path / "m.csv", buf.getvalue())])
    assert records[0].messages == msgs
    assert reasons_by_line(ledger) == {3: "bad_json"}


def test_csv_with_repeated_header_column_is_a_source_error(tmp_path: Path) -> None:
    src = write(tmp_path / "h.csv", "instruction,output,output\na,b,c\n")
    with pytest.raises(SourceError, match=r"h\.csv: CSV header repeats column\(s\) \['output'\]"):
        ingest([str(src)], tmp_path / "out")
    assert not (tmp_path / "out" / "output.parquet").exists(), "nothing is published for a failed run"


def test_parquet_with_wrong_column_types(tmp_path: Path) -> None:
    table = pa.table({"instruction": ["a", "b", None], "output": [1, None, 3]})
    pq.write_table(table, tmp_path / "t.parquet")
    _, records, ledger = run(tmp_path, [tmp_path / "t.parquet"])
    assert [(r.line, r.response()) for r in records] == [(1, "1")]
    assert reasons_by_line(ledger) == {2: "null_field", 3: "null_field"}


# --------------------------------------------------------------------------------------------------
# source-level problems


def test_a_file_where_every_row_is_bad_is_reported(tmp_path: Path) -> None:
    good = write(tmp_path / "good.jsonl", jsonl(ALPACA_ROWS))
    bad = write(tmp_path / "bad.jsonl", jsonl([{"question": "q", "reply": "r"}] * 4))
    res, _, _ = run(tmp_path, [good, bad])
    assert res.figures.sources_all_bad == [str(bad)]
    (problem,) = res.problems()
    assert "all 4 rows dropped (unknown_format: 4)" in problem and "fields: question, reply" in problem

    res, records, _ = run(tmp_path, [bad])
    assert res.stats.rows_out == 0 and not records
    assert any(p.startswith("no records: 4 rows read") for p in res.problems())


def test_empty_files_and_directories_are_reported_not_fatal(tmp_path: Path) -> None:
    empty_dir = tmp_path / "nothing"
    empty_dir.mkdir()
    sources = [
        write(tmp_path / "e.jsonl", ""),
        write(tmp_path / "blank.jsonl", "\n\r\n  \n"),
        write(tmp_path / "e.json", "[ ]"),
        write(tmp_path / "header_only.csv", "instruction,output\n"),
        write(tmp_path / "e.csv", ""),
        write(tmp_path / "e.jsonl.gz", ""),
        empty_dir,
        tmp_path / "no-match-*.jsonl",
    ]
    pq.write_table(pa.table({"text": pa.array([], pa.string())}), tmp_path / "e.parquet")
    sources.append(tmp_path / "e.parquet")
    res, records, ledger = run(tmp_path, sources)
    assert res.stats.rows_in == 0 and not records and not ledger
    assert len(res.figures.empty_sources) == len(sources)
    assert len(res.problems()) == len(sources) + 1


def test_unreadable_sources_raise_a_clear_source_error(tmp_path: Path) -> None:
    with pytest.raises(SourceError, match="no such file"):
        ingest([str(tmp_path / "missing.jsonl")], tmp_path / "o1")
    good = write(tmp_path / "good.jsonl", jsonl(ALPACA_ROWS))
    with pytest.raises(SourceError, match=r"notes\.txt: unknown file type"):
        ingest([str(good), str(write(tmp_path / "notes.txt", "hi"))], tmp_path / "o2")
    with pytest.raises(SourceError, match="gunzip it first"):
        ingest([str(write(tmp_path / "p.parquet.gz", b"x"))], tmp_path / "o2")
    truncated = gzip.compress(jsonl(ALPACA_ROWS * 200).encode())[:-40]
    with pytest.raises(SourceError, match=r"t\.jsonl\.gz: cannot read: EOFError"):
        ingest(
            [str(write(tmp_path / "t.jsonl.gz.raw", truncated).rename(tmp_path / "t.jsonl.gz"))],
            tmp_path / "o3",
        )
    assert not (tmp_path / "o3" / "output.parquet").exists()
    with pytest.raises(SourceError, match=r"fake\.parquet: cannot read"):
        ingest([str(write(tmp_path / "fake.parquet", b"PAR1 nope"))], tmp_path / "o4")
    with pytest.raises(SourceError, match=r"fake\.jsonl\.gz: cannot read: BadGzipFile"):
        (tmp_path / "fake.jsonl.gz").write_bytes(b"plain text, not gzip")
        ingest([str(tmp_path / "fake.jsonl.gz")], tmp_path / "o5")


def test_hub_id_offline_is_a_clear_source_error() -> None:
    code = (
        "from curation.ingest import ingest, SourceError\n"
        "import tempfile\n"
        "try:\n"
        "    ingest(['hf://sftflow-test/does-not-exist?split=train'], tempfile.mkdtemp())\n"
        "except SourceError as e:\n"
        "    print('SOURCE_ERROR', e)\n"
    )
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "SOURCE_ERROR hf://sftflow-test/does-not-exist?split=train" in proc.stdout
    assert "HF_HUB_OFFLINE is set" in proc.stdout and "pass the local files" in proc.stdout


# --------------------------------------------------------------------------------------------------
# the nasty corpus and the real datasets


# file → (records kept, {line: ledger reason}); "source_error_*" files must raise SourceError naming the file
NASTY_EXPECTED: dict[str, tuple[int, dict[int, str]]] = {
    "array_garbage.json": (3, {1: "bad_json"}),  # five bad elements on one line; checked by count below
    "array_missing_commas.json": (2, {}),
    "blank_lines.jsonl": (0, {}),
    "bom_crlf.jsonl": (2, {}),
    "bom_latin1.csv": (1, {2: "invalid_utf8"}),
    "broken_document.json": (
        0,
        {1: "bad_json", 2: "bad_json", 3: "bad_json", 4: "bad_json", 5: "bad_json", 6: "bad_json"},
    ),
    "concatenated_arrays.json": (2, {}),
    "concatenated_boms.jsonl": (2, {}),
    "cr_only.csv": (2, {}),
    "cr_only.jsonl": (2, {3: "bad_json"}),
    "deep_nesting.jsonl": (1, {1: "nested_too_deep", 2: "nested_too_deep"}),
    "duplicate_ids.jsonl": (1, {2: "duplicate_id", 3: "duplicate_id"}),
    "empty.csv": (0, {}),
    "empty.jsonl": (0, {}),
    "empty_array.json": (0, {}),
    "garbage_lines.jsonl": (
        2,
        {
            2: "invalid_utf8",
            3: "bad_json",
            4: "bad_json",
            5: "not_an_object",
            6: "not_an_object",
            7: "not_an_object",
        },
    ),
    "header_only.csv": (0, {}),
    "huge_int.jsonl": (1, {1: "bad_json"}),
    "invalid_utf8.jsonl": (1, {1: "invalid_utf8", 2: "invalid_utf8"}),
    "lone_surrogates.jsonl": (0, {1: "invalid_utf8", 2: "invalid_utf8", 3: "unknown_format"}),
    "nul_bytes.csv": (1, {}),
    "quoting.csv": (2, {5: "bad_csv"}),
    "ragged.csv": (1, {2: "bad_csv", 3: "bad_csv", 4: "empty_content"}),
    "raw_tab_in_string.jsonl": (1, {}),
    "truncated_array.json": (1, {3: "bad_json"}),
    "wrapped_document.json": (2, {}),
    "wrong_types.jsonl": (
        0,
        {
            1: "wrong_type",
            2: "wrong_type",
            3: "wrong_type",
            4: "bad_role",
            5: "wrong_type",
            6: "null_field",
            7: "wrong_type",
            8: "wrong_type",
        },
    ),
}


def test_nasty_corpus_gives_the_expected_records_and_reasons(tmp_path: Path) -> None:
    files = sorted(p for p in NASTY.iterdir() if p.name != "README.md")
    assert {f.name for f in files if not f.name.startswith("source_error_")} == set(NASTY_EXPECTED)
    for f in files:
        if f.name.startswith("source_error_"):
            with pytest.raises(SourceError, match=f.name.replace(".", r"\.")):
                ingest([str(f)], tmp_path / f.name)
            continue
        res, records, ledger = run(tmp_path, [f])
        n_out, reasons = NASTY_EXPECTED[f.name]
        assert len(records) == n_out, (f.name, ledger)
        assert reasons_by_line(ledger) == reasons, f.name
        assert (res.stats.rows_in == 0) == (str(f) in res.figures.empty_sources), f.name
    _, _, ledger = run(tmp_path, [NASTY / "array_garbage.json"])
    assert [d["reason"] for d in ledger] == ["bad_json", "bad_json", "not_an_object", "bad_json", "bad_json"]
    assert [d["id"].rsplit(":", 1)[1] for d in ledger] == ["1", "1#1", "1#2", "1#3", "1#4"], (
        "ledger ids unique"
    )


def test_real_dolly_prompts_lose_their_template(tmp_path: Path, shared_data: Path) -> None:
    res, records, ledger = run(tmp_path, [shared_data / "dolly_hhrlhf_sample"])
    assert res.stats.rows_in == 1000 and not ledger
    assert not any("Below is an instruction" in r.prompt() or "### " in r.instruction() for r in records)
    assert {r.lang for r in records} == {"en"}


def test_real_chinese_sets(tmp_path: Path, shared_data: Path) -> None:
    res, records, ledger = run(tmp_path, [shared_data / "oasst1_zh_sft", shared_data / "belle_zh"])
    assert res.stats.extra["formats"].keys() == {"alpaca", "qa", "self_instruct"}
    assert sum(r.lang == "zh" for r in records) / len(records) > 0.9
    # BELLE's eval set leaves some reference answers empty: those rows are dropped, not invented
    assert {d["reason"] for d in ledger} <= {"empty_content"}
    assert res.figures.sources_all_bad == []


def test_row_to_record_only_raises_row_errors() -> None:
    cfg = IngestConfig()
    for row in [
        None,
        3,
        "s",
        [],
        {},
        {"messages": "nope"},
        {"messages": [None]},
        {"conversations": [{"from": "x"}]},
    ]:
        with pytest.raises(RowError):
            row_to_record(row, "s", 1, cfg)


def test_hub_rows_stream_through_and_a_broken_stream_is_a_source_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[tuple] = []

    def load_dataset(name: str, subset: str | None, split: str, streaming: bool):
        calls.append((name, subset, split, streaming))

        def rows():
            yield {"instruction": "a", "output": "b"}
            yield {"question": "c"}
            if subset == "broken":
                raise ConnectionError("connection reset")

        return rows()

    monkeypatch.setitem(sys.modules, "datasets", type(sys)("datasets"))
    monkeypatch.setattr(sys.modules["datasets"], "load_dataset", load_dataset, raising=False)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("HF_DATASETS_OFFLINE", raising=False)
    res, records, ledger = run(tmp_path, ["hf://owner/name?split=test"])
    assert calls == [("owner/name", None, "test", True)]
    assert [r.source for r in records] == ["hf://owner/name?split=test"]
    assert reasons_by_line(ledger) == {2: "unknown_format"}
    with pytest.raises(
        SourceError, match=r"hf://owner/name\?config=broken: reading stopped after row 2: ConnectionError"
    ):
        ingest(["hf://owner/name?config=broken"], tmp_path / "broken")


def test_file_names_that_are_not_utf8(tmp_path: Path) -> None:
    name = os.fsdecode(b"caf\xe9.jsonl")  # a latin-1 name on a UTF-8 system: lone surrogates in Python
    write(tmp_path / name, jsonl([ALPACA_ROWS[0], "bad"]))
    res, records, ledger = run(tmp_path, [tmp_path])
    assert records[0].source.endswith("caf\ufffd.jsonl") and ledger[0]["source"] == records[0].source
    assert res.figures.sources[0].endswith("caf\ufffd.jsonl")


@pytest.mark.timeout(60)  # a backtracking template regex took minutes per row on this input
def test_hostile_prompt_template_is_linear(tmp_path: Path) -> None:
    prompt = "Below is an instruction ### Instruction:" + " ### Input: x" * 10_000
    src = write(tmp_path / "h.jsonl", jsonl([{"prompt": prompt, "response": "ok"}]))
    _, (rec,), _ = run(tmp_path, [src])
    assert (
        rec.instruction() == prompt and rec.response() == "ok"
    )  # no "### Response:" at the end: not the template
