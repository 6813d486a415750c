"""Ingest: any instruction data → :class:`Record`, streaming, with a ledger row for every bad line.

Formats are detected per row (a file may mix them): OpenAI ``messages``, ShareGPT
``conversations`` (from/value), alpaca (instruction/input/output), dolly
(instruction/context/response), BELLE-style ``question``/``answer``, ``prompt`` + ``completion`` or
``response``, and plain ``text``. An explicit field map (``instruction=question,output=answer``)
overrides detection. Files: ``.jsonl``, ``.json`` (an array or one object per line), ``.csv``,
``.parquet``, each optionally ``.gz``; directories and globs expand. Hub datasets by id:
``hf://owner/name?split=train&config=x`` (streamed with ``datasets``).
"""

from __future__ import annotations

import csv
import glob
import gzip
import hashlib
import io
import json
import os
import re
import sys
import time
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlparse

import pyarrow.parquet as pq
from pydantic import BaseModel, Field, field_validator

from curation.io import LEDGER_SCHEMA, ParquetWriter, record_schema, write_json
from curation.records import ROLES, Record, content_id, detect_lang
from curation.stage import Drop, drop_row

STAGE = "ingest"
SUFFIXES = (".jsonl", ".json", ".csv", ".parquet", ".ndjson")

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

# Dolly-style rows often carry the alpaca prompt template inside "prompt": keep only the instruction.
_ALPACA_TEMPLATE = re.compile(
    r"^Below is an instruction.*?### Instruction:\s*(?P<instr>.*?)\s*(?:### Input:\s*(?P<inp>.*?)\s*)?### Response:\s*$",
    re.S,
)


class IngestConfig(BaseModel):
    """How to read sources."""

    field_map: dict[str, str] = Field(
        default_factory=dict,
        description="canonical field → source field, e.g. {instruction: question, output: answer}; "
        "canonical fields: id, system, instruction, input, output, messages, conversations, text",
    )
    batch_size: int = Field(2048, ge=1)
    max_chars: int = Field(200_000, ge=1, description="rows with more characters are dropped as too_large")
    hf_split: str = "train"

    @field_validator("field_map")
    @classmethod
    def _known_fields(cls, v: dict[str, str]) -> dict[str, str]:
        allowed = {"id", "system", "instruction", "input", "output", "messages", "conversations", "text"}
        bad = sorted(set(v) - allowed)
        if bad:
            raise ValueError(f"unknown canonical field(s) {bad}; allowed: {sorted(allowed)}")
        return v


class RowError(ValueError):
    """A row that cannot become a record; ``reason`` is the ledger reason."""

    def __init__(self, reason: str, detail: str):
        super().__init__(detail)
        self.reason = reason
        self.detail = detail


class SourceError(ValueError):
    """A source that cannot be read at all (missing file, offline hub id...)."""


@dataclass
class IngestResult:
    stats: dict[str, Any]
    output: Path
    ledger: Path


@dataclass
class _Counters:
    rows_in: int = 0
    rows_out: int = 0
    reasons: Counter = field(default_factory=Counter)
    formats: Counter = field(default_factory=Counter)
    langs: Counter = field(default_factory=Counter)
    per_source: dict[str, Counter] = field(default_factory=dict)


# --------------------------------------------------------------------------------------------------
# row → record


def _str_field(row: dict, key: str, *, required: bool = True) -> str | None:
    v = row.get(key)
    if v is None:
        if required:
            raise RowError("missing_field", f"field {key!r} is missing or null")
        return None
    if isinstance(v, (int, float)) and not isinstance(v, bool):
        # numbers in a text field (e.g. CSV answers "42") are fine as text
        return str(v)
    if not isinstance(v, str):
        raise RowError("wrong_type", f"field {key!r} is {type(v).__name__}, expected a string")
    return v


