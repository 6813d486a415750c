"""Prefect flows: ``curate``, ``sft``, ``evaluate`` and ``pipeline`` (all three, then the gate).

Tasks wrap the plain steps in :mod:`flows.runner`; each flow publishes a markdown summary and
table artifacts with stable keys (so the Prefect UI shows their history across scheduled runs).
By default Prefect runs an ephemeral local server; with ``PREFECT_API_URL`` set, flows report to
that server instead.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.cache_policies import NO_CACHE

from evals.verdict import Verdict
from flows import runner
from flows.deploy import publish_report, publish_training
from flows.recipe import Recipe, load_recipe
from flows.summary import curate_markdown, eval_markdown, funnel_rows, train_markdown, verdict_rows

_TASK = {"cache_policy": NO_CACHE, "persist_result": False}


def artifact_key(recipe: Recipe, what: str) -> str:
    slug = re.sub(r"[^a-z0-9-]+", "-", recipe.name.lower()).strip("-") or "run"
    return f"{slug}-{what}"


def _recipe(recipe: str | Recipe, overrides: list[str] | None) -> Recipe:
    return recipe if isinstance(recipe, Recipe) else load_recipe(recipe, overrides)


@task(name="curate-stages", **_TASK)
def curate_task(recipe: Recipe, run_dir: Path, resume: bool) -> dict:
    log = get_run_logger()

    def on_stage(name: str, st) -> None:
        log.info("%s: %s in → %s out; dropped %s", name, st.rows_in, st.rows_out, st.dropped_by_reason)

    return runner.step_curate(recipe, run_dir, resume=resume, on_stage=on_stage)


@task(name="split-heldout", **_TASK)
def split_task(recipe: Recipe, run_dir: Path) -> dict:
    return runner.step_split(recipe, run_dir)


@task(name="sft", **_TASK)
def train_task(recipe: Recipe, data: str, run_dir: Path, resume: bool) -> dict:
    return runner.step_train(recipe, data, run_dir, resume=resume)


@task(name="regression-eval", **_TASK)
def eval_task(recipe: Recipe, run_dir: Path, heldout: str | None) -> Verdict:
    return runner.step_eval(recipe, run_dir, heldout)


@flow(name="curate", log_prints=True)
def curate_flow(recipe: str | Recipe, run_dir: str | None = None, resume: bool = False,
                overrides: list[str] | None = None) -> dict:
    """Ingest and curate the recipe's sources; publishes the funnel as artifacts."""
    r = _recipe(recipe, overrides)
    rd = runner.new_run_dir(r, run_dir)
    summary = curate_task(r, rd, resume)
    create_markdown_artifact(key=artifact_key(r, "curation-summary"), markdown=curate_markdown(summary, rd),
                             description=f"Curation funnel of {r.name}")
    create_table_artifact(key=artifact_key(r, "curation-funnel"), table=funnel_rows(summary),
                          description="rows in/out and drops per stage")
    runner.write_run_info(rd, r, curate=summary)
    publish_report(r, rd)
    return {"run_dir": str(rd), "curate": summary}


@flow(name="sft", log_prints=True)
def sft_flow(recipe: str | Recipe, run_dir: str, resume: bool = False, overrides: list[str] | None = None) -> dict:
    """Fine-tune on a curated run folder (its split/train.parquet, made here if missing)."""
    r = _recipe(recipe, overrides)
    rd = Path(run_dir)
    split = split_task(r, rd)
    summary = train_task(r, split["train"], rd, resume)
    create_markdown_artifact(key=artifact_key(r, "sft-summary"), markdown=train_markdown(summary),
                             description=f"SFT of {r.name}")
    runner.write_run_info(rd, r, split=split, train=summary)
    publish_training(r, rd)
    publish_report(r, rd)
    return {"run_dir": str(rd), "split": split, "train": summary}


@flow(name="evaluate", log_prints=True)
def evaluate_flow(recipe: str | Recipe, run_dir: str, overrides: list[str] | None = None) -> Verdict:
    """Before/after regression eval of a trained run folder, then the gate (may fail the flow)."""
    r = _recipe(recipe, overrides)
    rd = Path(run_dir)
    held = rd / "split" / "heldout.parquet"
    verdict = eval_task(r, rd, str(held) if held.exists() else None)
    create_markdown_artifact(key=artifact_key(r, "eval-verdict"), markdown=eval_markdown(verdict),
                             description=f"Before/after eval of {r.name}")
    rows = [{k: (", ".join(f"{x:+.4f}" for x in v) if isinstance(v, list) else v) for k, v in row.items()}
            for row in verdict_rows(verdict)]
    create_table_artifact(key=artifact_key(r, "eval-tasks"), table=rows,
                          description="per-task before/after: accuracy + McNemar, gold-answer probability + "
                                      "sign-flip, Holm; the suite-level test last")
    runner.write_run_info(rd, r, verdict=verdict.verdict)
    publish_report(r, rd)  # before the gate: a failed gate still has its report
    outcome = runner.gate(r, verdict)  # raises GateFailed → the flow run fails
    if outcome == "warn":
        get_run_logger().warning("regression gate: verdict %s (recipe says warn)", verdict.verdict)
    return verdict


@flow(name="pipeline", log_prints=True)
def pipeline_flow(recipe: str | Recipe, run_dir: str | None = None, resume: bool = False,
                  overrides: list[str] | None = None) -> dict[str, Any]:
    """curate → SFT → before/after eval → gate, in one run folder."""
    r = _recipe(recipe, overrides)
    cur = curate_flow(r, run_dir, resume)
    rd = cur["run_dir"]
    out: dict[str, Any] = {"run_dir": rd, "curate": cur["curate"]}
    if r.train is not None:
        out.update(sft_flow(r, rd, resume))
        if r.eval is not None:
            out["verdict"] = evaluate_flow(r, rd)
    return out
