"""The one stage runner: every stage — ingest, the curation stages, a stage on shards — runs here.

:func:`run_stage` owns what every stage run needs, once:

- the **fingerprint** (input content + stage config + the files the config names) and the **cache
  hit**: with ``resume``, a folder whose ``stats.json`` carries the same fingerprint and whose
  published files have the row counts it names is not run again;
- the **completion marker**: the old ``stats.json`` goes first, ``output.parquet`` and
  ``ledger.parquet`` are published atomically, the new ``stats.json`` is written last;
- **crash points** (``SFTFLOW_CRASH_AFTER``, see :func:`curation.stage.crash_point`);
- the **ledger invariant**, per batch and for the whole stage: rows in + rows added = kept + dropped.

*How* the batches are processed is an executor's job. :class:`SerialExecutor` streams the input
through the stage in this process. :class:`ShardedExecutor` cuts the input of a per-row stage
(:attr:`Stage.per_row`) into contiguous shards, hands them to a ``map_shards`` function, and
concatenates the shard outputs and ledgers in shard order — the same bytes a serial run writes —
and merges their stats (:meth:`StageStats.merge`); a global stage (fit pass, added rows) runs whole.
``map_shards`` is the seam: the default runs the shards one after another here; a process pool
(``ProcessPoolExecutor(n).map``) or the Dask cluster of ``flows.scaleout`` plugs in there. Each
shard builds its stage from the stage's class and config (:class:`ShardJob` is plain data), so a
worker process needs nothing from the parent; a model-backed scorer loads once per worker process
through :meth:`curation.registry.Registry.instance`.

:func:`apply_stage` runs a stage on records in memory (the API and tests) through the same loop.
"""

from __future__ import annotations

import hashlib
import shutil
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from importlib import import_module
from pathlib import Path
from typing import Any, Protocol

import pyarrow as pa
import pyarrow.parquet as pq

from curation.io import (
    LEDGER_SCHEMA,
    ParquetWriter,
    count_rows,
    iter_record_batches,
    parquet_schema,
    read_json,
    records_table,
    write_json,
)
from curation.records import Record
from curation.stage import Drop, SourceStage, Stage, StageOutput, crash_point, drop_row
from curation.stats import Figures, LedgerBalanceError, StageStats

#: rows per batch unless the caller says otherwise
BATCH_SIZE = 2048


# ------------------------------------------------------------------------------------------------
# the loop every executor uses


def _outputs(stage: Stage, read: Callable[[], Iterable[list[Record]]] | None) -> Iterator[tuple[int, StageOutput]]:
    """(rows in, output) per batch: a source stage's reading, or fit (if needed) then process."""
    if isinstance(stage, SourceStage):
        yield from stage.read()
        return
    assert read is not None, f"stage {stage.name!r} needs input records"
    if stage.needs_fit:
        stage.fit(iter(read()))
        crash_point(stage.name, "fit")
    for batch in read():
        yield len(batch), stage.process(batch)


def _figures(stage: Stage) -> dict[str, Any]:
    figures = stage.stats()
    return figures.to_json() if isinstance(figures, Figures) else dict(figures)


def drive(
    stage: Stage,
    read: Callable[[], Iterable[list[Record]]] | None,
    keep: Callable[[list[Record]], None],
    drop: Callable[[list[Drop]], None],
    progress: Callable[[int], None] | None = None,
) -> StageStats:
    """Run ``stage`` over the batches ``read()`` yields, handing kept rows to ``keep`` and drops to ``drop``.

    Checks every batch (rows in = kept + dropped) and the whole run (+ rows added); calls
    ``progress(rows)`` after each batch. Returns the stage's stats (no fingerprint).
    """
    started = time.perf_counter()
    n_in = n_out = n_batches = n_added = 0
    reasons: Counter[str] = Counter()
    for n, out in _outputs(stage, read):
        if n != len(out.kept) + len(out.dropped):
            raise LedgerBalanceError(
                f"stage {stage.name!r}: {n} rows in but {len(out.kept)} kept + {len(out.dropped)} dropped"
            )
        keep(out.kept)
        drop(out.dropped)
        reasons.update(d.reason for d in out.dropped)
        n_in += n
        n_out += len(out.kept)
        n_batches += 1
        crash_point(stage.name, n_batches)
        if progress is not None:
            progress(n)
    for extra in stage.added():
        keep(extra)
        n_added += len(extra)
        n_out += len(extra)
    return StageStats.build(
        stage.name, n_in, n_out, reasons, time.perf_counter() - started, n_added, _figures(stage)
    )


def apply_stage(
    stage: Stage, records: list[Record], batch_size: int = BATCH_SIZE
) -> tuple[list[Record], list[Drop], StageStats]:
    """Run a stage on in-memory records (API and tests): the same loop as :func:`run_stage`."""
    batches = [records[i : i + batch_size] for i in range(0, len(records), batch_size)]
    kept: list[Record] = []
    dropped: list[Drop] = []
    stats = drive(stage, lambda: iter(batches), kept.extend, dropped.extend)
    return kept, dropped, stats


