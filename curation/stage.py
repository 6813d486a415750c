"""The one shape every curation stage has.

A stage takes records + its config and returns, per batch, the records it keeps and the ones it
drops, each drop with a reason (data, not a log line). Stages that need a global view (dedup's
clusters, selection's ranking) make a first pass with :meth:`Stage.fit` that keeps only compact
state (signatures, scores), never the texts. The runner streams batches from parquet, writes
``output.parquet``, ``ledger.parquet`` and ``stats.json``, and checks the ledger invariant:
rows in = rows kept + rows dropped.
"""

from __future__ import annotations

import glob
import hashlib
import json
import os
import time
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import pyarrow as pa
from pydantic import BaseModel

from curation.io import (
    LEDGER_SCHEMA,
    ParquetWriter,
    count_rows,
    iter_record_batches,
    parquet_schema,
    read_json,
    record_schema,
    write_json,
)
from curation.records import Record


@dataclass(slots=True)
class Drop:
    """One dropped input row: why, and (for duplicates) which kept row it duplicates."""

    record: Record
    reason: str
    detail: str = ""
    duplicate_of: str | None = None


@dataclass(slots=True)
class StageOutput:
    kept: list[Record] = field(default_factory=list)
    dropped: list[Drop] = field(default_factory=list)


class LedgerBalanceError(RuntimeError):
    """A stage lost or invented rows: a bug, never a user error."""


class Stage:
    """Base class: subclasses set ``name``, ``Config`` and implement :meth:`process`."""

    name: ClassVar[str] = "stage"
    Config: ClassVar[type[BaseModel]]
    #: attribute columns this stage adds to records (name → arrow type)
    attr_fields: ClassVar[dict[str, pa.DataType]] = {}
    #: True when the stage needs a first pass over all input (``fit``) before ``process``
    needs_fit: ClassVar[bool] = False
    #: config fields naming files the stage reads (the mixer's general pool, a quality model): their
    #: content is part of the fingerprint, so editing them reruns the stage. Never list a file the
    #: stage itself writes (dedup's persistent index), or no run would ever be cached.
    input_file_fields: ClassVar[tuple[str, ...]] = ("general", "model")

    #: identifies one run of this stage (input fingerprint + output folder), set by :func:`run_stage`;
    #: a rerun after a crash has the same key. Stages with outside side effects (dedup's persistent
    #: index) use it to recognise what an earlier attempt of the same run already wrote.
    run_key: str | None = None

    def __init__(self, config: BaseModel | None = None):
        self.config = config if config is not None else self.Config()
        self.counters: Counter[str] = Counter()

    def fit(self, batches: Iterable[list[Record]]) -> None:  # pragma: no cover - default no-op
        for _ in batches:
            pass

    def process(self, batch: list[Record]) -> StageOutput:
        raise NotImplementedError

    def added(self) -> Iterator[list[Record]]:
        """Records the stage brings in from outside its input, after ``process`` saw every batch.

        Only the mixer does this (general-data replay rows). They are counted as ``rows_added``;
        the invariant becomes rows in + rows added = rows kept + rows dropped.
        """
        return iter(())

    def stats(self) -> dict[str, Any]:
        """Stage-specific figures, merged into ``stats.json`` (the report reads them)."""
        return dict(self.counters)

    def fingerprint(self) -> str:
        """Hash of the stage's name, version, config and the content of the files its config names."""
        config = self.config.model_dump(mode="json")
        files = {k: files_digest(config[k]) for k in self.input_file_fields if config.get(k)}
        payload = {
            "stage": self.name,
            "version": getattr(self, "version", 1),
            "config": config,
            "files": files,
        }
        return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]


def files_digest(spec: str | list[str]) -> str:
    """Hash of the bytes of every local file a path / folder / glob (or a list of them) names.

    Names that are not local files (hub ids, redis URLs, model aliases) count by name only.
    """
    h = hashlib.sha256()
    for item in [spec] if isinstance(spec, str) else spec:
        if not isinstance(item, str):
            continue
        if os.path.isdir(item):
            paths = sorted(str(p) for p in Path(item).rglob("*") if p.is_file())
        else:
            paths = sorted(glob.glob(item, recursive=True)) if glob.has_magic(item) else [item]
        h.update(item.encode("utf-8", "surrogatepass"))
        for path in paths:
            if not os.path.isfile(path):
                continue
            h.update(path.encode("utf-8", "surrogatepass"))
            with open(path, "rb") as fh:
                for chunk in iter(lambda: fh.read(1 << 20), b""):
                    h.update(chunk)
    return h.hexdigest()[:16]


#: test hook: ``SFTFLOW_CRASH_AFTER=<stage>:<point>`` ends the process at that point
CRASH_ENV = "SFTFLOW_CRASH_AFTER"


def crash_point(stage: str, point: str | int) -> None:
    """Die like ``kill -9`` (exit 137, nothing flushed) when ``$SFTFLOW_CRASH_AFTER`` names this point.

    Points: ``<stage>:fit`` (fit done), ``<stage>:<n>`` (n-th batch written to the temp files),
    ``<stage>:published`` (output + ledger renamed into place, stats.json not yet written),
    ``<stage>:done``; the pipeline adds ``ingest:published``, ``ingest:done``, ``final:output`` and
    ``final:ledger``. The resume tests use it to crash at exact places instead of racing a timer;
    unset, it costs one environment lookup.
    """
    want = os.environ.get(CRASH_ENV)
    if want and want == f"{stage}:{point}":
        os._exit(137)


