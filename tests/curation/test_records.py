"""The record schema: views, (de)serialisation through parquet, stable content ids, language detection."""

from __future__ import annotations

import re
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from curation.io import read_records, write_records
from curation.records import Record, content_id, detect_lang, normalize_text

CHAT = Record(
    id="c1",
    messages=[
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello"},
        {"role": "user", "content": "Bye"},
        {"role": "assistant", "content": "Bye!"},
    ],
    source="a.jsonl",
    lang="en",
    line=3,
    meta={"category": "chat", "tags": ["x"]},
    attrs={"quality": 0.5, "task_type": "chat"},
)
DOC = Record(id="d1", text="Plain document.", source="b.jsonl")


def test_views_of_a_conversation() -> None:
    assert CHAT.instruction() == "Hi"
    assert CHAT.prompt() == "Be brief.\nHi\nBye"
    assert CHAT.response() == "Hello\nBye!"
    assert CHAT.full_text() == "Be brief.\nHi\nHello\nBye\nBye!"
    assert CHAT.n_turns() == 2


def test_views_of_a_plain_text_record() -> None:
    assert DOC.instruction() == DOC.prompt() == DOC.full_text() == "Plain document."
    assert DOC.response() == "" and DOC.n_turns() == 0


def test_round_trip_through_parquet_keeps_everything(tmp_path: Path) -> None:
    write_records(tmp_path / "r.parquet", [CHAT, DOC])
    back = read_records(tmp_path / "r.parquet")
    assert back[0] == CHAT
    # attrs become columns: a record without them reads back with nulls, not with missing keys
    assert back[1].text == DOC.text and back[1].messages is None
    assert back[1].attrs == {"quality": None, "task_type": None}


def test_to_row_puts_attrs_in_columns_and_meta_in_json() -> None:
    row = CHAT.to_row()
    assert row["quality"] == 0.5 and row["task_type"] == "chat"
    assert row["meta"] == '{"category": "chat", "tags": ["x"]}'
    assert DOC.to_row()["meta"] == "{}"
    assert Record.from_row(CHAT.to_row()) == CHAT


def test_content_id_is_stable_and_content_sensitive() -> None:
    msgs = [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]
    assert content_id(msgs, None) == content_id([dict(m) for m in msgs], None)
    assert len(content_id(msgs, None)) == 20
    assert content_id(msgs, None) != content_id(list(reversed(msgs)), None)
    assert content_id(None, "a") != content_id([{"role": "user", "content": "a"}], None)
    assert content_id(None, "a") != content_id(None, "a ")


def test_normalize_text() -> None:
    assert normalize_text("  Ｈｅｌｌｏ,\tWORLD!\n") == "hello, world!"
    assert normalize_text("Hello, world!", punctuation=True) == "hello world"


def test_detect_lang() -> None:
    assert detect_lang("The quick brown fox jumps over the lazy dog.") == "en"
    assert detect_lang("今天天气很好，我们去公园散步吧。") == "zh"
    assert detect_lang("用 Python 写一个快速排序") == "zh"  # mostly Chinese with a code word
    assert detect_lang("Use the 函数 here please, it is fine") == "en"
    assert detect_lang("こんにちは") == "other"  # kana only: CJK script but not Chinese
    assert detect_lang("12 + 30 = 42") == "other"
    assert detect_lang("ok") == "other"  # too few letters to tell
    assert detect_lang("") == "other"
    assert detect_lang("Привет, как дела?") == "other"


_CJK = re.compile(r"[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\u3040-\u30ff\uac00-\ud7af]")


def _reference_lang(text: str) -> str:
    """The plain regex definition detect_lang implements faster."""
    sample = text[:2000]
    cjk, latin = len(_CJK.findall(sample)), len(re.findall(r"[A-Za-z]", sample))
    if cjk == 0 and latin == 0:
        return "other"
    if cjk * 5 >= latin:
        return "zh" if re.search(r"[\u4e00-\u9fff]", sample) else "other"
    return "en" if latin >= 3 else "other"


@settings(max_examples=200, deadline=None)
@given(
    st.text(
        st.one_of(
            st.characters(codec=None, exclude_categories=()),
            st.sampled_from("abcXYZ 中文字こん한"),
        ),
        max_size=2100,
    )
)
def test_detect_lang_matches_its_definition(text: str) -> None:
    assert detect_lang(text) == _reference_lang(text)
