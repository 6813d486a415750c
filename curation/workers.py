"""Local worker processes: per-row stages on every core of this machine, byte-identical to one.

:class:`PoolExecutor` is an executor of :func:`curation.runner.run_stage`. For a per-row stage
(:attr:`Stage.per_row`: quality, score, decontam) it cuts the input into contiguous chunks of row
groups, has a pool of worker processes run the stage on each chunk (each worker reads its rows from
the input file itself and returns the kept rows and the ledger rows as Arrow tables), and writes the
chunks' results **in input order** into ``output.parquet`` and ``ledger.parquet`` — the rows a
serial run writes, through the same writer, so the same bytes. Stats merge by each stage's merge
rules (:meth:`curation.stats.StageStats.merge`). Global stages (dedup, select, mix) and small inputs
run serially in this process.

Why chunks and not one shard per worker: a chunk is a few row groups, so the work balances itself
(a worker that finishes early takes the next chunk), memory stays bounded (at most ``2 x workers``
chunks are in flight, and results are written as soon as all chunks before them are), and there are
no shard files to split and concatenate (``ShardedExecutor`` does that for clusters that share only
a file system).

Workers are started with **spawn**: a fresh interpreter, never a ``fork`` of a process that may have
torch, numba or OpenMP threads running (forking those can deadlock). Measured start: ~0.35 s of CPU
and ~1-2 s of wall per worker (the stage modules' imports), paid once per pool; the pool starts on
the first chunked stage and is reused by the next ones. Each worker gets ``cores // workers`` math
threads (``OMP_NUM_THREADS`` & co., unless set), and the parent's registries (stages, scorers,
services registered by ``flows``), so a model-backed scorer is found — and loaded once per worker,
through :meth:`curation.registry.Registry.instance`.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import time
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from importlib import import_module
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from curation.errors import SftflowError
from curation.io import LEDGER_SCHEMA, ParquetWriter, batch_records, parquet_schema, records_table, rows_table
from curation.registry import SCORERS, SERVICES, STAGES
from curation.runner import BATCH_SIZE, Executor, SerialExecutor, drive
from curation.stage import Stage, drop_row
from curation.stats import LedgerBalanceError, StageStats

#: rows per chunk (whole row groups): about ``rows / (8 x workers)``, within these bounds. Big enough
#: that building the stage per chunk (decontam loads its index: ~0.1 s) is noise, small enough that
#: the chunks in flight stay a few hundred MB and a worker that finishes early finds work left.
MIN_CHUNK_ROWS = 8192
MAX_CHUNK_ROWS = 32_768
#: a stage runs on the pool only when its input has at least this many rows (else serially: a
#: worker's start costs more than a few thousand rows of any stage)
MIN_POOL_ROWS = 20_000
#: row groups larger than this make chunks too coarse (and too big to hold): such an input runs serially
MAX_ROW_GROUP_ROWS = 65_536


def default_workers() -> int:
    """The cores this process may run on (its CPU affinity where the OS has one)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        return os.cpu_count() or 1


def resolve_workers(workers: int | None) -> int:
    """``workers`` as given, or ``$SFTFLOW_WORKERS``, or one per core; at least 1."""
    if workers is None:
        env = os.environ.get("SFTFLOW_WORKERS", "").strip()
        if env:
            try:
                workers = int(env)
            except ValueError:
                raise SftflowError(f"SFTFLOW_WORKERS={env!r}: expected a whole number of worker processes") from None
        else:
            workers = default_workers()
    if workers < 1:
        raise SftflowError(f"workers: {workers} is not a number of processes (use 1 or more)")
    return workers


class WorkerDied(SftflowError):
    """A worker process ended abruptly (killed: out of memory?); nothing of the stage was published."""


# ------------------------------------------------------------------------------------------------
# what runs in a worker


@dataclass(frozen=True)
class ChunkJob:
    """One chunk of a per-row stage: plain data (pickled to a worker)."""

    stage_class: str  # "module:QualName"
    config: dict[str, Any]
    input: str
    row_groups: tuple[int, ...]
    batch_size: int
    schema: pa.Schema  # the stage's output schema


@dataclass
class ChunkResult:
    kept: pa.Table
    ledger: pa.Table
    stats: StageStats


