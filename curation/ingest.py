"""Ingest: any instruction data → :class:`Record`, streaming, with a ledger row for every bad line.

Formats are detected per row (a file may mix them): OpenAI ``messages``, ShareGPT
``conversations`` (optional top-level ``system``; turns as role/content or from/value in either
field), alpaca (instruction/input/output, optional ``history`` of [question, answer] pairs),
dolly (instruction/context/response), self-instruct (instruction + one-element ``instances``),
BELLE-style ``question`` + ``answer`` (or ``std_answer``), ``prompt`` + ``completion`` or
``response`` (an alpaca template inside the prompt is unwrapped), and plain ``text``. An explicit
field map (``instruction=question,output=answer``) overrides detection.

Files: ``.jsonl``/``.ndjson``, ``.json`` (JSON Lines, an array, or one object wrapping a list),
``.csv`` (header row), ``.parquet``, each optionally ``.gz``; directories (their data files,
recursively, hidden ones skipped) and globs expand. Hub datasets by id:
``hf://owner/name?split=train&config=x`` (streamed with ``datasets``; from the local cache when
``HF_HUB_OFFLINE`` is set).

Memory: JSON Lines, CSV and parquet are streamed (one line / one batch at a time; a line longer than
``max_line_bytes`` is skipped without being read into memory). A ``.json`` array or document is
loaded whole (its text, then one element at a time): use JSON Lines for large data.

Every input row ends up either in ``output.parquet`` or in ``ledger.parquet`` with one of these
reasons (the detail names the source, line and field): ``bad_json``, ``bad_csv``, ``invalid_utf8``,
``nested_too_deep``, ``not_an_object``, ``unknown_format``, ``unsupported_format``,
``missing_field``, ``null_field``, ``wrong_type``, ``bad_role``, ``empty_content``, ``too_large``,
``duplicate_id``. ``line`` is the 1-based physical line (``\\n``, ``\\r\\n`` or ``\\r``) where the row
starts; for parquet, hub datasets and rows wrapped in a JSON object it is the row number.

A source that cannot be read at all (missing file, corrupt gzip/parquet, duplicate CSV header,
offline hub id) raises :class:`SourceError` and no output is published. Sources where no row
survived are listed in ``stats["sources_all_bad"]``, sources without any row (empty file, empty
directory, glob without matches) in ``stats["empty_sources"]``; :meth:`IngestResult.problems`
words both for the CLI, which should exit non-zero when ``stats["rows_out"] == 0``.
"""

from __future__ import annotations

import csv
import glob
import gzip
import hashlib
import io
import json
import math
import os
import re
import time
import zlib
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlparse

import pyarrow as pa
import pyarrow.parquet as pq
from pydantic import BaseModel, Field, field_validator

from curation.errors import SftflowError
from curation.io import LEDGER_SCHEMA, ParquetWriter, record_schema, write_json
from curation.records import Record, content_id, detect_lang
from curation.stage import Drop, LedgerBalanceError, drop_row

STAGE = "ingest"
SUFFIXES = (".jsonl", ".ndjson", ".json", ".csv", ".parquet")
CANONICAL_FIELDS = ("id", "system", "instruction", "input", "output", "messages", "conversations", "text")
META_FIELDS = ("category", "class", "name", "task", "lang", "tags")

ROLE_ALIASES = {
    "system": "system",
    "user": "user",
    "human": "user",
    "prompter": "user",
    "gpt": "assistant",
    "assistant": "assistant",
    "chatgpt": "assistant",
    "bing": "assistant",
    "bard": "assistant",
    "model": "assistant",
    "bot": "assistant",
}

_BOM = b"\xef\xbb\xbf"
_PREVIEW_CHARS = 2000
# Lone surrogates come from JSON escapes ("\ud800") or undecodable bytes; parquet cannot store them.
_SURROGATE_RE = re.compile("[\ud800-\udfff]")
_WS_RE = re.compile(r"[ \t\n\r]*")
_STRUCT_RE = re.compile(r'["\[\]{}]')
_STRING_REST_RE = re.compile(r'[^"\\]*(?:\\.[^"\\]*)*"', re.S)
_SCALAR_END_RE = re.compile(r"[,\]\n]")
# strict=False accepts raw tabs/control characters inside strings (sloppy writers); built once, not per row
_JSON = json.JSONDecoder(strict=False)


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
        32 * 2**20, ge=1024, description="longer lines / CSV fields are skipped unread as too_large"
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


@dataclass
class IngestResult:
    """What :func:`ingest` wrote: its stats (also in ``stats.json``) and the two parquet files."""

    stats: dict[str, Any]
    output: Path
    ledger: Path

    def problems(self) -> list[str]:
        """Human-readable lines for what went wrong at the source level (empty when all is well)."""
        s = self.stats
        out = [f"{src}: no rows (empty file, directory or glob)" for src in s.get("empty_sources", [])]
        first_error = s.get("extra", {}).get("first_error", {})
        for src in s.get("sources_all_bad", []):
            per = s["extra"]["per_source"][src]
            reasons = ", ".join(
                f"{k.removeprefix('dropped:')}: {v}"
                for k, v in sorted(per.items())
                if k.startswith("dropped:")
            )
            out.append(
                f"{src}: all {per['rows_in']} rows dropped ({reasons}); first: {first_error.get(src, '?')}"
            )
        if s.get("rows_out", 0) == 0:
            out.append(f"no records: {s.get('rows_in', 0)} rows read, none usable")
        return out