def _norm_messages(raw: Any, role_key: str, content_key: str, field_name: str) -> list[dict[str, str]]:
    if not isinstance(raw, list):
        raise RowError("wrong_type", f"field {field_name!r} is {type(raw).__name__}, expected a list of turns")
    msgs: list[dict[str, str]] = []
    for i, turn in enumerate(raw):
        if not isinstance(turn, dict):
            raise RowError("wrong_type", f"{field_name}[{i}] is {type(turn).__name__}, expected an object")
        role = turn.get(role_key)
        if not isinstance(role, str) or role.lower() not in ROLE_ALIASES:
            raise RowError("bad_role", f"{field_name}[{i}].{role_key} = {role!r} is not a known role")
        content = turn.get(content_key)
        if not isinstance(content, str):
            raise RowError(
                "wrong_type", f"{field_name}[{i}].{content_key} is {type(content).__name__}, expected a string"
            )
        msgs.append({"role": ROLE_ALIASES[role.lower()], "content": content})
    return msgs


def _prompt_to_instruction(prompt: str) -> tuple[str, str]:
    m = _ALPACA_TEMPLATE.match(prompt)
    if m:
        return m.group("instr"), m.group("inp") or ""
    return prompt, ""


def _turns(system: str | None, instruction: str, inp: str | None, output: str) -> list[dict[str, str]]:
    user = instruction if not inp else f"{instruction}\n\n{inp}"
    msgs = [{"role": "system", "content": system}] if system else []
    msgs += [{"role": "user", "content": user}, {"role": "assistant", "content": output}]
    return msgs


def detect_format(row: dict) -> str:
    """Name of the row's format (see module docstring), or ``unknown``."""
    if "messages" in row:
        return "openai"
    if "conversations" in row:
        return "sharegpt"
    if "instruction" in row and "output" in row:
        return "alpaca"
    if "instruction" in row and "response" in row:
        return "dolly"
    if "question" in row and "answer" in row:
        return "qa"
    if "prompt" in row and ("completion" in row or "response" in row):
        return "prompt_completion"
    if "text" in row:
        return "text"
    return "unknown"


def row_to_record(row: Any, source: str, line: int, config: IngestConfig) -> tuple[Record, str]:
    """Convert one raw row; raises :class:`RowError` with a ledger reason for bad rows."""
    if not isinstance(row, dict):
        raise RowError("not_an_object", f"row is {type(row).__name__}, expected an object")
    if config.field_map:
        row = {**row, **{canon: row.get(src) for canon, src in config.field_map.items()}}
        fmt = detect_format(row)
    else:
        fmt = detect_format(row)
    system = _str_field(row, "system", required=False)
    messages: list[dict[str, str]] | None = None
    text: str | None = None
    if fmt == "openai":
        messages = _norm_messages(row["messages"], "role", "content", "messages")
    elif fmt == "sharegpt":
        messages = _norm_messages(row["conversations"], "from", "value", "conversations")
        if system and not any(m["role"] == "system" for m in messages):
            messages.insert(0, {"role": "system", "content": system})
    elif fmt == "alpaca":
        messages = _turns(system, _str_field(row, "instruction"), _str_field(row, "input", required=False),
                          _str_field(row, "output"))
    elif fmt == "dolly":
        messages = _turns(system, _str_field(row, "instruction"), _str_field(row, "context", required=False),
                          _str_field(row, "response"))
    elif fmt == "qa":
        messages = _turns(system, _str_field(row, "question"), None, _str_field(row, "answer"))
    elif fmt == "prompt_completion":
        key = "completion" if "completion" in row else "response"
        instr, inp = _prompt_to_instruction(_str_field(row, "prompt"))
        messages = _turns(system, instr, inp, _str_field(row, key))
    elif fmt == "text":
        text = _str_field(row, "text")
    else:
        keys = ", ".join(sorted(map(str, row))[:8]) or "none"
        raise RowError("unknown_format", f"no known instruction fields (fields: {keys}); use --field-map")

    if messages is not None:
        messages = [m for m in messages if not (m["role"] == "system" and not m["content"].strip())]
        for i, m in enumerate(messages):
            if not m["content"].strip():
                raise RowError("empty_content", f"{m['role']} turn {i} is empty")
        roles = [m["role"] for m in messages]
        if "user" not in roles:
            raise RowError("missing_field", "conversation has no user turn")
        if "assistant" not in roles:
            raise RowError("missing_field", "conversation has no assistant turn")
        n_chars = sum(len(m["content"]) for m in messages)
    else:
        assert text is not None
        if not text.strip():
            raise RowError("empty_content", "text is empty")
        n_chars = len(text)
    if n_chars > config.max_chars:
        raise RowError("too_large", f"{n_chars} characters > max_chars {config.max_chars}")

    given = row.get("id")
    if given is not None and not isinstance(given, (str, int)):
        raise RowError("wrong_type", f"field 'id' is {type(given).__name__}, expected a string or integer")
    rid = str(given) if given is not None and str(given).strip() else ""
    meta = {k: v for k, v in row.items() if k in ("category", "name", "task", "lang", "tags") and v is not None}
    rec = Record(
        id=rid,
        messages=messages,
        text=text,
        source=source,
        lang=detect_lang(text if text is not None else "\n".join(m["content"] for m in messages)),
        line=line,
        meta=meta,
    )
    return rec, fmt