def drop_row(d: Drop, stage: str) -> dict[str, Any]:
    r = d.record
    return {
        "id": r.id,
        "stage": stage,
        "reason": d.reason,
        "detail": d.detail,
        "duplicate_of": d.duplicate_of,
        "source": r.source,
        "line": r.line,
        "record": json.dumps(
            {"messages": r.messages, "text": r.text, "meta": r.meta, "attrs": r.attrs},
            ensure_ascii=False,
            default=str,
        ),
    }


def apply_stage(
    stage: Stage, records: list[Record], batch_size: int = 2048
) -> tuple[list[Record], list[Drop], dict]:
    """Run a stage on in-memory records (API and tests); same logic as :func:`run_stage`."""
    batches = [records[i : i + batch_size] for i in range(0, len(records), batch_size)]
    if stage.needs_fit:
        stage.fit(iter(batches))
    kept: list[Record] = []
    dropped: list[Drop] = []
    for b in batches:
        out = stage.process(b)
        _check_balance(stage, len(b), out)
        kept.extend(out.kept)
        dropped.extend(out.dropped)
    n_added = 0
    for b in stage.added():
        kept.extend(b)
        n_added += len(b)
    stats = _stats(stage, len(records), len(kept), Counter(d.reason for d in dropped), 0.0, n_added)
    return kept, dropped, stats


def _check_balance(stage: Stage, n_in: int, out: StageOutput) -> None:
    if n_in != len(out.kept) + len(out.dropped):
        raise LedgerBalanceError(
            f"stage {stage.name!r}: {n_in} rows in but {len(out.kept)} kept + {len(out.dropped)} dropped"
        )


def _stats(
    stage: Stage, n_in: int, n_out: int, reasons: Counter, seconds: float, n_added: int = 0
) -> dict[str, Any]:
    n_dropped = sum(reasons.values())
    if n_in + n_added != n_out + n_dropped:
        raise LedgerBalanceError(
            f"stage {stage.name!r}: {n_in} in + {n_added} added != {n_out} kept + {n_dropped} dropped"
        )
    return {
        "stage": stage.name,
        "rows_in": n_in,
        "rows_added": n_added,
        "rows_out": n_out,
        "rows_dropped": n_dropped,
        "dropped_by_reason": dict(sorted(reasons.items())),
        "seconds": round(seconds, 3),
        "rows_per_s": round(n_in / seconds, 1) if seconds > 0 else None,
        "extra": stage.stats(),
    }


def run_stage(
    stage: Stage,
    input_path: str | Path,
    out_dir: str | Path,
    *,
    batch_size: int = 2048,
    input_fingerprint: str = "",
    resume: bool = False,
    progress: Any = None,
) -> dict[str, Any]:
    """Stream ``input_path`` through ``stage`` into ``out_dir`` (output, ledger, stats).

    With ``resume`` a stage whose ``stats.json`` carries the same fingerprint (input content +
    stage config) is not run again: its files are complete, since every file is published
    atomically and ``stats.json`` is written last.
    """
    out_dir = Path(out_dir)
    fp = hashlib.sha256(f"{input_fingerprint}|{stage.fingerprint()}".encode()).hexdigest()[:16]
    stats_path = out_dir / "stats.json"
    if resume and stats_path.exists():
        prev = read_json(stats_path)
        if prev.get("fingerprint") == fp and published_files_match(out_dir, prev):
            prev["cached"] = True
            return prev

    # The old completion marker goes first: a run killed after publishing some new files must not
    # leave them beside a stats.json that vouches for the old ones.
    stats_path.unlink(missing_ok=True)
    started = time.perf_counter()
    schema = record_schema(stage.attr_fields, base=parquet_schema(input_path))
    stage.run_key = f"{fp}:{out_dir.resolve()}"
    if stage.needs_fit:
        stage.fit(iter_record_batches(input_path, batch_size))
        crash_point(stage.name, "fit")
    n_in = n_out = n_batches = 0
    reasons: Counter[str] = Counter()
    with (
        ParquetWriter(out_dir / "output.parquet", schema) as out_w,
        ParquetWriter(out_dir / "ledger.parquet", LEDGER_SCHEMA) as led_w,
    ):
        for batch in _progress(iter_record_batches(input_path, batch_size), progress):
            out = stage.process(batch)
            _check_balance(stage, len(batch), out)
            out_w.write_rows([r.to_row() for r in out.kept])
            led_w.write_rows([drop_row(d, stage.name) for d in out.dropped])
            reasons.update(d.reason for d in out.dropped)
            n_in += len(batch)
            n_out += len(out.kept)
            n_batches += 1
            crash_point(stage.name, n_batches)
        n_added = 0
        for extra in stage.added():
            out_w.write_rows([r.to_row() for r in extra])
            n_added += len(extra)
            n_out += len(extra)
    crash_point(stage.name, "published")
    stats = _stats(stage, n_in, n_out, reasons, time.perf_counter() - started, n_added)
    stats["fingerprint"] = fp
    write_json(stats_path, stats)
    crash_point(stage.name, "done")
    return stats


def published_files_match(out_dir: str | Path, stats: dict[str, Any]) -> bool:
    """True when ``output.parquet`` and ``ledger.parquet`` are there with the row counts ``stats`` names.

    A cache hit checks this (two footer reads) so a folder whose files were deleted or replaced
    after its stats.json was written is rebuilt rather than trusted.
    """
    out_dir = Path(out_dir)
    try:
        return (
            count_rows(out_dir / "output.parquet") == stats["rows_out"]
            and count_rows(out_dir / "ledger.parquet") == stats["rows_dropped"]
        )
    except (OSError, KeyError, pa.ArrowException):
        return False


def _progress(batches: Iterator[list[Record]], progress: Any) -> Iterator[list[Record]]:
    for b in batches:
        yield b
        if progress is not None:
            progress(len(b))