def _build(job: ChunkJob) -> Stage:
    module, _, qualname = job.stage_class.partition(":")
    cls: Any = import_module(module)
    for part in qualname.split("."):
        cls = getattr(cls, part)
    return cls(cls.Config.model_validate(job.config))


def run_chunk(job: ChunkJob) -> ChunkResult:
    """Run a fresh stage on the job's row groups (serially, in this process); results as Arrow tables."""
    stage = _build(job)
    kept: list[pa.Table] = []
    ledger: list[pa.Table] = []

    def read():
        pf = pq.ParquetFile(job.input)
        for rb in pf.iter_batches(batch_size=job.batch_size, row_groups=list(job.row_groups)):
            yield batch_records(rb)

    # converted to Arrow batch by batch: a chunk's rows are never all Python objects at once
    stats = drive(stage, read, lambda rows: kept.append(records_table(rows, job.schema)),
                  lambda drops: ledger.append(rows_table([drop_row(d, stage.name) for d in drops], LEDGER_SCHEMA)))
    return ChunkResult(_concat(kept, job.schema), _concat(ledger, LEDGER_SCHEMA), stats)


def _concat(tables: list[pa.Table], schema: pa.Schema) -> pa.Table:
    return pa.concat_tables(tables) if tables else schema.empty_table()


def _init_worker(registries: dict[str, dict[str, str]], threads: int) -> None:
    """Worker start: the parent's registry entries, and a fair share of math threads."""
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "NUMEXPR_NUM_THREADS"):
        os.environ.setdefault(var, str(threads))
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    for registry in (STAGES, SCORERS, SERVICES):
        registry.update(registries.get(registry.kind, {}))


def _registries() -> dict[str, dict[str, str]]:
    """The registries' entries as ``"module:attribute"`` names a worker can import.

    Objects registered directly (a class, a function) travel by their qualified name; ones that
    cannot be imported by name (defined inside a function) are left out: a worker cannot have them.
    """
    out: dict[str, dict[str, str]] = {}
    for registry in (STAGES, SCORERS, SERVICES):
        entries = {}
        for name, target in registry.items():
            if isinstance(target, str):
                entries[name] = target
                continue
            module, qualname = getattr(target, "__module__", None), getattr(target, "__qualname__", "")
            if module and qualname and "<locals>" not in qualname:
                entries[name] = f"{module}:{qualname}"
        out[registry.kind] = entries
    return out


# ------------------------------------------------------------------------------------------------
# the pool and the executor


class WorkerPool:
    """``workers`` spawned processes, started on first use and kept until :meth:`close`."""

    def __init__(self, workers: int):
        self.workers = workers
        self._pool: ProcessPoolExecutor | None = None

    def submit(self, fn: Callable[..., Any], *args: Any) -> Future:
        if self._pool is None:
            threads = max(1, default_workers() // self.workers)
            self._pool = ProcessPoolExecutor(self.workers, mp_context=multiprocessing.get_context("spawn"),
                                             initializer=_init_worker, initargs=(_registries(), threads))
        return self._pool.submit(fn, *args)

    @property
    def started(self) -> bool:
        return self._pool is not None

    def close(self, cancel: bool = False) -> None:
        """Stop the workers (waits for them, so their CPU time shows in ``RUSAGE_CHILDREN``)."""
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=cancel)
            self._pool = None

    def __enter__(self) -> WorkerPool:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self.close(cancel=exc_type is not None)


def chunks(input_path: Path, target_rows: int) -> list[tuple[int, ...]] | None:
    """Contiguous runs of row groups of about ``target_rows`` rows; None when the row groups are too big."""
    meta = pq.ParquetFile(input_path).metadata
    sizes = [meta.row_group(i).num_rows for i in range(meta.num_row_groups)]
    if not sizes or max(sizes) > MAX_ROW_GROUP_ROWS:
        return None
    out: list[tuple[int, ...]] = []
    current: list[int] = []
    rows = 0
    for i, n in enumerate(sizes):
        current.append(i)
        rows += n
        if rows >= target_rows:
            out.append(tuple(current))
            current, rows = [], 0
    if current:
        out.append(tuple(current))
    return out