# --------------------------------------------------------------------------------------------------
# sources → raw rows


def expand_sources(specs: Iterable[str]) -> list[str]:
    """Files, directories (their data files, sorted) and globs; hub ids pass through."""
    out: list[str] = []
    for spec in specs:
        if spec.startswith("hf://"):
            out.append(spec)
            continue
        p = Path(spec)
        if p.is_dir():
            files = sorted(
                str(f) for f in p.rglob("*") if f.is_file() and _data_suffix(f.name) and not f.name.startswith(".")
            )
            out.extend(files)  # an empty directory contributes nothing (reported by the caller)
        elif any(ch in spec for ch in "*?["):
            out.extend(sorted(glob.glob(spec, recursive=True)))
        elif p.is_file():
            out.append(str(p))
        else:
            raise SourceError(f"{spec}: no such file or directory")
    return out


def _data_suffix(name: str) -> str | None:
    name = name[:-3] if name.endswith(".gz") else name
    for s in SUFFIXES:
        if name.endswith(s):
            return s
    return None


def _open_binary(path: str) -> io.BufferedIOBase:
    return gzip.open(path, "rb") if path.endswith(".gz") else open(path, "rb")  # noqa: SIM115


def iter_raw_rows(path: str, config: IngestConfig) -> Iterator[tuple[int, Any, RowError | None]]:
    """(line number, row, error) for every row of one source; bad rows come with their error."""
    if path.startswith("hf://"):
        yield from _iter_hub(path, config)
        return
    suffix = _data_suffix(os.path.basename(path))
    if suffix is None:
        raise SourceError(f"{path}: unknown file type (expected one of {', '.join(SUFFIXES)}, optionally .gz)")
    if suffix == ".parquet":
        pf = pq.ParquetFile(path)
        n = 0
        for rb in pf.iter_batches(batch_size=config.batch_size):
            for row in rb.to_pylist():
                n += 1
                yield n, row, None
    elif suffix == ".csv":
        yield from _iter_csv(path)
    elif suffix == ".json":
        yield from _iter_json(path)
    else:
        yield from _iter_jsonl(path)


def _decode(raw: bytes, lineno: int) -> tuple[str | None, RowError | None]:
    try:
        return raw.decode("utf-8"), None
    except UnicodeDecodeError as e:
        return None, RowError("invalid_utf8", f"invalid UTF-8 at byte {e.start} of the line")