@dataclass
class _Counters:
    rows_in: int = 0
    rows_out: int = 0
    reasons: Counter = field(default_factory=Counter)
    formats: Counter = field(default_factory=Counter)
    langs: Counter = field(default_factory=Counter)
    per_source: dict[str, Counter] = field(default_factory=dict)
    first_error: dict[str, str] = field(default_factory=dict)


# --------------------------------------------------------------------------------------------------
# row → record


def _label(key: str, names: dict[str, str]) -> str:
    return f"{names[key]!r} (mapped to {key})" if key in names else repr(key)


def _str_field(row: dict, key: str, names: dict[str, str], *, required: bool = True) -> str | None:
    if key not in row:
        if required:
            raise RowError("missing_field", f"field {_label(key, names)} is missing")
        return None
    v = row[key]
    if v is None:
        if required:
            raise RowError("null_field", f"field {_label(key, names)} is null")
        return None
    if isinstance(v, str):
        return v
    if isinstance(v, (int, float)) and not isinstance(v, bool):
        if isinstance(v, float) and not math.isfinite(v):
            raise RowError("wrong_type", f"field {_label(key, names)} is {v}, expected a string")
        # numbers in a text field (e.g. an answer "42") are fine as text
        return str(v)
    raise RowError("wrong_type", f"field {_label(key, names)} is {type(v).__name__}, expected a string")


def _turn_content(value: Any, where: str) -> str:
    if isinstance(value, str):
        return value
    if value is None:
        raise RowError("null_field", f"{where} is null")
    if isinstance(value, list):
        # OpenAI content parts: [{"type": "text", "text": ...}]; other part types have no text to train on
        parts = []
        for j, part in enumerate(value):
            if isinstance(part, str):
                parts.append(part)
            elif (
                isinstance(part, dict)
                and part.get("type", "text") == "text"
                and isinstance(part.get("text"), str)
            ):
                parts.append(part["text"])
            else:
                raise RowError("wrong_type", f"{where}[{j}] is not a text part")
        return "".join(parts)
    raise RowError("wrong_type", f"{where} is {type(value).__name__}, expected a string")


def _norm_messages(raw: Any, field_name: str) -> list[dict[str, str]]:
    """Turns as OpenAI (role/content) or ShareGPT (from/value) objects, whichever field holds them."""
    if raw is None:
        raise RowError("null_field", f"field {field_name!r} is null")
    if isinstance(raw, str) and raw.lstrip().startswith("["):
        # CSV and some parquet exports store the turns as a JSON string
        try:
            raw = _JSON.decode(raw)
        except ValueError as e:
            raise RowError("bad_json", f"field {field_name!r} holds invalid JSON: {_json_error(e)}") from None
        except RecursionError:
            raise RowError("nested_too_deep", f"field {field_name!r} is nested too deeply") from None
    if not isinstance(raw, list):
        raise RowError(
            "wrong_type", f"field {field_name!r} is {type(raw).__name__}, expected a list of turns"
        )
    msgs: list[dict[str, str]] = []
    for i, turn in enumerate(raw):
        if not isinstance(turn, dict):
            raise RowError("wrong_type", f"{field_name}[{i}] is {type(turn).__name__}, expected an object")
        role_key, content_key = ("from", "value") if "from" in turn else ("role", "content")
        if role_key not in turn:
            raise RowError("missing_field", f"{field_name}[{i}] has no 'role' (or 'from')")
        role = turn[role_key]
        if not isinstance(role, str) or role.strip().lower() not in ROLE_ALIASES:
            raise RowError(
                "bad_role", f"{field_name}[{i}].{role_key} = {repr(role)[:50]} is not a known role"
            )
        if content_key not in turn:
            raise RowError("missing_field", f"{field_name}[{i}] has no {content_key!r}")
        content = _turn_content(turn[content_key], f"{field_name}[{i}].{content_key}")
        msgs.append({"role": ROLE_ALIASES[role.strip().lower()], "content": content})
    return msgs


def _history_turns(raw: Any) -> list[dict[str, str]]:
    """Alpaca ``history`` (LLaMA-Factory, BELLE multi-turn): [[instruction, answer], ...] before the last turn."""
    if raw is None:
        return []
    if not isinstance(raw, list):
        raise RowError(
            "wrong_type", f"field 'history' is {type(raw).__name__}, expected a list of [q, a] pairs"
        )
    turns: list[dict[str, str]] = []
    for i, pair in enumerate(raw):
        if not (isinstance(pair, list) and len(pair) == 2 and all(isinstance(x, str) for x in pair)):
            raise RowError("wrong_type", f"history[{i}] is not a [question, answer] pair of strings")
        turns += [{"role": "user", "content": pair[0]}, {"role": "assistant", "content": pair[1]}]
    return turns


def _prompt_to_instruction(prompt: str) -> tuple[str, str]:
    """Unwrap the alpaca template ("Below is an instruction... ### Instruction: ... ### Response:").

    Plain string search, not a regex: a backtracking pattern is quadratic on hostile prompts.
    """
    body = prompt.strip()
    if not (body.startswith("Below is an instruction") and body.endswith("### Response:")):
        return prompt, ""
    start = body.find("### Instruction:")
    if start < 0:
        return prompt, ""
    inner = body[start + len("### Instruction:") : -len("### Response:")]
    instr, sep, inp = inner.partition("### Input:")
    return instr.strip(), inp.strip() if sep else ""


