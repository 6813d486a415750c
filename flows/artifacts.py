"""What the Prefect flows publish: artifact keys, the run's report link and trend, the training curve.

Stable keys (``<recipe slug>-<what>``) so the Prefect UI shows each artifact's history across
scheduled runs of one recipe. Used by :mod:`flows.flows` (after each step) and the deployment
flows of :mod:`flows.deploy`.
"""

from __future__ import annotations

import re
from pathlib import Path

from prefect import get_run_logger
from prefect.artifacts import create_link_artifact, create_table_artifact

from curation.rundir import RunDir
from flows.recipe import Recipe

#: rows of train_log.jsonl published as a table artifact (evenly thinned beyond this)
TRAIN_LOG_ROWS = 200
#: runs of the trend published as a table artifact (newest first)
TREND_ROWS = 50


def artifact_key(recipe: Recipe, what: str) -> str:
    slug = re.sub(r"[^a-z0-9-]+", "-", recipe.name.lower()).strip("-") or "run"
    return f"{slug}-{what}"


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
        key=artifact_key(recipe, "report"), link=path.as_uri(), link_text=f"{recipe.name}: HTML report",
        description=f"Funnel, dropped rows, scores, duplicates, mixture, training and eval of {path.parent} "
                    f"(`sftflow report {path.parent} --serve` serves it over http).",
    )
    history = read_history(history_path(run_dir, recipe.name))
    if history:
        cols = ("time", "run", "rows_in", "rows_out", "duplicate_rate", "mean_quality", "task_type_entropy",
                "final_loss", "verdict")
        create_table_artifact(
            key=artifact_key(recipe, "trend"),
            table=[{c: h.get(c) for c in cols} for h in reversed(history[-TREND_ROWS:])],
            description=f"Key figures of the last runs of {recipe.name}, newest first",
        )
    log.info("report: %s", path)
    return path


def publish_training(recipe: Recipe, run_dir: str | Path) -> None:
    """The training curve (train_log.jsonl) as a table artifact."""
    from flows.report import read_train_log

    rows = read_train_log(RunDir(Path(run_dir)).train.log)
    if not rows:
        return
    step = max(1, -(-len(rows) // TRAIN_LOG_ROWS))
    thinned = rows[::step] if rows[-1] in rows[::step] else rows[::step] + [rows[-1]]
    cols = ("step", "loss", "lr", "grad_norm", "tokens_per_s", "eval_loss")
    create_table_artifact(key=artifact_key(recipe, "sft-log"), table=[{c: r.get(c) for c in cols} for r in thinned],
                          description=f"SFT training log of {recipe.name} (step, loss, lr, grad norm, tokens/s)")


def publish_export(recipe: Recipe, folder: str | Path) -> None:
    """A link to the exported dataset's card (README.md), so the UI leads to what was shared."""
    card = (Path(folder) / "README.md").resolve()
    target = f" and pushed to hf://datasets/{recipe.export.push_to_hub}" if recipe.export and \
        recipe.export.push_to_hub else ""
    create_link_artifact(
        key=artifact_key(recipe, "dataset-card"), link=card.as_uri(), link_text=f"{recipe.name}: dataset card",
        description=f"The curated rows of this run exported to {card.parent}{target} (chat `messages` form, "
                    "`datasets.load_dataset` reads the folder); the card holds sources, funnel, dedup, quality, "
                    "replay, scores and the verdict.",
    )