def _iter_jsonl(path: str) -> Iterator[tuple[int, Any, RowError | None]]:
    with _open_binary(path) as fh:
        for lineno, raw in enumerate(fh, start=1):
            if lineno == 1 and raw.startswith(b"\xef\xbb\xbf"):
                raw = raw[3:]
            text, err = _decode(raw, lineno)
            if err:
                yield lineno, None, err
                continue
            text = text.strip()
            if not text:
                continue  # blank lines are not rows
            try:
                yield lineno, json.loads(text), None
            except json.JSONDecodeError as e:
                yield lineno, None, RowError("bad_json", f"invalid JSON: {e.msg} at column {e.colno}")
            except RecursionError:
                yield lineno, None, RowError("bad_json", "invalid JSON: nested too deeply")


def _iter_json(path: str) -> Iterator[tuple[int, Any, RowError | None]]:
    """A JSON array (loaded whole: use .jsonl for large data) or JSON Lines under a .json name."""
    with _open_binary(path) as fh:
        head = fh.read(4096)
    stripped = head.lstrip(b"\xef\xbb\xbf \t\r\n")
    if not stripped.startswith(b"["):
        yield from _iter_jsonl(path)
        return
    with _open_binary(path) as fh:
        data = fh.read()
    text, err = _decode(data.removeprefix(b"\xef\xbb\xbf"), 0)
    if err:
        raise SourceError(f"{path}: not valid UTF-8 ({err.detail}); a JSON array file must be entirely valid")
    try:
        rows = json.loads(text)
    except json.JSONDecodeError as e:
        raise SourceError(f"{path}: invalid JSON at line {e.lineno} column {e.colno}: {e.msg}") from None
    for i, row in enumerate(rows, start=1):
        yield i, row, None


def _iter_csv(path: str) -> Iterator[tuple[int, Any, RowError | None]]:
    csv.field_size_limit(min(sys.maxsize, 2**31 - 1))
    with _open_binary(path) as fb:
        # utf-8-sig drops a BOM; surrogateescape keeps invalid bytes visible so the row can be ledgered
        fh = io.TextIOWrapper(fb, encoding="utf-8-sig", errors="surrogateescape", newline="")
        reader = csv.DictReader(fh)
        if reader.fieldnames is None:
            return
        row_no = 0
        while True:
            try:
                row = next(reader)
            except StopIteration:
                return
            except csv.Error as e:
                row_no += 1
                yield reader.line_num, None, RowError("bad_csv", f"CSV error: {e}")
                continue
            row_no += 1
            line = reader.line_num
            if None in row:
                yield line, None, RowError("bad_csv", f"row has {len(row[None]) } more fields than the header")
                continue
            if any(isinstance(v, str) and _has_surrogates(v) for v in row.values()):
                yield line, None, RowError("invalid_utf8", "invalid UTF-8 in a field")
                continue
            # CSV has no nulls: an empty cell is a missing value
            yield line, {k: (v if v != "" else None) for k, v in row.items()}, None


def _has_surrogates(s: str) -> bool:
    return any("\udc80" <= ch <= "\udcff" for ch in s)