def _turns(system: str | None, instruction: str, inp: str | None, output: str) -> list[dict[str, str]]:
    user = instruction if not inp or not inp.strip() else f"{instruction}\n\n{inp}"
    msgs = [{"role": "system", "content": system}] if system else []
    msgs += [{"role": "user", "content": user}, {"role": "assistant", "content": output}]
    return msgs


def detect_format(row: dict) -> str:
    """Name of the row's format (see module docstring), or ``unknown``."""
    if "messages" in row:
        return "openai"
    if "conversations" in row:
        return "sharegpt"
    if "instruction" in row:
        if "output" in row:
            return "alpaca"
        if "response" in row:
            return "dolly"
        if "instances" in row:
            return "self_instruct"
    if "question" in row and ("answer" in row or "std_answer" in row):
        return "qa"
    if "prompt" in row and ("completion" in row or "response" in row):
        return "prompt_completion"
    if "text" in row:
        return "text"
    return "unknown"


def _mapped_format(field_map: dict[str, str]) -> str | None:
    """The format an explicit field map asks for (None: detect from the row)."""
    if "messages" in field_map:
        return "openai"
    if "conversations" in field_map:
        return "sharegpt"
    if "instruction" in field_map or "output" in field_map:
        return "alpaca"
    if "text" in field_map:
        return "text"
    return None


def row_to_record(row: Any, source: str, line: int, config: IngestConfig) -> tuple[Record, str]:
    """Convert one raw row; raises :class:`RowError` with a ledger reason for bad rows."""
    if not isinstance(row, dict):
        raise RowError("not_an_object", f"row is {type(row).__name__}, expected an object")
    names: dict[str, str] = {}
    fmt: str | None = None
    if config.field_map:
        mapped = {canon: row[src] for canon, src in config.field_map.items() if src in row}
        row = {**row, **mapped}
        for canon, src in config.field_map.items():
            if src not in row:
                row.pop(canon, None)  # a mapped field that is absent is missing, whatever else the row has
        names = {canon: src for canon, src in config.field_map.items()}
        fmt = _mapped_format(config.field_map)
    fmt = fmt or detect_format(row)
    system = _str_field(row, "system", names, required=False)
    messages: list[dict[str, str]] | None = None
    text: str | None = None
    if fmt == "openai":
        messages = _norm_messages(row.get("messages"), names.get("messages", "messages"))
    elif fmt == "sharegpt":
        messages = _norm_messages(row.get("conversations"), names.get("conversations", "conversations"))
        if system and not any(m["role"] == "system" for m in messages):
            messages.insert(0, {"role": "system", "content": system})
    elif fmt == "alpaca":
        messages = _turns(
            system,
            _str_field(row, "instruction", names),
            _str_field(row, "input", names, required=False),
            _str_field(row, "output", names),
        )
        if row.get("history") is not None:
            messages[-2:-2] = _history_turns(row["history"])
    elif fmt == "dolly":
        messages = _turns(
            system,
            _str_field(row, "instruction", names),
            _str_field(row, "context", names, required=False),
            _str_field(row, "response", names),
        )
    elif fmt == "self_instruct":
        inst = row["instances"]
        if not isinstance(inst, list) or not all(isinstance(x, dict) for x in inst):
            raise RowError("wrong_type", "field 'instances' must be a list of {input, output} objects")
        if len(inst) != 1:
            raise RowError(
                "unsupported_format", f"self-instruct row with {len(inst)} instances; expected exactly 1"
            )
        messages = _turns(
            system,
            _str_field(row, "instruction", names),
            _str_field(inst[0], "input", {}, required=False),
            _str_field(inst[0], "output", {}),
        )
    elif fmt == "qa":
        answer_key = "answer" if "answer" in row else "std_answer"
        messages = _turns(
            system, _str_field(row, "question", names), None, _str_field(row, answer_key, names)
        )
    elif fmt == "prompt_completion":
        key = "completion" if "completion" in row else "response"
        instr, inp = _prompt_to_instruction(_str_field(row, "prompt", names))
        messages = _turns(system, instr, inp, _str_field(row, key, names))
    elif fmt == "text":
        text = _str_field(row, "text", names)
    else:
        keys = ", ".join(sorted(str(k)[:40] for k in row)[:8]) or "none"
        raise RowError("unknown_format", f"no known instruction fields (fields: {keys}); use --field-map")

    if messages is not None:
        messages = [m for m in messages if not (m["role"] == "system" and not m["content"].strip())]
        for i, m in enumerate(messages):
            if not m["content"].strip():
                raise RowError("empty_content", f"{m['role']} turn {i} is empty")
        roles = {m["role"] for m in messages}
        if "user" not in roles:
            raise RowError("missing_field", "conversation has no user turn")
        if "assistant" not in roles:
            raise RowError("missing_field", "conversation has no assistant turn")
        full = "\n".join(m["content"] for m in messages)
    else:
        assert text is not None
        if not text.strip():
            raise RowError("empty_content", "text is empty")
        full = text
    n_chars = len(full) - (len(messages) - 1 if messages else 0)
    if n_chars > config.max_chars:
        raise RowError("too_large", f"{n_chars} characters > max_chars {config.max_chars}")
    bad = _SURROGATE_RE.search(full)
    if bad:
        raise RowError(
            "invalid_utf8", f"text has an undecodable byte or lone surrogate U+{ord(bad.group()):04X}"
        )

    given = row.get("id")
    if given is not None and (isinstance(given, bool) or not isinstance(given, (str, int))):
        raise RowError("wrong_type", f"field 'id' is {type(given).__name__}, expected a string or integer")
    rid = str(given).strip() if given is not None else ""
    if _SURROGATE_RE.search(rid):
        raise RowError("invalid_utf8", "field 'id' has an undecodable byte or lone surrogate")
    meta = {k: row[k] for k in META_FIELDS if row.get(k) is not None and row.get(k) != ""}
    if meta:
        try:
            encoded = json.dumps(meta, ensure_ascii=False, default=str)
        except (RecursionError, ValueError):
            raise RowError(
                "nested_too_deep", f"a metadata field ({', '.join(meta)}) is nested too deeply"
            ) from None
        if _SURROGATE_RE.search(encoded):
            raise RowError("invalid_utf8", f"a metadata field ({', '.join(meta)}) has a lone surrogate")
    rec = Record(
        id=rid, messages=messages, text=text, source=source, lang=detect_lang(full), line=line, meta=meta
    )
    return rec, fmt


