"""What every part of ingest shares: its config, its two error types, and the text helpers.

:class:`RowError` is one bad row (a ledger reason + detail); :class:`SourceError` a source that
cannot be read at all (the user's error: one line, exit 2).
"""

from __future__ import annotations

import json
import re

from pydantic import BaseModel, Field, field_validator

from curation.errors import SftflowError

CANONICAL_FIELDS = ("id", "system", "instruction", "input", "output", "messages", "conversations", "text")

PREVIEW_CHARS = 2000
# Lone surrogates come from JSON escapes ("\ud800") or undecodable bytes; parquet cannot store them.
SURROGATE_RE = re.compile("[\ud800-\udfff]")
# strict=False accepts raw tabs/control characters inside strings (sloppy writers); built once, not per row
JSON = json.JSONDecoder(strict=False)


class IngestConfig(BaseModel):
    """How to read sources."""

    field_map: dict[str, str] = Field(
        default_factory=dict,
        description="canonical field → source field, e.g. {instruction: question, output: answer}; "
        "canonical fields: " + ", ".join(CANONICAL_FIELDS),
    )
    batch_size: int = Field(2048, ge=1)
    max_chars: int = Field(200_000, ge=1, description="rows with more characters are dropped as too_large")
    max_line_bytes: int = Field(
        32 * 2**20, ge=1024,
        description="longer lines / CSV fields / JSON array elements are skipped unread as too_large",
    )
    max_document_bytes: int = Field(
        256 * 2**20, ge=1024,
        description="a .json file that is one document (not an array, not JSON Lines) is loaded whole; "
        "larger ones are refused with a source error",
    )
    max_columns: int = Field(10_000, ge=1, description="a CSV header with more columns is a source error")
    max_parquet_footer_bytes: int = Field(
        64 * 2**20, ge=1024,
        description="a parquet file whose metadata footer is larger is refused (the metadata is parsed whole and "
        "takes ~10x its size in memory; 100,000 row groups of 2 columns make ~23 MiB)",
    )
    hf_split: str = "train"

    @field_validator("field_map")
    @classmethod
    def _known_fields(cls, v: dict[str, str]) -> dict[str, str]:
        bad = sorted(set(v) - set(CANONICAL_FIELDS))
        if bad:
            raise ValueError(f"unknown canonical field(s) {bad}; allowed: {list(CANONICAL_FIELDS)}")
        return v


class RowError(ValueError):
    """A row that cannot become a record; ``reason`` is the ledger reason, ``raw`` a text preview."""

    def __init__(self, reason: str, detail: str, raw: str | None = None):
        super().__init__(detail)
        self.reason = reason
        self.detail = detail
        self.raw = raw


class SourceError(SftflowError, ValueError):
    """A source that cannot be read at all (missing file, corrupt file, offline hub id...)."""



def json_error(e: ValueError) -> str:
    if isinstance(e, json.JSONDecodeError):
        return f"{e.msg} at column {e.colno}"
    return str(e)[:200]  # e.g. an integer with more digits than Python converts


def clean(s: str) -> str:
    """Replace lone surrogates (the ledger is parquet: they would not encode)."""
    return SURROGATE_RE.sub("\ufffd", s) if SURROGATE_RE.search(s) else s
