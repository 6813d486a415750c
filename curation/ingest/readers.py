"""Readers: sources → raw rows, streaming, each with its line number (or a :class:`RowError`).

Files: ``.jsonl``/``.ndjson``, ``.json`` (JSON Lines, an array, or one object wrapping a list),
``.csv`` (header row), ``.parquet``, each optionally ``.gz``; directories (their data files,
recursively, hidden ones skipped) and globs expand. Hub datasets by id:
``hf://owner/name?split=train&config=x`` (streamed with ``datasets``; from the local cache when
``HF_HUB_OFFLINE`` is set).

Memory is bounded whatever the input: JSON Lines, CSV, JSON arrays and parquet are streamed (one
line / element / batch at a time, through a 1 MiB read window); a line, CSV line or array element
longer than ``max_line_bytes`` is scanned past without being held and ledgered as ``too_large``. A
``.json`` file that is one document (``{"data": [...]}``) is loaded whole, up to
``max_document_bytes``; a CSV header over ``max_columns`` columns and a parquet file whose metadata
footer is over ``max_parquet_footer_bytes`` are source errors (``bench/hostile_inputs.py`` measures
each case).

``line`` is the 1-based physical line (``\\n``, ``\\r\\n`` or ``\\r``) where the row starts; for
parquet, hub datasets and rows wrapped in a JSON object it is the row number. A source that cannot
be read at all raises :class:`SourceError`.
"""

from __future__ import annotations

import codecs
import csv
import glob
import gzip
import io
import json
import os
import re
import zlib
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
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
_STRING_STOP_RE = re.compile(r'["\\]')
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
    footer = parquet_footer_bytes(path)
    if footer is not None and footer > config.max_parquet_footer_bytes:
        raise SourceError(f"{path}: parquet metadata footer of {footer:,} bytes is larger than "
                          f"max_parquet_footer_bytes ({config.max_parquet_footer_bytes:,}); rewrite it with fewer, "
                          "larger row groups")
    pf = pq.ParquetFile(path)
    n = 0
    for rb in pf.iter_batches(batch_size=config.batch_size):
        for row in rb.to_pylist():
            n += 1
            yield n, row, None


def parquet_footer_bytes(path: str | os.PathLike) -> int | None:
    """The size of a parquet file's metadata footer, read from its last 8 bytes (None: not a parquet file).

    The footer is parsed whole when the file is opened, so this is what opening it costs.
    """
    with open(path, "rb") as fh:
        size = fh.seek(0, os.SEEK_END)
        if size < 12:
            return None
        fh.seek(-8, os.SEEK_END)
        tail = fh.read(8)
    n = int.from_bytes(tail[:4], "little")
    return n if tail[4:] == b"PAR1" and n + 12 <= size else None  # else corrupt: pyarrow says how


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
    """JSON Lines under a .json name, a JSON array (streamed), or one JSON document (loaded whole)."""
    first = _first_byte(path)
    if first not in (b"[", b"{") or (first == b"{" and _first_line_is_json(path, config)):
        yield from _iter_jsonl(path, config)
        return
    if first == b"[":
        with _open_binary(path) as fh:
            yield from _iter_json_array(_JsonText(fh), config)
        return
    plain_too_big = not path.lower().endswith(".gz") and os.path.getsize(path) > config.max_document_bytes
    with _open_binary(path) as fh:
        data = b"" if plain_too_big else fh.read(config.max_document_bytes + 1)
    if plain_too_big or len(data) > config.max_document_bytes:
        raise SourceError(
            f"{path}: one JSON document larger than max_document_bytes ({config.max_document_bytes:,} bytes): a "
            "document is loaded whole; write the rows as JSON Lines or a JSON array (both are streamed)"
        )
    # Undecodable bytes become lone surrogates: the rows holding them are ledgered as invalid_utf8.
    text = data.removeprefix(_BOM).decode("utf-8", "surrogateescape")
    del data
    try:
        doc = _JSON.decode(text)
    except (ValueError, RecursionError):
        # not one document: read it as JSON Lines, so a broken line costs that row, not the file
        del text
        yield from _iter_jsonl(path, config)
        return
    yield from _json_document_rows(doc)