# --------------------------------------------------------------------------------------------------
# sources → raw rows


def expand_sources(specs: Iterable[str]) -> list[str]:
    """Files, directories (their data files, sorted) and globs; hub ids pass through."""
    return _expand(specs)[0]


def _expand(specs: Iterable[str]) -> tuple[list[str], list[str]]:
    """(data files and hub ids, each once; specs that expanded to no file)."""
    out: list[str] = []
    empty: list[str] = []
    seen: set[str] = set()

    def add(path: str) -> None:
        key = path if path.startswith("hf://") else os.path.realpath(path)
        if key not in seen:  # a file named twice (itself and via its folder) is read once
            seen.add(key)
            out.append(path)

    for spec in map(str, specs):
        p = Path(spec)
        if spec.startswith("hf://"):
            add(spec)
        elif p.is_file():
            _check_file_type(spec)  # fail before reading anything, not after the files before it
            add(spec)
        elif p.is_dir():
            files = _dir_files(p)
            if not files:
                empty.append(spec)
            for f in files:
                add(f)
        elif any(ch in spec for ch in "*?["):
            files = []
            for m in sorted(glob.glob(spec, recursive=True)):
                if os.path.isdir(m):
                    files.extend(_dir_files(Path(m)))
                elif _data_suffix(os.path.basename(m)):
                    files.append(m)
            if not files:
                empty.append(spec)
            for f in files:
                add(f)
        else:
            raise SourceError(f"{spec}: no such file or directory")
    return out, empty


def _dir_files(d: Path) -> list[str]:
    return sorted(
        str(f)
        for f in d.rglob("*")
        if f.is_file()
        and _data_suffix(f.name)
        and not any(part.startswith(".") for part in f.relative_to(d).parts)
    )


def _data_suffix(name: str) -> str | None:
    name = name.lower()
    name = name[:-3] if name.endswith(".gz") else name
    for s in SUFFIXES:
        if name.endswith(s):
            return s
    return None


def _check_file_type(path: str) -> str:
    """The data suffix of ``path``; a clear :class:`SourceError` when it has none ingest reads."""
    suffix = _data_suffix(os.path.basename(path))
    if suffix is None:
        raise SourceError(
            f"{path}: unknown file type (expected one of {', '.join(SUFFIXES)}, optionally .gz)"
        )
    if suffix == ".parquet" and path.lower().endswith(".gz"):
        raise SourceError(f"{path}: gzipped parquet is not read (parquet compresses itself): gunzip it first")
    return suffix


def _open_binary(path: str) -> io.BufferedIOBase:
    return gzip.open(path, "rb") if path.lower().endswith(".gz") else open(path, "rb")  # noqa: SIM115


def iter_raw_rows(path: str, config: IngestConfig) -> Iterator[tuple[int, Any, RowError | None]]:
    """(line number, row, error) for every row of one source; bad rows come with their error.

    Raises :class:`SourceError` when the source cannot be read at all.
    """
    if path.startswith("hf://"):
        yield from _iter_hub(path, config)
        return
    suffix = _check_file_type(path)
    try:
        if suffix != ".parquet":
            with _open_binary(path) as fh:
                if fh.read(2) in (b"\xff\xfe", b"\xfe\xff"):
                    raise SourceError(
                        f"{path}: file is UTF-16 (it starts with a UTF-16 BOM); convert it to UTF-8"
                    )
        if suffix == ".parquet":
            yield from _iter_parquet(path, config)
        elif suffix == ".csv":
            yield from _iter_csv(path, config)
        elif suffix == ".json":
            yield from _iter_json(path, config)
        else:
            yield from _iter_jsonl(path, config)
    except (OSError, EOFError, zlib.error, pa.ArrowException) as e:
        # truncated or corrupt gzip, unreadable file, not-a-parquet file...
        raise SourceError(f"{path}: cannot read: {type(e).__name__}: {str(e)[:300]}") from None


