"""Files: atomic writes, streaming parquet readers/writers for records and the dropped-row ledger."""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import shutil
import socket
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from curation.errors import SftflowError
from curation.records import Record

MESSAGE_TYPE = pa.list_(pa.struct([("role", pa.string()), ("content", pa.string())]))

RECORD_SCHEMA = pa.schema(
    [
        ("id", pa.string()),
        ("messages", MESSAGE_TYPE),
        ("text", pa.string()),
        ("source", pa.string()),
        ("lang", pa.string()),
        ("line", pa.int64()),
        ("meta", pa.string()),
    ]
)

LEDGER_SCHEMA = pa.schema(
    [
        ("id", pa.string()),
        ("stage", pa.string()),
        ("reason", pa.string()),
        ("detail", pa.string()),
        ("duplicate_of", pa.string()),
        ("source", pa.string()),
        ("line", pa.int64()),
        # The dropped row itself (JSON), so a drop can be inspected or recovered: nothing is lost.
        ("record", pa.string()),
    ]
)


class DiskFullError(SftflowError, OSError):
    """The disk (or quota) filled up while writing ``path``; nothing partial was published."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        super().__init__(errno.ENOSPC, "no space left on device", str(self.path))

    def __str__(self) -> str:
        # the free space when the message is shown, i.e. after the temp files were removed
        try:
            free = f"{shutil.disk_usage(self.path.parent).free / 2**20:,.1f} MiB free there after cleaning up"
        except OSError:
            free = "free space unknown"
        return (f"{self.path}: no space left on device while writing it ({free}); nothing partial was published. "
                "Free some space and run the same command again (curate/run --resume skip the finished stages)")


def is_disk_full(exc: BaseException) -> bool:
    """True for an error that means the disk or the user's quota is full."""
    return isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT)


@contextlib.contextmanager
def disk_full_names(path: str | os.PathLike) -> Iterator[None]:
    """Turn "no space left on device" raised in the block into a :class:`DiskFullError` naming ``path``."""
    try:
        yield
    except DiskFullError:
        raise
    except OSError as e:
        if is_disk_full(e):
            raise DiskFullError(path) from e
        raise


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temp path next to ``path``; rename it over ``path`` only if the block succeeds.

    No partial file is ever visible under the final name, even after ``kill -9``; a full disk is a
    :class:`DiskFullError` naming ``path``, with the temp file removed (its space freed).
    """
    final = Path(path)
    final.parent.mkdir(parents=True, exist_ok=True)
    with disk_full_names(final):
        fd, tmp = tempfile.mkstemp(prefix=f".{final.name}.", suffix=".tmp", dir=final.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        with disk_full_names(final):
            yield tmp_path
            with open(tmp_path, "rb+") as fh:
                os.fsync(fh.fileno())
            os.replace(tmp_path, final)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a hidden temp folder beside ``path``; when the block succeeds it becomes ``path``.

    A folder cannot be renamed over a non-empty one, so an existing ``path`` is first renamed aside
    (``.<name>.old-*.tmp``) and removed after: at every instant ``path`` is either absent, the old
    complete folder or the new complete one — never half written, even after ``kill -9``. What a
    killed writer leaves (``.<name>.*.tmp`` folders) is removed by the next writer of ``path``; a full
    disk is a :class:`DiskFullError` naming ``path``, with the temp folder removed.
    """
    final = Path(path)
    final.parent.mkdir(parents=True, exist_ok=True)
    for stale in final.parent.glob(f".{final.name}.*.tmp"):
        shutil.rmtree(stale, ignore_errors=True)
    with disk_full_names(final):
        tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", suffix=".tmp", dir=final.parent))
    try:
        with disk_full_names(final):  # a full disk while writing: one line naming the folder, temp freed
            yield tmp
        old = None
        if final.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{final.name}.old-", suffix=".tmp", dir=final.parent))
            os.replace(final, old / final.name)
        os.replace(tmp, final)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _json_default(obj: Any) -> Any:
    if hasattr(obj, "model_dump"):  # a pydantic model (typed stats, summaries)
        return obj.model_dump(mode="json")
    return str(obj)


