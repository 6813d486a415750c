"""The ingest stage: every source read, each row converted or ledgered, ids made unique.

:class:`IngestStage` is a :class:`~curation.stage.SourceStage`: :func:`curation.runner.run_stage`
runs it like any stage (fingerprint of the sources' bytes, cache hit, atomic publish, crash points,
ledger invariant). :func:`ingest` is the one-call form.

Ids: a row's own ``id`` when it has one (an id repeated within one source is dropped as
``duplicate_id``; one already used by another source is qualified as ``<source>#<id>``); otherwise
a stable content hash, with ``~N`` appended to the N-th repeat of identical content so ids stay
unique (dedup then drops the repeats as exact duplicates, naming the first). A dropped row's ledger
``id`` is its own id when it has a readable one, else ``<source>:<line>`` (``#N`` for the N-th
further row starting on the same line); ``source`` and ``line`` always say where it was.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, ClassVar

from pydantic import BaseModel, Field

from curation.ingest.base import PREVIEW_CHARS, SURROGATE_RE, IngestConfig, RowError, clean
from curation.ingest.formats import row_to_record
from curation.ingest.readers import _expand, iter_raw_rows
from curation.io import folder_lock
from curation.records import Record, content_id
from curation.stage import Drop, SourceStage, StageOutput
from curation.stats import Concat, Figures, StageStats, Sum


class IngestFigures(Figures):
    """Ingest's own figures (``stats.json`` ``extra``)."""

    #: the data files and hub ids read, in order
    sources: Annotated[list[str], Concat()] = Field(default_factory=list)
    #: kept rows per detected format / language
    formats: Annotated[dict[str, int], Sum] = Field(default_factory=dict)
    langs: Annotated[dict[str, int], Sum] = Field(default_factory=dict)
    #: per source: rows_in, rows_out and ``dropped:<reason>`` counts
    per_source: Annotated[dict[str, dict[str, int]], Sum] = Field(default_factory=dict)
    #: per source: the detail of its first dropped row
    first_error: dict[str, str] = Field(default_factory=dict)
    #: ids used by an earlier source, qualified as ``<source>#<id>``
    ids_qualified: Annotated[int, Sum] = 0
    #: sources with rows, none of them usable
    sources_all_bad: Annotated[list[str], Concat()] = Field(default_factory=list)
    #: sources without any row (empty file, empty directory, glob without matches)
    empty_sources: Annotated[list[str], Concat()] = Field(default_factory=list)


@dataclass
class IngestResult:
    """What :func:`ingest` wrote: its stats (also in ``stats.json``) and the two parquet files."""

    stats: StageStats
    output: Path
    ledger: Path

    @property
    def figures(self) -> IngestFigures:
        return self.stats.figures(IngestFigures)

    def problems(self) -> list[str]:
        """Human-readable lines for what went wrong at the source level (empty when all is well)."""
        f = self.figures
        out = [f"{src}: no rows (empty file, directory or glob)" for src in f.empty_sources]
        for src in f.sources_all_bad:
            per = f.per_source[src]
            reasons = ", ".join(
                f"{k.removeprefix('dropped:')}: {v}" for k, v in sorted(per.items()) if k.startswith("dropped:")
            )
            out.append(
                f"{src}: all {per['rows_in']} rows dropped ({reasons}); first: {f.first_error.get(src, '?')}"
            )
        if self.stats.rows_out == 0:
            out.append(f"no records: {self.stats.rows_in} rows read, none usable")
        return out