def _iter_parquet(path: str, config: IngestConfig) -> Iterator[tuple[int, Any, RowError | None]]:
    pf = pq.ParquetFile(path)
    n = 0
    for rb in pf.iter_batches(batch_size=config.batch_size):
        for row in rb.to_pylist():
            n += 1
            yield n, row, None


def _preview_bytes(raw: bytes) -> str:
    return raw[: _PREVIEW_CHARS * 2].decode("utf-8", "replace")[:_PREVIEW_CHARS]


def _iter_lines(fh: io.BufferedIOBase, limit: int) -> Iterator[tuple[int, bytes | None]]:
    """(line number, bytes without the newline) per physical line; ``None`` for a line over ``limit``.

    ``\\r\\n`` and a lone ``\\r`` end lines too (a raw CR is whitespace or invalid in JSON, never
    content, so splitting on it loses nothing). An over-long line is skipped without holding it.
    """
    lineno = 0
    while True:
        raw = fh.readline(limit + 1)
        if not raw:
            return
        if len(raw) > limit and not raw.endswith(b"\n"):
            # an over-long line, or many CR-ended lines: the careful path
            for part in _split_long(raw, fh, limit):
                lineno += 1
                yield lineno, part
            continue
        if raw.endswith(b"\n"):
            raw = raw[:-1]
        if raw.endswith(b"\r"):
            raw = raw[:-1]
        if b"\r" in raw:
            for part in raw.split(b"\r"):
                lineno += 1
                yield lineno, part
        else:
            lineno += 1
            yield lineno, raw


def _split_long(buf: bytes, fh: io.BufferedIOBase, limit: int) -> Iterator[bytes | None]:
    """Lines up to the next LF, split at CRs, from a readline() result that hit ``limit``.

    Holds at most about twice ``limit`` bytes; a line over ``limit`` comes out as ``None``.
    ``buf`` holds an LF only as its last byte (it comes from readline).
    """
    skipping = False  # inside a line already known to be too long
    while True:
        i = buf.find(b"\r")
        if i >= 0:
            part, buf = buf[:i], buf[i + 1 :]
            yield None if skipping or len(part) > limit else part
            skipping = False
            if not buf:
                buf = fh.readline(limit + 1)
                if not buf:
                    return
            if buf.startswith(b"\n"):  # the CR was half of a CRLF that ends this readline() line
                return
            continue
        if buf.endswith(b"\n"):
            yield None if skipping or len(buf) - 1 > limit else buf[:-1]
            return
        if len(buf) > limit:
            skipping, buf = True, b""
        more = fh.readline(limit + 1)
        if not more:
            if buf or skipping:
                yield None if skipping else buf
            return
        buf += more


def _iter_jsonl(path: str, config: IngestConfig) -> Iterator[tuple[int, Any, RowError | None]]:
    with _open_binary(path) as fh:
        for lineno, raw in _iter_lines(fh, config.max_line_bytes):
            if raw is None:
                yield (
                    lineno,
                    None,
                    RowError("too_large", f"line is longer than max_line_bytes {config.max_line_bytes}"),
                )
                continue
            if raw.startswith(_BOM):  # at the start of the file, or of a file concatenated onto another
                raw = raw[3:]
            if not raw.strip():
                continue  # blank lines are not rows
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                yield (
                    lineno,
                    None,
                    RowError(
                        "invalid_utf8",
                        f"invalid UTF-8 byte 0x{raw[e.start]:02x} at column {e.start + 1}",
                        _preview_bytes(raw),
                    ),
                )
                continue
            try:
                yield lineno, _JSON.decode(text), None
            except ValueError as e:
                yield (
                    lineno,
                    None,
                    RowError("bad_json", f"invalid JSON: {_json_error(e)}", text[:_PREVIEW_CHARS]),
                )
            except RecursionError:
                yield (
                    lineno,
                    None,
                    RowError("nested_too_deep", "JSON is nested too deeply", text[:_PREVIEW_CHARS]),
                )


def _json_error(e: ValueError) -> str:
    if isinstance(e, json.JSONDecodeError):
        return f"{e.msg} at column {e.colno}"
    return str(e)[:200]  # e.g. an integer with more digits than Python converts


def _first_byte(path: str) -> bytes:
    """The first byte that is not a BOM or whitespace (b"" for a blank file)."""
    with _open_binary(path) as fh:
        first = True
        while chunk := fh.read(1 << 16):
            if first:
                chunk = chunk.removeprefix(_BOM)
                first = False
            stripped = chunk.lstrip(b" \t\r\n")
            if stripped:
                return stripped[:1]
    return b""


def _first_line_is_json(path: str, config: IngestConfig) -> bool:
    with _open_binary(path) as fh:
        for _, raw in _iter_lines(fh, config.max_line_bytes):
            if raw is None:
                return True  # an over-long line: JSON Lines reading reports it
            raw = raw.removeprefix(_BOM)
            if raw.strip():
                try:
                    _JSON.decode(raw.decode("utf-8", "surrogateescape"))
                    return True
                except (ValueError, RecursionError):
                    return False
    return True


