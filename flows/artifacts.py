"""What the Prefect flows publish: artifact keys, the run's report link and trend, the training curve.

Stable keys (``<recipe slug>-<what>``) so the Prefect UI shows each artifact's history across
scheduled runs of one recipe. Used by :mod:`flows.flows` (after each step) and the deployment
flows of :mod:`flows.deploy`.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from urllib.parse import quote

from prefect import get_run_logger
from prefect.artifacts import create_markdown_artifact, create_table_artifact

from curation.rundir import RunDir
from flows.recipe import Recipe

#: rows of train_log.jsonl published as a table artifact (evenly thinned beyond this)
TRAIN_LOG_ROWS = 200
#: runs of the trend published as a table artifact (newest first)
TREND_ROWS = 50


def artifact_key(recipe: Recipe, what: str) -> str:
    slug = re.sub(r"[^a-z0-9-]+", "-", recipe.name.lower()).strip("-") or "run"
    return f"{slug}-{what}"


def served_url(path: str | Path, run_dir: str | Path) -> str | None:
    """An http URL for ``path`` (a file of ``run_dir``) when ``$SFTFLOW_RUNS_URL`` says where the folder holding
    the run folders is served (``python -m http.server --bind 127.0.0.1 --directory runs``, a web server)."""
    base = os.environ.get("SFTFLOW_RUNS_URL")
    if not base:
        return None
    rel = Path(path).resolve().relative_to(Path(run_dir).resolve().parent)
    return f"{base.rstrip('/')}/{quote(rel.as_posix())}"


def file_link_markdown(title: str, path: Path, run_dir: str | Path, what: str) -> str:
    """Markdown that leads a person from the Prefect UI to a file of the run: a link that opens (http) when the
    runs folder is served, else the file's path and how to open it — a browser does not follow a ``file://``
    link from an http page, so such a link would only look clickable."""
    url = served_url(path, run_dir)
    lines = [f"### [{title}]({url})" if url else f"### {title}", "", what, "",
             f"File: `{path.as_uri()}`"]
    if not url:
        lines += ["", "A browser does not open local files from this page: copy the path above, or run "
                  f"`sftflow report {Path(run_dir)} --serve` (http://127.0.0.1:8765/). Set `SFTFLOW_RUNS_URL` to "
                  "where the runs folder is served and this becomes a link that opens."]
    return "\n".join(lines)


def publish_report(recipe: Recipe, run_dir: str | Path, *, link: bool = True) -> Path | None:
    """Build RUN/report.html and (``link``) point the Prefect UI to it.

    A report problem is logged, never fails the flow: the run's data is what matters.
    """
    from flows.report import build_report

    log = get_run_logger()
    try:
        path = build_report(run_dir).resolve()
    except Exception as e:  # noqa: BLE001 - a broken report must not fail a finished run
        log.warning("report of %s not built: %s: %s", run_dir, type(e).__name__, e)
        return None
    if link:
        create_markdown_artifact(
            key=artifact_key(recipe, "report"),
            markdown=file_link_markdown(f"{recipe.name}: HTML report", path, run_dir,
                                        "Funnel, dropped rows, scores, duplicates, mixture, training and eval, one "
                                        "self-contained page (rebuilt after every step of the run)."),
            description=f"Link to the HTML report of {Path(run_dir).name}",
        )
    log.info("report: %s", path)
    return path


def publish_trend(recipe: Recipe, run_dir: str | Path) -> None:
    """The key figures of the recipe's recent runs (this one included) as a table artifact."""
    from flows.report import history_path, read_history

    history = read_history(history_path(run_dir, recipe.name))
    if history:
        cols = ("time", "run", "rows_in", "rows_out", "duplicate_rate", "mean_quality", "task_type_entropy",
                "final_loss", "verdict")
        create_table_artifact(
            key=artifact_key(recipe, "trend"),
            table=[{c: h.get(c) for c in cols} for h in reversed(history[-TREND_ROWS:])],
            description=f"Key figures of the last runs of {recipe.name}, newest first",
        )


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


def publish_export(recipe: Recipe, folder: str | Path, run_dir: str | Path) -> None:
    """A link to the exported dataset's card (README.md), so the UI leads to what was shared."""
    card = (Path(folder) / "README.md").resolve()
    pushed = recipe.export.push_to_hub if recipe.export else None
    what = (f"The curated rows of this run in the chat `messages` form, in `{card.parent}` "
            "(`datasets.load_dataset` reads the folder)"
            + (f", pushed to https://huggingface.co/datasets/{pushed}" if pushed else "")
            + ". The card: sources, funnel, dedup, quality, decontamination, replay, scores and the verdict.")
    create_markdown_artifact(key=artifact_key(recipe, "dataset-card"),
                             markdown=file_link_markdown(f"{recipe.name}: dataset card", card, run_dir, what),
                             description=f"Dataset card of the curated rows of {Path(run_dir).name}")