def write_json(path: str | os.PathLike, obj: Any) -> None:
    """``obj`` as indented, key-sorted JSON (pydantic models as their JSON form), published atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, ensure_ascii=False, indent=2, sort_keys=True, default=_json_default) + "\n")


def read_json(path: str | os.PathLike) -> Any:
    return json.loads(Path(path).read_text())


#: rows per parquet row group. Fixed, so a file's bytes depend only on its rows and their order,
#: never on the batch size that produced them (byte-identical outputs across batch sizes/resumes).
ROW_GROUP_ROWS = 4096


class ParquetWriter:
    """Streams batches of rows into one parquet file, published atomically on ``close()``.

    Rows are buffered into row groups of exactly :data:`ROW_GROUP_ROWS` (the last one shorter).
    """

    def __init__(self, path: str | os.PathLike, schema: pa.Schema, row_group_rows: int = ROW_GROUP_ROWS):
        self.path = Path(path)
        self.schema = schema
        self.row_group_rows = row_group_rows
        self._ctx = atomic_path(self.path)
        self._tmp = self._ctx.__enter__()
        with self._disk_full():
            self._writer = pq.ParquetWriter(self._tmp, schema, compression="zstd")
        self._pending: list[pa.Table] = []
        self._pending_rows = 0
        self.rows = 0

    def write_rows(self, rows: list[dict[str, Any]]) -> None:
        """Append rows (dicts keyed by column name; missing keys are nulls)."""
        if rows:
            self.write_table(rows_table(rows, self.schema))

    def write_table(self, table: pa.Table) -> None:
        """Append an Arrow table of this writer's schema: the same bytes as writing its rows."""
        if not table.num_rows:
            return
        self._pending.append(table)
        self._pending_rows += table.num_rows
        self.rows += table.num_rows
        if self._pending_rows >= self.row_group_rows:
            with self._disk_full():
                self._flush(final=False)

    def _disk_full(self) -> contextlib.AbstractContextManager[None]:
        return disk_full_names(self.path)

    def _flush(self, final: bool) -> None:
        if not self._pending_rows:
            return
        table = pa.concat_tables(self._pending)
        n = table.num_rows if final else table.num_rows - table.num_rows % self.row_group_rows
        # combine_chunks: page boundaries must not depend on how the rows arrived
        self._writer.write_table(table.slice(0, n).combine_chunks(), row_group_size=self.row_group_rows)
        rest = table.slice(n)
        self._pending = [rest] if rest.num_rows else []
        self._pending_rows = rest.num_rows

    def close(self) -> None:
        try:
            with self._disk_full():
                self._flush(final=True)
                self._writer.close()
        except BaseException:
            self.abort()
            raise
        self._ctx.__exit__(None, None, None)

    def abort(self) -> None:
        with contextlib.suppress(Exception):
            self._writer.close()
        with contextlib.suppress(BaseException):
            self._ctx.__exit__(RuntimeError, RuntimeError("aborted"), None)
        for tmp in self.path.parent.glob(f".{self.path.name}.*.tmp"):
            tmp.unlink(missing_ok=True)

    def __enter__(self) -> ParquetWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()


def rows_table(rows: list[dict[str, Any]], schema: pa.Schema) -> pa.Table:
    """Rows (dicts keyed by column name; missing keys are nulls) as an Arrow table of ``schema``."""
    return pa.Table.from_pydict({name: [r.get(name) for r in rows] for name in schema.names}, schema=schema)


def record_schema(extra: dict[str, pa.DataType] | None = None, base: pa.Schema | None = None) -> pa.Schema:
    """The record schema plus attribute columns (``extra``) stages add."""
    schema = base if base is not None else RECORD_SCHEMA
    for name, typ in (extra or {}).items():
        if schema.get_field_index(name) < 0:
            schema = schema.append(pa.field(name, typ))
    return schema


def iter_record_batches(path: str | os.PathLike, batch_size: int = 2048) -> Iterator[list[Record]]:
    """Stream records from a records parquet file, ``batch_size`` at a time (never the whole file)."""
    pf = pq.ParquetFile(path)
    for rb in pf.iter_batches(batch_size=batch_size):
        yield batch_records(rb)


_BASE = ("id", "messages", "text", "source", "lang", "line", "meta")


def batch_records(rb: pa.RecordBatch | pa.Table) -> list[Record]:
    """The records of an Arrow batch: :meth:`Record.from_row` of each row, converted column by column.

    Every stage reads its input through this, so it is written for speed: one ``to_pylist`` per
    column instead of a dict per row, and the common empty ``meta`` ("{}") is not parsed.
    """
    n = rb.num_rows
    names = rb.schema.names
    cols = {name: rb.column(i).to_pylist() for i, name in enumerate(names)}
    none = [None] * n
    ids = cols.get("id", none)
    messages, texts, lines = cols.get("messages", none), cols.get("text", none), cols.get("line", none)
    sources, langs, metas = cols.get("source", none), cols.get("lang", none), cols.get("meta", none)
    attr_names = [name for name in names if name not in _BASE]
    attr_cols = [cols[name] for name in attr_names]
    out = []
    for i in range(n):
        meta = metas[i]
        out.append(Record(
            ids[i],
            messages[i],  # fresh dicts from Arrow: nothing else holds them
            texts[i],
            sources[i] or "",
            langs[i] or "other",
            lines[i],
            {} if meta == "{}" or not meta else json.loads(meta) if isinstance(meta, str) else meta,
            {name: col[i] for name, col in zip(attr_names, attr_cols, strict=True)},
        ))
    return out


