"""The steps of a run as plain functions (no Prefect here): curate → split → train → eval → gate.

``flows/flows.py`` wraps each step in a Prefect task; the CLI's ``--local`` runs them directly.
Both write the same run folder::

    RUN/curate/...        (see curation.pipeline)
    RUN/split/train.parquet, heldout.parquet
    RUN/train/...         (see training.sft)
    RUN/eval/verdict.json (see evals.run)
    RUN/run.json          what ran, with which recipe, and the outcome
"""

from __future__ import annotations

import datetime as dt
import os
from pathlib import Path
from typing import Any

from curation.io import read_json, write_json
from curation.pipeline import CurateSummary, curate, split_heldout
from evals.verdict import Verdict
from flows.recipe import Recipe


class GateFailed(RuntimeError):
    """The regression gate said the tuned model got worse (or could not tell) and the recipe says fail."""


def new_run_dir(recipe: Recipe, out: str | None = None) -> Path:
    if out:
        return Path(out)
    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    return Path(recipe.runs_dir if os.path.isabs(recipe.runs_dir) else Path.cwd() / recipe.runs_dir) / f"{recipe.name}-{stamp}"


def step_curate(recipe: Recipe, run_dir: Path, resume: bool = False, progress_factory=None,
                on_stage=None) -> CurateSummary:
    return curate(
        recipe.source_paths(),
        recipe.stage_list(),
        run_dir / "curate",
        ingest_config=recipe.ingest,
        resume=resume,
        progress_factory=progress_factory,
        on_stage=on_stage,
    )


def step_split(recipe: Recipe, run_dir: Path) -> dict:
    h = recipe.heldout
    train_p, held_p, n_held = split_heldout(
        run_dir / "curate" / "output.parquet", run_dir / "split", h.fraction, h.max_rows, h.seed
    )
    return {"train": str(train_p), "heldout": str(held_p), "heldout_rows": n_held}


def step_train(recipe: Recipe, data: str, run_dir: Path, resume: bool = False, progress=None) -> dict:
    from training.sft import train

    cfg = recipe.train_config()
    return train(cfg, data, run_dir / "train", resume=resume, progress=progress)


def step_eval(recipe: Recipe, run_dir: Path, heldout: str | None, progress=None) -> Verdict:
    from evals.run import evaluate

    overrides: dict[str, Any] = {}
    if heldout and (recipe.eval or {}).get("target_data") is None:
        overrides["target_data"] = heldout
    cfg = recipe.eval_config(**overrides)
    base = recipe.train_config().model
    return evaluate(cfg, base, str(run_dir / "train"), run_dir / "eval", progress=progress)


def gate(recipe: Recipe, verdict: Verdict) -> str:
    """Apply the recipe's gate to a verdict: returns 'ok' / 'warn', raises GateFailed on 'fail'."""
    v = verdict.verdict
    action = {"REGRESSED": recipe.gate.on_regressed, "INCONCLUSIVE": recipe.gate.on_inconclusive}.get(v)
    if action == "fail":
        rec = verdict.recommendation or ""
        raise GateFailed(f"regression gate: verdict {v}. {rec}".strip())
    return "warn" if action == "warn" else "ok"


def write_run_info(run_dir: Path, recipe: Recipe, **info: Any) -> None:
    path = run_dir / "run.json"
    prev = read_json(path) if path.exists() else {}
    prev.update({"recipe": recipe.model_dump(mode="json"), **info})
    write_json(path, prev)
