"""Readers: sources → raw rows, streaming, each with its line number (or a :class:`RowError`).

Files: ``.jsonl``/``.ndjson``, ``.json`` (JSON Lines, an array, or one object wrapping a list),
``.csv`` (header row), ``.parquet``, each optionally ``.gz``; directories (their data files,
recursively, hidden ones skipped) and globs expand. Hub datasets by id:
``hf://owner/name?split=train&config=x`` (streamed with ``datasets``; from the local cache when
``HF_HUB_OFFLINE`` is set).

Memory: JSON Lines, CSV and parquet are streamed (one line / one batch at a time; a line longer than
``max_line_bytes`` is skipped without being read into memory). A ``.json`` array or document is
loaded whole (its text, then one element at a time): use JSON Lines for large data.

``line`` is the 1-based physical line (``\\n``, ``\\r\\n`` or ``\\r``) where the row starts; for
parquet, hub datasets and rows wrapped in a JSON object it is the row number. A source that cannot
be read at all raises :class:`SourceError`.
"""

from __future__ import annotations

import csv
import glob
import gzip
import io
import json
import os
import re
import zlib
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlparse

import pyarrow as pa
import pyarrow.parquet as pq

from curation.ingest.base import JSON as _JSON
from curation.ingest.base import PREVIEW_CHARS as _PREVIEW_CHARS
from curation.ingest.base import SURROGATE_RE as _SURROGATE_RE
from curation.ingest.base import IngestConfig, RowError, SourceError
from curation.ingest.base import json_error as _json_error

SUFFIXES = (".jsonl", ".ndjson", ".json", ".csv", ".parquet")

_BOM = b"\xef\xbb\xbf"
_WS_RE = re.compile(r"[ \t\n\r]*")
_STRUCT_RE = re.compile(r'["\[\]{}]')
_STRING_REST_RE = re.compile(r'[^"\\]*(?:\\.[^"\\]*)*"', re.S)
_SCALAR_END_RE = re.compile(r"[,\]\n]")


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