def _iter_json(path: str, config: IngestConfig) -> Iterator[tuple[int, Any, RowError | None]]:
    """JSON Lines under a .json name, a JSON array, or one JSON document (loaded whole)."""
    first = _first_byte(path)
    if first not in (b"[", b"{") or (first == b"{" and _first_line_is_json(path, config)):
        yield from _iter_jsonl(path, config)
        return
    with _open_binary(path) as fh:
        data = fh.read()
    # Undecodable bytes become lone surrogates: the rows holding them are ledgered as invalid_utf8.
    text = data.removeprefix(_BOM).decode("utf-8", "surrogateescape")
    del data
    if first == b"[":
        yield from _iter_json_array(text, config)
        return
    try:
        doc = _JSON.decode(text)
    except (ValueError, RecursionError):
        # not one document: read it as JSON Lines, so a broken line costs that row, not the file
        del text
        yield from _iter_jsonl(path, config)
        return
    yield from _json_document_rows(doc)


def _line_counter(text: str) -> Any:
    """line_at(pos) for increasing positions, counting \\n, \\r\\n and \\r as one line end each."""
    state = {"pos": 0, "line": 1}

    def line_at(pos: int) -> int:
        a = state["pos"]
        if pos > a:
            state["line"] += text.count("\n", a, pos) + text.count("\r", a, pos) - text.count("\r\n", a, pos)
            state["pos"] = pos
        return state["line"]

    return line_at


def _skip_value(text: str, pos: int) -> int | None:
    """End of the (possibly invalid) JSON value at ``pos`` by bracket matching, or None if unterminated.

    No recursion, so it also gets past values nested too deeply for the parser.
    """
    if text[pos] not in "[{":
        m = _SCALAR_END_RE.search(text, pos)
        return m.start() if m else None
    depth = 0
    i = pos
    while True:
        m = _STRUCT_RE.search(text, i)
        if m is None:
            return None
        ch, i = m.group(), m.end()
        if ch == '"':
            s = _STRING_REST_RE.match(text, i)
            if s is None:
                return None
            i = s.end()
        elif ch in "[{":
            depth += 1
        else:
            depth -= 1
            if depth == 0:
                return i


def _iter_json_array(text: str, config: IngestConfig) -> Iterator[tuple[int, Any, RowError | None]]:
    """Elements one by one, each with the line it starts on; a bad element is ledgered and skipped."""
    decoder = _JSON
    line_at = _line_counter(text)
    n = len(text)
    pos = _WS_RE.match(text).end() + 1  # past "["
    element = 0
    while True:
        pos = _WS_RE.match(text, pos).end()
        if pos >= n:
            return  # truncated after a complete element: nothing lost
        if text[pos] == "]":
            rest = _WS_RE.match(text, pos + 1).end()
            if rest >= n:
                return
            if text[rest] == "[":  # concatenated arrays
                pos = rest + 1
                continue
            yield (
                line_at(rest),
                None,
                RowError(
                    "bad_json",
                    "invalid JSON: extra data after the end of the array",
                    text[rest : rest + _PREVIEW_CHARS],
                ),
            )
            return
        element += 1
        start = pos
        line = line_at(start)
        try:
            row, pos = decoder.raw_decode(text, start)
            if pos - start > config.max_line_bytes:
                yield (
                    line,
                    None,
                    RowError(
                        "too_large",
                        f"element {element} is longer than max_line_bytes {config.max_line_bytes}",
                    ),
                )
            else:
                yield line, row, None
        except (ValueError, RecursionError) as e:
            end = _skip_value(text, start)
            if isinstance(e, RecursionError):
                err = RowError("nested_too_deep", f"element {element} is nested too deeply")
            elif isinstance(e, json.JSONDecodeError):
                where = f"line {e.lineno} column {e.colno}"
                err = RowError("bad_json", f"invalid JSON in element {element}: {e.msg} at {where}")
            else:
                err = RowError("bad_json", f"invalid JSON in element {element}: {_json_error(e)}")
            err.raw = text[start : start + _PREVIEW_CHARS]
            if end is None:
                err.detail += "; the array is not terminated, the rest of the file is unreadable"
            yield line, None, err
            if end is None:
                return
            pos = end
        pos = _WS_RE.match(text, pos).end()
        if text[pos : pos + 1] == ",":
            pos += 1
        # anything else: a missing comma or the closing bracket, handled on the next turn


def _json_document_rows(doc: Any) -> Iterator[tuple[int, Any, RowError | None]]:
    """One pretty-printed object: a wrapper of one list of rows ({"data": [...]}) or a single row."""
    lists = [v for v in doc.values() if isinstance(v, list)] if isinstance(doc, dict) else []
    if len(lists) == 1 and lists[0] and all(isinstance(x, dict) for x in lists[0]):
        # Rows inside a wrapper have no line of their own: ``line`` is the element number.
        for i, row in enumerate(lists[0], start=1):
            yield i, row, None
    else:
        yield 1, doc, None


