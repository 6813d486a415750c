"""Sharded curation on Dask (``prefect-dask``): per-row stages run on shards in parallel.

A stage is *per-row* when its decision on a row depends on that row alone: no first pass over all
rows (``needs_fit``) and no rows brought in from outside (``added``) — quality and score are; dedup,
select and mix are *global*. For a per-row stage the input is cut into contiguous shards (input
order kept), every shard runs as one Prefect task on the Dask cluster, and the shard outputs and
ledgers are concatenated in shard order: the stage's ``output.parquet`` and ``ledger.parquet`` are
then the same rows, in the same order, as an unsharded run's (tested). Global stages run on the
merged data in the flow's process. Everything else (ingest, resume fingerprints, the funnel,
ledger checks) is :func:`curation.pipeline.curate`'s, through its ``stage_runner`` hook.

Stage figures (``stats.json`` ``extra``) are merged generically: counts and histograms add up, means
are weighted by rows, example lists are concatenated up to the stage's per-reason limit.

The cluster: a local one by default (``SFTFLOW_DASK_WORKERS`` workers, threads, no extra
processes); ``SFTFLOW_DASK_ADDRESS=tcp://scheduler:8786`` uses a running one instead, whose
workers must see the run folder at the same path (shared storage) and have this package installed.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.cache_policies import NO_CACHE
from prefect_dask import DaskTaskRunner

from curation.io import LEDGER_SCHEMA, ParquetWriter, read_json, write_json
from curation.pipeline import build_stage, curate
from curation.stage import Stage, run_stage
from flows import runner
from flows.deploy import publish_report
from flows.recipe import Recipe, load_recipe
from flows.summary import curate_markdown, funnel_rows

#: example lists in merged stage figures are cut to this when the stage names no limit
DEFAULT_EXAMPLES = 5


def is_per_row(stage: Stage) -> bool:
    """True when the stage can run on shards: no global first pass, no rows from outside."""
    return not stage.needs_fit and type(stage).added is Stage.added


def dask_task_runner() -> DaskTaskRunner:
    """The cluster shards run on: ``$SFTFLOW_DASK_ADDRESS``, else a local one."""
    address = os.environ.get("SFTFLOW_DASK_ADDRESS")
    if address:
        return DaskTaskRunner(address=address)
    workers = int(os.environ.get("SFTFLOW_DASK_WORKERS", "2"))
    # threads in this process: stages release the GIL in numpy/arrow, and nothing has to be pickled
    return DaskTaskRunner(cluster_kwargs={"n_workers": workers, "threads_per_worker": 1, "processes": False,
                                          "dashboard_address": None})


# ------------------------------------------------------------------------------------------------
# shards


def split_shards(input_path: Path, folder: Path, shards: int, batch_size: int = 2048) -> list[Path]:
    """Cut a records parquet into ``shards`` contiguous parts (at least one row each), input order kept."""
    pf = pq.ParquetFile(input_path)
    n = pf.metadata.num_rows
    shards = max(1, min(shards, n))
    per = -(-n // shards)
    paths = [folder / f"shard-{i:03d}" / "input.parquet" for i in range(shards)]
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


@task(name="curate-shard", cache_policy=NO_CACHE, persist_result=False)
def run_shard(stage_name: str, config: dict[str, Any], shard_input: str, batch_size: int) -> dict[str, Any]:
    """One shard through one per-row stage (a fresh stage object per shard: no state is shared)."""
    stage = build_stage(stage_name, config)
    return run_stage(stage, shard_input, Path(shard_input).parent, batch_size=batch_size)


def _concat(paths: list[Path], out: Path, schema, batch_size: int) -> int:
    n = 0
    with ParquetWriter(out, schema) as w:
        for p in paths:
            for rb in pq.ParquetFile(p).iter_batches(batch_size=batch_size):
                rows = rb.to_pylist()
                w.write_rows(rows)
                n += len(rows)
    return n


def merge_figures(parts: list[Any], weights: list[int], examples_cap: int = DEFAULT_EXAMPLES) -> Any:
    """Merge the ``extra`` figures of shards: counts add, means are row-weighted, examples concatenate."""
    present = [(p, w) for p, w in zip(parts, weights, strict=True) if p is not None]
    if not present:
        return None
    values = [p for p, _ in present]
    first = values[0]
    if all(isinstance(v, dict) for v in values):
        keys = list(dict.fromkeys(k for v in values for k in v))
        merged = {}
        for k in keys:
            if k == "edges":  # histogram bin edges are the same in every shard
                merged[k] = next(v[k] for v in values if k in v)
                continue
            sub = [v.get(k) for v, _ in present]
            merged[k] = merge_figures(sub, [w for _, w in present], examples_cap)
        return merged
    if all(isinstance(v, bool) for v in values) or all(isinstance(v, str) for v in values):
        return first
    if all(isinstance(v, int) and not isinstance(v, bool) for v in values):
        return sum(values)
    if all(isinstance(v, int | float) and not isinstance(v, bool) for v in values):
        if all(v == first for v in values):
            return first
        total = sum(w for _, w in present)
        mean = sum(float(v) * w for v, w in present) / total if total else float(first)
        return round(mean, 4)
    if all(isinstance(v, list) for v in values):
        if all(all(isinstance(x, int) and not isinstance(x, bool) for x in v) for v in values) and \
                len({len(v) for v in values}) == 1:
            return [sum(xs) for xs in zip(*values, strict=True)]  # a histogram
        if all(v == first for v in values):
            return first
        return [x for v in values for x in v][:examples_cap]
    return first


class ShardedStageRunner:
    """A ``stage_runner`` for :func:`curation.pipeline.curate`: per-row stages on Dask shards."""

    def __init__(self, shards: int):
        self.shards = shards
        self.sharded: list[str] = []

    def __call__(self, stage: Stage, input_path: str | Path, out_dir: str | Path, *, batch_size: int = 2048,
                 input_fingerprint: str = "", resume: bool = False, progress: Any = None) -> dict[str, Any]:
        n_rows = pq.ParquetFile(input_path).metadata.num_rows
        if self.shards <= 1 or n_rows < 2 or not is_per_row(stage):
            return run_stage(stage, input_path, out_dir, batch_size=batch_size, input_fingerprint=input_fingerprint,
                             resume=resume, progress=progress)
        out_dir = Path(out_dir)
        # the same fingerprint run_stage gives this stage, so resume works across sharded/unsharded runs
        fp = hashlib.sha256(f"{input_fingerprint}|{stage.fingerprint()}".encode()).hexdigest()[:16]
        stats_path = out_dir / "stats.json"
        if resume and stats_path.exists():
            prev = read_json(stats_path)
            if prev.get("fingerprint") == fp:
                prev["cached"] = True
                return prev
        stats_path.unlink(missing_ok=True)
        started = time.perf_counter()
        shard_root = out_dir.parent / "shards" / out_dir.name
        shutil.rmtree(shard_root, ignore_errors=True)
        inputs = split_shards(Path(input_path), shard_root, self.shards, batch_size)
        config = stage.config.model_dump(mode="json")
        futures = [run_shard.submit(stage.name, config, str(p), batch_size) for p in inputs]
        parts = [f.result() for f in futures]
        folders = [p.parent for p in inputs]
        schema = pq.read_schema(folders[0] / "output.parquet")
        n_out = _concat([f / "output.parquet" for f in folders], out_dir / "output.parquet", schema, batch_size)
        _concat([f / "ledger.parquet" for f in folders], out_dir / "ledger.parquet", LEDGER_SCHEMA, batch_size)
        reasons: Counter[str] = Counter()
        for p in parts:
            reasons.update(p["dropped_by_reason"])
        n_in = sum(p["rows_in"] for p in parts)
        seconds = time.perf_counter() - started
        cap = getattr(stage.config, "examples_per_reason", None) or DEFAULT_EXAMPLES
        stats = {
            "stage": stage.name,
            "rows_in": n_in,
            "rows_added": 0,
            "rows_out": n_out,
            "rows_dropped": sum(reasons.values()),
            "dropped_by_reason": dict(sorted(reasons.items())),
            "seconds": round(seconds, 3),
            "rows_per_s": round(n_in / seconds, 1) if seconds > 0 else None,
            "extra": merge_figures([p.get("extra") for p in parts], [p["rows_in"] for p in parts], cap),
            "shards": len(parts),
            "fingerprint": fp,
        }
        if n_in != n_rows or n_in != n_out + stats["rows_dropped"]:
            raise RuntimeError(f"stage {stage.name!r} on {len(parts)} shards: {n_rows} rows in, {n_in} processed, "
                               f"{n_out} kept + {stats['rows_dropped']} dropped")
        write_json(stats_path, stats)  # last: the completion marker, as in run_stage
        shutil.rmtree(shard_root, ignore_errors=True)
        if progress is not None:
            progress(n_in)
        self.sharded.append(stage.name)
        return stats


# ------------------------------------------------------------------------------------------------
# the flow


@flow(name="curate-sharded", log_prints=True, task_runner=dask_task_runner())
def sharded_curate_flow(recipe: str | Recipe, run_dir: str | None = None, shards: int = 4, resume: bool = False,
                        overrides: list[str] | None = None) -> dict[str, Any]:
    """Curate with per-row stages (quality, score) mapped over ``shards`` shards on Dask.

    The result is the same as the ``curate`` flow's; the artifacts have the same keys.
    """
    from flows.flows import artifact_key

    r = recipe if isinstance(recipe, Recipe) else load_recipe(recipe, overrides)
    rd = runner.new_run_dir(r, run_dir)
    log = get_run_logger()
    stage_runner = ShardedStageRunner(shards)

    def on_stage(name: str, st: dict) -> None:
        where = f" on {st['shards']} shards" if st.get("shards") else ""
        log.info("%s%s: %s in → %s out; dropped %s", name, where, st["rows_in"], st["rows_out"],
                 st["dropped_by_reason"])

    summary = curate(r.source_paths(), r.stage_list(), rd / "curate", ingest_config=r.ingest, resume=resume,
                     on_stage=on_stage, stage_runner=stage_runner)
    create_markdown_artifact(key=artifact_key(r, "curation-summary"), markdown=curate_markdown(summary, rd),
                             description=f"Curation funnel of {r.name} (sharded: {', '.join(stage_runner.sharded)})")
    create_table_artifact(key=artifact_key(r, "curation-funnel"), table=funnel_rows(summary),
                          description="rows in/out and drops per stage")
    runner.write_run_info(rd, r, curate=summary)
    publish_report(r, rd)
    return {"run_dir": str(rd), "curate": summary, "sharded_stages": stage_runner.sharded}