def sources_fingerprint(sources: list[str], config: BaseModel) -> str:
    """Hash of the sources' bytes (hub ids by name) and the ingest config."""
    h = hashlib.sha256(config.model_dump_json().encode())
    for path in sources:
        h.update(path.encode("utf-8", "surrogatepass"))
        if path.startswith("hf://"):
            continue
        with open(path, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                h.update(chunk)
    return h.hexdigest()[:16]


class IngestStage(SourceStage):
    """Reads ``sources`` (files, folders, globs, ``hf://`` ids) into records; bad rows to the ledger."""

    name: ClassVar[str] = "ingest"
    Config: ClassVar[type[BaseModel]] = IngestConfig
    Figures: ClassVar[type[Figures]] = IngestFigures
    version = 2  # 2: ledger rows keep the row's own id
    config: IngestConfig

    def __init__(self, config: IngestConfig | None = None, sources: Iterable[str] = ()):
        super().__init__(config)
        self.sources = [str(s) for s in sources]
        self._expanded: tuple[list[str], list[str]] | None = None
        self._figures = IngestFigures()

    def expanded(self) -> tuple[list[str], list[str]]:
        """(data files and hub ids to read, specs that named no file); raises SourceError for a missing one."""
        if self._expanded is None:
            self._expanded = _expand(self.sources)
        return self._expanded

    def fingerprint(self) -> str:
        paths, _ = self.expanded()
        return f"{self.name}-v{self.version}-{sources_fingerprint(paths, self.config)}"

    def stats(self) -> IngestFigures:
        return self._figures

    def read(self) -> Iterator[tuple[int, StageOutput]]:
        config = self.config
        paths, empty = self.expanded()
        fig = IngestFigures(sources=[clean(p) for p in paths])
        self._figures = fig
        formats: Counter[str] = Counter()
        langs: Counter[str] = Counter()
        ids = _IdAssigner()
        out = StageOutput()
        empty_sources = [clean(p) for p in empty]
        for source_no, path in enumerate(paths):
            src = path if path.startswith("hf://") or os.path.isabs(path) else os.path.relpath(path)
            src = clean(src)  # a file name that is not UTF-8 arrives with lone surrogates
            per: Counter[str] = Counter()
            fig.per_source[src] = per  # type: ignore[assignment]  # a Counter until the end
            prev_line, same_line = None, 0
            for lineno, row, err in iter_raw_rows(path, config):
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
                    # several array elements can share a line: keep stub ids unique
                    same_line = same_line + 1 if lineno == prev_line else 0
                    prev_line = lineno
                    own = _own_id(row, config)
                    stub_id = own if own is not None else f"{src}:{lineno}" + (f"#{same_line}" if same_line else "")
                    preview = clean(err.raw) if err.raw is not None else None if row is None else _preview(row)
                    stub = Record(id=stub_id, source=src, line=lineno, text=preview)
                    detail = clean(f"{src} line {lineno}: {err.detail}")
                    out.dropped.append(Drop(stub, err.reason, detail, duplicate_of))
                    per[f"dropped:{err.reason}"] += 1
                    fig.first_error.setdefault(src, detail)
                else:
                    assert rec is not None
                    out.kept.append(rec)
                    formats[fmt] += 1
                    langs[rec.lang] += 1
                    per["rows_out"] += 1
                if len(out.kept) + len(out.dropped) >= config.batch_size:
                    yield len(out.kept) + len(out.dropped), out
                    out = StageOutput()
            if per["rows_in"] == 0:
                empty_sources.append(src)
        if out.kept or out.dropped:
            yield len(out.kept) + len(out.dropped), out
        fig.per_source = {k: dict(v) for k, v in fig.per_source.items()}
        fig.formats = dict(formats)
        fig.langs = dict(langs)
        fig.ids_qualified = ids.qualified
        fig.sources_all_bad = [k for k, v in fig.per_source.items() if v.get("rows_in", 0) > 0 and not v.get("rows_out")]
        fig.empty_sources = empty_sources


def ingest(
    sources: Iterable[str],
    out_dir: str | Path,
    config: IngestConfig | None = None,
    progress: Any = None,
) -> IngestResult:
    """Read every source into ``out_dir/output.parquet`` (+ ``ledger.parquet``, ``stats.json``); nothing is lost.

    Raises :class:`SourceError` for a source that cannot be read (nothing is published then).
    """
    from curation.runner import run_stage

    out_dir = Path(out_dir)
    with folder_lock(out_dir):
        stats = run_stage(IngestStage(config, sources), None, out_dir, progress=progress)
    return IngestResult(stats, out_dir / "output.parquet", out_dir / "ledger.parquet")


def iter_records(path: str, config: IngestConfig) -> Iterator[tuple[int, Record | None, RowError | None]]:
    """Every row of one source as ``(line, record, None)``, or ``(line, None, error)`` when it cannot be one.

    For readers of a single source that want records, not an ingest stage (the mixer's general pool,
    quality-classifier training files): rows are converted exactly as ingest converts them, but ids
    are not made unique across sources and nothing is written.
    """
    for lineno, row, err in iter_raw_rows(path, config):
        if err is None:
            try:
                rec, _ = row_to_record(row, path, lineno, config)
            except RowError as e:
                err = e
            except RecursionError:
                err = RowError("nested_too_deep", "row is nested too deeply")
            else:
                yield lineno, rec, None
                continue
        yield lineno, None, err


def _own_id(row: Any, config: IngestConfig) -> str | None:
    """The id a raw row gives itself (``id``, or the field mapped to it), when it is readable."""
    if not isinstance(row, dict):
        return None
    given = row.get(config.field_map.get("id", "id"))
    if isinstance(given, bool) or not isinstance(given, str | int):
        return None
    rid = str(given).strip()
    return rid if rid and not SURROGATE_RE.search(rid) else None


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
    return clean(s[:PREVIEW_CHARS])


__all__ = ["IngestFigures", "IngestResult", "IngestStage", "ingest", "iter_records", "sources_fingerprint"]