class _JsonText:
    """The decoded text of a file, read 1 MiB at a time: a window ``buf`` over it, absolute positions.

    ``buf`` starts at absolute position ``offset``; :meth:`more` appends the next chunk, :meth:`drop`
    forgets what lies before a position. :meth:`line_at` gives the line of increasing positions,
    counting ``\n``, ``\r\n`` and ``\r`` as one line end each.
    """

    CHUNK = 1 << 20

    def __init__(self, fh: io.BufferedIOBase):
        self.fh = fh
        # undecodable bytes become lone surrogates, as in a whole-file decode (split sequences too)
        self.decoder = codecs.getincrementaldecoder("utf-8")("surrogateescape")
        self.buf = ""
        self.offset = 0
        self.eof = False
        self._started = False
        self._pos, self._line, self._line_start = 0, 1, 0  # the line cursor

    def more(self) -> bool:
        """Append the next chunk; False at the end of the file."""
        if self.eof:
            return False
        data = self.fh.read(self.CHUNK)
        if not self._started:
            data = data.removeprefix(_BOM)
            self._started = True
        self.buf += self.decoder.decode(data, final=not data)
        self.eof = not data
        return bool(data)

    def char(self, pos: int) -> str:
        """The character at ``pos`` ("" at the end of the text), reading on as needed."""
        while pos - self.offset >= len(self.buf):
            if not self.more():
                return ""
        return self.buf[pos - self.offset]

    def skip_ws(self, pos: int) -> int:
        """The first position at or after ``pos`` that is not JSON whitespace (or the end).

        The text before ``pos`` may be dropped (so a run of whitespace costs no memory).
        """
        while True:
            end = _WS_RE.match(self.buf, pos - self.offset).end() + self.offset
            if end - self.offset > self.CHUNK:
                self.drop(end)
            if end - self.offset < len(self.buf) or not self.more():
                return end
            pos = end

    def line_at(self, pos: int) -> tuple[int, int]:
        """(line, column) of ``pos``; positions must not decrease between calls."""
        a, b = self._pos - self.offset, pos - self.offset
        if b > a:
            seg = self.buf[a:b]
            self._line += seg.count("\n") + seg.count("\r") - seg.count("\r\n")
            last = max(seg.rfind("\n"), seg.rfind("\r"))
            if last >= 0:
                self._line_start = self._pos + last + 1
            self._pos = pos
        return self._line, pos - self._line_start + 1

    def drop(self, pos: int) -> None:
        """Forget the text before ``pos`` (its lines counted first)."""
        k = pos - self.offset
        if k > 0 and self.buf[k - 1] == "\r":
            k -= 1  # never split a CRLF: its LF would count as a second line end
        if k <= 0:
            return
        if self._pos < self.offset + k:
            self.line_at(self.offset + k)
        self.buf = self.buf[k:]
        self.offset += k


def _scan_value(text: _JsonText, start: int, limit: int) -> tuple[int | None, bool]:
    """(end, too large) of the JSON value at ``start``, by bracket matching that respects strings.

    Works on invalid JSON too (it only needs the value's extent) and without recursion, so it also
    gets past values nested too deeply for the parser. ``end`` is None when the text ends first (an
    unterminated value). Once the value is longer than ``limit`` characters, the text scanned so far
    is dropped: a huge value costs its scan, not its size in memory.
    """
    head = text.char(start)
    i, depth = start + 1, 0
    in_string = head == '"'
    if head in "[{":
        depth = 1
    elif not in_string:  # a scalar (or garbage): up to the next comma, bracket or line end
        i = start
    too_large = False
    while True:
        buf, base = text.buf, text.offset
        rel = i - base
        while rel < len(buf):
            if in_string:
                m = _STRING_STOP_RE.search(buf, rel)
                if m is None:
                    rel = len(buf)
                    break
                if m.group() == "\\":
                    if m.end() >= len(buf):  # the escaped character is in the next chunk
                        rel = m.start()
                        break
                    rel = m.end() + 1
                    continue
                rel = m.end()
                in_string = False
                if depth == 0:
                    return base + rel, too_large
            elif depth == 0:
                m = _SCALAR_END_RE.search(buf, rel)
                if m is None:
                    rel = len(buf)
                    break
                return base + m.start(), too_large
            else:
                m = _STRUCT_RE.search(buf, rel)
                if m is None:
                    rel = len(buf)
                    break
                ch, rel = m.group(), m.end()
                if ch == '"':
                    in_string = True
                elif ch in "[{":
                    depth += 1
                else:
                    depth -= 1
                    if depth == 0:
                        return base + rel, too_large
        i = base + rel
        if i - start > limit:
            too_large = True
            text.drop(i)
        if not text.more():
            return (i, too_large) if depth == 0 and not in_string and head not in '"[{' else (None, too_large)