def _iter_csv(path: str, config: IngestConfig) -> Iterator[tuple[int, Any, RowError | None]]:
    csv.field_size_limit(config.max_line_bytes)
    with _open_binary(path) as fb:
        # utf-8-sig drops a BOM; surrogateescape keeps invalid bytes visible so the row can be ledgered
        fh = io.TextIOWrapper(fb, encoding="utf-8-sig", errors="surrogateescape", newline="")
        reader = csv.reader(fh, strict=True)  # a stray quote is a bad row, not a silently merged field
        header: list[str] | None = None
        last_line = 0
        while True:
            try:
                cells = next(reader)
            except StopIteration:
                return
            except csv.Error as e:
                start, last_line = last_line + 1, reader.line_num
                reason = "too_large" if "field larger than field limit" in str(e) else "bad_csv"
                yield start, None, RowError(reason, f"CSV error: {e}")
                continue
            start, last_line = last_line + 1, reader.line_num
            if not cells or (len(cells) == 1 and not cells[0].strip()):
                continue  # blank line
            if header is None:
                header = [c.strip() for c in cells]
                dupes = sorted({c for c in header if header.count(c) > 1})
                if dupes:
                    raise SourceError(f"{path}: CSV header repeats column(s) {dupes}")
                if any(_SURROGATE_RE.search(c) for c in header):
                    raise SourceError(f"{path}: CSV header is not valid UTF-8")
                continue
            if len(cells) != len(header):
                yield (
                    start,
                    None,
                    RowError(
                        "bad_csv",
                        f"row has {len(cells)} fields, the header has {len(header)}",
                        _csv_preview(cells),
                    ),
                )
                continue
            bad = [header[i] for i, cell in enumerate(cells) if _SURROGATE_RE.search(cell)]
            if bad:
                yield (
                    start,
                    None,
                    RowError("invalid_utf8", f"invalid UTF-8 in field(s) {bad[:5]}", _csv_preview(cells)),
                )
                continue
            # CSV has no nulls: an empty cell is an empty string (optional fields treat it as absent)
            yield start, dict(zip(header, cells, strict=True)), None


def _csv_preview(cells: list[str]) -> str:
    return ",".join(cells)[:_PREVIEW_CHARS]


def _iter_hub(spec: str, config: IngestConfig) -> Iterator[tuple[int, Any, RowError | None]]:
    u = urlparse(spec)
    name = (u.netloc + u.path).strip("/")
    q = parse_qs(u.query)
    split = q.get("split", [config.hf_split])[0]
    subset = q.get("config", [None])[0]
    offline = any(
        os.environ.get(v, "").lower() in ("1", "true", "yes", "on")
        for v in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE")
    )
    if not name:
        raise SourceError(f"{spec}: no dataset name (expected hf://owner/name?split=train)")
    try:
        import datasets

        # Offline, streaming cannot work: read the local cache (memory-mapped arrow) instead.
        ds = datasets.load_dataset(name, subset, split=split, streaming=not offline)
        it = iter(ds)
        first = next(it, None)
    except Exception as e:  # noqa: BLE001 - any hub/offline failure becomes one clear message
        hint = (
            " (offline: HF_HUB_OFFLINE is set and it is not in the local cache)"
            if offline
            else " (no network access to the hub?)"
        )
        raise SourceError(
            f"{spec}: could not load hub dataset {name!r} split {split!r}{hint}: {type(e).__name__}: {str(e)[:300]}. "
            "Download it where you have network access and pass the local files instead."
        ) from None
    if first is None:
        return
    yield 1, dict(first), None
    i = 1
    while True:
        try:
            row = next(it, None)
        except Exception as e:  # noqa: BLE001 - a stream that breaks off (network) fails the source clearly
            raise SourceError(
                f"{spec}: reading stopped after row {i}: {type(e).__name__}: {str(e)[:300]}"
            ) from None
        if row is None:
            return
        i += 1
        yield i, dict(row), None


# --------------------------------------------------------------------------------------------------
# the stage


