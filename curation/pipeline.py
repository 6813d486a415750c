"""The curation pipeline: ingest, then each stage in order, into one curate folder, resumable.

Layout (:class:`curation.rundir.CurateDir`)::

    00_ingest/   output.parquet  ledger.parquet  stats.json
    01_dedup/    ...
    02_quality/  ...
    output.parquet   the curated records (the last stage's output)
    ledger.parquet   every dropped row of every stage, with stage + reason (+ duplicate_of)
    summary.json     the funnel: rows in → after each stage → out, drops per stage and reason

Every step runs through :func:`curation.runner.run_stage`, so resume works the same for all of
them: each step's ``stats.json`` holds a fingerprint of its input content and config (chained from
the sources' bytes through every earlier step); ``resume=True`` skips a step whose fingerprint
matches, so a rerun after a crash picks up at the first unfinished step, and changing a later
stage's threshold reruns only that stage onward. We use our own fingerprints rather than Prefect's
cache policies because the cores must resume the same way without Prefect (a bare GPU box, the
CLI), and because a fingerprint of the stage's *published files* is exactly what makes a cached
result trustworthy after a ``kill -9``.

The input is either sources to ingest (any format ingest reads) or, with ``records=``, a records
parquet that is already curated (the output of an earlier stage command): then there is no ingest
step and the numbering starts at ``01``.
"""

from __future__ import annotations

import hashlib
import os
import shutil
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
from pydantic import BaseModel, Field

from curation.errors import ConfigError
from curation.ingest import IngestConfig, IngestStage, expand_sources
from curation.ingest.readers import parquet_footer_bytes
from curation.io import (
    LEDGER_SCHEMA,
    ParquetWriter,
    atomic_path,
    count_rows,
    folder_lock,
    parquet_schema,
    write_json,
)
from curation.rundir import CurateDir
from curation.runner import BATCH_SIZE, Executor, clean_partial, concat_parquet, run_stage
from curation.stage import Stage, build_stage, crash_point, files_digest
from curation.stats import StageStats

#: columns that make a parquet file a records file (a curation output), not raw data to ingest
RECORD_COLUMNS = frozenset({"id", "messages", "source", "lang"})


class FunnelStage(BaseModel):
    """One step of the funnel (a row of the summary table)."""

    stage: str
    rows_in: int
    rows_added: int = 0
    rows_out: int
    dropped_by_reason: dict[str, int] = Field(default_factory=dict)
    seconds: float | None = None
    cached: bool = False


class CurateSummary(BaseModel):
    """``summary.json``: the funnel of a curate folder, checked against its ledger."""

    rows_in: int
    rows_added: int = 0
    rows_out: int
    rows_dropped: int
    balanced: bool = True
    stages: list[FunnelStage] = Field(default_factory=list)
    run_dir: str = ""
    fingerprint: str = ""


def is_records_file(path: str | Path) -> bool:
    """True for a parquet file with the record schema (a curation output, read as it is)."""
    p = Path(path)
    if p.suffix != ".parquet" or not p.is_file():
        return False
    footer = parquet_footer_bytes(p)
    if footer is None or footer > IngestConfig().max_parquet_footer_bytes:
        return False  # not parquet, or not one of ours: ingest reads it and says what is wrong
    try:
        return RECORD_COLUMNS <= set(parquet_schema(p).names)
    except (OSError, pa.ArrowException):
        return False


def curate(
    sources: Sequence[str],
    stages: Sequence[tuple[str, dict[str, Any] | BaseModel]],
    run_dir: str | Path,
    *,
    ingest_config: IngestConfig | None = None,
    records: str | Path | None = None,
    resume: bool = False,
    batch_size: int = BATCH_SIZE,
    on_stage: Callable[[str, StageStats], None] | None = None,
    progress_factory: Callable[[str, int | None], Callable[[int], None] | None] | None = None,
    executor: Executor | None = None,
) -> CurateSummary:
    """Run ingest (of ``sources``) or start from ``records``, then ``stages``, into ``run_dir``.

    ``stages`` is a list of (name, config) pairs. ``on_stage(name, stats)`` is called after each
    step (flows publish artifacts from it); ``progress_factory(name, total)`` may return a callback
    that receives row counts as batches finish; ``executor`` runs each step (default: serially in
    this process; ``flows.scaleout`` passes one that shards per-row stages over Dask). Returns the
    funnel (also ``summary.json``, written last).
    """
    folder = CurateDir(Path(run_dir))
    built: list[Stage] = [build_stage(name, cfg, where="stages.") for name, cfg in stages]
    if records is not None:
        current: Path | None = Path(records)
        fp = files_digest(str(current))
        first = 1
    else:
        if not expand_sources(sources):
            raise ConfigError(f"no input files found in {list(sources)}")
        built.insert(0, IngestStage(ingest_config or IngestConfig(), sources))
        current, fp, first = None, "", 0

    with folder_lock(folder.root):
        return _curate(folder, built, current, fp, first, records, resume, batch_size, on_stage, progress_factory,
                       executor)


