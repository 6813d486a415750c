"""Prefect operations: the flows deployments expose, and ``sftflow serve``.

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

from prefect import flow

from flows.flows import curate_flow, evaluate_flow, pipeline_flow, sft_flow
from flows.recipe import Recipe

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
    from curation.rundir import RunDir
    from flows.recipe import apply_overrides, parse_overrides

    info_path = RunDir(Path(run_dir)).info
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