def ingest(
    sources: Iterable[str],
    out_dir: str | Path,
    config: IngestConfig | None = None,
    progress: Any = None,
) -> IngestResult:
    """Read every source into ``out_dir/output.parquet`` (+ ledger, stats); nothing is lost.

    Ids: a row's own ``id`` when it has one (an id repeated within one source is dropped as
    ``duplicate_id``; one already used by another source is qualified as ``<source>#<id>``);
    otherwise a stable content hash, with ``~N`` appended to the N-th repeat of identical content
    so ids stay unique (dedup then drops the repeats as exact duplicates, naming the first).
    Raises :class:`SourceError` for a source that cannot be read (nothing is published then).
    """
    config = config or IngestConfig()
    out_dir = Path(out_dir)
    started = time.perf_counter()
    paths, empty_sources = _expand(list(sources))
    c = _Counters()
    ids = _IdAssigner()
    with (
        ParquetWriter(out_dir / "output.parquet", record_schema()) as out_w,
        ParquetWriter(out_dir / "ledger.parquet", LEDGER_SCHEMA) as led_w,
    ):
        kept: list[Record] = []
        dropped: list[dict] = []

        def flush() -> None:
            out_w.write_rows([r.to_row() for r in kept])
            led_w.write_rows(dropped)
            if progress is not None:
                progress(len(kept) + len(dropped))
            kept.clear()
            dropped.clear()

        for source_no, path in enumerate(paths):
            src = path if path.startswith("hf://") or os.path.isabs(path) else os.path.relpath(path)
            src = _clean(src)  # a file name that is not UTF-8 arrives with lone surrogates
            per = c.per_source.setdefault(src, Counter())
            prev_line, same_line = None, 0
            for lineno, row, err in iter_raw_rows(path, config):
                c.rows_in += 1
                per["rows_in"] += 1
                rec: Record | None = None
                fmt = ""
                if err is None:
                    try:
                        rec, fmt = row_to_record(row, src, lineno, config)
                    except RowError as e:
                        err = e
                    except RecursionError:
                        err = RowError("nested_too_deep", "row is nested too deeply")
                duplicate_of = None
                if rec is not None:
                    err, duplicate_of = ids.assign(rec, source_no, src)
                if err is not None:
                    # several array elements can share a line: keep ledger ids unique
                    same_line = same_line + 1 if lineno == prev_line else 0
                    prev_line = lineno
                    stub_id = f"{src}:{lineno}" + (f"#{same_line}" if same_line else "")
                    preview = (
                        _clean(err.raw) if err.raw is not None else None if row is None else _preview(row)
                    )
                    stub = Record(id=stub_id, source=src, line=lineno, text=preview)
                    detail = _clean(f"{src} line {lineno}: {err.detail}")
                    dropped.append(drop_row(Drop(stub, err.reason, detail, duplicate_of), STAGE))
                    c.reasons[err.reason] += 1
                    per[f"dropped:{err.reason}"] += 1
                    c.first_error.setdefault(src, detail)
                else:
                    assert rec is not None
                    kept.append(rec)
                    c.rows_out += 1
                    c.formats[fmt] += 1
                    c.langs[rec.lang] += 1
                    per["rows_out"] += 1
                if len(kept) + len(dropped) >= config.batch_size:
                    flush()
            if per["rows_in"] == 0:
                empty_sources.append(src)
        flush()
        if c.rows_in != out_w.rows + led_w.rows:
            raise LedgerBalanceError(
                f"ingest: {c.rows_in} rows in but {out_w.rows} kept + {led_w.rows} dropped"
            )
    secs = time.perf_counter() - started
    per_source = {k: dict(v) for k, v in c.per_source.items()}
    stats = {
        "stage": STAGE,
        "sources": [_clean(p) for p in paths],
        "rows_in": c.rows_in,
        "rows_out": c.rows_out,
        "rows_dropped": c.rows_in - c.rows_out,
        "dropped_by_reason": dict(sorted(c.reasons.items())),
        "sources_all_bad": [
            k for k, v in per_source.items() if v.get("rows_in", 0) > 0 and not v.get("rows_out")
        ],
        "empty_sources": [_clean(p) for p in empty_sources],
        "seconds": round(secs, 3),
        "rows_per_s": round(c.rows_in / secs, 1) if secs > 0 else None,
        "extra": {
            "formats": dict(c.formats),
            "langs": dict(c.langs),
            "per_source": per_source,
            "first_error": c.first_error,
            "ids_qualified": ids.qualified,
        },
    }
    write_json(out_dir / "stats.json", stats)
    return IngestResult(stats, out_dir / "output.parquet", out_dir / "ledger.parquet")


class _IdAssigner:
    """Keeps output ids unique with compact per-row state (a 12-byte digest and a source number)."""

    def __init__(self) -> None:
        self.owner: dict[bytes, int] = {}  # id digest → number of the source that used it first
        self.repeats: dict[bytes, int] = {}  # content id → times seen
        self.qualified = 0

    @staticmethod
    def _key(rid: str) -> bytes:
        return hashlib.blake2b(rid.encode("utf-8"), digest_size=12).digest()

    def assign(self, rec: Record, source_no: int, src: str) -> tuple[RowError | None, str | None]:
        """Set ``rec.id``; returns (error, duplicate_of) when the row must be dropped."""
        if rec.id:
            key = self._key(rec.id)
            first = self.owner.get(key)
            if first is None:
                self.owner[key] = source_no
                return None, None
            if first == source_no:
                return RowError(
                    "duplicate_id", f"id {rec.id[:200]!r} was already used by an earlier row"
                ), rec.id
            # ids like "1", "2" are per dataset: qualify rather than drop a whole second source
            given = rec.id
            rec.id = f"{src}#{given}"
            rec.meta["given_id"] = given
            self.qualified += 1
            key = self._key(rec.id)
            if key in self.owner:
                return RowError(
                    "duplicate_id", f"id {given[:200]!r} was already used by an earlier row"
                ), rec.id
            self.owner[key] = source_no
            return None, None
        base = content_id(rec.messages, rec.text)
        ckey = bytes.fromhex(base)
        n = self.repeats.get(ckey, 0)
        self.repeats[ckey] = n + 1
        rec.id = base if n == 0 else f"{base}~{n}"
        key = self._key(rec.id)
        while key in self.owner:  # a given id that happens to equal a content id
            n += 1
            rec.id = f"{base}~{n}"
            key = self._key(rec.id)
        self.owner[key] = source_no
        return None, None


def _preview(row: Any) -> str:
    try:
        s = json.dumps(row, ensure_ascii=False, default=str)
    except (TypeError, ValueError, RecursionError):
        try:
            s = repr(row)
        except RecursionError:
            s = f"<{type(row).__name__} nested too deeply to print>"
    return _clean(s[:_PREVIEW_CHARS])


def _clean(s: str) -> str:
    """Replace lone surrogates (the ledger is parquet: they would not encode)."""
    return _SURROGATE_RE.sub("\ufffd", s) if _SURROGATE_RE.search(s) else s