def _iter_json_array(text: _JsonText, config: IngestConfig) -> Iterator[tuple[int, Any, RowError | None]]:
    """Elements one by one, each with the line it starts on; a bad element is ledgered and skipped.

    Streamed: memory holds about one element (at most ``max_line_bytes`` of text: a longer element
    is scanned past and ledgered as ``too_large``) plus a 1 MiB read buffer, whatever the file size.
    """
    limit = config.max_line_bytes
    pos = text.skip_ws(0) + 1  # past "["
    element = 0
    while True:
        pos = text.skip_ws(pos)
        ch = text.char(pos)
        if not ch:
            return  # truncated after a complete element: nothing lost
        if ch == "]":
            rest = text.skip_ws(pos + 1)
            nxt = text.char(rest)
            if not nxt:
                return
            if nxt == "[":  # concatenated arrays
                pos = rest + 1
                continue
            yield (
                text.line_at(rest)[0],
                None,
                RowError("bad_json", "invalid JSON: extra data after the end of the array",
                         text.buf[rest - text.offset : rest - text.offset + _PREVIEW_CHARS]),
            )
            return
        element += 1
        start = pos
        line = text.line_at(start)[0]
        row, end, err = _decode_at(text, start, element, complete=False)
        if end is None:
            # not complete in the buffer, or invalid: find its extent (reading on), then decode it there
            end, too_large = _scan_value(text, start, limit)
            if end is None:  # the file ends inside this element
                err = None if too_large else _decode_at(text, start, element, complete=True)[2]
                if err is None:
                    err = RowError("too_large" if too_large else "bad_json",
                                   f"element {element} is longer than max_line_bytes {limit}" if too_large
                                   else f"invalid JSON in element {element}: unterminated value")
                err.detail += "; the array is not terminated, the rest of the file is unreadable"
                yield line, None, err
                return
            if too_large or end - start > limit:
                row, err = None, RowError("too_large", f"element {element} is longer than max_line_bytes {limit}")
            else:
                row, parsed_end, err = _decode_at(text, start, element, complete=True)
                end = parsed_end if parsed_end is not None else end
        elif end - start > limit:
            row, err = None, RowError("too_large", f"element {element} is longer than max_line_bytes {limit}")
        yield line, row, err
        pos = text.skip_ws(end)
        if text.char(pos) == ",":
            pos += 1
        # anything else: a missing comma or the closing bracket, handled on the next turn


def _decode_at(text: _JsonText, start: int, element: int, complete: bool) -> tuple[Any, int | None, RowError | None]:
    """Parse the element at ``start`` in the buffer: (row, end, None), or (None, None, error).

    ``complete=False``: the element may go on past the buffer, so anything short of a value that
    ends inside the buffer is (None, None, None), "read on". ``complete=True``: the buffer holds
    all of it (its extent was scanned), so a parse error is the element's own.
    """
    rel = start - text.offset
    try:
        row, end = _JSON.raw_decode(text.buf, rel)
    except RecursionError:
        if not complete:
            return None, None, None
        return None, None, RowError("nested_too_deep", f"element {element} is nested too deeply")
    except ValueError as e:
        if not complete:
            return None, None, None
        if isinstance(e, json.JSONDecodeError):
            line, col = text.line_at(e.pos + text.offset)
            err = RowError("bad_json", f"invalid JSON in element {element}: {e.msg} at line {line} column {col}")
        else:
            err = RowError("bad_json", f"invalid JSON in element {element}: {_json_error(e)}")
        err.raw = text.buf[rel : rel + _PREVIEW_CHARS]
        return None, None, err
    if not complete and end >= len(text.buf) and not text.eof:
        return None, None, None  # a number or literal may go on in the next chunk
    return row, end + text.offset, None


