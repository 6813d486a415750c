"""The curation pipeline: ingest, then each stage in order, in one run folder, resumable.

Layout of ``run_dir``::

    00_ingest/   output.parquet  ledger.parquet  stats.json
    01_dedup/    ...
    02_quality/  ...
    output.parquet   the curated records (a copy of the last stage's output)
    ledger.parquet   every dropped row of every stage, with stage + reason (+ duplicate_of)
    summary.json     the funnel: rows in → after each stage → out, drops per stage and reason

Resume: every stage folder's ``stats.json`` holds a fingerprint of the stage's input content and
config (chained from the sources' bytes through every earlier stage). ``resume=True`` skips a
stage whose fingerprint matches, so a rerun after a crash picks up at the first unfinished stage,
and changing a later stage's threshold reruns only that stage onward. We use our own fingerprints
rather than Prefect's cache policies because the cores must resume the same way without Prefect
(a bare GPU box, the CLI), and because a fingerprint of the stage's *published files* is exactly
what makes a cached result trustworthy after a ``kill -9``.
"""

from __future__ import annotations

import hashlib
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
from pydantic import BaseModel, ValidationError

from curation.errors import ConfigError
from curation.ingest import IngestConfig, expand_sources, ingest
from curation.io import LEDGER_SCHEMA, ParquetWriter, atomic_path, read_json, write_json
from curation.registry import STAGES
from curation.stage import Stage, crash_point, published_files_match, run_stage


def stage_class(name: str) -> type[Stage]:
    return STAGES.resolve(name)


def build_stage(name: str, config: dict[str, Any] | BaseModel | None = None, where: str = "") -> Stage:
    """Instantiate a stage from its name and a config dict, with a readable error on bad keys."""
    cls = stage_class(name)
    if isinstance(config, BaseModel):
        return cls(config)
    try:
        cfg = cls.Config.model_validate(config or {})
    except ValidationError as e:
        raise ConfigError(format_validation_error(e, prefix=f"{where}{name}")) from None
    return cls(cfg)


def format_validation_error(err: ValidationError, prefix: str = "") -> str:
    lines = []
    for e in err.errors():
        loc = ".".join(str(p) for p in e["loc"])
        key = ".".join(p for p in (prefix, loc) if p)
        got = e.get("input")
        got_s = "" if isinstance(got, dict) else f" (got {got!r})"
        lines.append(f"{key}: {e['msg']}{got_s}")
    return "; ".join(lines)