def _curate(folder: CurateDir, built: list[Stage], current: Path | None, fp: str, first: int,
            records: str | Path | None, resume: bool, batch_size: int, on_stage, progress_factory,
            executor: Executor | None) -> CurateSummary:
    clean_partial(folder.root)
    # summary.json marks a finished run: gone while this one is under way
    folder.summary.unlink(missing_ok=True)
    all_stats: list[StageStats] = []
    for i, stage in enumerate(built, start=first):
        out_dir = folder.stage(i, stage.name)
        total = count_rows(current) if current is not None else None
        prog = progress_factory(stage.name, total) if progress_factory else None
        st = run_stage(stage, current, out_dir, batch_size=batch_size, input_fingerprint=fp, resume=resume,
                       progress=prog, executor=executor)
        fp = st.fingerprint
        all_stats.append(st)
        if on_stage:
            on_stage(stage.name, st)
        current = out_dir / "output.parquet"
    assert current is not None, "a curate run has at least one step"

    _publish_copy(current, folder.output)
    crash_point("final", "output")
    # every step's ledger, in step order, into one
    n_ledger = concat_parquet(
        [folder.stage(i, s.name) / "ledger.parquet" for i, s in enumerate(built, start=first)], folder.ledger,
        LEDGER_SCHEMA, batch_size,
    )
    crash_point("final", "ledger")
    rows_in = all_stats[0].rows_in if records is None else count_rows(records)
    summary = funnel(all_stats, rows_in, n_ledger, count_rows(folder.output))
    summary.run_dir = str(folder.root)
    summary.fingerprint = fp
    write_json(folder.summary, summary.model_dump(mode="json"))
    return summary


def _publish_copy(src: Path, dst: Path) -> None:
    """``dst`` becomes a copy of ``src``, atomically; a hard link when the file system allows (no second copy
    on disk: stage files are only ever replaced by rename, never written in place)."""
    with atomic_path(dst) as tmp:
        tmp.unlink()
        try:
            os.link(src, tmp)
        except OSError:
            shutil.copyfile(src, tmp)


def funnel(all_stats: Sequence[StageStats], rows_in: int, n_ledger: int, n_out: int) -> CurateSummary:
    """The rows-in → rows-out funnel, checked against the ledger: nothing may be lost."""
    added = sum(s.rows_added for s in all_stats)
    if rows_in + added != n_out + n_ledger:
        raise RuntimeError(
            f"ledger does not balance: {rows_in} rows in + {added} added != {n_out} out + {n_ledger} in the ledger"
        )
    return CurateSummary(
        rows_in=rows_in,
        rows_added=added,
        rows_out=n_out,
        rows_dropped=n_ledger,
        balanced=True,
        stages=[
            FunnelStage(stage=s.stage, rows_in=s.rows_in, rows_added=s.rows_added, rows_out=s.rows_out,
                        dropped_by_reason=s.dropped_by_reason, seconds=s.seconds, cached=s.cached)
            for s in all_stats
        ],
    )


def split_heldout(
    path: str | Path, out_dir: str | Path, fraction: float = 0.05, max_rows: int = 64, seed: int = 0
) -> tuple[Path, Path, int]:
    """Split curated records into train / held-out by a hash of the id (stable, order-free).

    Only task rows are held out (general replay rows all go to training); the held-out split
    measures what fine-tuning gained on the target task.
    """
    out_dir = Path(out_dir)
    schema = pq.read_schema(path)
    train_p, held_p = out_dir / "train.parquet", out_dir / "heldout.parquet"
    n_held = 0
    with ParquetWriter(train_p, schema) as tw, ParquetWriter(held_p, schema) as hw:
        for rb in pq.ParquetFile(path).iter_batches(batch_size=2048):
            train_rows, held_rows = [], []
            for row in rb.to_pylist():
                h = int.from_bytes(hashlib.sha256(f"{seed}:{row['id']}".encode()).digest()[:8], "big") / 2**64
                is_task = row.get("mix_source", "task") != "general" and row.get("messages") is not None
                if is_task and h < fraction and n_held < max_rows:
                    held_rows.append(row)
                    n_held += 1
                else:
                    train_rows.append(row)
            tw.write_rows(train_rows)
            hw.write_rows(held_rows)
    return train_p, held_p, n_held


def records_input(
    sources: Sequence[str], folder: str | Path, ingest_config: IngestConfig | None = None, *, resume: bool = True,
    progress_factory: Callable[[str, int | None], Callable[[int], None] | None] | None = None,
) -> Path:
    """A records parquet for ``sources``: the file itself when it already is one, else their ingest.

    How every command that reads data (train, eval's target data, mix) accepts anything ingest
    reads. The ingest goes to ``folder`` (a curate folder with no stages: its ``output.parquet``
    and ``ledger.parquet``), and is reused when the sources have not changed.
    """
    if len(sources) == 1 and is_records_file(sources[0]):
        return Path(sources[0])
    summary = curate(sources, [], folder, ingest_config=ingest_config, resume=resume,
                     progress_factory=progress_factory)
    if summary.rows_out == 0:
        raise ConfigError(f"{', '.join(map(str, sources))}: no usable rows ({summary.rows_in} read; "
                          f"reasons in {CurateDir(Path(folder)).ledger})")
    return CurateDir(Path(folder)).output


def relpath(p: str | Path) -> str:
    try:
        return os.path.relpath(p)
    except ValueError:
        return str(p)


__all__ = ["CurateSummary", "FunnelStage", "curate", "funnel", "is_records_file", "records_input",
           "relpath", "split_heldout"]
