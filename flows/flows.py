"""Prefect flows: ``curate``, ``sft``, ``evaluate`` and ``pipeline`` (all three, then the gate).

Every flow is :func:`flows.runner.run` with :class:`PrefectSteps`: each curation stage runs as its own
Prefect task (``00-ingest``, ``01-quality``, ``02-dedup``, ... through the runner's executor seam,
:class:`StageTasks`), then ``split-heldout``, ``sft``, ``regression-eval``, ``export`` and ``gate``, so
the flow run's timeline shows which stage took the time or failed. After each step it publishes a
markdown summary, table artifacts with stable keys (so the Prefect UI shows their history across
scheduled runs) and the HTML report. The wiring itself — which step follows which, the run folder, the gate —
is the runner's, the same as ``--local``'s. By default Prefect runs an ephemeral local server; with
``PREFECT_API_URL`` set, flows report to that server instead.
"""

# No ``from __future__ import annotations`` here: Prefect pickles a served flow's local modules by value,
# and a function pickled by value keeps only the globals its code uses — string annotations naming
# ``Recipe`` could then not be resolved when Prefect validates a flow's parameters.
import contextlib
import copy
from collections.abc import Callable
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.cache_policies import NO_CACHE

from curation.pipeline import CurateSummary
from curation.rundir import RunDir
from curation.runner import BATCH_SIZE, Executor, SerialExecutor
from curation.stage import Stage
from curation.stats import StageStats
from curation.workers import local_executor
from evals.verdict import Verdict
from flows import runner
from flows.artifacts import artifact_key, publish_export, publish_report, publish_training, publish_trend
from flows.recipe import Recipe, load_recipe
from flows.summary import curate_markdown, eval_markdown, funnel_rows, train_markdown, verdict_rows

_TASK = {"cache_policy": NO_CACHE, "persist_result": False}


def _recipe(recipe: str | Recipe, overrides: list[str] | None) -> Recipe:
    return recipe if isinstance(recipe, Recipe) else load_recipe(recipe, overrides)


class StageTasks:
    """The runner's executor seam for Prefect: every curation stage its own task run.

    Named after the stage's folder (``00-ingest``, ``03-dedup``), so the flow run's timeline shows which
    stage took the time or failed, each with its own state, duration, logs and retries. Inside the task the
    ``inner`` executor runs the stage (serially, or on shards: the Dask map of ``flows.scaleout``), so resume,
    fingerprints and the completion marker stay :func:`curation.runner.run_stage`'s — a stage whose result is
    cached never reaches the executor and shows no task run (the flow log says it was cached).
    """

    def __init__(self, inner: Executor | None = None, retries: int = 0, retry_delay_seconds: float = 10):
        self.inner = inner or SerialExecutor()
        self.retries = retries
        self.retry_delay_seconds = retry_delay_seconds

    def execute(self, stage: Stage, input_path: Path | None, out_dir: Path, *, batch_size: int = BATCH_SIZE,
                progress: Callable[[int], None] | None = None) -> StageStats:
        name = out_dir.name.replace("_", "-", 1)  # 03_dedup → 03-dedup
        # a retry starts from the stage as it was before the failed try (figures accumulate in the object)
        pristine = copy.deepcopy(stage) if self.retries else None
        tries: list[int] = []

        def run_stage_task() -> StageStats:
            current = stage if not tries else copy.deepcopy(pristine)
            tries.append(1)
            st = self.inner.execute(current, input_path, out_dir, batch_size=batch_size, progress=progress)
            where = f" on {st.shards} shards" if st.shards else ""
            added = f" (+{st.rows_added} added)" if st.rows_added else ""
            get_run_logger().info("%s%s: %s in%s → %s out; dropped %s; %.1f s", stage.name, where, st.rows_in,
                                  added, st.rows_out, st.dropped_by_reason or "none", st.seconds)
            return st

        t = task(run_stage_task, name=name, task_run_name=name, retries=self.retries,
                 retry_delay_seconds=self.retry_delay_seconds, description=f"curation stage {stage.name}", **_TASK)
        return t()


