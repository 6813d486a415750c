"""Prefect operations: report artifacts, the flows deployments expose, and ``sftflow serve``.

Deployments (``prefect.yaml``) need flows whose parameters are plain JSON a person can type in the
UI or after ``prefect deployment run -p``: :func:`curate_sources_flow` (recipe + sources) and
:func:`sft_eval_flow` (run folder + method / rank / precision). Both turn their parameters into
recipe overrides (``train.method=lora``) and call the flows of :mod:`flows.flows`, which stay the
one place the steps are wired.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger
from prefect.artifacts import create_link_artifact, create_table_artifact

from flows.recipe import Recipe

#: rows of train_log.jsonl published as a table artifact (evenly thinned beyond this)
TRAIN_LOG_ROWS = 200
#: runs of the trend published as a table artifact (newest first)
TREND_ROWS = 50


def _key(recipe: Recipe, what: str) -> str:
    from flows.flows import artifact_key

    return artifact_key(recipe, what)


def publish_report(recipe: Recipe, run_dir: str | Path) -> Path | None:
    """Build RUN/report.html, then link it (and the recipe's trend table) from the Prefect UI.

    A report problem is logged, never fails the flow: the run's data is what matters.
    """
    from flows.report import build_report, history_path, read_history

    log = get_run_logger()
    try:
        path = build_report(run_dir).resolve()
    except Exception as e:  # noqa: BLE001 - a broken report must not fail a finished run
        log.warning("report of %s not built: %s: %s", run_dir, type(e).__name__, e)
        return None
    create_link_artifact(
        key=_key(recipe, "report"), link=path.as_uri(), link_text=f"{recipe.name}: HTML report",
        description=f"Funnel, dropped rows, scores, duplicates, mixture, training and eval of {path.parent} "
                    f"(`sftflow report {path.parent} --serve` serves it over http).",
    )
    history = read_history(history_path(run_dir, recipe.name))
    if history:
        cols = ("time", "run", "rows_in", "rows_out", "duplicate_rate", "mean_quality", "task_type_entropy",
                "final_loss", "verdict")
        create_table_artifact(
            key=_key(recipe, "trend"), table=[{c: h.get(c) for c in cols} for h in reversed(history[-TREND_ROWS:])],
            description=f"Key figures of the last runs of {recipe.name}, newest first",
        )
    log.info("report: %s", path)
    return path


def publish_training(recipe: Recipe, run_dir: str | Path) -> None:
    """The training curve (train_log.jsonl) as a table artifact."""
    from flows.report import read_train_log

    rows = read_train_log(Path(run_dir) / "train" / "train_log.jsonl")
    if not rows:
        return
    step = max(1, -(-len(rows) // TRAIN_LOG_ROWS))
    thinned = rows[::step] if rows[-1] in rows[::step] else rows[::step] + [rows[-1]]
    cols = ("step", "loss", "lr", "grad_norm", "tokens_per_s", "eval_loss")
    create_table_artifact(key=_key(recipe, "sft-log"), table=[{c: r.get(c) for c in cols} for r in thinned],
                          description=f"SFT training log of {recipe.name} (step, loss, lr, grad norm, tokens/s)")


# ------------------------------------------------------------------------------------------------
# flows for deployments


def train_overrides(method: str | None = None, rank: int | None = None, precision: str | None = None,
                    max_steps: int | None = None) -> list[str]:
    """Named SFT parameters as recipe overrides (``rank`` is the LoRA rank)."""
    named = {"train.method": method, "train.lora_r": rank, "train.precision": precision,
             "train.max_steps": max_steps}
    return [f"{k}={v}" for k, v in named.items() if v is not None]


def recipe_of_run(run_dir: str | Path, overrides: list[str] | None = None) -> Recipe:
    """The recipe a run folder was made with (its run.json), with ``overrides`` applied."""
    from curation.errors import ConfigError, format_validation_error
    from curation.io import read_json
    from flows.recipe import apply_overrides, parse_overrides

    info_path = Path(run_dir) / "run.json"
    if not info_path.exists():
        raise ConfigError(f"{info_path}: not found; pass the recipe explicitly (recipe=...)")
    data = apply_overrides(read_json(info_path)["recipe"], parse_overrides(overrides or []))
    try:
        recipe = Recipe.model_validate(data)
    except Exception as e:  # pydantic ValidationError
        raise ConfigError(f"{info_path}: {format_validation_error(e) if hasattr(e, 'errors') else e}") from None
    recipe.validate_all()
    return recipe


@flow(name="curate-sources", log_prints=True)
def curate_sources_flow(recipe: str, sources: list[str] | None = None, run_dir: str | None = None,
                        overrides: list[str] | None = None) -> dict[str, Any]:
    """Curate a recipe, optionally on other source files (relative paths: against the recipe's folder)."""
    from flows.flows import curate_flow

    ovs = list(overrides or [])
    if sources:
        ovs.append("sources=" + json.dumps(list(sources)))
    return curate_flow(recipe, run_dir, False, ovs)


@flow(name="sft-eval", log_prints=True)
def sft_eval_flow(run_dir: str, recipe: str | None = None, method: str | None = None, rank: int | None = None,
                  precision: str | None = None, max_steps: int | None = None, resume: bool = False,
                  overrides: list[str] | None = None) -> dict[str, Any]:
    """SFT + before/after eval (+ gate) of an already curated run folder.

    The recipe defaults to the one the run folder was curated with (run.json); ``method``,
    ``rank`` (LoRA rank), ``precision`` and ``max_steps`` override its train section.
    """
    from curation.errors import ConfigError
    from flows.flows import evaluate_flow, sft_flow
    from flows.recipe import load_recipe

    ovs = list(overrides or []) + train_overrides(method, rank, precision, max_steps)
    r = load_recipe(recipe, ovs) if recipe else recipe_of_run(run_dir, ovs)
    if r.train is None:
        raise ConfigError(f"recipe {r.name!r} has no train section: nothing to fine-tune")
    out = sft_flow(r, run_dir, resume)
    if r.eval is not None:
        out["verdict"] = evaluate_flow(r, run_dir)
    return out


@flow(name="pipeline-recipe", log_prints=True)
def pipeline_recipe_flow(recipe: str, run_dir: str | None = None, resume: bool = False,
                         overrides: list[str] | None = None) -> dict[str, Any]:
    """curate → SFT → before/after eval → gate of a recipe file (what ``sftflow serve --flow pipeline`` runs)."""
    from flows.flows import pipeline_flow

    return pipeline_flow(recipe, run_dir, resume, list(overrides or []))


# ------------------------------------------------------------------------------------------------
# sftflow serve


def serve_recipe(recipe_path: Path, *, flow: str = "curate", name: str, cron: str | None = None,
                 interval: int | None = None, timezone: str | None = None,
                 overrides: list[str] | None = None) -> None:
    """Serve one deployment of ``flow`` for ``recipe_path`` (blocks; Ctrl-C stops it)."""
    from prefect.deployments.runner import EntrypointType
    from prefect.schedules import Cron, Interval

    # flows with plain parameter types: Prefect validates a served run's parameters from annotations
    target = {"curate": curate_sources_flow, "pipeline": pipeline_recipe_flow}[flow]
    schedules = []
    if cron:
        schedules.append(Cron(cron, timezone=timezone))
    if interval:
        schedules.append(Interval(interval, timezone=timezone))
    target.serve(
        name=name,
        schedules=schedules or None,
        parameters={"recipe": str(recipe_path), "overrides": list(overrides or [])},
        tags=["sftflow", flow],
        description=f"{flow} of {recipe_path}",
        # the package is installed: load the flow by module, wherever this command runs from
        entrypoint_type=EntrypointType.MODULE_PATH,
    )