def _iter_hub(spec: str, config: IngestConfig) -> Iterator[tuple[int, Any, RowError | None]]:
    u = urlparse(spec)
    name = (u.netloc + u.path).strip("/")
    q = parse_qs(u.query)
    split = q.get("split", [config.hf_split])[0]
    subset = q.get("config", [None])[0]
    try:
        import datasets

        ds = datasets.load_dataset(name, subset, split=split, streaming=True)
        it = iter(ds)
        first = next(it, None)
    except Exception as e:  # noqa: BLE001 - any hub/offline failure becomes one clear message
        offline = os.environ.get("HF_HUB_OFFLINE") or os.environ.get("HF_DATASETS_OFFLINE")
        hint = " (offline: HF_HUB_OFFLINE is set)" if offline else " (no network access to the hub?)"
        raise SourceError(
            f"{spec}: could not load hub dataset {name!r} split {split!r}{hint}: {type(e).__name__}: {str(e)[:300]}. "
            "Download it where you have network access and pass the local files instead."
        ) from None
    if first is None:
        return
    yield 1, dict(first), None
    for i, row in enumerate(it, start=2):
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

    Ids: a row's own ``id`` when it has one (a repeated given id is dropped as ``duplicate_id``);
    otherwise a stable content hash, with ``~N`` appended to the N-th repeat of identical content
    so ids stay unique (dedup then drops the repeats as exact duplicates, naming the first).
    """
    config = config or IngestConfig()
    out_dir = Path(out_dir)
    started = time.perf_counter()
    paths = expand_sources(list(sources))
    c = _Counters()
    seen: dict[bytes, int] = {}
    given_ids: set[bytes] = set()
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

        for path in paths:
            src = path if path.startswith("hf://") else os.path.relpath(path) if not os.path.isabs(path) else path
            per = c.per_source.setdefault(src, Counter())
            for lineno, row, err in iter_raw_rows(path, config):
                c.rows_in += 1
                per["rows_in"] += 1
                rec: Record | None = None
                if err is None:
                    try:
                        rec, fmt = row_to_record(row, src, lineno, config)
                    except RowError as e:
                        err = e
                    except RecursionError:
                        err = RowError("bad_json", "nested too deeply")
                if rec is not None:
                    rec, err = _assign_id(rec, seen, given_ids)
                if err is not None:
                    stub = Record(id=f"{src}:{lineno}", source=src, line=lineno,
                                  text=_preview(row) if row is not None else None)
                    dropped.append(drop_row(Drop(stub, err.reason, f"{src} line {lineno}: {err.detail}"), STAGE))
                    c.reasons[err.reason] += 1
                    per[f"dropped:{err.reason}"] += 1
                else:
                    assert rec is not None
                    kept.append(rec)
                    c.rows_out += 1
                    c.formats[fmt] += 1
                    c.langs[rec.lang] += 1
                    per["rows_out"] += 1
                if len(kept) + len(dropped) >= config.batch_size:
                    flush()
        flush()
    secs = time.perf_counter() - started
    stats = {
        "stage": STAGE,
        "sources": paths,
        "rows_in": c.rows_in,
        "rows_out": c.rows_out,
        "rows_dropped": c.rows_in - c.rows_out,
        "dropped_by_reason": dict(sorted(c.reasons.items())),
        "seconds": round(secs, 3),
        "rows_per_s": round(c.rows_in / secs, 1) if secs > 0 else None,
        "extra": {"formats": dict(c.formats), "langs": dict(c.langs),
                  "per_source": {k: dict(v) for k, v in c.per_source.items()}},
    }
    write_json(out_dir / "stats.json", stats)
    return IngestResult(stats, out_dir / "output.parquet", out_dir / "ledger.parquet")


def _assign_id(rec: Record, seen: dict[bytes, int], given_ids: set[bytes]) -> tuple[Record, RowError | None]:
    if rec.id:
        key = hashlib.blake2b(rec.id.encode("utf-8", "surrogatepass"), digest_size=12).digest()
        if key in given_ids:
            return rec, RowError("duplicate_id", f"id {rec.id!r} was already used by an earlier row")
        given_ids.add(key)
        return rec, None
    base = content_id(rec.messages, rec.text)
    key = bytes.fromhex(base)
    n = seen.get(key, 0)
    seen[key] = n + 1
    rec.id = base if n == 0 else f"{base}~{n}"
    bkey = hashlib.blake2b(rec.id.encode(), digest_size=12).digest()
    if bkey in given_ids:  # a given id that happens to equal a content id: keep ids unique
        return rec, RowError("duplicate_id", f"id {rec.id!r} was already used by an earlier row")
    given_ids.add(bkey)
    return rec, None


def _preview(row: Any) -> str:
    try:
        s = json.dumps(row, ensure_ascii=False, default=str)
    except (TypeError, ValueError, RecursionError):
        s = repr(row)
    return s[:2000]