# ------------------------------------------------------------------------------------------------
# executors


class Executor(Protocol):
    """Runs a stage into ``out_dir``: publishes ``output.parquet`` + ``ledger.parquet``, returns the stats."""

    def execute(self, stage: Stage, input_path: Path | None, out_dir: Path, *, batch_size: int,
                progress: Callable[[int], None] | None) -> StageStats: ...


class SerialExecutor:
    """The input streamed through the stage in this process, batch by batch."""

    def execute(self, stage: Stage, input_path: Path | None, out_dir: Path, *, batch_size: int = BATCH_SIZE,
                progress: Callable[[int], None] | None = None) -> StageStats:
        schema = stage.output_schema(parquet_schema(input_path) if input_path is not None else None)
        read = (lambda: iter_record_batches(input_path, batch_size)) if input_path is not None else None
        with (
            ParquetWriter(out_dir / "output.parquet", schema) as out_w,
            ParquetWriter(out_dir / "ledger.parquet", LEDGER_SCHEMA) as led_w,
        ):
            return drive(
                stage,
                read,
                lambda rows: out_w.write_table(records_table(rows, schema)),
                lambda drops: led_w.write_rows([drop_row(d, stage.name) for d in drops]),
                progress,
            )


@dataclass(frozen=True)
class ShardJob:
    """One shard of a per-row stage: plain data, so it can go to another process or machine."""

    #: the stage class as ``"module:QualName"`` (imported by the worker)
    stage_class: str
    #: the stage config as JSON
    config: dict[str, Any]
    #: the shard's input records; its output and ledger go to the same folder
    input: str
    batch_size: int = BATCH_SIZE

    def run(self) -> StageStats:
        """Build the stage and run it on this shard (serially); returns the shard's stats."""
        module, _, qualname = self.stage_class.partition(":")
        cls: Any = import_module(module)
        for part in qualname.split("."):
            cls = getattr(cls, part)
        stage = cls(cls.Config.model_validate(self.config))
        return SerialExecutor().execute(stage, Path(self.input), Path(self.input).parent, batch_size=self.batch_size)


def run_shard(job: ShardJob) -> StageStats:
    """:meth:`ShardJob.run` as a plain function (what a process pool or a cluster maps over)."""
    return job.run()


def serial_map(jobs: Sequence[ShardJob]) -> list[StageStats]:
    """The shards one after another, in this process."""
    return [run_shard(j) for j in jobs]


class ShardedExecutor:
    """Per-row stages on contiguous shards mapped by ``map_shards``; global stages run whole.

    ``map_shards(jobs)`` returns each job's :class:`StageStats` in job order (it may run them
    anywhere that sees the shard files: threads, a process pool, a Dask cluster on shared storage).
    """

    def __init__(self, shards: int, map_shards: Callable[[Sequence[ShardJob]], Sequence[StageStats]] = serial_map):
        self.shards = shards
        self.map_shards = map_shards
        #: names of the stages that ran on shards, in order
        self.sharded: list[str] = []

    def execute(self, stage: Stage, input_path: Path | None, out_dir: Path, *, batch_size: int = BATCH_SIZE,
                progress: Callable[[int], None] | None = None) -> StageStats:
        n_rows = count_rows(input_path) if input_path is not None else 0
        if self.shards <= 1 or n_rows < 2 or not stage.per_row:
            return SerialExecutor().execute(stage, input_path, out_dir, batch_size=batch_size, progress=progress)
        started = time.perf_counter()
        shard_root = out_dir / ".shards"
        shutil.rmtree(shard_root, ignore_errors=True)
        inputs = split_shards(input_path, shard_root, self.shards, batch_size)
        cls = type(stage)
        jobs = [ShardJob(f"{cls.__module__}:{cls.__qualname__}", stage.config.model_dump(mode="json"), str(p),
                         batch_size) for p in inputs]
        parts = list(self.map_shards(jobs))
        folders = [p.parent for p in inputs]
        schema = pq.read_schema(folders[0] / "output.parquet")
        concat_parquet([f / "output.parquet" for f in folders], out_dir / "output.parquet", schema, batch_size)
        concat_parquet([f / "ledger.parquet" for f in folders], out_dir / "ledger.parquet", LEDGER_SCHEMA, batch_size)
        stats = StageStats.merge(parts, stage.Figures, stage.config, seconds=time.perf_counter() - started)
        if stats.rows_in != n_rows:
            raise LedgerBalanceError(f"stage {stage.name!r} on {len(parts)} shards: {n_rows} rows in, "
                                     f"{stats.rows_in} processed")
        shutil.rmtree(shard_root, ignore_errors=True)
        if progress is not None:
            progress(stats.rows_in)
        self.sharded.append(stage.name)
        return stats


