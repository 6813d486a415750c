"""Prefect flows: ``curate``, ``sft``, ``evaluate`` and ``pipeline`` (all three, then the gate).

Every flow is :func:`flows.runner.run` with :class:`PrefectSteps`: each step runs as a Prefect task
(``curate-stages``, ``split-heldout``, ``sft``, ``regression-eval``) and publishes a markdown summary,
table artifacts with stable keys (so the Prefect UI shows their history across scheduled runs) and
the HTML report after it. The wiring itself — which step follows which, the run folder, the gate —
is the runner's, the same as ``--local``'s. By default Prefect runs an ephemeral local server; with
``PREFECT_API_URL`` set, flows report to that server instead.
"""

# No ``from __future__ import annotations`` here: Prefect pickles a served flow's local modules by value,
# and a function pickled by value keeps only the globals its code uses — string annotations naming
# ``Recipe`` could then not be resolved when Prefect validates a flow's parameters.
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.cache_policies import NO_CACHE

from curation.pipeline import CurateSummary
from curation.rundir import RunDir
from curation.runner import Executor
from evals.verdict import Verdict
from flows import runner
from flows.artifacts import artifact_key, publish_export, publish_report, publish_training
from flows.recipe import Recipe, load_recipe
from flows.summary import curate_markdown, eval_markdown, funnel_rows, train_markdown, verdict_rows

_TASK = {"cache_policy": NO_CACHE, "persist_result": False}


def _recipe(recipe: str | Recipe, overrides: list[str] | None) -> Recipe:
    return recipe if isinstance(recipe, Recipe) else load_recipe(recipe, overrides)


@task(name="curate-stages", **_TASK)
def curate_task(recipe: Recipe, rd: RunDir, resume: bool, executor: Executor | None = None) -> CurateSummary:
    log = get_run_logger()

    def on_stage(name: str, st) -> None:
        where = f" on {st.shards} shards" if st.shards else ""
        log.info("%s%s: %s in → %s out; dropped %s", name, where, st.rows_in, st.rows_out, st.dropped_by_reason)

    return runner.step_curate(recipe, rd, resume=resume, on_stage=on_stage, executor=executor)


@task(name="split-heldout", **_TASK)
def split_task(recipe: Recipe, rd: RunDir) -> dict:
    return runner.step_split(recipe, rd)


@task(name="sft", **_TASK)
def train_task(recipe: Recipe, data: str, rd: RunDir, resume: bool) -> dict:
    return runner.step_train(recipe, data, rd, resume=resume)


@task(name="regression-eval", **_TASK)
def eval_task(recipe: Recipe, rd: RunDir, heldout: str | None) -> Verdict:
    return runner.step_eval(recipe, rd, heldout)


@task(name="export", **_TASK)
def export_task(recipe: Recipe, rd: RunDir) -> str:
    return str(runner.step_export(recipe, rd))


class PrefectSteps(runner.Steps):
    """Each step a Prefect task; after it, its artifacts and the refreshed report."""

    def __init__(self, executor: Executor | None = None):
        self.executor = executor

    def curate(self, recipe: Recipe, rd: RunDir, resume: bool) -> CurateSummary:
        return curate_task(recipe, rd, resume, self.executor)

    def split(self, recipe: Recipe, rd: RunDir) -> dict:
        return split_task(recipe, rd)

    def train(self, recipe: Recipe, data: str, rd: RunDir, resume: bool) -> dict:
        return train_task(recipe, data, rd, resume)

    def eval(self, recipe: Recipe, rd: RunDir, heldout: str | None) -> Verdict:
        return eval_task(recipe, rd, heldout)

    def export(self, recipe: Recipe, rd: RunDir):
        return export_task(recipe, rd)

    def after(self, step: str, recipe: Recipe, rd: RunDir, result: Any) -> None:
        if step == "export":
            publish_export(recipe, result)
            return
        if step == "curate":
            sharded = getattr(self.executor, "sharded", None)  # a sharded executor names what it sharded
            note = f" (sharded: {', '.join(sharded)})" if sharded is not None else ""
            create_markdown_artifact(key=artifact_key(recipe, "curation-summary"),
                                     markdown=curate_markdown(result, rd.root),
                                     description=f"Curation funnel of {recipe.name}{note}")
            create_table_artifact(key=artifact_key(recipe, "curation-funnel"), table=funnel_rows(result),
                                  description="rows in/out and drops per stage")
        elif step == "train":
            create_markdown_artifact(key=artifact_key(recipe, "sft-summary"), markdown=train_markdown(result),
                                     description=f"SFT of {recipe.name}")
            publish_training(recipe, rd.root)
        elif step == "eval":
            create_markdown_artifact(key=artifact_key(recipe, "eval-verdict"), markdown=eval_markdown(result),
                                     description=f"Before/after eval of {recipe.name}")
            rows = [{k: (", ".join(f"{x:+.4f}" for x in v) if isinstance(v, list) else v) for k, v in row.items()}
                    for row in verdict_rows(result)]
            create_table_artifact(key=artifact_key(recipe, "eval-tasks"), table=rows,
                                  description="per-task before/after: accuracy + McNemar, gold-answer probability + "
                                              "sign-flip, Holm; the suite-level test last")
        if step != "split":
            publish_report(recipe, rd.root)  # after eval too: a failed gate still has its report

    def gate_outcome(self, recipe: Recipe, verdict: Verdict, outcome: str) -> None:
        if outcome == "warn":
            get_run_logger().warning("regression gate: verdict %s (recipe says warn)", verdict.verdict)


@flow(name="curate", log_prints=True)
def curate_flow(recipe: str | Recipe, run_dir: str | None = None, resume: bool = False,
                overrides: list[str] | None = None) -> dict:
    """Ingest and curate the recipe's sources; publishes the funnel as artifacts."""
    return runner.run(_recipe(recipe, overrides), run_dir, resume=resume, steps=PrefectSteps(), upto="curate")


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
                  overrides: list[str] | None = None) -> dict[str, Any]:
    """curate → SFT → before/after eval → gate, in one run folder."""
    return runner.run(_recipe(recipe, overrides), run_dir, resume=resume, steps=PrefectSteps())