def _json_document_rows(doc: Any) -> Iterator[tuple[int, Any, RowError | None]]:
    """One pretty-printed object: a wrapper of one list of rows ({"data": [...]}) or a single row."""
    lists = [v for v in doc.values() if isinstance(v, list)] if isinstance(doc, dict) else []
    if len(lists) == 1 and lists[0] and all(isinstance(x, dict) for x in lists[0]):
        # Rows inside a wrapper have no line of their own: ``line`` is the element number.
        for i, row in enumerate(lists[0], start=1):
            yield i, row, None
    else:
        yield 1, doc, None


class _LineTooLong(Exception):
    """A CSV line over ``max_line_bytes`` characters (raised by :class:`_BoundedLines`)."""


class _BoundedLines:
    """The lines of a text stream for ``csv.reader``, none longer than ``limit`` characters.

    A longer line is read past in pieces (never held whole) and reported by raising
    :class:`_LineTooLong` from ``__next__``; the reader then goes on with the next line.
    ``lineno`` counts every physical line handed out or skipped.
    """

    def __init__(self, fh: io.TextIOBase, limit: int):
        self.fh, self.limit, self.lineno = fh, limit, 0
        #: called with each line until unset (the header check: before csv splits it into a list)
        self.check: Callable[[str], None] | None = None

    def __iter__(self) -> _BoundedLines:
        return self

    def __next__(self) -> str:
        line = self.fh.readline(self.limit + 1)
        if not line:
            raise StopIteration
        self.lineno += 1
        if len(line) > self.limit and not line.endswith(("\n", "\r")):
            while (rest := self.fh.readline(self.limit + 1)) and not rest.endswith(("\n", "\r")):
                pass
            raise _LineTooLong
        if self.check is not None:
            self.check(line)
        return line


_QUOTED_RE = re.compile(r'"[^"]*"')


def _iter_csv(path: str, config: IngestConfig) -> Iterator[tuple[int, Any, RowError | None]]:
    csv.field_size_limit(config.max_line_bytes)
    with _open_binary(path) as fb:
        # utf-8-sig drops a BOM; surrogateescape keeps invalid bytes visible so the row can be ledgered
        fh = io.TextIOWrapper(fb, encoding="utf-8-sig", errors="surrogateescape", newline="")
        lines = _BoundedLines(fh, config.max_line_bytes)

        def check_header(line: str) -> None:
            # a 1,000,000-column header would be a list of a million strings before len() could refuse it
            if line.count(",") >= config.max_columns and (n := _QUOTED_RE.sub("", line).count(",") + 1) > \
                    config.max_columns:
                raise SourceError(f"{path}: the CSV header has {n:,} columns, more than max_columns "
                                  f"({config.max_columns:,}); is this instruction data?")

        lines.check = check_header
        reader = csv.reader(lines, strict=True)  # a stray quote is a bad row, not a silently merged field
        header: list[str] | None = None
        last_line = 0
        while True:
            try:
                cells = next(reader)
            except StopIteration:
                return
            except _LineTooLong:
                if header is None:
                    raise SourceError(f"{path}: the CSV header line is longer than max_line_bytes "
                                      f"({config.max_line_bytes:,})") from None
                start, last_line = last_line + 1, lines.lineno
                yield start, None, RowError("too_large", f"line {lines.lineno} is longer than max_line_bytes "
                                                         f"{config.max_line_bytes}")
                continue
            except csv.Error as e:
                start, last_line = last_line + 1, lines.lineno
                reason = "too_large" if "field larger than field limit" in str(e) else "bad_csv"
                yield start, None, RowError(reason, f"CSV error: {e}")
                continue
            start, last_line = last_line + 1, lines.lineno
            if not cells or (len(cells) == 1 and not cells[0].strip()):
                continue  # blank line
            if header is None:
                if len(cells) > config.max_columns:
                    raise SourceError(f"{path}: the CSV header has {len(cells):,} columns, more than max_columns "
                                      f"({config.max_columns:,}); is this instruction data?")
                header = [c.strip() for c in cells]
                lines.check = None
                dupes = sorted(c for c, n in Counter(header).items() if n > 1)
                if dupes:
                    raise SourceError(f"{path}: CSV header repeats column(s) {dupes[:20]}")
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