def records_table(records: list[Record], schema: pa.Schema) -> pa.Table:
    """Records as an Arrow table of ``schema``: :meth:`Record.to_row` of each, built column by column.

    Attributes a record lacks are nulls; attributes the schema lacks are left out (as ``rows_table``).
    """
    data: list[list[Any]] = []
    for name in schema.names:
        if name == "id":
            data.append([r.id for r in records])
        elif name == "messages":
            data.append([r.messages for r in records])
        elif name == "text":
            data.append([r.text for r in records])
        elif name == "source":
            data.append([r.source for r in records])
        elif name == "lang":
            data.append([r.lang for r in records])
        elif name == "line":
            data.append([r.line for r in records])
        elif name == "meta":
            data.append([json.dumps(r.meta, ensure_ascii=False, sort_keys=True, default=str) if r.meta else "{}"
                         for r in records])
        else:
            data.append([r.attrs.get(name) for r in records])
    return pa.Table.from_pydict(dict(zip(schema.names, data, strict=True)), schema=schema)


def read_records(path: str | os.PathLike) -> list[Record]:
    """All records of a (small) file; stages use :func:`iter_record_batches`."""
    return [r for b in iter_record_batches(path) for r in b]


def parquet_schema(path: str | os.PathLike) -> pa.Schema:
    return pq.read_schema(path)


def count_rows(path: str | os.PathLike) -> int:
    return pq.ParquetFile(path).metadata.num_rows


def write_records(
    path: str | os.PathLike, records: list[Record], extra: dict[str, pa.DataType] | None = None
) -> None:
    """Write records in one go (small outputs, tests, demo data)."""
    extra = dict(extra or {})
    for r in records:
        for k, v in r.attrs.items():
            if k not in extra:
                extra[k] = _infer_type(v)
    with ParquetWriter(path, record_schema(extra)) as w:
        w.write_rows([r.to_row() for r in records])


def _infer_type(value: Any) -> pa.DataType:
    if isinstance(value, bool):
        return pa.bool_()
    if isinstance(value, int):
        return pa.int64()
    if isinstance(value, float):
        return pa.float64()
    if isinstance(value, str):
        return pa.string()
    return pa.string() if value is None else pa.infer_type([value])


# ------------------------------------------------------------------------------------------------
# one writer per folder


class FolderInUse(SftflowError):
    """Another sftflow process is writing into the same output folder."""


#: the lock file in a locked folder (hidden: never mistaken for an output)
LOCK_NAME = ".sftflow.lock"
_HELD: dict[str, list[int]] = {}  # resolved folder → [fd, depth]
_HELD_GUARD = threading.Lock()


@contextlib.contextmanager
def folder_lock(folder: str | os.PathLike) -> Iterator[Path]:
    """Hold ``folder`` (created if needed) for this process while the block runs.

    A second process that asks for the same folder meanwhile gets :class:`FolderInUse` — one line
    naming the holder — instead of two runs overwriting each other's files. The lock is an
    ``flock`` on ``folder/.sftflow.lock``: the kernel drops it when the holding process ends, however
    it ends (``kill -9`` included), so a lock file left behind by a dead run is simply free and the
    next run takes it over (its note — pid, host, start time — is only there for the message; no PID
    is ever trusted, so a recycled PID cannot fake a live holder). Re-entrant within a process (a
    pipeline that holds a run folder can call steps that ask for it again). On NFS, Linux maps
    ``flock`` to POSIX locks held by the NFS lock manager.
    """
    path = Path(folder)
    path.mkdir(parents=True, exist_ok=True)
    key = str(path.resolve())
    with _HELD_GUARD:
        held = _HELD.get(key)
        if held is not None:
            held[1] += 1
        else:
            fd = os.open(path / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                note = os.pread(fd, 512, 0).decode("utf-8", "replace").strip() or "unknown process"
                os.close(fd)
                raise FolderInUse(
                    f"{path}: folder in use by another sftflow run ({note}); wait for it to finish or "
                    "choose another output folder"
                ) from None
            note = (f"pid {os.getpid()} on {socket.gethostname()} since "
                    f"{time.strftime('%Y-%m-%d %H:%M:%S')}\n").encode()
            os.ftruncate(fd, 0)
            os.pwrite(fd, note, 0)
            _HELD[key] = [fd, 1]
    try:
        yield path
    finally:
        with _HELD_GUARD:
            held = _HELD[key]
            held[1] -= 1
            if held[1] == 0:
                del _HELD[key]
                fcntl.flock(held[0], fcntl.LOCK_UN)
                os.close(held[0])
