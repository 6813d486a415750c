"""The verdict's ``contamination`` block: was the training data decontaminated against what the eval ran?

The gate compares benchmark scores; a training row holding a benchmark item lifts the tuned score and
hides forgetting. The eval cannot know what the curation did, so the run wiring
(:func:`flows.runner.step_eval`) adds this block to ``verdict.json`` from the figures of the stages that
made the training data (:func:`curation.decontam.contamination_block`): the suite and settings the rows
were checked against, rows removed per benchmark (training rows and the general replay pool), eval tasks
the data was *not* checked against, and a warning when the check was missing or incomplete.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

from curation.decontam import contamination_block
from curation.io import read_json


def stage_figures(stage_dirs: Iterable[str | Path]) -> dict[str, dict[str, Any]]:
    """stage name → its ``stats.json`` figures (``extra``), for the folders that finished; a later folder wins."""
    out: dict[str, dict[str, Any]] = {}
    for d in stage_dirs:
        path = Path(d) / "stats.json"
        if path.is_file():
            stats = read_json(path)
            out[stats.get("stage") or Path(d).name.split("_", 1)[-1]] = stats.get("extra") or {}
    return out


def verdict_contamination(stage_dirs: Iterable[str | Path], eval_tasks: Iterable[str]) -> dict[str, Any]:
    """The contamination block for a verdict that scored ``eval_tasks``, from the stages that made the training data."""
    figures = stage_figures(stage_dirs)
    mix = figures.get("mix") or {}
    return contamination_block(
        figures.get("decontam"),
        list(eval_tasks),
        pool=mix.get("pool_decontam") or None,
        general_rows=int(mix.get("general_rows") or 0),
    )