@task(name="split-heldout", task_run_name="split-heldout", **_TASK)
def split_task(recipe: Recipe, rd: RunDir) -> dict:
    return runner.step_split(recipe, rd)


def progress_lines(name: str, total: int | None) -> Callable[[int], None]:
    """A progress bar for a log: ``name: 12/24 (50%), 65 s`` each time another tenth is done (the task's log,
    in the terminal and the Prefect UI); the same factory shape as the CLI's bars."""
    import time

    log, started, seen, done = get_run_logger(), time.monotonic(), [0], [0]

    def advance(n: int) -> None:
        done[0] += n
        if not total:
            return
        tenth = min(10, done[0] * 10 // total)
        if tenth > seen[0]:
            seen[0] = tenth
            log.info("%s: %s/%s (%d%%), %.0f s", name, done[0], total, 100 * done[0] // total,
                     time.monotonic() - started)

    return advance


@task(name="sft", task_run_name="sft", **_TASK)
def train_task(recipe: Recipe, data: str, rd: RunDir, resume: bool) -> dict:
    bar = runner.step_bar(progress_lines("sft steps", recipe.train_config().max_steps))
    return runner.step_train(recipe, data, rd, resume=resume, progress=bar)


@task(name="regression-eval", task_run_name="regression-eval", **_TASK)
def eval_task(recipe: Recipe, rd: RunDir, heldout: str | None) -> Verdict:
    return runner.step_eval(recipe, rd, heldout, progress=runner.eval_bars(progress_lines))


@task(name="export", task_run_name="export", **_TASK)
def export_task(recipe: Recipe, rd: RunDir) -> str:
    return str(runner.step_export(recipe, rd))


@task(name="gate", task_run_name="gate", **_TASK)
def gate_task(recipe: Recipe, verdict: Verdict) -> str:
    return runner.gate(recipe, verdict)


class PrefectSteps(runner.Steps):
    """Each stage and step a Prefect task; after each step, its artifacts and the refreshed report.

    A flow run that Prefect retries (the UI's *Retry*, or ``retries`` on the deployment) resumes: the stages
    whose fingerprints match are not run again, so only what failed runs twice.
    """

    def __init__(self, executor: Executor | None = None, workers: int | None = None):
        self.executor = executor
        self.workers = workers
        self._report_linked = False

    def curate(self, recipe: Recipe, rd: RunDir, resume: bool) -> CurateSummary:
        log = get_run_logger()

        def on_stage(name: str, st: StageStats) -> None:
            if st.cached:
                log.info("%s: cached (same input and config as the run in %s): %s in → %s out", name, rd.root,
                         st.rows_in, st.rows_out)

        # each stage a task; inside it the given executor, or the local pool of ``workers`` processes
        pool = contextlib.nullcontext(self.executor) if self.executor is not None else local_executor(self.workers)
        with pool as inner:
            return runner.step_curate(recipe, rd, resume or _retried(), on_stage=on_stage,
                                      executor=StageTasks(inner))

    def gate(self, recipe: Recipe, verdict: Verdict) -> str:
        return gate_task(recipe, verdict)

    def split(self, recipe: Recipe, rd: RunDir) -> dict:
        return split_task(recipe, rd)

    def train(self, recipe: Recipe, data: str, rd: RunDir, resume: bool) -> dict:
        return train_task(recipe, data, rd, resume or _retried())

    def eval(self, recipe: Recipe, rd: RunDir, heldout: str | None) -> Verdict:
        return eval_task(recipe, rd, heldout)

    def export(self, recipe: Recipe, rd: RunDir):
        return export_task(recipe, rd)

    def after(self, step: str, recipe: Recipe, rd: RunDir, result: Any) -> None:
        if step == "export":
            publish_export(recipe, result, rd.root)
            return
        if step == "curate":
            sharded = getattr(self.executor, "sharded", None)  # a sharded executor names what it sharded
            note = f" (sharded: {', '.join(sharded)})" if sharded is not None else ""
            create_markdown_artifact(key=artifact_key(recipe, "curation-summary"),
                                     markdown=curate_markdown(result, rd.root),
                                     description=f"Curation of {recipe.name}: rows in → out, the funnel with drop "
                                                 f"reasons, the ledger{note}")
            create_table_artifact(key=artifact_key(recipe, "curation-funnel"), table=funnel_rows(result),
                                  description=f"Funnel of {recipe.name}: rows in / added / out and drops by reason, one "
                                              "row per stage")
        elif step == "train":
            create_markdown_artifact(key=artifact_key(recipe, "sft-summary"), markdown=train_markdown(result),
                                     description=f"SFT of {recipe.name}: method, steps, loss, throughput, memory")
            publish_training(recipe, rd.root)
        elif step == "eval":
            create_markdown_artifact(key=artifact_key(recipe, "eval-verdict"), markdown=eval_markdown(result),
                                     description=f"Did {recipe.name}'s tuned model get dumber? Verdict, per-task "
                                                 "before/after table, rule, recommendation")
            rows = [{k: (", ".join(f"{x:+.4f}" for x in v) if isinstance(v, list) else v) for k, v in row.items()}
                    for row in verdict_rows(result)]
            create_table_artifact(key=artifact_key(recipe, "eval-tasks"), table=rows,
                                  description="per-task before/after: accuracy + McNemar, gold-answer probability + "
                                              "sign-flip, Holm; the suite-level test last")
        if step != "split":
            # rebuilt after every step (a failed gate still has its report); linked once per flow run
            publish_report(recipe, rd.root, link=not self._report_linked)
            self._report_linked = True

    def finish(self, recipe: Recipe, rd: RunDir, out: dict[str, Any]) -> None:
        publish_trend(recipe, rd.root)

    def gate_outcome(self, recipe: Recipe, verdict: Verdict, outcome: str) -> None:
        if outcome == "warn":
            get_run_logger().warning("regression gate: verdict %s (recipe says warn)", verdict.verdict)


def _retried() -> bool:
    """True in a flow run Prefect is running again (a retry): it picks up where the failed run stopped."""
    from prefect.runtime import flow_run

    return (flow_run.run_count or 1) > 1


@flow(name="curate", log_prints=True)
def curate_flow(recipe: str | Recipe, run_dir: str | None = None, resume: bool = False,
                overrides: list[str] | None = None, workers: int | None = None) -> dict:
    """Ingest and curate the recipe's sources (per-row stages on ``workers`` processes, default one per
    core); publishes the funnel as artifacts."""
    return runner.run(_recipe(recipe, overrides), run_dir, resume=resume, steps=PrefectSteps(workers=workers),
                      upto="curate")


@flow(name="sft", log_prints=True)
def sft_flow(recipe: str | Recipe, run_dir: str, resume: bool = False, overrides: list[str] | None = None) -> dict:
    """Fine-tune on a curated run folder (its split/train.parquet, made here)."""
    return runner.run(_recipe(recipe, overrides), run_dir, resume=resume, steps=PrefectSteps(), start="split",
                      upto="train")


@flow(name="evaluate", log_prints=True)
def evaluate_flow(recipe: str | Recipe, run_dir: str, overrides: list[str] | None = None) -> Verdict:
    """Before/after regression eval of a trained run folder, then the gate (may fail the flow)."""
    r = _recipe(recipe, overrides)
    if r.eval is None:
        from curation.errors import ConfigError

        raise ConfigError(f"recipe {r.name!r} has no eval section: nothing to evaluate")
    return runner.run(r, run_dir, steps=PrefectSteps(), start="eval")["verdict"]


@flow(name="pipeline", log_prints=True)
def pipeline_flow(recipe: str | Recipe, run_dir: str | None = None, resume: bool = False,
                  overrides: list[str] | None = None, workers: int | None = None) -> dict[str, Any]:
    """curate → SFT → before/after eval → gate, in one run folder (curation's per-row stages on ``workers``
    processes, default one per core)."""
    return runner.run(_recipe(recipe, overrides), run_dir, resume=resume, steps=PrefectSteps(workers=workers))