def split_shards(input_path: Path, folder: Path, shards: int, batch_size: int = BATCH_SIZE) -> list[Path]:
    """Cut a records parquet into ``shards`` contiguous parts (at least one row each), input order kept."""
    pf = pq.ParquetFile(input_path)
    n = pf.metadata.num_rows
    shards = max(1, min(shards, n))
    per = -(-n // shards)
    paths = [folder / f"shard-{i:03d}" / "input.parquet" for i in range(-(-n // per))]
    writers = [ParquetWriter(p, pf.schema_arrow) for p in paths]
    try:
        pos = 0
        for rb in pf.iter_batches(batch_size=batch_size):
            start = 0
            while start < rb.num_rows:
                shard = pos // per
                take = min(rb.num_rows - start, per - pos % per)
                writers[shard].write_rows(rb.slice(start, take).to_pylist())
                start += take
                pos += take
    except BaseException:
        for w in writers:
            w.abort()
        raise
    for w in writers:
        w.close()
    return paths


def concat_parquet(paths: Sequence[Path], out: Path, schema: pa.Schema, batch_size: int = BATCH_SIZE) -> int:
    """Concatenate parquet files in order into ``out`` (published atomically); returns the rows written."""
    n = 0
    with ParquetWriter(out, schema) as w:
        for p in paths:
            for rb in pq.ParquetFile(p).iter_batches(batch_size=batch_size):
                rows = rb.to_pylist()
                w.write_rows(rows)
                n += len(rows)
    return n


SERIAL = SerialExecutor()


# ------------------------------------------------------------------------------------------------
# the runner


def stage_fingerprint(stage: Stage, input_fingerprint: str = "") -> str:
    """What identifies a stage's result: its input's fingerprint chained with the stage's own."""
    return hashlib.sha256(f"{input_fingerprint}|{stage.fingerprint()}".encode()).hexdigest()[:16]


def cached_stats(out_dir: str | Path, fingerprint: str) -> StageStats | None:
    """The stats of a finished run of the same stage on the same input in ``out_dir``, else None."""
    path = Path(out_dir) / "stats.json"
    if not path.exists():
        return None
    try:
        prev = StageStats.model_validate(read_json(path))
    except (ValueError, OSError):
        return None
    if prev.fingerprint != fingerprint or not published_files_match(out_dir, prev):
        return None
    prev.cached = True
    return prev


def published_files_match(out_dir: str | Path, stats: StageStats) -> bool:
    """True when ``output.parquet`` and ``ledger.parquet`` are there with the row counts ``stats`` names.

    A cache hit checks this (two footer reads) so a folder whose files were deleted or replaced
    after its stats.json was written is rebuilt rather than trusted.
    """
    out_dir = Path(out_dir)
    try:
        return (
            count_rows(out_dir / "output.parquet") == stats.rows_out
            and count_rows(out_dir / "ledger.parquet") == stats.rows_dropped
        )
    except (OSError, pa.ArrowException):
        return False


def clean_partial(folder: str | Path) -> None:
    """Remove what a killed run left behind in ``folder``: temp files (never under a final name) and shards."""
    folder = Path(folder)
    if folder.is_dir():
        for tmp in folder.glob(".*.tmp"):
            if tmp.is_dir():
                shutil.rmtree(tmp, ignore_errors=True)
            else:
                tmp.unlink(missing_ok=True)
        shutil.rmtree(folder / ".shards", ignore_errors=True)


def run_stage(
    stage: Stage,
    input_path: str | Path | None,
    out_dir: str | Path,
    *,
    batch_size: int = BATCH_SIZE,
    input_fingerprint: str = "",
    resume: bool = False,
    progress: Callable[[int], None] | None = None,
    executor: Executor | None = None,
) -> StageStats:
    """Run ``stage`` on ``input_path`` (a records parquet; None for a source stage) into ``out_dir``.

    Writes ``output.parquet``, ``ledger.parquet`` and, last, ``stats.json``. With ``resume`` a
    finished run with the same fingerprint (``input_fingerprint`` chained with the stage's own) is
    returned as it is (``cached=True``): every file is published atomically and ``stats.json``
    comes last, so what it vouches for is complete.
    """
    out_dir = Path(out_dir)
    input_path = Path(input_path) if input_path is not None else None
    fp = stage_fingerprint(stage, input_fingerprint)
    if resume and (prev := cached_stats(out_dir, fp)) is not None:
        return prev
    # The old completion marker goes first: a run killed after publishing some new files must not
    # leave them beside a stats.json that vouches for the old ones.
    (out_dir / "stats.json").unlink(missing_ok=True)
    clean_partial(out_dir)
    stage.run_key = f"{fp}:{out_dir.resolve()}"
    stats = (executor or SERIAL).execute(stage, input_path, out_dir, batch_size=batch_size, progress=progress)
    crash_point(stage.name, "published")
    stats.fingerprint = fp
    write_json(out_dir / "stats.json", stats.to_json())
    crash_point(stage.name, "done")
    return stats


__all__ = [
    "BATCH_SIZE", "Executor", "SerialExecutor", "ShardedExecutor", "ShardJob", "apply_stage", "cached_stats",
    "clean_partial", "concat_parquet", "drive", "published_files_match", "run_shard", "run_stage", "serial_map",
    "split_shards", "stage_fingerprint",
]