def sources_fingerprint(sources: list[str], config: IngestConfig) -> str:
    """Hash of the sources' bytes (hub ids by name) and the ingest config."""
    h = hashlib.sha256(config.model_dump_json().encode())
    for path in sources:
        h.update(path.encode())
        if path.startswith("hf://"):
            continue
        with open(path, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                h.update(chunk)
    return h.hexdigest()[:16]


def _clean_partial(dir_: Path) -> None:
    """Remove temp files a killed run left behind (they never carry a final name)."""
    if dir_.is_dir():
        for tmp in dir_.glob(".*.tmp"):
            tmp.unlink(missing_ok=True)


def curate(
    sources: list[str],
    stages: list[tuple[str, dict[str, Any] | BaseModel]],
    run_dir: str | Path,
    *,
    ingest_config: IngestConfig | None = None,
    resume: bool = False,
    batch_size: int = 2048,
    on_stage: Callable[[str, dict[str, Any]], None] | None = None,
    progress_factory: Callable[[str, int | None], Callable[[int], None] | None] | None = None,
    stage_runner: Callable[..., dict[str, Any]] = run_stage,
) -> dict[str, Any]:
    """Run ingest and ``stages`` into ``run_dir``; returns the funnel summary (also summary.json).

    ``stages`` is a list of (name, config) pairs. ``on_stage(name, stats)`` is called after each
    stage (flows publish artifacts from it); ``progress_factory(name, total)`` may return a
    callback that receives row counts as batches finish. ``stage_runner`` runs one stage with
    :func:`run_stage`'s signature and result (``flows.scaleout`` passes one that shards it).
    """
    run_dir = Path(run_dir)
    ingest_config = ingest_config or IngestConfig()
    built = [(name, build_stage(name, cfg, where="stages.")) for name, cfg in stages]
    paths = expand_sources(sources)
    if not paths:
        raise ConfigError(f"no input files found in {sources}")

    ingest_dir = run_dir / "00_ingest"
    _clean_partial(run_dir)
    _clean_partial(ingest_dir)
    # summary.json marks a finished run: gone while this one is under way
    (run_dir / "summary.json").unlink(missing_ok=True)
    fp = sources_fingerprint(paths, ingest_config)
    stats_path = ingest_dir / "stats.json"
    prev = read_json(stats_path) if resume and stats_path.exists() else {}
    if prev.get("fingerprint") == fp and published_files_match(ingest_dir, prev):
        ing = prev
        ing["cached"] = True
    else:
        # the old marker goes before new files are published (a kill in between must not vouch for them)
        stats_path.unlink(missing_ok=True)
        prog = progress_factory("ingest", None) if progress_factory else None
        ing = ingest(paths, ingest_dir, ingest_config, progress=prog).stats
        crash_point("ingest", "published")
        ing["fingerprint"] = fp
        write_json(stats_path, ing)  # rewritten with the fingerprint: it is the completion marker
        crash_point("ingest", "done")
    if on_stage:
        on_stage("ingest", ing)
    all_stats = [ing]
    current = ingest_dir / "output.parquet"
    for i, (name, stage) in enumerate(built, start=1):
        out_dir = run_dir / f"{i:02d}_{name}"
        _clean_partial(out_dir)
        total = pq.ParquetFile(current).metadata.num_rows
        prog = progress_factory(name, total) if progress_factory else None
        st = stage_runner(
            stage, current, out_dir, batch_size=batch_size, input_fingerprint=fp, resume=resume, progress=prog
        )
        fp = st["fingerprint"]
        all_stats.append(st)
        if on_stage:
            on_stage(name, st)
        current = out_dir / "output.parquet"

    # Publish the final output and the merged ledger.
    with atomic_path(run_dir / "output.parquet") as tmp:
        shutil.copyfile(current, tmp)
    crash_point("final", "output")
    ledgers = [run_dir / "00_ingest" / "ledger.parquet"] + [
        run_dir / f"{i:02d}_{name}" / "ledger.parquet" for i, (name, _) in enumerate(built, start=1)
    ]
    n_ledger = 0
    with ParquetWriter(run_dir / "ledger.parquet", LEDGER_SCHEMA) as w:
        for lp in ledgers:
            for rb in pq.ParquetFile(lp).iter_batches(batch_size=batch_size):
                rows = rb.to_pylist()
                w.write_rows(rows)
                n_ledger += len(rows)
    crash_point("final", "ledger")
    summary = funnel(all_stats, n_ledger, pq.ParquetFile(run_dir / "output.parquet").metadata.num_rows)
    summary["run_dir"] = str(run_dir)
    summary["fingerprint"] = fp
    write_json(run_dir / "summary.json", summary)
    return summary


def funnel(all_stats: list[dict[str, Any]], n_ledger: int, n_out: int) -> dict[str, Any]:
    """The rows-in → rows-out funnel, checked against the ledger: nothing may be lost."""
    rows_in = all_stats[0]["rows_in"]
    added = sum(s.get("rows_added", 0) for s in all_stats)
    if rows_in + added != n_out + n_ledger:
        raise RuntimeError(
            f"ledger does not balance: {rows_in} rows in + {added} added != {n_out} out + {n_ledger} in the ledger"
        )
    return {
        "rows_in": rows_in,
        "rows_added": added,
        "rows_out": n_out,
        "rows_dropped": n_ledger,
        "balanced": True,
        "stages": [
            {
                "stage": s["stage"],
                "rows_in": s["rows_in"],
                "rows_added": s.get("rows_added", 0),
                "rows_out": s["rows_out"],
                "dropped_by_reason": s["dropped_by_reason"],
                "seconds": s.get("seconds"),
                "cached": bool(s.get("cached")),
            }
            for s in all_stats
        ],
        "stats": {s["stage"]: s for s in all_stats},
    }


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


def relpath(p: str | Path) -> str:
    try:
        return os.path.relpath(p)
    except ValueError:
        return str(p)
