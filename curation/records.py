"""The one record schema every stage reads and writes.

A record is either a conversation (``messages``: a list of ``{"role", "content"}`` with roles
system/user/assistant) or a plain-text document (``text``, for general corpora). Stages add their
computed values (quality score, complexity, task type, mix source...) to ``attrs``; each key of
``attrs`` becomes a top-level column in the parquet files, so reports read the same numbers the
stages decided on.
"""

from __future__ import annotations

import hashlib
import json
import re
import unicodedata
from dataclasses import dataclass, field
from typing import Any

ROLES = ("system", "user", "assistant")

_CJK_RE = re.compile(r"[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\u3040-\u30ff\uac00-\ud7af]")
_NOT_ASCII_LETTERS = bytes(b for b in range(256) if not (65 <= b <= 90 or 97 <= b <= 122))


@dataclass(slots=True)
class Record:
    id: str
    messages: list[dict[str, str]] | None = None
    text: str | None = None
    source: str = ""
    lang: str = "other"
    line: int | None = None
    meta: dict[str, Any] = field(default_factory=dict)
    attrs: dict[str, Any] = field(default_factory=dict)

    # --- views used by many stages -------------------------------------------------------------
    def instruction(self) -> str:
        """The first user turn (the instruction), or the text of a plain-text record."""
        if self.messages is None:
            return self.text or ""
        for m in self.messages:
            if m["role"] == "user":
                return m["content"]
        return ""

    def prompt(self) -> str:
        """Everything but the assistant turns."""
        if self.messages is None:
            return self.text or ""
        return "\n".join(m["content"] for m in self.messages if m["role"] != "assistant")

    def response(self) -> str:
        """The assistant turns joined (empty for plain-text records)."""
        if self.messages is None:
            return ""
        return "\n".join(m["content"] for m in self.messages if m["role"] == "assistant")

    def full_text(self) -> str:
        if self.messages is None:
            return self.text or ""
        return "\n".join(m["content"] for m in self.messages)

    def n_turns(self) -> int:
        if self.messages is None:
            return 0
        return sum(1 for m in self.messages if m["role"] == "user")

    # --- (de)serialisation ---------------------------------------------------------------------
    def to_row(self) -> dict[str, Any]:
        row = {
            "id": self.id,
            "messages": self.messages,
            "text": self.text,
            "source": self.source,
            "lang": self.lang,
            "line": self.line,
            "meta": json.dumps(self.meta, ensure_ascii=False, sort_keys=True, default=str)
            if self.meta
            else "{}",
        }
        for k, v in self.attrs.items():
            row[k] = v
        return row

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> Record:
        attrs = {k: v for k, v in row.items() if k not in _BASE_COLUMNS}
        meta = row.get("meta")
        msgs = row.get("messages")
        return cls(
            id=row["id"],
            messages=[{"role": m["role"], "content": m["content"]} for m in msgs]
            if msgs is not None
            else None,
            text=row.get("text"),
            source=row.get("source") or "",
            lang=row.get("lang") or "other",
            line=row.get("line"),
            meta=json.loads(meta) if isinstance(meta, str) and meta else (meta or {}),
            attrs=attrs,
        )


_BASE_COLUMNS = frozenset({"id", "messages", "text", "source", "lang", "line", "meta"})


def normalize_text(text: str, *, punctuation: bool = False) -> str:
    """NFKC, lower case, collapsed whitespace; optionally strip punctuation too."""
    t = unicodedata.normalize("NFKC", text).casefold()
    if punctuation:
        t = "".join(ch for ch in t if not unicodedata.category(ch).startswith("P"))
    return " ".join(t.split())


def content_id(messages: list[dict[str, str]] | None, text: str | None) -> str:
    """A stable id from the content: same content → same id on every machine and run."""
    payload = json.dumps({"m": messages, "t": text}, ensure_ascii=False, sort_keys=True)
    return hashlib.blake2b(payload.encode("utf-8"), digest_size=10).hexdigest()


def detect_lang(text: str) -> str:
    """zh / en / other from the script mix: CJK share of letters (cheap, no model needed)."""
    sample = text[:2000]
    # ASCII letters counted on the UTF-8 bytes (multi-byte sequences never hold them): 10x faster than a regex
    latin = len(sample.encode("utf-8", "surrogatepass").translate(None, _NOT_ASCII_LETTERS))
    cjk = 0 if sample.isascii() else len(_CJK_RE.findall(sample))
    if cjk == 0 and latin == 0:
        return "other"
    # A CJK character carries roughly a word's worth of meaning, a latin letter a fifth of one.
    if cjk * 5 >= latin:
        return "zh" if re.search(r"[\u4e00-\u9fff]", sample) else "other"
    return "en" if latin >= 3 else "other"