class PoolExecutor:
    """Per-row stages on a :class:`WorkerPool`, chunk results written in input order; the rest serially.

    ``min_rows``: smaller inputs run serially (a worker's start costs more than they do);
    ``chunk_rows``: how many rows one task carries (default: see :data:`MIN_CHUNK_ROWS`).
    """

    def __init__(self, pool: WorkerPool, *, min_rows: int = MIN_POOL_ROWS, chunk_rows: int | None = None):
        self.pool = pool
        self.min_rows = min_rows
        self.chunk_rows = chunk_rows
        #: names of the stages that ran on the pool, in order
        self.pooled: list[str] = []

    def execute(self, stage: Stage, input_path: Path | None, out_dir: Path, *, batch_size: int = BATCH_SIZE,
                progress: Callable[[int], None] | None = None) -> StageStats:
        parts = self._chunks(stage, input_path)
        if parts is None:
            return SerialExecutor().execute(stage, input_path, out_dir, batch_size=batch_size, progress=progress)
        assert input_path is not None
        started = time.perf_counter()
        schema = stage.output_schema(parquet_schema(input_path))
        cls = type(stage)
        config = stage.config.model_dump(mode="json")
        jobs = deque(ChunkJob(f"{cls.__module__}:{cls.__qualname__}", config, str(input_path), groups, batch_size,
                              schema) for groups in parts)
        in_flight: deque[Future] = deque()
        stats: list[StageStats] = []
        try:
            with (
                ParquetWriter(out_dir / "output.parquet", schema) as out_w,
                ParquetWriter(out_dir / "ledger.parquet", LEDGER_SCHEMA) as led_w,
            ):
                while jobs or in_flight:
                    # keep every worker busy with one chunk queued behind it; write results in order
                    while jobs and len(in_flight) < 2 * self.pool.workers:
                        in_flight.append(self.pool.submit(run_chunk, jobs.popleft()))
                    result: ChunkResult = _result(in_flight.popleft(), stage.name)
                    out_w.write_table(result.kept)
                    led_w.write_table(result.ledger)
                    stats.append(result.stats)
                    if progress is not None:
                        progress(result.stats.rows_in)
        except BaseException:
            for f in in_flight:
                f.cancel()
            raise
        merged = StageStats.merge(stats, stage.Figures, stage.config, seconds=time.perf_counter() - started)
        n_rows = pq.ParquetFile(input_path).metadata.num_rows
        if merged.rows_in != n_rows:
            raise LedgerBalanceError(f"stage {stage.name!r} on {len(stats)} chunks: {n_rows} rows in, "
                                     f"{merged.rows_in} processed")
        merged.shards = None  # chunks are how the work was cut, not a property of the result
        self.pooled.append(stage.name)
        return merged

    def _chunks(self, stage: Stage, input_path: Path | None) -> list[tuple[int, ...]] | None:
        if self.pool.workers <= 1 or input_path is None or not stage.per_row:
            return None
        n_rows = pq.ParquetFile(input_path).metadata.num_rows
        if n_rows < self.min_rows:
            return None
        target = self.chunk_rows or min(MAX_CHUNK_ROWS, max(MIN_CHUNK_ROWS, n_rows // (8 * self.pool.workers)))
        parts = chunks(input_path, target)
        return parts if parts is not None and len(parts) > 1 else None


def _result(future: Future, stage: str) -> ChunkResult:
    try:
        return future.result()
    except BrokenProcessPool:
        raise WorkerDied(f"stage {stage!r}: a worker process died (killed, e.g. out of memory); nothing of the "
                         "stage was published — rerun, with fewer --workers if memory is short") from None


@contextlib.contextmanager
def local_executor(workers: int | None = None, **kw: Any) -> Iterator[Executor]:
    """The executor for ``workers`` local processes (None: ``$SFTFLOW_WORKERS``, else one per core).

    One worker is the serial executor; more are a :class:`PoolExecutor` whose pool is stopped (and
    its workers waited for) when the block ends.
    """
    n = resolve_workers(workers)
    if n <= 1:
        yield SerialExecutor()
        return
    with WorkerPool(n) as pool:
        yield PoolExecutor(pool, **kw)


__all__ = ["ChunkJob", "MIN_POOL_ROWS", "PoolExecutor", "WorkerDied", "WorkerPool", "chunks",
           "default_workers", "local_executor", "resolve_workers", "run_chunk"]
