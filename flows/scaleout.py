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
from flows.flows import PrefectSteps
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

    The result is the same as the ``curate`` flow's (it is the same wiring, with a sharded executor);
    the artifacts have the same keys.
    """
    r = recipe if isinstance(recipe, Recipe) else load_recipe(recipe, overrides)
    executor = ShardedExecutor(shards, dask_map)
    out = runner.run(r, run_dir, resume=resume, steps=PrefectSteps(executor), upto="curate")
    return {**out, "sharded_stages": executor.sharded}
