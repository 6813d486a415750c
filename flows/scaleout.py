"""Sharded curation on Dask (``prefect-dask``): per-row stages run on shards in parallel.

The sharding itself is :class:`curation.runner.ShardedExecutor`'s (contiguous shards, outputs and
ledgers concatenated in shard order — the same rows in the same order as an unsharded run — stats
merged by each stage's merge rules; global stages run whole, in the flow's process). This module
only plugs the Dask cluster in as its ``map_shards``: every shard runs as one Prefect task
(``curate-shard``) on the flow's :class:`DaskTaskRunner`. Everything else — ingest, cache hits,
fingerprints, markers, the funnel and the ledger checks — is the one runner's and the one pipeline's.

The cluster: a local one by default (``SFTFLOW_DASK_WORKERS`` workers, threads, no extra
processes); ``SFTFLOW_DASK_ADDRESS=tcp://scheduler:8786`` uses a running one instead, whose
workers must see the run folder at the same path (shared storage) and have this package installed.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

from prefect import flow, task
from prefect.cache_policies import NO_CACHE
from prefect_dask import DaskTaskRunner

from curation.runner import ShardedExecutor, ShardJob, run_shard
from curation.stats import StageStats
from flows import runner
from flows.recipe import Recipe, load_recipe


def dask_task_runner() -> DaskTaskRunner:
    """The cluster shards run on: ``$SFTFLOW_DASK_ADDRESS``, else a local one."""
    address = os.environ.get("SFTFLOW_DASK_ADDRESS")
    if address:
        return DaskTaskRunner(address=address)
    workers = int(os.environ.get("SFTFLOW_DASK_WORKERS", "2"))
    # threads in this process: stages release the GIL in numpy/arrow, and nothing has to be pickled
    return DaskTaskRunner(cluster_kwargs={"n_workers": workers, "threads_per_worker": 1, "processes": False,
                                          "dashboard_address": None})


@task(name="curate-shard", cache_policy=NO_CACHE, persist_result=False)
def shard_task(job: ShardJob) -> StageStats:
    """One shard through one per-row stage (a fresh stage object per shard: no state is shared)."""
    return run_shard(job)


def dask_map(jobs: Sequence[ShardJob]) -> list[StageStats]:
    """``map_shards`` for :class:`ShardedExecutor`: each shard a task on the flow's Dask cluster."""
    futures = [shard_task.submit(j) for j in jobs]
    return [f.result() for f in futures]


# ------------------------------------------------------------------------------------------------
# the flow


@flow(name="curate-sharded", log_prints=True, task_runner=dask_task_runner())
def sharded_curate_flow(recipe: str | Recipe, run_dir: str | None = None, shards: int = 4, resume: bool = False,
                        overrides: list[str] | None = None) -> dict[str, Any]:
    """Curate with per-row stages (quality, score) mapped over ``shards`` shards on Dask.

    The result is the same as the ``curate`` flow's; the artifacts have the same keys.
    """
    from prefect import get_run_logger
    from prefect.artifacts import create_markdown_artifact, create_table_artifact

    from curation.pipeline import curate
    from flows.deploy import publish_report
    from flows.flows import artifact_key
    from flows.summary import curate_markdown, funnel_rows

    r = recipe if isinstance(recipe, Recipe) else load_recipe(recipe, overrides)
    rd = runner.new_run_dir(r, run_dir)
    log = get_run_logger()
    executor = ShardedExecutor(shards, dask_map)

    def on_stage(name: str, st: StageStats) -> None:
        where = f" on {st.shards} shards" if st.shards else ""
        log.info("%s%s: %s in → %s out; dropped %s", name, where, st.rows_in, st.rows_out, st.dropped_by_reason)

    summary = curate(r.source_paths(), r.stage_list(), rd / "curate", ingest_config=r.ingest, resume=resume,
                     on_stage=on_stage, executor=executor)
    create_markdown_artifact(key=artifact_key(r, "curation-summary"), markdown=curate_markdown(summary, rd),
                             description=f"Curation funnel of {r.name} (sharded: {', '.join(executor.sharded)})")
    create_table_artifact(key=artifact_key(r, "curation-funnel"), table=funnel_rows(summary),
                          description="rows in/out and drops per stage")
    runner.write_run_info(rd, r, curate=summary)
    publish_report(r, rd)
    return {"run_dir": str(rd), "curate": summary, "sharded_stages": executor.sharded}
